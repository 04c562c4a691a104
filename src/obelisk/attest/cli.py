"""`obelisk attest ...` and `obelisk disk ...`: thin argument parsing; the work is in the attest modules."""

from __future__ import annotations

import argparse
from typing import Any

from obelisk.cli.common import add_output_options, emit_result


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group

    attest = subcommand_group(sub, "attest", "TPM attestation: event logs, quotes, evidence, verification")

    p = attest.add_parser("eventlog", help="parse and replay a TCG event log (binary_bios_measurements)")
    p.add_argument("log", metavar="LOG", help="binary event log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements")
    p.add_argument("--bank", action="append", metavar="ALG", help="only show this PCR bank (repeatable)")
    p.add_argument("--no-events", action="store_true", help="print only the final PCR values")
    add_output_options(p)
    p.set_defaults(handler=_eventlog)


def _read(path: str, what: str, limit: int) -> bytes:
    from obelisk.attest.inputs import read_bounded

    return read_bounded(path, what, limit)


def _eventlog(args: argparse.Namespace) -> int:
    from obelisk.attest import eventlog as el
    from obelisk.core.errors import InputError

    data = _read(args.log, "event log", el.MAX_LOG_SIZE)
    log = el.parse(data, source=args.log)
    replay = el.replay(log)
    banks = args.bank or list(replay.pcrs)
    unknown = [b for b in banks if b not in replay.pcrs]
    if unknown:
        raise InputError(f"--bank {unknown[0]}: the log has banks {', '.join(replay.pcrs) or 'none'}")
    result = el.to_json(log, replay, banks=banks, events=not args.no_events)
    return emit_result(args, result, _eventlog_text)


def _eventlog_text(data: dict[str, Any]) -> str:
    lines = [f"format: {data['format']}  events: {data['event_count']}"]
    if data.get("spec_id"):
        spec = data["spec_id"]
        lines.append(f"spec id: TCG2 {spec['spec_version_major']}.{spec['spec_version_minor']} errata "
                     f"{spec['spec_errata']}, algorithms {', '.join(a['name'] for a in spec['algorithms'])}"
                     + (f", vendor data {spec['vendor_info']}" if spec["vendor_info"] else ""))
    for ev in data.get("events", []):
        lines.append(f"#{ev['number']:<4} PCR {ev['pcr']:<2} {ev['type']:<34} {ev['size']:>6} bytes @{ev['offset']}")
        for alg, hexd in ev["digests"].items():
            lines.append(f"      {alg}: {hexd}")
    lines.append("pcrs:")
    for bank, values in data["pcrs"].items():
        lines.append(f"  {bank}:")
        for idx, hexv in values.items():
            lines.append(f"    {int(idx):<2} : 0x{hexv}")
    return "\n".join(lines) + "\n"
