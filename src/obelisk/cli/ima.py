"""`obelisk ima policy render|lint`, `obelisk ima log verify`, `obelisk ima reference convert`."""

from __future__ import annotations

import argparse

from obelisk.cli.common import add_output_options, add_quiet, emit_report, emit_result, output_format
from obelisk.cli.main import subcommand_group
from obelisk.core.jsonsafe import load_json

MAX_MEASUREMENT_LIST = 1 << 40  # mapped and streamed, never held in memory: any real list fits


def register(sub: argparse._SubParsersAction) -> None:
    ima = subcommand_group(sub, "ima", "IMA signatures, policies and measurement lists")

    policy = ima.add_parser("policy", help="IMA policies: render from a profile, lint")
    psub = policy.add_subparsers(dest="policy_command", metavar="COMMAND")
    policy.set_defaults(handler=lambda args, p=policy: (p.print_help(), 2)[1])
    render = psub.add_parser("render", help="write the IMA policy of a profile")
    render.add_argument("--profile", required=True, help="profile name (see `obelisk ima policy profiles`)")
    render.add_argument("--fsuuid", help="UUID of the image's root filesystem (scopes appraisal to it)")
    render.add_argument("-o", "--output", metavar="FILE", help="write the policy to FILE (default: stdout)")
    render.set_defaults(handler=_policy_render)
    profiles = psub.add_parser("profiles", help="list the built-in policy profiles")
    add_output_options(profiles)
    profiles.set_defaults(handler=_policy_profiles)
    lint = psub.add_parser("lint", help="check an IMA policy against the kernel's grammar and for risky rules")
    lint.add_argument("policy", metavar="FILE")
    lint.add_argument("--signed", choices=("yes", "no"), default="yes",
                      help="whether the image build signs files (default yes); 'no' flags rules requiring signatures")
    add_output_options(lint)
    lint.set_defaults(handler=_policy_lint)

    log = ima.add_parser("log", help="IMA runtime measurement lists")
    lsub = log.add_subparsers(dest="log_command", metavar="COMMAND")
    log.set_defaults(handler=lambda args, p=log: (p.print_help(), 2)[1])
    verify = lsub.add_parser("verify", help="recompute template hashes, replay PCR 10, check files and signatures")
    verify.add_argument("log", metavar="LOG", help="ascii or binary runtime measurement list")
    verify.add_argument("--pcrs", action="append", default=[], metavar="FILE",
                        help="quoted PCR values: tpm2_pcrread YAML, or 'PCR-NN: hex' lines ([bank,]FILE); repeatable")
    verify.add_argument("--eventlog", metavar="FILE",
                        help="TCG event log of the same boot: recompute boot_aggregate from its PCR 0-9")
    verify.add_argument("--reference", metavar="MANIFEST",
                        help="reference manifest of the image (or a Keylime runtime policy)")
    verify.add_argument("--cert", action="append", default=[], metavar="CERT",
                        help="trusted IMA certificate (PEM or DER); repeatable")
    verify.add_argument("--banks", help="comma-separated PCR banks to replay (default: those in --pcrs, else all)")
    verify.add_argument("--replay-mode", choices=("auto", "per-bank", "sha1-padded"), default="auto",
                        help="per-bank: kernel >= 5.8; sha1-padded: older kernels; auto: try both against --pcrs")
    verify.add_argument("--max-findings", type=int, default=1000, metavar="N",
                        help="list at most N failing entries (the rest are counted)")
    verify.add_argument("--workers", type=int, default=None, metavar="N", help="processes to use (default: all cores)")
    add_output_options(verify)
    add_quiet(verify)
    verify.set_defaults(handler=_log_verify)

    ref = ima.add_parser("reference", help="reference manifests and Keylime runtime policies")
    rsub = ref.add_subparsers(dest="reference_command", metavar="COMMAND")
    ref.set_defaults(handler=lambda args, p=ref: (p.print_help(), 2)[1])
    convert = rsub.add_parser("convert",
                              help="convert between obelisk reference manifests and Keylime runtime policies")
    convert.add_argument("input", metavar="FILE")
    convert.add_argument("--to", choices=("keylime", "obelisk"), required=True)
    convert.add_argument("-o", "--output", metavar="FILE", required=True)
    convert.set_defaults(handler=_reference_convert)


def _read(path: str, what: str, limit: int) -> bytes:
    from obelisk.core.inputs import read_bounded

    return read_bounded(path, what, limit)


def _log_verify(args: argparse.Namespace) -> int:
    from obelisk.core.errors import InputError
    from obelisk.core.progress import progress
    from obelisk.ima_policy import pcrs as pcr_files
    from obelisk.ima_policy import reference
    from obelisk.ima_policy.keyring import Keyring
    from obelisk.ima_policy.pcrs import PcrValues
    from obelisk.ima_policy.verify import VerifyOptions, verify_log

    if args.max_findings < 0:
        raise InputError("--max-findings must be >= 0")
    if args.workers is not None and args.workers < 1:
        raise InputError("--workers must be >= 1")
    pcrs = None
    for spec in args.pcrs:
        pcrs = pcrs or PcrValues()
        pcrs.merge(pcr_files.load(spec))
    banks = tuple(b.strip() for b in args.banks.split(",") if b.strip()) if args.banks else None
    with progress("verifying IMA measurement list", quiet=args.quiet) as bar:
        bar.stage("reading inputs")
        from obelisk.core.inputs import map_bounded

        data = map_bounded(args.log, "measurement list", MAX_MEASUREMENT_LIST)  # streamed: pages dropped once walked
        manifest = reference.load_compact(args.reference) if args.reference else None  # bounded memory
        boot_pcrs = None
        if args.eventlog:
            from obelisk.tpm import eventlog

            replayed = eventlog.replay(eventlog.parse(_read(args.eventlog, "event log", eventlog.MAX_LOG_SIZE),
                                                      args.eventlog))
            boot_pcrs = {bank: {i: replayed.value(bank, i) for i in range(10)} for bank in replayed.pcrs}
        keyring = Keyring.load(args.cert) if args.cert else None
        bar.stage(f"checking {args.log}")
        result = verify_log(data, args.log, VerifyOptions(banks=banks, pcrs=pcrs, boot_pcrs=boot_pcrs,
                                                          reference=manifest, keyring=keyring, mode=args.replay_mode,
                                                          max_findings=args.max_findings, workers=args.workers))
    if output_format(args) == "text":
        import sys

        enc = result.encoding + (f", {result.byte_order} endian" if result.encoding == "binary" else "")
        lines = [f"{args.log}: {result.entries} entries ({enc})"]
        for r in result.replays:
            lines.append(f"  PCR 10 {r.bank:<6} {r.value.hex()}  ({r.mode})")
        if not getattr(args, "output", None):
            sys.stdout.write("\n".join(lines) + "\n")
    return emit_report(args, result.report)


def _reference_convert(args: argparse.Namespace) -> int:

    from obelisk.core import atomic
    from obelisk.ima_policy import keylime, reference

    data = _read(args.input, "input", reference.MAX_MANIFEST_BYTES)
    obj = load_json(data, args.input, max_bytes=reference.MAX_MANIFEST_BYTES)
    if args.to == "keylime":
        manifest = reference.from_json(obj, args.input)
        text = keylime.serialize(keylime.from_reference(manifest))
    else:
        text = reference.serialize(keylime.to_reference(keylime.from_json(obj, args.input)))
    atomic.write_text(args.output, text)
    return 0


def _policy_profiles(args: argparse.Namespace) -> int:
    from obelisk.ima_policy import profiles

    items = [{"name": p.name, "description": p.description} for p in profiles.load_all()]
    return emit_result(args, {"profiles": items},
                       lambda d: "".join(f"{p['name']:<16} {p['description']}\n" for p in d["profiles"]))


def _policy_render(args: argparse.Namespace) -> int:
    import sys

    from obelisk.core import atomic
    from obelisk.ima_policy import profiles

    text = profiles.render(profiles.load(args.profile), fsuuid=args.fsuuid)
    if args.output:
        atomic.write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0


def _policy_lint(args: argparse.Namespace) -> int:
    from obelisk.ima_policy import lint

    data = _read(args.policy, "policy", lint.MAX_POLICY_BYTES)
    report = lint.lint_policy(data, args.policy, signed_build=args.signed == "yes")
    return emit_report(args, report)
