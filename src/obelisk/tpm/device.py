"""Node-side TPM operations through tpm2-pytss: EK, restricted AK, credential activation, quotes,
PCR reads and extends.

The TPM is named by a TCTI string: `--tcti`, else `TPM2TOOLS_TCTI` (as tpm2-tools), else
`device:/dev/tpmrm0`. Keys live at persistent handles (TCG's EK handle 0x81010001, AK 0x81010002 by
default) so that separate commands find them again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from obelisk.core.errors import InputError, ObeliskError

if TYPE_CHECKING:
    from tpm2_pytss import ESAPI, ESYS_TR, TPM2B_PUBLIC

DEFAULT_TCTI = "device:/dev/tpmrm0"
EK_HANDLE = 0x81010001
AK_HANDLE = 0x81010002
QUOTE_PCRS = tuple(range(12))
TPM_RH_ENDORSEMENT = 0x4000000B
TPM_RH_OWNER = 0x40000001


class TPMError(ObeliskError):
    """The TPM refused or failed a command; the message says which and why."""

    exit_code = 1


def resolve_tcti(tcti: str | None) -> str:
    return tcti or os.environ.get("TPM2TOOLS_TCTI") or DEFAULT_TCTI


@contextlib.contextmanager
def open_tpm(tcti: str | None = None) -> Iterator[ESAPI]:
    """An ESAPI context on the chosen TPM; any failure to reach it is one clear line."""
    # libtss2 logs expected misses (an absent persistent handle) on stderr; obelisk reports
    # errors itself. TSS2_LOG set by the user still wins.
    os.environ.setdefault("TSS2_LOG", "all+NONE")
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    name = resolve_tcti(tcti)
    try:
        tctx = TCTILdr.parse(name)
        esapi = ESAPI(tctx)
    except (TSS2_Exception, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot open TPM through TCTI {name!r}: {exc}") from None
    try:
        yield esapi
    finally:
        esapi.close()
        with contextlib.suppress(Exception):
            tctx.close()


def _tss_error(what: str, exc: Exception) -> TPMError:
    return TPMError(f"TPM refused {what}: {exc}")


# ---- keys ---------------------------------------------------------------------------------------

EK_CERT_INDEX = {"rsa": 0x01C00002, "ecc": 0x01C0000A}  # TCG EK Credential Profile, low range


def ek_template(esapi: ESAPI, key_type: str = "rsa") -> TPM2B_PUBLIC:
    """The TCG EK Credential Profile template (low range), taking a template from NV if the vendor put one."""
    from tpm2_pytss.utils import NVReadEK, create_ek_template

    ektype = {"rsa": "EK-RSA2048", "ecc": "EK-ECC256"}[key_type]
    _cert, template = create_ek_template(ektype, NVReadEK(esapi))
    return template


def read_ek_certificate(esapi: ESAPI, key_type: str) -> bytes | None:
    """The manufacturer's EK certificate (DER) from NV, if the TPM has one."""
    from tpm2_pytss.TSS2_Exception import TSS2_Exception
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK

    try:
        data = NVReadEK(esapi)(EK_CERT_INDEX[key_type])
    except (NoSuchIndex, TSS2_Exception):
        return None
    # NV areas are often larger than the certificate: keep the DER SEQUENCE only
    if len(data) >= 4 and data[0] == 0x30 and data[1] == 0x82:
        data = data[:4 + int.from_bytes(data[2:4], "big")]
    return bytes(data)


def ak_template(key_type: str = "ecc", policy: bytes = b"") -> TPM2B_PUBLIC:
    """A restricted signing key that never leaves this TPM (fixedTPM|fixedParent|sensitiveDataOrigin).

    noDA: the AK has an empty authValue, so dictionary-attack protection guards nothing; with it, a
    TPM counts every power cut after the AK was used (no orderly TPM2_Shutdown) as a failed try and
    after a few of them refuses to quote until the lockout recovery time has passed.
    """
    from tpm2_pytss import TPM2B_PUBLIC, TPMA_OBJECT, TPMT_PUBLIC

    attrs = (TPMA_OBJECT.RESTRICTED | TPMA_OBJECT.SIGN_ENCRYPT | TPMA_OBJECT.FIXEDTPM | TPMA_OBJECT.FIXEDPARENT
             | TPMA_OBJECT.SENSITIVEDATAORIGIN | TPMA_OBJECT.USERWITHAUTH | TPMA_OBJECT.NODA)
    alg = {"ecc": "ecc256:ecdsa-sha256:null", "rsa": "rsa2048:rsassa-sha256:null"}[key_type]
    return TPM2B_PUBLIC(publicArea=TPMT_PUBLIC.parse(alg, objectAttributes=attrs, nameAlg="sha256"))


def _persistent(esapi: ESAPI, handle: int) -> ESYS_TR | None:
    """ESYS_TR of a persistent handle, or None if nothing is there."""
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    try:
        return esapi.tr_from_tpmpublic(handle)
    except TSS2_Exception:
        return None


def _ek_session(esapi: ESAPI) -> ESYS_TR:
    """A policy session satisfying the EK's PolicySecret(TPM_RH_ENDORSEMENT)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPM2_SE, TPM2B_DIGEST, TPM2B_NONCE, TPMT_SYM_DEF

    session = esapi.start_auth_session(tpm_key=ESYS_TR.NONE, bind=ESYS_TR.NONE, session_type=TPM2_SE.POLICY,
                                       symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL), auth_hash=TPM2_ALG.SHA256)
    # Every argument given: Debian 12's tpm2-pytss (2.1, what nodes run) has no defaults for them
    # (no nonce, cpHash or policyRef; expiration 0: none).
    esapi.policy_secret(ESYS_TR.ENDORSEMENT, session, TPM2B_NONCE(), TPM2B_DIGEST(), TPM2B_NONCE(), 0)
    return session


@dataclass(frozen=True)
class AKInfo:
    """What the verifier needs about an AK, recorded at enrolment (see `akrecord`)."""

    public: bytes  # TPM2B_PUBLIC, marshalled (tpm2-tools "tss" format)
    name: bytes  # TPM2B_NAME contents: nameAlg || H(TPMT_PUBLIC)
    qualified_name: bytes
    ek_public: bytes  # TPM2B_PUBLIC of the EK
    ek_name: bytes
    handle: int
    ek_certificate: bytes | None = None  # DER, from the TPM's NV (the manufacturer's), if present


def create_keys(tcti: str | None = None, *, ek_handle: int = EK_HANDLE, ak_handle: int = AK_HANDLE,
                ak_type: str = "ecc", ek_type: str = "rsa", replace: bool = False) -> AKInfo:
    """Create (or reuse) the EK and a restricted AK under it, both persistent; return the AK's facts."""
    from tpm2_pytss import ESYS_TR
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    with open_tpm(tcti) as esapi:
        try:
            ek = _persistent(esapi, ek_handle)
            if ek is None:
                transient, _, _, _, _ = esapi.create_primary(None, ek_template(esapi, ek_type),
                                                             primary_handle=ESYS_TR.ENDORSEMENT)
                ek = esapi.evict_control(ESYS_TR.OWNER, transient, ek_handle)
                esapi.flush_context(transient)
            existing = _persistent(esapi, ak_handle)
            if existing is not None:
                if not replace:
                    return _ak_info(esapi, ek, existing, ak_handle)
                esapi.evict_control(ESYS_TR.OWNER, existing, ak_handle)
            session = _ek_session(esapi)
            try:
                priv, pub, _, _, _ = esapi.create(ek, None, ak_template(ak_type), session1=session)
            finally:
                esapi.flush_context(session)
            session = _ek_session(esapi)
            try:
                transient = esapi.load(ek, priv, pub, session1=session)
            finally:
                esapi.flush_context(session)
            ak = esapi.evict_control(ESYS_TR.OWNER, transient, ak_handle)
            esapi.flush_context(transient)
            return _ak_info(esapi, ek, ak, ak_handle)
        except TSS2_Exception as exc:
            raise _tss_error("key creation", exc) from None


def _ak_info(esapi: ESAPI, ek: ESYS_TR, ak: ESYS_TR, ak_handle: int, with_certificate: bool = True) -> AKInfo:
    from tpm2_pytss import TPM2_ALG

    ak_pub, ak_name, ak_qn = esapi.read_public(ak)
    ek_pub, ek_name, _ = esapi.read_public(ek)
    key_type = "ecc" if ek_pub.publicArea.type == TPM2_ALG.ECC else "rsa"
    return AKInfo(public=ak_pub.marshal(), name=bytes(ak_name), qualified_name=bytes(ak_qn),
                  ek_public=ek_pub.marshal(), ek_name=bytes(ek_name), handle=ak_handle,
                  ek_certificate=read_ek_certificate(esapi, key_type) if with_certificate else None)


def read_ak(tcti: str | None = None, *, ek_handle: int = EK_HANDLE, ak_handle: int = AK_HANDLE,
            with_certificate: bool = True) -> AKInfo:
    with open_tpm(tcti) as esapi:
        ek = _persistent(esapi, ek_handle)
        ak = _persistent(esapi, ak_handle)
        if ek is None or ak is None:
            missing = f"0x{ek_handle:08x}" if ek is None else f"0x{ak_handle:08x}"
            raise InputError(f"no key at persistent handle {missing}: run `obelisk attest ak create` first")
        return _ak_info(esapi, ek, ak, ak_handle, with_certificate)


def activate_credential(credential_blob: bytes, encrypted_secret: bytes, tcti: str | None = None, *,
                        ek_handle: int = EK_HANDLE, ak_handle: int = AK_HANDLE) -> bytes:
    """TPM2_ActivateCredential: recover the verifier's secret, proving the AK sits in the EK's TPM."""
    from tpm2_pytss import ESYS_TR, TPM2B_ENCRYPTED_SECRET, TPM2B_ID_OBJECT
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    try:
        blob, rest = TPM2B_ID_OBJECT.unmarshal(credential_blob)
        secret, rest2 = TPM2B_ENCRYPTED_SECRET.unmarshal(encrypted_secret)
    except Exception:
        raise InputError("credential challenge is not a TPM2B_ID_OBJECT and TPM2B_ENCRYPTED_SECRET") from None
    if rest != len(credential_blob) or rest2 != len(encrypted_secret):
        raise InputError("credential challenge has trailing bytes")
    with open_tpm(tcti) as esapi:
        ek = _persistent(esapi, ek_handle)
        ak = _persistent(esapi, ak_handle)
        if ek is None or ak is None:
            raise InputError("no EK/AK in this TPM: run `obelisk attest ak create` first")
        session = _ek_session(esapi)
        try:
            out = esapi.activate_credential(ak, ek, blob, secret, session1=ESYS_TR.PASSWORD, session2=session)
        except TSS2_Exception as exc:
            raise _tss_error("credential activation (AK and EK not in the same TPM, or wrong challenge)",
                             exc) from None
        finally:
            esapi.flush_context(session)
        return bytes(out)


def make_credential(ek_public: bytes, ak_name: bytes, secret: bytes) -> tuple[bytes, bytes]:
    """Verifier side (software, no TPM): encrypt `secret` to the EK, bound to the AK's name."""
    from tpm2_pytss import TPM2B_NAME, TPM2B_PUBLIC
    from tpm2_pytss.utils import make_credential as _make

    pub, used = TPM2B_PUBLIC.unmarshal(ek_public)
    if used != len(ek_public):
        raise InputError("EK public has trailing bytes")
    blob, enc = _make(pub, secret, TPM2B_NAME(ak_name))
    return blob.marshal(), enc.marshal()


# ---- PCRs and quotes ----------------------------------------------------------------------------

def _selection(bank: str, pcrs: Sequence[int]) -> str:
    return f"{bank}:{','.join(str(p) for p in pcrs)}"


def read_pcrs(esapi: ESAPI, bank: str, pcrs: Sequence[int]) -> dict[int, bytes]:
    """PCR values, read in as many TPM2_PCR_Read calls as the TPM needs (it returns at most 8 at once)."""
    from tpm2_pytss import TPML_PCR_SELECTION

    values: dict[int, bytes] = {}
    wanted = list(pcrs)
    while wanted:
        _, selected, digests = esapi.pcr_read(TPML_PCR_SELECTION.parse(_selection(bank, wanted)))
        got = []
        for sel in selected.pcrSelections[:selected.count]:
            bitmap = bytes(sel.pcrSelect)[:sel.sizeofSelect]
            got += [i for i in range(len(bitmap) * 8) if bitmap[i // 8] & (1 << (i % 8))]
        if not got:
            raise TPMError(f"TPM returned no {bank} PCR values for {wanted}")
        for index, digest in zip(got, list(digests)[:len(got)]):
            values[index] = bytes(digest)
        wanted = [p for p in wanted if p not in values]
    return values


def pcr_values(tcti: str | None, bank: str, pcrs: Sequence[int]) -> dict[int, bytes]:
    with open_tpm(tcti) as esapi:
        return read_pcrs(esapi, bank, pcrs)


def extend_pcr(tcti: str | None, pcr: int, data: bytes) -> None:
    """TPM2_PCR_Event: the TPM hashes `data` and extends it into `pcr` in every bank."""
    from tpm2_pytss import ESYS_TR
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    if not 0 <= pcr <= 23:
        raise InputError(f"PCR {pcr}: must be 0..23")
    with open_tpm(tcti) as esapi:
        try:
            esapi.pcr_event(ESYS_TR.PCR0 + pcr, data)
        except TSS2_Exception as exc:
            raise _tss_error(f"extending PCR {pcr}", exc) from None


def extend_digest(tcti: str | None, pcr: int, sha256_digest: bytes) -> None:
    """TPM2_PCR_Extend of the sha256 bank only, with a digest already made (a boot phase, as the
    initramfs's tpm_extend sends it: image/measure.extend_command)."""
    from tpm2_pytss import ESYS_TR, TPM2_ALG, TPML_DIGEST_VALUES, TPMT_HA
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    if not 0 <= pcr <= 23 or len(sha256_digest) != 32:
        raise InputError(f"PCR {pcr} and a 32-byte sha256 digest expected")
    value = TPMT_HA(hashAlg=TPM2_ALG.SHA256)
    value.digest.sha256 = sha256_digest
    with open_tpm(tcti) as esapi:
        try:
            esapi.pcr_extend(ESYS_TR.PCR0 + pcr, TPML_DIGEST_VALUES([value]))
        except TSS2_Exception as exc:
            raise _tss_error(f"extending PCR {pcr}", exc) from None


@dataclass(frozen=True)
class RawQuote:
    """TPM2_Quote output as bytes: TPMS_ATTEST, TPMT_SIGNATURE, and the quoted PCR values."""

    attest: bytes
    signature: bytes
    bank: str
    pcrs: dict[int, bytes]


def quote(nonce: bytes, tcti: str | None = None, *, ak_handle: int = AK_HANDLE, bank: str = "sha256",
          pcrs: Sequence[int] = QUOTE_PCRS, attempts: int = 3) -> RawQuote:
    """Quote `pcrs` over `nonce` with the AK, and read the values it covers.

    PCRs are read before and after the quote; if an extend slipped in between, quote again, so the
    values handed out are exactly the ones the signature covers.
    """
    from tpm2_pytss import TPML_PCR_SELECTION
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    if len(nonce) > 64:
        raise InputError(f"nonce is {len(nonce)} bytes; a TPM takes at most 64")
    with open_tpm(tcti) as esapi:
        ak = _persistent(esapi, ak_handle)
        if ak is None:
            raise InputError(f"no AK at persistent handle 0x{ak_handle:08x}: run `obelisk attest ak create` first")
        for _ in range(attempts):
            before = read_pcrs(esapi, bank, pcrs)
            try:
                attest, signature = esapi.quote(ak, TPML_PCR_SELECTION.parse(_selection(bank, pcrs)), nonce)
            except TSS2_Exception as exc:
                raise _tss_error("the quote", exc) from None
            after = read_pcrs(esapi, bank, pcrs)
            if before == after:
                return RawQuote(attest=bytes(attest), signature=signature.marshal(), bank=bank, pcrs=after)
        raise TPMError(f"PCRs kept changing during {attempts} quotes; try again")
