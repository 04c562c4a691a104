"""PCR 11 boot measurements: the bytes the node sends to its TPM, and the values the build predicts.

The TPM2_PCR_Extend command is checked against a real swtpm (sent by tpm2-tools' tpm2_send, not
by obelisk), and the initramfs's busybox shell function is run to show that it writes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess

import pytest

from obelisk.image import measure

ROOT_DIGEST = hashlib.sha256(b"a squashfs").digest()


def test_events_are_cmdline_root_then_boot_complete():
    events = measure.boot_events("console=ttyS0 quiet", ROOT_DIGEST)
    assert [e.name for e in events] == ["obelisk.cmdline", "obelisk.root", "obelisk.boot-complete"]
    assert events[0].digest == hashlib.sha256(b"console=ttyS0 quiet\n").digest()  # /proc/cmdline ends in \n
    assert events[1].digest == ROOT_DIGEST
    assert all(e.pcr == 11 for e in events)


def test_prediction_is_the_extend_chain():
    events = measure.boot_events("x", ROOT_DIGEST)
    value = b"\0" * 32
    chain = []
    for e in events:
        value = hashlib.sha256(value + e.digest).digest()
        chain.append(value)
    prediction = measure.predict(events)
    assert prediction.unseal == chain[1] and prediction.final == chain[2]
    # another command line or another root predicts other values
    assert measure.predict(measure.boot_events("x ima_appraise=off", ROOT_DIGEST)).unseal != prediction.unseal
    assert measure.predict(measure.boot_events("x", hashlib.sha256(b"other").digest())).unseal != prediction.unseal


def test_extend_command_layout():
    cmd = measure.extend_command(11, ROOT_DIGEST)
    assert len(cmd) == 65 and int.from_bytes(cmd[2:6], "big") == 65
    assert cmd[:2] == b"\x80\x02" and cmd[6:10] == bytes.fromhex("00000182") and cmd[10:14] == (11).to_bytes(4, "big")
    assert cmd.endswith(ROOT_DIGEST)
    with pytest.raises(ValueError):
        measure.extend_command(11, b"short")


@pytest.mark.swtpm
def test_tpm_applies_the_commands_as_predicted(swtpm, tmp_path):
    """tpm2_send delivers obelisk's command bytes; PCR 11 then equals the prediction."""
    from obelisk.tpm.device import pcr_values

    events = measure.boot_events("console=ttyS0", ROOT_DIGEST)
    for event in events:
        proc = subprocess.run(["tpm2_send", "-T", swtpm.tcti], input=measure.extend_command(11, event.digest),
                              capture_output=True, check=True)
        assert proc.stdout[6:10] == b"\0\0\0\0", proc.stdout.hex()  # TPM_RC_SUCCESS
    assert pcr_values(swtpm.tcti, "sha256", [11])[11] == measure.predict(events).final


def test_busybox_shell_function_writes_the_same_command(tmp_path):
    """The initramfs's tpm_extend, run by busybox sh, builds exactly extend_command's bytes."""
    script = measure.shell_functions() + 'tpm_extend "$1"\n'
    command_file = tmp_path / "cmd"
    env = {**os.environ, "TPM_DEVICE": str(tmp_path / "tpm"), "TPM_COMMAND_FILE": str(command_file)}
    (tmp_path / "tpm").write_bytes(b"")
    proc = subprocess.run(["busybox", "sh", "-c", script, "sh", ROOT_DIGEST.hex()], env=env, capture_output=True)
    assert proc.returncode == 1  # a regular file answers nothing: the response check fails
    assert command_file.read_bytes() == measure.extend_command(11, ROOT_DIGEST)
    # tpm_send wrote the command in one piece to the "device"
    assert (tmp_path / "tpm").read_bytes() == measure.extend_command(11, ROOT_DIGEST)


@pytest.mark.parametrize("shell", [["busybox", "sh"], ["dash"]], ids=["busybox", "dash"])
def test_shell_send_checks_the_response_code(tmp_path, shell):
    """tpm_send accepts TPM_RC_SUCCESS and nothing else, under the initramfs's busybox and the root's
    dash (a regular file plays the device: the command is written at offset 0, the response is
    read on from offset 65)."""
    command = tmp_path / "cmd"
    command.write_bytes(measure.extend_command(11, ROOT_DIGEST))
    script = measure.shell_send() + 'tpm_send "$1"\n'
    for response, expected in (("80010000000a00000000", 0), ("80010000000a0000098e", 1), ("", 1)):
        device = tmp_path / "tpm"
        device.write_bytes(b"\0" * 65 + bytes.fromhex(response))
        proc = subprocess.run([*shell, "-c", script, "sh", str(command)],
                              env={**os.environ, "TPM_DEVICE": str(device)}, capture_output=True)
        assert proc.returncode == expected, (response, proc.stderr)
        assert device.read_bytes()[:65] == command.read_bytes()
