"""Fixtures of the fleet tests: a customer PKI (and a rogue one), signed manifests, a running service,
and host-side "nodes", each with its own swtpm and a simulated boot measured into it."""

from __future__ import annotations

import hashlib
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from obelisk.fleet import service
from obelisk.fleet.client import FleetClient, NodeAgent
from obelisk.fleet.server import make_server
from tests.attest import synth

IMAGE = "n1:1"  # tests.image.manifests.sample_manifest
AGENT_DIGEST = hashlib.sha256(b"a").digest()  # /usr/bin/agent in the sample manifest
KEK = bytes(range(32))  # the service's key-encryption key for node keys


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from obelisk.attest.agent_certs import issue
    from obelisk.signer.keygen import generate

    root = tmp_path_factory.mktemp("pki")
    customer = generate(root / "customer", "ecdsa-p256")
    other = generate(root / "other", "ecdsa-p256")
    return {
        "keys": customer, "other": other, "ca": str(customer.ca_cert),
        "server": issue(customer.ca_cert, customer.ca_key, root / "server", "fleet", server=True),
        "operator": issue(customer.ca_cert, customer.ca_key, root / "operator", "alice", server=False),
        "rogue": issue(other.ca_cert, other.ca_key, root / "rogue", "mallory", server=False),
    }


def signed_manifest(out: Path, keys, version: str = "1") -> Path:
    """The sample manifest (no PCR predictions), signed by `keys`' IMA/manifest key, as OUT/ of a build."""
    from obelisk.image import manifest as mf
    from obelisk.signer.keys import load_certificate, load_signing_key
    from tests.image.manifests import sample_manifest

    out.mkdir(parents=True, exist_ok=True)
    data = mf.serialize(sample_manifest(image=mf.Image(name="n1", version=version)))
    (out / "manifest.json").write_bytes(data)
    sig = mf.sign(data, load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert))
    (out / "manifest.json.sig").write_bytes(mf.dumps(sig.to_json()))
    return out / "manifest.json"


@dataclass
class Service:
    url: str
    fleet: service.Fleet
    db: Path
    log: list[str]

    def operator(self, pki, who: str = "operator") -> FleetClient:
        return FleetClient(self.url, pki["ca"], str(pki[who].cert), str(pki[who].key), timeout=30)


@pytest.fixture
def db_url(tmp_path) -> str:
    """The fleet's database: a SQLite file (tests/fleet/test_postgresql.py overrides it)."""
    return str(tmp_path / "fleet.db")


@pytest.fixture
def fleet_service(pki, db_url):
    log: list[str] = []
    db_path = Path(db_url)
    fleet = service.open_fleet(db_url, Path(pki["ca"]).read_bytes(), interval=60, kek=KEK)
    server = make_server(fleet, "127.0.0.1", 0, cert=str(pki["server"].cert), key=str(pki["server"].key),
                         client_ca=pki["ca"], log=log.append)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield Service(f"https://127.0.0.1:{server.server_address[1]}", fleet, db_path, log)
    finally:
        server.shutdown()
        server.server_close()


def ima_signature(keys, digest: bytes) -> bytes:
    """The security.ima v2 signature the build gives a file: by the customer's IMA key."""
    from obelisk.signer import hashalgo
    from obelisk.signer.keys import ima_key_id, load_certificate, load_signing_key
    from obelisk.signer.sign import sign_digest_value

    cert = load_certificate(keys.ima_cert)
    return sign_digest_value(load_signing_key(str(keys.ima_key)), ima_key_id(cert, str(keys.ima_cert)),
                             hashalgo.by_name("sha256"), digest)


def boot_node(tpm, out: Path, keys, files: list[tuple[str, bytes]] | None = None) -> tuple[Path, Path]:
    """What firmware and the kernel would have measured into this swtpm: a firmware event log (PCRs 0-9) and
    an IMA list (boot_aggregate, then `files`, ima-sig with the build's signatures) extended into PCR 10.
    Returns (event log, IMA list)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA

    from obelisk.ima_policy import measurement_list as ml
    from obelisk.tpm import device, eventlog

    log = eventlog.build([(0, 0x8, b"S-CRTM 1.0"), (0, 0x80000008, b"firmware blob"),
                          (7, 0x80000001, synth.variable("SecureBoot", b"\1")),
                          (4, 0x80000003, b"kernel"), (9, 0xD, b"initrd"),
                          (8, 0xD, b"cmdline ima_policy=tcb")], banks=("sha1", "sha256"))
    for ev in log.events[1:]:
        device.extend_pcr(tpm.tcti, ev.pcr, ev.data)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eventlog.bin").write_bytes(eventlog.serialize(log))
    pcrs = device.pcr_values(tpm.tcti, "sha256", range(10))
    aggregate = hashlib.sha256(b"".join(pcrs[i] for i in range(10))).digest()
    items = [ml.make_entry("ima-sig", [ml.digest_field("sha256", aggregate), ml.name_field("boot_aggregate"), b""],
                           number=1)]
    for i, (path, digest) in enumerate(files if files is not None else [("/usr/bin/agent", AGENT_DIGEST)], 2):
        items.append(ml.make_entry("ima-sig", [ml.digest_field("sha256", digest), ml.name_field(path),
                                               ima_signature(keys, digest)], number=i))
    with device.open_tpm(tpm.tcti) as esapi:
        for e in items:
            d = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
            d.digest.sha256 = hashlib.sha256(e.template_data).digest()
            esapi.pcr_extend(ESYS_TR.PCR10, TPML_DIGEST_VALUES([d]))
    (out / "ima.bin").write_bytes(ml.serialize_binary(items))
    return out / "eventlog.bin", out / "ima.bin"


PLAIN_VAR = "/dev/vdc ext2"  # what a node of the sample image (disk.var: plain) reports mounted on /var


@pytest.fixture(autouse=True)
def host_nodes_report_the_images_var(monkeypatch):
    """A host is not a booted image: its nodes report /var as a node of the sample image would (the agent's
    word, like the scan; the quote does not cover it), so rounds are judged on what the tests change."""
    from obelisk.attest import evidence

    facts = evidence.kernel_facts
    monkeypatch.setattr(evidence, "kernel_facts", lambda: {**facts(), "var_mount": PLAIN_VAR})


def make_node(tpm, out: Path, url: str, pki, image: str = IMAGE) -> NodeAgent:
    """A host-side node: EK and AK created in its own swtpm, booted (measured), with its fleet client. Its
    rounds carry a CIS/STIG scan of an empty root (every check not applicable: nothing fails)."""
    from obelisk.tpm import device

    device.create_keys(tpm.tcti)
    event_log, ima = boot_node(tpm, out, pki["keys"])
    (out / "scan-root").mkdir(exist_ok=True)
    return NodeAgent(FleetClient(url, pki["ca"], timeout=30), image=image, tcti=tpm.tcti, event_log=str(event_log),
                     ima_log=str(ima), scan_root=str(out / "scan-root"))


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServeProcess:
    process: subprocess.Popen[bytes]
    url: str
    stderr: Path


def start_serve(pki, db: str, log: Path, extra: tuple[str, ...] = ()) -> ServeProcess:
    """`obelisk fleet serve` as its own process (the user's command line, plus `extra` options), ready to
    answer."""
    import os
    import socket
    import sys
    import time

    from tests.conftest import ROOT

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    handle = open(log, "wb")  # noqa: SIM115 - the process writes to it after this function returns
    proc = subprocess.Popen([sys.executable, "-m", "obelisk", "fleet", "serve", "--db", db, "--listen",
                             f"127.0.0.1:{port}", "--ca", pki["ca"], "--cert", str(pki["server"].cert),
                             "--key", str(pki["server"].key), "--interval", "60", *extra],
                            stdout=subprocess.DEVNULL, stderr=handle, env=env)
    handle.close()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"fleet serve exited {proc.returncode}: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return ServeProcess(proc, f"https://127.0.0.1:{port}", log)
        except OSError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"fleet serve did not listen: {log.read_text()}")
