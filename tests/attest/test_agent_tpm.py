"""The agent serving real TPM evidence (swtpm), and the verifier's checks against an image manifest."""

from __future__ import annotations

import hashlib
import threading

import pytest

from obelisk.attest.agent import AgentConfig, make_server
from obelisk.attest.agent_certs import issue
from obelisk.attest.agent_client import AgentEndpoint, AgentError
from obelisk.core.findings import Status
from obelisk.ima_policy import measurement_list as ml


def _ima_list(files: list[tuple[str, bytes]]) -> bytes:
    entries = [ml.make_entry("ima-ng", [ml.digest_field("sha256", b"\0" * 32), ml.name_field("boot_aggregate")],
                             number=1)]
    for i, (path, digest) in enumerate(files, start=2):
        entries.append(ml.make_entry("ima-ng", [ml.digest_field("sha256", digest), ml.name_field(path)], number=i))
    return ml.serialize_binary(entries)


MANIFEST = {"ima_reference": {"schema": "obelisk.ima-reference/1",
                              "files": {"/usr/bin/agent": ["sha256:" + hashlib.sha256(b"a").hexdigest()],
                                        "/usr/bin/mkdir": ["sha256:" + hashlib.sha256(b"m").hexdigest()]},
                              "rules": [{"glob": "/var/**", "action": "ignore"},
                                        {"glob": "/tmp/**", "action": "ignore"}]}}


@pytest.mark.swtpm
def test_agent_serves_a_quote_the_verifier_accepts_once(swtpm, tmp_path):
    from obelisk.attest import akrecord
    from obelisk.attest.agent_client import attest_node
    from obelisk.signer.keygen import generate
    from obelisk.tpm import device as tpm

    info = tpm.create_keys(swtpm.tcti)
    record = akrecord.from_public(info.public, ek_public=info.ek_public, activated=True)
    (tmp_path / "ak.json").write_text(akrecord.serialize(record))
    keys = generate(tmp_path / "keys", "ecdsa-p256")
    server_cert = issue(keys.ca_cert, keys.ca_key, tmp_path / "srv", "node", server=True)
    client = issue(keys.ca_cert, keys.ca_key, tmp_path / "cli", "verifier", server=False)
    ima = tmp_path / "ima.bin"
    ima.write_bytes(_ima_list([("/usr/bin/agent", hashlib.sha256(b"a").digest())]))
    from obelisk.ima_policy import reference
    from obelisk.image import manifest as mf
    from obelisk.signer.keys import load_certificate, load_signing_key
    from tests.image.manifests import sample_manifest

    data = mf.serialize(sample_manifest(image=mf.Image(name="n", version="1"),
                                        ima_reference=reference.from_json(MANIFEST["ima_reference"])))
    (tmp_path / "manifest.json").write_bytes(data)
    sig = mf.sign(data, load_signing_key(str(keys.ima_key)), load_certificate(keys.ima_cert))
    (tmp_path / "manifest.json.sig").write_bytes(mf.dumps(sig.to_json()))
    config = AgentConfig(cert=str(server_cert.cert), key=str(server_cert.key), client_ca=str(keys.ca_cert),
                         host="127.0.0.1", port=0, tcti=swtpm.tcti, event_log=None, ima_log=str(ima),
                         scan_root=None)
    server = make_server(config, log=lambda _: None)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        ep = AgentEndpoint(f"https://127.0.0.1:{server.server_address[1]}", ca=str(keys.ca_cert),
                           cert=str(client.cert), key=str(client.key))
        report = attest_node(ep, manifest=str(tmp_path / "manifest.json"), ak=str(tmp_path / "ak.json"), scan=False)
        by_id = {f.id: f for f in report.findings}
        quote_checks = [f for f in report.findings if f.section == "quote"]
        assert quote_checks and all(f.status is Status.PASS for f in quote_checks), \
            [(f.id, f.status, f.detail) for f in quote_checks if f.status is not Status.PASS]
        assert by_id["ima.reference"].status is Status.PASS
        assert by_id["attest.reference.signature"].status is Status.PASS
        # the subject names the image and where it answered; merged with an `image verify` report, the
        # image's name and version appear once
        assert report.subject.name == f"n @ {ep.url}"
        from obelisk.core.findings import Subject
        from obelisk.reports.model import _merged_subject

        image_subject = Subject("image", "n", attributes=(("path", "out"), ("version", "1")))
        merged = _merged_subject([report.subject, image_subject])
        keys_ = [k for k, _ in merged.attributes]
        assert len(keys_) == len(set(keys_)) and dict(merged.attributes)["image.version"] == "1"
        assert not [k for k in keys_ if "version" in k and k != "image.version"]
        # the same nonce again: the agent refuses it
        nonce = b"\x11" * 32
        ep.evidence(nonce)
        with pytest.raises(AgentError, match="409"):
            ep.evidence(nonce)
    finally:
        server.shutdown()
        server.server_close()
