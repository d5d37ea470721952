"""The dashboard's page and assets, with their CSP, and no CORS."""

from __future__ import annotations

from tests.web.helpers import call


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
