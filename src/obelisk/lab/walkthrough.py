"""The whole product on one example: keys → build → verify → boot → attest → HTML report → stop.

`obelisk demo --example examples/node` (the README's main command, through scripts/demo) runs
it stage by stage, timing each stage (the figures for warm and cold caches come from here),
and says where the report is. Each stage is a small function over a shared context.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.core.errors import ObeliskError


@dataclass
class Walk:
    example: Path  # the example's directory (spec.yaml, overlay, fragments)
    workdir: Path  # a copy of the example plus keys, OUT, the node's run dir and the results
    quiet: bool = False
    keep_running: bool = False
    values: dict[str, Any] = field(default_factory=dict)
    failed: bool = False

    @property
    def project(self) -> Path:
        return self.workdir / "project"

    @property
    def keys(self) -> Path:
        return self.project / "keys"

    @property
    def out(self) -> Path:
        return self.workdir / "out"

    @property
    def results(self) -> Path:
        return self.workdir / "results"


def stage_keys(w: Walk) -> str:
    from obelisk.signer.keygen import POLICY_KEY, generate, issue_policy_key, issue_secure_boot_keys

    w.project.mkdir(parents=True, exist_ok=True)
    shutil.copytree(w.example, w.project, dirs_exist_ok=True, ignore=shutil.ignore_patterns("keys", "out*"))
    if (w.keys / "ima.key").exists():
        # keys made by an earlier obelisk: the same CA (so the kernel stays cached), what is missing issued
        issued = []
        if not (w.keys / POLICY_KEY).exists():
            issue_policy_key(w.keys, organization="obelisk example")
            issued.append("a disk policy key")
        if not (w.keys / "db.key").exists():
            issue_secure_boot_keys(w.keys, organization="obelisk example")
            issued.append("Secure Boot PK, KEK and db")
        also = f"; issued {' and '.join(issued)}" if issued else ""
        return f"reused the customer CA and IMA key in {w.keys}{also}"
    generate(w.keys, "rsa-2048", organization="obelisk example")
    return (f"generated a customer CA, IMA signing key, disk policy key and Secure Boot PK, KEK and db in {w.keys} "
            "(private keys 0600)")


def stage_build(w: Walk) -> str:
    from obelisk.core.cachedir import cache_root
    from obelisk.image.build import build
    from obelisk.image.cache import StepCache
    from obelisk.image.spec import load_spec

    result = build(load_spec(w.project / "spec.yaml"), w.out, cache=StepCache(cache_root() / "image"),
                   quiet=w.quiet)
    steps = ", ".join(f"{k} {v}" for k, v in result.steps.items())
    return f"built {w.out}: {len(result.artifacts)} artifacts, {result.files} files signed ({steps})"


def stage_verify(w: Walk) -> str:
    from obelisk.core import atomic, findings
    from obelisk.image.verify import verify_image

    report = verify_image(w.out, w.keys / "ca.pem")
    atomic.write_text(w.results / "image-verify.json", findings.serialize(report))
    w.failed |= report.failed
    return f"image verify: {report.findings[0].observed} ({'PASS' if not report.failed else 'FAIL'})"


def stage_boot(w: Walk) -> str:
    from obelisk.lab.boot import boot

    node = boot(w.out, w.workdir / "node", ca=w.keys / "ca.pem", ca_key=w.keys / "ca.key", fresh=True,
                quiet=w.quiet)
    w.values["node"] = node
    console = node.serial_log.read_text(errors="replace")
    var = next((line.split("obelisk: ", 1)[1] for line in console.splitlines()
                if "/var " in line and "obelisk:" in line), "")
    return (f"disk.raw booted under OVMF with the customer's Secure Boot keys and swtpm; agent answers at "
            f"{node.url} (console {node.serial_log})"
            + (f"; {var}" if var else ""))


def stage_attest(w: Walk) -> str:
    from obelisk.attest.agent_client import AgentEndpoint, attest_node
    from obelisk.core import atomic, findings

    node = w.values["node"]
    endpoint = AgentEndpoint(node.url, ca=str(w.keys / "ca.pem"), cert=str(node.client_cert),
                             key=str(node.client_key))
    report = attest_node(endpoint, manifest=str(w.out / "manifest.json"), ak=str(node.ak))
    atomic.write_text(w.results / "attestation.json", findings.serialize(report))
    w.failed |= report.failed
    counts = report.counts()
    status = findings.Status
    boot = {f.id.rsplit("pcr", 1)[1]: f.status.value for f in report.findings if f.id.startswith("attest.boot.pcr")}
    measured = ", ".join(f"PCR {p} {v}" for p, v in sorted(boot.items(), key=lambda kv: int(kv[0])))
    return (f"attestation: {counts[status.PASS]} pass, {counts[status.FAIL]} fail, "
            f"{counts[status.ERROR]} error ({'PASS' if not report.failed else 'FAIL'})"
            + (f"; measured boot against the build's prediction: {measured}" if measured else ""))


def stage_report(w: Walk) -> str:
    from obelisk.core import atomic
    from obelisk.reports.model import load_bundle
    from obelisk.reports.options import RenderOptions
    from obelisk.reports.render import render

    inputs: list[str | Path] = [str(w.results / n) for n in ("image-verify.json", "attestation.json")
                                if (w.results / n).exists()]
    html = w.results / "report.html"
    atomic.write_bytes(html, render(load_bundle(inputs), "html", RenderOptions(title="obelisk example node")))
    w.values["report"] = html
    return f"HTML report: {html}"


def stage_stop(w: Walk) -> str:
    from obelisk.lab.boot import stop

    node = w.values.get("node")
    if node is None:
        return "no node to stop"
    if w.keep_running:
        return f"node left running: obelisk boot {w.out} --run-dir {node.run_dir} --stop"
    stop(node.run_dir)
    return "node stopped"


STAGES: tuple[tuple[str, Callable[[Walk], str]], ...] = (
    ("keys", stage_keys), ("build", stage_build), ("verify", stage_verify), ("boot", stage_boot),
    ("attest", stage_attest), ("report", stage_report), ("stop", stage_stop),
)


def run(w: Walk, emit: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
        ) -> dict[str, Any]:
    """Run every stage; on an error stop the node, then re-raise. Returns the timings and outcome."""
    timings: dict[str, float] = {}
    try:
        for name, stage in STAGES:
            started = time.monotonic()
            emit(f"[{name}] ...")
            line = stage(w)
            timings[name] = round(time.monotonic() - started, 1)
            emit(f"[{name}] {line} ({timings[name]:.1f} s)")
    except (ObeliskError, KeyboardInterrupt):
        if "node" in w.values and not w.keep_running:
            stage_stop(w)
        raise
    return {"timings_s": timings, "failed": w.failed, "report": str(w.values.get("report", "")),
            "workdir": str(w.workdir)}
