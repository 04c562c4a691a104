"""`ima log verify` on generated lists: tampering, reordering, truncation, keys, references, prefixes."""

import dataclasses
import hashlib
import json

import pytest

from obelisk.core import findings as report_format
from obelisk.core import tools
from obelisk.core.errors import ParseError
from obelisk.core.findings import Status
from obelisk.ima_policy import checker, reference
from obelisk.ima_policy.keyring import Keyring
from obelisk.ima_policy.measurement_list import digest_field, make_entry, name_field, serialize_ascii, serialize_binary
from obelisk.ima_policy.pcrs import PcrValues
from obelisk.ima_policy.reference import ReferenceManifest, Rule
from obelisk.ima_policy.replay import SHA1_PADDED, replay
from obelisk.ima_policy.verify import VerifyOptions, verify_log
from tests.ima_policy.logs import boot_aggregate_entry, file_entry, sample_entries


def _statuses(result):
    return {f.id: f.status for f in result.report.findings}


def _pcrs(entries, banks=("sha1", "sha256"), mode="per-bank"):
    values = replay(entries, banks, mode=mode)
    return PcrValues({b: {10: v} for b, v in values.items()})


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """Files signed by evmctl with a key from `obelisk keys generate`, and an ima-sig list of them."""
    from obelisk.signer import keygen

    d = tmp_path_factory.mktemp("signed")
    keys = keygen.generate(d / "keys", "rsa-2048")
    other = keygen.generate(d / "other", "rsa-2048")
    entries = [boot_aggregate_entry(hashlib.sha256(b"boot").digest())]
    files = {}
    for i in range(1, 7):
        f = d / f"file{i}"
        f.write_bytes(b"content %d" % i)
        tools.run("evmctl", ["ima_sign", "-a", "sha256", "--sigfile", "--key", keys.ima_key, f])
        sig = (d / f"file{i}.sig").read_bytes()
        path = f"/usr/bin/file{i}"
        entries.append(file_entry(path, f.read_bytes(), "ima-sig", sig=sig, number=i + 1))
        files[path] = (f"sha256:{hashlib.sha256(f.read_bytes()).hexdigest()}",)
    return {"dir": d, "keys": keys, "other": other, "entries": entries, "files": files}


def test_clean_list_passes_everything(signed):
    entries = signed["entries"]
    data = serialize_binary(entries)
    result = verify_log(data, "list", VerifyOptions(
        pcrs=_pcrs(entries), reference=ReferenceManifest(signed["files"]),
        keyring=Keyring.load([str(signed["keys"].ima_cert)])))
    st = _statuses(result)
    assert st["ima.log.template-hashes"] is Status.PASS
    assert st["ima.pcr.10.sha1"] is Status.PASS and st["ima.pcr.10.sha256"] is Status.PASS
    assert st["ima.reference"] is Status.PASS and st["ima.signatures"] is Status.PASS
    assert not result.report.failed
    assert "6 valid signatures" in next(f.detail for f in result.report.findings if f.id == "ima.signatures")


def test_evmctl_agrees_on_the_clean_list(signed, tmp_path):
    entries = signed["entries"]
    (tmp_path / "list").write_bytes(serialize_binary(entries))
    values = replay(entries, ["sha1", "sha256"])
    for bank in ("sha1", "sha256"):
        lines = "".join(f"PCR-{i:02d}: {(values[bank] if i == 10 else bytes(len(values[bank]))).hex()}\n"
                        for i in range(24))
        (tmp_path / bank).write_text(lines)
    proc = tools.run("evmctl", ["ima_measurement", "--key", signed["keys"].ima_cert_der,
                                "--pcrs", f"sha1,{tmp_path / 'sha1'}", "--pcrs", f"sha256,{tmp_path / 'sha256'}",
                                tmp_path / "list"], check=False)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]


def test_tampered_entry_named(signed):
    entries = list(signed["entries"])
    victim = entries[3]
    values = list(victim.fields())
    values[0] = digest_field("sha256", hashlib.sha256(b"evil").digest())
    forged = make_entry("ima-sig", values, number=4)
    entries[3] = dataclasses.replace(forged, template_digest=victim.template_digest)  # hash left as it was
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(
        pcrs=_pcrs(signed["entries"]), reference=ReferenceManifest(signed["files"])))
    st = _statuses(result)
    assert st["ima.entry.4.template-hash"] is Status.FAIL
    f = next(f for f in result.report.findings if f.id == "ima.entry.4.template-hash")
    assert f.target == "/usr/bin/file3" and f.evidence[0].location == "entry 4"
    assert st["ima.entry.4.digest-mismatch"] is Status.FAIL


def test_tampered_entry_with_fixed_hash_breaks_pcr(signed):
    entries = list(signed["entries"])
    values = list(entries[2].fields())
    values[0] = digest_field("sha256", hashlib.sha256(b"evil").digest())
    entries[2] = make_entry("ima-sig", values, number=3)
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(
        pcrs=_pcrs(signed["entries"]), reference=ReferenceManifest(signed["files"]),
        keyring=Keyring.load([str(signed["keys"].ima_cert)])))
    st = _statuses(result)
    assert st["ima.pcr.10.sha256"] is Status.FAIL
    assert st["ima.entry.3.digest-mismatch"] is Status.FAIL
    assert st["ima.entry.3.bad-signature"] is Status.FAIL


def test_reordered_list_fails_pcr(signed):
    entries = list(signed["entries"])
    entries[2], entries[3] = entries[3], entries[2]
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(pcrs=_pcrs(signed["entries"])))
    st = _statuses(result)
    assert st["ima.log.template-hashes"] is Status.PASS  # every entry is intact ...
    assert st["ima.pcr.10.sha1"] is Status.FAIL  # ... but the order is not what the TPM saw
    assert "reordered" in next(f.detail for f in result.report.findings if f.id == "ima.pcr.10.sha1")


def test_truncated_binary_list_named(signed):
    data = serialize_binary(signed["entries"])
    with pytest.raises(ParseError, match=r"entry 7: template data length \d+ exceeds"):
        verify_log(data[:-10], "list")


def test_list_shorter_than_pcr_fails(signed):
    entries = signed["entries"]
    result = verify_log(serialize_binary(entries[:4]), "list", VerifyOptions(pcrs=_pcrs(entries)))
    assert _statuses(result)["ima.pcr.10.sha1"] is Status.FAIL


def test_wrong_certificate_names_every_entry(signed):
    result = verify_log(serialize_binary(signed["entries"]), "list", VerifyOptions(
        keyring=Keyring.load([str(signed["other"].ima_cert)])))
    st = _statuses(result)
    assert [i for i in range(2, 8) if st.get(f"ima.entry.{i}.unknown-key") is Status.FAIL] == list(range(2, 8))
    assert st["ima.signatures"] is Status.FAIL


def test_unsigned_and_bad_signature(signed):
    entries = list(signed["entries"])
    v = list(entries[1].fields())
    entries[1] = make_entry("ima-sig", [v[0], v[1], b""], number=2)
    v = list(entries[2].fields())
    entries[2] = make_entry("ima-sig", [v[0], v[1], entries[3].fields()[2]], number=3)  # file3's signature
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(
        keyring=Keyring.load([str(signed["keys"].ima_cert)])))
    st = _statuses(result)
    assert st["ima.entry.2.unsigned"] is Status.FAIL
    assert st["ima.entry.3.bad-signature"] is Status.FAIL
    assert "ima.entry.4.bad-signature" not in st


def test_prefix_when_list_runs_ahead():
    entries = sample_entries(12)
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(pcrs=_pcrs(entries[:8])))
    f = next(f for f in result.report.findings if f.id == "ima.pcr.10.sha256")
    assert f.status is Status.PASS
    assert "first 8 of 12 entries" in f.detail and "4 entries ahead" in f.detail


def test_older_kernel_detected():
    entries = sample_entries(10)
    entries.append(make_entry("ima-ng", [digest_field("sha256", bytes(32)), name_field("/var/x")], violation=True))
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(pcrs=_pcrs(entries, mode=SHA1_PADDED)))
    # the SHA-1 bank is the same either way; sha256 only matches the zero-padded SHA-1 replay
    assert {r.bank: r.mode for r in result.replays}["sha256"] == SHA1_PADDED
    st = _statuses(result)
    assert st["ima.pcr.10.sha256"] is Status.PASS
    assert st["ima.entry.11.violation"] is Status.FAIL


def test_reference_rules():
    entries = [boot_aggregate_entry(bytes(32)),
               file_entry("/usr/bin/a", b"a", number=2),
               file_entry("/usr/bin/b", b"changed", number=3),
               file_entry("/etc/kubernetes/kubelet.conf", b"x", number=4),
               file_entry("/var/lib/containerd/x/bin", b"y", number=5),
               file_entry("/opt/unknown", b"z", number=6)]
    manifest = ReferenceManifest(
        {"/usr/bin/a": (f"sha256:{hashlib.sha256(b'a').hexdigest()}",),
         "/usr/bin/b": (f"sha256:{hashlib.sha256(b'b').hexdigest()}",)},
        (Rule("/etc/kubernetes/**", "glob", "any-digest"), Rule("^/var/lib/containerd/", "regex", "ignore")))
    result = verify_log(serialize_ascii(entries), "list", VerifyOptions(reference=manifest))
    st = _statuses(result)
    assert st["ima.entry.3.digest-mismatch"] is Status.FAIL
    assert st["ima.entry.6.unknown-file"] is Status.FAIL
    assert not any(k.startswith(("ima.entry.4", "ima.entry.5", "ima.entry.2")) for k in st)
    summary = next(f for f in result.report.findings if f.id == "ima.reference")
    assert "1 files match, 1 allowed to vary, 1 ignored by rules, 2 failed" in summary.detail


def test_max_findings_counts_the_rest():
    entries = sample_entries(30)
    result = verify_log(serialize_binary(entries), "list",
                        VerifyOptions(reference=ReferenceManifest({}), max_findings=5))
    ids = [f.id for f in result.report.findings]
    assert sum(i.endswith(".unknown-file") for i in ids) == 5
    more = next(f for f in result.report.findings if f.id == "ima.entries.unknown-file.more")
    assert more.observed == "29"


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_chunked_walk_equals_single(monkeypatch, encoding):
    """Many chunks on two processes give the same result as one walk, with right entry numbers."""
    entries = sample_entries(400)
    entries[250] = dataclasses.replace(entries[250], template_digest=b"\x01" * 20)
    data = serialize_binary(entries) if encoding == "binary" else serialize_ascii(entries)
    opts = VerifyOptions(pcrs=_pcrs(sample_entries(400)), reference=ReferenceManifest({}), max_findings=10_000)
    single = verify_log(data, "list", dataclasses.replace(opts, workers=1))
    monkeypatch.setattr(checker, "CHUNK_TARGET", 1500)
    assert len(checker.split_points(checker.Job(data, encoding, "little", ("sha1",), None, None, 1, "x"))) > 10
    multi = verify_log(data, "list", dataclasses.replace(opts, workers=2))
    assert [f.to_json() for f in multi.report.findings] == [f.to_json() for f in single.report.findings]
    assert _statuses(multi)["ima.entry.251.template-hash"] is Status.FAIL
    assert [r.value for r in multi.replays] == [r.value for r in single.replays]


def test_false_chunk_boundary_is_caught(monkeypatch):
    """A file name that contains the entry header pattern must not derail the split."""
    entries = sample_entries(200)
    fake_header = (10).to_bytes(4, "little") + b"A" * 20 + (6).to_bytes(4, "little") + b"ima-ng"
    evil = "/tmp/" + fake_header.decode("latin-1")
    entries[120] = make_entry("ima-ng", [digest_field("sha256", bytes(32)), evil.encode("latin-1") + b"\0"],
                              number=121)
    data = serialize_binary(entries)
    entry_start = len(serialize_binary(entries[:120]))
    fake_at = data.find(fake_header, entry_start)
    monkeypatch.setattr(checker, "CHUNK_TARGET", entry_start + 1)  # the first cut lands inside entry 121
    points = checker.split_points(checker.Job(data, "binary", "little", ("sha1",), None, None, 1, "x"))
    assert points[1] == fake_at
    result = verify_log(data, "list", VerifyOptions(pcrs=_pcrs(entries), workers=2))
    assert result.entries == 200
    assert not result.report.failed


def test_cli_verify_json_and_exit_codes(obelisk_cli, tmp_path, signed):
    entries = signed["entries"]
    (tmp_path / "list").write_bytes(serialize_binary(entries))
    values = replay(entries, ["sha1", "sha256"])
    (tmp_path / "pcrs.yaml").write_text(
        "sha1:\n  10 : 0x{}\nsha256:\n  10 : 0x{}\n".format(values["sha1"].hex(), values["sha256"].hex()))
    (tmp_path / "ref.json").write_text(reference.serialize(ReferenceManifest(signed["files"])))
    ok = obelisk_cli("ima", "log", "verify", str(tmp_path / "list"), "--pcrs", str(tmp_path / "pcrs.yaml"),
                     "--reference", str(tmp_path / "ref.json"), "--cert", str(signed["keys"].ima_cert),
                     "--format", "json")
    assert ok.returncode == 0, ok.stderr
    report = report_format.parse(ok.stdout)
    assert dict(report.subject.attributes)["pcr10.sha256"] == values["sha256"].hex()
    bad = obelisk_cli("ima", "log", "verify", str(tmp_path / "list"), "--cert", str(signed["other"].ima_cert),
                      "--format", "json")
    assert bad.returncode == 1
    assert any(f["id"] == "ima.entry.2.unknown-key" for f in json.loads(bad.stdout)["findings"])
    (tmp_path / "trunc").write_bytes((tmp_path / "list").read_bytes()[:-5])
    trunc = obelisk_cli("ima", "log", "verify", str(tmp_path / "trunc"))
    assert trunc.returncode == 2
    assert trunc.stderr.count("\n") == 1 and "entry 7" in trunc.stderr and "Traceback" not in trunc.stderr


@pytest.mark.parametrize("pair, rng", [
    (("sample-ascii_runtime_measurements-pcrs-8-9", "sample-binary_bios_measurements-pcrs-8-9"), "0-9"),
    (("test_ascii_runtime_measurements", "test_binary_bios_measurements"), "0-7"),
])
def test_boot_aggregate_from_event_log(shared_dir, obelisk_cli, pair, rng):
    ima = shared_dir / "testdata/ima"
    proc = obelisk_cli("ima", "log", "verify", str(ima / pair[0]), "--eventlog", str(ima / pair[1]),
                       "--format", "json")
    assert proc.returncode == 0, proc.stderr
    f = next(f for f in json.loads(proc.stdout)["findings"] if f["id"] == "ima.boot-aggregate")
    assert f["status"] == "pass" and f"over PCR {rng}" in f["detail"]


def test_boot_aggregate_from_event_log_api(shared_dir):
    """The same with the event log replayed by obelisk.tpm.eventlog, and a wrong log rejected."""
    from obelisk.ima_policy import boot_aggregate
    from obelisk.ima_policy.measurement_list import parse_measurement_list
    from obelisk.tpm import eventlog

    ima = shared_dir / "testdata/ima"
    good = eventlog.replay(eventlog.parse((ima / "sample-binary_bios_measurements-pcrs-8-9").read_bytes()))
    other = eventlog.replay(eventlog.parse((ima / "test_binary_bios_measurements").read_bytes()))
    m = parse_measurement_list((ima / "sample-ascii_runtime_measurements-pcrs-8-9").read_bytes()).entries[0]
    m = m.measurement()
    pcrs = {i: good.value(m.digest_algo, i) for i in range(10)}
    assert boot_aggregate.check(m.digest_algo, m.digest, pcrs).matched_range == "0-9"
    wrong = {i: other.value(m.digest_algo, i) for i in range(10)}
    assert not boot_aggregate.check(m.digest_algo, m.digest, wrong).ok
    # the machine's SHA-1 PCRs 0-9 read later with tsspcrread agree with the event log's replay
    from obelisk.ima_policy import pcrs as pcr_files
    quoted = pcr_files.load(str(ima / "sample-tpm-2.0-pcrs-8-9"))
    assert all(quoted.get("sha1", i) == good.value("sha1", i) for i in range(10))


def test_ascii_fast_path_matches_the_binary_encoding():
    """The ascii reader's fast path for ima-ng lines builds exactly the kernel's binary entries."""
    entries = sample_entries(30) + [file_entry("/bin/s", b"s", "ima-sig", sig=b"\x03\x02\x04abcd\x00\x01z")]
    text = serialize_ascii(entries)
    checker._JOB = checker.Job(text, "ascii", "little", ("sha1",), None, None, 10, "x")
    try:
        buf, numbers = checker._ascii_chunk(text, 0, len(text), 1, "x")
    finally:
        checker._JOB = None
    assert buf == serialize_binary(entries)
    assert numbers == list(range(1, 32))


def test_modsig_only_entry_is_manual_not_unsigned(signed):
    e = make_entry("ima-modsig", [digest_field("sha256", bytes(32)), name_field("/lib/modules/x.ko"), b"",
                                  digest_field("sha256", b"\x01" * 32), b"\x30\x82pkcs7"], number=2)
    entries = [signed["entries"][0], e]
    result = verify_log(serialize_binary(entries), "list", VerifyOptions(
        keyring=Keyring.load([str(signed["keys"].ima_cert)])))
    st = _statuses(result)
    assert st["ima.entry.2.modsig-not-verified"] is Status.MANUAL
    assert "ima.entry.2.unsigned" not in st


def test_mixed_templates_are_still_cut_into_chunks(monkeypatch):
    """boot_aggregate is ima-ng, the files ima-sig: the list is still walked in parallel chunks."""
    entries = sample_entries(1) + [file_entry(f"/bin/f{i}", b"%d" % i, "ima-sig", number=i + 2) for i in range(300)]
    data = serialize_binary(entries)
    monkeypatch.setattr(checker, "CHUNK_TARGET", 2000)
    job = checker.Job(data, "binary", "little", ("sha1",), None, None, 1, "x")
    assert len(checker.split_points(job)) > 5
    result = verify_log(data, "list", VerifyOptions(pcrs=_pcrs(entries), workers=2))
    assert result.entries == 301 and not result.report.failed


@pytest.mark.parametrize("option, content, message", [
    ("--pcrs", "garbage\n", "expected 'PCR-NN: hex'"),
    ("--cert", "garbage\n", "not an X.509 certificate"),
    ("--reference", "garbage\n", "not JSON"),
    ("--reference", '{"schema":"obelisk.ima-reference/1","files":{"/a":"sha256:zz"}}', "not 'algo:lowercase-hex'"),
    ("--eventlog", "garbage\n", "bad.txt"),
    ("--banks", None, "unknown PCR bank 'sha3'"),
])
def test_cli_bad_inputs_one_line(obelisk_cli, tmp_path, option, content, message):
    (tmp_path / "list").write_bytes(serialize_binary(sample_entries(3)))
    value = "sha3"
    if content is not None:
        (tmp_path / "bad.txt").write_text(content)
        value = str(tmp_path / "bad.txt")
    proc = obelisk_cli("ima", "log", "verify", str(tmp_path / "list"), option, value)
    assert proc.returncode == 2
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_big_endian_list_verifies(monkeypatch):
    """A big-endian kernel without ima_canonical_fmt: lengths in its native order, hashed that way."""
    entries = [boot_aggregate_entry(bytes(32))]
    entries[0] = make_entry("ima-ng", list(entries[0].fields()), byte_order="big")
    entries += [file_entry(f"/bin/f{i}", b"%d" % i, "ima-ng" if i % 3 else "ima-sig", number=i + 2,
                           byte_order="big") for i in range(200)]
    data = serialize_binary(entries, "big")
    monkeypatch.setattr(checker, "CHUNK_TARGET", 3000)
    manifest = ReferenceManifest({f"/bin/f{i}": f"sha256:{hashlib.sha256(b'%d' % i).hexdigest()}"
                                  for i in range(200)})
    result = verify_log(data, "list", VerifyOptions(pcrs=_pcrs(entries), reference=manifest, workers=2))
    assert result.byte_order == "big" and result.entries == 201
    assert not result.report.failed, [f.id for f in result.report.findings if f.status is Status.FAIL]


def test_eventlog_checked_against_quoted_pcrs(shared_dir, obelisk_cli, tmp_path):
    """--eventlog with --pcrs: the event log must replay to the quoted boot PCRs (here the SHA-1 values
    tsspcrread read on the same machine), so a foreign event log cannot vouch for boot_aggregate."""
    ima = shared_dir / "testdata/ima"
    good = obelisk_cli("ima", "log", "verify", str(ima / "sample-ascii_runtime_measurements-pcrs-8-9"),
                       "--eventlog", str(ima / "sample-binary_bios_measurements-pcrs-8-9"),
                       "--pcrs", str(ima / "sample-tpm-2.0-pcrs-8-9"), "--format", "json")
    findings = {f["id"]: f for f in json.loads(good.stdout)["findings"]}
    assert findings["ima.eventlog.sha1"]["status"] == "pass"
    assert findings["ima.boot-aggregate"]["status"] == "pass"
    wrong = obelisk_cli("ima", "log", "verify", str(ima / "sample-ascii_runtime_measurements-pcrs-8-9"),
                        "--eventlog", str(ima / "test_binary_bios_measurements"),
                        "--pcrs", str(ima / "sample-tpm-2.0-pcrs-8-9"), "--format", "json")
    findings = {f["id"]: f for f in json.loads(wrong.stdout)["findings"]}
    assert findings["ima.eventlog.sha1"]["status"] == "fail"
    assert findings["ima.boot-aggregate"]["status"] == "fail"
    assert wrong.returncode == 1


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
@pytest.mark.parametrize("with_reference", [False, True])
def test_runs_are_cut_at_each_tampered_entry(encoding, with_reference):
    """The fast paths hash a whole run (binary) or chunk (ascii) after cutting it: each tampered entry,
    also two in a row and the last one, is still named, and the replay is that of the listed data."""
    entries = sample_entries(600)
    for i in (9, 10, 300, 599):
        entries[i] = dataclasses.replace(entries[i], template_digest=bytes([i % 250 + 1]) * 20)
    data = serialize_binary(entries) if encoding == "binary" else serialize_ascii(entries)
    files = {e.measurement().path: f"sha256:{e.measurement().digest.hex()}" for e in entries[1:]}
    ref = ReferenceManifest(files) if with_reference else None
    result = verify_log(data, "list", VerifyOptions(pcrs=_pcrs(entries), reference=ref, workers=1))
    failed = sorted(f.id for f in result.report.findings if f.status is Status.FAIL)
    assert failed == sorted(f"ima.entry.{n}.template-hash" for n in (10, 11, 301, 600))
    assert [r.prefix for r in result.replays] == [600, 600]
    if with_reference:
        ok = next(f for f in result.report.findings if f.id == "ima.reference")
        # tampered entries are still looked up in the manifest
        assert ok.status is Status.PASS and ok.detail.startswith("599 files match")
