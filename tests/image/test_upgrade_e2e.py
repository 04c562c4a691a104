"""End to end, issue 16's upgrades through the node's API, on the bundled example under OVMF with Secure Boot
and swtpm (QEMU restarts the node in place when it reboots):

1. a 1.0.0 node is upgraded through its agent to 1.0.1 (slot b): it comes back committed, attests as 1.0.1,
   and its /var is the same volume (opened, not created again);
0. QEMU killed while slot b is being written: the node boots slot a;
2. a 1.0.2 whose agent never starts (written to slot a) does not commit within its trial_seconds: the node
   reboots by itself, the firmware returns to slot b, the failed trial is recorded and it attests as 1.0.1;
3. the upgrade's time (stream, write, reboot, attest) and bytes are printed for the record.

Slow (a kernel build on a cold cache, three images, five boots under software emulation): markers qemu,
kernel_build and slow. Uses test_e2e's machine-wide keys so the kernel is built once.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from obelisk.core.findings import Status
from tests.image.test_e2e import example  # noqa: F401 - the fixture: the example with the e2e keys

pytestmark = [pytest.mark.qemu, pytest.mark.kernel_build, pytest.mark.slow]

# an agent that never starts: a .pth line runs at every Python start and ends the agent's (only the agent's)
NO_AGENT = ('import sys; sys.exit("obelisk-test: this image\'s agent never starts") '
            'if "obelisk.cli.node_agent" in getattr(sys, "orig_argv", ()) else None\n')


def _build(example: Path, version: str, *, trial_seconds: int = 300, break_agent: bool = False) -> Path:  # noqa: F811
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    text = (example / "spec.yaml").read_text()
    assert 'version: "1.0.0"' in text and "overlay: overlay" in text
    text = text.replace('version: "1.0.0"', f'version: "{version}"')
    text += f"\nupgrade:\n  trial_seconds: {trial_seconds}\n"
    if break_agent:
        overlay = example / f"overlay-{version}"
        shutil.copytree(example / "overlay", overlay)
        pth = overlay / "usr/lib/python3/dist-packages/zz-obelisk-test-no-agent.pth"
        pth.parent.mkdir(parents=True)
        pth.write_text(NO_AGENT)
        text = text.replace("overlay: overlay", f"overlay: overlay-{version}")
    spec = example / f"spec-{version}.yaml"
    spec.write_text(text)
    out = example / f"out-{version}"
    build(load_spec(spec), out, cache=StepCache(cache_root() / "image"), quiet=True)
    return out


def _operator(run: Path, keys: Path):
    from obelisk.attest.agent_certs import issue

    return issue(keys / "ca.pem", keys / "ca.key", run / "operator", "upgrade-pipeline", server=False,
                 roles=("operator", "reader"))


def _var_header(run: Path, out: Path) -> bytes:
    from obelisk.image import disk_image
    from obelisk.image import manifest as mf

    var = mf.load(out / "manifest.json").boot.disk_image.partition(disk_image.VAR)
    with open(run / "disk.raw", "rb") as handle:
        handle.seek(var.start)
        return handle.read(1 << 20)


def test_upgrade_through_the_api_then_a_broken_image_rolls_back_by_itself(example, tmp_path):  # noqa: F811
    from obelisk.attest.agent_client import AgentEndpoint, attest_node
    from obelisk.attest.upgrade_client import upgrade_node
    from obelisk.lab.boot import boot, stop

    keys = example / "keys"
    v100 = _build(example, "1.0.0")
    v101 = _build(example, "1.0.1")
    v102 = _build(example, "1.0.2", trial_seconds=60, break_agent=True)
    run = tmp_path / "run"
    node = boot(v100, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600, reboot=True)
    try:
        header = _var_header(run, v100)
        assert header[:6] == b"LUKS\xba\xbe"
        op = _operator(run, keys)
        endpoint = AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(op.cert), key=str(op.key), timeout=30)
        status = json.loads(endpoint.get_ok("/v1/upgrade"))
        assert status["booted"] == "a" and status["trial"] is None, status

        # 0. the power goes in the middle of writing slot b: the node boots slot a, as if nothing happened
        import threading

        from obelisk.lab.boot import stop as power_off

        sent = [0]
        cut = threading.Event()

        def count(n: int) -> None:
            sent[0] += n
            if sent[0] > 24 << 20 and not cut.is_set():
                cut.set()
                power_off(run)

        with pytest.raises(Exception):  # noqa: B017 - the connection dies with the node, however it says so
            upgrade_node(endpoint, v101, wait=0, progress=count)
        assert cut.is_set()
        node = boot(v100, run, ca=keys / "ca.pem", ca_key=keys / "ca.key", timeout=600, reboot=True, reinstall=False)
        endpoint = AgentEndpoint(node.url, ca=str(keys / "ca.pem"), cert=str(op.cert), key=str(op.key), timeout=30)
        status = json.loads(endpoint.get_ok("/v1/upgrade"))
        assert status["booted"] == "a" and status["committed"] == "a" and status["trial"] is None, status
        assert status["last_trial"] is None

        def attests_as(out: Path) -> bool:
            verdict = attest_node(endpoint, manifest=str(out / "manifest.json"), ak=str(node.ak), scan=False)
            failed = [(f.id, f.detail) for f in verdict.findings if f.status in (Status.FAIL, Status.ERROR)]
            print("attest", out.name, failed)
            return not failed

        # 1. 1.0.0 -> 1.0.1 through the API
        result = upgrade_node(endpoint, v101, wait=900, attest=lambda: attests_as(v101))
        print("upgrade 1.0.0 -> 1.0.1:", json.dumps(result.to_json(), sort_keys=True))
        console = node.serial_log.read_text(errors="replace").replace("\r", "")
        assert result.outcome == "committed" and result.slot == "b", (result.to_json(), console[-3000:])
        assert result.status["committed"] == "b" and result.status["last_trial"]["result"] == "committed"
        assert "booting slot b" in console and "slot b committed (example-node 1.0.1)" in console
        assert _var_header(run, v100) == header  # the same LUKS2 volume: opened, never created again
        assert "created LUKS2 /var" not in console, console[-3000:]  # this console began after the first boot

        # 2. 1.0.2, whose agent never starts: written to slot a, its trial times out, the node goes back to b
        result = upgrade_node(endpoint, v102, wait=900)
        print("upgrade 1.0.1 -> 1.0.2 (agent never starts):", json.dumps(result.to_json(), sort_keys=True))
        console = node.serial_log.read_text(errors="replace").replace("\r", "")
        assert result.outcome == "rolled-back" and result.slot == "a", (result.to_json(), console[-3000:])
        last = result.status["last_trial"]
        assert (last["slot"], last["version"], last["result"]) == ("a", "1.0.2", "failed")
        assert result.status["booted"] == "b" and result.status["committed"] == "b"
        assert "obelisk-test: this image's agent never starts" in console
        assert "did not commit in time: rebooting into slot b" in console
        assert "trial boot of slot a (example-node 1.0.2) failed: back on slot b, recorded" in console
        assert attests_as(v101)
        assert _var_header(run, v100) == header
    finally:
        stop(run)
