"""The node agent: the node's only interface, an HTTPS API with mutual TLS that hands out evidence.

Read-only by design: GET requests only, no shell, no file access by path, nothing that
changes the node. Every client must present a certificate that chains to the customer CA
(TLS 1.2+, verified by OpenSSL through Python's ssl; anything else fails the handshake), with
the clientAuth EKU and the role the endpoint needs (`attest/roles.py`; all of these: reader).
Idle, slow and numerous connections are bounded by `Limits` (docs/attest.md).

    GET /v1/health                 {"status": "ok", "image": ...}
    GET /v1/evidence?nonce=HEX     an evidence bundle (obelisk.evidence/1): TPM quote over the
                                   caller's nonce, event log, IMA list, kernel facts.
                                   A nonce is served once: a replay gets 409.
    GET /v1/kernel                 kernel facts
    GET /v1/scan                   CIS/STIG scan of the node's own filesystem (obelisk.report/1)
    GET /v1/workloads              the container runtime's facts and each workload the image declares:
                                   state, exit status, OOM kills, the tail of its output (image/workloads.py)

Run on the node as `python3 -m obelisk.cli.node_agent --config /run/obelisk/config/agent.json`.
"""

from __future__ import annotations

import collections
import json
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

from obelisk.attest import roles
from obelisk.core.errors import InputError

MIN_NONCE = 16  # bytes: shorter nonces are guessable and could be pre-computed
MAX_NONCE = 64  # the TPM's qualifyingData holds at most one sha512 digest


@dataclass(frozen=True)
class AgentConfig:
    cert: str  # the agent's TLS certificate (issued by the customer CA)
    key: str  # its private key (0600, on the config disk, never in the image)
    client_ca: str  # the customer CA: client certificates must chain to it
    host: str = "0.0.0.0"
    port: int = 8443
    tcti: str | None = None  # TPM; None: the default (device:/dev/tpmrm0 or $TPM2TOOLS_TCTI)
    ak_handle: int | None = None
    event_log: str | None = "/sys/kernel/security/tpm0/binary_bios_measurements"
    ima_log: str | None = None  # None: the kernel's list under securityfs
    scan_root: str | None = "/"
    image: str = ""

    @classmethod
    def load(cls, path: str | Path) -> AgentConfig:
        try:
            data = json.loads(Path(path).read_text())
        except OSError as exc:
            raise InputError(f"cannot read agent config: {exc.strerror}", source=str(path)) from None
        except ValueError as exc:
            raise InputError(f"agent config is not JSON: {exc}", source=str(path)) from None
        if not isinstance(data, dict):
            raise InputError("agent config: expected an object", source=str(path))
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise InputError(f"{unknown[0]}: unknown key (known: {', '.join(sorted(known))})", source=str(path))
        for required in ("cert", "key", "client_ca"):
            if not isinstance(data.get(required), str):
                raise InputError(f"{required}: missing", source=str(path))
        base = Path(path).parent
        for k in ("cert", "key", "client_ca"):
            data[k] = str(base / data[k])
        return cls(**data)


class NonceLedger:
    """Nonces already served, so that a recorded request cannot be replayed against the agent.

    Bounded: the oldest entries are forgotten first; a verifier must still check that the
    quote carries the nonce it just generated (that is what makes replay pointless).
    """

    def __init__(self, capacity: int = 100_000):
        self._seen: set[bytes] = set()
        self._order: collections.deque[bytes] = collections.deque()
        self._capacity = capacity
        self._lock = threading.Lock()

    def claim(self, nonce: bytes) -> bool:
        with self._lock:
            if nonce in self._seen:
                return False
            self._seen.add(nonce)
            self._order.append(nonce)
            while len(self._order) > self._capacity:
                self._seen.discard(self._order.popleft())
            return True


def parse_nonce(text: str | None) -> bytes:
    if not text:
        raise ValueError("nonce missing: GET /v1/evidence?nonce=HEX")
    if len(text) > 2 * MAX_NONCE:
        raise ValueError(f"nonce longer than {MAX_NONCE} bytes")
    try:
        nonce = bytes.fromhex(text)
    except ValueError:
        raise ValueError("nonce is not hex") from None
    if len(nonce) < MIN_NONCE:
        raise ValueError(f"nonce shorter than {MIN_NONCE} bytes")
    return nonce


def default_evidence(config: AgentConfig) -> Callable[[bytes], str]:
    """Evidence from the TPM and the kernel, through the attest component."""

    def collect(nonce: bytes) -> str:
        from obelisk.attest import evidence

        kwargs: dict[str, Any] = {"event_log_path": config.event_log, "ima_path": config.ima_log}
        if config.ak_handle is not None:
            kwargs["ak_handle"] = config.ak_handle
        return evidence.serialize(evidence.collect(nonce, config.tcti, **kwargs))

    return collect


def default_kernel() -> dict[str, str]:
    from obelisk.attest import evidence

    return evidence.kernel_facts()


def default_scan(config: AgentConfig) -> Callable[[], str] | None:
    scan_root = config.scan_root
    if not scan_root:
        return None

    def scan() -> str:
        from obelisk.cis_checks.scan import scan as cis_scan
        from obelisk.core import findings

        return findings.serialize(cis_scan(scan_root))

    return scan


def default_workloads() -> dict[str, Any]:
    from obelisk.image import workloads

    return workloads.report()


@dataclass
class Services:
    """What the agent can answer with; injected so each piece can be tested on its own."""

    evidence: Callable[[bytes], str]
    kernel: Callable[[], dict[str, str]]
    scan: Callable[[], str] | None
    image: str = ""
    workloads: Callable[[], dict[str, Any]] | None = None
    # POST /v1/upgrade and GET /v1/upgrade (attest/upgrade.py), on a node with A/B slots
    upgrade: Any = None  # attest.upgrade.Endpoint


def server_context(config: AgentConfig) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(config.cert, config.key)
        ctx.load_verify_locations(cafile=config.client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"agent TLS setup: {exc}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


@dataclass(frozen=True)
class Limits:
    """How long and how many: what keeps idle, slow and numerous connections from locking callers out."""

    handshake: float = 5.0  # seconds from accept to a finished TLS handshake, however the bytes trickle in
    request: float = 10.0  # seconds to receive one whole request (line and headers), keep-alive wait included
    idle: float = 10.0  # seconds any single read or write may block
    response: float = 120.0  # seconds to produce and send one answer (a quote, a scan)
    connections: int = 512  # connections open at once, all peers together (one thread each)
    per_peer: int = 64  # connections open at once from one address


class Deadlines:
    """One thread that shuts down connections past their deadline.

    A per-read socket timeout alone lets a client that sends a byte every few seconds keep a
    connection forever; a deadline covers the whole phase (handshake, request, response).
    Shutting the socket down wakes the worker blocked on it, which then closes it.
    """

    def __init__(self, tick: float = 0.2):
        self._due: dict[socket.socket, float] = {}
        self._expired: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._tick = tick
        self._thread = threading.Thread(target=self._run, name="agent-deadlines", daemon=True)
        self._thread.start()

    def arm(self, sock: socket.socket, seconds: float) -> None:
        with self._lock:
            if sock not in self._expired:
                self._due[sock] = time.monotonic() + seconds

    def disarm(self, sock: socket.socket) -> None:
        with self._lock:
            self._due.pop(sock, None)
            self._expired.discard(sock)

    def expired(self, sock: socket.socket) -> bool:
        with self._lock:
            return sock in self._expired

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            with self._lock:
                for sock in [s for s, due in self._due.items() if due <= now]:
                    del self._due[sock]
                    self._expired.add(sock)
                    try:  # the plain socket's shutdown, under TLS too: no TLS record, just wake the reader
                        socket.socket.shutdown(sock, socket.SHUT_RDWR)
                    except OSError:
                        pass


class _Throttle:
    """At most one log line per kind of flood event and interval, with the count of those not logged."""

    def __init__(self, log: Callable[[str], None], interval: float = 10.0):
        self._log = log
        self._interval = interval
        self._last: dict[str, float] = {}
        self._skipped: collections.Counter[str] = collections.Counter()
        self._lock = threading.Lock()

    def __call__(self, kind: str, line: str) -> None:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(kind, -self._interval) < self._interval:
                self._skipped[kind] += 1
                return
            self._last[kind] = now
            skipped = self._skipped.pop(kind, 0)
        self._log(line + (f" (and {skipped} more since the last such line)" if skipped else ""))


def _printable(text: str, limit: int = 200) -> str:
    """A request line or header as it may go into the log: no control characters, bounded."""
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text[:limit])
    return shown + ("..." if len(text) > limit else "")


_NOBODY = roles.Client(name="?", client_auth=False, roles=frozenset())


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"
    client = _NOBODY
    _note = ""  # why an error was sent, for the request's one log line
    _answering = False  # the request was read: its deadline is Limits.response

    def version_string(self) -> str:  # no software versions to an attacker
        return "obelisk-agent"

    def setup(self) -> None:
        super().setup()  # the socket's per-operation timeout (Limits.idle) was set before the handshake
        try:
            self.client = roles.client_of(self.connection.getpeercert(binary_form=True) or b"")
        except ValueError:
            self.client = _NOBODY

    def handle(self) -> None:
        try:
            super().handle()
        except OSError as exc:  # ssl.SSLError too: the peer went away or its deadline passed
            if self.server.deadlines.expired(self.connection) and self._answering:
                self.server.log(f"{self.client_address[0]} [{self.client.name}] closed: no answer within "
                                f"{self.server.limits.response:g} s ({_printable(self.requestline)})")
            elif self.server.deadlines.expired(self.connection):
                self.server.throttle("slow", f"{self.client_address[0]} [{self.client.name}] closed: no whole "
                                             f"request within {self.server.limits.request:g} s")
            else:
                self.server.throttle("reset", f"{self.client_address[0]} [{self.client.name}] connection "
                                              f"lost: {type(exc).__name__}: {exc}")

    def finish(self) -> None:
        try:
            super().finish()
        except OSError:
            pass

    def handle_one_request(self) -> None:
        self.server.deadlines.arm(self.connection, self.server.limits.request)
        self._note = ""
        self._answering = False
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        if self.server.deadlines.expired(self.connection):
            raise ConnectionAbortedError("request deadline passed")  # handle() logs it, throttled
        if ok and len(self.requestline.split()) != 3:
            self.send_error(400, "HTTP/0.9 requests are not served")
            return False
        if ok:
            self.server.deadlines.arm(self.connection, self.server.limits.response)
            self._answering = True
        return ok

    def log_error(self, format: str, *args: Any) -> None:
        if format.startswith("Request timed out"):  # a read blocked for Limits.idle: a flood's signature
            self.server.throttle("slow", f"{self.client_address[0]} [{self.client.name}] closed: nothing read "
                                         f"for {self.server.limits.idle:g} s")
        else:
            self.log_message(format, *args)

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """http.server's own refusals (bad request line, header too long) as JSON, logged in one line."""
        if not self.request_version.startswith("HTTP/1."):  # refused before the version was read
            self.request_version = "HTTP/1.0"
        self._error(code, message or self.responses.get(code, ("error",))[0])

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        note = f" ({_printable(self._note)})" if self._note else ""
        self.log_message('"%s" %s %s%s', _printable(getattr(self, "requestline", "")), code, size, note)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]} [{self.client.name}] {format % args}")

    def _send(self, code: int, body: str | dict[str, Any], content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        if code >= 400:  # a body may be left unread, or the caller is not welcome: do not keep the connection
            self.close_connection = True
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(data)
        if self.close_connection:
            self._drain()

    def _drain(self, limit: int = 1 << 16, wait: float = 0.2) -> None:
        """Read what a refused request may still have in flight (a body), briefly and boundedly.

        Closing with unread bytes makes the kernel send a reset, which can discard the answer
        before the caller reads it.
        """
        headers = getattr(self, "headers", None)
        if headers is None or (headers.get("Content-Length") in (None, "0") and "Transfer-Encoding" not in headers):
            return
        try:
            self.wfile.flush()
            self.connection.settimeout(wait)
            while limit > 0:
                chunk = self.connection.recv(min(limit, 1 << 14))
                if not chunk:
                    break
                limit -= len(chunk)
        except OSError:
            pass

    def _error(self, code: int, message: str) -> None:
        self._note = message
        self._send(code, {"error": message})

    def _authorized(self, path: str) -> bool:
        try:
            roles.authorize(self.client, self.command, path)
        except roles.Forbidden as exc:
            self._error(403, str(exc))
            return False
        return True

    def _check_no_body(self) -> None:
        if self.headers.get("Transfer-Encoding") is not None:
            raise ValueError("GET requests carry no body (Transfer-Encoding given)")
        text = (self.headers.get("Content-Length") or "0").strip()
        if not text.isdigit() or len(text) > 18:
            raise ValueError("Content-Length is not a number")
        if int(text):
            raise ValueError("GET requests carry no body")

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        url = urlsplit(self.path)
        if not self._authorized(url.path):
            return
        try:
            self._check_no_body()
            query = parse_qs(url.query, max_num_fields=4)
        except ValueError as exc:
            self._error(400, str(exc))
            return
        services = self.server.services
        try:
            if url.path == "/v1/health":
                self._send(200, {"status": "ok", "image": services.image})
            elif url.path == "/v1/evidence":
                try:
                    given = query.get("nonce")
                    nonce = parse_nonce(given[0] if given else None)
                except ValueError as exc:
                    self._error(400, str(exc))
                    return
                if not self.server.nonces.claim(nonce):
                    self._error(409, "nonce already used: ask with a fresh nonce")
                    return
                self._send(200, services.evidence(nonce))
            elif url.path == "/v1/kernel":
                self._send(200, services.kernel())
            elif url.path == "/v1/scan" and services.scan is not None:
                self._send(200, services.scan())
            elif url.path == "/v1/workloads" and services.workloads is not None:
                self._send(200, services.workloads())
            elif url.path == "/v1/upgrade" and services.upgrade is not None:
                self._send(200, services.upgrade.status())
            else:
                self._error(404, "no such endpoint (GET /v1/health, /v1/evidence?nonce=HEX, /v1/kernel, /v1/scan, "
                            "/v1/workloads, /v1/upgrade)")
        except OSError:
            raise  # the connection, not the collector: handle() logs it
        except Exception as exc:  # one failing collector must not take the agent down
            self._error(500, f"{type(exc).__name__}: {exc}")

    def _refuse(self) -> None:
        if self._authorized(urlsplit(self.path).path):
            self._error(405, "the agent is read-only: GET only")

    def do_POST(self) -> None:  # noqa: N802 - http.server's naming
        path = urlsplit(self.path).path
        endpoint = self.server.services.upgrade
        if path != "/v1/upgrade" or endpoint is None:
            self._refuse()
            return
        if not self._authorized(path):
            return
        endpoint.handle(self)

    do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse  # noqa: N815


class AgentServer(ThreadingHTTPServer):
    """HTTPS server that accepts cheaply and does everything else in a worker thread under deadlines.

    The accept loop only counts: over the overall or the per-address cap, a connection is closed
    at once (no TLS, no thread). Each admitted connection gets a thread that runs the TLS handshake
    under `Limits.handshake`, then requests under `Limits.request` / `Limits.response`, enforced by
    `Deadlines` whatever the pace of the bytes.
    """

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, services: Services,
                 log: Callable[[str], None] | None = None, limits: Limits = Limits()):
        self.context = context
        self.services = services
        self.limits = limits
        self.nonces = NonceLedger()
        self.deadlines = Deadlines()
        self._count_lock = threading.Lock()
        self._open = 0
        self._per_peer: collections.Counter[str] = collections.Counter()
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self.throttle = _Throttle(self.log)
        try:
            super().__init__(address, _Handler)
        except BaseException:
            self.deadlines.stop()
            raise

    def log(self, line: str) -> None:
        self._log(f"obelisk-agent {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")

    @property
    def open_connections(self) -> int:
        return self._open

    def process_request(self, request: Any, client_address: Any) -> None:
        peer = str(client_address[0])
        with self._count_lock:
            over = self._open >= self.limits.connections or self._per_peer[peer] >= self.limits.per_peer
            if not over:
                self._open += 1
                self._per_peer[peer] += 1
        if over:
            self.shutdown_request(request)  # refused before any TLS or thread: the caller retries
            self.throttle("cap", f"{peer} refused: over {self.limits.connections} connections or "
                                 f"{self.limits.per_peer} from one address")
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(peer)
            raise

    def _release(self, peer: str) -> None:
        with self._count_lock:
            self._open -= 1
            self._per_peer[peer] -= 1
            if self._per_peer[peer] <= 0:
                del self._per_peer[peer]

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]))

    # self: Self, as typeshed types RequestHandlerClass's server argument
    def finish_request(self: Self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if not isinstance(request, socket.socket):  # a TCP server: datagram requests cannot arrive
            raise TypeError(f"the agent serves TLS over TCP, not {type(request).__name__} requests")
        peer = client_address[0]
        request.settimeout(self.limits.idle)
        try:
            tls = self.context.wrap_socket(request, server_side=True, do_handshake_on_connect=False)
        except (ssl.SSLError, OSError) as exc:
            self.throttle("tls", f"{peer} refused: TLS setup failed: {exc}")
            return
        try:
            self.deadlines.arm(tls, self.limits.handshake)
            try:
                tls.do_handshake()
            except (ssl.SSLError, OSError) as exc:
                if isinstance(exc, TimeoutError) or self.deadlines.expired(tls):
                    self.throttle("handshake-timeout", f"{peer} refused: no TLS handshake within "
                                                       f"{self.limits.handshake:g} s")
                else:
                    self.throttle("handshake", f"{peer} refused: TLS handshake failed: "
                                               f"{getattr(exc, 'reason', None) or exc}")
                return
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            self.deadlines.disarm(tls)
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line, never a traceback: a request the handler did not foresee is still one request."""
        exc = sys.exc_info()[1]
        self.log(f"{client_address[0]} error: {type(exc).__name__}: {_printable(str(exc))}")

    def shutdown_request(self, request: Any) -> None:
        try:
            request.close()
        except OSError:
            pass

    def server_close(self) -> None:
        super().server_close()
        self.deadlines.stop()


def make_server(config: AgentConfig, services: Services | None = None,
                log: Callable[[str], None] | None = None, limits: Limits = Limits()) -> AgentServer:
    services = services or Services(evidence=default_evidence(config), kernel=default_kernel,
                                    scan=default_scan(config), image=config.image, workloads=default_workloads)
    return AgentServer((config.host, config.port), server_context(config), services, log, limits)


def serve(config_path: str, port: int | None = None) -> None:
    """Load the configuration and serve until interrupted (`obelisk attest agent`, and the node's agent)."""
    config = AgentConfig.load(config_path)
    if port:
        config = AgentConfig(**{**config.__dict__, "port": port})
    from obelisk.attest import upgrade

    endpoint = upgrade.endpoint_for(config)
    services = Services(evidence=default_evidence(config), kernel=default_kernel, scan=default_scan(config),
                        image=config.image, workloads=default_workloads, upgrade=endpoint)
    server = make_server(config, services)
    server.log(f"listening on {config.host}:{config.port}")
    if endpoint is not None:
        upgrade.commit_when_up(endpoint.node, lambda: True, server.log)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
