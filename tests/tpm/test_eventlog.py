"""TCG event log parse/serialize/replay against tpm2-tools' published results and a real TPM's PCRs."""

from __future__ import annotations

import hashlib
import json
import re
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from obelisk.core import tools
from obelisk.core.errors import ParseError
from obelisk.tpm import eventlog as el
from tests.attest.synth import variable

SHARED = Path(__file__).resolve().parents[3] / "shared" / "testdata"
EVENTLOGS = sorted((SHARED / "eventlog").glob("*.bin"))
IMA_LOGS = [SHARED / "ima" / "sample-binary_bios_measurements-pcrs-8-9",
            SHARED / "ima" / "test_binary_bios_measurements"]


def pcrs_from_tpm2_eventlog_yaml(text: str) -> dict[str, dict[int, bytes]]:
    """The `pcrs:` section of tpm2_eventlog output (the rest of its YAML is not always valid YAML)."""
    match = re.search(r"^pcrs:\n(.*)", text, re.S | re.M)
    assert match is not None
    out: dict[str, dict[int, bytes]] = {}
    bank = None
    for line in match.group(1).splitlines():
        if m := re.match(r"^  (\w+):\s*$", line):
            bank = m.group(1)
            out[bank] = {}
        elif m := re.match(r"^\s+(\d+)\s*:\s*0x([0-9a-fA-F]+)\s*$", line):
            assert bank is not None
            out[bank][int(m.group(1))] = bytes.fromhex(m.group(2))
    return out


def replayed(log: el.EventLog) -> dict[str, dict[int, bytes]]:
    return {bank: values for bank, values in el.replay(log).pcrs.items() if values}


def test_every_shared_log_is_covered():
    names = {p.name for p in EVENTLOGS}
    expected = {p.name.removesuffix(".yaml") for p in (SHARED / "eventlog" / "expected-tpm2-tools").glob("*.yaml")}
    assert names == expected and len(names) >= 12


@pytest.mark.parametrize("path", EVENTLOGS, ids=lambda p: p.name)
def test_replay_equals_tpm2_tools_expected(path):
    data = path.read_bytes()
    log = el.parse(data, source=str(path))
    expected = pcrs_from_tpm2_eventlog_yaml(
        (SHARED / "eventlog" / "expected-tpm2-tools" / f"{path.name}.yaml").read_text())
    assert replayed(log) == expected
    # the format pair round-trips byte for byte
    assert el.serialize(log) == data
    assert el.parse(el.serialize(log)) == log


def test_formats_detected():
    sha1 = el.parse((SHARED / "eventlog" / "event-uefi-sha1-log.bin").read_bytes())
    assert not sha1.crypto_agile and sha1.spec_id is None and sha1.banks == ("sha1",)
    agile = el.parse((SHARED / "eventlog" / "event.bin").read_bytes())
    assert agile.crypto_agile
    assert agile.banks == ("sha1", "sha256", "sha384", "sha512")
    vendor = el.parse((SHARED / "eventlog" / "specid-vendordata.bin").read_bytes())
    assert vendor.spec_id is not None and vendor.spec_id.vendor_info == bytes.fromhex("deadbeef")
    assert [a.digest_size for a in vendor.spec_id.algorithms] == [20, 32]


@pytest.mark.parametrize("path", IMA_LOGS, ids=lambda p: p.name)
def test_ima_sample_logs_equal_tpm2_eventlog_run_now(path):
    out = tools.run("tpm2_eventlog", [path]).stdout.decode()
    log = el.parse(path.read_bytes(), source=str(path))
    assert replayed(log) == pcrs_from_tpm2_eventlog_yaml(out)
    assert el.serialize(log) == path.read_bytes()


def test_ima_sample_log_equals_the_real_tpms_sha1_bank():
    # tsspcrread output from the machine that produced the log: PCRs 0-9 must match the replay
    real = {}
    for line in (SHARED / "ima" / "sample-tpm-2.0-pcrs-8-9").read_text().splitlines():
        if m := re.match(r"^(\d+): ([0-9a-f]{40})$", line):
            real[int(m.group(1))] = bytes.fromhex(m.group(2))
    result = el.replay(el.parse(IMA_LOGS[0].read_bytes()))
    for pcr in range(10):
        assert result.value("sha1", pcr) == real[pcr], pcr
    assert result.value("sha1", 14) == real[14]


def test_build_replay_matches_manual_extend():
    log = el.build([(7, 0x80000001, b"SecureBoot"), (7, 4, b"\0\0\0\0"), (4, 0x80000003, b"kernel")],
                   banks=("sha1", "sha256"))
    assert el.parse(el.serialize(log)) == log
    pcr7 = b"\0" * 32
    for data in (b"SecureBoot", b"\0\0\0\0"):
        pcr7 = hashlib.sha256(pcr7 + hashlib.sha256(data).digest()).digest()
    result = el.replay(log)
    assert result.pcrs["sha256"][7] == pcr7
    assert result.value("sha256", 0) == b"\0" * 32
    assert result.value("sha256", 17) == b"\xff" * 32


def test_startup_locality_sets_pcr0_initial_value():
    log = el.build([(0, 8, b"crtm")], banks=("sha256",))
    loc = el.Event(pcr=0, event_type=el.EV_NO_ACTION, digests=((0x000B, b"\0" * 32),),
                   data=el.STARTUP_LOCALITY_SIGNATURE + b"\x03")
    log = el.parse(el.serialize(el.EventLog(True, (log.events[0], loc, log.events[1]), log.spec_id)))
    expected = hashlib.sha256(b"\0" * 31 + b"\x03" + hashlib.sha256(b"crtm").digest()).digest()
    assert el.replay(log).pcrs["sha256"][0] == expected


# ---- hostile input -------------------------------------------------------------------------------

SMALL = (SHARED / "eventlog" / "event-uefivar.bin").read_bytes()


def test_every_truncation_is_a_parse_error_naming_an_offset():
    full = el.parse(SMALL)
    boundaries = {ev.offset for ev in full.events[1:]}
    for cut in range(0, len(SMALL)):
        if cut in boundaries:  # a log has no event count: a cut between events is a shorter log
            assert el.parse(SMALL[:cut]).events == tuple(e for e in full.events if e.offset < cut)
            continue
        with pytest.raises(ParseError) as info:
            el.parse(SMALL[:cut], source="log")
        assert str(info.value).startswith("log (offset ")


def _agile_header(count: int = 1, algs: tuple[tuple[int, int], ...] = ((0x000B, 32),), vendor: bytes = b"") -> bytes:
    spec = struct.pack("<16sIBBBBI", el.SPEC_ID_SIGNATURE, 0, 0, 2, 0, 2, count)
    spec += b"".join(struct.pack("<HH", a, s) for a, s in algs) + bytes([len(vendor)]) + vendor
    return struct.pack("<II", 0, 3) + b"\0" * 20 + struct.pack("<I", len(spec)) + spec


@pytest.mark.parametrize("bad, needle", [
    (_agile_header(count=0xFFFFFFFF), "algorithms"),
    (_agile_header(count=0), "algorithms"),
    (_agile_header(algs=((0x000B, 20),)), "digest size"),
    (_agile_header(count=2, algs=((0x000B, 32), (0x000B, 32))), "twice"),
    (_agile_header() + struct.pack("<III", 0, 1, 0xFFFFFFFF), "4294967295 digests"),
    (_agile_header() + struct.pack("<IIIH", 0, 1, 1, 0x0004) + b"\0" * 20 + struct.pack("<I", 0), "does not list"),
    (_agile_header() + struct.pack("<IIIH", 0, 1, 1, 0x000B) + b"\0" * 32 + struct.pack("<I", 0xFFFFFFF0), "data"),
    (_agile_header() + struct.pack("<IIIH", 99, 1, 1, 0x000B) + b"\0" * 32 + struct.pack("<I", 0), "PCR 99"),
    (struct.pack("<II", 0, 1) + b"\0" * 20 + struct.pack("<I", 0x7FFFFFFF), "data"),
])
def test_hostile_headers_are_named(bad, needle):
    with pytest.raises(ParseError) as info:
        el.parse(bad, source="hostile.bin")
    message = str(info.value)
    assert message.startswith("hostile.bin (offset ") and needle in message and "\n" not in message


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_only_parse_errors(data):
    try:
        log = el.parse(data)
    except ParseError:
        return
    assert el.serialize(log) == data
    el.replay(log)
    for ev in log.events:
        el.describe(ev)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(SMALL) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(SMALL)))
def test_fuzz_mutated_real_log(mutations, cut):
    data = bytearray(SMALL)
    for pos, value in mutations:
        data[pos] = value
    data = bytes(data[:cut] if cut else data)
    try:
        log = el.parse(data)
    except ParseError:
        return
    assert el.serialize(log) == data
    el.replay(log)
    for ev in log.events:
        el.describe(ev)


def test_describe_decodes_what_tpm2_eventlog_decodes():
    log = el.parse((SHARED / "eventlog" / "event-arch-linux.bin").read_bytes())
    text = [el.describe(ev) for ev in log.events]
    assert text[0] == "Spec ID Event03"
    assert text[3] == "SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c, 0 bytes)"
    assert "image 9180448 bytes \\vmlinuz-linux-lts" in text
    blob = el.parse((SHARED / "eventlog" / "event.bin").read_bytes()).events[1]
    assert el.describe(blob) == "firmware blob at 0x900000, 0xb00000 bytes"  # tpm2_eventlog: BlobBase/BlobLength
    gce = el.parse((SHARED / "eventlog" / "event-gce-ubuntu-2104-log.bin").read_bytes())
    assert el.describe(gce.events[1]) == "GCE Virtual Firmware v1"
    assert el.describe(gce.events[14]) == "Calling EFI Application from Boot Option"


# ---- CLI ----------------------------------------------------------------------------------------

def test_cli_eventlog_text_and_json(obelisk_cli):
    path = SHARED / "eventlog" / "event-arch-linux.bin"
    text = obelisk_cli("attest", "eventlog", "--format", "text", str(path))
    assert text.returncode == 0, text.stderr
    assert "EV_EFI_BOOT_SERVICES_APPLICATION" in text.stdout
    expected = pcrs_from_tpm2_eventlog_yaml(
        (SHARED / "eventlog" / "expected-tpm2-tools" / "event-arch-linux.bin.yaml").read_text())
    assert pcrs_from_tpm2_eventlog_yaml(text.stdout[text.stdout.index("pcrs:"):]) == expected
    js = obelisk_cli("attest", "eventlog", "--format", "json", "--no-events", "--bank", "sha256", str(path))
    data = json.loads(js.stdout)
    assert "events" not in data and list(data["pcrs"]) == ["sha256"]
    assert data["pcrs"]["sha256"] == {str(k): v.hex() for k, v in expected["sha256"].items()}


def test_cli_eventlog_bad_input_one_line(obelisk_cli, tmp_path):
    bad = tmp_path / "bad.bin"
    bad.write_bytes(SMALL[:50])
    res = obelisk_cli("attest", "eventlog", str(bad))
    assert res.returncode == 2
    assert res.stderr.count("\n") == 1 and "offset" in res.stderr and "Traceback" not in res.stderr
    missing = obelisk_cli("attest", "eventlog", str(tmp_path / "nope"))
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_tpm2_tools_reads_what_obelisk_serializes(tmp_path):
    # event types whose data tpm2_eventlog does not decode further
    log = el.build([(4, 0x80000007, b"Calling EFI Application"), (5, 5, b"action"), (9, 0xD, b"cmdline")],
                   banks=("sha1", "sha256", "sha384"))
    path = tmp_path / "built.bin"
    path.write_bytes(el.serialize(log))
    out = subprocess.run([tools.which("tpm2_eventlog"), str(path)], capture_output=True, text=True, check=True).stdout
    assert pcrs_from_tpm2_eventlog_yaml(out) == replayed(log)


# ---- event data bound to digests ----------------------------------------------------------------------

@pytest.mark.parametrize("path", EVENTLOGS + IMA_LOGS, ids=lambda p: p.name)
def test_every_real_log_binds_without_a_mismatch(path):
    """Real firmware (EDK2, GCE, AMI, HP, shim 15) follows the rules: no bindable event fails."""
    results = el.bind_all(el.parse(path.read_bytes()))
    assert [b.label for b in results if b.status in (el.Bound.MISMATCH, el.Bound.ERROR_SEPARATOR)] == []
    for b in results:
        rule = el.BINDING_RULES.get(b.event.event_type)
        if rule is not None and rule.covers in (el.Covers.DATA, el.Covers.VARIABLE):
            assert b.status is el.Bound.BOUND, b
        if rule is None or rule.covers is el.Covers.OUTSIDE:
            assert b.status is el.Bound.UNVERIFIED and b.detail


def test_binding_rules_table():
    assert all(r.type_name in el.EVENT_TYPES.values() and r.source for r in el.BINDING_RULES.values())
    covers = {r.type_name: r.covers for r in el.BINDING_RULES.values()}
    assert covers["EV_EFI_VARIABLE_DRIVER_CONFIG"] is el.Covers.VARIABLE
    assert covers["EV_EFI_VARIABLE_AUTHORITY"] is el.Covers.VARIABLE
    assert covers["EV_EFI_VARIABLE_BOOT"] is el.Covers.VARIABLE_BOOT
    assert covers["EV_EFI_BOOT_SERVICES_APPLICATION"] is el.Covers.OUTSIDE
    assert covers["EV_NO_ACTION"] is el.Covers.NOT_EXTENDED
    for name in ("EV_SEPARATOR", "EV_ACTION", "EV_EFI_ACTION", "EV_S_CRTM_VERSION", "EV_EFI_GPT_EVENT"):
        assert covers[name] is el.Covers.DATA


def _one(pcr: int, etype: int, data: bytes, hashed: bytes | None = None) -> el.Event:
    """An event whose digests are over `hashed` (default: its data)."""
    log = el.build([(pcr, etype, hashed if hashed is not None else data)])
    return replace_data(log.events[1], data)


def replace_data(ev: el.Event, data: bytes) -> el.Event:
    from dataclasses import replace

    return replace(ev, data=data)


def test_variable_boot_binds_value_only_or_whole():
    var = variable("Boot0001", b"load option")
    whole = el.bind(_one(1, 0x80000002, var))
    assert whole.status is el.Bound.BOUND
    value = el.bind(_one(1, 0x80000002, var, hashed=b"load option"))
    assert value.status is el.Bound.BOUND_VALUE and "name" in value.detail
    # DRIVER_CONFIG and AUTHORITY must cover the whole structure (the name is what the verifier shows)
    assert el.bind(_one(7, 0x80000001, var, hashed=b"load option")).status is el.Bound.MISMATCH
    assert el.bind(_one(7, 0x800000E0, var, hashed=b"load option")).status is el.Bound.MISMATCH
    # a structure whose lengths do not fit, or with trailing bytes
    assert "lengths" in el.bind(_one(7, 0x80000001, var[:40], hashed=var[:40])).detail
    assert "after the UEFI_VARIABLE_DATA" in el.bind(_one(7, 0x80000001, var + b"xx", hashed=var + b"xx")).detail


def test_shim15_authority_padding_is_bound():
    var = variable("Shim", b"cert")
    padded = var + b"\0" * 5 + b"\x70"  # shim 15: 5 hashed padding bytes, one more logged
    assert el.bind(_one(7, 0x800000E0, padded, hashed=padded[:-1])).status is el.Bound.BOUND
    assert el.bind(_one(7, 0x800000E0, padded, hashed=padded)).status is el.Bound.MISMATCH


def test_separators():
    assert el.bind(_one(7, 4, b"\0\0\0\0")).status is el.Bound.BOUND
    assert el.bind(_one(7, 4, b"\xff\xff\xff\xff")).status is el.Bound.BOUND  # conventional BIOS (SeaBIOS)
    b = el.bind(_one(7, 4, b"\1\0\0\0"))
    assert b.status is el.Bound.ERROR_SEPARATOR and "measurement error" in b.detail
    assert el.bind(_one(7, 4, b"\2\0\0\0")).status is el.Bound.MISMATCH
    assert "not 4" in el.bind(_one(7, 4, b"\0\0\0\0\0")).detail


def test_no_action_is_not_extended_and_unknown_types_unverified():
    log = el.parse((SHARED / "eventlog" / "event-arch-linux.bin").read_bytes())
    assert el.bind(log.events[0]).status is el.Bound.NOT_EXTENDED
    assert el.bind(_one(0, 0x0A, b"flags")).status is el.Bound.UNVERIFIED


def test_to_json_and_cli_mark_unverified_events(obelisk_cli):
    path = SHARED / "eventlog" / "event-gce-ubuntu-2104-log.bin"
    data = el.to_json(el.parse(path.read_bytes()))
    by_number = {e["number"]: e for e in data["events"]}
    assert by_number[0]["binding"] == "header" and by_number[3]["binding"] == "bound"
    assert by_number[23]["binding"] == "unverified" and "Authenticode" in by_number[23]["binding_detail"]
    text = obelisk_cli("attest", "eventlog", "--format", "text", str(path)).stdout
    assert "shimx64.efi  [unverified]" in text and "SecureBoot (8be4df61" in text
