"""Replay a generated list into a real swtpm and compare with obelisk's replay."""

import re

import pytest

from obelisk.core import tools
from obelisk.ima_policy.measurement_list import make_entry, parse_binary, serialize_binary
from obelisk.ima_policy.replay import PER_BANK, SHA1_PADDED, extend_digest, replay
from tests.ima_policy.logs import sample_entries

pytestmark = pytest.mark.swtpm


def _pcrread(tpm, bank):
    out = tools.run("tpm2_pcrread", [f"{bank}:10"], env=tpm.env).stdout.decode()
    return bytes.fromhex(re.search(r"10\s*:\s*0x([0-9A-Fa-f]+)", out).group(1))


@pytest.mark.parametrize("mode", [PER_BANK, SHA1_PADDED])
def test_replay_matches_tpm(swtpm, mode):
    entries = sample_entries(12, "ima-sig")
    entries.insert(5, make_entry("ima-ng", [b"sha256:\0" + bytes(32), b"/var/log/open-writers\0"], violation=True))
    entries = list(parse_binary(serialize_binary(entries)).entries)  # what a verifier reads
    for e in entries:
        spec = ",".join(f"{bank}={extend_digest(e, bank, mode).hex()}" for bank in ("sha1", "sha256"))
        tools.run("tpm2_pcrextend", [f"10:{spec}"], env=swtpm.env)
    values = replay(entries, ["sha1", "sha256"], mode=mode)
    assert _pcrread(swtpm, "sha1") == values["sha1"]
    assert _pcrread(swtpm, "sha256") == values["sha256"]
    assert values["sha256"] != bytes(32)


def test_verify_against_tpm2_pcrread_output(swtpm, tmp_path, obelisk_cli):
    """The full loop: extend a list into the TPM, read the PCRs with tpm2_pcrread, verify with them.

    The list is then extended by two more entries in the TPM's absence: the quote covers a prefix.
    """
    entries = sample_entries(15)
    for e in entries[:13]:
        spec = ",".join(f"{bank}={extend_digest(e, bank, PER_BANK).hex()}" for bank in ("sha1", "sha256"))
        tools.run("tpm2_pcrextend", [f"10:{spec}"], env=swtpm.env)
    yaml_text = tools.run("tpm2_pcrread", ["sha1:0,1,2,3,4,5,6,7,8,9,10+sha256:0,1,2,3,4,5,6,7,8,9,10"],
                          env=swtpm.env).stdout.decode()
    (tmp_path / "pcrs.yaml").write_text(yaml_text)
    (tmp_path / "list").write_bytes(serialize_binary(entries))
    proc = obelisk_cli("ima", "log", "verify", str(tmp_path / "list"), "--pcrs", str(tmp_path / "pcrs.yaml"),
                       "--format", "json")
    import json
    findings = {f["id"]: f for f in json.loads(proc.stdout)["findings"]}
    for bank in ("sha1", "sha256"):
        f = findings[f"ima.pcr.10.{bank}"]
        assert f["status"] == "pass", f
        assert "first 13 of 15 entries" in f["detail"]
    # boot_aggregate of this generated list is not over the swtpm's PCR 0-9: caught
    assert findings["ima.boot-aggregate"]["status"] == "fail"
    assert proc.returncode == 1
