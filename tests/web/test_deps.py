"""The request guards: the Host check against DNS rebinding."""

from __future__ import annotations

from tests.web.helpers import call


def test_foreign_host_header_is_refused_on_loopback(server):
    assert call(server.url + "api/status", headers={"Host": "attacker.example:80"})[0] == 421
    assert call(server.url + "api/status", headers={"Host": f"localhost:{server.port}"})[0] == 200
