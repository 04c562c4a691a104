import uuid

import pytest

from obelisk.image.derived_ids import derived_bytes, derived_uuid


def test_same_seed_and_purpose_give_the_same_value_and_purposes_never_share_one():
    assert derived_uuid("spec-digest", "gpt disk") == derived_uuid("spec-digest", "gpt disk")
    assert derived_uuid("spec-digest", "gpt disk").version == 5
    values = {derived_uuid(seed, purpose) for seed in ("a", "b") for purpose in ("gpt disk", "gpt partition esp")}
    assert len(values) == 4
    assert derived_bytes("a", "salt", 32) == derived_bytes("a", "salt", 32) != derived_bytes("a", "salt2", 32)
    assert len(derived_bytes("a", "salt", 4)) == 4
    # the seed and purpose are separated, so ("ab", "c") and ("a", "bc") differ
    assert derived_uuid("ab", "c") != derived_uuid("a", "bc")
    assert isinstance(derived_uuid("a", "b"), uuid.UUID)


def test_an_empty_seed_or_a_bad_length_is_refused():
    with pytest.raises(ValueError):
        derived_uuid("", "gpt disk")
    with pytest.raises(ValueError):
        derived_bytes("a", "salt", 65)
