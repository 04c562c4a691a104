"""The whole product on one example: keys → build → verify → fleet service → boot two nodes → attest
→ the fleet approves and attests them → HTML reports → stop.

`obelisk demo --example examples/node` (the README's main command, through scripts/demo) runs
it stage by stage, timing each stage (the figures for warm and cold caches come from here),
and says where the reports are. Each stage is a small function over a shared context.

The small fleet: `fleet serve` runs on this machine (SQLite in the workdir, lab/fleet_service.py);
two nodes of the image boot in parallel, each with its own disk and swtpm, provisioned with the
service's URL and a join token; they register at boot from their own loop (outbound only), an
operator approves both through the service (audited with the operator certificate's subject), and
their next rounds make them `trusted`. The first node is also attested directly over its agent's
mutual-TLS API (`attest`), as before.
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
    from obelisk.signer.keygen import generate, issue_missing

    w.project.mkdir(parents=True, exist_ok=True)
    shutil.copytree(w.example, w.project, dirs_exist_ok=True, ignore=shutil.ignore_patterns("keys", "out*"))
    if (w.keys / "ima.key").exists():
        # keys made by an earlier obelisk: the same CA (so the kernel stays cached), what is missing issued
        issued = issue_missing(w.keys, organization="obelisk example")
        also = f"; issued {' and '.join(issued)}" if issued else ""
        return f"reused the customer CA and IMA key in {w.keys}{also}"
    generate(w.keys, "rsa-2048", organization="obelisk example")
    return (f"generated a customer CA, IMA signing key, disk policy key, Secure Boot PK, KEK and db and the kernel's "
            f"randstruct seed in {w.keys} (private keys and the seed 0600)")


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


NODES = ("node", "node-2")  # run directories under the workdir; the first is also attested directly
FLEET_WAIT = 300.0  # seconds for both nodes to register, be approved and pass a round


def stage_serve(w: Walk) -> str:
    from obelisk.core.errors import InputError
    from obelisk.lab import fleet_service

    directory = w.workdir / "fleet"
    left = directory / "serve.pid"
    if left.exists() and Path(f"/proc/{left.read_text().strip()}").exists():
        raise InputError(f"a fleet service left running by an earlier demo (--keep-running): kill "
                         f"{left.read_text().strip()} first", source=str(left))
    shutil.rmtree(directory, ignore_errors=True)  # a new fleet each run, as its nodes are new (fresh TPMs)
    fleet = fleet_service.start(directory, w.keys / "ca.pem", w.keys / "ca.key")
    w.values["fleet"] = fleet
    added = fleet.operator.add_image(str(w.out / "manifest.json"))
    return (f"fleet serve on {fleet.url} (SQLite {fleet.db}, join token required; nodes reach it at "
            f"{fleet.node_url}); image {added['image']} added by the operator (signature chains to the CA)")


def stage_boot(w: Walk) -> str:
    from concurrent.futures import ThreadPoolExecutor

    from obelisk.lab.boot import FleetProvision, boot, free_port, stop

    fleet = w.values["fleet"]
    provision = FleetProvision(url=fleet.node_url, join_token=fleet.join_token)
    ports: list[int] = []
    while len(ports) < len(NODES):
        port = free_port()
        if port not in ports:
            ports.append(port)
    # Both nodes at once, each in its own run directory with its own swtpm: QEMU runs one vCPU thread each.
    with ThreadPoolExecutor(len(NODES)) as pool:
        futures = [pool.submit(boot, w.out, w.workdir / name, ca=w.keys / "ca.pem", ca_key=w.keys / "ca.key",
                               port=port, fresh=True, quiet=True, fleet=provision)
                   for name, port in zip(NODES, ports)]
        booted, errors = [], []
        for future in futures:
            try:
                booted.append(future.result())
            except (ObeliskError, OSError) as exc:
                errors.append(exc)
    w.values["nodes"] = booted
    if errors:
        for started in booted:  # whatever the error, no node is left running
            stop(started.run_dir)
        raise errors[0]
    node = booted[0]
    w.values["node"] = node
    console = node.serial_log.read_text(errors="replace")
    var = next((line.split("obelisk: ", 1)[1] for line in console.splitlines()
                if "/var " in line and "obelisk:" in line), "")
    consoles = ", ".join(str(n.serial_log) for n in booted)
    return (f"{len(booted)} nodes: disk.raw booted under OVMF with the customer's Secure Boot keys and swtpm, "
            f"agents answer at {', '.join(n.url for n in booted)} (consoles {consoles})" + (f"; {var}" if var else ""))


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


def stage_fleet(w: Walk) -> str:
    """The operator approves the nodes that registered at boot; their next rounds make them trusted."""
    from obelisk.fleet.client import FleetClientError
    from obelisk.lab.fleet_service import FleetServiceError

    fleet = w.values["fleet"]
    operator = fleet.operator
    approved: list[str] = []
    deadline = time.monotonic() + FLEET_WAIT
    while True:
        nodes = operator.nodes()
        for n in nodes:
            if n["status"] == "pending" and n["id"] not in approved:
                try:
                    operator.approve(n["id"])
                    approved.append(n["id"])
                except FleetClientError:  # its AK is not proven yet (registration under way): next time
                    pass
        statuses = {n["id"]: n["status"] for n in nodes}
        if len(statuses) >= len(NODES) and set(statuses.values()) <= {"trusted", "failed", "quarantined"}:
            break
        if time.monotonic() > deadline:
            raise FleetServiceError(f"fleet: after {FLEET_WAIT:.0f} s the nodes are {statuses or 'not registered'} "
                                    f"(service log {fleet.log}, consoles in {w.workdir}/node*/serial.log)")
        time.sleep(1)
    w.failed |= set(statuses.values()) != {"trusted"}
    audit = [a for a in operator.audit() if a["action"] == "approve" and a["outcome"] == "ok"]
    rounds = sum(1 for node in statuses for r in operator.history(node) if r["type"] == "attestation")
    return (f"{len(statuses)} nodes registered at boot and approved by {audit[0]['subject'] if audit else '?'} "
            f"(audited: {len(audit)} approvals); {rounds} rounds verified against the build; "
            + ", ".join(f"{node[:12]}… {status}" for node, status in sorted(statuses.items())))


def stage_report(w: Walk) -> str:
    from obelisk.core import atomic
    from obelisk.fleet.report import bundle, nodes_panel
    from obelisk.reports.model import load_bundle
    from obelisk.reports.options import RenderOptions
    from obelisk.reports.render import render

    inputs: list[str | Path] = [str(w.results / n) for n in ("image-verify.json", "attestation.json")
                                if (w.results / n).exists()]
    html = w.results / "report.html"
    atomic.write_bytes(html, render(load_bundle(inputs), "html", RenderOptions(title="obelisk example node")))
    w.values["report"] = html
    fleet = w.values["fleet"]
    rows = fleet.operator.latest()  # what `obelisk fleet report -o fleet.html` writes
    fleet_html = w.results / "fleet.html"
    atomic.write_bytes(fleet_html, render(bundle(rows, fleet.url), "html",
                                          RenderOptions(title="obelisk example fleet", panels=(nodes_panel(rows),))))
    w.values["fleet_report"] = fleet_html
    return f"HTML report: {html}; fleet HTML report: {fleet_html} ({len(rows)} nodes)"


def stage_stop(w: Walk) -> str:
    from obelisk.lab import fleet_service
    from obelisk.lab.boot import stop

    nodes = w.values.get("nodes") or ([w.values["node"]] if "node" in w.values else [])
    fleet = w.values.get("fleet")
    if w.keep_running:
        left = [f"obelisk boot {w.out} --run-dir {n.run_dir} --stop" for n in nodes]
        if fleet is not None:
            left.append(f"kill {fleet.process.pid}  # fleet serve; dashboard {fleet.url}/dashboard")
        return "left running: " + "; ".join(left) if left else "nothing running"
    for node in nodes:
        stop(node.run_dir)
    if fleet is not None:
        fleet_service.stop(fleet)
    return f"{len(nodes)} nodes stopped" + (", fleet service stopped" if fleet is not None else "")


STAGES: tuple[tuple[str, Callable[[Walk], str]], ...] = (
    ("keys", stage_keys), ("build", stage_build), ("verify", stage_verify), ("serve", stage_serve),
    ("boot", stage_boot), ("attest", stage_attest), ("fleet", stage_fleet), ("report", stage_report),
    ("stop", stage_stop),
)


def run(w: Walk, emit: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)
        ) -> dict[str, Any]:
    """Run every stage; on an error stop the nodes and the service, then re-raise. Returns the timings
    and outcome."""
    timings: dict[str, float] = {}
    try:
        for name, stage in STAGES:
            started = time.monotonic()
            emit(f"[{name}] ...")
            line = stage(w)
            timings[name] = round(time.monotonic() - started, 1)
            emit(f"[{name}] {line} ({timings[name]:.1f} s)")
    except (ObeliskError, KeyboardInterrupt):
        if not w.keep_running:
            stage_stop(w)
        raise
    return {"timings_s": timings, "failed": w.failed, "report": str(w.values.get("report", "")),
            "fleet_report": str(w.values.get("fleet_report", "")), "workdir": str(w.workdir)}
