"""End to end, issue 15 on a booted node: the bundled example built with `fleet.url` and
`disk.unlock: tpm+fleet`, booted under OVMF (Secure Boot, swtpm) with `obelisk boot --fleet-url
--fleet-join-token`; a `fleet serve` on the host (SQLite, in this process). The node registers at boot
with its TPM, waits for approval, gets its /var key part only after a round whose quote verified
against the build's predictions (PCRs 4, 7 and 11 included), creates /var from both parts, and then
attests every interval from its background loop, outbound only (the restricted user network's one
guestfwd).

Slow (the example's kernel build on a cold cache, a boot under TCG): markers qemu, kernel_build, slow.
"""

from __future__ import annotations

import json
import shutil
import threading
import time

import pytest

from tests.image.test_e2e import example  # noqa: F401 - the module-scoped fixture: project and test keys

pytestmark = [pytest.mark.qemu, pytest.mark.kernel_build, pytest.mark.slow, pytest.mark.swtpm]

TOKEN = "e2e-join-token"


@pytest.fixture(scope="module")
def fleet_image(example):  # noqa: F811 - the imported fixture
    """The example with a fleet: fleet.url (overridden at boot), a short interval, /var from TPM and fleet."""
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    spec = (example / "spec.yaml").read_text()
    spec = spec.replace("disk:\n  encryption: true\n", "disk:\n  encryption: true\n  unlock: tpm+fleet\n")
    spec += "\nfleet:\n  url: https://10.0.2.100:8444\n  interval: 20\n"
    (example / "fleet-spec.yaml").write_text(spec)
    out = example / "fleet-out"
    build(load_spec(example / "fleet-spec.yaml"), out, cache=StepCache(cache_root() / "image"), quiet=True)
    return out


@pytest.fixture
def service(example, tmp_path):  # noqa: F811
    from obelisk.attest.agent_certs import issue
    from obelisk.fleet import service as fleet_service
    from obelisk.fleet.server import make_server

    keys = example / "keys"
    server_cert = issue(keys / "ca.pem", keys / "ca.key", tmp_path / "server", "fleet", server=True,
                        hosts=("127.0.0.1", "10.0.2.100"))
    fleet = fleet_service.open_fleet(str(tmp_path / "fleet.db"), (keys / "ca.pem").read_bytes(), interval=20,
                                     kek=bytes(range(32)), join_tokens=frozenset({TOKEN}))
    log: list[str] = []
    server = make_server(fleet, "127.0.0.1", 0, cert=str(server_cert.cert), key=str(server_cert.key),
                         client_ca=str(keys / "ca.pem"), log=log.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield fleet, server.server_address[1], log
    finally:
        server.shutdown()
        server.server_close()


def _approve_when_pending(fleet, stop: threading.Event, approved: list[str]) -> None:
    """The operator: approves the first node that registers (the node waits for it in its first boot)."""
    while not stop.is_set():
        for node in fleet.nodes():
            if node["status"] == "pending" and node["id"] not in approved:
                try:
                    fleet.approve(node["id"], "CN=e2e operator")
                    approved.append(node["id"])
                except Exception:  # no AK proven yet: next time
                    pass
        time.sleep(1)


def test_a_booted_node_registers_gets_its_var_key_after_a_verified_round_and_attests(example, fleet_image,  # noqa: F811
                                                                                     service, tmp_path):
    from obelisk.lab.boot import BootError, FleetProvision, boot, stop

    fleet, port, log = service
    keys = example / "keys"
    manifest = (fleet_image / "manifest.json").read_bytes()
    signature = (fleet_image / "manifest.json.sig").read_bytes()
    assert fleet.add_image(manifest, signature, "CN=e2e operator")["image"] == "example-node:1.0.0"
    token = tmp_path / "join-token"
    token.write_text(TOKEN + "\n")
    approved: list[str] = []
    done = threading.Event()
    operator = threading.Thread(target=_approve_when_pending, args=(fleet, done, approved), daemon=True)
    operator.start()
    run = tmp_path / "run"
    try:
        node = boot(fleet_image, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=900,
                    fleet=FleetProvision(url=f"https://10.0.2.100:{port}", join_token=token))
        console = node.serial_log.read_text(errors="replace").replace("\r", "")
        assert "created LUKS2 /var (first boot); /var unlocked by the TPM and the fleet service (keyslot 0)" \
            in console, console[-3000:]
        assert "sysinit phase already in PCR 11 (fleet unlock)" in console
        assert len(approved) == 1
        node_id = approved[0]
        # the background loop attests every fleet.interval: wait for its first trusted round
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            rounds = [r for r in fleet.history(node_id) if r["type"] == "attestation"]
            if len(rounds) >= 2:
                break
            time.sleep(5)
        history = fleet.history(node_id)
        rounds = [r for r in history if r["type"] == "attestation"]
        assert len(rounds) >= 2 and all(r["passed"] for r in rounds), (rounds, console[-3000:])
        kinds = [r["kind"] for r in history if r["type"] == "event"]
        assert kinds[:2] == ["registered", "ak-activated"] and "key-released" in kinds
        assert {n["id"]: n["status"] for n in fleet.nodes()} == {node_id: "trusted"}
        report = fleet.report(rounds[0]["id"])
        found = {f["id"]: f["status"] for f in json.loads(report)["findings"]}
        for check in ("attest.boot.pcr4", "attest.boot.pcr7", "attest.boot.pcr11", "ima.reference"):
            assert found.get(check) == "pass", (check, found.get(check))

        # a reboot: the TPM part unseals again (PCR 11 at leave-initrd), the service releases its part
        # after a new verified round, and the same /var opens with its data
        stop(run)
        node = boot(fleet_image, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=900)
        console = node.serial_log.read_text(errors="replace").replace("\r", "")
        assert "obelisk: /var unlocked by the TPM and the fleet service (keyslot 0)\n" in console, console[-3000:]
        kinds = [r["kind"] for r in fleet.history(node_id) if r["type"] == "event"]
        assert kinds.count("key-released") == 2

        # quarantined (as a stolen node would be): its next boot gets no key part, /var stays shut
        fleet.quarantine(node_id, "CN=e2e operator", "reported stolen")
        stop(run)
        header = _var_header(run, fleet_image)
        with pytest.raises(BootError):
            boot(fleet_image, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=240)
        console = (run / "serial.log").read_text(errors="replace").replace("\r", "")
        assert "key refused: node is quarantined" in console, console[-3000:]
        assert "/var unlocked" not in console and _var_header(run, fleet_image) == header
        assert [r["kind"] for r in fleet.history(node_id) if r["type"] == "event"][-1] == "key-refused"
    finally:
        done.set()
        stop(run)
    shutil.rmtree(run, ignore_errors=True)


def _var_header(run, image) -> bytes:
    """The first 4 MiB of the node's var partition (its LUKS2 header, token and first keyslot)."""
    from obelisk.image import disk_image
    from obelisk.image import manifest as mf

    var = mf.load(image / "manifest.json").boot.disk_image.partition(disk_image.VAR)
    with open(run / "disk.raw", "rb") as handle:
        handle.seek(var.start)
        return handle.read(4 << 20)
