"""The dashboard: its page, its ES modules, its style, and the vendored chart library.

A fixed table of request path -> packaged file: no request text ever reaches a file name.
Every asset is served with a strict CSP: the page loads only its own files and talks only
to this server (uPlot draws on canvases and sets styles from script, which CSP allows).
"""

from __future__ import annotations

from importlib import resources

from fastapi import APIRouter, Response

from trainerd.web.common import HttpError

JS, CSS = "text/javascript; charset=utf-8", "text/css; charset=utf-8"
STATIC: dict[str, tuple[str, str]] = {
    "/": ("index.html", "text/html; charset=utf-8"),
    **{f"/static/{name}": (name, JS) for name in (
        "app.js", "api.js", "charts.js", "controls.js", "format.js", "tables.js", "tryit.js")},
    "/static/style.css": ("style.css", CSS),
    "/static/vendor/uPlot.iife.min.js": ("vendor/uPlot.iife.min.js", JS),
    "/static/vendor/uPlot.min.css": ("vendor/uPlot.min.css", CSS),
    "/static/vendor/uPlot.LICENSE": ("vendor/uPlot.LICENSE", "text/plain; charset=utf-8"),
}
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
PAGE_HEADERS = {"Content-Security-Policy": CSP, "Referrer-Policy": "no-referrer", "X-Frame-Options": "DENY"}

router = APIRouter(include_in_schema=False)


def _asset_route(path: str, resource: str, ctype: str) -> None:
    def serve() -> Response:
        try:
            body = resources.files("trainerd").joinpath("static", resource).read_bytes()
        except OSError:
            raise HttpError(500, f"dashboard asset {resource} is not installed (package data)") from None
        return Response(body, media_type=ctype, headers=PAGE_HEADERS)

    router.add_api_route(path, serve, methods=["GET"], name=f"static {resource}")


for _path, (_resource, _ctype) in STATIC.items():
    _asset_route(_path, _resource, _ctype)
