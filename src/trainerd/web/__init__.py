"""The HTTP side of trainerd: health, status, history, Prometheus metrics, the dashboard,
and control with a token, on FastAPI served by uvicorn on a thread inside the daemon.

It imports no torch, keeps no state that matters, and must never take the daemon down:
every answer is read from disk at request time (DESIGN.md principle 7), and any error
becomes a 500 for that one request.

Seams: it reads status from disk and writes only wishes (control.py, wishes.py) and
deliveries: an upload goes through Queue.submit(move=True), exactly like an inbox file, so
it is validated, hashed and rejected with line numbers the same way. It never writes
state.db: the intake events of an upload are spooled (trainerd.eventspool) for the daemon,
the ledger's one writer, to record.

Security, in short (deps.py):
- Bound to 127.0.0.1 by default ([server] host). Reads need no token; every write
  (control, upload) needs `Authorization: Bearer <run/token>` (0600, made at first start,
  compared in constant time). Browsers cannot add that header cross-origin without a CORS
  preflight, which is never answered (no CORS headers), so a web page cannot drive it.
- While bound to loopback, a request whose Host header names another host is refused
  (421): that is what a DNS-rebinding page would send to read status from the browser.
- No endpoint takes a filesystem path from the request: job ids must match queue.JOB_ID
  and are looked up with Queue.find; static assets come from a fixed table; an upload's
  name is only ever a label (original_name), the bytes go to a temp file we name.

Modules: server (uvicorn thread, start/stop), app (the FastAPI app, errors, headers),
deps (token, host check), reads (the read model the routes answer from), routes_read,
routes_control, uploads, metrics (Prometheus), series (chart data, file tailing),
schemas (response models), tokens, common. This package's __init__ imports nothing, so
`trainerd.web.series` (used by `trainerd watch`) does not pull in FastAPI.
"""
