"""Signing with a key held in a PKCS#11 token (an HSM; SoftHSM2 in tests).

The key is named by an RFC 7512 URI, for example
    pkcs11:token=obelisk;object=ima-signing?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/run/pin
The private key never leaves the token: obelisk sends it the digest (wrapped in a DigestInfo
for RSA PKCS#1 v1.5) and receives the signature. The user PIN comes from `pin-source=file:...`
or the OBELISK_PKCS11_PIN environment variable; `pin-value` is refused because a PIN on a
command line ends up in shell history and process listings.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from cryptography.hazmat.primitives import serialization

from obelisk.core.errors import InputError
from obelisk.signer.hashalgo import HashAlgo
from obelisk.signer.keys import PublicKey

DEFAULT_MODULES = ("/usr/lib/softhsm/libsofthsm2.so", "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")

# DER DigestInfo prefixes (RFC 8017 section 9.2, note 1): RSA PKCS#1 v1.5 over a precomputed digest.
_DIGEST_INFO = {
    "sha1": bytes.fromhex("3021300906052b0e03021a05000414"),
    "sha224": bytes.fromhex("302d300d06096086480165030402040500041c"),
    "sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
    "sha384": bytes.fromhex("3041300d060960864801650304020205000430"),
    "sha512": bytes.fromhex("3051300d060960864801650304020305000440"),
}


@dataclass(frozen=True)
class Pkcs11Uri:
    path: dict[str, str]
    query: dict[str, str]

    @classmethod
    def parse(cls, uri: str) -> Pkcs11Uri:
        if not uri.startswith("pkcs11:"):
            raise InputError("not a PKCS#11 URI (must start with 'pkcs11:')", source=uri.split("?")[0])
        body = uri[len("pkcs11:"):]
        path_part, _, query_part = body.partition("?")

        def attrs(text: str, sep: str) -> dict[str, str]:
            out = {}
            for item in filter(None, text.split(sep)):
                name, eq, value = item.partition("=")
                if not eq:
                    raise InputError(f"PKCS#11 URI attribute {name!r} has no value", source="pkcs11 URI")
                out[name] = unquote(value)
            return out

        parsed = cls(attrs(path_part, ";"), attrs(query_part, "&"))
        if "pin-value" in parsed.query:
            raise InputError("PKCS#11 URI: pin-value is refused; use pin-source=file:PATH or OBELISK_PKCS11_PIN",
                             source="pkcs11 URI")
        return parsed

    def module(self) -> str:
        explicit = self.query.get("module-path") or os.environ.get("OBELISK_PKCS11_MODULE")
        if explicit:
            return explicit
        for candidate in DEFAULT_MODULES:
            if os.path.exists(candidate):
                return candidate
        raise InputError("no PKCS#11 module: give module-path= in the URI or set OBELISK_PKCS11_MODULE")

    def pin(self) -> str | None:
        source = self.query.get("pin-source")
        if source:
            path = source[5:] if source.startswith("file:") else source
            try:
                return Path(path).read_text().splitlines()[0]
            except (OSError, IndexError) as exc:
                raise InputError(f"cannot read PIN: {getattr(exc, 'strerror', None) or 'empty file'}",
                                 source=path) from None
        return os.environ.get("OBELISK_PKCS11_PIN")


class Pkcs11Key:
    """A private key object on a token; signs digests through the token."""

    def __init__(self, uri: str):
        import pkcs11
        from pkcs11 import ObjectClass

        parsed = Pkcs11Uri.parse(uri)
        self._pkcs11 = pkcs11
        try:
            lib = pkcs11.lib(parsed.module())
            token = lib.get_token(token_label=parsed.path.get("token"))
            try:
                self._session = token.open(user_pin=parsed.pin())
            except pkcs11.exceptions.UserAlreadyLoggedIn:
                # PKCS#11 login state is per process: an earlier session already authenticated
                self._session = token.open()
        except pkcs11.exceptions.NoSuchToken:
            raise InputError(f"no PKCS#11 token labelled {parsed.path.get('token')!r}", source="pkcs11 URI") from None
        except pkcs11.exceptions.PinIncorrect:
            raise InputError("PKCS#11 PIN incorrect", source="pkcs11 URI") from None
        except (pkcs11.exceptions.PKCS11Error, RuntimeError, OSError) as exc:
            raise InputError(f"cannot open PKCS#11 token: {type(exc).__name__} {exc}", source="pkcs11 URI") from None
        selector: dict[str, Any] = {}
        if "object" in parsed.path:
            selector["label"] = parsed.path["object"]
        if "id" in parsed.path:
            selector["id"] = parsed.path["id"].encode("latin-1")
        try:
            self._private = self._session.get_key(object_class=ObjectClass.PRIVATE_KEY, **selector)
            self._public_obj = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, **selector)
        except pkcs11.exceptions.NoSuchKey:
            raise InputError(f"no key pair {selector} on the token", source="pkcs11 URI") from None
        except pkcs11.exceptions.MultipleObjectsReturned:
            raise InputError(f"several keys match {selector}: add id= to the URI", source="pkcs11 URI") from None

    @cached_property
    def public_key(self) -> PublicKey:
        from pkcs11 import KeyType
        from pkcs11.types import PublicKey as TokenPublicKey
        from pkcs11.util.ec import encode_ec_public_key
        from pkcs11.util.rsa import encode_rsa_public_key

        public = self._public_obj
        if not isinstance(public, TokenPublicKey):
            raise InputError(f"PKCS#11 object {public!r} is not a public key", source="pkcs11 URI")
        if public.key_type == KeyType.RSA:
            return serialization.load_der_public_key(_rsa_spki(encode_rsa_public_key(public)))  # type: ignore[return-value]
        return serialization.load_der_public_key(encode_ec_public_key(public))  # type: ignore[return-value]

    @property
    def is_rsa(self) -> bool:
        from pkcs11 import KeyType

        return self._private.key_type == KeyType.RSA

    def sign_digest(self, digest: bytes, algo: HashAlgo) -> bytes:
        from pkcs11 import Mechanism
        from pkcs11.types import SignMixin
        from pkcs11.util.ec import encode_ecdsa_signature

        private = self._private
        if not isinstance(private, SignMixin):
            raise InputError("PKCS#11 private key does not allow signing (CKA_SIGN is false)", source="pkcs11 URI")
        if self.is_rsa:
            prefix = _DIGEST_INFO.get(algo.name)
            if prefix is None:
                raise InputError(f"PKCS#11 signing does not support {algo.name}")
            return bytes(private.sign(prefix + digest, mechanism=Mechanism.RSA_PKCS))
        raw = bytes(private.sign(digest, mechanism=Mechanism.ECDSA))
        return bytes(encode_ecdsa_signature(raw))


def _rsa_spki(pkcs1_der: bytes) -> bytes:
    """Wrap a PKCS#1 RSAPublicKey in a SubjectPublicKeyInfo."""
    algorithm = bytes.fromhex("300d06092a864886f70d0101010500")
    bitstring = b"\x03" + _der_len(len(pkcs1_der) + 1) + b"\x00" + pkcs1_der
    body = algorithm + bitstring
    return b"\x30" + _der_len(len(body)) + body


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(raw)]) + raw


def open_pkcs11_key(uri: str) -> Pkcs11Key:
    return Pkcs11Key(uri)
