"""`ima log verify` streams the list: bounded memory whatever its length, bad bytes named by entry and offset."""

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from obelisk.core.errors import ParseError
from obelisk.core.findings import Status
from obelisk.core.inputs import map_bounded
from obelisk.ima_policy.measurement_list import serialize_ascii, serialize_binary
from obelisk.ima_policy.verify import VerifyOptions, verify_log
from tests.ima_policy.logs import boot_aggregate_entry, file_entry

SRC = str(Path(__file__).resolve().parents[2] / "src")
RSS_BOUND_KB = 100 * 1024


def _entries_bytes(count: int, name_len: int, first_number: int = 2) -> tuple[bytes, bytes]:
    """`count` identical-but-for-nothing ima-ng entries (as binary and ascii); the list may repeat entries."""
    path = "/usr/lib/" + "x" * name_len
    e = file_entry(path, b"content", "ima-ng", number=first_number)
    return serialize_binary([e]), serialize_ascii([e])


def _peak_rss_kb(args: list[str]) -> tuple[int, subprocess.CompletedProcess]:
    """Run `obelisk ARGS` in a fresh wrapper process; the peak RSS of its largest process (main or worker)."""
    code = ("import json, resource, subprocess, sys\n"
            "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
            "print(json.dumps([resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, p.returncode, "
            "p.stdout, p.stderr[-4000:]]))\n")
    out = subprocess.run([sys.executable, "-c", code, sys.executable, "-m", "obelisk", *args], capture_output=True,
                         text=True, check=True, env=dict(os.environ, PYTHONPATH=SRC), timeout=300)
    rss, rc, stdout, stderr = json.loads(out.stdout)
    return rss, subprocess.CompletedProcess(args, rc, stdout, stderr)


@pytest.mark.parametrize("encoding", ["binary", "ascii"])
def test_peak_rss_stays_bounded_on_a_list_larger_than_the_bound(tmp_path, encoding):
    first_bin, first_ascii = (serialize_binary([boot_aggregate_entry(bytes(32))]),
                              serialize_ascii([boot_aggregate_entry(bytes(32))]))
    one_bin, one_ascii = _entries_bytes(1, 1500)
    one = one_bin if encoding == "binary" else one_ascii
    count = (140 * 1024 * 1024) // len(one)  # the list alone is 1.4x the bound
    path = tmp_path / "list"
    with open(path, "wb") as f:
        f.write(first_bin if encoding == "binary" else first_ascii)
        block = one * 1000
        for _ in range(count // 1000):
            f.write(block)
    assert path.stat().st_size > RSS_BOUND_KB * 1024
    rss, proc = _peak_rss_kb(["ima", "log", "verify", "--format", "json", "--quiet", str(path)])
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    attrs = dict(report["subject"]["attributes"]) if isinstance(report["subject"]["attributes"], dict) else {
        a[0]: a[1] for a in report["subject"]["attributes"]}
    assert attrs["entries"] == str(1 + (count // 1000) * 1000)
    assert rss < RSS_BOUND_KB, f"peak RSS {rss} KB for a {path.stat().st_size >> 20} MB list"


def test_one_gigabyte_of_garbage_is_exit_2_with_the_offset_in_bounded_memory(tmp_path):
    good = serialize_binary([boot_aggregate_entry(bytes(32))]) + _entries_bytes(1, 40)[0] * 1000
    path = tmp_path / "garbage"
    with open(path, "wb") as f:
        f.write(good)
        f.truncate(1 << 30)  # a sparse gigabyte of zeros after 1001 good entries
    rss, proc = _peak_rss_kb(["ima", "log", "verify", "--quiet", str(path)])
    assert proc.returncode == 2
    assert f"(offset {len(good) + 24})" in proc.stderr  # the zero template-name length of entry 1002
    assert "entry 1002" in proc.stderr
    assert rss < RSS_BOUND_KB


def test_random_garbage_is_exit_2_at_offset_0(tmp_path):
    path = tmp_path / "garbage"
    path.write_bytes(b"\xa5\x17\xee\x91" + os.urandom(1 << 20))
    rss, proc = _peak_rss_kb(["ima", "log", "verify", "--quiet", str(path)])
    assert proc.returncode == 2
    assert "(offset 0)" in proc.stderr


def _million(corrupt_at: int | None = None, field: str = "data") -> tuple[bytes, int]:
    """A 1,000,000-entry binary list; entry `corrupt_at` (1-based) altered. Returns (list, entry offset)."""
    first = serialize_binary([boot_aggregate_entry(bytes(32))])
    one = _entries_bytes(1, 20)[0]
    data = bytearray(first + one * 999_999)
    off = -1
    if corrupt_at is not None:
        off = len(first) + (corrupt_at - 2) * len(one)
        if field == "data":
            data[off + len(one) - 3] ^= 0x01  # a byte of the file name: the template hash no longer matches
        else:
            data[off + 24:off + 28] = (0).to_bytes(4, "little")  # template name length 0: cannot parse
    return bytes(data), off


def test_one_corrupted_entry_in_a_million_is_named():
    data, _ = _million(777_777)
    result = verify_log(data, "list", VerifyOptions(banks=("sha1",), workers=2))
    assert result.entries == 1_000_000
    bad = [f for f in result.report.findings if f.status is Status.FAIL and "template-hash" in f.id]
    assert [f.id for f in bad] == ["ima.entry.777777.template-hash"]


def test_one_unparseable_entry_in_a_million_is_named_with_its_offset():
    data, off = _million(654_321, field="header")
    with pytest.raises(ParseError) as err:
        verify_log(data, "list", VerifyOptions(banks=("sha1",), workers=2))
    assert "entry 654321" in str(err.value)
    assert err.value.offset == off + 24


def test_mapped_and_read_lists_give_the_same_report(tmp_path):
    entries = [boot_aggregate_entry(hashlib.sha256(b"b").digest())] + [
        file_entry(f"/usr/bin/f{i}", b"%d" % i, "ima-ng", number=i + 2) for i in range(50_000)]
    for data in (serialize_binary(entries), serialize_ascii(entries)):
        path = tmp_path / "list"
        path.write_bytes(data)
        mapped = verify_log(map_bounded(path, "list", 1 << 40), "list", VerifyOptions(workers=2))
        read = verify_log(data, "list", VerifyOptions(workers=1))
        assert (mapped.report.findings, mapped.report.subject) == (read.report.findings, read.report.subject)
        assert mapped.entries == 50_001


def test_map_bounded_maps_regular_files_and_reads_empty_ones(tmp_path):
    import mmap

    from obelisk.core.errors import InputError

    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert map_bounded(empty, "list", 10) == b""  # securityfs files report size 0: they are read
    full = tmp_path / "full"
    full.write_bytes(b"x" * 100)
    mapped = map_bounded(full, "list", 100)
    assert isinstance(mapped, mmap.mmap) and mapped[:] == b"x" * 100
    with pytest.raises(InputError, match="larger than 99 bytes"):
        map_bounded(full, "list", 99)
    with pytest.raises(InputError, match="not a regular file"):
        map_bounded(tmp_path, "list", 100)
