"""The node's side of the fleet (fleet/node.py, cli/node_fleet.py, disk.unlock fleet | tpm+fleet) with
a real swtpm node and the service over HTTPS on 127.0.0.1, state in SQLite."""

from __future__ import annotations

import hashlib
import subprocess
import sys

import pytest

from obelisk.fleet import node as fleet_node
from obelisk.fleet.client import FleetClientError
from obelisk.image import fleet_node as settings
from obelisk.tpm.swtpm import SoftwareTPM
from tests.fleet.conftest import IMAGE, make_node, signed_manifest

SYSINIT = hashlib.sha256(b"test sysinit").digest()
PCR = 16  # the test's stand-in for PCR 11: resettable, so one swtpm can "boot" twice


def _reset(tcti):
    """A reboot, for the resettable PCR the test seals to."""
    from tpm2_pytss import ESYS_TR

    from obelisk.tpm import device

    with device.open_tpm(tcti) as esapi:
        esapi.pcr_reset(ESYS_TR.PCR0 + PCR)


def _blank(path, mib=32):
    with open(path, "wb") as handle:
        handle.truncate(mib << 20)
    return str(path)


@pytest.fixture
def opened(monkeypatch):
    """cryptsetup open needs device-mapper: prove the key opens the volume instead, and record it."""
    from obelisk.disk import volume

    seen = []
    real = volume.open_with_key

    def check(device, passphrase, *, name=None, test=False, keyslot=None):
        real(device, passphrase, test=True, keyslot=keyslot)
        seen.append((device, name, keyslot))

    monkeypatch.setattr(volume, "open_with_key", check)
    return seen


def _trusted_node(pki, svc, tpm, tmp_path):
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    node = make_node(tpm, tmp_path / "n", svc.url, pki)
    assert node.register("n")["status"] == "pending"
    svc.operator(pki).approve(node.node)
    return node


@pytest.mark.swtpm
def test_tpm_and_fleet_are_both_needed_to_open_var(pki, fleet_service, tmp_path, opened):
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import unlock
    from obelisk.disk import volume as disk
    from obelisk.tpm import device

    svc = fleet_service
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = _trusted_node(pki, svc, tpm, tmp_path)
        recipe = recipemod.VarRecipe(policy_key=None, bound_at_first_boot=(PCR,), unlock="tpm+fleet")
        part = _blank(tmp_path / "var.img")
        log: list[str] = []
        order: list[str] = []

        def finish_boot():
            order.append("sysinit")
            device.extend_digest(tpm.tcti, PCR, SYSINIT)

        def fleet_key():
            order.append("fleet")
            return fleet_node.release_key(node, "n", log.append, wait=0, retry=0)

        said = unlock.unlock_var_with_fleet(part, recipe, fleet_key=fleet_key, finish_boot=finish_boot,
                                            tcti=tpm.tcti)
        assert said.startswith("created LUKS2 /var") and "the TPM and the fleet service" in said
        assert order == ["sysinit", "fleet"] and opened[-1] == (part, unlock.MAPPING, 0)
        token = disk.tokens(part)[0]
        assert token.keyslot == 0 and token.sealed.pcrs == (PCR,)
        # after sysinit nothing unseals the TPM part again on this boot
        from obelisk.tpm import seal

        with pytest.raises(seal.PolicyMismatch):
            disk.unseal_key(part, tpm.tcti)
        # the next boot: PCR back at its boot value, the TPM part unseals, but alone it opens nothing
        _reset(tpm.tcti)
        _, tpm_part = disk.unseal_key(part, tpm.tcti)
        assert not disk.test_key(part, tpm_part)
        service_part = node.key()
        assert not disk.test_key(part, service_part) and not disk.test_key(part, service_part.hex().encode())
        assert disk.test_key(part, unlock.derived_key("tpm+fleet", tpm_part, service_part))
        _reset(tpm.tcti)
        said = unlock.unlock_var_with_fleet(part, recipe, fleet_key=fleet_key, finish_boot=finish_boot,
                                            tcti=tpm.tcti)
        assert said == "/var unlocked by the TPM and the fleet service (keyslot 0)"
        # a quarantined node (or a stolen disk with its TPM) gets no key: /var stays shut, the disk unchanged
        svc.operator(pki).quarantine(node.node, "stolen")
        _reset(tpm.tcti)
        before = open(part, "rb").read(1 << 20)
        with pytest.raises(FleetClientError, match="key refused: node is quarantined"):
            unlock.unlock_var_with_fleet(part, recipe, fleet_key=fleet_key, finish_boot=finish_boot,
                                         tcti=tpm.tcti)
        assert open(part, "rb").read(1 << 20) == before and len(opened) == 2
        kinds = [r["kind"] for r in svc.operator(pki).history(node.node) if r["type"] == "event"]
        assert kinds.count("key-released") == 3 and kinds[-1] == "key-refused"


@pytest.mark.swtpm
def test_reseal_of_a_tpm_and_fleet_volume_reseals_the_tpm_part_and_keeps_its_keyslot(pki, fleet_service, tmp_path,
                                                                                   opened):
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import unlock
    from obelisk.disk import volume as disk
    from obelisk.tpm import device, seal

    svc = fleet_service
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = _trusted_node(pki, svc, tpm, tmp_path)
        recipe = recipemod.VarRecipe(policy_key=None, bound_at_first_boot=(PCR,), unlock="tpm+fleet")
        part = _blank(tmp_path / "var.img")
        unlock.unlock_var_with_fleet(part, recipe, tcti=tpm.tcti,
                                     fleet_key=lambda: fleet_node.release_key(node, "n", print, wait=0, retry=0),
                                     finish_boot=lambda: device.extend_digest(tpm.tcti, PCR, SYSINIT))
        assert disk.tokens(part)[0].derived == "tpm+fleet"
        # where the TPM part no longer unseals (after sysinit), a reseal says why and changes nothing
        header = open(part, "rb").read(1 << 20)
        with pytest.raises(disk.UnlockError, match="tpm\\+fleet volume's TPM part no longer unseals"):
            disk.reseal(part, tpm.tcti, recovery_key=b"anything")
        assert open(part, "rb").read(1 << 20) == header
        # at the next boot: reseal the same TPM part to what the PCR will be after a changed boot
        _reset(tpm.tcti)
        _, tpm_part = disk.unseal_key(part, tpm.tcti)
        changed = hashlib.sha256(bytes(32) + hashlib.sha256(b"new boot").digest()).digest()
        token = disk.reseal(part, tpm.tcti, pcrs=(PCR,), values={PCR: changed})
        slots = sorted(disk.metadata(part)["keyslots"])
        assert token.keyslot == 0 and slots == ["0"] and len(disk.tokens(part)) == 1
        _reset(tpm.tcti)
        with pytest.raises(seal.PolicyMismatch):
            disk.unseal_key(part, tpm.tcti)  # the old boot no longer unseals it
        device.extend_digest(tpm.tcti, PCR, hashlib.sha256(b"new boot").digest())
        _, same = disk.unseal_key(part, tpm.tcti)
        assert same == tpm_part and disk.test_key(part, unlock.derived_key("tpm+fleet", same, node.key()), 0)


@pytest.mark.swtpm
def test_fleet_unlock_asks_only_after_a_verified_round_and_waits_for_approval(pki, fleet_service, tmp_path, opened):
    from obelisk.disk import recipe as recipemod
    from obelisk.disk import unlock
    from obelisk.disk import volume as disk

    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        node = make_node(tpm, tmp_path / "n", svc.url, pki)
        recipe = recipemod.VarRecipe(policy_key=None, unlock="fleet")
        part = _blank(tmp_path / "var.img")
        log: list[str] = []
        # not approved: the node waits (here: one retry), then gives up; the blank disk is not touched
        with pytest.raises(FleetClientError, match="no /var key from the fleet: .*pending"):
            unlock.unlock_var_with_fleet(part, recipe, tcti=tpm.tcti, finish_boot=lambda: None,
                                         fleet_key=lambda: fleet_node.release_key(node, "n", log.append, wait=0.5,
                                                                                  retry=0.1))
        assert any("waiting for the fleet" in line for line in log) and unlock.is_blank(part)
        svc.operator(pki).approve(node.node)
        said = unlock.unlock_var_with_fleet(part, recipe, tcti=tpm.tcti, finish_boot=lambda: None,
                                            fleet_key=lambda: fleet_node.release_key(node, "n", log.append,
                                                                                     wait=0, retry=0))
        assert said == "created LUKS2 /var (first boot); /var unlocked by the fleet service (keyslot 0)"
        assert disk.tokens(part) == []  # nothing sealed on the node
        assert disk.test_key(part, unlock.derived_key("fleet", None, node.key()))
        rounds = [r for r in svc.operator(pki).history(node.node) if r["type"] == "attestation"]
        assert rounds and all(r["passed"] for r in rounds)


def test_derived_key_binds_mode_and_both_parts():
    from obelisk.disk import unlock

    a, b = b"A" * 44, bytes(32)
    both = unlock.derived_key("tpm+fleet", a, b)
    assert both != unlock.derived_key("tpm+fleet", b"B" * 44, b) != unlock.derived_key("tpm+fleet", a, b"\1" * 32)
    assert unlock.derived_key("fleet", None, b) != both and len(both) == 44
    with pytest.raises(ValueError):
        unlock.derived_key("tpm+fleet", None, b)
    with pytest.raises(ValueError):
        unlock.derived_key("fleet", a, b)


def test_settings_merge_the_config_disk_url_and_token_but_not_the_ca(tmp_path):
    image = settings.FleetNode(url="https://fleet.example:8444", interval=30, ca="/etc/obelisk/fleet-ca.pem")
    (tmp_path / "image.json").write_bytes(settings.serialize(image))
    assert settings.parse(settings.serialize(image), "x") == image
    config = tmp_path / "config"
    config.mkdir()
    assert fleet_node.settings(str(config), str(tmp_path / "image.json")) == settings.Effective(
        "https://fleet.example:8444", 30, "/etc/obelisk/fleet-ca.pem", None)
    (config / "fleet.json").write_bytes(settings.serialize(settings.FleetNode(
        url="https://10.0.2.2:9000", join_token="fleet-token", ca="/run/evil-ca.pem", interval=5)))
    found = fleet_node.settings(str(config), str(tmp_path / "image.json"))
    assert found == settings.Effective("https://10.0.2.2:9000", 30, "/etc/obelisk/fleet-ca.pem",
                                       str(config / "fleet-token"))
    assert fleet_node.settings(str(config), str(tmp_path / "none.json")).ca == settings.DEFAULT_CA
    assert fleet_node.settings(str(tmp_path / "nothing"), str(tmp_path / "none.json")) is None
    from obelisk.core.errors import InputError

    for bad in (b"{}", b'{"format": "obelisk.fleet-node/1", "url": "http://x"}',
                b'{"format": "obelisk.fleet-node/1", "join_token": "../agent.key"}',
                b'{"format": "obelisk.fleet-node/1", "interval": "60"}',
                b'{"format": "obelisk.fleet-node/1", "extra": 1}'):
        with pytest.raises(InputError):
            settings.parse(bad, "fleet.json")


def test_the_node_side_imports_nothing_the_node_lacks():
    """The node runs Debian 12's python3 without SQLAlchemy: its entry points must not reach the service."""
    code = ("import sys\n"
            "for m in ('sqlalchemy', 'alembic', 'psycopg', 'jinja2', 'yaml'): sys.modules[m] = None\n"
            "import obelisk.cli.node_fleet, obelisk.cli.node_init, obelisk.fleet.node, obelisk.disk.unlock\n"
            "import obelisk.attest.evidence, obelisk.attest.credential, obelisk.image.measure\n"
            "bad = sorted(m for m in sys.modules if m.startswith(('obelisk.fleet.service', 'obelisk.fleet.db',\n"
            "                                                      'obelisk.fleet.server')))\n"
            "print(bad)\n")
    from tests.conftest import ROOT

    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={"PYTHONPATH": str(ROOT / "src")}, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


@pytest.mark.swtpm
def test_node_fleet_run_registers_and_attests_with_the_config_disk(pki, fleet_service, tmp_path):
    """`python3 -m obelisk.cli.node_fleet run` as obelisk-init starts it: settings from the root and the
    config disk (URL, join token), identity from /etc/obelisk/image, the node's TPM."""
    svc = fleet_service
    with SoftwareTPM.start(tmp_path / "tpm") as tpm:
        agent = make_node(tpm, tmp_path / "n", svc.url, pki)
        svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
        config = tmp_path / "config"
        config.mkdir()
        (config / "fleet.json").write_bytes(settings.serialize(settings.FleetNode(url=svc.url,
                                                                                  join_token="fleet-token")))
        (config / "fleet-token").write_text("s3cret\n")
        (tmp_path / "fleet.json").write_bytes(settings.serialize(settings.FleetNode(interval=5, ca=pki["ca"])))
        (tmp_path / "image").write_text("name=n1\nversion=1\n")
        from obelisk.cli import node_fleet

        found = fleet_node.settings(str(config), str(tmp_path / "fleet.json"))
        assert found is not None and found.token_file == str(config / "fleet-token")
        node = fleet_node.agent(found, fleet_node.image_identity(str(tmp_path / "image")), tpm.tcti)
        assert (node.token, node.image, node.client.ca) == ("s3cret", IMAGE, pki["ca"])
        # the CLI entry point, its logs as on the console: registered, then pending (no approval yet)
        import contextlib
        import io

        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = node_fleet.main(["run", "--config-dir", str(config),
                                    "--fleet-settings", str(tmp_path / "fleet.json"),
                                    "--image-identity", str(tmp_path / "image"), "--tcti", tpm.tcti,
                                    "--scan-root", "", "--rounds", "1"])
        assert code == 1 and "registered as" in err.getvalue() and "pending" in err.getvalue()
        # the loop keeps going: approved in between, the next round is trusted (event log and IMA as booted)
        node_id = svc.fleet.nodes()[0]["id"]
        svc.operator(pki).approve(node_id)
        node.event_log, node.ima_log, node.scan_root = agent.event_log, agent.ima_log, agent.scan_root
        results = fleet_node.attest_forever(node, 0, "n", lambda _line: None, rounds=2, sleep=lambda _s: None)
        assert results[-1]["status"] == "trusted" and node.node == node_id


def test_a_pending_node_asks_again_soon_and_then_every_interval(pki, fleet_service, swtpm, tmp_path):
    """Approval takes effect within PENDING_RETRY seconds, not one interval: the loop's waits say so."""
    svc = fleet_service
    svc.operator(pki).add_image(str(signed_manifest(tmp_path / "out", pki["keys"])))
    node = make_node(swtpm, tmp_path / "n", svc.url, pki)
    waits: list[float] = []
    lines: list[str] = []

    def sleep(seconds: float) -> None:  # the operator approves while the node waits for the first time
        if not waits:
            svc.operator(pki).approve(node.node)
        waits.append(seconds)

    results = fleet_node.attest_forever(node, 60, "n", lines.append, rounds=3, sleep=sleep)
    assert "pending" in results[0]["error"] and [r.get("status") for r in results[1:]] == ["trusted", "trusted"]
    assert waits == [fleet_node.PENDING_RETRY, 60]  # asked again soon while pending, then every interval
    assert fleet_node.attest_forever(node, 3, "n", lines.append, rounds=2, sleep=waits.append)[-1]["passed"]
    assert waits[-1] == 3
