"""The node agent: the node's only interface, an HTTPS API with mutual TLS that hands out evidence.

Read-only by design: GET requests only, no shell, no file access by path, nothing that
changes the node. Every client must present a certificate that chains to the customer CA
(TLS 1.2+, verified by OpenSSL through Python's ssl; anything else fails the handshake).

    GET /v1/health                 {"status": "ok", "image": ...}
    GET /v1/evidence?nonce=HEX     an evidence bundle (obelisk.evidence/1): TPM quote over the
                                   caller's nonce, event log, IMA list, kernel facts.
                                   A nonce is served once: a replay gets 409.
    GET /v1/kernel                 kernel facts
    GET /v1/scan                   CIS/STIG scan of the node's own filesystem (obelisk.report/1)

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

from obelisk.core.errors import InputError

MIN_NONCE = 16  # bytes: shorter nonces are guessable and could be pre-computed
MAX_NONCE = 64  # the TPM's qualifyingData holds at most one sha512 digest
MAX_CONCURRENT = 8
HANDSHAKE_TIMEOUT = 10.0


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


@dataclass
class Services:
    """What the agent can answer with; injected so each piece can be tested on its own."""

    evidence: Callable[[bytes], str]
    kernel: Callable[[], dict[str, str]]
    scan: Callable[[], str] | None
    image: str = ""


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


class _Handler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.1"
    timeout = 15

    def version_string(self) -> str:  # no software versions to an attacker
        return "obelisk-agent"

    def log_message(self, format: str, *args: Any) -> None:
        peer = self.server.peer_name(self.connection)
        self.server.log(f"{self.client_address[0]} [{peer}] {format % args}")

    def _send(self, code: int, body: str | dict[str, Any], content_type: str = "application/json") -> None:
        data = (body if isinstance(body, str) else json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def _error(self, code: int, message: str) -> None:
        self._send(code, {"error": message})

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        if int(self.headers.get("Content-Length") or 0):
            self._error(400, "GET requests carry no body")
            return
        url = urlsplit(self.path)
        query = parse_qs(url.query, max_num_fields=4)
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
            else:
                self._error(404, "no such endpoint (GET /v1/health, /v1/evidence?nonce=HEX, /v1/kernel, /v1/scan)")
        except Exception as exc:  # one failing collector must not take the agent down
            self.server.log(f"error serving {url.path}: {type(exc).__name__}: {exc}")
            self._error(500, f"{type(exc).__name__}: {exc}")

    def _refuse(self) -> None:
        self._error(405, "the agent is read-only: GET only")

    do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _refuse  # noqa: N815


class AgentServer(ThreadingHTTPServer):
    """HTTPS server whose TLS handshake happens in the worker thread, so a slow client blocks nobody."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, services: Services,
                 log: Callable[[str], None] | None = None):
        self.context = context
        self.services = services
        self.nonces = NonceLedger()
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        super().__init__(address, _Handler)

    def log(self, line: str) -> None:
        self._log(f"obelisk-agent {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")

    @staticmethod
    def peer_name(conn: Any) -> str:
        try:
            cert = conn.getpeercert()
            return dict(x[0] for x in cert.get("subject", ())).get("commonName", "?")
        except (AttributeError, ValueError, ssl.SSLError):
            return "?"

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            request.close()  # too many connections at once: drop, the caller retries
            return
        try:
            super().process_request(request, client_address)
        except Exception:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    # self: Self, as typeshed types RequestHandlerClass's server argument
    def finish_request(self: Self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if not isinstance(request, socket.socket):  # a TCP server: datagram requests cannot arrive
            raise TypeError(f"the agent serves TLS over TCP, not {type(request).__name__} requests")
        request.settimeout(HANDSHAKE_TIMEOUT)
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.log(f"{client_address[0]} refused: TLS handshake failed: {getattr(exc, 'reason', None) or exc}")
            return
        try:
            tls.settimeout(_Handler.timeout)
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def shutdown_request(self, request: Any) -> None:
        try:
            request.close()
        except OSError:
            pass


def make_server(config: AgentConfig, services: Services | None = None,
                log: Callable[[str], None] | None = None) -> AgentServer:
    services = services or Services(evidence=default_evidence(config), kernel=default_kernel,
                                    scan=default_scan(config), image=config.image)
    return AgentServer((config.host, config.port), server_context(config), services, log)


def serve(config_path: str, port: int | None = None) -> None:
    """Load the configuration and serve until interrupted (`obelisk attest agent`, and the node's agent)."""
    config = AgentConfig.load(config_path)
    if port:
        config = AgentConfig(**{**config.__dict__, "port": port})
    server = make_server(config)
    server.log(f"listening on {config.host}:{config.port}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
