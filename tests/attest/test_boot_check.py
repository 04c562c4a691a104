"""The verifier's measured-boot check (attest/boot_check.py): a node's UEFI event log against its quote and the
build's PCR 4/7/11 predictions.

A synthetic OVMF + systemd-stub 252 boot (the events and data layouts the firmware and the stub write: TCG PC
Client PFP, systemd's TPM2_PCR_MEASUREMENTS.md) is changed one way per test, as an attacker with the boot media
or the firmware setup would; the finding of the PCR concerned must fail and say what differs in words. Real
firmware logs (tpm2-tools' fixtures) check that predictions made from a log's own events pass and that one
changed expected digest is named. Hostile event data must never crash the check.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import random
import struct
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.attest import boot_check
from obelisk.attest.boot_check import check_id, uefi_boot_findings
from obelisk.core.errors import InputError, ParseError
from obelisk.core.findings import Finding, Status
from obelisk.tpm import algorithms
from obelisk.tpm import eventlog as el
from obelisk.tpm.prediction import ExpectedEvent, PcrPrediction
from obelisk.tpm.prediction_json import (
    prediction_from_json,
    prediction_to_json,
    predictions_from_json,
    predictions_to_json,
)
from tests.attest import synth

SHARED = Path(__file__).resolve().parents[3] / "shared" / "testdata"
EV_SEPARATOR, EV_IPL, EV_EFI_ACTION = 0x4, 0xD, 0x80000007
EV_DRIVER_CONFIG, EV_APPLICATION, EV_AUTHORITY = 0x80000001, 0x80000003, 0x800000E0
SHA256_ID = algorithms.by_name("sha256").alg_id
IMAGE_SECURITY_DATABASE = bytes.fromhex("cbb219d73a3d9645a3bcdad00e67656f")  # d719b2cb-3d3a-4596-a3bc-dad00e67656f
X509_GUID = bytes.fromhex("a159c0a5e494a74a87b5ab155c2bf072")
CUSTOMER_OWNER = bytes(range(16))


def certificate(cn: str) -> bytes:
    """A self-signed certificate's DER (the keys' strength does not matter: only the subject is read)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cn)])
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
            .sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


CERTS = {cn: certificate(cn) for cn in ("Customer PK", "Customer KEK", "Customer db", "Microsoft Corporation UEFI CA")}


def signature_list(*ders: bytes) -> bytes:
    """EFI_SIGNATURE_LIST of X.509 certificates (one list per certificate, as sizes differ)."""
    out = b""
    for der in ders:
        entry = CUSTOMER_OWNER + der
        out += X509_GUID + struct.pack("<III", 28 + len(entry), 0, len(entry)) + entry
    return out


def utf16(name: str) -> bytes:
    return (name + "\0").encode("utf-16-le")


# ---- one boot: (pcr, type, data, sha256 the event extends, the build's name for it) ---------------------------

@dataclass(frozen=True)
class Spec:
    pcr: int
    event_type: int
    data: bytes
    digest: bytes
    name: str


def measured(pcr: int, event_type: int, data: bytes, name: str) -> Spec:
    """An event whose digest is over its data (variables, separators, actions)."""
    return Spec(pcr, event_type, data, hashlib.sha256(data).digest(), name)


UKI_AUTHENTICODE = hashlib.sha256(b"Authenticode of the signed UKI").digest()
SECTIONS = {".linux": b"bzImage", ".osrel": b"ID=obelisk\n", ".cmdline": b"root=verity ro",
            ".initrd": b"initramfs.cpio"}


def section_events(sections: dict[str, bytes]) -> list[Spec]:
    """systemd-stub 252: per section, the name (ASCII with NUL) and then the contents, both described by the
    section name in UTF-16."""
    out = []
    for name, content in sections.items():
        out.append(Spec(11, EV_IPL, utf16(name), hashlib.sha256(name.encode() + b"\0").digest(),
                        f"UKI section name {name}"))
        out.append(Spec(11, EV_IPL, utf16(name), hashlib.sha256(content).digest(), f"UKI section {name}"))
    return out


variable = synth.variable


CALLING = b"Calling EFI Application from Boot Option"
AUTHORITY_NAME = "db certificate that verified the UKI (authority)"


def ovmf_boot(secure_boot: bytes = b"\1", db: bytes | None = None, authority: bool = True,
              application: bytes = UKI_AUTHENTICODE, sections: dict[str, bytes] | None = None) -> list[Spec]:
    """What OVMF (Secure Boot enrolled with the customer's keys) and systemd-stub 252 measure into PCRs 4, 7, 11
    when the firmware starts the UKI from \\EFI\\BOOT\\BOOTX64.EFI."""
    db = signature_list(CERTS["Customer db"]) if db is None else db
    image = struct.pack("<QQQQ", 0x7E000000, 4 << 20, 0, 0)
    events = [
        measured(7, EV_DRIVER_CONFIG, variable("SecureBoot", secure_boot), "SecureBoot"),
        measured(7, EV_DRIVER_CONFIG, variable("PK", signature_list(CERTS["Customer PK"])), "PK"),
        measured(7, EV_DRIVER_CONFIG, variable("KEK", signature_list(CERTS["Customer KEK"])), "KEK"),
        measured(7, EV_DRIVER_CONFIG, variable("db", db, IMAGE_SECURITY_DATABASE), "db"),
        measured(7, EV_DRIVER_CONFIG, variable("dbx", b"", IMAGE_SECURITY_DATABASE), "dbx"),
        measured(7, EV_SEPARATOR, b"\0\0\0\0", "separator (end of the Secure Boot configuration)"),
        measured(4, EV_EFI_ACTION, CALLING, f"boot attempt ({CALLING.decode()})"),
        measured(4, EV_SEPARATOR, b"\0\0\0\0", "separator (end of pre-boot)"),
    ]
    if authority:
        events.append(measured(7, EV_AUTHORITY, variable("db", CUSTOMER_OWNER + CERTS["Customer db"],
                                                         IMAGE_SECURITY_DATABASE), AUTHORITY_NAME))
    events.append(Spec(4, EV_APPLICATION, image, application, "the UKI (Authenticode)"))
    events += section_events(SECTIONS if sections is None else sections)
    return events


def log_of(specs: Sequence[Spec]) -> el.EventLog:
    """The firmware's log of `specs`: a crypto-agile log with sha1 and sha256 banks, sha256 as given."""
    built = el.build([(s.pcr, s.event_type, s.data) for s in specs], banks=("sha1", "sha256"))
    events = [built.events[0]]
    for ev, spec in zip(built.events[1:], specs, strict=True):
        events.append(replace(ev, digests=tuple((a, spec.digest if a == SHA256_ID else d) for a, d in ev.digests)))
    return el.parse(el.serialize(replace(built, events=tuple(events))))


def predictions_of(specs: Sequence[Spec], pcrs: Sequence[int] = (4, 7, 11)) -> tuple[PcrPrediction, ...]:
    return tuple(PcrPrediction(p, tuple(ExpectedEvent(s.pcr, s.event_type, s.digest, s.name, s.data)
                                        for s in specs if s.pcr == p)) for p in pcrs)


def quote_of(log: el.EventLog) -> dict[int, bytes]:
    """The sha256 PCRs a TPM holds after the events of `log` (the verifier got these from a verified quote)."""
    replayed = el.replay(log)
    return {i: replayed.value("sha256", i) for i in range(24)}


def check(node: Sequence[Spec], build: Sequence[Spec] | None = None, log: el.EventLog | None = None
          ) -> dict[int, Finding]:
    """The node booted `node` and sends `log` (default: the honest log of `node`); the build expects `build`."""
    findings = uefi_boot_findings(log or log_of(node), quote_of(log_of(node)),
                                  predictions_of(ovmf_boot() if build is None else build))
    by_id = {f.id: f for f in findings}
    assert len(by_id) == len(findings)
    return {p: by_id[check_id(p)] for p in (4, 7, 11)}


def failed(found: dict[int, Finding]) -> list[int]:
    return [p for p, f in found.items() if f.status is not Status.PASS]


# ---- the genuine boot ------------------------------------------------------------------------------------

def test_genuine_boot_passes_every_pcr():
    found = check(ovmf_boot())
    assert failed(found) == []
    assert found[7].detail == "7 events, as the build predicts"
    assert found[11].detail == "8 events, as the build predicts"
    assert found[4].id == "attest.boot.pcr4" and found[4].severity.value == "critical"
    assert found[4].observed == found[4].expected == predictions_of(ovmf_boot())[0].value.hex()


def test_prediction_value_equals_the_tpm_replay():
    """The prediction record's arithmetic and the firmware log's replay agree (two independent extend paths)."""
    boot = ovmf_boot()
    quoted = quote_of(log_of(boot))
    assert {p.pcr: p.value for p in predictions_of(boot)} == {p: quoted[p] for p in (4, 7, 11)}


def test_synthetic_boot_equals_the_reference_tools(tmp_path):
    """Independent checks of the synthetic boot: tpm2_eventlog replays its log to the predicted PCRs 4, 7 and 11,
    and systemd-measure 252 computes the same PCR 11 from the section files (`--phase=`: the stub's measurements
    alone, without the userspace boot phases systemd-measure adds by default)."""
    import json
    import re

    from obelisk.core import tools

    boot = ovmf_boot()
    predicted = {p.pcr: p.value for p in predictions_of(boot)}
    path = tmp_path / "log.bin"
    path.write_bytes(el.serialize(log_of(boot)))
    out = tools.run("tpm2_eventlog", [path]).stdout.decode()
    sha256 = out[out.index("pcrs:"):].split("sha256:")[1]
    from_tool = {int(i): bytes.fromhex(v) for i, v in re.findall(r"^\s+(\d+)\s*:\s*0x([0-9a-fA-F]+)", sha256, re.M)}
    assert {p: from_tool[p] for p in (4, 7, 11)} == predicted
    args = []
    for name, content in SECTIONS.items():
        (tmp_path / name[1:]).write_bytes(content)
        args.append(f"--{name[1:]}={tmp_path / name[1:]}")
    measured_json = tools.run("/usr/lib/systemd/systemd-measure",
                              ["calculate", *args, "--bank=sha256", "--phase=", "--json=short"]).stdout
    assert json.loads(measured_json) == {"sha256": [{"pcr": 11, "hash": predicted[11].hex()}]}


# ---- one change each ------------------------------------------------------------------------------------

def test_another_application_is_named_with_both_digests():
    other = hashlib.sha256(b"Authenticode of a UKI signed by someone else").digest()
    found = check(ovmf_boot(application=other))
    assert failed(found) == [4]
    assert found[4].detail == (f"PCR 4: the application the firmware started (Authenticode sha256 {other.hex()[:12]}…, "
                               "image 4194304 bytes) is not the UKI (Authenticode): "
                               f"expected {UKI_AUTHENTICODE.hex()[:12]}…")
    assert found[4].evidence[0].location.startswith("event 10, offset ")


def test_secure_boot_disabled_is_named():
    """Secure Boot off: SecureBoot = 0 and no authority event (nothing was verified)."""
    found = check(ovmf_boot(secure_boot=b"\0", authority=False))
    assert failed(found) == [7]
    assert found[7].detail == ("PCR 7: Secure Boot is disabled (SecureBoot variable = 0); PCR 7: missing event db "
                               "certificate that verified the UKI (authority) (sha256 "
                               f"{hashlib.sha256(ovmf_boot()[8].data).hexdigest()[:12]}…)")
    assert [e.detail.split(":")[0] for e in found[7].evidence] == ["differs", "missing"]


def test_secure_boot_variable_absent_is_disabled():
    found = check(ovmf_boot(secure_boot=b"", authority=False))
    assert "Secure Boot is disabled (SecureBoot variable = 0)" in found[7].detail


def test_db_that_is_not_the_customers_is_named_with_its_certificate():
    found = check(ovmf_boot(db=signature_list(CERTS["Microsoft Corporation UEFI CA"], CERTS["Customer db"])))
    assert failed(found) == [7]
    assert found[7].detail.startswith("PCR 7: db is not the build's db: it holds 2 certificates: "
                                      "'Microsoft Corporation UEFI CA', 'Customer db' (sha256 ")
    assert found[7].detail.count("PCR 7:") == 1


def test_application_admitted_by_another_certificate_is_named():
    node = ovmf_boot()
    node[8] = measured(7, EV_AUTHORITY, variable("db", CUSTOMER_OWNER + CERTS["Microsoft Corporation UEFI CA"],
                                                 IMAGE_SECURITY_DATABASE), "whatever the node says")
    found = check(node)
    assert failed(found) == [7]
    assert found[7].detail.startswith("PCR 7: the boot application was admitted by the db certificate "
                                      f"'Microsoft Corporation UEFI CA', not by the build's {AUTHORITY_NAME} (sha256 ")


def test_changed_initrd_section_is_named():
    found = check(ovmf_boot(sections={**SECTIONS, ".initrd": b"initramfs.cpio + one line in /init"}))
    assert failed(found) == [11]
    assert found[11].detail.startswith("PCR 11: UKI section .initrd differs (sha256 ")
    assert len(found[11].evidence) == 1


def test_changed_command_line_section_is_named():
    found = check(ovmf_boot(sections={**SECTIONS, ".cmdline": b"root=verity ro init=/bin/sh"}))
    assert failed(found) == [11] and "UKI section .cmdline differs" in found[11].detail


def test_extra_section_is_named():
    found = check(ovmf_boot(sections={**SECTIONS, ".dtb": b"device tree"}))
    assert failed(found) == [11]
    assert found[11].detail.startswith("PCR 11: an extra event: UKI section .dtb (sha256 ")
    assert found[11].detail.count("an extra event") == 2  # the name and the contents


def test_missing_section_is_named():
    sections = dict(SECTIONS)
    del sections[".osrel"]
    found = check(ovmf_boot(sections=sections))
    assert failed(found) == [11]
    assert found[11].detail == ("PCR 11: missing event UKI section name .osrel (sha256 "
                                f"{hashlib.sha256(b'.osrel' + bytes(1)).hexdigest()[:12]}…); PCR 11: missing event "
                                f"UKI section .osrel (sha256 {hashlib.sha256(SECTIONS['.osrel']).hexdigest()[:12]}…)")


def test_second_application_is_an_extra_event():
    node = [*ovmf_boot(), Spec(4, EV_APPLICATION, struct.pack("<QQQQ", 0, 1 << 20, 0, 0),
                               hashlib.sha256(b"a shell").digest(), "")]
    found = check(node)
    assert failed(found) == [4]
    assert found[4].detail.startswith("PCR 4: an extra event: the application the firmware started (Authenticode "
                                      f"sha256 {hashlib.sha256(b'a shell').hexdigest()[:12]}…")


def test_event_of_another_type_where_one_is_expected():
    node = ovmf_boot()
    node[7] = measured(4, EV_IPL, b"grub", "")  # where the separator was
    found = check(node)
    assert failed(found) == [4]
    assert found[4].detail.startswith("PCR 4: loaded item grub (sha256 ") and "where the build expects separator" \
        in found[4].detail


def test_command_line_passed_to_the_uki_is_named_by_an_empty_pcr12_prediction():
    """systemd-stub measures a command line given by the boot option into PCR 12 (ignored under Secure Boot): a build
    that predicts PCR 12 empty names any such command line."""
    cmdline = "console=ttyS0 init=/bin/sh".encode("utf-16-le")
    node = [*ovmf_boot(), Spec(12, EV_IPL, cmdline, hashlib.sha256(cmdline).digest(), "")]
    log = log_of(node)
    found = uefi_boot_findings(log, quote_of(log), (*predictions_of(ovmf_boot()), PcrPrediction(12, ())))
    assert [f.id for f in found if f.status is not Status.PASS] == ["attest.boot.pcr12"]
    assert found[-1].detail == ("PCR 12: an extra event: kernel command line or credentials console=ttyS0 "
                                f"init=/bin/sh (sha256 {hashlib.sha256(cmdline).hexdigest()[:12]}…)")


def test_log_that_does_not_replay_to_the_quote_is_named_and_not_used():
    """The node booted a modified UKI and sends the genuine boot's log: the log is not believed."""
    node = ovmf_boot(sections={**SECTIONS, ".initrd": b"initramfs.cpio + one line"})
    found = check(node, log=log_of(ovmf_boot()))
    assert failed(found) == [11]
    assert found[11].detail.startswith("PCR 11: the event log does not replay to the quoted value (8 events replay "
                                       "to ")
    assert found[11].detail.endswith("it is not the log of this boot, so it cannot say what was measured; the quoted "
                                     "value differs from the build's prediction")
    assert found[11].evidence == ()


def test_log_not_replaying_fails_even_when_the_quote_equals_the_prediction():
    found = check(ovmf_boot(), log=log_of(ovmf_boot(application=bytes(32))))
    assert failed(found) == [4] and found[4].detail.endswith("the quoted value equals the build's prediction")


def test_pcr_not_quoted_and_log_without_sha256_bank_fail():
    log = log_of(ovmf_boot())
    predictions = predictions_of(ovmf_boot())
    quoted = {p: v for p, v in quote_of(log).items() if p != 7}
    f7 = next(f for f in uefi_boot_findings(log, quoted, predictions) if f.id == check_id(7))
    assert f7.status is Status.FAIL and f7.detail == "PCR 7 is not in the quote"
    sha1_only = el.build([(s.pcr, s.event_type, s.data) for s in ovmf_boot()], banks=("sha1",))
    found = uefi_boot_findings(sha1_only, quote_of(log), predictions)
    assert {f.status for f in found} == {Status.FAIL} and "no sha256 bank" in found[0].detail


def test_pcr_predicted_twice_is_one_error():
    predictions = predictions_of(ovmf_boot())
    log = log_of(ovmf_boot())
    found = uefi_boot_findings(log, quote_of(log), (*predictions, predictions[0]))
    assert [f.id for f in found] == [check_id(4), check_id(7), check_id(11)]
    assert found[0].status is Status.ERROR and found[0].detail == "the build predicts PCR 4 twice"


def test_other_pcrs_get_a_generic_check():
    log = log_of(ovmf_boot())
    found = uefi_boot_findings(log, quote_of(log), (PcrPrediction(0, ()),))
    assert found[0].id == "attest.boot.pcr0" and found[0].status is Status.PASS


# ---- real firmware logs -----------------------------------------------------------------------------------

REAL = [p for p in sorted((SHARED / "eventlog").glob("*.bin"))
        if "sha256" in el.parse(p.read_bytes()).banks and len(el.parse(p.read_bytes()).events) > 1]


def own_predictions(log: el.EventLog) -> tuple[PcrPrediction, ...]:
    """What a build that knew this boot exactly would predict: every extended event, per PCR."""
    pcrs = sorted({e.pcr for e in log.events[1:] if e.event_type != el.EV_NO_ACTION})
    return tuple(PcrPrediction(p, tuple(ExpectedEvent(p, e.event_type, e.digest("sha256") or b"",
                                                      f"{e.type_name} #{e.number}", e.data)
                                        for e in log.events[1:] if e.pcr == p and e.event_type != el.EV_NO_ACTION))
                 for p in pcrs)


def test_real_logs_are_covered():
    assert {p.name for p in REAL} >= {"event-sd-boot-fedora37.bin", "event-gce-ubuntu-2104-log.bin",
                                      "event-arch-linux.bin", "event-moklisttrusted.bin"}


@pytest.mark.parametrize("path", REAL, ids=lambda p: p.name)
def test_real_log_against_its_own_events_passes(path):
    log = el.parse(path.read_bytes())
    predictions = own_predictions(log)
    found = uefi_boot_findings(log, quote_of(log), predictions)
    assert found and all(f.status is Status.PASS for f in found), [f.detail for f in found if f.status != "pass"]


OTHER = hashlib.sha256(b"the build's other value").digest()


def _change_digest(predictions: tuple[PcrPrediction, ...], pcr: int, index: int) -> tuple[PcrPrediction, ...]:
    out = []
    for p in predictions:
        if p.pcr == pcr:
            events = list(p.events)
            events[index] = replace(events[index], digest=OTHER)
            p = PcrPrediction(pcr, tuple(events))
        out.append(p)
    return tuple(out)


def test_fedora_sd_boot_log_with_another_secure_boot_expectation_names_it():
    """systemd-boot on Fedora 37 (Secure Boot off: the variable is empty): a build expecting another SecureBoot
    value sees the node's Secure Boot disabled."""
    log = el.parse((SHARED / "eventlog" / "event-sd-boot-fedora37.bin").read_bytes())
    predictions = _change_digest(own_predictions(log), 7, 0)
    found = {f.id: f for f in uefi_boot_findings(log, quote_of(log), predictions)}
    assert [i for i, f in found.items() if f.status is not Status.PASS] == [check_id(7)]
    assert found[check_id(7)].detail == "PCR 7: Secure Boot is disabled (SecureBoot variable = 0)"


def test_fedora_sd_boot_log_command_line_is_named_when_pcr12_is_predicted_empty():
    log = el.parse((SHARED / "eventlog" / "event-sd-boot-fedora37.bin").read_bytes())
    f12 = uefi_boot_findings(log, quote_of(log), (PcrPrediction(12, ()),))[0]
    assert f12.detail.startswith("PCR 12: an extra event: kernel command line or credentials  console=ttyS0 "
                                 "console=tty0 efi=debug  (sha256 ")
    assert f12.detail.count("an extra event") == 2


def test_gce_log_with_another_db_expectation_names_the_logged_certificates():
    log = el.parse((SHARED / "eventlog" / "event-gce-ubuntu-2104-log.bin").read_bytes())
    predictions = _change_digest(own_predictions(log), 7, 3)  # SecureBoot, PK, KEK, db
    f7 = next(f for f in uefi_boot_findings(log, quote_of(log), predictions) if f.id == check_id(7))
    assert f7.status is Status.FAIL
    assert f7.detail.startswith("PCR 7: db is not the build's EV_EFI_VARIABLE_DRIVER_CONFIG #6: it holds 2 "
                                "certificates: 'Microsoft Corporation UEFI CA 2011', 'Microsoft "
                                "Windows Production PCA 2011' (sha256 ")


def test_gce_log_with_another_shim_expectation_names_the_application():
    log = el.parse((SHARED / "eventlog" / "event-gce-ubuntu-2104-log.bin").read_bytes())
    own = own_predictions(log)
    pcr4 = next(p for p in own if p.pcr == 4)
    shim = next(i for i, e in enumerate(pcr4.events) if e.event_type == EV_APPLICATION)
    f4 = next(f for f in uefi_boot_findings(log, quote_of(log), _change_digest(own, 4, shim)) if f.id == check_id(4))
    logged = log.events[23].digest("sha256")
    assert f4.detail == (f"PCR 4: the application the firmware started (Authenticode sha256 {logged.hex()[:12]}…, "
                         "image 955072 bytes \\EFI\\ubuntu\\shimx64.efi) is not EV_EFI_BOOT_SERVICES_APPLICATION #23: "
                         f"expected {OTHER.hex()[:12]}…")


def test_moklist_log_authority_event_names_the_certificate():
    log = el.parse((SHARED / "eventlog" / "event-moklisttrusted.bin").read_bytes())
    own = own_predictions(log)
    pcr7 = next(p for p in own if p.pcr == 7)
    authority = next(i for i, e in enumerate(pcr7.events) if e.event_type == EV_AUTHORITY)
    f7 = next(f for f in uefi_boot_findings(log, quote_of(log), _change_digest(own, 7, authority))
              if f.id == check_id(7))
    assert f7.detail.startswith("PCR 7: the boot application was admitted by the db certificate 'Microsoft "
                                "Corporation UEFI CA 2011', not by the build's EV_EFI_VARIABLE_AUTHORITY #23 (sha256 ")
    shim_authority = _change_digest(own, 7, authority + 1)  # SbatLevel, measured by shim: no certificate
    f7 = next(f for f in uefi_boot_findings(log, quote_of(log), shim_authority) if f.id == check_id(7))
    assert f7.detail.startswith("PCR 7: authority SbatLevel (18 bytes, sha256 ") and \
        f7.detail.endswith("where the build expects EV_EFI_VARIABLE_AUTHORITY #28")


# ---- hostile data -----------------------------------------------------------------------------------------

_TYPES = st.sampled_from([EV_SEPARATOR, EV_IPL, EV_EFI_ACTION, EV_DRIVER_CONFIG, EV_APPLICATION, EV_AUTHORITY,
                          0x5, 0x80000004, 0x80000002, 0x6, 0xFFFFFFFF])


@st.composite
def hostile_data(draw) -> bytes:
    """Random bytes, or a UEFI_VARIABLE_DATA / signature list whose lengths lie."""
    kind = draw(st.integers(0, 3))
    raw = draw(st.binary(max_size=200))
    if kind == 0:
        return raw
    name_len, data_len = draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1))
    if kind == 1:
        return el.EFI_GLOBAL_VARIABLE + struct.pack("<QQ", name_len % 300, data_len) + raw
    size, header, entry = (draw(st.integers(0, 2**32 - 1)) for _ in range(3))
    lists = X509_GUID + struct.pack("<III", size % 400, header % 64, entry % 300) + raw
    name = draw(st.sampled_from(["db", "KEK", "SecureBoot", "Shim"]))
    return variable(name, lists if kind == 2 else CUSTOMER_OWNER + raw, IMAGE_SECURITY_DATABASE)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.sampled_from([4, 7, 11]), _TYPES, hostile_data()), max_size=12),
       st.lists(st.tuples(st.sampled_from([4, 7, 11]), _TYPES, hostile_data(), st.binary(min_size=32, max_size=32)),
                max_size=12))
def test_hostile_event_data_never_crashes(node, build):
    log = el.build(node, banks=("sha256",))
    predictions = tuple(PcrPrediction(p, tuple(ExpectedEvent(p, t, d, "expected", data) for q, t, data, d in build
                                               if q == p)) for p in (4, 7, 11))
    found = uefi_boot_findings(log, quote_of(log), predictions)
    assert [f.id for f in found] == [check_id(4), check_id(7), check_id(11)]
    for f in found:
        assert f.status in (Status.PASS, Status.FAIL)
        assert len(f.detail) < 20_000 and len(f.evidence) <= boot_check.MAX_EVIDENCE
        f.to_json()


def test_random_logs_never_crash():
    rng = random.Random(13)
    genuine = el.serialize(log_of(ovmf_boot()))
    predictions = predictions_of(ovmf_boot())
    checked = 0
    for _ in range(400):
        data = bytearray(genuine)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        try:
            log = el.parse(bytes(data))
        except ParseError:
            continue
        checked += 1
        found = uefi_boot_findings(log, quote_of(log_of(ovmf_boot())), predictions)
        assert len(found) == 3
    assert checked > 50


def test_mangled_certificates_are_described_not_fatal():
    """Byte flips in a real certificate (Microsoft's UEFI CA from a shim log) inside db and the authority event:
    cryptography refuses some with exceptions other than ValueError, and warns on others."""
    import warnings

    log = el.parse((SHARED / "eventlog" / "event-moklisttrusted.bin").read_bytes())
    der = log.events[23].data[32 + 2 * len("db") + 16:]
    rng = random.Random(7)
    build = predictions_of(ovmf_boot())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        version = der.index(bytes.fromhex("a003020102")) + 4  # X.509 v3
        for attempt in range(300):
            mangled = bytearray(der)
            if attempt == 0:
                mangled[version] = 38  # cryptography: InvalidVersion, not a ValueError
            else:
                for _ in range(rng.randint(1, 4)):
                    mangled[rng.randrange(400)] = rng.randrange(256)
            node = ovmf_boot(db=signature_list(bytes(mangled)))
            node[8] = measured(7, EV_AUTHORITY, variable("db", CUSTOMER_OWNER + bytes(mangled),
                                                         IMAGE_SECURITY_DATABASE), "")
            log = log_of(node)
            f7 = next(f for f in uefi_boot_findings(log, quote_of(log), build) if f.id == check_id(7))
            assert f7.status is Status.FAIL and f7.detail.startswith("PCR 7: db is not the build's db: it holds 1 ")


def test_too_many_events_on_a_pcr_are_not_aligned():
    node = [*ovmf_boot(), *(measured(4, EV_EFI_ACTION, b"noise %d" % i, "") for i in range(600))]
    found = check(node)
    assert failed(found) == [4] and "more than the 512 this check aligns" in found[4].detail


# ---- the predictions' JSON form ------------------------------------------------------------------------------

def test_prediction_json_round_trips():
    predictions = predictions_of(ovmf_boot())
    doc = predictions_to_json(predictions)
    assert predictions_from_json(doc) == predictions
    assert prediction_from_json(prediction_to_json(predictions[0])) == predictions[0]
    assert doc[0]["events"][0] == {"pcr": 4, "event_type": EV_EFI_ACTION,
                                   "digest": predictions[0].events[0].digest.hex(),
                                   "name": f"boot attempt ({CALLING.decode()})", "data": CALLING.hex()}


def test_prediction_json_is_what_the_manifest_record_decoder_reads():
    """The manifest's generic dataclass decoder (image/manifest.py) and this module agree on the shape."""
    from obelisk.image import manifest

    predictions = predictions_of(ovmf_boot())
    doc = predictions_to_json(predictions)
    assert manifest._decode(tuple[PcrPrediction, ...], doc, "boot.predictions") == predictions
    assert manifest._encode(predictions) == doc


def _event_doc(**changes) -> dict:
    event = {"pcr": 7, "event_type": 1, "digest": "00" * 32, "name": "SecureBoot", "data": ""}
    return {"pcr": 7, "events": [{**event, **changes}]}


@pytest.mark.parametrize(("doc", "message"), [
    ([], "boot.predictions[0]: expected an object, got list"),
    ({"pcr": 7}, "boot.predictions[0].events: missing"),
    ({"pcr": 7, "events": [], "value": "00"}, "boot.predictions[0].value: unknown key"),
    ({"pcr": True, "events": []}, "boot.predictions[0].pcr: expected an integer, got bool"),
    ({"pcr": 24, "events": []}, "boot.predictions[0].pcr: 24 is not in 0..23"),
    ({"pcr": 7, "events": {}}, "boot.predictions[0].events: expected a list, got dict"),
    (_event_doc(pcr=4), "boot.predictions[0].events[0].pcr: 4 in the prediction of PCR 7"),
    (_event_doc(event_type=-1), "boot.predictions[0].events[0].event_type: -1 is not in 0..4294967295"),
    (_event_doc(digest="00" * 20), "boot.predictions[0].events[0].digest: 20 bytes, a sha256 digest has 32"),
    (_event_doc(digest="AB" * 32), "boot.predictions[0].events[0].digest: expected lowercase hex"),
    (_event_doc(data="0"), "boot.predictions[0].events[0].data: expected lowercase hex"),
    (_event_doc(name=""), "boot.predictions[0].events[0].name: expected a non-empty string"),
    (_event_doc(name=3), "boot.predictions[0].events[0].name: expected a non-empty string"),
    ({"pcr": 7, "events": ["x"]}, "boot.predictions[0].events[0]: expected an object, got str"),
])
def test_prediction_json_refuses_bad_fields(doc, message):
    with pytest.raises(InputError) as exc:
        predictions_from_json([doc], "boot.predictions")
    assert str(exc.value).startswith(message)


def test_prediction_json_refuses_a_pcr_twice_and_a_non_list():
    doc = predictions_to_json(predictions_of(ovmf_boot()))
    with pytest.raises(InputError, match=r"boot.predictions\[3\].pcr: PCR 4 is predicted twice"):
        predictions_from_json([*doc, doc[0]], "boot.predictions")
    with pytest.raises(InputError, match="boot.predictions: expected a list, got dict"):
        predictions_from_json({}, "boot.predictions")


# ---- through the verifier (attest/verify.py), on synthesized evidence (tests/attest/synth.py) ----------------

def synth_predictions(firmware=None) -> tuple[PcrPrediction, ...]:
    """The build's PCR 4 and 7 for synth.FIRMWARE (whose digests are over the event data)."""
    events = synth.FIRMWARE if firmware is None else firmware
    return tuple(PcrPrediction(p, tuple(ExpectedEvent(p, t, hashlib.sha256(d).digest(), f"{el.event_type_name(t)} "
                                                      f"{d[:12]!r}", d) for q, t, d in events if q == p))
                 for p in (4, 7))


@pytest.fixture(scope="module")
def ak():
    return synth.make_ak("ecc")


def test_verifier_runs_the_boot_check_when_given_predictions(ak):
    pcr11 = synth.references().boot_predictions
    refs = replace(synth.references(), boot_predictions=(*synth_predictions(), *pcr11))  # as the manifest carries them
    report, _, found = synth.run(synth.evidence(ak), synth.options(ak, refs))
    assert all(found[check_id(p)].status is Status.PASS for p in (4, 7, 11))
    assert report.exit_code() == 0
    _, _, without = synth.run(synth.evidence(ak), synth.options(ak, replace(synth.references(), boot_predictions=())))
    assert not [i for i in without if i.startswith("attest.boot.")]


def test_verifier_names_another_kernel_from_the_firmware_log(ak):
    firmware = tuple((p, t, b"kernel + rootkit" if d == b"kernel" else d) for p, t, d in synth.FIRMWARE)
    node = synth.boot(firmware=firmware)
    found = synth.failing(synth.evidence(ak, node), synth.options(ak, boot_predictions=synth_predictions()),
                          check_id(4))
    assert found[check_id(4)].detail.startswith(
        "PCR 4: the application the firmware started (Authenticode sha256 "
        f"{hashlib.sha256(b'kernel + rootkit').hexdigest()[:12]}…, 16 bytes) is not EV_EFI_BOOT_SERVICES_APPLICATION "
        "b'kernel': expected ")
    assert found[check_id(7)].status is Status.PASS and found["attest.eventlog.pcr4"].status is Status.PASS


def test_verifier_boot_check_without_a_trusted_quote_or_log(ak):
    opts = synth.options(ak, boot_predictions=synth_predictions())
    foreign = synth.failing(synth.evidence(ak, nonce=b"other", quote=synth.attest(ak, synth.boot().pcrs,
                                                                                  nonce=b"other")),
                            opts, check_id(4), Status.ERROR)
    assert foreign[check_id(7)].detail == "no trusted quote to compare with"
    missing = synth.failing(synth.evidence(ak, event_log=None), opts, check_id(7))
    assert "missing or unreadable" in missing[check_id(7)].detail
    _, _, bare = synth.run(synth.evidence(ak), replace(opts, quote_only=True))
    assert bare[check_id(4)].status is Status.ERROR and "no event log" in bare[check_id(4)].detail
