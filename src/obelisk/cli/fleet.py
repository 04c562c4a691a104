"""`obelisk fleet ...`: the fleet service, its operators' commands and a node's side (parsing and rendering).

Operator commands go through the service over mutual TLS, so that every action is audited with the
subject of the operator's client certificate: `--url`, `--ca`, `--cert`, `--key`, or
$OBELISK_FLEET_URL, $OBELISK_FLEET_CA, $OBELISK_FLEET_CERT, $OBELISK_FLEET_KEY.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING, Any

from obelisk.cli.common import add_output_options, emit_result
from obelisk.core.errors import InputError

if TYPE_CHECKING:
    from obelisk.fleet.client import FleetClient

ENV = {"url": "OBELISK_FLEET_URL", "ca": "OBELISK_FLEET_CA", "cert": "OBELISK_FLEET_CERT", "key": "OBELISK_FLEET_KEY"}


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group

    fleet = subcommand_group(sub, "fleet", "the fleet service: nodes register and attest continuously; operators "
                                          "approve, quarantine and audit")

    p = fleet.add_parser("serve", help="run the fleet service (HTTPS)")
    p.add_argument("--db", default="fleet.db", metavar="URL",
                   help="database: a SQLAlchemy URL (postgresql://...) or a SQLite file path (default fleet.db)")
    p.add_argument("--listen", default="0.0.0.0:8444", metavar="HOST:PORT", help="default 0.0.0.0:8444")
    p.add_argument("--ca", required=True, metavar="PEM",
                   help="customer CA: operators' client certificates and image manifests must chain to it")
    p.add_argument("--cert", required=True, metavar="PEM", help="the service's TLS certificate")
    p.add_argument("--key", required=True, metavar="PEM", help="its private key")
    p.add_argument("--interval", type=int, default=60, metavar="SECONDS",
                   help="nodes' attestation interval; 3 missed: unreachable (default 60)")
    p.add_argument("--ek-allowlist", metavar="FILE", help="node ids (one a line) approved on registration")
    p.add_argument("--ek-ca", metavar="PEM", help="TPM manufacturers' CAs: require an EK certificate from them")
    p.add_argument("--kek", metavar="FILE",
                   help="32-byte key-encryption key (raw or 64 hex digits): enables /var key release to trusted "
                        "nodes; node keys are stored wrapped under it")
    p.add_argument("--join-tokens", metavar="FILE",
                   help="join tokens, one a line: a registration must present one (default: none needed)")
    p.add_argument("--webhook", action="append", default=[], metavar="URL",
                   help="POST every node state change (JSON) to URL (repeatable)")
    from obelisk.fleet import ratelimit

    p.add_argument("--node-rate", default=str(ratelimit.PER_SOURCE), metavar="RATE[,BURST]",
                   help="node endpoints: requests per second (and at once) from one source address, beyond which "
                        "the answer is 429 with Retry-After; 0: no limit (default %(default)s)")
    p.add_argument("--node-rate-global", default=str(ratelimit.OVERALL), metavar="RATE[,BURST]",
                   help="the same for all sources together, per process (default %(default)s)")
    p.add_argument("--registration-timeout", type=int, default=24 * 3600, metavar="SECONDS",
                   help="a registration whose TPM never answered its challenge is removed after this (default 86400)")
    p.set_defaults(handler=_serve)

    image = fleet.add_parser("image", help="images whose nodes the fleet attests")
    image_sub = image.add_subparsers(dest="image_command", metavar="COMMAND")
    image.set_defaults(handler=lambda args, p=image: (p.print_help(sys.stderr), 2)[1])
    p = image_sub.add_parser("add", help="register a build's signed manifest (refused unless it chains to the CA)")
    p.add_argument("manifest", metavar="OUT/manifest.json")
    p.add_argument("--signature", metavar="FILE", help="default: manifest.json.sig beside it")
    _operator_options(p)
    p.set_defaults(handler=_image_add)
    p = image_sub.add_parser("remove", help="forget an image (refused while a node runs it or a round used it)")
    p.add_argument("image", metavar="NAME:VERSION")
    _operator_options(p)
    p.set_defaults(handler=_image_remove)

    p = fleet.add_parser("nodes", help="every node: id, image, status, last attested")
    _operator_options(p)
    p.set_defaults(handler=_nodes)
    for name, help_text in (("approve", "approve a pending (or quarantined) node"),
                            ("quarantine", "quarantine a node"),
                            ("history", "a node's attestation rounds and state changes")):
        p = fleet.add_parser(name, help=help_text)
        p.add_argument("node", metavar="NODE")
        if name == "quarantine":
            p.add_argument("--reason", default="", help="recorded in the audit log")
        _operator_options(p)
        p.set_defaults(handler=_node_action, action=name)
    p = fleet.add_parser("audit", help="export the operator audit log")
    _operator_options(p)
    p.set_defaults(handler=_audit)

    p = fleet.add_parser("report", help="the whole fleet as one report: each node's status and last round")
    p.add_argument("--format", choices=("html", "json", "oscal", "csv", "junit", "sarif"), default=None,
                   help="default: from the -o suffix, else json")
    p.add_argument("-o", "--output", metavar="FILE", help="write to FILE atomically (default: stdout)")
    for name, env in ENV.items():
        p.add_argument(f"--{name}", metavar="PEM" if name != "url" else None, help=f"default ${env}")
    p.add_argument("--fail-on-findings", action="store_true", help="exit 1 unless every node is trusted")
    p.set_defaults(handler=_report)

    p = fleet.add_parser("join", help="node side: register with the service, then attest every interval")
    p.add_argument("--url", required=True, help="the fleet service, https://HOST:PORT")
    p.add_argument("--ca", required=True, metavar="PEM", help="customer CA: the service's certificate chains to it")
    p.add_argument("--image", required=True, metavar="NAME:VERSION", help="the image this node runs")
    p.add_argument("--tcti", help="TPM (default device:/dev/tpmrm0 or $TPM2TOOLS_TCTI)")
    p.add_argument("--eventlog", default="/sys/kernel/security/tpm0/binary_bios_measurements", metavar="FILE")
    p.add_argument("--ima", metavar="FILE", help="IMA list (default: the kernel's)")
    p.add_argument("--join-token", metavar="FILE", help="file holding the join token the service asks for")
    p.add_argument("--scan-root", default="/", metavar="DIR",
                   help="the CIS/STIG scan of DIR, made every round and sent when the service does not hold "
                        "the same one (default /: the node itself; '' sends none, and the service fails such rounds)")
    p.add_argument("--interval", type=int, default=60, metavar="SECONDS")
    p.add_argument("--rounds", type=int, default=0, metavar="N", help="stop after N rounds (default: never)")
    add_output_options(p, verbose=False)
    p.set_defaults(handler=_join)


def _operator_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--url", help=f"the fleet service, https://HOST:PORT (default ${ENV['url']})")
    p.add_argument("--ca", metavar="PEM", help=f"customer CA (default ${ENV['ca']})")
    p.add_argument("--cert", metavar="PEM", help=f"operator client certificate (default ${ENV['cert']})")
    p.add_argument("--key", metavar="PEM", help=f"its key (default ${ENV['key']})")
    add_output_options(p, verbose=False)


def _client(args: argparse.Namespace) -> FleetClient:
    from obelisk.fleet.client import FleetClient

    values = {}
    for name, env in ENV.items():
        value = getattr(args, name, None) or os.environ.get(env)
        if not value:
            raise InputError(f"--{name} (or ${env}) is required to reach the fleet service")
        values[name] = value
    return FleetClient(values["url"], values["ca"], values["cert"], values["key"])


def _serve(args: argparse.Namespace) -> int:
    from obelisk.core.inputs import read_bounded
    from obelisk.fleet import server, service
    from obelisk.fleet.ratelimit import Limit, RateLimiter

    limiter = RateLimiter(Limit.parse(args.node_rate, "--node-rate"),
                          Limit.parse(args.node_rate_global, "--node-rate-global"))
    if args.registration_timeout < 1:
        raise InputError("--registration-timeout must be at least 1 second")
    allow = _lines(args.ek_allowlist) if args.ek_allowlist else frozenset()
    ek_ca = read_bounded(args.ek_ca, "EK CA", 1 << 22) if args.ek_ca else None
    fleet = service.open_fleet(args.db, read_bounded(args.ca, "customer CA", 1 << 22), interval=args.interval,
                               ek_allowlist=allow, ek_ca_pem=ek_ca,
                               webhooks=service.Webhooks(args.webhook) if args.webhook else None,
                               kek=_kek(args.kek) if args.kek else None,
                               join_tokens=_lines(args.join_tokens) if args.join_tokens else frozenset(),
                               registration_timeout=args.registration_timeout)
    server.serve(fleet, args.listen, cert=args.cert, key=args.key, client_ca=args.ca, limiter=limiter)
    return 0


def _lines(path: str) -> frozenset[str]:
    """A file of one entry a line; `#` starts a comment."""
    from obelisk.core.inputs import read_bounded

    text = read_bounded(path, "list", 1 << 24).decode("utf-8", "replace")
    return frozenset(line.split("#")[0].strip() for line in text.splitlines() if line.split("#")[0].strip())


def _image_remove(args: argparse.Namespace) -> int:
    result = _client(args).remove_image(args.image)
    return emit_result(args, result, lambda d: f"image {d['image']} removed\n")


def _kek(path: str) -> bytes:
    """The service's key-encryption key: 32 bytes, raw or as 64 hex digits, in a file only its owner reads
    (it unwraps every node's /var key part: refused if group or others can read it, as ssh refuses keys)."""
    import os
    import stat

    from obelisk.core.inputs import read_bounded

    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError as exc:
        raise InputError(f"key-encryption key: {exc.strerror}", source=path) from None
    if mode & 0o077:
        raise InputError(f"key-encryption key is readable by others (mode {mode:04o}): chmod 600 it", source=path)
    data = read_bounded(path, "key-encryption key", 1024)
    text = data.strip()
    if len(text) == 64:
        try:
            return bytes.fromhex(text.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            pass
    if len(data) != 32:
        raise InputError(f"key-encryption key: {len(data)} bytes; 32 raw bytes or 64 hex digits expected",
                         source=path)
    return data


def _image_add(args: argparse.Namespace) -> int:
    result = _client(args).add_image(args.manifest, args.signature)
    return emit_result(args, result, lambda d: f"image {d['image']} registered (manifest sha256 "
                                               f"{d['manifest_sha256']})\n")


def _table(rows: list[dict[str, Any]], columns: tuple[str, ...]) -> str:
    if not rows:
        return "(none)\n"
    widths = {c: max(len(c), *(len(str(r.get(c) if r.get(c) is not None else "-")) for r in rows)) for c in columns}
    lines = ["  ".join(c.upper().ljust(widths[c]) for c in columns)]
    lines += ["  ".join(str(r.get(c) if r.get(c) is not None else "-").ljust(widths[c]) for c in columns)
              for r in rows]
    return "\n".join(line.rstrip() for line in lines) + "\n"


def _nodes(args: argparse.Namespace) -> int:
    rows = _client(args).nodes()
    return emit_result(args, {"nodes": rows},
                       lambda d: _table(d["nodes"], ("id", "image", "status", "last_attested", "hostname")))


def _node_action(args: argparse.Namespace) -> int:
    client = _client(args)
    if args.action == "history":
        rows = client.history(args.node)
        for r in rows:
            r["what"] = (("pass " if r["passed"] else "FAIL ") + r["summary"] if r["type"] == "attestation"
                         else f"{r['kind']}: {r['old_status'] or '-'} -> {r['new_status'] or '-'} {r['detail']}")
        return emit_result(args, {"node": args.node, "history": rows},
                           lambda d: _table(d["history"], ("at", "type", "id", "what")))
    result = client.approve(args.node) if args.action == "approve" else client.quarantine(args.node, args.reason)
    return emit_result(args, result, lambda d: f"node {d['id']}: {d['status']}\n")


def _audit(args: argparse.Namespace) -> int:
    rows = _client(args).audit()
    return emit_result(args, {"audit": rows},
                       lambda d: _table(d["audit"], ("at", "subject", "action", "target", "outcome", "detail")))


def _report(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.core import atomic
    from obelisk.fleet.report import bundle, nodes_panel
    from obelisk.reports.options import RenderOptions
    from obelisk.reports.render import render

    client = _client(args)
    fmt = args.format or ({".html": "html", ".htm": "html", ".csv": "csv"}.get(Path(args.output).suffix.lower(),
                                                                             "json") if args.output else "json")
    rows = client.latest()
    b = bundle(rows, client.url)
    data = render(b, fmt, RenderOptions(panels=(nodes_panel(rows),)))  # the fleet table: HTML only
    if args.output:
        atomic.write_bytes(args.output, data)
    else:
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    return b.report.exit_code() if args.fail_on_findings else 0


def _token(path: str) -> str:
    from obelisk.core.inputs import read_bounded

    return read_bounded(path, "join token", 4096).decode("utf-8", "replace").strip()


def _join(args: argparse.Namespace) -> int:
    import socket

    from obelisk.fleet.client import FleetClient, NodeAgent
    from obelisk.fleet.node import attest_forever

    agent = NodeAgent(FleetClient(args.url, args.ca), image=args.image, tcti=args.tcti,
                      event_log=args.eventlog or None, ima_log=args.ima, scan_root=args.scan_root or None,
                      token=_token(args.join_token) if args.join_token else "")
    results = attest_forever(agent, args.interval, socket.gethostname(),
                             lambda line: print(f"obelisk fleet: {line}", file=sys.stderr, flush=True),
                             rounds=args.rounds)
    last = results[-1] if results else {}
    return emit_result(args, {"node": agent.node, "rounds": results},
                       lambda d: f"node {d['node']}: {last.get('status', last.get('error', ''))}\n",
                       0 if last.get("passed") else 1)
