"""The client side of callback mode with nothing but the Python standard
library's http.server and `requests`.

Starts a receiver on 127.0.0.1 (a free port), begins a report with
`Prefer: respond-async, callback; url="..."`, answers the notification with
204, then fetches the result: the 202's poll path with the notification's
query, as-is.

usage: callback_receiver.py BASE_URL
prints: the begin's status, the fetch's status, the fetched body
"""

import http.server
import queue
import sys
import threading
from urllib.parse import urlsplit

import requests

notifications: "queue.Queue[str]" = queue.Queue()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's naming)
        notifications.put(urlsplit(self.path).query)
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


def main() -> int:
    base = sys.argv[1]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    callback = f"http://127.0.0.1:{server.server_address[1]}/notify"

    begin = requests.post(
        f"{base}/reports",
        json={"seconds": 0.5},
        headers={"Prefer": f'respond-async, callback; url="{callback}"'},
        allow_redirects=False,
        timeout=10,
    )
    print(begin.status_code)
    poll_path = urlsplit(begin.headers["Location"]).path

    state = notifications.get(timeout=60)
    result = requests.get(f"{base}{poll_path}?{state}", timeout=10)
    print(result.status_code)
    print(result.text)
    server.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
