"""`obelisk report`: render results files; `report sign|verify|diff`.

`obelisk report RESULTS.json... --format html` is shorthand for `obelisk report render ...`:
the report parser routes any first argument that is not a subcommand to `render`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable

SUBCOMMANDS = ("render", "sign", "verify", "diff")
FORMAT_NAMES = ("html", "json", "junit", "sarif", "oscal", "ckl", "cklb", "csv")
_SUFFIX_FORMAT = {".html": "html", ".htm": "html", ".json": "json", ".xml": "junit", ".sarif": "sarif",
                  ".ckl": "ckl", ".cklb": "cklb", ".csv": "csv"}


def _route_to_render(parser_class: type) -> type:
    class ReportParser(parser_class):
        def parse_known_args(self, args: Iterable[str] | None = None, namespace: argparse.Namespace | None = None
                             ) -> tuple[argparse.Namespace, list[str]]:
            args = list(sys.argv[1:] if args is None else args)
            if args and args[0] not in SUBCOMMANDS and args[0] not in ("-h", "--help"):
                args = ["render", *args]
            return super().parse_known_args(args, namespace)

    return ReportParser


def register(sub: argparse._SubParsersAction) -> None:
    report = sub.add_parser(
        "report", help="render, sign, verify and compare compliance reports",
        description="Render results files as compliance reports (`obelisk report RESULTS.json... --format "
                    "html|json|junit|sarif|oscal|ckl|cklb|csv [-o FILE]`), sign and verify rendered reports, "
                    "and compare two scans.",
        epilog="`obelisk report render --help` lists the rendering options (--format, -o, --stig-benchmark, "
               "--cci-list, --waivers).")
    report.__class__ = _route_to_render(type(report))
    group = report.add_subparsers(dest="report_command", metavar="COMMAND", parser_class=sub._parser_class)

    render = group.add_parser("render", help="render results files (the default: `obelisk report FILE...`)")
    render.add_argument("results", nargs="+", metavar="RESULTS.json",
                        help="obelisk results files (obelisk.report/1); several are merged into one report")
    render.add_argument("--format", choices=FORMAT_NAMES, default=None,
                        help="output format (default: from the -o suffix, else json)")
    render.add_argument("-o", "--output", metavar="FILE", help="write to FILE atomically (default: stdout)")
    render.add_argument("--stig-benchmark", metavar="XCCDF",
                        help="DISA STIG XCCDF file: checklists list every rule with DISA's titles, check and fix text")
    render.add_argument("--cci-list", metavar="XML",
                        help="DISA CCI list: OSCAL maps CCIs to NIST SP 800-53 controls through it")
    render.add_argument("--waivers", metavar="FILE",
                        help="waivers YAML (id, reason, approver, expires) applied to failures at the scan date")
    render.add_argument("--title", default="", help="document title")
    render.add_argument("--fail-on-findings", action="store_true",
                        help="exit 1 when the report holds failing checks (default: 0 once rendered)")
    render.set_defaults(handler=_render)

    sign = group.add_parser("sign", help="sign a rendered report (detached signature)")
    sign.add_argument("report", metavar="REPORT")
    sign.add_argument("--key", required=True, help="private key: PEM file or pkcs11: URI")
    sign.add_argument("--cert", required=True, help="signer certificate PEM (may include intermediates)")
    sign.add_argument("--passphrase-env", metavar="VAR", help="environment variable holding the key passphrase")
    sign.add_argument("--passphrase-file", metavar="FILE", help="file holding the key passphrase")
    sign.add_argument("--results", metavar="RESULTS.json",
                      help="results file naming the subject, for formats that do not carry it (ckl, csv, ...)")
    sign.add_argument("-o", "--output", metavar="SIG", help="signature file (default: REPORT.sig)")
    sign.add_argument("--format", choices=("text", "json"), default="text", help="how to print the result")
    sign.set_defaults(handler=_sign)

    verify = group.add_parser("verify", help="verify a signed report against the customer CA")
    verify.add_argument("report", metavar="REPORT")
    verify.add_argument("--cert", required=True, metavar="CA", help="customer CA certificate(s), PEM")
    verify.add_argument("--signature", metavar="SIG", help="signature file (default: REPORT.sig)")
    verify.add_argument("--subject", metavar="NAME", help="fail unless the report is about this subject")
    verify.add_argument("--format", choices=("text", "json"), default="text")
    verify.set_defaults(handler=_verify)

    diff = group.add_parser("diff", help="what got worse, better, or is new between two scans")
    diff.add_argument("old", metavar="OLD.json")
    diff.add_argument("new", metavar="NEW.json")
    diff.add_argument("--format", choices=("text", "json"), default=None)
    diff.add_argument("-o", "--output", metavar="FILE")
    diff.add_argument("-v", "--verbose", action="store_true", help="also list unchanged findings")
    diff.set_defaults(handler=_diff)


def _render(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.core import atomic
    from obelisk.reports.model import load_bundle
    from obelisk.reports.options import RenderOptions
    from obelisk.reports.render import render

    fmt = args.format or (_SUFFIX_FORMAT.get(Path(args.output).suffix.lower(), "json") if args.output else "json")
    bundle = load_bundle(args.results)
    if args.waivers:
        from obelisk.reports.model import with_waivers

        bundle = with_waivers(bundle, args.waivers)
    benchmark = cci_map = None
    if args.stig_benchmark:
        from obelisk.reports.stig_benchmark import load_stig_benchmark

        benchmark = load_stig_benchmark(args.stig_benchmark)
    if args.cci_list:
        from obelisk.reports.cci import load_cci_list

        cci_map = load_cci_list(args.cci_list)
    data = render(bundle, fmt, RenderOptions(stig_benchmark=benchmark, cci_map=cci_map or {}, title=args.title))
    if args.output:
        atomic.write_bytes(args.output, data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return bundle.report.exit_code() if args.fail_on_findings else 0


def _sign(args: argparse.Namespace) -> int:
    from obelisk.reports.signing import sign_report_file

    sig_path, statement = sign_report_file(args.report, key=args.key, cert=args.cert, output=args.output,
                                           results=args.results, passphrase_env=args.passphrase_env,
                                           passphrase_file=args.passphrase_file)
    if args.format == "json":
        import json

        print(json.dumps({"signature": sig_path, "statement": statement.to_json()}, indent=2, sort_keys=True))
    else:
        print(f"signed {args.report} ({statement.subject.kind} {statement.subject.name}, scanned "
              f"{statement.scanned_at}) -> {sig_path}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    import json

    from obelisk.reports.signing import verify_report_file

    verified = verify_report_file(args.report, ca=args.cert, signature=args.signature,
                                  expected_subject=args.subject)
    if args.format == "json":
        print(json.dumps(verified.to_json(), indent=2, sort_keys=True))
    else:
        st = verified.statement
        print(f"OK: {args.report} sha256:{st.digest} signed by {verified.signer} for {st.subject.kind} "
              f"{st.subject.name}, scanned {st.scanned_at}, signed {st.signed_at}")
    return 0


def _diff(args: argparse.Namespace) -> int:
    from obelisk.cli.common import emit_result
    from obelisk.reports.diff import diff_reports, render_text
    from obelisk.reports.model import load_report

    old, _ = load_report(args.old)
    new, _ = load_report(args.new)
    drift = diff_reports(old, new)
    return emit_result(args, drift.to_json(), lambda _: render_text(drift, verbose=args.verbose),
                       exit_code=1 if drift.regressed else 0)
