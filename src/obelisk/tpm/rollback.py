"""The rollback floor on a TPM: define it (when /var is created), read it, and raise it.

What the index is and why: tpm/rollback_policy.py. Here: the TPM commands. Only `provision` uses
owner authorisation (to define the index); raising the floor needs the customer's approval of PCR 11
at leave-initrd (`rollback_policy.ADVANCE_REF`), and the TPM's SetBits can only add bits, so no code
path here or elsewhere can lower it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError
from obelisk.tpm import device as tpmmod
from obelisk.tpm import rollback_policy as rp
from obelisk.tpm.device import TPMError

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI, ESYS_TR

    from obelisk.tpm.seal import SignedPolicy


def write_policy(policy_key: bytes) -> bytes:
    """The index's authPolicy: PolicyAuthorize(customer disk policy key, ADVANCE_REF) then
    PolicyCommandCode(TPM2_NV_SetBits). It depends only on the customer key: same Name on every node."""
    from obelisk.tpm.seal import policy_authorize_digest

    return rp.policy_command_code_digest(rp.TPM_CC_NV_SET_BITS, policy_authorize_digest(policy_key, rp.ADVANCE_REF))


def expected_name(policy_key: bytes, *, written: bool = True) -> bytes:
    return rp.nv_name(write_policy(policy_key), written=written)


def rollback_check(policy_key: bytes, rollback_index: int) -> rp.RollbackCheck:
    """The PolicyNV step an image of `rollback_index` signs (for the customer's `policy_key`)."""
    return rp.RollbackCheck(rollback_index=rollback_index, nv_name=expected_name(policy_key))


@dataclass(frozen=True)
class FloorState:
    """The floor index as this TPM has it."""

    name: bytes  # the index's current Name (changes once written: TPMA_NV_WRITTEN)
    written: bool
    rollback_index: int | None  # None while never written


def _open_index(esapi: ESAPI) -> ESYS_TR | None:
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    try:
        return esapi.tr_from_tpmpublic(rp.NV_INDEX)
    except TSS2_Exception:
        return None


def _state(esapi: ESAPI, nv: ESYS_TR) -> FloorState:
    from tpm2_pytss import ESYS_TR

    public, name = esapi.nv_read_public(nv)
    written = bool(int(public.nvPublic.attributes) & rp.TPMA_NV_WRITTEN)
    index = None
    if written:
        data = bytes(esapi.nv_read(nv, rp.NV_SIZE, 0, auth_handle=nv, session1=ESYS_TR.PASSWORD))
        try:
            index = rp.rollback_index_of(int.from_bytes(data, "big"))
        except ValueError as exc:
            raise TPMError(f"NV index 0x{rp.NV_INDEX:08x}: {exc}") from None
    return FloorState(name=bytes(name), written=written, rollback_index=index)


def read_floor(tcti: str | None = None) -> FloorState | None:
    """The floor index's state, or None if this TPM has no index at its handle."""
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    with tpmmod.open_tpm(tcti) as esapi:
        nv = _open_index(esapi)
        if nv is None:
            return None
        try:
            return _state(esapi, nv)
        except TSS2_Exception as exc:
            raise TPMError(f"TPM refused to read NV index 0x{rp.NV_INDEX:08x}: {exc}") from None
        finally:
            esapi.tr_close(nv)


def provision(policy_key: bytes, tcti: str | None = None) -> str:
    """Define the floor index for `policy_key` (owner authorisation), unless the right one is there.

    Called only when a blank /var is being created: an index with another Name (another customer's,
    or one an attacker defined) is replaced; the right one is kept as it is, so reinstalling a node
    does not reset its floor (SetBits could not lower it anyway). Returns what it did.
    """
    from tpm2_pytss import ESYS_TR, TPM2B_NV_PUBLIC, TPMS_NV_PUBLIC
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    auth_policy = write_policy(policy_key)
    wanted = {rp.nv_name(auth_policy, written=True), rp.nv_name(auth_policy, written=False)}
    with tpmmod.open_tpm(tcti) as esapi:
        try:
            nv = _open_index(esapi)
            replaced = ""
            if nv is not None:
                _, name = esapi.nv_read_public(nv)
                if bytes(name) in wanted:
                    esapi.tr_close(nv)
                    return f"rollback floor NV index 0x{rp.NV_INDEX:08x} kept"
                esapi.nv_undefine_space(nv, ESYS_TR.OWNER)
                replaced = " (replaced one with another Name)"
            public = TPM2B_NV_PUBLIC(nvPublic=TPMS_NV_PUBLIC(
                nvIndex=rp.NV_INDEX, nameAlg=rp.TPM_ALG_SHA256, attributes=rp.ATTRIBUTES, authPolicy=auth_policy,
                dataSize=rp.NV_SIZE))
            nv = esapi.nv_define_space(None, public, ESYS_TR.OWNER)
            esapi.tr_close(nv)
        except TSS2_Exception as exc:
            raise TPMError(f"TPM refused to define the rollback floor NV index 0x{rp.NV_INDEX:08x}: {exc}") from None
    return f"rollback floor NV index 0x{rp.NV_INDEX:08x} defined{replaced}"


def advance(rollback_index: int, policy_key: bytes, approvals: Sequence[SignedPolicy],
            tcti: str | None = None) -> tuple[int | None, int]:
    """Raise the floor to `rollback_index` (never lower: a lower target is refused, an equal one is a no-op).

    `approvals`: the image's advance approvals (policyRef ADVANCE_REF, PCR 11 at leave-initrd), one of
    which must hold now. Returns (floor before, floor after); before is None if never written.
    """
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_SE, TPML_PCR_SELECTION, TPMT_SYM_DEF
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    from obelisk.tpm.seal import BANK, run_policy_authorize

    rp.floor_value(rollback_index)
    mine = [a for a in approvals if a.policy_ref == rp.ADVANCE_REF and a.rollback is None]
    if not mine:
        raise InputError("the image carries no approval to raise the rollback floor (built without "
                         "upgrade.rollback_index?)")
    with tpmmod.open_tpm(tcti) as esapi:
        nv = _open_index(esapi)
        if nv is None:
            raise TPMError(f"no rollback floor NV index 0x{rp.NV_INDEX:08x} in this TPM")
        try:
            before = _state(esapi, nv)
            if before.name not in (expected_name(policy_key), expected_name(policy_key, written=False)):
                raise TPMError(f"NV index 0x{rp.NV_INDEX:08x} is not the rollback floor of this policy key "
                               "(another Name)")
            if before.rollback_index is not None and rollback_index < before.rollback_index:
                raise TPMError(f"refusing to lower the rollback floor from {before.rollback_index} to "
                               f"{rollback_index}")
            if before.rollback_index == rollback_index:
                return before.rollback_index, rollback_index
            for approval in mine:
                session = esapi.start_auth_session(tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE,
                                                   session_type=TPM2_SE.POLICY,
                                                   symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                                   auth_hash=TPM2_ALG.SHA256)
                try:
                    esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse(
                        f"{BANK}:{','.join(map(str, approval.pcrs))}"))
                    run_policy_authorize(esapi, session, policy_key, approval)
                    esapi.policy_command_code(session, TPM2_CC.NV_SetBits)
                    esapi.nv_set_bits(nv, rp.floor_value(rollback_index), auth_handle=nv, session1=session)
                    return before.rollback_index, rollback_index
                except TSS2_Exception:
                    continue
                finally:
                    esapi.flush_context(session)
            raise TPMError(f"the TPM refused to raise the rollback floor to {rollback_index}: none of the "
                           f"{len(mine)} approvals holds (PCR 11 is not at this image's leave-initrd, or "
                           "another key signed them)")
        finally:
            esapi.tr_close(nv)


def certify_floor(nonce: bytes, tcti: str | None = None, *,
                  ak_handle: int = tpmmod.AK_HANDLE) -> tuple[bytes, bytes] | None:
    """TPM2_NV_Certify of the floor with the AK over `nonce`: (TPMS_ATTEST, TPMT_SIGNATURE), marshalled;
    None when this TPM has no written floor (nothing to certify: the verifier says so)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPMT_SIG_SCHEME
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    if len(nonce) > 64:
        raise InputError(f"nonce is {len(nonce)} bytes; a TPM takes at most 64")
    with tpmmod.open_tpm(tcti) as esapi:
        nv = _open_index(esapi)
        if nv is None:
            return None
        try:
            if not _state(esapi, nv).written:
                return None
            ak = esapi.tr_from_tpmpublic(ak_handle)
            try:
                attest, signature = esapi.nv_certify(ak, nv, nonce, TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL), rp.NV_SIZE,
                                                     0, auth_handle=nv, session1=ESYS_TR.PASSWORD,
                                                     session2=ESYS_TR.PASSWORD)
            finally:
                esapi.tr_close(ak)
        except TSS2_Exception as exc:
            raise TPMError(f"TPM refused to certify the rollback floor: {exc}") from None
        finally:
            esapi.tr_close(nv)
    return bytes(attest), signature.marshal()
