import hashlib

import pytest

from obelisk.ima_policy.measurement_list import make_entry
from obelisk.ima_policy.replay import BANKS, PER_BANK, SHA1_PADDED, extend_digest, match_prefix, replay, replay_all_pcrs
from tests.ima_policy.logs import sample_entries


def _manual(entries, bank, mode):
    size = hashlib.new(bank).digest_size
    pcr = bytes(size)
    for e in entries:
        if mode == PER_BANK:
            d = b"\xff" * size if e.violation else hashlib.new(bank, e.template_data).digest()
        else:
            d = (b"\xff" * 20 if e.violation else e.template_digest) + bytes(size - 20)
        pcr = hashlib.new(bank, pcr + d).digest()
    return pcr


@pytest.mark.parametrize("mode", [PER_BANK, SHA1_PADDED])
def test_replay_every_bank(mode):
    entries = sample_entries(12)
    entries.append(make_entry("ima-ng", [b"sha256:\0" + bytes(32), b"/tmp/x\0"], violation=True))
    values = replay(entries, BANKS, mode=mode)
    assert set(values) == set(BANKS)
    for bank in BANKS:
        assert values[bank] == _manual(entries, bank, mode)


def test_sha1_bank_same_in_both_modes_without_violations():
    entries = sample_entries(8)
    assert replay(entries, ["sha1"], mode=PER_BANK) == replay(entries, ["sha1"], mode=SHA1_PADDED)


def test_violation_extends_all_ones():
    e = make_entry("ima-ng", [b"sha256:\0" + bytes(32), b"/x\0"], violation=True)
    assert extend_digest(e, "sha256", PER_BANK) == b"\xff" * 32
    assert extend_digest(e, "sha256", SHA1_PADDED) == b"\xff" * 20 + bytes(12)


def test_prefix_match_when_log_runs_ahead():
    entries = sample_entries(10)
    target = replay(entries[:6], ["sha256"])["sha256"]
    m = match_prefix(entries, "sha256", target)
    assert m.entries == 6 and not m.whole_list
    assert match_prefix(entries, "sha256", bytes(32)).entries == 0
    assert match_prefix(entries, "sha256", b"\x01" * 32).entries is None


def test_other_pcrs_kept_apart():
    entries = sample_entries(4)
    other = make_entry("ima-ng", [b"sha256:\0" + bytes(32), b"/x\0"], pcr=11)
    values = replay_all_pcrs(entries + [other], ["sha1"])
    assert values[10]["sha1"] == replay(entries, ["sha1"])["sha1"]
    assert values[11]["sha1"] == replay([other], ["sha1"], pcr=11)["sha1"]
