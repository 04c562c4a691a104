"""UEFI_VARIABLE_DATA against real firmware logs, and the PCR 7 prediction's events."""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from obelisk.core.errors import InputError, ParseError
from obelisk.tpm import eventlog as el
from obelisk.tpm import uefi
from obelisk.tpm.prediction import replay

SHARED = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "eventlog"
VARIABLE_EVENT_TYPES = (uefi.EV_EFI_VARIABLE_DRIVER_CONFIG, uefi.EV_EFI_VARIABLE_AUTHORITY)


def variable_events():
    for path in sorted(SHARED.glob("*.bin")):
        log = el.parse(path.read_bytes(), source=str(path))
        for ev in log.events[1:]:
            if ev.event_type in VARIABLE_EVENT_TYPES:
                yield pytest.param(ev, id=f"{path.name}#{ev.number}")


# shim 15 logged 6 bytes after its UEFI_VARIABLE_DATA (struct padding) and hashed 5 of them: not the layout
# OVMF writes, and the strict parser refuses it.
SHIM15_PADDED = {("event-postcode.bin", 40), ("event-postcode.bin", 54)}


@pytest.mark.parametrize("ev", list(variable_events()))
def test_every_logged_variable_event_reserializes_to_its_digest(ev, request):
    log_name, number = request.node.callspec.id.split("#")
    if (log_name, int(number)) in SHIM15_PADDED:
        with pytest.raises(ParseError, match="VariableDataLength"):
            uefi.parse_variable_data(ev.data)
        return
    variable = uefi.parse_variable_data(ev.data, source=log_name)
    again = uefi.serialize_variable_data(variable)
    assert again == ev.data
    checked = 0
    for alg, name in ((0x0B, "sha256"), (0x04, "sha1")):
        logged = ev.digest(alg)
        if logged is not None:
            assert hashlib.new(name, again).digest() == logged
            checked += 1
    assert checked


def pcr7_config(path: Path) -> list[uefi.UefiVariableData]:
    log = el.parse(path.read_bytes(), source=str(path))
    return [uefi.parse_variable_data(ev.data) for ev in log.events[1:]
            if ev.pcr == 7 and ev.event_type == uefi.EV_EFI_VARIABLE_DRIVER_CONFIG]


# whole boot logs (event-uefivar.bin is a one-event fixture)
LOGS_WITH_PCR7 = [p for p in sorted(SHARED.glob("*.bin")) if len(pcr7_config(p)) >= 5]


def test_the_logs_hold_the_events_the_prediction_needs():
    """Enough real firmware is covered: several logs with PCR 7 configuration, one with a db authority."""
    assert len(LOGS_WITH_PCR7) >= 6
    authorities = [uefi.parse_variable_data(ev.data) for p in LOGS_WITH_PCR7
                   for ev in el.parse(p.read_bytes()).events[1:]
                   if ev.event_type == uefi.EV_EFI_VARIABLE_AUTHORITY and (p.name, ev.number) not in SHIM15_PADDED]
    assert any(a.name == "db" and a.vendor == uefi.EFI_IMAGE_SECURITY_DATABASE for a in authorities)


@pytest.mark.parametrize("path", LOGS_WITH_PCR7, ids=lambda p: p.name)
def test_secure_variable_order_and_guids_match_real_firmware(path):
    """Every log's PCR 7 configuration events come in MeasureAllSecureVariables' order, with its GUIDs."""
    assert [(v.name, v.vendor) for v in pcr7_config(path)][:5] == list(uefi.SECURE_VARIABLES)


def test_prediction_reproduces_a_real_pcr7_configuration():
    """Feed a real log's variable contents to pcr7_prediction: its events' digests are the logged ones."""
    log = el.parse((SHARED / "event-moklisttrusted.bin").read_bytes())
    pcr7 = [ev for ev in log.events[1:] if ev.pcr == 7]
    values = {uefi.parse_variable_data(ev.data).name: uefi.parse_variable_data(ev.data).data
              for ev in pcr7 if ev.event_type == uefi.EV_EFI_VARIABLE_DRIVER_CONFIG}
    authority = next(uefi.parse_variable_data(ev.data).data for ev in pcr7
                     if ev.event_type == uefi.EV_EFI_VARIABLE_AUTHORITY)
    assert values["SecureBoot"] == b"\x01"
    predicted = uefi.pcr7_prediction(True, values["PK"], values["KEK"], values["db"], values["dbx"], authority)
    logged = [ev for ev in pcr7 if ev.event_type != uefi.EV_EFI_VARIABLE_AUTHORITY or
              uefi.parse_variable_data(ev.data).name == "db"][:7]
    assert [(e.event_type, e.digest) for e in predicted.events] == \
        [(ev.event_type, ev.digest("sha256")) for ev in logged]
    assert [e.data for e in predicted.events] == [ev.data for ev in logged]
    assert predicted.value == replay(predicted.events)


def test_secure_boot_off_measures_zero_and_no_authority():
    on = uefi.pcr7_prediction(True, b"pk", b"kek", b"db", b"", b"entry")
    off = uefi.pcr7_prediction(False, b"pk", b"kek", b"db", b"", None)
    assert [e.name for e in off.events] == ["SecureBoot", "PK", "KEK", "db", "dbx",
                                            "separator (end of the Secure Boot configuration)"]
    assert uefi.parse_variable_data(off.events[0].data).data == b"\x00"
    assert uefi.parse_variable_data(on.events[0].data).data == b"\x01"
    assert on.events[1:5] == off.events[1:5]  # same keys, only SecureBoot and the authority differ
    assert on.value != off.value
    with pytest.raises(InputError, match="authority"):
        uefi.pcr7_prediction(False, b"pk", b"kek", b"db", b"", b"entry")


def test_empty_dbx_is_measured_with_empty_data():
    prediction = uefi.pcr7_prediction(True, b"pk", b"kek", b"db", b"", None)
    dbx = uefi.parse_variable_data(prediction.events[4].data)
    assert (dbx.name, dbx.vendor, dbx.data) == ("dbx", uefi.EFI_IMAGE_SECURITY_DATABASE, b"")
    assert prediction.events[4].digest == hashlib.sha256(prediction.events[4].data).digest()


@given(st.uuids(), st.text(max_size=40), st.binary(max_size=300))
def test_roundtrip(vendor: uuid.UUID, name: str, data: bytes):
    variable = uefi.UefiVariableData(vendor, name, data)
    encoded = uefi.serialize_variable_data(variable)
    try:
        name.encode("utf-16-le").decode("utf-16-le")
    except UnicodeDecodeError:
        return
    assert uefi.parse_variable_data(encoded) == variable


@given(st.binary(max_size=200))
def test_hostile_bytes_raise_parse_error_only(data: bytes):
    try:
        uefi.parse_variable_data(data)
    except ParseError:
        pass


@pytest.mark.parametrize("data, field", [
    (b"\0" * 31, "header"),
    (b"\0" * 16 + (5).to_bytes(8, "little") + (0).to_bytes(8, "little") + b"a\0", "UnicodeNameLength"),
    (b"\0" * 16 + (1).to_bytes(8, "little") + (9).to_bytes(8, "little") + b"a\0xyz", "VariableDataLength"),
    (b"\0" * 16 + (1).to_bytes(8, "little") + (0).to_bytes(8, "little") + b"\x00\xd8", "UTF-16LE"),
])
def test_malformed_variable_data_names_the_field(data, field):
    with pytest.raises(ParseError, match=field):
        uefi.parse_variable_data(data, source="event 3")
