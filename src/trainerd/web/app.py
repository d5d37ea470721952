"""The FastAPI app: routes, error shapes, the guard middleware, and the OpenAPI schema at
/openapi.json. No /docs or /redoc: their pages load assets from a CDN, and this machine may
be offline and its CSP forbids them; /openapi.json works with any local viewer."""

from __future__ import annotations

from fastapi import FastAPI

from trainerd import __version__
from trainerd.web import metrics, respond, routes_control, routes_read, routes_static, uploads
from trainerd.web.deps import Guard
from trainerd.web.reads import Reader
from trainerd.web.respond import JSON


def create_app(reader: Reader) -> FastAPI:
    app = FastAPI(title="trainerd", version=__version__, docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json", default_response_class=JSON,
                  description="Health, status, history, metrics and control of a trainerd daemon. "
                  "Reads need no token; every write needs `Authorization: Bearer <BASE/run/token>`.")
    app.state.reader = reader
    app.state.registry = metrics.registry(reader)
    respond.install(app)
    for router in (routes_read.router, routes_control.router, uploads.router, metrics.router,
                   routes_static.router):
        app.include_router(router)
    app.add_middleware(Guard, loopback=reader.loopback)
    return app
