"""How a node seals /var at its first boot: `/etc/obelisk/var-seal.json` on the signed root.

    {"format": "obelisk.var-seal/1", "signed_pcrs": [11], "policy_key": BASE64 DER | null,
     "bound": {"7": HEX}, "bound_at_first_boot": [11], "unlock": "tpm" | "fleet" | "tpm+fleet",
     "rollback_index": r, "advance_rollback_index": true}  (the last two only with rollback protection)

- `policy_key` and `signed_pcrs`: PolicyAuthorize. The customer key signs PCR 11 for each image
  (the UKI's `.pcrsig`), so every customer-signed image opens /var and nothing else does.
- `bound`: PCR values the build predicted and no signature stands in for: PCR 7, the Secure Boot
  state with the customer's PK, KEK and db. The root can carry them because they do not depend on
  the root (PCR 11 does: the root's dm-verity hash is on the UKI's command line, so a PCR 11
  value written into the root would change the root).
- `bound_at_first_boot`: PCRs sealed to their value at the moment of the first unlock (PCR 11 when
  no policy key was given: the volume then opens only for the image that created it).

- `unlock` (spec disk.unlock; absent means tpm): where the key comes from. `fleet`: the fleet
  service releases it after a verified round, nothing is sealed (no PCRs). `tpm+fleet`: the LUKS2
  key is derived from a TPM-sealed part (sealed as above) and the service's part (disk/unlock.py).

- `rollback_index` (spec upgrade.rollback_index; with policy_key): the volume is sealed with the
  rollback policyRef and the node's rollback floor is defined when /var is created
  (tpm/rollback.py); `advance_rollback_index`: after /var opens, the floor is raised to this index.
  It is read from here, the signed root, never from the unverified .pcrsig.

The build writes it (image/build.py), the node reads it (disk/unlock.py); it is on the dm-verity
root, so it is as trusted as the code that reads it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

from obelisk.core.errors import InputError
from obelisk.core.jsonsafe import load_json

FORMAT = "obelisk.var-seal/1"
UNLOCK_MODES = ("tpm", "fleet", "tpm+fleet")
PATH = "/etc/obelisk/var-seal.json"


@dataclass(frozen=True)
class VarRecipe:
    policy_key: bytes | None  # DER SubjectPublicKeyInfo of the disk policy key (PolicyAuthorize), or None
    signed_pcrs: tuple[int, ...] = ()  # the PCRs the policy key signs (with policy_key)
    bound: Mapping[int, bytes] = field(default_factory=dict)  # PCR -> predicted value, bound by value
    bound_at_first_boot: tuple[int, ...] = ()  # PCRs bound to their value at the first unlock
    unlock: str = "tpm"  # tpm | fleet | tpm+fleet
    rollback_index: int | None = None  # rollback protection (docs/upgrade.md): this image's index
    advance_rollback_index: bool = False  # raise the node's floor to rollback_index once /var is open

    def __post_init__(self) -> None:
        if self.unlock not in UNLOCK_MODES:
            raise ValueError(f"unlock is not one of {', '.join(UNLOCK_MODES)}")
        if bool(self.policy_key) != bool(self.signed_pcrs):
            raise ValueError("policy_key and signed_pcrs come together")
        pcrs = [*self.signed_pcrs, *self.bound, *self.bound_at_first_boot]
        if any(not 0 <= p <= 23 for p in pcrs) or len(set(pcrs)) != len(pcrs):
            raise ValueError("each PCR (0..23) appears once")
        if self.unlock == "fleet" and pcrs:
            raise ValueError("unlock fleet seals nothing in the TPM: no PCRs")
        if self.unlock != "fleet" and not pcrs:
            raise ValueError("nothing to seal to")
        if self.rollback_index is not None and (not self.policy_key or not self.uses_tpm
                                                or not 0 <= self.rollback_index <= 64):
            raise ValueError("rollback_index (0..64) needs policy_key and a TPM unlock")

    @property
    def uses_tpm(self) -> bool:
        return self.unlock in ("tpm", "tpm+fleet")

    @property
    def uses_fleet(self) -> bool:
        return self.unlock in ("fleet", "tpm+fleet")


def serialize(recipe: VarRecipe) -> bytes:
    doc: dict[str, object] = {
        "format": FORMAT, "signed_pcrs": list(recipe.signed_pcrs),
        "policy_key": base64.b64encode(recipe.policy_key).decode() if recipe.policy_key else None,
        "bound": {str(p): v.hex() for p, v in sorted(recipe.bound.items())},
        "bound_at_first_boot": list(recipe.bound_at_first_boot)}
    if recipe.unlock != "tpm":  # absent means tpm: images built before disk.unlock read the same
        doc["unlock"] = recipe.unlock
    if recipe.rollback_index is not None:  # absent: no rollback protection (images built before it read the same)
        doc["rollback_index"] = recipe.rollback_index
        doc["advance_rollback_index"] = recipe.advance_rollback_index
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


def parse(data: bytes, where: str = PATH) -> VarRecipe:
    doc = load_json(data, where)
    try:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise ValueError(f"format is not {FORMAT}")
        key = doc["policy_key"]
        return VarRecipe(policy_key=base64.b64decode(key, validate=True) if key else None,
                         signed_pcrs=tuple(int(p) for p in doc["signed_pcrs"]),
                         bound={int(p): bytes.fromhex(v) for p, v in doc["bound"].items()},
                         bound_at_first_boot=tuple(int(p) for p in doc["bound_at_first_boot"]),
                         unlock=str(doc.get("unlock", "tpm")),
                         rollback_index=_optional_int(doc.get("rollback_index")),
                         advance_rollback_index=doc.get("advance_rollback_index", False) is True)
    except (KeyError, ValueError, TypeError, AttributeError, binascii.Error) as exc:
        raise InputError(f"malformed {FORMAT}: {exc}", source=where) from None


def _optional_int(value: object) -> int | None:
    if value is not None and type(value) is not int:
        raise TypeError("rollback_index: expected an integer")
    return value
