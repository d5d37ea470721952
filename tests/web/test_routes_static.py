"""The dashboard's page and assets, with their CSP, and no CORS."""

from __future__ import annotations

from tests.web.helpers import call
from trainerd.web.routes_static import STATIC


def test_dashboard_page_and_assets(server):
    code, headers, body = call(server.url)
    assert code == 200 and headers["Content-Type"].startswith("text/html")
    assert b'id="loss-chart"' in body and b'id="evals-loss-chart"' in body and b"/static/app.js" in body
    assert "default-src 'none'" in headers["Content-Security-Policy"]
    assert "Access-Control-Allow-Origin" not in headers
    for asset, kind in (("static/app.js", "text/javascript"), ("static/style.css", "text/css")):
        code, headers, body = call(server.url + asset)
        assert code == 200 and headers["Content-Type"].startswith(kind) and body
    # No CORS preflight is ever answered, so a page elsewhere cannot send the token header.
    code, headers, _b = call(server.url + "api/control/pause", "OPTIONS")
    assert code >= 400 and "Access-Control-Allow-Origin" not in headers


def test_the_chart_library_is_served_from_here_with_its_license(server):
    code, headers, body = call(server.url)
    page = body.decode()
    assert '<script type="module" src="/static/app.js">' in page and "/static/vendor/uPlot.iife.min.js" in page
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "") and "https://" not in page  # no CDN
    for asset in ("static/vendor/uPlot.iife.min.js", "static/vendor/uPlot.min.css", "static/vendor/uPlot.LICENSE",
                  "static/charts.js", "static/format.js", "static/api.js", "static/tables.js"):
        code, _h, body = call(server.url + asset)
        assert code == 200 and body, asset
    assert b"MIT" in call(server.url + "static/vendor/uPlot.LICENSE")[2]


def test_every_asset_in_the_table_is_served(server):
    for path, (_resource, ctype) in STATIC.items():
        code, headers, body = call(server.url + path.lstrip("/"))
        assert code == 200 and body, path
        assert headers["Content-Type"] == ctype and "default-src 'none'" in headers["Content-Security-Policy"], path
