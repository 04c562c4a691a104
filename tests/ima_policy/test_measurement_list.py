import dataclasses
import hashlib

import pytest

from obelisk.core.errors import ParseError
from obelisk.ima_policy import templates
from obelisk.ima_policy.measurement_list import (
    ASCII,
    BINARY,
    Entry,
    make_entry,
    parse_ascii,
    parse_binary,
    parse_measurement_list,
    serialize_ascii,
    serialize_binary,
)
from tests.ima_policy.logs import file_entry, sample_entries

REAL_LISTS = ("sample-ascii_runtime_measurements-pcrs-8-9", "test_ascii_runtime_measurements")


@pytest.mark.parametrize("name", REAL_LISTS)
def test_real_lists_template_hashes_match(shared_dir, name):
    data = (shared_dir / "testdata/ima" / name).read_bytes()
    ml = parse_measurement_list(data, name)
    assert ml.encoding == ASCII
    assert len(ml) == data.count(b"\n")
    for e in ml:
        assert hashlib.sha1(e.template_data).digest() == e.template_digest, e.number
    assert ml.entries[0].measurement().path == "boot_aggregate"
    # ascii -> binary -> ascii reproduces the kernel's file byte for byte
    binary = serialize_binary(ml.entries)
    again = parse_measurement_list(binary, name)
    assert again.encoding == BINARY
    assert serialize_ascii(again.entries) == data


def test_real_list_paths_and_digests(shared_dir):
    ml = parse_ascii((shared_dir / "testdata/ima/test_ascii_runtime_measurements").read_bytes())
    m = ml.entries[2].measurement()
    assert (m.path, m.digest_algo) == ("/bin/sh", "sha256")
    assert m.digest.hex() == "4b1764ee112aa8b2a6ae9a3a2f1e272b6601681f610708497673cd49e5bd2f5c"


@pytest.mark.parametrize("template", sorted(templates.BUILTIN))
@pytest.mark.parametrize("order", ["little", "big"])
def test_every_template_round_trips(template, order):
    entries = [file_entry(f"/bin/f{i}", b"x%d" % i, template, sig=b"\x03\x02\x04abcd\x00\x02zz" if i % 2 else b"",
                          number=i + 1, byte_order=order) for i in range(5)]
    binary = serialize_binary(entries, order)
    ml = parse_binary(binary)
    assert ml.byte_order == order
    assert [dataclasses.replace(e, offset=0) for e in ml] == entries
    for e in ml:
        assert hashlib.sha1(e.template_data).digest() == e.template_digest
        assert e.measurement().path.startswith("/bin/f")
    if order == "little":  # ascii shows numbers decoded; the kernels that print it are little endian here
        text = serialize_ascii(entries)
        assert [dataclasses.replace(e, offset=0) for e in parse_ascii(text)] == entries


def test_signature_field_decoded():
    e = file_entry("/bin/x", b"x", "ima-sig", sig=b"\x03\x02\x04\x01\x02\x03\x04\x00\x01\xaa")
    assert e.measurement().signature == b"\x03\x02\x04\x01\x02\x03\x04\x00\x01\xaa"
    assert e.measurement().digest == hashlib.sha256(b"x").digest()


def test_legacy_ima_template_hash_pads_name():
    e = file_entry("/bin/x", b"x", "ima")
    assert len(e.template_data) == 20 + 256
    assert e.template_digest == hashlib.sha1(hashlib.sha1(b"x").digest() + b"/bin/x".ljust(256, b"\0")).digest()
    binary = serialize_binary([e])
    # binary layout: pcr, digest, len 3 "ima", file digest (no length), u32 name length, name without NUL
    assert binary[31:51] == hashlib.sha1(b"x").digest()
    assert binary[51:55] == (6).to_bytes(4, "little") and binary[55:] == b"/bin/x"


def test_names_with_spaces_in_ascii():
    entries = sample_entries(10)
    ml = parse_ascii(serialize_ascii(entries))
    assert ml.entries[7].measurement().path == "/usr/bin/tool 7"
    assert all(hashlib.sha1(e.template_data).digest() == e.template_digest for e in ml)


def test_custom_template_format_as_name():
    e = make_entry("d-ng|n-ng|iuid", [b"sha256:\0" + bytes(32), b"/x\0", (1000).to_bytes(4, "little")])
    ml = parse_ascii(serialize_ascii([e]))
    assert ml.entries[0].fields()[2] == (1000).to_bytes(4, "little")
    assert hashlib.sha1(ml.entries[0].template_data).digest() == e.template_digest


def test_violation_entry():
    e = make_entry("ima-ng", [b"sha256:\0" + bytes(32), b"/var/log/x\0"], violation=True)
    assert e.violation
    assert parse_binary(serialize_binary([e])).entries[0].violation


def test_empty_list():
    assert len(parse_measurement_list(b"")) == 0


# --- hostile input: one line naming the entry and offset ---

def _binary(n=5):
    return serialize_binary(sample_entries(n))


def test_truncated_binary_names_entry():
    data = _binary(5)
    with pytest.raises(ParseError) as exc:
        parse_binary(data[:-3], "log.bin")
    msg = str(exc.value)
    assert "entry 5" in msg and "offset" in msg and "log.bin" in msg and "\n" not in msg


def test_absurd_data_length():
    data = bytearray(_binary(2))
    first_len = int.from_bytes(data[24:28], "little")
    pos = 28 + first_len
    data[pos:pos + 4] = (0xFFFFFFF0).to_bytes(4, "little")
    with pytest.raises(ParseError, match=r"entry 1: template data length 4294967280 exceeds"):
        parse_binary(bytes(data))


def test_unknown_template_named():
    e = Entry(1, 10, bytes(20), "ima-ng", b"")
    data = bytearray(serialize_binary([e]))
    data[28:34] = b"ima-xx"
    with pytest.raises(ParseError, match="entry 1: unknown template 'ima-xx'"):
        parse_binary(bytes(data))


def test_field_lengths_inside_template_data_checked():
    good = sample_entries(2)[1]
    bad = dataclasses.replace(good, template_data=good.template_data + b"junk")
    with pytest.raises(ParseError, match="entry 1: 4 bytes after the last field"):
        parse_binary(serialize_binary([dataclasses.replace(bad, number=1)]))


@pytest.mark.parametrize("line, message", [
    (b"10 zz ima-ng sha256:00 /x", "template-hash: invalid hex"),
    (b"10 " + b"0" * 40 + b" ima-ng sha256:0g /x", "field d-ng: invalid hex"),
    (b"99 " + b"0" * 40 + b" ima-ng sha256:00 /x", "PCR"),
    (b"10 " + b"0" * 40 + b" ima-ng sha256:00", "has 2 fields, line has 1"),
    (b"10 " + b"0" * 40 + b" nope sha256:00 /x", "unknown template 'nope'"),
])
def test_bad_ascii_lines(line, message):
    text = serialize_ascii(sample_entries(2)) + line + b"\n"
    with pytest.raises(ParseError) as exc:
        parse_ascii(text, "ascii.log")
    assert message in str(exc.value)
    assert "entry 3 (line 3)" in str(exc.value)
