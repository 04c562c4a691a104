"""Commands of the image pipeline: build, image verify/spec-docs, boot, attest node."""

from __future__ import annotations

import argparse

from obelisk.cli.common import add_output_options, add_quiet, emit_report, emit_result


def register(sub: argparse._SubParsersAction) -> None:
    from obelisk.cli.main import subcommand_group
    from obelisk.cli.signer import add_passphrase_options

    p = sub.add_parser("build", help="build a node image from a spec: kernel, initramfs, signed SquashFS, manifest")
    p.add_argument("spec", metavar="SPEC.yaml")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output directory (replaced atomically)")
    p.add_argument("--cache-dir", metavar="DIR", help="step cache (default $OBELISK_CACHE or ~/.cache/obelisk)")
    p.add_argument("--no-cache", action="store_true", help="rebuild every step")
    p.add_argument("--format", choices=("text", "json"), default=None)
    add_quiet(p)
    p.set_defaults(handler=_build)

    b = sub.add_parser("boot", help="boot a built image under QEMU with swtpm; wait until its agent answers")
    b.add_argument("out", metavar="OUT")
    b.add_argument("--ca", help="customer CA certificate (the agent's clients must chain to it)")
    b.add_argument("--ca-key", help="customer CA key: issues this node's agent and client certs")
    b.add_argument("--run-dir", metavar="DIR", help="this node's state, logs and pids (default OUT.run)")
    b.add_argument("--port", type=int, help="host port forwarded to the agent (default: a free one)")
    b.add_argument("--memory", type=int, default=768, metavar="MiB")
    b.add_argument("--timeout", type=float, default=300, help="seconds to wait for the agent")
    b.add_argument("--stop", action="store_true", help="stop the node of --run-dir (or OUT.run) instead")
    b.add_argument("--fresh", action="store_true",
                   help="provision a new node (new TPM, /var, certificates) even if the run directory holds one; "
                        "without it a provisioned run directory boots again, like a reboot")
    b.add_argument("--direct-kernel", action="store_true",
                   help="developer shortcut: boot OUT's bzImage and initramfs with QEMU's -kernel instead of disk.raw "
                        "under UEFI; nothing measures them, so PCRs 4, 7 and 11 match no prediction and /var stays "
                        "locked")
    b.add_argument("--fleet-url", metavar="URL",
                   help="a new node's fleet service, written onto its config disk (overrides the image's fleet.url); "
                        "https://10.0.2.100:PORT reaches a service on the host's 127.0.0.1:PORT")
    b.add_argument("--fleet-join-token", metavar="FILE",
                   help="a new node's join token, written onto its config disk (0600), never into the image")
    b.add_argument("--allow-reboot", action="store_true",
                   help="the node's own reboots restart it in place (for `obelisk upgrade`: its trial boot and a "
                        "rollback); without it a reboot or poweroff ends QEMU")
    b.add_argument("--format", choices=("text", "json"), default=None)
    add_quiet(b)
    b.set_defaults(handler=_boot)

    image = subcommand_group(sub, "image", "node images: verify, spec reference")
    v = image.add_parser("verify", help="check the manifest signature, every artifact and every file signature")
    v.add_argument("out", metavar="OUT")
    v.add_argument("--ca", required=True, metavar="CA", help="the customer CA certificate (PEM or DER)")
    add_output_options(v)
    v.set_defaults(handler=_verify)
    d = image.add_parser("spec-docs", help="print the spec reference (docs/image-spec.md) generated from the model")
    d.add_argument("-o", "--output", metavar="FILE")
    d.set_defaults(handler=_spec_docs)
    e = image.add_parser("spec-example", help="print a spec skeleton with every key and its default")
    e.set_defaults(handler=_spec_example)
    c = image.add_parser("check-spec", help="validate a spec without building")
    c.add_argument("spec", metavar="SPEC.yaml")
    c.set_defaults(handler=_check_spec)

    attest = subcommand_group(sub, "attest", "TPM attestation: quotes, event logs, evidence, nodes")
    n = attest.add_parser("node", help="attest a running node: fresh nonce, evidence over mTLS, verify vs manifest")
    n.add_argument("url", metavar="URL", help="the agent, https://HOST:PORT")
    n.add_argument("--manifest", required=True, help="the image's manifest.json")
    n.add_argument("--ca", required=True, help="customer CA: the agent's certificate must chain to it")
    n.add_argument("--cert", required=True, help="the verifier's client certificate (issued by the CA)")
    n.add_argument("--key", required=True, help="the client certificate's key")
    n.add_argument("--ak", required=True, help="the node's AK record (from enrollment / obelisk boot)")
    n.add_argument("--ek", help="the node's EK public area, to check the AK's qualified name")
    n.add_argument("--state", help="file keeping the last quote's clock/reset counters (never go backwards) and "
                                   "how far the node's IMA list was checked (the next run checks only newer entries)")
    n.add_argument("--no-scan", action="store_true", help="skip the node's CIS/STIG scan")
    add_output_options(n)
    n.set_defaults(handler=_attest_node)
    a = attest.add_parser("agent", help="run the node agent (HTTPS, mutual TLS, read-only)")
    a.add_argument("--config", required=True, help="agent.json: cert, key, client_ca, port, tcti, ...")
    a.add_argument("--port", type=int)
    a.set_defaults(handler=_attest_agent)
    t = attest.add_parser("issue-cert", help="issue a TLS certificate for an agent (--server) or a verifier")
    t.add_argument("--ca", required=True, help="customer CA certificate")
    t.add_argument("--ca-key", required=True, help="customer CA private key: a PEM/DER file or a pkcs11: URI")
    add_passphrase_options(t)
    t.add_argument("--out", required=True, metavar="DIR", help="writes agent.pem/agent.key or client.pem/client.key")
    t.add_argument("--name", default="obelisk", help="certificate common name")
    t.add_argument("--server", action="store_true", help="a server certificate for the agent")
    t.add_argument("--role", action="append", choices=("reader", "operator"),
                   help="a client certificate's agent role, repeatable: reader (evidence, the default) or operator "
                        "(changes the node; does not imply reader)")
    t.add_argument("--host", action="append", help="agent host names / addresses (default 127.0.0.1, localhost)")
    t.set_defaults(handler=_issue_cert)


def _build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    spec = load_spec(args.spec)
    cache = StepCache(Path(args.cache_dir) if args.cache_dir else cache_root(), enabled=not args.no_cache)
    result = build(spec, Path(args.out), cache=cache, quiet=args.quiet)

    def text(d: dict) -> str:
        lines = [f"built {spec.name} {spec.version} into {d['out']} ({d['files']} files signed)"]
        lines += [f"  {name:18} sha256:{a['sha256']}  {a['size']} bytes" for name, a in d["artifacts"].items()]
        lines.append("  steps: " + ", ".join(f"{k} {v}" for k, v in d["steps"].items()))
        lines += [f"  left out: {why}" for why in d["left_out"]]
        return "\n".join(lines) + "\n"

    args.output = None
    return emit_result(args, result.to_json(), text)


def _verify(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.image.verify import verify_image

    return emit_report(args, verify_image(Path(args.out), Path(args.ca)))


def _spec_docs(args: argparse.Namespace) -> int:
    import sys

    from obelisk.core import atomic
    from obelisk.image.spec import render_docs

    if args.output:
        atomic.write_text(args.output, render_docs())
    else:
        sys.stdout.write(render_docs())
    return 0


def _spec_example(args: argparse.Namespace) -> int:
    import sys

    from obelisk.image.spec import example_yaml

    sys.stdout.write(example_yaml())
    return 0


def _check_spec(args: argparse.Namespace) -> int:
    from obelisk.image.spec import load_spec

    spec = load_spec(args.spec)
    print(f"{args.spec}: valid ({spec.name} {spec.version})")
    return 0


def _attest_node(args: argparse.Namespace) -> int:
    from obelisk.attest.agent_client import AgentEndpoint, attest_node

    endpoint = AgentEndpoint(args.url, ca=args.ca, cert=args.cert, key=args.key)
    report = attest_node(endpoint, manifest=args.manifest, ak=args.ak, ek=args.ek, state=args.state,
                         scan=not args.no_scan)
    return emit_report(args, report)


def _attest_agent(args: argparse.Namespace) -> int:
    from obelisk.cli.node_agent import main

    return main(["--config", args.config] + (["--port", str(args.port)] if args.port else []))


def _issue_cert(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.attest.agent_certs import issue
    from obelisk.cli.signer import passphrase_source
    from obelisk.core.errors import InputError

    hosts = tuple(args.host) if args.host else ("127.0.0.1", "localhost")
    if args.server and args.role:
        raise InputError("--role is for client certificates, not --server")
    issued = issue(Path(args.ca), args.ca_key, Path(args.out), args.name, server=args.server, hosts=hosts,
                   ca_passphrase=passphrase_source(args), roles=tuple(args.role or ("reader",)))
    print(f"certificate {issued.cert}, key {issued.key} (0600)")
    return 0


def _boot(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.lab import boot

    out = Path(args.out)
    run_dir = Path(args.run_dir) if args.run_dir else out.with_name(out.name + ".run")
    if args.stop:
        pids = boot.stop(run_dir)
        print(f"stopped {len(pids)} process(es) of {run_dir}")
        return 0
    if not args.ca or not args.ca_key:
        from obelisk.core.errors import InputError

        raise InputError("boot needs --ca and --ca-key (to issue this node's agent and client certificates)")
    rebooting = not args.fresh and boot.is_provisioned(run_dir)
    fleet = None
    if args.fleet_url or args.fleet_join_token:
        fleet = boot.FleetProvision(url=args.fleet_url,
                                    join_token=Path(args.fleet_join_token) if args.fleet_join_token else None)
    node = boot.boot(out, run_dir, ca=Path(args.ca), ca_key=Path(args.ca_key), port=args.port,
                     memory_mib=args.memory, timeout=args.timeout, fresh=args.fresh, quiet=args.quiet,
                     direct_kernel=args.direct_kernel, fleet=fleet, reboot=args.allow_reboot)
    result = {**node.to_json(), "rebooted": rebooting, "measured": not args.direct_kernel}
    if rebooting:
        from obelisk.image import manifest as mf

        manifest = mf.load(out / mf.MANIFEST)
        key = boot.policy_key_of(manifest, Path(args.ca)) if manifest.disk.policy == "signed" else None
        result["var_sealed_to_this_image"] = boot.var_sealed_for(run_dir, manifest, key)

    run_dir_arg = f" --run-dir {run_dir}" if args.run_dir else ""

    def text(d: dict) -> str:
        warning = ""
        if d.get("var_sealed_to_this_image") is False:
            warning = ("warning: this node's /var does not open for this image (PCR 7 or 11) and stays locked "
                       "(reseal it with `obelisk disk reseal`, or boot with --fresh for a new node)\n")
        if not d["measured"]:
            warning += "warning: --direct-kernel: unmeasured boot (no firmware, no Secure Boot): attestation fails\n"
        return (warning + f"node {'rebooted' if d['rebooted'] else 'up'}: agent at {d['url']} "
                f"(console {d['serial_log']})\n"
                f"attest it: obelisk attest node {d['url']} --manifest {out / 'manifest.json'} --ca {args.ca} "
                f"--cert {d['client_cert']} --key {d['client_key']} --ak {d['ak']}\n"
                f"stop it:   obelisk boot {out}{run_dir_arg} --stop\n")

    args.output = None
    return emit_result(args, result, text)


