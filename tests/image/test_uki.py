"""The UKI: assembled from Debian's systemd-stub, read back by binutils, its PCR 11 equal to systemd-measure's,
its PCR 4 events equal to a real OVMF log's."""

from __future__ import annotations

import hashlib
import random
import re
import subprocess
from pathlib import Path

import pytest

from obelisk.core import tools
from obelisk.core.errors import InputError, ParseError
from obelisk.image import uki
from obelisk.signer.authenticode import authenticode_digest, parse_pe
from obelisk.tpm import eventlog
from obelisk.tpm.prediction import replay

SYSTEMD_MEASURE = "/usr/lib/systemd/systemd-measure"
OVMF_LOG = Path("/work/shared/testdata/eventlog/event-sd-boot-fedora37.bin")
PCRPKEY = b"-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----\n"


def sample(cmdline: bytes = b"console=ttyS0 root=PARTUUID=x ro", *, signed_pcrs: bool = False) -> uki.UkiSections:
    rng = random.Random(11)
    return uki.UkiSections(linux=b"MZ" + rng.randbytes(250_000), initrd=rng.randbytes(600_001), cmdline=cmdline,
                           osrel=b'ID=obelisk\nVERSION_ID="1.0"\n',
                           pcrsig=b'{"sha256":[]}' if signed_pcrs else None,
                           pcrpkey=PCRPKEY if signed_pcrs else None)


@pytest.mark.parametrize("signed_pcrs", [False, True])
def test_assembled_uki_round_trips(signed_pcrs):
    sections = sample(signed_pcrs=signed_pcrs)
    assert uki.parse(uki.assemble(uki.load_stub(), sections)) == sections


def test_assembly_is_reproducible_and_follows_its_inputs(tmp_path):
    first, second = tmp_path / "a.efi", tmp_path / "b.efi"
    uki.write_uki(first, sample())
    uki.write_uki(second, sample())
    assert first.read_bytes() == second.read_bytes()
    other = uki.assemble(uki.load_stub(), sample(b"console=ttyS0 root=PARTUUID=y ro"))
    assert other != first.read_bytes()
    assert len(other) == len(first.read_bytes())


def test_binutils_reads_the_sections_back_at_aligned_disjoint_addresses(tmp_path):
    sections = sample(signed_pcrs=True)
    path = tmp_path / "uki.efi"
    uki.write_uki(path, sections)
    for name, expected in sections.by_name().items():
        dumped = tmp_path / f"dump{name}"
        subprocess.run([tools.which("objcopy"), "-O", "binary", f"--dump-section={name}={dumped}", str(path),
                        str(tmp_path / "ignored")], check=True, capture_output=True)
        assert dumped.read_bytes() == expected, name
    dump = subprocess.run([tools.which("objdump"), "-h", str(path)], check=True, capture_output=True,
                          text=True).stdout
    rows = re.findall(r"^\s*\d+\s+(\S+)\s+([0-9a-f]+)\s+([0-9a-f]+)", dump, re.M)
    image = parse_pe(path.read_bytes())
    spans = sorted((int(vma, 16), int(vma, 16) + int(size, 16), name) for name, size, vma in rows)
    assert {name for _, _, name in spans} >= set(sections.by_name())
    for (_, end, name), (start, _, following) in zip(spans, spans[1:]):
        assert end <= start, f"{name} overlaps {following}"
    for start, _, name in spans:
        if name in sections.by_name():
            assert start % image.section_alignment == 0
            assert start >= 0x19000, "after the stub's own sections"
    assert spans[-1][1] <= image.size_of_image
    assert image.symbol_table == (0, 0)


def test_the_stub_is_kept_byte_for_byte_and_its_signature_and_symbols_dropped(tmp_path):
    stub = uki.load_stub()
    key = tmp_path / "k.pem"
    cert = tmp_path / "c.pem"
    subprocess.run([tools.which("openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(cert), "-subj", "/CN=stub", "-days", "1"], check=True, capture_output=True)
    signed_stub = tmp_path / "signed.stub"
    subprocess.run([tools.which("sbsign"), "--key", str(key), "--cert", str(cert), "--output", str(signed_stub),
                    str(uki.STUB_PATH)], check=True, capture_output=True)
    original = parse_pe(stub)
    for source in (stub, signed_stub.read_bytes()):
        built = uki.assemble(source, sample())
        image = parse_pe(built)
        assert image.certificate_table == (0, 0) and image.symbol_table == (0, 0)
        assert built[original.size_of_headers:original.raw_end()] == stub[original.size_of_headers:original.raw_end()]
        assert image.sections[:len(original.sections)] == original.sections
    assert uki.assemble(signed_stub.read_bytes(), sample()) == uki.assemble(stub, sample())


def test_a_missing_stub_names_its_debian_package(tmp_path):
    with pytest.raises(InputError, match="systemd-boot-efi"):
        uki.write_uki(tmp_path / "uki.efi", sample(), stub=tmp_path / "linuxx64.efi.stub")
    assert not (tmp_path / "uki.efi").exists()


def test_bad_sections_and_stubs_are_refused(tmp_path):
    with pytest.raises(InputError, match=r"\.cmdline is empty"):
        uki.assemble(uki.load_stub(), sample(b""))
    built = uki.assemble(uki.load_stub(), sample())
    with pytest.raises(InputError, match=r"already has a \.linux"):
        uki.assemble(built, sample())
    with pytest.raises(ParseError, match=r"no \.linux section"):
        uki.parse(uki.load_stub())
    with pytest.raises(ParseError, match="truncated"):
        uki.parse(built[:0x250], source="cut.efi")


def systemd_measure(sections: uki.UkiSections, tmp_path: Path) -> bytes:
    args = [SYSTEMD_MEASURE, "calculate", "--bank=sha256", "--phase="]
    for name, data in sections.by_name().items():
        if name == ".pcrsig":
            continue  # not measured, and systemd-measure has no option for it
        path = tmp_path / name.lstrip(".")
        path.write_bytes(data)
        args.append(f"--{name.lstrip('.')}={path}")
    out = subprocess.run(args, check=True, capture_output=True, text=True).stdout
    found = re.fullmatch(r"11:sha256=([0-9a-f]{64})\n", out)
    assert found, out
    return bytes.fromhex(found.group(1))


@pytest.mark.parametrize("signed_pcrs", [False, True])
def test_pcr11_equals_systemd_measure(signed_pcrs, tmp_path):
    sections = sample(signed_pcrs=signed_pcrs)
    prediction = uki.pcr11_prediction(sections)
    assert prediction.value == systemd_measure(sections, tmp_path)
    changed = sample(b"console=ttyS0 root=PARTUUID=x ro init=/bin/sh", signed_pcrs=signed_pcrs)
    assert uki.pcr11_prediction(changed).value == systemd_measure(changed, tmp_path)
    assert uki.pcr11_prediction(changed).value != prediction.value
    names = [e.name for e in prediction.events]
    assert names[:4] == ["UKI section name .linux", "UKI section .linux", "UKI section name .osrel",
                         "UKI section .osrel"]
    assert ("UKI section .pcrpkey" in names) == signed_pcrs and not any(".pcrsig" in n for n in names)
    cmdline_event = prediction.events[names.index("UKI section .cmdline")]
    assert cmdline_event.event_type == eventlog.EV_IPL and cmdline_event.pcr == 11
    assert cmdline_event.data == ".cmdline\0".encode("utf-16-le")


def test_pcr11_of_a_parsed_uki_is_that_of_its_inputs():
    sections = sample(signed_pcrs=True)
    assert uki.pcr11_prediction(uki.parse(uki.assemble(uki.load_stub(), sections))) == uki.pcr11_prediction(sections)


def test_pcr4_fixed_events_equal_those_of_a_real_ovmf_boot():
    log = eventlog.parse(OVMF_LOG.read_bytes(), str(OVMF_LOG))
    observed = [e for e in log.events if e.pcr == 4]
    digest = hashlib.sha256(b"the UKI").digest()
    prediction = uki.pcr4_prediction(digest)
    assert len(observed) == 2  # that boot's log ends before an application was measured
    for seen, expected in zip(observed, prediction.events):
        assert (seen.event_type, seen.digest("sha256"), seen.data) == \
            (expected.event_type, expected.digest, expected.data)
    assert prediction.events[-1].event_type == eventlog.EV_EFI_BOOT_SERVICES_APPLICATION
    assert prediction.events[-1].digest == digest
    state = eventlog.replay(log).value("sha256", 4)
    assert prediction.value == replay(prediction.events[-1:], start=state)


def test_pcr4_counts_earlier_boot_attempts_and_follows_the_uki(tmp_path):
    path = tmp_path / "uki.efi"
    uki.write_uki(path, sample())
    digest = authenticode_digest(path.read_bytes())
    first = uki.pcr4_prediction(digest)
    retried = uki.pcr4_prediction(digest, earlier_boot_attempts=1)
    assert [e.data for e in retried.events[2:4]] == [uki.RETURNING_FROM_EFI_APPLICATION,
                                                     uki.CALLING_EFI_APPLICATION]
    assert len(retried.events) == len(first.events) + 2 and retried.value != first.value
    other = authenticode_digest(uki.assemble(uki.load_stub(), sample(b"console=ttyS0 single")))
    assert uki.pcr4_prediction(other).value != first.value
    with pytest.raises(ValueError):
        uki.pcr4_prediction(digest[:20])


# ---- real boots: Debian 12's OVMF + swtpm booting a UKI (Debian's systemd 252.39 stub, Debian's 6.1.0-57-cloud
# kernel, a busybox initramfs that printed the event log) from \EFI\BOOT\BOOTX64.EFI on a GPT disk. ----------

RECORDED = Path(__file__).parent / "data"
RECORDED_UKI_AUTHENTICODE = bytes.fromhex("688d61bb34abf899f1976cb2eb2b21be03cfb9cb64d67fe1911ed035dd1bf666")
RECORDED_KERNEL_AUTHENTICODE = bytes.fromhex("65c89335d8a5d25a8eeffd4de4a02087ac8dcf26165dbff8806a19f68ecd2842")
RECORDED_SECTIONS = {  # sha256 of each input; .osrel and .cmdline are given as bytes
    ".linux": "1a7ac0c40b10b98353b6f85fa9a0d4f2703287979567e19629d35ad2d777d124",  # vmlinuz-6.1.0-57-cloud-amd64
    ".osrel": b"ID=obelisk\nVERSION_ID=1\n",
    ".cmdline": b"console=ttyS0 panic=-1",
    ".initrd": "fa95780fb0c61cb309a465709e7f90ae7f3d4e4a7210ec2cfb269da98ec351eb",
    ".pcrpkey": "312bb5be5140fa723fa4895de1773ee478b2a96c38e83710899531c271f8e3fd",  # ovmf's PkKek-1-snakeoil.pem
}


def recorded(name: str) -> eventlog.EventLog:
    path = RECORDED / name
    return eventlog.parse(path.read_bytes(), str(path))


@pytest.mark.parametrize("log_name, secure_boot", [("ovmf-secureboot-uki.eventlog", True),
                                                    ("ovmf-no-secureboot-uki.eventlog", False)])
def test_pcr4_equals_a_real_ovmf_boot(log_name, secure_boot):
    log = recorded(log_name)
    prediction = uki.pcr4_prediction(RECORDED_UKI_AUTHENTICODE, secure_boot=secure_boot,
                                     kernel_authenticode=RECORDED_KERNEL_AUTHENTICODE)
    observed = [e for e in log.events if e.pcr == 4]
    assert [(e.event_type, e.digest("sha256")) for e in observed] == \
        [(e.event_type, e.digest) for e in prediction.events]
    assert eventlog.replay(log).value("sha256", 4) == prediction.value
    # the other mode's prediction does not fit: PCR 4 tells whether the kernel was loaded unverified
    other = uki.pcr4_prediction(RECORDED_UKI_AUTHENTICODE, secure_boot=not secure_boot,
                                kernel_authenticode=RECORDED_KERNEL_AUTHENTICODE)
    assert other.value != prediction.value


@pytest.mark.parametrize("log_name", ["ovmf-secureboot-uki.eventlog", "ovmf-no-secureboot-uki.eventlog"])
def test_pcr11_event_by_event_equals_a_real_stub(log_name):
    log = recorded(log_name)
    observed = [e for e in log.events if e.pcr == 11]
    shape = uki.pcr11_prediction(uki.UkiSections(linux=b"l", initrd=b"i", cmdline=RECORDED_SECTIONS[".cmdline"],
                                                 osrel=RECORDED_SECTIONS[".osrel"], pcrsig=b"s", pcrpkey=b"k"))
    assert [(e.event_type, e.data) for e in observed] == [(e.event_type, e.data) for e in shape.events]
    for seen, expected in zip(observed, shape.events):
        if expected.name.startswith("UKI section name"):
            assert seen.digest("sha256") == expected.digest
        else:
            content = RECORDED_SECTIONS[expected.name.removeprefix("UKI section ")]
            wanted = hashlib.sha256(content).hexdigest() if isinstance(content, bytes) else content
            assert seen.digest("sha256").hex() == wanted, expected.name
    # nothing else extends PCR 11 before the initramfs runs, and PCR 12 stays empty: the stub used the
    # embedded command line (Secure Boot on or off; OVMF passes no load options to BOOTX64.EFI)
    assert not [e for e in log.events if e.pcr == 12]


def test_uki_pcr4_prediction_computes_both_digests():
    stub = uki.load_stub()
    kernel_like = uki.UkiSections(linux=stub, initrd=b"initrd", cmdline=b"quiet", osrel=b"ID=obelisk\n")
    built = uki.assemble(stub, kernel_like)
    secure = uki.uki_pcr4_prediction(built)
    insecure = uki.uki_pcr4_prediction(built, secure_boot=False)
    assert secure.events[-1].digest == insecure.events[-2].digest == authenticode_digest(built)
    assert insecure.events[-1].digest == authenticode_digest(stub) == uki.kernel_authenticode_digest(kernel_like)
    with pytest.raises(ParseError, match=r"UKI section \.linux"):
        uki.uki_pcr4_prediction(uki.assemble(stub, sample()), secure_boot=False)
    with pytest.raises(ValueError, match="kernel_authenticode"):
        uki.pcr4_prediction(authenticode_digest(built), secure_boot=False)


def test_random_corruption_of_a_uki_gives_parse_errors_or_sections():
    built = uki.assemble(uki.load_stub(), uki.UkiSections(linux=b"kernel" * 50, initrd=b"initrd" * 50,
                                                          cmdline=b"quiet", osrel=b"ID=obelisk\n"))
    image = parse_pe(built)
    header_end = image.section_table_offset + len(image.sections) * 40
    rng = random.Random(5)
    parsed = 0
    for _ in range(2000):
        bad = bytearray(built)
        for _ in range(rng.randint(1, 6)):
            bad[rng.randrange(0x40, header_end)] = rng.randrange(256)
        try:
            uki.parse(bytes(bad))
            parsed += 1
        except ParseError:
            pass
    assert 0 < parsed < 2000
