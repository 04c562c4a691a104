#!/usr/bin/env python3
"""Load generator for `obelisk fleet serve`: simulated nodes pushing attestation rounds. For load only,
never for correctness (tests/fleet/ has the swtpm-backed tests).

Each simulated node has a software AK (tests/attest/synth.py: the TPM2B_PUBLIC and AK record a TPM would
make) that signs a real TPMS_ATTEST over the service's nonce, with an honest firmware event log and an IMA
list (ima-sig, signed by the customer key) whose files are in the image manifest: the service does the full
verification it does for a real node. Registration is not simulated (it needs a TPM for ActivateCredential):
the nodes are written into the database as approved, then every round goes through HTTPS like a node's.

    python bench/fleet_load.py [--nodes 200] [--rounds 5] [--workers 16] [--processes 1]
                               [--db postgresql+psycopg://...]   (default: a SQLite file)

Reports attestations per second (overall and per serve process) and p50/p99 latency of a round
(nonce + evidence, as the node sees it).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime as _dt
import hashlib
import json
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
from obelisk.fleet import db
from obelisk.fleet.client import FleetClient
from obelisk.ima_policy import measurement_list as ml
from obelisk.image import manifest as mf
from obelisk.tpm import quote as q
from tests.attest import synth
from tests.fleet.conftest import ima_signature, start_serve
from tests.image.manifests import sample_manifest


def _setup(work: Path) -> dict:
    from obelisk.attest.agent_certs import issue
    from obelisk.signer.keygen import generate

    keys = generate(work / "customer", "ecdsa-p256")
    return {"keys": keys, "ca": str(keys.ca_cert),
            "server": issue(keys.ca_cert, keys.ca_key, work / "server", "fleet", server=True),
            "operator": issue(keys.ca_cert, keys.ca_key, work / "operator", "bench", server=False)}


def _boot(keys) -> synth.Boot:
    """synth's honest boot, its IMA list rebuilt as ima-sig with the build's signatures."""
    node = synth.boot()
    aggregate = hashlib.sha256(b"".join(node.pcrs[i] for i in range(10))).digest()
    entries = [ml.make_entry("ima-sig", [ml.digest_field("sha256", aggregate), ml.name_field("boot_aggregate"),
                                         b""], number=1)]
    for n, (path, content) in enumerate(synth.FILES.items(), start=2):
        digest = hashlib.sha256(content).digest()
        entries.append(ml.make_entry("ima-sig", [ml.digest_field("sha256", digest), ml.name_field(path),
                                                 ima_signature(keys, digest)], number=n))
    pcr10 = bytes(32)
    for e in entries:
        pcr10 = synth.extend(pcr10, hashlib.sha256(e.template_data).digest())
    return dataclasses.replace(node, ima_log=ml.serialize_binary(entries), pcrs={**node.pcrs, 10: pcr10})


def _image(pki, work: Path) -> Path:
    from obelisk.ima_policy import reference
    from obelisk.signer.keys import load_certificate, load_signing_key

    files = tuple(mf.FileRecord(p, mf.FILE, mode="0755", size=len(c), sha256=hashlib.sha256(c).hexdigest())
                  for p, c in synth.FILES.items())
    ref = reference.ReferenceManifest({p: (f"sha256:{hashlib.sha256(c).hexdigest()}",)
                                       for p, c in synth.FILES.items()})
    data = mf.serialize(sample_manifest(files=files, ima_reference=ref))
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
    return nodes


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--workers", type=int, default=16, help="rounds in flight at once")
    parser.add_argument("--processes", type=int, default=1, help="fleet serve processes on the database")
    parser.add_argument("--db", help="database URL (default: a SQLite file in a temporary directory)")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="obelisk-fleet-bench-"))
    pki = _setup(work)
    url = args.db or str(work / "fleet.db")
    servers = [start_serve(pki, url, work / f"serve{i}.log") for i in range(args.processes)]
    try:
        operator = FleetClient(servers[0].url, pki["ca"], str(pki["operator"].cert), str(pki["operator"].key))
        operator.add_image(str(_image(pki, work)))
        nodes = _seed(url, args.nodes)
        boot = _boot(pki["keys"])
        clients = [FleetClient(s.url, pki["ca"], timeout=120) for s in servers]
        lock = threading.Lock()
        latencies: list[float] = []
        per_process = [0] * len(servers)
        passed = 0

        def one_round(index: int, node_id: str, ak: synth.SoftAK, rnd: int) -> None:
            nonlocal passed
            which = (index + rnd) % len(clients)  # consecutive rounds of a node land on different processes
            client = clients[which]
            start = time.perf_counter()
            nonce = bytes.fromhex(client.request("POST", "/v1/node/nonce", {"node": node_id})["nonce"])
            clock = q.ClockInfo(clock=1_000_000 + 60_000 * rnd, reset_count=1, restart_count=0, safe=True)
            ev = synth.evidence(ak, boot, quote=synth.attest(ak, boot.pcrs, nonce=nonce, clock=clock), nonce=nonce,
                                collected_at=_dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            result = client.request("POST", f"/v1/node/evidence?node={node_id}", evmod.serialize(ev).encode())
            took = time.perf_counter() - start
            with lock:
                latencies.append(took)
                per_process[which] += 1
                passed += bool(result["passed"])

        began = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
            for rnd in range(args.rounds):
                list(pool.map(lambda item, rnd=rnd: one_round(item[0], *item[1], rnd), enumerate(nodes)))
        elapsed = time.perf_counter() - began
        total = len(latencies)
        latencies.sort()
        result = {
            "database": "postgresql" if url.startswith("postgresql") else "sqlite", "processes": args.processes,
            "nodes": args.nodes, "rounds": total, "passed": passed, "seconds": round(elapsed, 2),
            "attestations_per_second": round(total / elapsed, 1),
            "per_process_per_second": [round(n / elapsed, 1) for n in per_process],
            "latency_p50_ms": round(statistics.median(latencies) * 1000, 1),
            "latency_p99_ms": round(latencies[min(total - 1, int(total * 0.99))] * 1000, 1),
        }
        print(json.dumps(result, indent=2))
    finally:
        for s in servers:
            s.process.terminate()
            s.process.wait(timeout=30)
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
