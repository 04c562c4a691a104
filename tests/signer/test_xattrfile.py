import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from obelisk.core.errors import InputError, ParseError
from obelisk.signer import xattrfile


def test_round_trip_with_awkward_names_written_raw_as_gensquashfs_reads_them():
    records = [
        xattrfile.XattrRecord(b"usr/bin/kubelet", (("security.ima", b"\x03\x02\x04abcd\x00\x01z"),)),
        xattrfile.XattrRecord(b"with space/back\\slash=eq\xff", (("security.ima", b"x"), ("user.a", b""))),
    ]
    text = xattrfile.serialize(records)
    assert b"# file: with space/back\\slash=eq\xff\n" in text
    assert xattrfile.parse(text) == records


def test_names_with_line_breaks_are_refused():
    with pytest.raises(InputError, match="line break"):
        xattrfile.serialize([xattrfile.XattrRecord(b"new\nline", ())])


def test_reads_getfattr_hex_and_quoted_values():
    dump = b'# file: a\nsecurity.ima=0x0401ff\nuser.note="hi\\040there"\n\n'
    (rec,) = xattrfile.parse(dump)
    assert rec.get("security.ima") == b"\x04\x01\xff"
    assert rec.get("user.note") == b"hi there"


@pytest.mark.parametrize("dump, message", [
    (b"security.ima=0sAA==\n", "before any"),
    (b"# file: a\nsecurity.ima=0s!!!\n", "line 2"),
    (b"# file: a\nnovalue\n", "expected name=value"),
    (b'# file: a\nuser.x="\\9"\n', "bad escape"),
])
def test_malformed_dumps_name_the_line(dump, message):
    with pytest.raises(ParseError, match=message):
        xattrfile.parse(dump, source="sigs.dump")


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=400))
def test_hostile_dumps_only_raise_parse_error(raw):
    try:
        xattrfile.parse(raw)
    except ParseError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=40).filter(
    lambda b: b"\n" not in b and b"\r" not in b and not b.startswith((b" ", b"\t"))),
                          st.binary(max_size=64)), max_size=8))
def test_any_records_round_trip(items):
    records = [xattrfile.XattrRecord(path, (("security.ima", value),)) for path, value in items]
    assert xattrfile.parse(xattrfile.serialize(records)) == records


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=1, max_size=40), st.binary(max_size=600))
def test_the_signers_one_attribute_records_are_serialize_records(path, value):
    record = xattrfile.record_serializer("security.ima")
    if b"\n" in path or b"\r" in path:
        with pytest.raises(InputError, match="line break"):
            record(path, value)
    else:
        assert record(path, value) == xattrfile.serialize_record(path, (("security.ima", value),))
