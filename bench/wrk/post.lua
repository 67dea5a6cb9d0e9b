-- wrk script: every request is a begin, `POST` with a small JSON body.
-- Used by `async-op-bench all` for figure 2 (begin throughput).
wrk.method = "POST"
wrk.body = "{}"
wrk.headers["Content-Type"] = "application/json"
