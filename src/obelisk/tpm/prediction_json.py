"""The JSON form of a `PcrPrediction`, as the signed manifest stores it (`boot.predictions`).

    {"pcr": 7, "events": [{"pcr": 7, "event_type": 2147483649, "digest": "<64 hex>",
                           "name": "SecureBoot", "data": "<hex>"}, ...]}

The keys are the records' field names and bytes are lowercase hex, which is also what the manifest's
generic record decoder (image/manifest.py) reads and writes for these dataclasses, so either may be used.
Reading is strict: unknown or missing keys, wrong types, a digest that is not sha256-sized and an event
filed under another PCR are refused with an InputError naming the field.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from obelisk.core.errors import InputError
from obelisk.tpm import algorithms
from obelisk.tpm.eventlog import PCR_COUNT
from obelisk.tpm.prediction import BANK, ExpectedEvent, PcrPrediction

_DIGEST_SIZE = algorithms.by_name(BANK).digest_size
MAX_EVENT_DATA = 256 * 1024  # event data the build records (a variable's signature lists: a dbx can be tens of KiB)
MAX_EVENTS = 512  # per PCR; a real PCR 4, 7 or 11 has a few dozen
MAX_NAME = 256
_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_PREDICTION_KEYS = ("pcr", "events")
_EVENT_KEYS = ("pcr", "event_type", "digest", "name", "data")


def prediction_to_json(prediction: PcrPrediction) -> dict[str, Any]:
    return {"pcr": prediction.pcr,
            "events": [{"pcr": e.pcr, "event_type": e.event_type, "digest": e.digest.hex(), "name": e.name,
                        "data": e.data.hex()} for e in prediction.events]}


def prediction_from_json(doc: Any, where: str = "prediction") -> PcrPrediction:
    obj = _object(doc, where, _PREDICTION_KEYS)
    pcr = _int(obj, "pcr", where, PCR_COUNT - 1)
    events = obj["events"]
    if not isinstance(events, list):
        raise InputError(f"{where}.events: expected a list, got {type(events).__name__}")
    if len(events) > MAX_EVENTS:
        raise InputError(f"{where}.events: {len(events)} events, at most {MAX_EVENTS}")
    return PcrPrediction(pcr=pcr, events=tuple(_event(e, f"{where}.events[{i}]", pcr) for i, e in enumerate(events)))


def predictions_to_json(predictions: Sequence[PcrPrediction]) -> list[dict[str, Any]]:
    return [prediction_to_json(p) for p in predictions]


def predictions_from_json(doc: Any, where: str = "predictions") -> tuple[PcrPrediction, ...]:
    """A list of predictions, at most one per PCR."""
    if not isinstance(doc, list):
        raise InputError(f"{where}: expected a list, got {type(doc).__name__}")
    out: list[PcrPrediction] = []
    for i, item in enumerate(doc):
        prediction = prediction_from_json(item, f"{where}[{i}]")
        if any(p.pcr == prediction.pcr for p in out):
            raise InputError(f"{where}[{i}].pcr: PCR {prediction.pcr} is predicted twice")
        out.append(prediction)
    return tuple(out)


def _object(doc: Any, where: str, keys: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise InputError(f"{where}: expected an object, got {type(doc).__name__}")
    for key in doc:
        if key not in keys:
            raise InputError(f"{where}.{str(key)[:40]}: unknown key (known: {', '.join(keys)})")
    for key in keys:
        if key not in doc:
            raise InputError(f"{where}.{key}: missing")
    return doc


def _int(obj: dict[str, Any], key: str, where: str, maximum: int) -> int:
    value = obj[key]
    if type(value) is not int:  # bool is an int to Python, not to the manifest
        raise InputError(f"{where}.{key}: expected an integer, got {type(value).__name__}")
    if not 0 <= value <= maximum:
        raise InputError(f"{where}.{key}: {value} is not in 0..{maximum}")
    return value


def _hex(obj: dict[str, Any], key: str, where: str, max_bytes: int) -> bytes:
    value = obj[key]
    if not isinstance(value, str):
        raise InputError(f"{where}.{key}: expected lowercase hex, got {type(value).__name__}")
    if len(value) > 2 * max_bytes:
        raise InputError(f"{where}.{key}: {len(value) // 2} bytes, at most {max_bytes}")
    if not _HEX.fullmatch(value):
        raise InputError(f"{where}.{key}: expected lowercase hex, got {value[:80]!r}")
    return bytes.fromhex(value)


def _event(doc: Any, where: str, pcr: int) -> ExpectedEvent:
    obj = _object(doc, where, _EVENT_KEYS)
    event_pcr = _int(obj, "pcr", where, PCR_COUNT - 1)
    if event_pcr != pcr:
        raise InputError(f"{where}.pcr: {event_pcr} in the prediction of PCR {pcr}")
    event_type = _int(obj, "event_type", where, 0xFFFFFFFF)
    digest = _hex(obj, "digest", where, _DIGEST_SIZE)
    if len(digest) != _DIGEST_SIZE:
        raise InputError(f"{where}.digest: {len(digest)} bytes, a {BANK} digest has {_DIGEST_SIZE}")
    name = obj["name"]
    if not isinstance(name, str) or not name or len(name) > MAX_NAME:
        raise InputError(f"{where}.name: expected a non-empty string of at most {MAX_NAME} characters")
    return ExpectedEvent(pcr=pcr, event_type=event_type, digest=digest, name=name,
                         data=_hex(obj, "data", where, MAX_EVENT_DATA))
