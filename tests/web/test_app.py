"""The app: the OpenAPI schema lists every endpoint with its response model, no docs page
that would load a CDN, errors as {"error": ...}, and the shapes the old server had."""

from __future__ import annotations

import json
import shutil

from tests.web.helpers import call, get_json


def test_openapi_lists_the_api_with_typed_answers(server):
    spec = get_json(server.url + "openapi.json")
    paths = spec["paths"]
    for path, method in (("/healthz", "get"), ("/api/status", "get"), ("/api/jobs", "get"),
                         ("/api/jobs/{job_id}", "get"), ("/api/metrics/{job_id}", "get"), ("/api/evals", "get"),
                         ("/api/models", "get"), ("/api/control/actions/{wish_id}", "get"), ("/api/queue", "post"),
                         ("/api/control/pause", "post"), ("/api/control/resume", "post"), ("/api/control/stop", "post"),
                         ("/api/control/skip", "post"), ("/api/control/move", "post"), ("/api/control/requeue", "post"),
                         ("/api/control/remove", "post"), ("/api/control/rollback", "post"), ("/api/generate", "post"),
                         ("/api/compare", "post"), ("/metrics", "get")):
        assert method in paths.get(path, {}), (path, method)
    schemas = spec["components"]["schemas"]
    assert {"Status", "JobsPage", "MetricsSeries", "Evals", "Models", "Uploaded", "UploadRejected", "Error"} <= schemas.keys()
    ok = paths["/api/status"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/Status"}
    assert "422" in paths["/api/queue"]["post"]["responses"]  # a rejected file, with its lines
    assert "/" not in paths and "/static/app.js" not in paths  # assets are not API
    # Writes need the token, reads do not; the schema says which is which.
    assert spec["components"]["securitySchemes"]["token"] == {
        "type": "http", "scheme": "bearer",
        "description": "The contents of BASE/run/token (0600, made at the daemon's first start)"}
    assert paths["/api/control/pause"]["post"]["security"] == [{"token": []}]
    assert paths["/api/queue"]["post"]["security"] == [{"token": []}]
    assert "security" not in paths["/api/status"]["get"]


def test_no_docs_pages_and_errors_are_json(server):
    for page in ("docs", "redoc", "docs/oauth2-redirect"):
        code, headers, body = call(server.url + page)
        assert code == 404 and json.loads(body) == {"error": "not found"}
        assert headers["Content-Type"] == "application/json"
    code, headers, body = call(server.url + "api/status", "POST", b"{}")
    assert code == 405 and json.loads(body)["error"].startswith("use GET")
    code, _h, body = call(server.url + "api/jobs?limit=x")
    assert code == 400 and json.loads(body) == {"error": "limit must be an integer"}
    code, _h, body = call(server.url + "api/metrics/20260101T000000-000000-x?max_points=many")
    assert code == 400 and json.loads(body) == {"error": "max_points must be an integer"}


def test_every_answer_carries_the_safety_headers(server):
    for path in ("healthz", "api/status", "nothing-here", "metrics"):
        _code, headers, _b = call(server.url + path)
        assert headers["Cache-Control"] == "no-store" and headers["X-Content-Type-Options"] == "nosniff", path
        assert headers["Server"].startswith("trainerd/"), path


def test_an_internal_error_is_one_json_500_and_the_server_goes_on(server, layout):
    shutil.rmtree(layout.base)  # everything the answers read is gone, the disk usage too
    code, headers, body = call(server.url + "api/status")
    assert code == 500 and json.loads(body)["error"].startswith("internal error: FileNotFoundError")
    assert headers["Cache-Control"] == "no-store"
    assert call(server.url + "healthz")[0] == 200  # the next request is answered as ever
