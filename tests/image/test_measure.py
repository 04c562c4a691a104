"""PCR 11 boot measurements: the bytes the node sends to its TPM, and the values the build predicts.

The TPM2_PCR_Extend command is checked against a real swtpm (sent by tpm2-tools' tpm2_send, not
by obelisk), and the initramfs's busybox shell function is run to show that it writes the same bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from dataclasses import replace

import pytest

from obelisk.image import measure

ROOT_DIGEST = hashlib.sha256(b"a squashfs").digest()


def _stub(cmdline: bytes = b"console=ttyS0 quiet") -> tuple:
    """systemd-stub's PCR 11 events for a small UKI (image/uki.py)."""
    from obelisk.image import uki

    return uki.pcr11_prediction(uki.UkiSections(linux=b"bzImage", initrd=b"initrd", cmdline=cmdline,
                                                osrel=b"ID=obelisk\n")).events


def test_phases_are_systemds_words_in_order():
    events = measure.phase_events()
    assert [e.data for e in events] == [b"enter-initrd", b"leave-initrd", b"sysinit"]
    assert [e.digest for e in events] == [hashlib.sha256(w).digest() for w in (b"enter-initrd", b"leave-initrd",
                                                                               b"sysinit")]
    assert all(e.pcr == 11 and e.event_type == 0xD for e in events)  # EV_IPL, as the verifier appends them
    assert events[2].name == "boot phase sysinit (/sbin/obelisk-init)"


def test_prediction_is_the_extend_chain_after_the_stub():
    stub = _stub()
    value = b"\0" * 32
    chain = []
    for e in (*stub, *measure.phase_events()):
        value = hashlib.sha256(value + e.digest).digest()
        chain.append(value)
    prediction = measure.predict(stub)
    # /var unseals after leave-initrd; sysinit then closes PCR 11 for good
    assert prediction.unseal == chain[len(stub) + 1] and prediction.final == chain[-1]
    assert prediction.pcr11.events == (*stub, *measure.phase_events())
    # another command line in the UKI predicts other values
    assert measure.predict(_stub(b"console=ttyS0 ima_appraise=off")).unseal != prediction.unseal
    with pytest.raises(ValueError, match="PCR 11"):
        measure.predict((*stub, replace(stub[0], pcr=12)))


def test_prediction_agrees_with_systemd_measure():
    """systemd-measure 252 calculate --phase= (the reference for PCR 11 with systemd's phases) on the same
    sections: the value at leave-initrd is what /var is sealed to, the one at sysinit what a quote shows."""
    import tempfile
    from pathlib import Path

    sections = {"linux": b"bzImage", "initrd": b"initrd", "cmdline": b"console=ttyS0 quiet", "osrel": b"ID=obelisk\n"}
    with tempfile.TemporaryDirectory() as tmp:
        args = []
        for name, data in sections.items():
            (Path(tmp) / name).write_bytes(data)
            args.append(f"--{name}={Path(tmp) / name}")
        prediction = measure.predict(_stub())
        for phase, expected in ((measure.UNSEAL_PHASE, prediction.unseal),
                                ("enter-initrd:leave-initrd:sysinit", prediction.final)):
            out = subprocess.run(["/usr/lib/systemd/systemd-measure", "calculate", *args, "--bank=sha256",
                                  f"--phase={phase}"], capture_output=True, text=True, check=True).stdout
            assert f"11:sha256={expected.hex()}" in out, out


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

    prediction = measure.predict(_stub())
    for event in prediction.pcr11.events:  # the stub's, then the node's phases
        proc = subprocess.run(["tpm2_send", "-T", swtpm.tcti], input=measure.extend_command(11, event.digest),
                              capture_output=True, check=True)
        assert proc.stdout[6:10] == b"\0\0\0\0", proc.stdout.hex()  # TPM_RC_SUCCESS
    assert pcr_values(swtpm.tcti, "sha256", [11])[11] == prediction.final


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
