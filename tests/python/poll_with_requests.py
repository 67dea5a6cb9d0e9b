"""Drive an async-op operation with nothing but Python `requests`.

requests follows the 303s by itself; urllib3's off-the-shelf `Retry` waits
out each `503 Too Early` for as long as its `Retry-After` says. There is no
polling code here: the client sees one POST and, in the end, the result.

usage: poll_with_requests.py BASE_URL SECONDS
prints: the final status code, then the final body, on stdout
"""

import json
import sys

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry


def main() -> int:
    base, seconds = sys.argv[1], float(sys.argv[2])
    retry = Retry(
        total=60,
        status_forcelist=[503],
        respect_retry_after_header=True,
        allowed_methods=["GET"],
        backoff_factor=0,
        raise_on_status=False,
    )
    session = requests.Session()
    session.mount("http://", HTTPAdapter(max_retries=retry))
    response = session.post(f"{base}/reports", json={"seconds": seconds}, timeout=30)
    hops = [r.status_code for r in response.history]
    print(response.status_code)
    print(json.dumps(response.json(), sort_keys=True))
    print(json.dumps(hops), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
