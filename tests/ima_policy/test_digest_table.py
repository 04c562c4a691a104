"""The compact reference table and the windowed manifest reader give exactly what the dict gives."""

import hashlib
import json

import pytest

from obelisk.core.errors import InputError
from obelisk.ima_policy import digest_table, reference
from obelisk.ima_policy.measurement_list import serialize_ascii, serialize_binary
from obelisk.ima_policy.reference import ReferenceManifest, Rule
from obelisk.ima_policy.verify import VerifyOptions, verify_log
from tests.ima_policy.logs import boot_aggregate_entry, file_entry


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


FILES = {
    "/usr/bin/a": _sha256(b"a"),
    "/usr/bin/b": [_sha256(b"b")],  # a list of one
    "/usr/bin/two": [_sha256(b"x"), _sha256(b"two")],  # several digests, one algorithm
    "/usr/bin/mixed": ["sha512:" + "11" * 64, _sha256(b"mixed")],  # several algorithms
    "/usr/bin/short": "sha256:abcd",  # can never match, but is shown as expected
    "/usr/bin/sp ace, \"quoted\" }": _sha256(b"q"),  # JSON escapes, a brace and a comma
    "/usr/lib/caf\u00e9": _sha256(b"cafe"),  # not ascii
    "/usr/bin/dup": _sha256(b"first"),
}


def _manifest_text(files, rules=(), dup_last=None):
    text = json.dumps({"schema": reference.SCHEMA, "image": "x", "files": files,
                       "rules": [r.to_json() for r in rules]}, indent=1)
    if dup_last is not None:  # the same path again at the end of `files` (JSON: the last one counts)
        text = text.replace("\n }", f',\n  "/usr/bin/dup": "{dup_last}"\n }}', 1)
    return text


def _as_tuple(value):
    return (value,) if isinstance(value, str) else value


@pytest.mark.parametrize("window", [64, 1 << 20])
def test_compact_load_answers_like_the_dict(tmp_path, monkeypatch, window):
    monkeypatch.setattr(digest_table, "_WINDOW", window)
    path = tmp_path / "ref.json"
    path.write_text(_manifest_text(FILES, dup_last=_sha256(b"last")))
    plain = reference.load(path)
    compact = reference.load_compact(path, stream_above=0)
    assert isinstance(compact.files, digest_table.DigestTable)
    assert compact.image == plain.image and compact.rules == plain.rules
    for p in [*FILES, "/nope", "/usr/bin"]:
        assert _as_tuple(compact.files.get(p)) == _as_tuple(plain.files.get(p)), p
        assert compact.digests(p) == plain.digests(p), p
    assert plain.files["/usr/bin/dup"] == _sha256(b"last")
    plain_match, compact_match = plain.digest_matcher(), compact.digest_matcher()
    for p in [*FILES, "/nope"]:
        for d in [b"a", b"b", b"two", b"x", b"mixed", b"q", b"cafe", b"first", b"last", b"zz"]:
            for head in (b"sha256", b"ima:sha256", b"sha1"):
                field = head + b":\0" + hashlib.sha256(d).digest()
                raw = p.encode("utf-8", "surrogateescape")
                assert compact_match(raw, field) == plain_match(raw, field), (p, d, head)


def test_keylime_policy_streamed_like_converted(tmp_path):
    policy = {"meta": {"version": 1}, "digests": {"/usr/bin/a": [hashlib.sha256(b"a").hexdigest()],
                                                  "/usr/bin/s1": [hashlib.sha1(b"s").hexdigest().upper()],
                                                  "/usr/bin/none": []},
              "excludes": ["^/tmp/"], "ima-buf": {}, "keyrings": {}}
    path = tmp_path / "policy.json"
    path.write_text(json.dumps(policy))
    plain = reference.load(path)
    compact = reference.load_compact(path, stream_above=0)
    assert compact.rules == plain.rules
    for p in ["/usr/bin/a", "/usr/bin/s1", "/usr/bin/none", "/x"]:
        assert compact.digests(p) == plain.digests(p)


@pytest.mark.parametrize("text", ['{"schema": "obelisk.ima-reference/1", "files": {"rel": "sha256:00"}}',
                                  '{"schema": "obelisk.ima-reference/1", "files": {"/x": "SHA256:00"}}',
                                  '{"schema": "obelisk.ima-reference/1", "files": {"/x": "sha256:00",}}',
                                  '{"schema": "nope", "files": {}}'])
def test_bad_manifests_fail_the_same_way(tmp_path, text):
    path = tmp_path / "ref.json"
    path.write_text(text)
    with pytest.raises(InputError) as plain:
        reference.load(path)
    with pytest.raises(InputError) as compact:
        reference.load_compact(path, stream_above=0)
    assert str(compact.value) == str(plain.value)


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_verify_with_the_compact_table_gives_the_same_report(tmp_path, encoding):
    entries = [boot_aggregate_entry(bytes(32))]
    files = {}
    for i in range(2, 400):
        name = f"/usr/lib/f{i}"
        entries.append(file_entry(name, b"%d" % i, number=i))
        if i % 5:
            files[name] = _sha256(b"%d" % (i if i % 7 else i + 1))  # some differ, some are missing
    path = tmp_path / "ref.json"
    path.write_text(_manifest_text(files, rules=(Rule("/usr/lib/f1*", "glob", "any-digest"),)))
    data = serialize_binary(entries) if encoding == "binary" else serialize_ascii(entries)
    reports = [verify_log(data, "list", VerifyOptions(reference=m, max_findings=50)).report
               for m in (reference.load(path), reference.load_compact(path, stream_above=0))]
    assert [f.to_json() for f in reports[0].findings] == [f.to_json() for f in reports[1].findings]
    assert any(f.id.endswith("digest-mismatch") for f in reports[0].findings)


def test_compact_manifest_is_for_checking_only(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text(_manifest_text({"/a": _sha256(b"a")}))
    with pytest.raises(TypeError):
        reference.serialize(reference.load_compact(path, stream_above=0))
    assert isinstance(reference.load(path), ReferenceManifest)
