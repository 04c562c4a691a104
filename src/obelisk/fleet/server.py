"""`fleet serve`: the fleet's HTTPS API (standard library http.server + ssl, like the node agent).

TLS 1.2+. A client certificate is optional at the handshake, but one that is presented must chain to
the customer CA or the handshake fails. Operator endpoints need one (401 without); node endpoints do
not: a node proves who it is with its TPM (credential activation, then quotes signed by its AK).

Nodes (push; the service never connects to a node):
    POST /v1/node/register   {"ek_public": HEX, "ak_public": HEX, "ek_certificate": HEX|null,
                              "image": "NAME:VERSION", "hostname": "...", "token": "..." (join token)}
                             -> {"node", "challenge_id", "challenge": obelisk.credential/1}
    POST /v1/node/activate   {"challenge_id": HEX, "secret": HEX} -> {"node", "status"}
    POST /v1/node/nonce      {"node": ID} -> {"nonce": HEX, "scan_sha256": HEX | null (the scan held for it)}
    POST /v1/node/evidence?node=ID   body: obelisk.evidence/1 or obelisk.fleet-round/1 -> {"node", "status",
                             "passed", "summary"}; 412: send the round again with the scan's body
    POST /v1/node/key?node=ID        body: as evidence -> {"node", "status", "key": HEX}: the node's /var key,
                                     only when this round verifies and the node is trusted (403 otherwise)

Node endpoints are rate limited per source address and overall (`fleet/ratelimit.py`): 429 with
Retry-After. Connections are kept alive between requests (a round's nonce and evidence share one TLS
handshake) for at most KEEPALIVE_IDLE seconds of silence, and not at all while most of the server's
MAX_CONCURRENT slots are taken: an idle node cannot hold a slot another node needs.

Operators (client certificate of the customer CA; every change audited with its subject):
    GET  /v1/nodes                      GET  /v1/nodes/ID/history
    POST /v1/nodes/ID/approve           POST /v1/nodes/ID/quarantine   {"reason": "..."}
    POST /v1/images  {"manifest": BASE64, "signature": BASE64}
    POST /v1/images/NAME:VERSION/remove (refused while a node runs it or a round used it)
    GET  /v1/audit                      GET  /v1/attestations/N   (the round's obelisk.report/1)
    GET  /v1/report                     every node with its last round's report (`fleet report`)
    GET  /dashboard                     the same page as `fleet report --format html`, rendered live, and
    GET  /dashboard/nodes/ID[/rounds/N] the pages it links to (fleet/dashboard.py)
"""

from __future__ import annotations

import base64
import binascii
import gc
import json
import queue
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self
from urllib.parse import parse_qs, unquote, urlsplit

from obelisk.core.errors import InputError
from obelisk.fleet.ratelimit import RateLimiter, retry_after
from obelisk.fleet.service import Fleet, FleetError, NotFound

MAX_BODY = 64 * 1024 * 1024  # an evidence bundle with a long IMA list
MAX_CONCURRENT = 16
HANDSHAKE_TIMEOUT = 10.0
KEEPALIVE_IDLE = 2.0  # seconds a kept-alive connection may wait for its next request
KEEPALIVE_REQUESTS = 100  # requests on one connection, then it is closed
KEEPALIVE_FREE_SLOTS = MAX_CONCURRENT // 4  # fewer free slots than this: close after each answer
DRAIN_LIMIT = 1 << 20  # a refused request's body up to this size is read and dropped (the connection stays usable)


def server_context(cert: str, key: str, client_ca: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_OPTIONAL  # nodes come without one; a presented certificate must verify
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(cafile=client_ca)
    except (OSError, ssl.SSLError) as exc:
        raise InputError(f"fleet TLS setup: {exc}") from None
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    return ctx


def peer_subject(conn: Any) -> str | None:
    """The RFC 4514 subject of the verified client certificate, None without one."""
    from cryptography import x509

    try:
        der = conn.getpeercert(binary_form=True)
    except (AttributeError, ValueError, ssl.SSLError):
        return None
    if not der:
        return None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class _Handler(BaseHTTPRequestHandler):
    server: FleetServer
    protocol_version = "HTTP/1.1"
    timeout = 30
    _idle = False  # waiting for the next request of a kept-alive connection

    def version_string(self) -> str:
        return "obelisk-fleet"

    def handle(self) -> None:
        """Requests on one connection: the first with the full timeout, the next ones only if they come
        within KEEPALIVE_IDLE seconds (and at most KEEPALIVE_REQUESTS in all)."""
        self.close_connection = True
        self.handle_one_request()
        served = 1
        while not self.close_connection and served < KEEPALIVE_REQUESTS:
            self._idle = True
            self.connection.settimeout(KEEPALIVE_IDLE)
            self.handle_one_request()
            served += 1

    def parse_request(self) -> bool:
        if self._idle:  # a request line came: it gets the full timeout for its headers and body
            self._idle = False
            self.connection.settimeout(self.timeout)
        return super().parse_request()

    def log_error(self, format: str, *args: Any) -> None:
        if self._idle and format.startswith("Request timed out"):
            return  # an idle kept-alive connection closed: nothing went wrong
        super().log_error(format, *args)

    def log_message(self, format: str, *args: Any) -> None:
        self.server.log(f"{self.client_address[0]} [{peer_subject(self.connection) or 'node'}] {format % args}")

    def _send(self, code: int, body: Any, headers: dict[str, str] | None = None) -> None:
        html = isinstance(body, _Html)
        data = body.data if isinstance(body, _Html) else (json.dumps(body, sort_keys=True) + "\n").encode()
        self.send_response(code)
        self.send_header("Content-Type", "text/html; charset=utf-8" if html else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for name, value in {**(body.headers if isinstance(body, _Html) else {}), **(headers or {})}.items():
            self.send_header(name, value)
        if self.server.crowded() and not self.close_connection:
            self.send_header("Connection", "close")  # sets close_connection: the slot goes to the next node
        # end_headers, with the body in the same write: one TLS record and one system call per answer
        self._headers_buffer.append(b"\r\n" + data)  # type: ignore[attr-defined]  # http.server's, set above
        self.flush_headers()

    def _body(self) -> bytes:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise FleetError("Content-Length is not a number") from None
        if length > MAX_BODY:
            raise FleetError(f"request body larger than {MAX_BODY} bytes")
        return self.rfile.read(length)

    def _json(self) -> dict[str, Any]:
        try:
            doc = json.loads(self._body() or b"{}")
        except (ValueError, RecursionError):
            raise FleetError("request body is not JSON") from None
        if not isinstance(doc, dict):
            raise FleetError("request body: expected a JSON object")
        return doc

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self._dispatch("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        parts = [p for p in url.path.split("/") if p]
        try:
            if parts[:2] == ["v1", "node"] and method == "POST":
                wait = self.server.limiter.admit(self.client_address[0]) if self.server.limiter else None
                if wait is not None:
                    self._refuse_busy(wait)
                    return
                self._send(200, self._node(parts[2:], parse_qs(url.query, max_num_fields=4)))
                return
            subject = peer_subject(self.connection)
            if subject is None:
                self._send(401, {"error": "operator endpoints need a client certificate of the customer CA"})
                return
            self._send(200, self._operator(method, parts, subject))
        except FleetError as exc:
            self._send(exc.http_status, {"error": str(exc)})
        except Exception as exc:  # a bug, or the database went away: the request fails, the service stays
            self.server.log(f"error serving {method} {url.path}: {type(exc).__name__}: {exc}")
            self._send(500, {"error": f"internal error: {type(exc).__name__}"})

    def _refuse_busy(self, wait: float) -> None:
        """429 with Retry-After. The body is read first (up to DRAIN_LIMIT): closing a socket with unread
        data resets the connection, and the client would see no answer."""
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = DRAIN_LIMIT + 1
        headers = {"Retry-After": retry_after(wait)}
        if 0 <= length <= DRAIN_LIMIT:
            self.rfile.read(length)
        else:
            self.close_connection = True
            headers["Connection"] = "close"
        self._send(429, {"error": f"too many requests: retry in {retry_after(wait)} s"}, headers)

    def _node(self, parts: list[str], query: dict[str, list[str]]) -> Any:
        fleet = self.server.fleet
        if parts in (["evidence"], ["key"]):
            node = (query.get("node") or [""])[0]
            body = self._body()
            return fleet.submit(node, body) if parts == ["evidence"] else fleet.release_key(node, body)
        doc = self._json()
        if parts == ["register"]:
            return fleet.register(_hex(doc, "ek_public"), _hex(doc, "ak_public"), _text(doc, "image"),
                                  ek_certificate=_hex(doc, "ek_certificate") if doc.get("ek_certificate") else None,
                                  hostname=str(doc.get("hostname") or ""), token=str(doc.get("token") or ""))
        if parts == ["activate"]:
            return fleet.activate(_text(doc, "challenge_id"), _hex(doc, "secret"))
        if parts == ["nonce"]:
            start = fleet.start_round(_text(doc, "node"))
            return {"nonce": start.nonce.hex(), "scan_sha256": start.scan_sha256}
        raise _no_such_endpoint()

    def _operator(self, method: str, parts: list[str], subject: str) -> Any:
        fleet = self.server.fleet
        if method == "GET":
            if parts == ["v1", "nodes"]:
                return fleet.nodes()
            if parts[:2] == ["v1", "nodes"] and len(parts) == 4 and parts[3] == "history":
                return fleet.history(parts[2])
            if parts == ["v1", "audit"]:
                return fleet.audit()
            if parts == ["v1", "report"]:
                return fleet.latest()
            if parts[:1] == ["dashboard"]:
                return _dashboard(fleet, parts[1:])
            if parts[:2] == ["v1", "attestations"] and len(parts) == 3 and parts[2].isdigit():
                return json.loads(fleet.report(int(parts[2])))
            raise _no_such_endpoint()
        if parts == ["v1", "images"]:
            doc = self._json()
            return fleet.add_image(_b64(doc, "manifest"), _b64(doc, "signature"), subject)
        if parts[:2] == ["v1", "images"] and len(parts) == 4 and parts[3] == "remove":
            self._json()
            return fleet.remove_image(unquote(parts[2]), subject)
        if parts[:2] == ["v1", "nodes"] and len(parts) == 4 and parts[3] in ("approve", "quarantine"):
            doc = self._json()
            if parts[3] == "approve":
                return fleet.approve(parts[2], subject)
            return fleet.quarantine(parts[2], subject, str(doc.get("reason") or ""))
        raise _no_such_endpoint()


class _Html:
    def __init__(self, data: bytes, headers: dict[str, str]):
        self.data = data
        self.headers = headers


def _dashboard(fleet: Fleet, parts: list[str]) -> _Html:
    from obelisk.fleet import dashboard

    if not parts:
        page = dashboard.overview(fleet)
    elif parts[0] == "nodes" and len(parts) == 2:
        page = dashboard.node_page(fleet, unquote(parts[1]))
    elif parts[0] == "nodes" and len(parts) == 4 and parts[2] == "rounds" and parts[3].isdigit():
        page = dashboard.round_page(fleet, unquote(parts[1]), int(parts[3]))
    else:
        raise _no_such_endpoint()
    return _Html(page, dashboard.HEADERS)


def _no_such_endpoint() -> FleetError:
    return NotFound("no such endpoint (see obelisk/fleet/server.py)")


def _text(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        raise FleetError(f"{key}: missing")
    return value


def _hex(doc: dict[str, Any], key: str) -> bytes:
    try:
        return bytes.fromhex(_text(doc, key))
    except ValueError:
        raise FleetError(f"{key}: not hex") from None


def _b64(doc: dict[str, Any], key: str) -> bytes:
    try:
        return base64.b64decode(_text(doc, key), validate=True)
    except (binascii.Error, ValueError):
        raise FleetError(f"{key}: not base64") from None


class FleetServer(ThreadingHTTPServer):
    """HTTPS server whose TLS handshake happens in the worker thread (as the node agent's).

    MAX_CONCURRENT worker threads, started once, serve the connections (a thread started per connection
    cost the accepting thread more than a round's SQL); a connection that finds them all busy is closed."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, fleet: Fleet,
                 log: Callable[[str], None] | None = None, limiter: RateLimiter | None = None):
        self.context = context
        self.fleet = fleet
        self.limiter = limiter
        self._slots = threading.BoundedSemaphore(MAX_CONCURRENT)
        self._busy = 0  # slots taken (the semaphore does not tell)
        self._busy_lock = threading.Lock()
        self._log = log or (lambda line: print(line, file=sys.stderr, flush=True))
        self._stop = threading.Event()
        super().__init__(address, _Handler)
        self._accepted: queue.SimpleQueue[tuple[socket.socket, Any] | None] = queue.SimpleQueue()
        self._workers = [threading.Thread(target=self._work, name=f"fleet-worker-{i}", daemon=True)
                         for i in range(MAX_CONCURRENT)]
        for worker in self._workers:
            worker.start()

    def _work(self) -> None:
        while (accepted := self._accepted.get()) is not None:
            try:
                self.process_request_thread(*accepted)  # finish_request, handle_error, shutdown_request
            finally:
                self._release()

    def log(self, line: str) -> None:
        self._log(f"obelisk-fleet {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {line}")

    def crowded(self) -> bool:
        """Too few free slots to let a connection wait idle for its next request."""
        return MAX_CONCURRENT - self._busy < KEEPALIVE_FREE_SLOTS

    def sweep_forever(self) -> None:
        """Mark silent nodes unreachable and forget stale challenges and registrations (`Fleet.clean_up`),
        every half interval, until `shutdown`."""
        while not self._stop.wait(max(1.0, self.fleet.interval / 2)):
            try:
                self.fleet.sweep()
                removed = self.fleet.clean_up()
                if any(removed.values()):
                    self.log(f"clean-up: removed {removed['nonces']} expired challenge(s), "
                             f"{removed['registrations']} unanswered registration(s)")
            except Exception as exc:
                self.log(f"sweep failed: {type(exc).__name__}: {exc}")

    def shutdown(self) -> None:
        self._stop.set()
        super().shutdown()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # a slot is a worker: one is free when this succeeds
            request.close()
            return
        with self._busy_lock:
            self._busy += 1
        self._accepted.put((request, client_address))

    def server_close(self) -> None:
        super().server_close()
        for _ in self._workers:
            self._accepted.put(None)

    def _release(self) -> None:
        with self._busy_lock:
            self._busy -= 1
        self._slots.release()

    def finish_request(self: Self, request: socket.socket | tuple[bytes, socket.socket], client_address: Any) -> None:
        if not isinstance(request, socket.socket):
            raise TypeError(f"the fleet serves TLS over TCP, not {type(request).__name__} requests")
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


def make_server(fleet: Fleet, host: str, port: int, *, cert: str, key: str, client_ca: str,
                log: Callable[[str], None] | None = None, limiter: RateLimiter | None = None) -> FleetServer:
    server = FleetServer((host, port), server_context(cert, key, client_ca), fleet, log, limiter)
    fleet.log = server.log
    if fleet.webhooks is not None:
        fleet.webhooks.log = server.log
    return server


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise InputError(f"--listen must be HOST:PORT, got {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve(fleet: Fleet, listen: str, *, cert: str, key: str, client_ca: str,
          limiter: RateLimiter | None = None) -> None:
    """Serve until interrupted, sweeping for unreachable nodes and stale registrations in the background."""
    host, port = parse_listen(listen)
    server = make_server(fleet, host, port, cert=cert, key=key, client_ca=client_ca, limiter=limiter)
    threading.Thread(target=server.sweep_forever, daemon=True).start()
    # what is loaded by now (modules, the database's engine, the TLS context) lives as long as the process:
    # out of the cyclic collector's sight, each of its full collections walks only what rounds left behind
    gc.freeze()
    server.log(f"listening on {host}:{server.server_address[1]}")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
