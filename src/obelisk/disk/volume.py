"""LUKS2 volumes unlocked by the TPM: enroll, unlock, reseal (cryptsetup through core/tools).

The records live beside this module: the LUKS2 token in disk/token.py, the customer-signed PCR policy
in disk/policy.py.

Layout on the volume after `enroll`:

* one keyslot holds a random 256-bit key (base64, as systemd-cryptenroll does) that is sealed in
  the TPM under a PCR policy (or the customer's PolicyAuthorize key); the sealed blob, the PCR
  list and the values it was sealed to live in a LUKS2 token of type `obelisk-tpm2`;
* another keyslot holds a recovery key, printed once and stored nowhere else.

Both keys are random 256-bit secrets, so their keyslots use PBKDF2 with the minimum iterations
(a slow KDF only protects guessable passphrases). Secrets reach cryptsetup through pipes
(/proc/self/fd/N), never argv or files. Nothing touches the volume key: reseal adds the new slot and
token before removing the old ones, so an interruption leaves a volume that still opens.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from obelisk.core import tools
from obelisk.core.errors import InputError, ObeliskError
from obelisk.disk import token as tokenfmt
from obelisk.disk.token import TOKEN_TYPE, Token
from obelisk.tpm import seal as sealmod

_FAST_KDF = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"]


class UnlockError(ObeliskError):
    """The volume could not be unlocked (exit 1: the check ran and failed)."""

    exit_code = 1


# ---- cryptsetup ------------------------------------------------------------------------------

def _fd_path(fd: int) -> str:
    """/proc/self/fd/N rather than /dev/fd/N: a node's devtmpfs has no /dev/fd symlink (udev makes it)."""
    return f"/proc/self/fd/{fd}"


@contextlib.contextmanager
def _pipes(*secrets_: bytes) -> Iterator[list[int]]:
    """Read ends of pipes already holding each secret (small: fits the pipe buffer), for _fd_path."""
    fds: list[int] = []
    try:
        for secret in secrets_:
            r, w = os.pipe()
            os.write(w, secret)
            os.close(w)
            fds.append(r)
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


def _cryptsetup(args: Sequence[str], *, fds: Sequence[int] = (), check: bool = True
                ) -> subprocess.CompletedProcess[bytes]:
    return tools.run("cryptsetup", list(args), pass_fds=fds, check=check)


def metadata(device: str) -> dict:
    proc = _cryptsetup(["luksDump", "--dump-json-metadata", device], check=False)
    if proc.returncode != 0:
        raise InputError("not a LUKS2 volume (or unreadable)", source=device)
    try:
        return json.loads(proc.stdout)
    except ValueError:
        raise InputError("cryptsetup printed unreadable LUKS2 metadata", source=device) from None


def is_luks(device: str) -> bool:
    return _cryptsetup(["isLuks", "--type", "luks2", device], check=False).returncode == 0


def _free_slot(meta: dict) -> int:
    used = {int(k) for k in meta.get("keyslots", {})}
    for slot in range(32):
        if slot not in used:
            return slot
    raise InputError("no free LUKS2 keyslot")


def tokens(device: str, meta: dict | None = None) -> list[Token]:
    meta = meta if meta is not None else metadata(device)
    out = []
    for tid, doc in sorted(meta.get("tokens", {}).items(), key=lambda kv: int(kv[0])):
        if doc.get("type") == TOKEN_TYPE:
            out.append(tokenfmt.from_json(doc, int(tid), f"{device} token {tid}"))
    return out


def _add_key(device: str, existing: bytes, new: bytes, slot: int) -> None:
    with _pipes(existing, new) as (old_fd, new_fd):
        _cryptsetup(["luksAddKey", "--batch-mode", *_FAST_KDF, "--key-file", _fd_path(old_fd),
                     "--key-slot", str(slot), device, _fd_path(new_fd)], fds=(old_fd, new_fd))


def _import_token(device: str, token: Token) -> None:
    data = tokenfmt.serialize(token)
    with _pipes(data) as (fd,):  # not secret; a pipe keeps it off the disk all the same
        _cryptsetup(["token", "import", "--json-file", _fd_path(fd), device], fds=(fd,))


def _replace_token(device: str, old: Token, new: Token) -> None:
    """Import `new` before removing `old`, so the header holds a usable token at every step."""
    _import_token(device, new)
    if old.token_id is not None:
        _cryptsetup(["token", "remove", "--token-id", str(old.token_id), device])


def import_token(device: str, token: Token) -> None:
    """Store `token` (public data: the sealed blob and the keyslot it opens) in the volume's header."""
    _import_token(device, token)


def test_key(device: str, key: bytes, slot: int | None = None) -> bool:
    args = ["open", "--test-passphrase", "--batch-mode"]
    if slot is not None:
        args += ["--key-slot", str(slot)]
    with _pipes(key) as (fd,):
        return _cryptsetup([*args, "--key-file", _fd_path(fd), device], fds=(fd,), check=False).returncode == 0


def _key_slot_of(device: str, key: bytes, meta: dict) -> int | None:
    for slot in sorted(int(k) for k in meta.get("keyslots", {})):
        if test_key(device, key, slot):
            return slot
    return None


def new_tpm_key() -> bytes:
    return base64.b64encode(secrets.token_bytes(32))


def new_recovery_key() -> str:
    """256 random bits as 8 groups of 8 hex digits: easy to read aloud and type."""
    raw = secrets.token_bytes(32).hex()
    return "-".join(raw[i:i + 8] for i in range(0, 64, 8))


def normalize_recovery_key(text: str) -> bytes:
    return text.strip().lower().encode()


@dataclass(frozen=True)
class Enrolled:
    tpm_keyslot: int
    recovery_keyslot: int | None
    recovery_key: str | None
    pcrs: tuple[int, ...]
    values: dict[int, bytes] = field(default_factory=dict)
    formatted: bool = False


def enroll(device: str, pcrs: Sequence[int], tcti: str | None = None, *, existing_key: bytes | None = None,
           format_volume: bool = False, values: dict[int, bytes] | None = None,
           policy_key: bytes | None = None, bound: dict[int, bytes] | None = None,
           recovery: bool = True, derive: Callable[[bytes], bytes] | None = None,
           policy_ref: bytes = b"") -> Enrolled:
    """Give `device` a TPM-sealed keyslot and (by default) a recovery keyslot.

    `derive` (with `format_volume` only): the keyslot's passphrase is derive(sealed secret), not the
    secret itself; disk.unlock tpm+fleet mixes in the fleet's part this way, so the TPM alone cannot open it."""
    if not os.path.exists(device):
        raise InputError("no such file or device", source=device)
    formatted = False
    if not is_luks(device):
        if not format_volume:
            raise InputError("not a LUKS2 volume; pass --format-volume to create one (destroys its contents)",
                             source=device)
        bootstrap = new_tpm_key()
        passphrase = derive(bootstrap) if derive is not None else bootstrap
        _format(device, passphrase)
        existing_key, formatted = passphrase, True
    elif derive is not None:
        raise InputError("a derived keyslot is made only when formatting", source=device)
    elif existing_key is None:
        raise InputError("the volume already has keys: give one of them with --key-file", source=device)
    elif format_volume:
        raise InputError("already a LUKS2 volume: --format refused, it would destroy the data", source=device)
    assert existing_key is not None
    meta = metadata(device)
    if tokens(device, meta):
        raise InputError("already enrolled with the TPM: use `obelisk disk reseal`", source=device)
    if not formatted and _key_slot_of(device, existing_key, meta) is None:
        raise InputError("--key-file does not open any keyslot", source=device)

    if formatted:  # the bootstrap key becomes the TPM key: same secret, no extra slot
        tpm_key, tpm_slot = bootstrap, 0
    else:
        tpm_key, tpm_slot = new_tpm_key(), _free_slot(meta)
    # seal first: if the TPM refuses, the volume is unchanged
    sealed = sealmod.seal(tpm_key, pcrs, tcti, values=values, authorize_key=policy_key, bound=bound,
                          policy_ref=policy_ref)
    if not formatted:
        _add_key(device, existing_key, tpm_key, tpm_slot)
    _import_token(device, Token(keyslot=tpm_slot, sealed=sealed))
    recovery_key = None
    recovery_slot = None
    if recovery:
        recovery_key = new_recovery_key()
        recovery_slot = _free_slot(metadata(device))
        _add_key(device, existing_key, normalize_recovery_key(recovery_key), recovery_slot)
    return Enrolled(tpm_keyslot=tpm_slot, recovery_keyslot=recovery_slot, recovery_key=recovery_key,
                    pcrs=sealed.pcrs, values=sealed.values, formatted=formatted)


def _only_token(device: str) -> Token:
    found = tokens(device)
    if not found:
        raise InputError(f"no {TOKEN_TYPE} token: enroll the volume first", source=device)
    return found[-1]


def unseal_key(device: str, tcti: str | None = None,
               extra_policies: Sequence[sealmod.SignedPolicy] = ()) -> tuple[Token, bytes]:
    token = _only_token(device)
    key = sealmod.unseal(token.sealed, tcti, signed=[*token.signed_policies, *extra_policies])
    return token, key


def unlock(device: str, tcti: str | None = None, *, name: str | None = None, test: bool = False,
           extra_policies: Sequence[sealmod.SignedPolicy] = (),
           derive: Callable[[bytes], bytes] | None = None) -> Token:
    """Unseal the key and open the volume (or, with `test`, prove it opens its keyslot); `derive` as in enroll."""
    token, key = unseal_key(device, tcti, extra_policies)
    open_with_key(device, derive(key) if derive is not None else key, name=name, test=test, keyslot=token.keyslot)
    return token


def _format(device: str, passphrase: bytes) -> None:
    with _pipes(passphrase) as (fd,):
        _cryptsetup(["luksFormat", "--type", "luks2", "--batch-mode", *_FAST_KDF, "--key-slot", "0",
                     "--key-file", _fd_path(fd), device], fds=(fd,))


def create(device: str, passphrase: bytes) -> None:
    """A new LUKS2 volume whose keyslot 0 opens with `passphrase` (disk.unlock fleet: the service's key)."""
    if is_luks(device):
        raise InputError("already a LUKS2 volume: formatting refused, it would destroy the data", source=device)
    _format(device, passphrase)


def open_with_key(device: str, passphrase: bytes, *, name: str | None = None, test: bool = False,
                  keyslot: int | None = None) -> None:
    """Open the volume with `passphrase` as /dev/mapper/`name` (or, with `test`, only prove that it opens)."""
    slot = ["--key-slot", str(keyslot)] if keyslot is not None else []
    if test:
        if not test_key(device, passphrase, keyslot):
            where = f"keyslot {keyslot}" if keyslot is not None else "any keyslot"
            raise UnlockError(f"{device}: the key does not open {where}")
        return
    target = name or "obelisk-" + os.path.basename(device).replace("/", "-")
    with _pipes(passphrase) as (fd,):
        _cryptsetup(["open", "--type", "luks2", *slot, "--key-file", _fd_path(fd), device, target], fds=(fd,))


def reseal(device: str, tcti: str | None = None, *, pcrs: Sequence[int] | None = None,
           recovery_key: bytes | None = None, values: dict[int, bytes] | None = None) -> Token:
    """Seal a fresh key to the current (or given) PCR values; authenticate with the TPM or the recovery key.

    Order keeps the volume openable at every step: add the new keyslot, import the new token,
    then remove the old token and kill the old TPM keyslot.
    """
    old = _only_token(device)
    if old.derived:
        return _reseal_derived(device, old, tcti, pcrs=pcrs, values=values)
    try:
        _, auth = unseal_key(device, tcti)
    except sealmod.PolicyMismatch:
        if recovery_key is None:
            raise
        auth = recovery_key
    if not test_key(device, auth):
        raise UnlockError(f"{device}: the recovery key does not open any keyslot")
    new_pcrs = tuple(pcrs) if pcrs else old.sealed.pcrs
    new_key = new_tpm_key()
    sealed = sealmod.seal(new_key, new_pcrs, tcti, values=values, authorize_key=old.sealed.authorize_key,
                          bound=old.sealed.bound, policy_ref=old.sealed.policy_ref)
    slot = _free_slot(metadata(device))
    _add_key(device, auth, new_key, slot)
    new = Token(keyslot=slot, sealed=sealed, signed_policies=old.signed_policies)
    _replace_token(device, old, new)
    with _pipes(new_key) as (fd,):
        _cryptsetup(["luksKillSlot", "--batch-mode", "--key-file", _fd_path(fd), device, str(old.keyslot)],
                    fds=(fd,))
    return new


def _reseal_derived(device: str, old: Token, tcti: str | None, *, pcrs: Sequence[int] | None,
                    values: dict[int, bytes] | None) -> Token:
    """Reseal the TPM's part of a derived (tpm+fleet) passphrase: the same secret to the new PCR policy.

    The keyslot stays as it is: its passphrase is HKDF(TPM part, the fleet's part), so nothing here can
    add a keyslot (the fleet's part never reaches this host) and nothing needs to. Only the token
    changes; the new one is imported before the old one goes, so the volume opens at every step. The
    TPM part unseals only where the old policy still holds (PCR 11 at leave-initrd): a recovery key
    cannot stand in for it, because it is not the keyslot's passphrase.
    """
    try:
        _, tpm_part = unseal_key(device, tcti)
    except sealmod.PolicyMismatch as exc:
        raise UnlockError(f"{device}: this {old.derived} volume's TPM part no longer unseals ({exc}); it can "
                          "be resealed only where it still does (a recovery key is not its passphrase)") from None
    sealed = sealmod.seal(tpm_part, tuple(pcrs) if pcrs else old.sealed.pcrs, tcti, values=values,
                          authorize_key=old.sealed.authorize_key, bound=old.sealed.bound,
                          policy_ref=old.sealed.policy_ref)
    new = Token(keyslot=old.keyslot, sealed=sealed, signed_policies=old.signed_policies, derived=old.derived)
    _replace_token(device, old, new)
    return new


def add_signed_policy(device: str, policy: sealmod.SignedPolicy) -> Token:
    """Store a customer-signed PCR policy in the token (public data: no key needed)."""
    old = _only_token(device)
    if old.sealed.authorize_key is None:
        raise InputError("this volume is sealed to fixed PCR values, not to a signed policy key", source=device)
    if not sealmod.check_policy_signature(old.sealed.authorize_key, policy):
        raise InputError("the policy's signature does not verify under the key this volume was enrolled with",
                         source=device)
    new = Token(keyslot=old.keyslot, sealed=old.sealed, signed_policies=(*old.signed_policies, policy),
                derived=old.derived)
    _replace_token(device, old, new)
    return new
