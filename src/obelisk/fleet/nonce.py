"""Round nonces the service can check without having stored them.

A round nonce is 32 bytes: 12 random bytes, the issue time (4 bytes, big-endian Unix seconds) and the
first 16 bytes of HMAC-SHA256 under the database's nonce key (`service_secrets`, shared by every
`fleet serve` process on the database) over the node id, the random bytes and the time. Issuing one
writes nothing: any process sharing the database recognises it, knows whom it was issued to and
when, and no one without the key can make one. Single use is the attestation row's unique `nonce`
column: the round that records its result is the one that used it.

The tag is 128 bits (a forgery is a 2^-128 guess per try); the random part makes two nonces of the
same node in the same second differ.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import hmac
import secrets
import struct

SIZE = 32
RANDOM = 12
TAG = 16
KEY_SIZE = 32
LABEL = b"obelisk fleet round nonce/1\0"


def issue(key: bytes, node_id: str, now: _dt.datetime) -> bytes:
    """A fresh nonce for `node_id`, issued at `now`."""
    body = secrets.token_bytes(RANDOM) + struct.pack(">I", int(now.timestamp()))
    return body + _tag(key, node_id, body)


def issued_at(key: bytes, node_id: str, nonce: bytes) -> _dt.datetime | None:
    """When this service issued `nonce` to `node_id`; None when it did not (another node's, forged, or
    not one of these nonces at all)."""
    if len(nonce) != SIZE:
        return None
    body, tag = nonce[:RANDOM + 4], nonce[RANDOM + 4:]
    if not hmac.compare_digest(tag, _tag(key, node_id, body)):
        return None
    (seconds,) = struct.unpack(">I", body[RANDOM:])
    return _dt.datetime.fromtimestamp(seconds, _dt.UTC)


def _tag(key: bytes, node_id: str, body: bytes) -> bytes:
    node = node_id.encode()
    message = LABEL + struct.pack(">H", len(node)) + node + body
    return hmac.new(key, message, hashlib.sha256).digest()[:TAG]
