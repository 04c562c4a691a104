"""Secrets sealed in the TPM under a PCR policy (optionally a policy signed by the customer key).

The sealed object is a keyed-hash data object under the storage root key (an ECC P-256 primary in
the owner hierarchy, recreated from its template on every use, so nothing is persisted in the TPM).
Its authPolicy is either

* PolicyPCR(bank, pcrs, values): the TPM releases the secret only while those PCRs hold those
  values; or
* PolicyAuthorize(customer key): the TPM releases it under any PolicyPCR whose digest the customer
  key signed, so an update that changes PCR values is authorised by signing the new values instead
  of re-enrolling every disk;
* PolicyAuthorize(customer key) then PolicyPCR(bound PCRs): the signed policy (PCR 11: the UKI)
  and literal values for PCRs no signature can stand in for (PCR 7: Secure Boot on, with the
  customer's own keys), as `systemd-cryptenroll --tpm2-public-key --tpm2-pcrs=7` seals.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError
from obelisk.tpm import algorithms
from obelisk.tpm import device as tpmmod
from obelisk.tpm.device import TPMError
from obelisk.tpm.pcr import composite_digest
from obelisk.tpm.rollback_policy import RollbackCheck

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_PUBLIC

BANK = "sha256"
TPM_CC_POLICY_PCR = 0x0000017F
TPM_CC_POLICY_AUTHORIZE = 0x0000016A


@dataclass(frozen=True)
class Sealed:
    public: bytes  # TPM2B_PUBLIC of the sealed object
    private: bytes  # TPM2B_PRIVATE (encrypted by the SRK; useless outside this TPM)
    pcrs: tuple[int, ...]
    values: dict[int, bytes]  # what the policy was computed over (for naming PCRs that differ)
    policy: bytes  # the object's authPolicy
    authorize_key: bytes | None = None  # DER SubjectPublicKeyInfo of the customer policy key, if any
    # PCRs bound by value after PolicyAuthorize (authorize_key only): PolicyPCR over these, in the same session
    bound: Mapping[int, bytes] = field(default_factory=dict)
    # PolicyAuthorize's policyRef: rollback_policy.UNSEAL_REF for a volume with rollback protection, so
    # that only approvals which check the rollback floor (PolicyNV) open it
    policy_ref: bytes = b""


class PolicyMismatch(TPMError):
    """The TPM refused to unseal: the PCRs are not the sealed ones."""

    def __init__(self, differing: dict[int, tuple[bytes, bytes]]):
        self.differing = differing
        names = ", ".join(f"PCR {p}" for p in sorted(differing)) or "no PCR differs (policy or TPM changed)"
        super().__init__(f"the TPM refused to unseal: {names} differ{'s' if len(differing) == 1 else ''} "
                         "from the sealed policy")


class RollbackLocked(TPMError):
    """The TPM refused to unseal because the node's rollback floor is above the image's rollback index."""

    def __init__(self, floor: int | None, image_index: int, nv_index: int, detail: str = ""):
        self.floor = floor
        self.image_index = image_index
        self.nv_index = nv_index
        what = (f"the node's rollback floor (TPM NV index 0x{nv_index:08x}) is {floor}, above this image's "
                f"rollback index {image_index}" if floor is not None and not detail else
                f"the rollback floor (TPM NV index 0x{nv_index:08x}) {detail}")
        super().__init__(f"the TPM refused to unseal: {what}")


# ---- policy digests, computed in software (TPM 2.0 Part 3, PolicyPCR / PolicyAuthorize) ----------

def pcr_selection_bytes(pcrs: Sequence[int]) -> bytes:
    bitmap = bytearray(3)
    for p in pcrs:
        bitmap[p // 8] |= 1 << (p % 8)
    return struct.pack(">IHB", 1, algorithms.by_name(BANK).alg_id, 3) + bytes(bitmap)


def policy_pcr_digest(pcrs: Sequence[int], values: dict[int, bytes], previous: bytes = b"\0" * 32) -> bytes:
    """policyDigest' = H(policyDigest || TPM_CC_PolicyPCR || pcrs || H(values in PCR order))."""
    composite = composite_digest((values[p] for p in sorted(pcrs)), BANK)
    return hashlib.sha256(previous + struct.pack(">I", TPM_CC_POLICY_PCR) + pcr_selection_bytes(sorted(pcrs))
                          + composite).digest()


def key_name(public_der: bytes) -> bytes:
    """TPM name of the customer's public key as TPM2_LoadExternal gives it."""
    return bytes(_external_public(public_der).get_name())


def policy_authorize_digest(public_der: bytes, policy_ref: bytes = b"") -> bytes:
    """policyDigest after PolicyAuthorize(keySign): H(H(0 || CC || name) || policyRef)."""
    first = hashlib.sha256(b"\0" * 32 + struct.pack(">I", TPM_CC_POLICY_AUTHORIZE) + key_name(public_der)).digest()
    return hashlib.sha256(first + policy_ref).digest()


def _external_public(public_der: bytes) -> TPM2B_PUBLIC:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from tpm2_pytss import TPM2_ALG, TPM2B_ECC_PARAMETER, TPM2B_PUBLIC, TPMA_OBJECT

    key = serialization.load_der_public_key(public_der)
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pub = TPM2B_PUBLIC.from_pem(pem, nameAlg=TPM2_ALG.SHA256, objectAttributes=TPMA_OBJECT.SIGN_ENCRYPT
                                | TPMA_OBJECT.USERWITHAUTH)
    if isinstance(key, ec.EllipticCurvePublicKey):
        # tpm2-pytss drops leading zero bytes of a coordinate, and the TPM refuses a point whose
        # coordinates are shorter than the curve (TPM_RC_KEY): one P-256 key in 128 could never
        # approve a policy. Padded, they are the bytes the TPM and tpm2-tools use.
        size = (key.curve.key_size + 7) // 8
        unique = pub.publicArea.unique.ecc
        unique.x = TPM2B_ECC_PARAMETER(bytes(unique.x).rjust(size, b"\0"))
        unique.y = TPM2B_ECC_PARAMETER(bytes(unique.y).rjust(size, b"\0"))
    return pub


def check_policy_signature(public_der: bytes, policy: SignedPolicy) -> bool:
    """Software check of a signed policy against the enrolled key (the TPM checks it again at unlock)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

    key = serialization.load_der_public_key(public_der)
    digest = policy_signing_digest(policy.approved, policy.policy_ref)
    try:
        if isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(policy.signature, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        elif isinstance(key, rsa.RSAPublicKey):
            key.verify(policy.signature, digest, padding.PKCS1v15(), utils.Prehashed(hashes.SHA256()))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def policy_signing_digest(approved: bytes, policy_ref: bytes = b"") -> bytes:
    """aHash = SHA-256(approvedPolicy || policyRef): what the customer key signs (signer.keys.sign_tpm_policy)
    and the TPM checks in TPM2_VerifySignature before PolicyAuthorize."""
    return hashlib.sha256(approved + policy_ref).digest()


# ---- TPM side --------------------------------------------------------------------------------

def _srk(esapi: ESAPI) -> ESYS_TR:
    from tpm2_pytss import ESYS_TR, TPM2B_PUBLIC, TPMA_OBJECT, TPMT_PUBLIC

    # noDA (here and on the sealed object): both have empty authValues, so dictionary-attack protection
    # guards nothing, while a TPM counts each power cut after their use as a failed try and would
    # soon lock /var out (seen under QEMU, whose stop is a power cut).
    template = TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(
        "ecc256:aes128cfb", objectAttributes=TPMA_OBJECT.DEFAULT_TPM2_TOOLS_CREATEPRIMARY_ATTRS | TPMA_OBJECT.NODA,
        nameAlg="sha256"))
    handle, _, _, _, _ = esapi.create_primary(None, template, primary_handle=ESYS_TR.OWNER)
    return handle


def sealing_policy(pcrs: Sequence[int], values: Mapping[int, bytes], authorize_key: bytes | None = None,
                   bound: Mapping[int, bytes] | None = None, policy_ref: bytes = b"") -> bytes:
    """The sealed object's authPolicy: PolicyPCR(pcrs), or PolicyAuthorize(key, policy_ref) [then PolicyPCR(bound)]."""
    if not authorize_key:
        if bound or policy_ref:
            raise InputError("PCRs bound after a signed policy, or a policyRef, need a policy key")
        return policy_pcr_digest(pcrs, dict(values))
    policy = policy_authorize_digest(authorize_key, policy_ref)
    if bound:
        policy = policy_pcr_digest(sorted(bound), dict(bound), previous=policy)
    return policy


def seal(secret: bytes, pcrs: Sequence[int], tcti: str | None = None, *, values: dict[int, bytes] | None = None,
         authorize_key: bytes | None = None, bound: Mapping[int, bytes] | None = None,
         policy_ref: bytes = b"") -> Sealed:
    """Seal `secret` to `pcrs` (their current values unless `values` gives predicted ones); with
    `authorize_key`, to whatever policy that key signs (with `policy_ref`), and then (`bound`) to
    those PCR values too."""
    from tpm2_pytss import (
        TPM2B_PUBLIC,
        TPM2B_SENSITIVE_CREATE,
        TPM2B_SENSITIVE_DATA,
        TPMA_OBJECT,
        TPMS_SENSITIVE_CREATE,
        TPMT_PUBLIC,
    )
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    pcrs = tuple(sorted(set(pcrs)))
    if not pcrs:
        raise InputError("at least one PCR is needed to seal to")
    with tpmmod.open_tpm(tcti) as esapi:
        current = tpmmod.read_pcrs(esapi, BANK, pcrs)
        sealed_values = {p: (values or {}).get(p, current[p]) for p in pcrs}
        policy = sealing_policy(pcrs, sealed_values, authorize_key, bound, policy_ref)
        template = TPMT_PUBLIC.parse("keyedhash", nameAlg="sha256",
                                     objectAttributes=TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
                                     | TPMA_OBJECT.NODA,
                                     authPolicy=policy)
        sensitive = TPM2B_SENSITIVE_CREATE(TPMS_SENSITIVE_CREATE(data=TPM2B_SENSITIVE_DATA(secret)))
        try:
            srk = _srk(esapi)
            try:
                priv, pub, _, _, _ = esapi.create(srk, sensitive, TPM2B_PUBLIC(publicArea=template))
            finally:
                esapi.flush_context(srk)
        except TSS2_Exception as exc:
            raise TPMError(f"TPM refused to seal: {exc}") from None
        return Sealed(public=pub.marshal(), private=priv.marshal(), pcrs=pcrs, values=sealed_values, policy=policy,
                      authorize_key=authorize_key, bound=dict(bound or {}), policy_ref=policy_ref)


@dataclass(frozen=True)
class SignedPolicy:
    """A policy digest approved by the customer key: PolicyPCR(pcrs, values) [then PolicyNV(rollback)], signature."""

    pcrs: tuple[int, ...]
    values: dict[int, bytes]  # empty when only the digest is known (systemd's tpm2-pcr-signature.json)
    signature: bytes
    policy_ref: bytes = b""
    approved_digest: bytes = b""  # the signed policy digest, when `values` are not given
    rollback: RollbackCheck | None = None  # the PolicyNV step after PolicyPCR (images with rollback protection)

    @property
    def approved(self) -> bytes:
        if self.approved_digest:
            return self.approved_digest
        digest = policy_pcr_digest(self.pcrs, self.values)
        return self.rollback.extend(digest) if self.rollback else digest


def unseal(sealed: Sealed, tcti: str | None = None, *, signed: Sequence[SignedPolicy] = ()) -> bytes:
    """Unseal under the PCR policy (or any of `signed` for an authorize policy); PolicyMismatch names PCRs."""
    from tpm2_pytss import (
        ESYS_TR,
        TPM2_ALG,
        TPM2_SE,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPML_PCR_SELECTION,
        TPMT_SYM_DEF,
    )
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    try:
        pub, _ = TPM2B_PUBLIC.unmarshal(sealed.public)
        priv, _ = TPM2B_PRIVATE.unmarshal(sealed.private)
    except Exception:
        raise InputError("sealed object is corrupt") from None
    if sealed.authorize_key and signed:
        given = len(signed)
        signed = [p for p in signed if check_policy_signature(sealed.authorize_key, p)]
        if not signed:
            raise TPMError(f"none of the {given} signed PCR policies is signed by the key this secret was sealed to")
    with tpmmod.open_tpm(tcti) as esapi:
        current = tpmmod.read_pcrs(esapi, BANK, sealed.pcrs)
        try:
            srk = _srk(esapi)
            try:
                obj = esapi.load(srk, priv, pub)
            finally:
                esapi.flush_context(srk)
        except TSS2_Exception as exc:
            raise TPMError(f"TPM cannot load the sealed key (another TPM, or owner hierarchy cleared): {exc}") from None
        try:
            candidates: list[SignedPolicy | None] = list(signed) if sealed.authorize_key else [None]
            for candidate in candidates:
                if candidate is not None and candidate.policy_ref != sealed.policy_ref:
                    continue  # approved for something else (an older image, or writing the rollback floor)
                pcrs = candidate.pcrs if candidate else sealed.pcrs
                session = esapi.start_auth_session(tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE,
                                                   session_type=TPM2_SE.POLICY,
                                                   symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                                                   auth_hash=TPM2_ALG.SHA256)
                try:
                    esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse(f"{BANK}:{','.join(map(str, pcrs))}"))
                    if candidate is not None and candidate.rollback is not None:
                        _policy_nv(esapi, session, candidate.rollback)
                    if candidate is not None:
                        if not sealed.authorize_key:  # candidates are signed policies only with a key
                            raise TPMError("a signed PCR policy, but the secret is not sealed to a policy key")
                        run_policy_authorize(esapi, session, sealed.authorize_key, candidate)
                        if sealed.bound:
                            esapi.policy_pcr(session, b"", TPML_PCR_SELECTION.parse(
                                f"{BANK}:{','.join(map(str, sorted(sealed.bound)))}"))
                    return bytes(esapi.unseal(obj, session1=session))
                except TSS2_Exception:
                    continue
                finally:
                    esapi.flush_context(session)
        finally:
            esapi.flush_context(obj)
    if sealed.authorize_key and not signed:
        raise TPMError("the key is sealed to the customer's signed policies and none was given")
    if sealed.policy_ref:
        _raise_if_rolled_back(tcti, [p for p in signed if p.policy_ref == sealed.policy_ref])
    reference = dict(sealed.values)
    # PCRs are named against the newest approval of PolicyPCR alone (one with PolicyNV after it has
    # another digest: the rollback floor was checked above)
    pcr_only = [p for p in signed if p.rollback is None] or list(signed)
    if sealed.authorize_key and signed:
        # name PCRs against the newest signed policy and the PCRs bound by value
        reference = {**pcr_only[-1].values, **sealed.bound}
        current = {**current, **_read(tcti, sorted(reference))}
    if sealed.authorize_key and signed and not pcr_only[-1].values:
        # a signature over a digest only: the signed PCRs are named together when they do not give it
        newest = pcr_only[-1]
        current = {**current, **_read(tcti, newest.pcrs)}
        if policy_pcr_digest(newest.pcrs, current) != newest.approved:
            reference.update({p: b"" for p in newest.pcrs})
    differing = {p: (reference[p], current[p]) for p in reference if current.get(p) != reference[p]}
    raise PolicyMismatch(differing)


def _policy_nv(esapi: ESAPI, session: ESYS_TR, check: RollbackCheck) -> None:
    """PolicyNV(floor index <= the image's value), read with the index's own (empty) authValue."""
    from tpm2_pytss import ESYS_TR, TPM2_EO, TPM2B_OPERAND

    from obelisk.tpm.rollback_policy import operand

    nv = esapi.tr_from_tpmpublic(check.nv_index)
    try:
        esapi.policy_nv(auth_handle=nv, nv_index=nv, policy_session=session,
                        operand_b=TPM2B_OPERAND(operand(check.rollback_index)), operation=TPM2_EO.UNSIGNED_LE,
                        offset=0, session1=ESYS_TR.PASSWORD)
    finally:
        esapi.tr_close(nv)


def _raise_if_rolled_back(tcti: str | None, approvals: Sequence[SignedPolicy]) -> None:
    """After a refused unseal of a volume with rollback protection: RollbackLocked if the floor is why."""
    from obelisk.tpm import rollback

    checks = [p.rollback for p in approvals if p.rollback is not None]
    if not checks:
        raise TPMError("the volume has rollback protection but none of the image's signed policies checks the "
                       "rollback floor (an image built without upgrade.rollback_index cannot open it)")
    newest = max(checks, key=lambda c: c.rollback_index)
    state = rollback.read_floor(tcti)
    if state is None:
        raise RollbackLocked(None, newest.rollback_index, newest.nv_index,
                             "is missing from this TPM (deleted; only a new /var recreates it)")
    if state.rollback_index is None:
        raise RollbackLocked(None, newest.rollback_index, newest.nv_index,
                             "was never written (recreated after /var was made?)")
    if newest.nv_name and state.name != newest.nv_name:
        raise RollbackLocked(state.rollback_index, newest.rollback_index, newest.nv_index,
                             "is not the one the image's policy names (recreated with another Name)")
    if state.rollback_index > newest.rollback_index:
        raise RollbackLocked(state.rollback_index, newest.rollback_index, newest.nv_index)


def _read(tcti: str | None, pcrs: Sequence[int]) -> dict[int, bytes]:
    with tpmmod.open_tpm(tcti) as esapi:
        return tpmmod.read_pcrs(esapi, BANK, pcrs)


def run_policy_authorize(esapi: ESAPI, session: ESYS_TR, key_der: bytes, candidate: SignedPolicy) -> None:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2B_DIGEST, TPMT_SIGNATURE

    pub = _external_public(key_der)
    # Loaded in the owner hierarchy: a key in the NULL hierarchy only earns a NULL ticket, which
    # PolicyAuthorize refuses.
    handle = esapi.load_external(pub, None, ESYS_TR.OWNER)
    try:
        ahash = policy_signing_digest(candidate.approved, candidate.policy_ref)
        sig = TPMT_SIGNATURE()
        if pub.publicArea.type == TPM2_ALG.ECC:
            r, s = decode_dss_signature(candidate.signature)
            sig.sigAlg = TPM2_ALG.ECDSA
            sig.signature.ecdsa.hash = TPM2_ALG.SHA256
            sig.signature.ecdsa.signatureR = r.to_bytes(32, "big")
            sig.signature.ecdsa.signatureS = s.to_bytes(32, "big")
        else:
            sig.sigAlg = TPM2_ALG.RSASSA
            sig.signature.rsassa.hash = TPM2_ALG.SHA256
            sig.signature.rsassa.sig = candidate.signature
        ticket = esapi.verify_signature(handle, TPM2B_DIGEST(ahash), sig)
        name = esapi.tr_get_name(handle)
        # keywords: tpm2-pytss 2.x (Debian 12, what a node runs) and 3.x order these arguments differently
        esapi.policy_authorize(session, approved_policy=TPM2B_DIGEST(candidate.approved), key_sign=name,
                               check_ticket=ticket, policy_ref=candidate.policy_ref)
    finally:
        esapi.flush_context(handle)
