"""The demo's fleet service (lab/fleet_service.py): a real `fleet serve` process with what it needs issued
from the customer CA, operators by certificate, registrations only with the join token."""

from __future__ import annotations

import stat

from obelisk.fleet.client import FleetClient


def test_a_local_fleet_serves_operators_and_nodes_and_stops(tmp_path):
    from obelisk.lab import fleet_service
    from obelisk.signer.keygen import generate

    keys = generate(tmp_path / "keys", "ecdsa-p256")
    fleet = fleet_service.start(tmp_path / "fleet", keys.ca_cert, keys.ca_key)
    try:
        assert fleet.operator.nodes() == []
        assert fleet.node_url == f"https://10.0.2.100:{fleet.port}"
        assert stat.S_IMODE(fleet.join_token.stat().st_mode) == 0o600
        # a node without the token is refused before any TPM exchange; the dashboard is operators' only
        anonymous = FleetClient(fleet.url, str(keys.ca_cert), timeout=30)
        status, body = anonymous.exchange("POST", "/v1/node/register", {"ek_public": "00", "ak_public": "00",
                                                                         "image": "x:1"})
        assert status == 403 and b"join token" in body
        assert anonymous.exchange("GET", "/dashboard")[0] == 401
        assert fleet.operator.exchange("GET", "/dashboard")[0] == 200
    finally:
        fleet_service.stop(fleet)
    assert fleet.process.returncode is not None and not (tmp_path / "fleet" / "serve.pid").exists()
    assert '[CN=demo operator] "GET /dashboard HTTP/1.1" 200' in fleet.log.read_text()
