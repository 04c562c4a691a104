"""`obelisk attest ...`: argument parsing and rendering; the work is in the attest and tpm modules."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from obelisk.cli.common import add_output_options, emit_result

if TYPE_CHECKING:
    from obelisk.attest.akrecord import AKRecord


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group

    attest = subcommand_group(sub, "attest", "TPM attestation: event logs, quotes, evidence, verification")

    p = attest.add_parser("eventlog", help="parse and replay a TCG event log (binary_bios_measurements)")
    p.add_argument("log", metavar="LOG",
                   help="binary event log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements")
    p.add_argument("--bank", action="append", metavar="ALG", help="only show this PCR bank (repeatable)")
    p.add_argument("--no-events", action="store_true", help="print only the final PCR values")
    add_output_options(p)
    p.set_defaults(handler=_eventlog)

    # ---- node side ----
    ak = attest.add_parser("ak", help="attestation key (node side)")
    ak_sub = ak.add_subparsers(dest="ak_command", metavar="COMMAND")
    ak.set_defaults(handler=lambda args, p=ak: (p.print_help(), 2)[1])
    p = ak_sub.add_parser("create", help="create the EK and a restricted AK under it, both persistent")
    _tpm_options(p)
    p.add_argument("--ek-handle", type=_handle, default=None, help="EK persistent handle (default 0x81010001)")
    p.add_argument("--alg", choices=("ecc", "rsa"), default="ecc", help="AK key type (default ecc: P-256/ECDSA)")
    p.add_argument("--replace", action="store_true", help="replace an AK already at the handle")
    p.add_argument("--record", required=True, metavar="FILE", help="write the AK record (JSON) for the verifier")
    p.add_argument("--tss", metavar="FILE", help="also write the AK's TPM2B_PUBLIC (tpm2-tools tss format)")
    p.add_argument("--pem", metavar="FILE", help="also write the AK public key as PEM")
    add_output_options(p)
    p.set_defaults(handler=_ak_create)

    cred = attest.add_parser("credential", help="prove the AK sits in the EK's TPM (make/activate credential)")
    cred_sub = cred.add_subparsers(dest="credential_command", metavar="COMMAND")
    cred.set_defaults(handler=lambda args, p=cred: (p.print_help(), 2)[1])
    p = cred_sub.add_parser("make", help="verifier: encrypt a random secret to the EK, bound to the AK's name")
    p.add_argument("--ak", required=True, metavar="RECORD", help="AK record from `attest ak create`")
    p.add_argument("--ek", metavar="FILE",
                   help="EK TPM2B_PUBLIC (overrides the record's, e.g. from the EK certificate)")
    p.add_argument("--ek-ca", metavar="PEM",
                   help="TPM manufacturer CA(s): the EK certificate must be issued by it and certify the EK")
    p.add_argument("--ek-cert", metavar="FILE", help="EK certificate (DER/PEM) if not in the AK record")
    p.add_argument("--secret-out", required=True, metavar="FILE", help="where the verifier keeps the secret (0600)")
    p.add_argument("--challenge", required=True, metavar="FILE", help="challenge file to send to the node")
    p.set_defaults(handler=_cred_make)
    p = cred_sub.add_parser("activate", help="node: recover the secret with TPM2_ActivateCredential")
    _tpm_options(p)
    p.add_argument("challenge", metavar="CHALLENGE")
    p.add_argument("--response", required=True, metavar="FILE", help="write the recovered secret here (0600)")
    p.set_defaults(handler=_cred_activate)
    p = cred_sub.add_parser("check", help="verifier: compare the node's response and mark the AK record activated")
    p.add_argument("--ak", required=True, metavar="RECORD")
    p.add_argument("--secret", required=True, metavar="FILE")
    p.add_argument("--response", required=True, metavar="FILE")
    p.add_argument("--record", required=True, metavar="FILE", help="write the activated AK record here")
    p.set_defaults(handler=_cred_check)

    p = attest.add_parser("quote", help="node: quote sha256 PCRs 0-11 over a verifier nonce")
    _tpm_options(p)
    p.add_argument("--nonce", required=True, metavar="HEX")
    p.add_argument("--pcrs", default="0-11", help="PCR list, e.g. 0-11 or 0,7,11 (default 0-11)")
    p.add_argument("--tpm2-tools-dir", metavar="DIR",
                   help="also write quote.msg, quote.sig, quote.pcrs (serialized) for tpm2_checkquote")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="evidence bundle with the quote only")
    p.set_defaults(handler=_quote)

    p = attest.add_parser("evidence", help="node: quote plus event log, IMA list and kernel facts in one bundle")
    _tpm_options(p)
    p.add_argument("--nonce", required=True, metavar="HEX")
    p.add_argument("--eventlog", default=None, metavar="FILE",
                   help="TCG event log (default /sys/kernel/security/tpm0/binary_bios_measurements)")
    p.add_argument("--ima", default=None, metavar="FILE",
                   help="IMA list (default the kernel's binary list, else the ascii one)")
    p.add_argument("-o", "--output", required=True, metavar="FILE")
    p.set_defaults(handler=_evidence)

    # ---- verifier side ----
    p = attest.add_parser("verify", help="verify an evidence bundle: quote, event log, IMA list, references")
    p.add_argument("evidence", metavar="EVIDENCE")
    p.add_argument("--nonce", required=True, metavar="HEX", help="the nonce this verifier sent")
    p.add_argument("--ak", required=True, metavar="AK", help="AK record, TPM2B_PUBLIC (tss) or PEM")
    p.add_argument("--ek", metavar="FILE", help="EK TPM2B_PUBLIC, to check the qualified signer of a bare AK")
    p.add_argument("--reference", metavar="MANIFEST", help="the build's reference manifest")
    p.add_argument("--cert", metavar="CA", help="certificate that must have signed the reference manifest")
    p.add_argument("--state", metavar="FILE",
                   help="verifier state: per AK, the last clock/reset counters and how far the node's IMA list "
                        "was checked (the next run checks only newer entries); updated when verification passes")
    add_output_options(p)
    p.set_defaults(handler=_verify)

    p = attest.add_parser("checkquote", help="verify a quote made by tpm2_quote (message, signature, PCR values)")
    p.add_argument("--ak", required=True, metavar="AK", help="AK record, TPM2B_PUBLIC (tss) or PEM")
    p.add_argument("--ek", metavar="FILE", help="EK TPM2B_PUBLIC, to check the qualified signer")
    p.add_argument("--message", "-m", required=True, metavar="FILE", help="TPMS_ATTEST (tpm2_quote -m)")
    p.add_argument("--signature", "-s", required=True, metavar="FILE", help="TPMT_SIGNATURE (tpm2_quote -s)")
    p.add_argument("--pcrs", "-f", required=True, metavar="FILE",
                   help="PCR values: tpm2_quote -o FILE (serialized) or with -F values")
    p.add_argument("--nonce", "-q", required=True, metavar="HEX")
    add_output_options(p)
    p.set_defaults(handler=_checkquote)



def _tpm_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tcti", default=None,
                   help="TPM to use (default $TPM2TOOLS_TCTI, else device:/dev/tpmrm0), "
                        "e.g. swtpm:host=127.0.0.1,port=2321")
    p.add_argument("--ak-handle", type=_handle, default=None, help="AK persistent handle (default 0x81010002)")


def _handle(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a handle: {text!r}") from None
    if not 0x81000000 <= value <= 0x81FFFFFF:
        raise argparse.ArgumentTypeError(f"{text}: persistent handles are 0x81000000-0x81ffffff")
    return value


def _hex(text: str, what: str = "--nonce") -> bytes:
    from obelisk.core.errors import InputError

    try:
        value = bytes.fromhex(text)
    except ValueError:
        raise InputError(f"{what}: not hex") from None
    if not value:
        raise InputError(f"{what}: empty")
    return value

def _read(path: str, what: str, limit: int) -> bytes:
    from obelisk.core.inputs import read_bounded

    return read_bounded(path, what, limit)


def _eventlog(args: argparse.Namespace) -> int:
    from obelisk.core.errors import InputError
    from obelisk.tpm import eventlog as el

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
        binding = ev.get("binding", "bound")
        mark = "" if binding in ("bound", "header", "not-extended") else f"  [{binding}]"
        lines.append(f"#{ev['number']:<4} PCR {ev['pcr']:<2} {ev['type']:<34} {ev['description']}{mark}")
        for alg, hexd in ev["digests"].items():
            lines.append(f"      {alg}: {hexd}")
    lines.append("pcrs:")
    for bank, values in data["pcrs"].items():
        lines.append(f"  {bank}:")
        for idx, hexv in values.items():
            lines.append(f"    {int(idx):<2} : 0x{hexv}")
    return "\n".join(lines) + "\n"


# ---- handlers -----------------------------------------------------------------------------------

def _ak_create(args: argparse.Namespace) -> int:
    from obelisk.attest import akrecord
    from obelisk.core import atomic
    from obelisk.tpm import device as tpm

    info = tpm.create_keys(args.tcti, ek_handle=args.ek_handle or tpm.EK_HANDLE,
                           ak_handle=args.ak_handle or tpm.AK_HANDLE, ak_type=args.alg, replace=args.replace)
    record = akrecord.from_public(info.public, ek_public=info.ek_public, source="TPM",
                                  ek_certificate=info.ek_certificate)
    if record.qualified_name != info.qualified_name:  # our computation must agree with the TPM's
        from obelisk.tpm.device import TPMError
        raise TPMError("the TPM reports a different AK qualified name than obelisk computes")
    atomic.write_text(args.record, akrecord.serialize(record))
    if args.tss:
        atomic.write_bytes(args.tss, info.public)
    if args.pem:
        from cryptography.hazmat.primitives import serialization
        atomic.write_bytes(args.pem, record.public_key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    data = {"ak_handle": f"0x{info.handle:08x}", "ak_name": info.name.hex(),
            "qualified_name": info.qualified_name.hex(), "ek_name": info.ek_name.hex(), "record": args.record}
    return emit_result(args, data, lambda d: f"AK 0x{info.handle:08x} name {d['ak_name']}\n"
                       f"record written to {d['record']}\n")


def _cred_make(args: argparse.Namespace) -> int:
    import sys

    from obelisk.attest import akrecord, credential
    from obelisk.core import atomic

    ek = _read(args.ek, "EK public", 1 << 16) if args.ek else None
    record = akrecord.parse(_read(args.ak, "AK", 1 << 20), args.ak, ek_public=ek)
    ek_public = credential.ek_of(record, ek)
    if args.ek_ca:
        cert = _read(args.ek_cert, "EK certificate", 1 << 16) if args.ek_cert else record.ek_certificate
        problem = akrecord.ek_certificate_problem(ek_public, cert, _read(args.ek_ca, "EK CA", 1 << 20))
        if problem:
            print(f"obelisk: EK check FAILED: {problem}", file=sys.stderr)
            return 1
    else:
        print("obelisk: warning: no --ek-ca: the EK is trusted as the node reported it", file=sys.stderr)
    assert record.name is not None  # ek_of checked it
    secret, challenge = credential.make(ek_public, record.name)
    atomic.write_bytes(args.secret_out, secret, mode=0o600)
    atomic.write_bytes(args.challenge, credential.serialize(challenge))
    print(f"challenge written to {args.challenge}")
    return 0


def _cred_activate(args: argparse.Namespace) -> int:
    from obelisk.attest import credential
    from obelisk.core import atomic
    from obelisk.tpm import device as tpm

    challenge = credential.parse(_read(args.challenge, "challenge", 1 << 16), args.challenge)
    secret = credential.activate(challenge, args.tcti, args.ak_handle or tpm.AK_HANDLE)
    atomic.write_bytes(args.response, secret, mode=0o600)
    print(f"response written to {args.response}")
    return 0


def _cred_check(args: argparse.Namespace) -> int:
    import sys

    from obelisk.attest import akrecord, credential
    from obelisk.core import atomic

    record = akrecord.parse(_read(args.ak, "AK", 1 << 20), args.ak)
    secret = _read(args.secret, "secret", 1024)
    response = _read(args.response, "response", 1024)
    try:
        activated = credential.check(record, secret, response)
    except credential.CredentialMismatch as exc:
        print(f"obelisk: credential check FAILED: {exc}", file=sys.stderr)
        return 1
    atomic.write_text(args.record, akrecord.serialize(activated))
    print(f"AK {record.name.hex() if record.name else ''} activated; record written to {args.record}")
    return 0


def _quote(args: argparse.Namespace) -> int:
    import os

    from obelisk.attest import evidence as evmod
    from obelisk.core import atomic
    from obelisk.tpm import device as tpm
    from obelisk.tpm import quote as q

    nonce = _hex(args.nonce)
    pcrs = _pcr_list(args.pcrs)
    raw = tpm.quote(nonce, args.tcti, ak_handle=args.ak_handle or tpm.AK_HANDLE, pcrs=pcrs)
    info = tpm.read_ak(args.tcti, ak_handle=args.ak_handle or tpm.AK_HANDLE, with_certificate=False)
    bundle = evmod.Evidence(nonce=nonce, attest=raw.attest, signature=raw.signature, bank=raw.bank,
                            pcrs=raw.pcrs, ak_name=info.name)
    atomic.write_text(args.output, evmod.serialize(bundle))
    if args.tpm2_tools_dir:
        os.makedirs(args.tpm2_tools_dir, exist_ok=True)
        atomic.write_bytes(os.path.join(args.tpm2_tools_dir, "quote.msg"), raw.attest)
        atomic.write_bytes(os.path.join(args.tpm2_tools_dir, "quote.sig"), raw.signature)
        atomic.write_bytes(os.path.join(args.tpm2_tools_dir, "quote.pcrs"),
                           q.serialize_tools_pcrs(raw.bank, [(p, raw.pcrs[p]) for p in pcrs]))
    print(f"quote written to {args.output}")
    return 0


def _evidence(args: argparse.Namespace) -> int:
    from obelisk.attest import evidence as evmod
    from obelisk.core import atomic
    from obelisk.tpm import device as tpm

    nonce = _hex(args.nonce)
    if args.eventlog:
        _read(args.eventlog, "event log", 16 * 1024 * 1024)  # a named file must exist
    bundle = evmod.collect(nonce, args.tcti, ak_handle=args.ak_handle or tpm.AK_HANDLE,
                           event_log_path=args.eventlog or evmod.EVENT_LOG_PATH, ima_path=args.ima)
    atomic.write_text(args.output, evmod.serialize(bundle))
    missing = [n for n, v in (("event log", bundle.event_log), ("IMA list", bundle.ima_log)) if v is None]
    print(f"evidence written to {args.output}" + (f" (without {', '.join(missing)})" if missing else ""))
    return 0


def _load_ak(args: argparse.Namespace) -> AKRecord:
    from obelisk.attest import akrecord

    ek = _read(args.ek, "EK public", 1 << 16) if getattr(args, "ek", None) else None
    return akrecord.parse(_read(args.ak, "AK", 1 << 20), args.ak, ek_public=ek)


def _verify(args: argparse.Namespace) -> int:
    from obelisk.attest import evidence as evmod
    from obelisk.attest import ima_check, verifier_state, verify
    from obelisk.cli.common import emit_report

    nonce = _hex(args.nonce)
    ak = _load_ak(args)
    bundle = evmod.parse(_read(args.evidence, "evidence", evmod.MAX_BUNDLE_SIZE), source=args.evidence)
    saved = verifier_state.load(args.state, ak)
    opts = verify.Options(nonce=nonce, ak=ak, previous=saved.counters if saved else None, source=args.evidence)
    refs = ima_check.load_references(args.reference, args.cert)
    verify.apply_references(opts, refs)
    ima = verifier_state.resume_ima(opts, refs, saved) if args.state else None  # only what the node measured since
    report, counters = verify.verify(bundle, opts)
    if args.state and ima is not None and counters is not None and not report.failed:
        verifier_state.save(args.state, ak, verifier_state.after(counters, ima, refs))
    return emit_report(args, report)


def _checkquote(args: argparse.Namespace) -> int:
    from obelisk.attest import evidence as evmod
    from obelisk.attest import verify
    from obelisk.cli.common import emit_report
    from obelisk.tpm import quote as q

    nonce = _hex(args.nonce)
    ak = _load_ak(args)
    msg = _read(args.message, "quote message", 1 << 16)
    sig = _read(args.signature, "quote signature", 1 << 16)
    values = _read(args.pcrs, "PCR values", 1 << 16)
    attest = q.parse_attest(msg, args.message)
    q.parse_signature(sig, args.signature)  # a bad -s file is named as itself, before the checks
    bank, pcrs = q.quoted_pcr_values(attest, values, args.pcrs, args.message)
    bundle = evmod.Evidence(nonce=nonce, attest=msg, signature=sig, bank=bank, pcrs=pcrs)
    report, _ = verify.verify(bundle, verify.Options(nonce=nonce, ak=ak, quote_only=True, source=args.message))
    return emit_report(args, report)


def _pcr_list(text: str) -> tuple[int, ...]:
    from obelisk.tpm.pcr import parse_pcr_list

    return parse_pcr_list(text)
