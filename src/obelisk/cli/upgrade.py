"""`obelisk upgrade URL OUT`: argument parsing and rendering; the work is in attest/upgrade_client.py."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from obelisk.cli.common import add_output_options, emit_report, emit_result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upgrade", help="install a built image into a node's inactive slot through its agent (A/B, "
                                       "one trial boot, automatic rollback)")
    p.add_argument("url", metavar="URL", help="the node agent, https://HOST:PORT")
    p.add_argument("out", metavar="OUT", help="the built image directory (obelisk build -o OUT)")
    p.add_argument("--ca", required=True, metavar="PEM", help="customer CA: the agent's certificate must chain to it")
    p.add_argument("--cert", required=True, metavar="PEM",
                   help="client certificate with the operator role (obelisk attest issue-cert --role operator); "
                        "--check and --ak need the reader role too")
    p.add_argument("--key", required=True, metavar="PEM", help="its private key")
    p.add_argument("--check", action="store_true",
                   help="write nothing: say whether the new image will open this node's /var (PCR 7, rollback floor)")
    p.add_argument("--ak", metavar="FILE", help="the node's AK record: attest the node after the upgrade (and check "
                                                "the rollback floor's certification with --check)")
    p.add_argument("--wait", type=float, default=900.0, metavar="SECONDS",
                   help="how long to wait for the node to come back committed or rolled back (0: do not wait)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress on the terminal")
    add_output_options(p)
    p.set_defaults(handler=_upgrade)


def _text(data: dict[str, Any]) -> str:
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in data["seconds"].items())
    line = f"{data['image']} {data['version']} -> {data['url']}: {data['outcome']}"
    if data.get("slot"):
        line += f" (slot {data['slot']})"
    line += f"; {data['bytes_written']} bytes written; {seconds}"
    return line + (f"\n{data['detail']}" if data.get("detail") else "") + "\n"


def _upgrade(args: argparse.Namespace) -> int:
    from obelisk.attest import upgrade_client
    from obelisk.attest.agent_client import AgentEndpoint, attest_node
    from obelisk.core.progress import progress

    out = Path(args.out)
    endpoint = AgentEndpoint(args.url, ca=args.ca, cert=args.cert, key=args.key)
    if args.check:
        return emit_report(args, upgrade_client.preflight(endpoint, out, ak=args.ak))
    data, sig, parts = upgrade_client.stream_parts(out)  # bad input: exit 2 before any connection
    attest = None
    if args.ak:
        def attest() -> bool:
            return not attest_node(endpoint, manifest=str(out / "manifest.json"), ak=args.ak, scan=False).failed
    with progress(f"streaming {out.name} to {args.url}", total=sum(p.length for p in parts),
                  quiet=args.quiet) as bar:
        result = upgrade_client.upgrade_node(endpoint, out, wait=args.wait, progress=bar.advance, attest=attest)
    ok = result.outcome in ("committed", "written")
    return emit_result(args, result.to_json(), _text, 0 if ok else 1)
