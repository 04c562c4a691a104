"""`obelisk scan` and `obelisk k8s render|encryption-key|checks`: thin wrappers over scan.py and render.py."""

from __future__ import annotations

import argparse

BENCHMARK_CHOICES = ("cis-1.12", "stig-k8s", "obelisk-runtime")


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.common import add_output_options, add_quiet
    from obelisk.cli.main import subcommand_group

    p = sub.add_parser("scan", help="check a Kubernetes node (live or a root directory) against CIS, DISA STIG and "
                            "obelisk's container runtime checks",
                       description="Scan a node's Kubernetes configuration against the CIS Kubernetes Benchmark "
                                   "v1.12 and the DISA Kubernetes STIG, and its container runtime (containerd, "
                                   "cgroups, seccomp, AppArmor) against obelisk's runtime checks. Exit 0: no "
                                   "failures; 1: failures or errors; 2: bad input.")
    p.add_argument("--root", default="/", metavar="DIR",
                   help="root directory to scan (default /: the live node, processes read from /proc)")
    p.add_argument("--benchmark", action="append", choices=BENCHMARK_CHOICES, metavar="NAME",
                   help="cis-1.12, stig-k8s or obelisk-runtime; repeat for several (default: all)")
    p.add_argument("--waivers", metavar="FILE", help="YAML waivers (id, reason, approver, expires)")
    p.add_argument("--stig-benchmark", metavar="FILE",
                   help="DISA's Kubernetes STIG XCCDF (or SCAP data stream): official titles, rule ids and "
                        "severities of that release")
    p.add_argument("--stig-release", metavar="VxRy", help="use this built-in STIG release's rule ids (V1R9, V2R1)")
    p.add_argument("--proc", metavar="DIR", help="read running processes from DIR (default: /proc when --root is /)")
    p.add_argument("--sys", metavar="DIR", help="read kernel facts (cgroups, LSMs) from DIR (default: /sys when "
                                              "--root is /)")
    p.add_argument("--offline", action="store_true", help="do not read processes even when --root is /")
    add_output_options(p)
    add_quiet(p)
    p.set_defaults(handler=_scan)

    k8s = subcommand_group(sub, "k8s", "hardened Kubernetes node configuration")
    r = k8s.add_parser("render", help="write hardened kubelet, static pod, audit, admission and TLS configuration",
                       description="Render the Kubernetes files a node needs, with the modes and owners CIS and "
                                   "the STIG ask for (the stricter where they differ).")
    r.add_argument("--out", required=True, metavar="DIR", help="root directory to write into")
    r.add_argument("--role", choices=("control-plane", "worker"), default="control-plane")
    r.add_argument("--kubernetes-version", default="1.31", metavar="X.Y[.Z]")
    r.add_argument("--registry", default="registry.k8s.io", help="image registry of the control-plane images")
    r.add_argument("--pod-security-level", choices=("restricted", "baseline"), default="restricted",
                   help="Pod Security Admission level enforced by default")
    r.add_argument("--etcd-uid", type=int, default=990, help="uid/gid of the etcd system user (default 990)")
    add_output_options(r)
    r.set_defaults(handler=_render)

    e = k8s.add_parser("encryption-key",
                       help="write an encryption-at-rest configuration with a fresh key (on the node)",
                       description="Generate the API server's EncryptionConfiguration with a new 32-byte secretbox "
                                   "key, mode 0600. Run when the node is provisioned; never bake it into an image.")
    e.add_argument("--out", default="/var/lib/kubernetes/encryption/config.yaml", metavar="FILE")
    e.add_argument("--key-name", default="key1")
    e.add_argument("--replace", action="store_true",
                   help="overwrite an existing file (its key is lost: secrets encrypted with it become unreadable)")
    add_output_options(e)
    e.set_defaults(handler=_encryption_key)

    c = k8s.add_parser("checks", help="list the check catalogue (CIS and STIG references, assessment)")
    c.add_argument("--benchmark", action="append", choices=BENCHMARK_CHOICES, metavar="NAME")
    c.add_argument("--stig-benchmark", metavar="FILE", help="DISA XCCDF file: show DISA's titles")
    add_output_options(c)
    c.set_defaults(handler=_checks)


def _scan(args: argparse.Namespace) -> int:
    from obelisk.cis_checks.scan import scan
    from obelisk.cli.common import emit_report
    from obelisk.core.waivers import load_waivers

    waivers = load_waivers(args.waivers) if args.waivers else ()
    live = False if args.offline else None
    report = scan(args.root, args.benchmark or BENCHMARK_CHOICES, waivers, proc=args.proc, sys=args.sys, live=live,
                  stig_benchmark=args.stig_benchmark, stig_release=args.stig_release)
    return emit_report(args, report)


def _render(args: argparse.Namespace) -> int:
    from obelisk.cis_checks.render import render_tree
    from obelisk.cli.common import emit_result

    tree = render_tree(args.out, args.role, args.kubernetes_version, registry=args.registry,
                       pod_security_level=args.pod_security_level, etcd_uid=args.etcd_uid)
    data = tree.to_json()

    def text(d: dict) -> str:
        lines = [f"rendered {d['role']} configuration for Kubernetes {d['kubernetes_version']} under {d['root']}"]
        lines += [f"  {f['mode']} {f['uid']}:{f['gid']} {f['path']}" for f in d["files"]]
        return "\n".join(lines) + "\n"

    return emit_result(args, data, text)


def _encryption_key(args: argparse.Namespace) -> int:
    from obelisk.cis_checks.render import write_encryption_config
    from obelisk.cli.common import emit_result

    path = write_encryption_config(args.out, args.key_name, replace=args.replace)
    return emit_result(args, {"path": str(path), "mode": "0600", "provider": "secretbox"},
                       f"wrote {path} (mode 0600, secretbox key {args.key_name})\n")


def _checks(args: argparse.Namespace) -> int:
    from obelisk.cis_checks.catalogue import load_checks
    from obelisk.cli.common import emit_result

    wanted = set(args.benchmark or BENCHMARK_CHOICES)
    rows = []
    for check in load_checks(stig_benchmark=args.stig_benchmark):
        if not wanted.intersection(check.benchmarks):
            continue
        rows.append({"id": check.id, "title": check.title, "section": check.section,
                     "assessment": check.assessment, "evaluated": check.test is not None,
                     "severity": check.severity.value, "component": check.component,
                     "references": [r.to_json() for r in check.references()],
                     "disa_titles": {f.vid: f.title for f in check.stig if f.title}})

    def text(d: dict) -> str:
        out = []
        for row in d["checks"]:
            refs = " ".join(r["id"] for r in row["references"] if r["scheme"] in ("cis", "stig"))
            how = "auto" if row["evaluated"] else "manual"
            out.append(f"{row['id']:16} {how:6} {row['severity']:6} {refs:28} {row['title']}")
        return "\n".join(out) + f"\n{len(d['checks'])} checks\n"

    return emit_result(args, {"checks": rows}, text)
