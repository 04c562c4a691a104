"""One HTTPS request to an obelisk service (node agent, fleet): TLS 1.2+, the server chained to the
customer CA, an optional client certificate, and an answer read with a size bound.

With a `ConnectionPool`, connections are kept alive between requests and each new connection resumes the
TLS session of the last one to the same address (a session ticket: the server does not send and sign its
certificate again, the client does not verify it again). A server that does not take the ticket (another
process, restarted, or the ticket expired) makes a full handshake: the certificate is then checked as
on any first connection."""

from __future__ import annotations

import http.client
import ssl
import threading
import time
from collections.abc import Iterable
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


def exchange(url: str, context: ssl.SSLContext, method: str, path: str, *, body: bytes | Iterable[bytes] | None = None,
             headers: dict[str, str] | None = None, timeout: float, default_port: int, limit: int,
             what: str, pool: ConnectionPool | None = None) -> tuple[int, bytes]:
    """(HTTP status, body) of one request to `url` + `path`; TransportError naming the URL on failure.

    With `pool`, the connection is taken from it and given back kept alive (when the server allows)."""
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise InputError(f"{what} URL must be https://HOST:PORT, got {url!r}")
    address = (parts.hostname, parts.port or default_port)
    reused = pool.take(address) if pool is not None else None
    conn = reused or _Connection(address, context, timeout, pool)
    keep = False
    try:
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
        except (ConnectionError, http.client.RemoteDisconnected, ssl.SSLEOFError, ssl.SSLZeroReturnError):
            if reused is None:
                raise
            # the server closed the idle connection before it read this request: send it again on a new one
            conn.close()
            conn = _Connection(address, context, timeout, pool)
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
        if pool is not None and isinstance(conn, _Connection):
            # read now: the answer's headers came after the server's session tickets, and the TLS object
            # is gone once the body has been read to the end of a connection the server closes
            pool.keep_session(address, conn.tls)
        raw = resp.read(limit + 1)
        keep = pool is not None and not resp.will_close and len(raw) <= limit
    except ssl.SSLError as exc:
        raise TransportError(f"{url}: TLS refused: {exc.reason or exc}") from None
    except (OSError, http.client.HTTPException) as exc:
        raise TransportError(f"{url}: {type(exc).__name__}: {exc}") from None
    finally:
        if keep and pool is not None:
            pool.give_back(address, conn)
        else:
            conn.close()
    if len(raw) > limit:
        raise TransportError(f"{url}{path}: answer larger than {limit} bytes")
    return resp.status, raw


class _Connection(http.client.HTTPSConnection):
    """An HTTPS connection that resumes the pool's TLS session for its address, and keeps its TLS socket
    (`tls`) to read the session it ends up with."""

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, timeout: float,
                 pool: ConnectionPool | None):
        super().__init__(*address, context=context, timeout=timeout)
        self._address = address
        self._tls_context = context
        self._pool = pool
        self.tls: ssl.SSLSocket | None = None

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)  # TCP
        session = self._pool.session(self._address, self._tls_context) if self._pool is not None else None
        self.tls = self._tls_context.wrap_socket(self.sock, server_hostname=self.host, session=session)
        self.sock = self.tls


class ConnectionPool:
    """Kept-alive connections for `exchange`, reused while they have been idle for less than `idle`
    seconds (below the server's own idle limit, so that a reused connection is rarely one it is closing),
    and the last TLS session of each address, which the next new connection there resumes (`close` keeps
    them: a node's next round, a minute later, resumes its session). Thread-safe; at most `size` idle
    connections are kept."""

    def __init__(self, idle: float = 1.5, size: int = 16):
        self.idle = idle
        self.size = size
        self._lock = threading.Lock()
        self._conns: list[tuple[tuple[str, int], http.client.HTTPSConnection, float]] = []
        self._sessions: dict[tuple[str, int], tuple[ssl.SSLContext, ssl.SSLSession]] = {}

    def session(self, address: tuple[str, int], context: ssl.SSLContext) -> ssl.SSLSession | None:
        """The session to resume at `address` (one made with `context`: OpenSSL takes no other)."""
        with self._lock:
            kept = self._sessions.get(address)
        return kept[1] if kept is not None and kept[0] is context else None

    def keep_session(self, address: tuple[str, int], tls: ssl.SSLSocket | None) -> None:
        """Keep the session `tls` made by a full handshake (a resumed one is the session already kept, valid
        for the ticket's lifetime; reading `session` copies it, certificates and all, at some cost)."""
        if tls is None or tls.session_reused:
            return
        session = tls.session
        if session is not None and session.has_ticket:
            with self._lock:
                self._sessions[address] = (tls.context, session)

    def take(self, address: tuple[str, int]) -> http.client.HTTPSConnection | None:
        now = time.monotonic()
        with self._lock:
            for i in range(len(self._conns) - 1, -1, -1):
                where, conn, since = self._conns[i]
                if now - since >= self.idle:
                    del self._conns[i]
                    conn.close()
                elif where == address:
                    del self._conns[i]
                    return conn
        return None

    def give_back(self, address: tuple[str, int], conn: http.client.HTTPSConnection) -> None:
        with self._lock:
            if len(self._conns) < self.size:
                self._conns.append((address, conn, time.monotonic()))
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            conns, self._conns = self._conns, []
        for _, conn, _ in conns:
            conn.close()
