#!/usr/bin/env python3
"""Load generator for `obelisk fleet serve`: simulated nodes pushing attestation rounds. For load only,
never for correctness (tests/fleet/ has the swtpm-backed tests).

Each simulated node has a software AK (tests/attest/synth.py: the TPM2B_PUBLIC and AK record a TPM would
make) that signs a real TPMS_ATTEST over the service's nonce, with an honest firmware event log and an IMA
list (ima-sig, signed by the customer key) whose files are in the image manifest: the service does the full
verification it does for a real node. As on a real node, the IMA list grows between rounds (`--new-entries`
files measured since the last round, on top of `--ima-entries` at boot), so the service's incremental IMA
check (attest/ima_check.IncrementalChecker) walks only the new entries of each round after the first.
Registration is not simulated (it needs a TPM for ActivateCredential): the nodes are written into the
database as approved, then every round goes through HTTPS like a node's (FleetClient, kept-alive
connections: a round's nonce and evidence share one TLS connection, as the node agent's do, and the
next round opens a new one, as a node's does a minute later, resuming the node's last TLS session with
its ticket as the node's client does; `--full-handshakes` makes every round's handshake a full one).

The generator is kept cheap so that the machine's cores go to the service: each round's bundle is made
once for all nodes and only the node's quote (a TPMS_ATTEST over its nonce, signed by its AK) and AK
name are put in per node and round; `--generators N` runs the nodes in N processes.

As real nodes do, a node sends its CIS/STIG scan's body only when the service does not hold a scan with
its digest (the nonce answer names the one it holds): its first round carries the body, the next ones the
digest alone. `--scan-every-round` sends the body every round instead (an older node's behaviour, or a
node whose scan changes every interval).

    python bench/fleet_load.py [--nodes 200] [--rounds 5] [--workers 16] [--processes 1] [--generators 1]
                               [--scan-every-round] [--full-handshakes]
                               [--db postgresql+psycopg://... | --postgresql [--durable]]   (default: SQLite)

Reports attestations per second (overall and per serve process), p50/p99 latency of a round (nonce +
evidence, as the node sees it), CPU seconds per round spent by the serve processes, the database server
and the generator, and the load average before and after.
"""

from __future__ import annotations

import argparse
import base64
import concurrent.futures
import contextlib
import dataclasses
import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))

from obelisk.attest import akrecord
from obelisk.attest import evidence as evmod
from obelisk.core import https
from obelisk.fleet import db, scan_digest
from obelisk.fleet.client import FleetClient
from obelisk.fleet.service import ROUND_SCHEMA
from obelisk.ima_policy import measurement_list as ml
from obelisk.image import manifest as mf
from obelisk.tpm import quote as q
from tests.attest import synth
from tests.fleet.conftest import PLAIN_VAR, ima_signature, start_serve
from tests.image.manifests import sample_manifest

# placeholders in a round's bundle template, replaced per node and round
_NONCE, _AK_NAME = b"\xa1" * 32, b"\xa2" * 34
_ATTEST, _SIGNATURE = b"obelisk-bench-attest-placeholder", b"obelisk-bench-signature-placeholder"


def _setup(work: Path) -> dict:
    from obelisk.attest.agent_certs import issue
    from obelisk.signer.keygen import generate

    keys = generate(work / "customer", "ecdsa-p256")
    return {"keys": keys, "ca": str(keys.ca_cert),
            "server": issue(keys.ca_cert, keys.ca_key, work / "server", "fleet", server=True),
            "operator": issue(keys.ca_cert, keys.ca_key, work / "operator", "bench", server=False)}


def _files(count: int) -> dict[str, bytes]:
    """The image's measured files: synth's, then `count` more (what a node runs as it goes)."""
    return {**synth.FILES, **{f"/usr/lib/bench/tool{i:05d}": f"tool {i}".encode() for i in range(count)}}


@dataclasses.dataclass(frozen=True)
class Round:
    """One round's bundle for every node: the boot's logs and the IMA list as measured by then."""

    template: str  # obelisk.fleet-round/1 with the placeholders, and the scan's body
    named: str  # the same with the scan named by its digest only
    scan_sha256: str
    pcrs: dict[int, bytes]


def _rounds(keys, files: dict[str, bytes], base: int, new: int, rounds: int, work: Path) -> list[Round]:
    """Each round's body template (obelisk.fleet-round/1: the evidence and the node's CIS/STIG scan, as
    every regular round must carry): the IMA list holds `base` files at the first round and `new` more at
    each next one (ima-sig, signed with the build's key), PCR 10 extended accordingly."""
    from obelisk.cis_checks.scan import scan

    (work / "scan-root").mkdir()
    node_scan = scan(str(work / "scan-root")).to_json()  # an empty root: every check not applicable
    node = synth.boot()
    aggregate = hashlib.sha256(b"".join(node.pcrs[i] for i in range(10))).digest()
    entries = [ml.make_entry("ima-sig", [ml.digest_field("sha256", aggregate), ml.name_field("boot_aggregate"),
                                         b""], number=1)]
    for n, (path, content) in enumerate(files.items(), start=2):
        digest = hashlib.sha256(content).digest()
        entries.append(ml.make_entry("ima-sig", [ml.digest_field("sha256", digest), ml.name_field(path),
                                                 ima_signature(keys, digest)], number=n))
    out = []
    for r in range(rounds):
        measured = entries[:1 + base + new * r]
        pcr10 = bytes(32)
        for e in measured:
            pcr10 = synth.extend(pcr10, hashlib.sha256(e.template_data).digest())
        pcrs = {**node.pcrs, 10: pcr10}
        boot = dataclasses.replace(node, ima_log=ml.serialize_binary(measured), pcrs=pcrs)
        ev = evmod.Evidence(nonce=_NONCE, attest=_ATTEST, signature=_SIGNATURE, bank="sha256", pcrs=dict(pcrs),
                            ak_name=_AK_NAME, event_log=boot.event_log, ima_log=boot.ima_log,
                            kernel={"hostname": "bench", "release": "6.1.0", "cmdline": boot.cmdline,
                                    "var_mount": PLAIN_VAR},  # the sample image's plain /var
                            boot_events=boot.boot_events, collected_at=evmod.now())
        digest = scan_digest.digest(node_scan)
        body = {"schema": ROUND_SCHEMA, "evidence": ev.to_json(), "scan": node_scan, "scan_sha256": digest}
        out.append(Round(json.dumps(body), json.dumps({**body, "scan": None}), digest, pcrs))
    return out


def _bundle(rnd: Round, ak: synth.SoftAK, nonce: bytes, clock: q.ClockInfo, held_scan: str | None) -> bytes:
    """The node's bundle for a round: its quote over `nonce` signed by its AK, put into the template; the
    scan's body only when the service does not hold it (`held_scan`: the digest the nonce answer named)."""
    raw = q.serialize_attest(synth.attest(ak, rnd.pcrs, nonce=nonce, clock=clock))
    b64 = lambda data: base64.b64encode(data).decode()  # noqa: E731
    template = rnd.named if held_scan == rnd.scan_sha256 else rnd.template
    return (template.replace(_NONCE.hex(), nonce.hex()).replace(_AK_NAME.hex(), (ak.record.name or b"").hex())
            .replace(b64(_ATTEST), b64(raw)).replace(b64(_SIGNATURE), b64(ak.sign(raw)))).encode()


def _image(pki, work: Path, files: dict[str, bytes]) -> Path:
    from obelisk.ima_policy import reference
    from obelisk.signer.keys import load_certificate, load_signing_key

    records = tuple(mf.FileRecord(p, mf.FILE, mode="0755", size=len(c), sha256=hashlib.sha256(c).hexdigest())
                    for p, c in files.items())
    ref = reference.ReferenceManifest({p: (f"sha256:{hashlib.sha256(c).hexdigest()}",) for p, c in files.items()})
    data = mf.serialize(sample_manifest(files=records, ima_reference=ref))
    (work / "out").mkdir()
    (work / "out/manifest.json").write_bytes(data)
    sig = mf.sign(data, load_signing_key(str(pki["keys"].ima_key)), load_certificate(pki["keys"].ima_cert))
    (work / "out/manifest.json.sig").write_bytes(mf.dumps(sig.to_json()))
    return work / "out/manifest.json"


def _seed(url: str, count: int) -> list[tuple[str, synth.SoftAK]]:
    """`count` approved nodes with software AKs, straight into the database (registration needs a TPM)."""
    sessions = db.open_database(url)
    now = db.utcnow()
    nodes = []
    with sessions.begin() as s:
        image = s.query(db.Image).one()
        for i in range(count):
            ak = synth.make_ak("ecc", label=f"bench-{i}")
            node_id = f"bench{i:05d}"
            s.add(db.Node(id=node_id, ek_public=f"{i:08x}" + (ak.record.ek_public or b"").hex(),
                          ak_record=akrecord.serialize(dataclasses.replace(ak.record, activated=True)),
                          image_id=image.id, status="approved", hostname=node_id, registered_at=now))
            nodes.append((node_id, ak))
    sessions.kw["bind"].dispose()
    return nodes


# ---- the generator: set before its processes fork, read by them ----------------------------------------
_PLAN: dict = {}


def _generate(part: int) -> dict:
    """Rounds of every node in slice `part` (one generator process); its latencies, counts and CPU time."""
    plan = _PLAN
    # Everything made so far lives until the end: out of the collector's sight, a full collection no longer
    # walks it (the generator spent about 40% of its CPU in the cyclic garbage collector otherwise).
    gc.freeze()
    nodes = plan["nodes"][part::plan["generators"]]
    context = https.client_context(plan["ca"])
    urls = plan["urls"]
    lock = threading.Lock()
    latencies: list[float] = []
    per_process = [0] * len(urls)
    passed = 0
    cpu = time.process_time()

    def post(url: str, pool: https.ConnectionPool, path: str, body: bytes) -> dict:
        status, raw = https.exchange(url, context, "POST", path, body=body,
                                     headers={"Content-Type": "application/json"}, timeout=120, default_port=443,
                                     limit=1 << 26, what="fleet", pool=pool)
        if status != 200:
            raise RuntimeError(f"{path}: {status} {raw[:200]!r}")
        return json.loads(raw)

    # a node's client: kept-alive connections within a round, its TLS sessions from round to round
    pools = {node_id: https.ConnectionPool() for node_id, _ in nodes}

    def one_round(index: int, node_id: str, ak: synth.SoftAK, rnd: int) -> None:
        nonlocal passed
        which = (index + rnd) % len(urls)  # consecutive rounds of a node land on different processes
        # a node's round: one TLS connection for its nonce and evidence, resuming its session at that process
        pool = https.ConnectionPool() if plan["full_handshakes"] else pools[node_id]
        start = time.perf_counter()
        answer = post(urls[which], pool, "/v1/node/nonce", json.dumps({"node": node_id}).encode())
        nonce = bytes.fromhex(answer["nonce"])
        held = None if plan["scan_every_round"] else answer.get("scan_sha256")
        clock = q.ClockInfo(clock=1_000_000 + 60_000 * rnd, reset_count=1, restart_count=0, safe=True)
        result = post(urls[which], pool, f"/v1/node/evidence?node={node_id}",
                      _bundle(plan["rounds"][rnd], ak, nonce, clock, held))
        took = time.perf_counter() - start
        pool.close()
        with lock:
            latencies.append(took)
            per_process[which] += 1
            passed += bool(result["passed"])

    with concurrent.futures.ThreadPoolExecutor(plan["workers"]) as pool:
        for rnd in range(len(plan["rounds"])):
            list(pool.map(lambda item, rnd=rnd: one_round(item[0], *item[1], rnd), enumerate(nodes)))
    return {"latencies": latencies, "per_process": per_process, "passed": passed,
            "cpu": time.process_time() - cpu}


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes (and of their children that exited and were waited for)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime, stime, cutime, cstime
    return total / os.sysconf("SC_CLK_TCK")


def _tree(root: int) -> list[int]:
    """`root` and every process below it."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo += children.get(pid, [])
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=16, help="rounds in flight at once, per generator")
    parser.add_argument("--processes", type=int, default=1, help="fleet serve processes on the database")
    parser.add_argument("--generators", type=int, default=1, help="load generator processes")
    parser.add_argument("--ima-entries", type=int, default=200, help="files in a node's IMA list at the first round")
    parser.add_argument("--new-entries", type=int, default=3, help="files each node measures between rounds")
    parser.add_argument("--full-handshakes", action="store_true",
                        help="no TLS session resumption: every round's connection makes a full handshake")
    parser.add_argument("--scan-every-round", action="store_true",
                        help="send the scan's body every round (default: only when the service does not hold it)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    where.add_argument("--postgresql", action="store_true",
                       help="start a PostgreSQL of its own (tests/fleet/pgserver.py) and use it")
    parser.add_argument("--durable", action="store_true",
                        help="with --postgresql: PostgreSQL's default fsync=on (default: fsync=off, as the tests)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="obelisk-fleet-bench-"))
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)  # also when a run fails
        database_pids: list[int] = []
        if args.postgresql:
            from tests.fleet import pgserver

            pg = stack.enter_context(pgserver.running(durable=args.durable))
            url = pg.url
            database_pids = [pg.process.pid]
        else:
            url = args.db or str(work / "fleet.db")
        pki = _setup(work)
        limits = ("--node-rate", "0", "--node-rate-global", "0")  # one source address for every simulated node
        servers = [start_serve(pki, url, work / f"serve{i}.log", limits) for i in range(args.processes)]
        try:
            files = _files(args.ima_entries + args.new_entries * args.rounds)
            operator = FleetClient(servers[0].url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key))
            operator.add_image(str(_image(pki, work, files)))
            _PLAN.update(nodes=_seed(url, args.nodes), urls=[s.url for s in servers], ca=pki["ca"],
                         workers=args.workers, generators=args.generators, scan_every_round=args.scan_every_round,
                         full_handshakes=args.full_handshakes,
                         rounds=_rounds(pki["keys"], files, args.ima_entries, args.new_entries, args.rounds, work))
            serve_pids = [s.process.pid for s in servers]
            db_pids = [p for root in database_pids for p in _tree(root)]
            load_before = os.getloadavg()
            cpu_before = (_cpu_seconds(serve_pids), _cpu_seconds(db_pids))
            began = time.perf_counter()
            if args.generators == 1:
                parts = [_generate(0)]
            else:
                with multiprocessing.get_context("fork").Pool(args.generators) as pool:
                    parts = pool.map(_generate, range(args.generators))
            elapsed = time.perf_counter() - began
            db_pids = [p for root in database_pids for p in _tree(root)]  # its backends came meanwhile
            serve_cpu = _cpu_seconds(serve_pids) - cpu_before[0]
            db_cpu = _cpu_seconds(db_pids) - cpu_before[1]
            load_after = os.getloadavg()
        finally:
            for s in servers:
                s.process.terminate()
                s.process.wait(timeout=30)
        latencies = sorted(t for p in parts for t in p["latencies"])
        total = len(latencies)
        per_process = [sum(p["per_process"][i] for p in parts) for i in range(len(servers))]
        generator_cpu = sum(p["cpu"] for p in parts)
        result = {
            "database": (("postgresql (fsync on)" if args.durable else "postgresql (fsync off)")
                         if url.startswith("postgresql") else "sqlite"),
            "processes": args.processes, "generators": args.generators, "nodes": args.nodes, "rounds": total,
            "passed": sum(p["passed"] for p in parts), "seconds": round(elapsed, 2),
            "attestations_per_second": round(total / elapsed, 1),
            "per_process_per_second": [round(n / elapsed, 1) for n in per_process],
            "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "latency_p99_ms": round(latencies[min(total - 1, int(total * 0.99))] * 1000, 1),
            "cpu_ms_per_round": {"serve": round(serve_cpu / total * 1000, 2),
                                 "database": round(db_cpu / total * 1000, 2) if database_pids else None,
                                 "generator": round(generator_cpu / total * 1000, 2)},
            "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
            "ima_entries": [args.ima_entries, args.new_entries],
            "scan": "every round" if args.scan_every_round else "when the service does not hold it",
            "tls": "full handshake every round" if args.full_handshakes else "session resumed from the last round",
        }
        print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
