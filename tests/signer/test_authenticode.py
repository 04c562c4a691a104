"""PE/COFF parsing, the Authenticode digest and Secure Boot signing, checked against sbsign, sbverify,
osslsigncode and openssl (independent implementations of the same digest)."""

from __future__ import annotations

import datetime as dt
import os
import random
import re
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from obelisk.core import tools
from obelisk.core.errors import InputError, ParseError
from obelisk.image import uki
from obelisk.signer import authenticode
from obelisk.signer.authenticode import authenticode_digest, parse_pe, sign_pe, verify_pe_signature

STUB = uki.STUB_PATH
SIGNING_TIME = 1700000000


def make_db_key(directory: Path, name: str = "db") -> tuple[Path, Path]:
    """A Secure Boot db key and its self-signed certificate (PEM)."""
    directory.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"test {name}")])
    now = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now)
            .not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    key_path, cert_path = directory / f"{name}.key", directory / f"{name}.pem"
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


@pytest.fixture(scope="module")
def db(tmp_path_factory) -> tuple[Path, Path]:
    return make_db_key(tmp_path_factory.mktemp("db"))


@pytest.fixture(scope="module")
def other_db(tmp_path_factory) -> tuple[Path, Path]:
    return make_db_key(tmp_path_factory.mktemp("other"), "other")


@pytest.fixture(scope="module")
def unsigned_uki(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("uki") / "uki.efi"
    rng = random.Random(13)
    sections = uki.UkiSections(linux=rng.randbytes(300_001), initrd=rng.randbytes(700_003),
                               cmdline=b"console=ttyS0 ro", osrel=b"ID=obelisk\nVERSION_ID=1\n")
    uki.write_uki(path, sections)
    return path


def osslsigncode_digests(path: Path) -> tuple[str | None, str]:
    """(the digest the signature carries, the digest osslsigncode computes), lower-case hex."""
    out = tools.run("osslsigncode", ["verify", "-in", path], check=False)
    text = out.stdout.decode() + out.stderr.decode()
    current = re.search(r"Current message digest\s*:\s*([0-9A-F]+)", text)
    calculated = re.search(r"Calculated message digest\s*:\s*([0-9A-F]+)", text)
    assert calculated, text
    return (current.group(1).lower() if current else None), calculated.group(1).lower()


def digest_in_pkcs7(signed: Path, tmp_path: Path) -> str:
    """The digest in the SpcIndirectDataContent of `signed`'s signature, read by sbattach and openssl asn1parse."""
    sig = tmp_path / "detached.p7"
    subprocess.run([tools.which("sbattach"), "--detach", str(sig), str(signed)], check=True, capture_output=True)
    dump = subprocess.run([tools.which("openssl"), "asn1parse", "-inform", "DER", "-in", str(sig)], check=True,
                          capture_output=True, text=True).stdout
    # SpcIndirectDataContent comes first in the SignedData; its DigestInfo's OCTET STRING is the first
    # 32-byte one (the messageDigest attribute, a hash of that content, comes later).
    found = re.search(r"l=\s*32 prim: OCTET STRING\s*\[HEX DUMP\]:([0-9A-F]{64})", dump)
    assert found, dump
    return found.group(1).lower()


def test_digest_equals_sbsign_osslsigncode_and_the_pkcs7_content(unsigned_uki, db, tmp_path):
    ours = authenticode_digest(unsigned_uki.read_bytes()).hex()
    signed = tmp_path / "sbsigned.efi"
    subprocess.run([tools.which("sbsign"), "--key", str(db[0]), "--cert", str(db[1]), "--output", str(signed),
                    str(unsigned_uki)], check=True, capture_output=True)
    current, calculated = osslsigncode_digests(signed)
    assert current == calculated == ours
    assert digest_in_pkcs7(signed, tmp_path) == ours
    assert authenticode_digest(signed.read_bytes()).hex() == ours


def test_digest_of_debian_efi_binaries_with_symbol_tables_and_padding(db, tmp_path):
    """The stub and systemd-boot carry a COFF symbol table after their sections and are not 8-byte
    aligned: the digest covers that trailing data and the signer's padding, as sbsign computes it."""
    for source in (STUB, Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")):
        signed = tmp_path / source.name
        subprocess.run([tools.which("sbsign"), "--key", str(db[0]), "--cert", str(db[1]), "--output",
                        str(signed), str(source)], check=True, capture_output=True)
        current, _ = osslsigncode_digests(signed)
        assert authenticode_digest(signed.read_bytes()).hex() == current


def test_sign_pe_pem_key_is_accepted_by_sbverify_and_refused_with_another_cert(unsigned_uki, db, other_db, tmp_path):
    signed = tmp_path / "signed.efi"
    sign_pe(unsigned_uki, signed, str(db[0]), db[1], signing_time=SIGNING_TIME)
    ok = subprocess.run([tools.which("sbverify"), "--cert", str(db[1]), str(signed)], capture_output=True)
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([tools.which("sbverify"), "--cert", str(other_db[1]), str(signed)], capture_output=True)
    assert bad.returncode != 0
    verify_pe_signature(signed, db[1])
    with pytest.raises(InputError, match="does not verify"):
        verify_pe_signature(signed, other_db[1])
    with pytest.raises(InputError, match="does not verify"):
        verify_pe_signature(unsigned_uki, db[1])
    # signing changes the CheckSum and the certificate entry, neither of which the digest covers
    assert authenticode_digest(signed.read_bytes()) == authenticode_digest(unsigned_uki.read_bytes())
    assert digest_in_pkcs7(signed, tmp_path) == authenticode_digest(unsigned_uki.read_bytes()).hex()
    assert parse_pe(signed.read_bytes()).certificate_table[0] == unsigned_uki.stat().st_size


def test_sign_pe_is_reproducible_and_the_time_is_the_one_given(unsigned_uki, db, tmp_path):
    first, second, later = tmp_path / "a.efi", tmp_path / "b.efi", tmp_path / "c.efi"
    sign_pe(unsigned_uki, first, str(db[0]), db[1], signing_time=SIGNING_TIME)
    sign_pe(unsigned_uki, second, str(db[0]), db[1], signing_time=SIGNING_TIME)
    sign_pe(unsigned_uki, later, str(db[0]), db[1], signing_time=SIGNING_TIME + 1)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != later.read_bytes()


def test_sign_pe_takes_source_date_epoch(unsigned_uki, db, tmp_path, monkeypatch):
    monkeypatch.setenv("SOURCE_DATE_EPOCH", str(SIGNING_TIME))
    implicit, explicit = tmp_path / "a.efi", tmp_path / "b.efi"
    sign_pe(unsigned_uki, implicit, str(db[0]), db[1])
    sign_pe(unsigned_uki, explicit, str(db[0]), db[1], signing_time=SIGNING_TIME)
    assert implicit.read_bytes() == explicit.read_bytes()


def test_sign_pe_refuses_a_missing_key_and_a_non_pe_input(unsigned_uki, db, tmp_path):
    with pytest.raises(InputError, match="signing key not found"):
        sign_pe(unsigned_uki, tmp_path / "x.efi", str(tmp_path / "nope.key"), db[1])
    text = tmp_path / "text"
    text.write_bytes(b"not an EFI binary at all" * 10)
    with pytest.raises(ParseError, match="MZ"):
        sign_pe(text, tmp_path / "y.efi", str(db[0]), db[1])
    assert not (tmp_path / "x.efi").exists() and not (tmp_path / "y.efi").exists()


@pytest.mark.hsm
def test_sign_pe_with_a_softhsm_key_signs_like_the_pem_key_and_keeps_the_pin_off_argv(
        unsigned_uki, db, tmp_path, monkeypatch):
    tokens = tmp_path / "tokens"
    tokens.mkdir()
    conf = tmp_path / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {tokens}\nobjectstore.backend = file\nlog.level = ERROR\n")
    monkeypatch.setenv("SOFTHSM2_CONF", str(conf))
    pin = "917364"
    tools.run("softhsm2-util", ["--init-token", "--free", "--label", "sb", "--pin", pin, "--so-pin", "8765"])
    key = serialization.load_pem_private_key(db[0].read_bytes(), None)
    der = tmp_path / "db.der"
    der.write_bytes(key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                      serialization.NoEncryption()))
    tools.run("pkcs11-tool", ["--module", "/usr/lib/softhsm/libsofthsm2.so", "--login", "--pin", pin,
                              "--write-object", str(der), "--type", "privkey", "--id", "0b", "--label", "db"])
    argvs: list[list[str]] = []
    real_run = tools.run

    def spy(tool, args, **kwargs):
        argvs.append([tool, *map(os.fspath, args)])
        return real_run(tool, args, **kwargs)

    monkeypatch.setattr(tools, "run", spy)
    uri = "pkcs11:token=sb;object=db;type=private?module-path=/usr/lib/softhsm/libsofthsm2.so"
    from_argument = tmp_path / "hsm-arg.efi"
    sign_pe(unsigned_uki, from_argument, uri, db[1], pin=pin, signing_time=SIGNING_TIME)
    pin_file = tmp_path / "pin"
    pin_file.write_text(pin + "\n")
    pin_file.chmod(0o600)
    from_uri = tmp_path / "hsm-uri.efi"
    sign_pe(unsigned_uki, from_uri, f"{uri}&pin-source=file:{pin_file}", db[1], signing_time=SIGNING_TIME)
    pem = tmp_path / "pem.efi"
    sign_pe(unsigned_uki, pem, str(db[0]), db[1], signing_time=SIGNING_TIME)
    assert argvs and all(pin not in arg for argv in argvs for arg in argv)
    assert not list(tmp_path.glob(".sign-*")), "the PIN file's directory is removed after signing"
    # RSA PKCS#1 v1.5 is deterministic: the token signs to the same bytes as the PEM key
    assert from_argument.read_bytes() == from_uri.read_bytes() == pem.read_bytes()
    verify_pe_signature(from_argument, db[1])
    with pytest.raises(InputError, match="cannot sign"):
        sign_pe(unsigned_uki, tmp_path / "wrong.efi", uri, db[1], pin="000000", signing_time=SIGNING_TIME)


# ---- hostile input ---------------------------------------------------------------------------------------


def test_parse_pe_reads_the_stub_as_objdump_does():
    image = parse_pe(STUB.read_bytes(), str(STUB))
    dump = subprocess.run([tools.which("objdump"), "-h", str(STUB)], check=True, capture_output=True,
                          text=True).stdout
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)\s+[0-9a-f]+\s+([0-9a-f]+)", dump, re.M)
    assert [(s.name, s.virtual_size, s.virtual_address, s.raw_offset) for s in image.sections] == \
        [(name, int(size, 16), int(vma, 16), int(off, 16)) for name, size, vma, off in rows]
    assert image.machine == authenticode.IMAGE_FILE_MACHINE_AMD64
    assert image.subsystem == authenticode.IMAGE_SUBSYSTEM_EFI_APPLICATION
    assert image.certificate_table == (0, 0)


def _patched(data: bytes, offset: int, fmt: str, value: int) -> bytes:
    out = bytearray(data)
    struct.pack_into(fmt, out, offset, value)
    return bytes(out)


def test_malformed_headers_are_parse_errors_naming_the_offset():
    data = STUB.read_bytes()
    image = parse_pe(data)
    pe = struct.unpack_from("<I", data, 0x3C)[0]
    first_section = image.section_table_offset
    cert_entry = image.certificate_entry_offset
    assert cert_entry is not None
    cases = [
        (data[:0x20], "truncated DOS header", 0),
        (_patched(data, 0x3C, "<I", len(data) - 2), "truncated PE signature", len(data) - 2),
        (_patched(data, pe, "<I", 0), "no 'PE", pe),
        (_patched(data, pe + 6, "<H", 0), "NumberOfSections is 0", pe + 6),
        (_patched(data, pe + 6, "<H", 500), "NumberOfSections is 500", pe + 6),
        (_patched(data, image.optional_header_offset, "<H", 0x999), "optional header magic",
         image.optional_header_offset),
        (_patched(data, first_section + 20, "<I", len(data) - 16), "section 0 raw data", first_section + 16),
        (_patched(data, image.optional_header_offset + 36, "<I", 0x300), "FileAlignment",
         image.optional_header_offset + 36),
        (_patched(_patched(data, cert_entry, "<I", 16), cert_entry + 4, "<I", 64), "certificate table",
         cert_entry),
        (data[:first_section + 10], "truncated section table", first_section),
    ]
    for bad, message, offset in cases:
        with pytest.raises(ParseError, match=message) as caught:
            authenticode_digest(bad, source="bad.efi")
        assert caught.value.offset == offset, (message, str(caught.value))
        assert str(caught.value).startswith("bad.efi (offset ")


def test_random_corruption_gives_parse_errors_or_a_digest_never_another_exception():
    data = STUB.read_bytes()[:0x600] + bytes(512)
    rng = random.Random(7)
    for _ in range(3000):
        bad = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            bad[rng.randrange(0x40, 0x2C8)] = rng.randrange(256)
        try:
            authenticode_digest(bytes(bad))
        except ParseError:
            pass


def test_pe_checksum_equals_the_ones_debian_and_osslsigncode_compute(unsigned_uki):
    for path in (STUB, unsigned_uki):
        data = path.read_bytes()
        image = parse_pe(data)
        stored = struct.unpack_from("<I", data, image.checksum_offset)[0]
        assert authenticode.pe_checksum(data, image.checksum_offset) == stored
    out = tools.run("osslsigncode", ["verify", "-in", unsigned_uki], check=False)
    text = out.stdout.decode()
    # osslsigncode 2.5 (bookworm) prints "Calculated PE checksum", 2.9 (backports) only "PE checksum"
    found = (re.search(r"Calculated PE checksum\s*:\s*([0-9A-F]+)", text)
             or re.search(r"PE checksum\s*:\s*([0-9A-F]+)", text))
    assert found, text
    image = parse_pe(unsigned_uki.read_bytes())
    assert int(found.group(1), 16) == authenticode.pe_checksum(unsigned_uki.read_bytes(), image.checksum_offset)


def test_sign_pe_with_an_encrypted_pem_key_and_its_passphrase(unsigned_uki, db, tmp_path, monkeypatch):
    from obelisk.signer.keys import PassphraseSource

    key = serialization.load_pem_private_key(db[0].read_bytes(), None)
    encrypted = tmp_path / "db-encrypted.key"
    encrypted.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.BestAvailableEncryption(b"correct horse")))
    argvs: list[list[str]] = []
    real_run = tools.run
    monkeypatch.setattr(tools, "run", lambda tool, args, **kw: argvs.append(list(map(os.fspath, args)))
                        or real_run(tool, args, **kw))
    monkeypatch.setenv("DB_PASSPHRASE", "correct horse")
    signed, plain = tmp_path / "enc.efi", tmp_path / "plain.efi"
    sign_pe(unsigned_uki, signed, str(encrypted), db[1], signing_time=SIGNING_TIME,
            passphrase=PassphraseSource(env="DB_PASSPHRASE"))
    sign_pe(unsigned_uki, plain, str(db[0]), db[1], signing_time=SIGNING_TIME)
    assert signed.read_bytes() == plain.read_bytes()
    assert not any("correct horse" in arg for argv in argvs for arg in argv)
    with pytest.raises(InputError, match="cannot sign"):
        sign_pe(unsigned_uki, tmp_path / "x.efi", str(encrypted), db[1], signing_time=SIGNING_TIME,
                passphrase=PassphraseSource(value=b"wrong"))
