"""One HTTPS request to an obelisk service (node agent, fleet): TLS 1.2+, the server chained to the
customer CA, an optional client certificate, and an answer read with a size bound."""

from __future__ import annotations

import http.client
import ssl
from urllib.parse import urlsplit

from obelisk.core.errors import InputError


class TransportError(Exception):
    """The service could not be reached, refused the TLS handshake, or answered too much."""


def client_context(ca: str, cert: str | None = None, key: str | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_verify_locations(cafile=ca)
        if cert:
            ctx.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"TLS client setup: {exc}") from None
    return ctx


def exchange(url: str, context: ssl.SSLContext, method: str, path: str, *, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float, default_port: int, limit: int,
             what: str) -> tuple[int, bytes]:
    """(HTTP status, body) of one request to `url` + `path`; TransportError naming the URL on failure."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(f"{what} URL must be https://HOST:PORT, got {url!r}")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or default_port, context=context,
                                       timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read(limit + 1)
    except ssl.SSLError as exc:
        raise TransportError(f"{url}: TLS refused: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TransportError(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        conn.close()
    if len(raw) > limit:
        raise TransportError(f"{url}{path}: answer larger than {limit} bytes")
    return resp.status, raw
