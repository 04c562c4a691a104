"""The OVMF variable store: virt-fw-vars reads back the customer's keys and the Secure Boot state; rebuilds are
byte-identical; the contents fed to the PCR 7 prediction are the store's."""

from __future__ import annotations

import hashlib
import subprocess
import time
from pathlib import Path

import pytest

from obelisk.core.errors import InputError, ObeliskError
from obelisk.image import varstore
from obelisk.signer import efi_signature_list as esl
from obelisk.signer import keygen, secureboot
from obelisk.tpm import uefi

VIRT_FW_VARS = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "virt-fw-vars"


@pytest.fixture(scope="module")
def customer(tmp_path_factory) -> tuple[keygen.GeneratedKeys, secureboot.Enrollment]:
    made = keygen.generate(tmp_path_factory.mktemp("keys"), "ecdsa-p256", organization="varstore test")
    sb = made.secure_boot
    assert sb is not None
    return made, secureboot.load_enrollment(made.ca_cert, sb.pk_cert, sb.kek_cert, sb.db_cert)


def virt_fw_vars(*args: str | Path) -> str:
    proc = subprocess.run([str(VIRT_FW_VARS), *map(str, args)], capture_output=True, text=True, check=True)
    return proc.stdout + proc.stderr


def test_enrolled_keys_and_enforcing_state_as_virt_fw_vars_reads_them(customer, tmp_path):
    made, enrolled = customer
    out = tmp_path / "OVMF_VARS.fd"
    seen = varstore.write_varstore(out, enrolled)
    assert out.stat().st_size == varstore.OVMF_VARS_TEMPLATE.stat().st_size
    compact = virt_fw_vars("-i", out, "--print")
    lines = {line.split(":", 1)[0].strip(): line.split(":", 1)[1].strip() for line in compact.splitlines()
             if ":" in line and not line.startswith(("INFO", "WARNING"))}
    assert lines["SecureBootEnable"] == "bool: ON"
    assert lines["CustomMode"] == "bool: off"
    assert "dbx" not in lines
    verbose = virt_fw_vars("-i", out, "--print", "--verbose")
    for role, what in (("PK", "platform key (PK)"), ("KEK", "key exchange key (KEK)"),
                       ("db", "signature database key (db)")):
        block = verbose.split(f"name={role} ", 1)[1].split("\n\n", 1)[0]
        assert "siglist type=guid:EfiCertX509 count=1" in block
        assert f"subject CN=varstore test Secure Boot {what}" in block
        assert "issuer CN=varstore test IMA CA" in block
    # the certificates themselves, extracted by virt-fw-vars, are the customer's (DER-identical)
    extract = tmp_path / "extract"
    extract.mkdir()
    subprocess.run([str(VIRT_FW_VARS), "-i", str(out), "--extract-certs"], cwd=extract, check=True,
                   capture_output=True)
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    extracted = {x509.load_pem_x509_certificate(p.read_bytes()).public_bytes(Encoding.DER)
                 for p in extract.glob("*.pem")}
    assert extracted == {enrolled.pk, enrolled.kek, enrolled.db}
    assert all(str(enrolled.owner) in p.name for p in extract.glob("*.pem"))
    # what the build hands to the PCR 7 prediction is what the store holds
    assert seen == varstore.SecureBootVariables(True, enrolled.variable("PK"), enrolled.variable("KEK"),
                                                enrolled.variable("db"), b"")


def test_secure_boot_off_keeps_the_keys_and_clears_secure_boot_enable(customer, tmp_path):
    _, enrolled = customer
    on, off = tmp_path / "on.fd", tmp_path / "off.fd"
    seen_on = varstore.write_varstore(on, enrolled)
    seen_off = varstore.write_varstore(off, enrolled, secure_boot=False)
    assert "SecureBootEnable    : bool: off" in virt_fw_vars("-i", off, "--print")
    assert (seen_off.pk, seen_off.kek, seen_off.db, seen_off.dbx) == (seen_on.pk, seen_on.kek, seen_on.db, seen_on.dbx)
    assert not seen_off.secure_boot
    p_on, p_off = varstore.pcr7_prediction(seen_on, enrolled), varstore.pcr7_prediction(seen_off, enrolled)
    assert p_on == uefi.pcr7_prediction(True, seen_on.pk, seen_on.kek, seen_on.db, seen_on.dbx, enrolled.db_authority)
    assert [e.name for e in p_on.events if e not in p_off.events] == \
        ["SecureBoot", "db certificate that verified the UKI (authority)"]


def test_rebuild_is_byte_identical(customer, tmp_path):
    _, enrolled = customer
    first, second = tmp_path / "a.fd", tmp_path / "b.fd"
    varstore.write_varstore(first, enrolled)
    varstore.write_varstore(second, enrolled)
    assert hashlib.sha256(first.read_bytes()).digest() == hashlib.sha256(second.read_bytes()).digest()


def test_authenticated_variable_timestamps_are_the_certificates_not_before(customer, tmp_path):
    """The only time in the store comes from the certificates (virt-firmware's choice), never the clock."""
    _, enrolled = customer
    out = tmp_path / "vars.fd"
    varstore.write_varstore(out, enrolled)
    from virt.firmware.varstore.edk2 import Edk2VarStore
    variables = Edk2VarStore(str(out)).get_varlist()
    from cryptography import x509
    for role, der in (("PK", enrolled.pk), ("KEK", enrolled.kek), ("db", enrolled.db)):
        assert variables[role].time == x509.load_der_x509_certificate(der).not_valid_before_utc
    assert variables["SecureBootEnable"].time is None


def test_a_template_with_other_keys_gets_only_the_customers(customer, tmp_path):
    _, enrolled = customer
    ms = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    seen = varstore.write_varstore(tmp_path / "vars.fd", enrolled, template=ms)
    assert [len(esl.parse_database(v)) for v in (seen.pk, seen.kek, seen.db)] == [1, 1, 1]
    assert seen.dbx == b""
    assert "Microsoft" not in virt_fw_vars("-i", tmp_path / "vars.fd", "--print", "--verbose")


def test_missing_or_bad_template_is_one_line(customer, tmp_path):
    _, enrolled = customer
    with pytest.raises(ObeliskError, match=r"not found \(Debian package ovmf"):
        varstore.write_varstore(tmp_path / "x.fd", enrolled, template=tmp_path / "missing.fd")
    junk = tmp_path / "junk.fd"
    junk.write_bytes(b"\0" * 4096)
    with pytest.raises(InputError, match="not an edk2"):
        varstore.write_varstore(tmp_path / "x.fd", enrolled, template=junk)
    assert not (tmp_path / "x.fd").exists()


# ---- the real firmware: Debian's OVMF (secboot, SMM) under QEMU with swtpm --------------------------------------
# PCR 7 is read from swtpm after QEMU is killed: its control channel stays up (no --terminate) and takes a new data
# channel (CMD_SET_DATAFD, as QEMU itself does), which answers TPM2_PCR_Read.

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
SD_BOOT = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")
CMD_SET_DATAFD = 16


@pytest.fixture(scope="module")
def other_keys(tmp_path_factory) -> keygen.GeneratedKeys:
    """Another customer's (an attacker's) keys."""
    return keygen.generate(tmp_path_factory.mktemp("other"), "rsa-2048", organization="someone else")


def pcr_read_sha256(ctrl_socket: Path, pcr: int) -> bytes:
    import array
    import socket
    import struct

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as ctrl:
        ctrl.connect(str(ctrl_socket))
        ours, theirs = socket.socketpair()
        with ours, theirs:
            ctrl.sendmsg([struct.pack(">I", CMD_SET_DATAFD)],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [theirs.fileno()]))])
            assert struct.unpack(">I", ctrl.recv(4))[0] == 0
            select = bytearray(3)
            select[pcr // 8] |= 1 << (pcr % 8)
            body = struct.pack(">IIHB", 0x17E, 1, 0x000B, 3) + bytes(select)  # TPM2_PCR_Read, sha256
            ours.sendall(struct.pack(">HI", 0x8001, 6 + len(body)) + body)
            response = ours.recv(4096)
    assert struct.unpack(">I", response[6:10])[0] == 0, response[6:10].hex()
    return response[-32:]


def signed_esp(tmp: Path, key: Path, cert: Path) -> Path:
    """A FAT image with systemd-boot signed by `key` as \\EFI\\BOOT\\BOOTX64.EFI, waiting at its menu."""
    signed, esp, conf = tmp / "bootx64.efi", tmp / "esp.img", tmp / "loader.conf"
    subprocess.run(["sbsign", "--key", str(key), "--cert", str(cert), "--output", str(signed), str(SD_BOOT)],
                   check=True, capture_output=True)
    conf.write_text("timeout menu-force\n")
    subprocess.run(["mkfs.vfat", "-C", str(esp), "8192"], check=True, capture_output=True)
    for args in (["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/loader"],
                 ["mcopy", "-i", str(esp), str(signed), "::/EFI/BOOT/BOOTX64.EFI"],
                 ["mcopy", "-i", str(esp), str(conf), "::/loader/loader.conf"]):
        subprocess.run(args, check=True, capture_output=True)
    return esp


def start_ovmf(tmp: Path, vars_fd: Path, esp: Path) -> tuple[subprocess.Popen[bytes], subprocess.Popen[bytes]]:
    (tmp / "tpm").mkdir()
    ctrl = tmp / "ctrl.sock"
    swtpm = subprocess.Popen(["swtpm", "socket", "--tpm2", "--tpmstate", f"dir={tmp / 'tpm'}",
                              "--ctrl", f"type=unixio,path={ctrl}"], stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while not ctrl.exists():
        assert time.monotonic() < deadline and swtpm.poll() is None
        time.sleep(0.05)
    # This machine's KVM has no SMM (and fails on OVMF's FPU code), and the secboot build requires SMM: TCG.
    qemu = subprocess.Popen([
        "qemu-system-x86_64", "-machine", "q35,smm=on,accel=tcg", "-m", "512", "-nodefaults", "-display", "none",
        "-global", "driver=cfi.pflash01,property=secure,value=on",
        "-drive", f"if=pflash,format=raw,unit=0,file={OVMF_CODE},readonly=on",
        "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        "-chardev", f"socket,id=chrtpm,path={ctrl}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", "tpm-tis,tpmdev=tpm0", "-drive", f"file={esp},format=raw,if=virtio,readonly=on",
        "-serial", f"file:{tmp / 'serial.log'}", "-net", "none"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return swtpm, qemu


@pytest.mark.qemu
@pytest.mark.swtpm
@pytest.mark.slow
def test_ovmf_measures_pcr7_as_predicted(customer, other_keys, tmp_path):
    """Debian's OVMF with the store (customer CA ECDSA P-256, Secure Boot keys RSA-2048): Secure Boot on admits
    the customer-signed image (PCR 7 with the db authority) and refuses another key's (Access Denied, no
    authority); off admits anything and PCR 7 says so. Each PCR 7 equals pcr7_prediction's."""
    made, enrolled = customer
    sb, foreign = made.secure_boot, other_keys.secure_boot
    assert sb is not None and foreign is not None
    cases = {  # name: (secure boot, image signed by the customer?, console line, expected authority)
        "on-customer": (True, True, "Reboot Into Firmware Interface", enrolled.db_authority),
        "on-foreign": (True, False, "Access Denied", None),
        "off-foreign": (False, False, "Reboot Into Firmware Interface", None),
    }
    running = {}
    try:
        for name, (secure_boot, customer_signed, _, _) in cases.items():
            case = tmp_path / name
            case.mkdir()
            signer = sb if customer_signed else foreign
            esp = signed_esp(case, signer.db_key, signer.db_cert)
            seen = varstore.write_varstore(case / "vars.fd", enrolled, secure_boot=secure_boot)
            running[name] = (seen, *start_ovmf(case, case / "vars.fd", esp))
        deadline = time.monotonic() + 240
        pending = set(cases)
        while pending and time.monotonic() < deadline:
            for name in list(pending):
                log = tmp_path / name / "serial.log"
                if log.exists() and cases[name][2].encode() in log.read_bytes():
                    pending.discard(name)
            time.sleep(1)
        assert not pending, f"no console line from {pending}"
        for name, (secure_boot, _, _, authority) in cases.items():
            seen, swtpm, qemu = running[name]
            qemu.kill()
            qemu.wait()
            predicted = uefi.pcr7_prediction(secure_boot, seen.pk, seen.kek, seen.db, seen.dbx, authority)
            assert pcr_read_sha256(tmp_path / name / "ctrl.sock", 7) == predicted.value, name
    finally:
        for _, swtpm, qemu in running.values():
            for proc in (qemu, swtpm):
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@pytest.mark.qemu
@pytest.mark.swtpm
@pytest.mark.slow
def test_enrollment_files_enroll_on_ovmf_in_setup_mode(customer, tmp_path):
    """The .auth files `keys generate` writes, enrolled by systemd-boot 252 (secure-boot-enroll force) on OVMF in setup
    mode: edk2 checks PK.auth's signature by the PK it carries, then the machine reboots in user mode with Secure Boot
    on (the unsigned systemd-boot is refused) and PK, KEK and db hold exactly our signature lists."""
    import shutil

    made, enrolled = customer
    sb = made.secure_boot
    assert sb is not None and sb.enroll_dir is not None
    esp, conf = tmp_path / "esp.img", tmp_path / "loader.conf"
    conf.write_text("secure-boot-enroll force\ndefault secure-boot-keys-customer\ntimeout 1\n")
    subprocess.run(["mkfs.vfat", "-C", str(esp), "8192"], check=True, capture_output=True)
    commands = [["mmd", "-i", str(esp), "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/keys",
                 "::/loader/keys/customer"],
                ["mcopy", "-i", str(esp), str(SD_BOOT), "::/EFI/BOOT/BOOTX64.EFI"],
                ["mcopy", "-i", str(esp), str(conf), "::/loader/loader.conf"]]
    commands += [["mcopy", "-i", str(esp), str(sb.enroll_dir / f"{n}.auth"), f"::/loader/keys/customer/{n}.auth"]
                 for n in ("PK", "KEK", "db")]
    for args in commands:
        subprocess.run(args, check=True, capture_output=True)
    vars_fd = tmp_path / "vars.fd"
    shutil.copyfile(varstore.OVMF_VARS_TEMPLATE, vars_fd)  # empty: setup mode
    swtpm, qemu = start_ovmf(tmp_path, vars_fd, esp)
    try:
        deadline = time.monotonic() + 240
        log = tmp_path / "serial.log"
        while time.monotonic() < deadline and not (log.exists() and b"Access Denied" in log.read_bytes()):
            time.sleep(1)
        console = log.read_bytes()
        assert b"Enrolling custom Secure Boot keys" in console and b"Access Denied" in console
    finally:
        for proc in (qemu, swtpm):
            proc.kill()
            proc.wait()
    from virt.firmware.varstore.edk2 import Edk2VarStore
    variables = Edk2VarStore(str(vars_fd)).get_varlist()
    assert {n: bytes(variables[n].data) for n in ("PK", "KEK", "db")} == \
        {n: enrolled.variable(n) for n in ("PK", "KEK", "db")}
    assert bytes(variables["SecureBootEnable"].data) == b"\x01"
