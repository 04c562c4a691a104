"""A spec that asks for Secure Boot is checked before any work: its keys are there, the db key is the
db certificate's, and PK, KEK and db chain to the customer CA; each refusal names the field."""

from __future__ import annotations

import pytest

from obelisk.core.errors import InputError
from obelisk.image import build as buildmod
from obelisk.image.spec import SpecError, parse_spec
from obelisk.signer.keygen import generate

SECURE_BOOT = {"enabled": True, "pk_cert": "keys/pk.pem", "kek_cert": "keys/kek.pem", "db_key": "keys/db.key",
               "db_cert": "keys/db.pem"}


def _spec(tmp_path, **secure_boot):
    return parse_spec({"name": "n1", "signing": {"key": "keys/ima.key", "cert": "keys/ima.pem", "ca": "keys/ca.pem"},
                       "kernel": {"image": "bzImage"}, "ima": {"policy": "none"},
                       "secure_boot": {**SECURE_BOOT, **secure_boot}}, "spec.yaml", tmp_path)


@pytest.fixture
def keys(tmp_path):
    generate(tmp_path / "keys", "rsa-2048")
    (tmp_path / "bzImage").write_bytes(b"MZ")
    return tmp_path / "keys"


def test_secure_boot_without_its_keys_is_refused_naming_the_field(tmp_path, keys):
    spec = {"name": "n1", "kernel": {"image": "bzImage"}, "ima": {"policy": "none"}, "secure_boot": {"enabled": True}}
    with pytest.raises(SpecError, match="secure_boot.enabled: needs secure_boot.pk_cert, kek_cert, db_key and db_cert"):
        parse_spec(spec, "spec.yaml", tmp_path)
    with pytest.raises(SpecError, match="secure_boot.db_cert: .*no such file"):
        _spec(tmp_path, db_cert="keys/missing.pem")


def test_a_db_key_not_from_the_customer_ca_is_refused_before_work(tmp_path, keys):
    other = generate(tmp_path / "other", "rsa-2048").directory
    spec = _spec(tmp_path, db_key=str(other / "db.key"), db_cert=str(other / "db.pem"))
    with pytest.raises(InputError, match=r"secure_boot.*db_cert") as caught:
        buildmod._secure_boot(spec)
    assert "\n" not in str(caught.value)


def test_a_db_key_that_is_not_the_certificates_is_refused(tmp_path, keys):
    spec = _spec(tmp_path, db_key="keys/kek.key")
    with pytest.raises(SpecError, match="secure_boot.db_key"):
        buildmod._secure_boot(spec)


def test_the_customer_keys_give_a_plan_with_pcr7(tmp_path, keys):
    plan = buildmod._secure_boot(_spec(tmp_path))
    assert plan is not None and plan.pcr7.pcr == 7
    assert [e.name for e in plan.pcr7.events][:5] == ["SecureBoot", "PK", "KEK", "db", "dbx"]
    assert plan.enrollment.db in plan.variables  # the db certificate is enrolled in the store
