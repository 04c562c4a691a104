"""The fleet's rules over one database: images, registration, approval, rounds, statuses, audit.

Stateless between calls: everything a round needs (the nonce, the node's AK, its last counters, the
image's manifest) is read from the database, so any `fleet serve` process can finish a round that
another one started. Every call is one transaction: a process killed mid-round leaves no half round.

Node statuses:
    pending      registered (EK and proven AK), waiting for `fleet approve` (or on the EK allowlist)
    approved     approved, no round yet
    trusted      the last round's evidence verified against the node's image manifest
    failed       the last round's evidence did not verify
    quarantined  two failed rounds in a row, or an operator's `fleet quarantine`; only `fleet approve` lifts it
    unreachable  no evidence within 3 intervals of the last round (set by `sweep`)

Every error is a `FleetError` whose `http_status` the server answers with.
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, CursorResult, bindparam, delete, exists, insert, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from obelisk.attest.ima_check import IncrementalChecker
from obelisk.core.errors import InputError, ObeliskError
from obelisk.fleet import db, round_rules, scan_digest
from obelisk.fleet import nonce as round_nonce
from obelisk.ima_policy import progress as imaprogress

if TYPE_CHECKING:
    from cryptography import x509

    from obelisk.attest.akrecord import AKRecord
    from obelisk.attest.evidence import Evidence
    from obelisk.attest.ima_check import References
    from obelisk.attest.verify import Counters
    from obelisk.core.findings import Report
    from obelisk.ima_policy.keyring import Keyring

PENDING, APPROVED, TRUSTED, FAILED, QUARANTINED, UNREACHABLE = (
    "pending", "approved", "trusted", "failed", "quarantined", "unreachable")
STATUSES = (PENDING, APPROVED, TRUSTED, FAILED, QUARANTINED, UNREACHABLE)
ROUND, CREDENTIAL = "round", "credential"
NONCE_SIZE = 32
NONCE_TTL = _dt.timedelta(minutes=5)
REGISTRATION_TIMEOUT = 24 * 3600  # seconds: a registration whose TPM never answered its challenge is removed
NONCE_KEY = "round-nonce-key"  # service_secrets.name of the round nonces' MAC key
MISSED_INTERVALS = 3  # no evidence within this many intervals: unreachable
FAILURES_TO_QUARANTINE = 2  # consecutive failed rounds
VALID_SIGNATURES_KEPT = 1 << 18  # per image: IMA signatures known valid (_image_keyring)


def _progress_of(node_id: str, saved: str | None) -> imaprogress.ImaProgress | None:
    """The node's saved IMA position; an unreadable one (an older obelisk's) only costs a full check."""
    if not saved:
        return None
    try:
        return imaprogress.parse(saved, f"node {node_id} ima_progress")
    except InputError:
        return None


def _rollback_finding(manifest: Any, ev: Any, ak: AKRecord | None) -> Any:
    """attest.rollback: the node's rollback floor as its TPM certified it over this round's nonce."""
    from obelisk.attest.agent_client import image_rollback_finding

    assert ak is not None
    return image_rollback_finding(manifest, ev.rollback_floor, ev.nonce, ak.public_key)


@functools.lru_cache(maxsize=1 << 16)
def _ak_of(record: str, node_id: str) -> AKRecord:
    """A node's AK from its stored record; parsed once per record (a fleet reads each one every interval)."""
    from obelisk.attest import akrecord

    return akrecord.parse(record.encode(), f"node {node_id} AK")


def _image_keyring(certs: list[tuple[str, x509.Certificate]]) -> Keyring:
    """An image's IMA keyring that remembers the signatures it found valid.

    Every node of an image measures the same files with the same signatures: a fleet verifies each
    (signature, digest) pair once instead of once per node and boot. Only VALID outcomes are kept, keyed
    by the exact signature, algorithm and digest (verification is a function of them and the keyring's
    fixed certificates), so the outcome of every check is the one a fresh keyring gives."""
    from obelisk.ima_policy.keyring import VALID, Keyring

    class Remembering(Keyring):
        def __init__(self) -> None:
            super().__init__(certs)
            self._valid: dict[tuple[bytes, str, bytes], str] = {}

        def check(self, sig: bytes, digest_algo: str, digest: bytes) -> tuple[str, str]:
            key = (sig, digest_algo, digest)
            detail = self._valid.get(key)
            if detail is not None:
                return VALID, detail
            outcome, detail = super().check(sig, digest_algo, digest)
            if outcome == VALID:
                if len(self._valid) >= VALID_SIGNATURES_KEPT:
                    self._valid.clear()
                self._valid[key] = detail
            return outcome, detail

    return Remembering()


@dataclass(frozen=True)
class _NodeState:
    """A node's row as a round needs it: read before verifying, and again, locked, when recording."""

    status: str
    ak_record: str | None
    image_id: int
    clock: int | None
    reset_count: int | None
    restart_count: int | None
    ima_progress: str | None
    hostname: str

    def basis(self) -> tuple[object, ...]:
        """What the verification's outcome depends on: a round recorded on another basis is verified again."""
        return self.ak_record, self.image_id, self.clock, self.reset_count, self.restart_count, self.ima_progress


# A round's statements, built once and on the tables (Core): the ORM's unit of work and statement
# building cost more than the database itself on this path.
_NODES = db.Base.metadata.tables["nodes"]
_ROUNDS = db.Base.metadata.tables["attestations"]
_NONCES = db.Base.metadata.tables["nonces"]
_EVENTS = db.Base.metadata.tables["events"]
_READ_STATE = select(_NODES.c.status, _NODES.c.ak_record, _NODES.c.image_id, _NODES.c.clock, _NODES.c.reset_count,
                     _NODES.c.restart_count, _NODES.c.ima_progress, _NODES.c.hostname
                     ).where(_NODES.c.id == bindparam("node_id"))
_LOCK_STATE = _READ_STATE.with_for_update()
_NONCE_USED = select(exists().where(_ROUNDS.c.nonce == bindparam("nonce")))
_INSERT_ROUND = insert(_ROUNDS)
_INSERT_EVENT = insert(_EVENTS)
_UPDATE_NODE = update(_NODES).where(_NODES.c.id == bindparam("node_key"))  # SET: the keys of the parameters
_LEGACY_NONCE = select(_NONCES.c.id, _NONCES.c.used_at, _NONCES.c.expires_at).where(
    _NONCES.c.value == bindparam("value"), _NONCES.c.purpose == ROUND, _NONCES.c.node_id == bindparam("node_id"))
_CLAIM_NONCE = update(_NONCES).where(_NONCES.c.id == bindparam("nonce_id"), _NONCES.c.used_at.is_(None))
_READ_ASKING = select(_NODES.c.ak_record.is_(None), _NODES.c.status, _NODES.c.scan_sha256).where(
    _NODES.c.id == bindparam("node_id"))
_SCANS = db.Base.metadata.tables["node_scans"]
_READ_SCAN = select(_SCANS.c.id, _SCANS.c.failing).where(_SCANS.c.node_id == bindparam("node_id"),
                                                         _SCANS.c.sha256 == bindparam("sha256"))
_INSERT_SCAN = insert(_SCANS)
# a round's read, one statement: the node's state, whether a round used the nonce, the scan it names if held
_HELD_SCAN = _SCANS.alias("held_scan")
_HELD = (_HELD_SCAN.c.node_id == _NODES.c.id) & (_HELD_SCAN.c.sha256 == bindparam("sha256"))
_READ_ROUND = select(*_READ_STATE.selected_columns, _NONCE_USED.scalar_subquery(), _HELD_SCAN.c.id,
                     _HELD_SCAN.c.failing).select_from(_NODES.outerjoin(_HELD_SCAN, _HELD)
                                                       ).where(_NODES.c.id == bindparam("node_id"))


def _node_state(conn: Connection, node_id: str, *, lock: bool = False) -> _NodeState | None:
    row = conn.execute(_LOCK_STATE if lock else _READ_STATE, {"node_id": node_id}).first()
    return _NodeState(*row) if row is not None else None


@dataclass(frozen=True)
class RoundScan:
    """The scan a round names: its digest (fleet/scan_digest.py), and its body when the node sent it."""

    sha256: str
    report: Report | None  # None: named by its digest only


@dataclass(frozen=True)
class RoundStart:
    """The answer to a node's request for a round: its nonce, and the digest of the scan the service holds
    for the node (its last round's), so the node sends its scan's body only when its own differs."""

    nonce: bytes
    scan_sha256: str | None


@dataclass(frozen=True)
class _Scan:
    """The scan a round is judged with: one the service holds (`scan_id`), or a new one to store."""

    sha256: str
    failing: tuple[str, ...]  # its failing findings' ids, in order
    scan_id: int | None  # the node_scans row; None: new, `report` is stored with the round
    report: str | None  # new: the scan, obelisk.report/1 compact


@dataclass(frozen=True)
class _Verified:
    """A round's verification, ready to record."""

    report: str  # obelisk.report/1, without the scan's findings (they are at `scan_position`)
    passed: bool
    summary: str
    counters: Counters | None
    ima_progress: str | None  # the position to keep (a passing round's), None otherwise
    scan_position: int | None  # where the scan's findings belong in the report's; None: no scan



class FleetError(ObeliskError):
    """A request the fleet refuses; `http_status` is what the service answers."""

    http_status = 400
    exit_code = 1


class NotFound(FleetError):
    http_status = 404


class Forbidden(FleetError):
    http_status = 403


class Conflict(FleetError):
    http_status = 409


class ScanNeeded(FleetError):
    """A round named its scan by a digest the service does not hold for the node: the node sends the round
    again (same nonce, same evidence: nothing was recorded) with the scan's body."""

    http_status = 412


class Webhooks:
    """POST every state change (JSON) to each URL, in a background thread: a slow receiver delays no round.

    Best effort: a receiver that is down misses events (the events table and `fleet history` keep them all).
    """

    def __init__(self, urls: Iterable[str], log: Callable[[str], None] = lambda _line: None, timeout: float = 10.0):
        import queue
        import threading

        self.urls = tuple(urls)
        for url in self.urls:
            if not url.startswith(("https://", "http://")):
                raise InputError(f"webhook URL must be http(s)://..., got {url!r}")
        self.log = log
        self.timeout = timeout
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=10_000)
        self._thread = threading.Thread(target=self._run, name="fleet-webhooks", daemon=True)
        self._thread.start()

    def send(self, event: dict[str, Any]) -> None:
        import queue

        try:
            self._queue.put_nowait(event)
        except queue.Full:
            self.log("webhooks: queue full, event dropped (it is in the database)")

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=self.timeout * max(1, len(self.urls)) + 5)

    def _run(self) -> None:
        import urllib.request

        while (event := self._queue.get()) is not None:
            body = json.dumps({"schema": "obelisk.fleet-event/1", **event}, sort_keys=True).encode()
            for url in self.urls:
                request = urllib.request.Request(url, data=body, method="POST",
                                                 headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(request, timeout=self.timeout) as resp:  # noqa: S310 - http(s) only
                        resp.read(1 << 16)
                except Exception as exc:
                    self.log(f"webhook {url}: {type(exc).__name__}: {exc}")


ROUND_SCHEMA = "obelisk.fleet-round/1"
_ROUND_FIELDS = frozenset({"schema", "evidence", "scan", "scan_sha256"})


def split_round(body: bytes, source: str, evidence_source: str = "evidence") -> tuple[Evidence, RoundScan | None]:
    """A round's body: a bare evidence bundle, or {"schema": obelisk.fleet-round/1, "evidence": {...},
    "scan": obelisk.report/1 | null, "scan_sha256": HEX (optional)} when the node adds its CIS/STIG scan:
    its body, its digest, or both (the digest must then be the body's). Decoded once (the evidence and
    the scan are built from the decoded document, not encoded and decoded again)."""
    from obelisk.attest import evidence as evmod
    from obelisk.core import findings as fmt
    from obelisk.core.jsonsafe import load_json

    if len(body) > evmod.MAX_BUNDLE_SIZE:
        raise InputError(f"round larger than {evmod.MAX_BUNDLE_SIZE} bytes", source=source)
    try:
        doc = load_json(body, source, what="JSON")
    except InputError:
        raise InputError("round is not JSON", source=source) from None
    if not isinstance(doc, dict) or doc.get("schema") != ROUND_SCHEMA:
        return evmod.from_json(doc, source=evidence_source), None
    extra = sorted(set(doc) - _ROUND_FIELDS)
    if extra or not isinstance(doc.get("evidence"), dict):
        raise InputError(f"{extra[0] if extra else 'evidence'}: " + ("unknown field" if extra else "expected an "
                                                                     "object"), source=source)
    scan, named = doc.get("scan"), doc.get("scan_sha256")
    if named is not None and not (isinstance(named, str) and len(named) == 64
                                  and all(c in "0123456789abcdef" for c in named)):
        raise InputError("scan_sha256: expected 64 lowercase hex digits", source=source)
    ev = evmod.from_json(doc["evidence"], source=evidence_source)
    if scan is None:
        return ev, RoundScan(named, None) if named is not None else None
    try:
        report = fmt.Report.from_json(scan)
    except InputError as exc:
        raise InputError(str(exc), source=f"{source}: scan") from None
    digest = scan_digest.digest(scan)
    if named is not None and named != digest:
        raise InputError(f"scan_sha256: {named} is not the digest of the scan sent with it ({digest})", source=source)
    return ev, RoundScan(digest, report)


def joined_report(report: str, scan: str | None, position: int | None) -> str:
    """A round's report as it was judged: its stored report with its scan's findings put back at `position`
    (the summary counted again), byte for byte what storing the whole report would have kept."""
    if scan is None or position is None:
        return report
    from obelisk.core.findings import Status

    doc = json.loads(report)
    findings = doc["findings"]
    findings[position:position] = json.loads(scan)["findings"]
    summary = dict.fromkeys((s.value for s in Status), 0)
    for finding in findings:
        summary[finding["status"]] += 1
    doc["summary"] = summary
    return json.dumps(doc, separators=(",", ":")) + "\n"


def node_id_of(ek_public: bytes) -> str:
    """A node's id: the first 16 hex digits of its EK's name digest (stable for the TPM's life)."""
    from obelisk.attest.akrecord import name_of

    return "n" + name_of(ek_public)[2:].hex()[:16]


def _iso(t: _dt.datetime | None) -> str | None:
    return t.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z") if t else None


def _event_doc(node_id: str | None, at: _dt.datetime, kind: str, old: str | None, new: str | None,
               detail: str) -> dict[str, Any]:
    """A state change as logged and sent to the webhooks (obelisk.fleet-event/1 without its schema)."""
    return {"node": node_id, "at": _iso(at), "kind": kind, "old_status": old, "new_status": new, "detail": detail}


@dataclass
class Fleet:
    sessions: sessionmaker[Session]
    ca: x509.Certificate  # the customer CA: image manifests must be signed by a certificate it issued
    interval: int = 60  # seconds between a node's rounds
    ek_allowlist: frozenset[str] = frozenset()  # node ids (node_id_of) approved on registration
    ek_ca_pem: bytes | None = None  # TPM manufacturers' CAs: when set, an EK certificate from them is required
    log: Callable[[str], None] = lambda _line: None
    now: Callable[[], _dt.datetime] = db.utcnow
    webhooks: Webhooks | None = None  # every state change is POSTed to them
    kek: bytes | None = None  # 32-byte key-encryption key for node keys; None: no key release
    join_tokens: frozenset[str] = frozenset()  # when set, a registration must present one of them
    registration_timeout: int = REGISTRATION_TIMEOUT  # seconds before `clean_up` removes an unanswered registration
    _references: dict[int, References] = field(default_factory=dict)
    _nonce_key: bytes = field(default=b"", repr=False)
    _reads: Engine = field(init=False, repr=False)  # READ transactions (db.py)
    _rounds: Engine = field(init=False, repr=False)  # ROUND transactions

    # ---- operators -------------------------------------------------------------------------------

    def _audit(self, s: Session, subject: str, action: str, target: str, outcome: str, detail: str = "") -> None:
        s.add(db.Audit(at=self.now(), subject=subject, action=action, target=target, outcome=outcome, detail=detail))

    def _refuse(self, subject: str, action: str, target: str, error: FleetError) -> FleetError:
        """Record a refused operator action in its own transaction, and return the error to raise."""
        with self.sessions.begin() as s:
            self._audit(s, subject, action, target, "refused", str(error))
        return error

    def add_image(self, manifest: bytes, signature: bytes, subject: str) -> dict[str, Any]:
        """Register a build's manifest; refused unless its signature verifies and chains to the customer CA."""
        from obelisk.image import manifest as mf

        try:
            sig = mf.ManifestSignature.loads(signature, "manifest.json.sig")
            reason = mf.chains_to(sig.certificate, self.ca)
            if reason is not None:
                raise Forbidden(f"manifest signature does not chain to the customer CA: {reason}")
            if not mf.check_signature(manifest, sig):
                raise Forbidden("manifest signature does not verify over manifest.json")
            m = mf.parse(manifest, "manifest.json")
        except InputError as exc:
            raise self._refuse(subject, "image-add", "?", FleetError(str(exc))) from None
        except FleetError as exc:
            raise self._refuse(subject, "image-add", "?", exc) from None
        digest = hashlib.sha256(manifest).hexdigest()
        target = f"{m.image.name}:{m.image.version}"
        with self.sessions.begin() as s:
            existing = s.scalars(select(db.Image).where(db.Image.name == m.image.name,
                                                        db.Image.version == m.image.version)).first()
            if existing is not None and existing.manifest_sha256 != digest:
                error = Conflict(f"image {target} is already registered with another manifest "
                                 f"(sha256 {existing.manifest_sha256[:16]}…)")
                self._audit(s, subject, "image-add", target, "refused", str(error))
                s.commit()
                raise error
            if existing is None:
                existing = db.Image(name=m.image.name, version=m.image.version, manifest_sha256=digest,
                                    manifest=manifest.decode(), signature=signature.decode(),
                                    signer=sig.certificate.subject.rfc4514_string(), added_at=self.now(),
                                    added_by=subject)
                s.add(existing)
            self._audit(s, subject, "image-add", target, "ok", f"manifest sha256 {digest}")
            s.flush()
            return {"id": existing.id, "image": target, "manifest_sha256": digest}

    def remove_image(self, image: str, subject: str) -> dict[str, Any]:
        """Forget an image's reference values; refused while a node runs it."""
        name, _, version = image.partition(":")
        with self.sessions.begin() as s:
            img = s.scalars(select(db.Image).where(db.Image.name == name, db.Image.version == version)).first()
            error: FleetError | None = None
            if img is None:
                error = NotFound(f"no image {image!r}")
            else:
                users = s.scalars(select(db.Node.id).where(db.Node.image_id == img.id)).all()
                history = s.scalars(select(db.Attestation.id).where(db.Attestation.image_id == img.id)
                                    .limit(1)).first()
                if users:
                    error = Conflict(f"image {image} is run by {len(users)} node(s): {', '.join(users[:5])}")
                elif history is not None:
                    error = Conflict(f"image {image} is in the attestation history; it is kept")
            if error is not None:
                self._audit(s, subject, "image-remove", image, "refused", str(error))
                s.commit()
                raise error
            assert img is not None
            s.execute(update(db.Nonce).where(db.Nonce.image_id == img.id).values(image_id=None))
            s.delete(img)
            self._references.pop(img.id, None)
            self._audit(s, subject, "image-remove", image, "ok", f"manifest sha256 {img.manifest_sha256}")
            return {"image": image, "removed": True}

    def approve(self, node_id: str, subject: str) -> dict[str, Any]:
        return self._set_by_operator(node_id, subject, "approve", APPROVED,
                                     allowed=(PENDING, QUARANTINED, FAILED, UNREACHABLE))

    def quarantine(self, node_id: str, subject: str, reason: str = "") -> dict[str, Any]:
        return self._set_by_operator(node_id, subject, "quarantine", QUARANTINED, allowed=STATUSES, detail=reason)

    def _set_by_operator(self, node_id: str, subject: str, action: str, status: str, *,
                         allowed: Iterable[str], detail: str = "") -> dict[str, Any]:
        with self.sessions.begin() as s:
            node = s.get(db.Node, node_id, with_for_update=True)
            error: FleetError | None = None
            if node is None:
                error = NotFound(f"no node {node_id!r}")
            elif node.status not in allowed:
                error = Conflict(f"node {node_id} is {node.status}: cannot {action}")
            elif action == "approve" and node.ak_record is None:
                error = Conflict(f"node {node_id} has not proven its AK yet (credential activation)")
            if error is not None:
                self._audit(s, subject, action, node_id, "refused", str(error))
                s.commit()
                raise error
            assert node is not None
            self._audit(s, subject, action, node_id, "ok", detail)
            self._change(s, node, status, action, f"by {subject}" + (f": {detail}" if detail else ""))
            return {"id": node_id, "status": node.status}

    def _change(self, s: Session, node: db.Node, status: str, kind: str, detail: str = "") -> None:
        old = node.status
        node.status = status
        self._event(s, db.Event(node_id=node.id, at=self.now(), kind=kind, old_status=old, new_status=status,
                                detail=detail))

    def _event(self, s: Session, ev: db.Event) -> None:
        """Record a state change; it is logged and sent to the webhooks once its transaction commits."""
        s.add(ev)
        s.info.setdefault("fleet_events", []).append(_event_doc(ev.node_id, ev.at, ev.kind, ev.old_status,
                                                                ev.new_status, ev.detail))

    def _announce(self, docs: list[dict[str, Any]]) -> None:
        """Log committed state changes and send them to the webhooks."""
        for doc in docs:
            self.log(f"node {doc['node']}: {doc['kind']}: {doc['old_status']} -> {doc['new_status']}"
                     + (f" ({doc['detail']})" if doc["detail"] else ""))
            if self.webhooks is not None:
                self.webhooks.send(doc)

    def __post_init__(self) -> None:
        from sqlalchemy import event

        self._reads = db.engine_for(self.sessions, db.READ)
        self._rounds = db.engine_for(self.sessions, db.ROUND)
        event.listen(self.sessions, "after_commit", lambda s: self._announce(s.info.pop("fleet_events", [])))
        event.listen(self.sessions, "after_rollback", lambda s: s.info.pop("fleet_events", None))
        if not self._nonce_key:
            self._nonce_key = self._shared_secret(NONCE_KEY)

    def _shared_secret(self, name: str) -> bytes:
        """A secret of the database, made by the first process that needs it and read by every other."""
        for _attempt in range(3):
            with self.sessions() as s:
                row = s.get(db.ServiceSecret, name)
                if row is not None:
                    return bytes.fromhex(row.value)
            try:
                with self.sessions.begin() as s:
                    s.add(db.ServiceSecret(name=name, value=secrets.token_hex(round_nonce.KEY_SIZE),
                                           created_at=self.now()))
            except IntegrityError:
                pass  # another process made it first: read theirs
        raise FleetError(f"the database's secret {name!r} could not be read or made")

    def nodes(self) -> list[dict[str, Any]]:
        self.sweep()
        with self.sessions() as s:
            rows = s.execute(select(db.Node, db.Image).join(db.Image).order_by(db.Node.id)).all()
            return [{"id": n.id, "image": f"{i.name}:{i.version}", "status": n.status, "hostname": n.hostname,
                     "last_attested": _iso(n.last_attested), "registered_at": _iso(n.registered_at)}
                    for n, i in rows]

    def history(self, node_id: str) -> list[dict[str, Any]]:
        with self.sessions() as s:
            if s.get(db.Node, node_id) is None:
                raise NotFound(f"no node {node_id!r}")
            rows = s.execute(select(db.Attestation, db.Image).join(db.Image, db.Attestation.image_id == db.Image.id)
                             .where(db.Attestation.node_id == node_id).order_by(db.Attestation.id)).all()
            events = s.scalars(select(db.Event).where(db.Event.node_id == node_id).order_by(db.Event.id)).all()
            out: list[dict[str, Any]] = [
                {"type": "attestation", "id": a.id, "at": _iso(a.at), "passed": a.passed, "summary": a.summary,
                 "image": f"{i.name}:{i.version}", "nonce": a.nonce} for a, i in rows]
            out += [{"type": "event", "id": e.id, "at": _iso(e.at), "kind": e.kind, "old_status": e.old_status,
                     "new_status": e.new_status, "detail": e.detail} for e in events]
            return sorted(out, key=lambda r: (r["at"] or "", r["type"], r["id"]))

    def latest(self) -> list[dict[str, Any]]:
        """Every node (as `nodes`) with its last round: `attestation` id and `report` (obelisk.report/1 JSON)."""
        rows = self.nodes()
        with self.sessions() as s:
            for row in rows:
                last = s.execute(self._JOINED.where(db.Attestation.node_id == row["id"])
                                 .order_by(db.Attestation.id.desc()).limit(1)).first()
                row["attestation"] = last[0] if last else None
                row["report"] = joined_report(*last[1:]) if last else None
        return rows

    # a round's report with its scan: joined when read (joined_report), kept once per scan (node_scans)
    _JOINED = select(db.Attestation.id, db.Attestation.report, db.NodeScan.report, db.Attestation.scan_position
                     ).outerjoin(db.NodeScan, db.Attestation.scan_id == db.NodeScan.id)

    def report(self, attestation_id: int) -> str:
        """A round's obelisk.report/1, with the findings of the scan it was judged with."""
        with self.sessions() as s:
            row = s.execute(self._JOINED.where(db.Attestation.id == attestation_id)).first()
            if row is None:
                raise NotFound(f"no attestation {attestation_id}")
            return joined_report(*row[1:])

    def audit(self) -> list[dict[str, Any]]:
        with self.sessions() as s:
            return [{"id": a.id, "at": _iso(a.at), "subject": a.subject, "action": a.action, "target": a.target,
                     "outcome": a.outcome, "detail": a.detail}
                    for a in s.scalars(select(db.Audit).order_by(db.Audit.id))]

    def sweep(self) -> list[str]:
        """Mark nodes without evidence for MISSED_INTERVALS intervals unreachable; returns their ids."""
        cutoff = self.now() - _dt.timedelta(seconds=MISSED_INTERVALS * self.interval)
        with self.sessions.begin() as s:
            stale = s.scalars(select(db.Node).where(db.Node.status.in_((TRUSTED, FAILED)),
                                                    db.Node.last_attested < cutoff).with_for_update()).all()
            for node in stale:
                self._change(s, node, UNREACHABLE, "unreachable",
                             f"no evidence since {_iso(node.last_attested)} ({MISSED_INTERVALS} intervals)")
            return [n.id for n in stale]

    def clean_up(self) -> dict[str, int]:
        """Forget what can no longer be used: expired challenges and nonces that no round refers to, and
        registrations whose TPM never answered their challenge within `registration_timeout` (the node
        record, still pending and without an AK, and its challenges; an event says so). Rounds, events,
        audit and every node that proved its AK are kept. Returns how many of each were removed."""
        now = self.now()
        kept = select(db.Attestation.nonce_id).where(db.Attestation.nonce_id.is_not(None))
        expired = delete(db.Nonce).where(db.Nonce.expires_at < now, db.Nonce.id.not_in(kept))
        cutoff = now - _dt.timedelta(seconds=self.registration_timeout)
        with self.sessions.begin() as s:
            abandoned = s.scalars(select(db.Node.id).where(db.Node.status == PENDING, db.Node.ak_record.is_(None),
                                                           db.Node.registered_at < cutoff)
                                  .with_for_update()).all()
            if abandoned:
                s.execute(delete(db.Nonce).where(db.Nonce.node_id.in_(abandoned)))
                s.execute(delete(db.Node).where(db.Node.id.in_(abandoned)))
            for node_id in abandoned:
                self._event(s, db.Event(node_id=node_id, at=now, kind="registration-expired", old_status=PENDING,
                                        new_status=None, detail=f"its TPM never answered the credential challenge "
                                                                f"within {self.registration_timeout} s"))
            removed = s.execute(expired)
            nonces = removed.rowcount if isinstance(removed, CursorResult) else 0
        return {"nonces": nonces, "registrations": len(abandoned)}

    # ---- nodes -----------------------------------------------------------------------------------

    def register(self, ek_public: bytes, ak_public: bytes, image: str, *, ek_certificate: bytes | None = None,
                 hostname: str = "", token: str = "") -> dict[str, Any]:
        """A node presents its EK and AK: the answer is a credential challenge only its TPM can open."""
        from obelisk.attest import akrecord, credential

        if self.join_tokens and not any(hmac.compare_digest(token.encode(), t.encode()) for t in self.join_tokens):
            raise Forbidden("registration refused: no valid join token")

        try:
            record = akrecord.from_public(ak_public, ek_public=ek_public, source="registration: ak_public")
            credential.ek_of(record)  # refuses a key that is not a restricted signing key bound to its TPM
        except InputError as exc:
            raise FleetError(f"registration refused: {exc}") from None
        if self.ek_ca_pem is not None:
            problem = akrecord.ek_certificate_problem(ek_public, ek_certificate, self.ek_ca_pem)
            if problem:
                raise Forbidden(f"registration refused: {problem}")
        name, _, version = image.partition(":")
        node_id = node_id_of(ek_public)
        secret, challenge = credential.make(ek_public, record.name or b"")
        now = self.now()
        with self.sessions.begin() as s:
            img = s.scalars(select(db.Image).where(db.Image.name == name, db.Image.version == version)).first()
            if img is None:
                raise NotFound(f"registration refused: image {image!r} is not registered (fleet image add)")
            node = s.get(db.Node, node_id)
            if node is None:
                node = db.Node(id=node_id, ek_public=ek_public.hex(), image_id=img.id, status=PENDING,
                               hostname=hostname[:255], registered_at=now,
                               ek_certificate=ek_certificate.hex() if ek_certificate else None)
                s.add(node)
                self._event(s, db.Event(node_id=node_id, at=now, kind="registered", old_status=None,
                                        new_status=PENDING, detail=f"image {image}"))
            # anything else the registration asks for (a new AK, another image) waits for the TPM's proof
            challenge_id = secrets.token_hex(NONCE_SIZE)
            s.add(db.Nonce(value=challenge_id, node_id=node_id, purpose=CREDENTIAL,
                           secret_sha256=hashlib.sha256(secret).hexdigest(), ak_public=ak_public.hex(),
                           image_id=img.id, issued_at=now, expires_at=now + NONCE_TTL))
        return {"node": node_id, "challenge_id": challenge_id,
                "challenge": json.loads(credential.serialize(challenge))}

    def activate(self, challenge_id: str, response: bytes) -> dict[str, Any]:
        """The node answers the challenge: its AK is proven to sit in its EK's TPM and becomes the node's AK."""
        from obelisk.attest import akrecord

        now = self.now()
        with self.sessions.begin() as s:
            row = s.scalars(select(db.Nonce).where(db.Nonce.value == challenge_id,
                                                   db.Nonce.purpose == CREDENTIAL)).first()
            if row is None:
                raise NotFound("no such registration challenge")
            if row.expires_at < now:
                raise Forbidden("registration challenge expired: register again")
            if not hmac.compare_digest(hashlib.sha256(response).hexdigest(), row.secret_sha256 or ""):
                raise Forbidden("credential activation failed: the AK is not in the EK's TPM")
            self._claim(s, row, now)
            node = s.get(db.Node, row.node_id, with_for_update=True)
            assert node is not None
            record = akrecord.from_public(bytes.fromhex(row.ak_public or ""), ek_public=bytes.fromhex(node.ek_public),
                                          activated=True)
            changed = node.ak_record is not None and json.loads(node.ak_record)["public"] != row.ak_public
            node.ak_record = akrecord.serialize(record)
            if changed:
                node.clock = node.reset_count = node.restart_count = None
                self._change(s, node, node.status, "ak-changed", "a new AK, proven by credential activation")
            else:
                self._event(s, db.Event(node_id=node.id, at=now, kind="ak-activated", old_status=node.status,
                                        new_status=node.status, detail=""))
            if row.image_id is not None and node.image_id != row.image_id:
                image = s.get(db.Image, row.image_id)
                assert image is not None
                node.image_id = row.image_id
                self._change(s, node, node.status, "image-changed", f"now runs {image.name}:{image.version}")
            if node.status == PENDING and node.id in self.ek_allowlist:
                self._change(s, node, APPROVED, "approve", "EK on the allowlist")
            return {"node": node.id, "status": node.status}

    @staticmethod
    def _claim(s: Session, row: db.Nonce, now: _dt.datetime) -> None:
        """Mark a nonce used, exactly once across every process sharing the database."""
        done = s.execute(update(db.Nonce).where(db.Nonce.id == row.id, db.Nonce.used_at.is_(None))
                         .values(used_at=now))
        # an UPDATE's result is a CursorResult, which counts the rows it changed
        if not isinstance(done, CursorResult) or done.rowcount != 1:
            raise Conflict("nonce already used: a replay")

    def issue_nonce(self, node_id: str) -> bytes:
        """A round's nonce: a MAC (fleet/nonce.py), so issuing it writes nothing; `submit` makes it single use."""
        return self.start_round(node_id).nonce

    def start_round(self, node_id: str) -> RoundStart:
        """A round's nonce (`issue_nonce`) and the digest of the scan the service holds for the node."""
        with self._reads.connect() as conn:
            row = conn.execute(_READ_ASKING, {"node_id": node_id}).first()
        if row is None:
            raise NotFound(f"unknown node {node_id!r}: register first")
        no_ak, status, held = row
        if no_ak:
            raise Forbidden(f"node {node_id} has not proven its AK (credential activation)")
        if status == PENDING:
            raise Forbidden(f"node {node_id} is pending: an operator must approve it (fleet approve)")
        return RoundStart(round_nonce.issue(self._nonce_key, node_id, self.now()), held)

    def submit(self, node_id: str, bundle: bytes, *, key_round: bool = False) -> dict[str, Any]:
        """Verify a round's evidence against the node's image; keep the result; update the node's status.

        `key_round`: the round asks for /var's key, from the initramfs (`round_rules` says what that spares).

        The verification runs outside any write transaction, on the node's row as read before it; the
        result is recorded in one transaction that locks the row, checks the nonce is still unused, and
        verifies again only if the row changed meanwhile (another round of the node, a new AK or image).
        Writers (SQLite's single one, PostgreSQL's row lock) wait for a few statements, not a verification.

        A scan named by a digest the service does not hold for the node, without its body, is refused
        with ScanNeeded (412) before anything is recorded: the node sends the round again with the body.
        A key round ignores the scan (`round_rules`).
        """
        try:
            ev, sent = split_round(bundle, f"round from {node_id}", f"evidence from {node_id}")
        except InputError as exc:
            raise FleetError(str(exc)) from None
        now = self.now()
        issued = round_nonce.issued_at(self._nonce_key, node_id, ev.nonce)
        named = None if key_round or sent is None else sent.sha256
        with self._reads.connect() as conn:
            row = conn.execute(_READ_ROUND, {"node_id": node_id, "nonce": ev.nonce.hex(), "sha256": named}).first()
            state = self._attesting(node_id, _NodeState(*row[:8]) if row is not None else None)
            if issued is None:
                self._legacy_nonce(conn, node_id, ev.nonce, now)
        assert row is not None
        self._fresh(issued, used=bool(row[8]), now=now)
        scan = None if key_round or sent is None else self._scan_of(node_id, sent, row[9], row[10])
        verified = self._verify(node_id, state, ev, scan, key_round)
        events: list[dict[str, Any]] = []
        try:
            with self._rounds.begin() as conn:
                current = self._attesting(node_id, _node_state(conn, node_id, lock=True))
                # a round nonce (a MAC) used meanwhile fails the insert below: the unique nonce column
                legacy = self._legacy_nonce(conn, node_id, ev.nonce, now) if issued is None else None
                if current.basis() != state.basis():
                    verified = self._verify(node_id, current, ev, scan, key_round)
                if legacy is not None and conn.execute(_CLAIM_NONCE.values(used_at=now),
                                                       {"nonce_id": legacy}).rowcount != 1:
                    raise Conflict("nonce already used: a replay")
                result = self._record(conn, node_id, current, ev, verified, scan, legacy, now, events)
        except IntegrityError:
            # the unique nonce: another process recorded this round between our check and our insert
            raise Conflict("nonce already used: a replay") from None
        self._announce(events)
        return result

    @staticmethod
    def _attesting(node_id: str, state: _NodeState | None) -> _NodeState:
        if state is None:
            raise NotFound(f"unknown node {node_id!r}: register first")
        if state.ak_record is None or state.status == PENDING:
            raise Forbidden(f"node {node_id} is not approved")
        return state

    @staticmethod
    def _legacy_nonce(conn: Connection, node_id: str, value: bytes, now: _dt.datetime) -> int:
        """The id of the stored, unused and unexpired row of a round nonce issued before migration 0004
        (claimed with the round); refuses a nonce this service did not issue to this node."""
        row = conn.execute(_LEGACY_NONCE, {"value": value.hex(), "node_id": node_id}).first()
        if row is None:
            raise Forbidden("evidence is not over a nonce this service issued to this node")
        row_id, used_at, expires_at = row
        if used_at is not None:
            raise Conflict("nonce already used: a replay")
        if expires_at < now:
            raise Forbidden("nonce expired: ask for a fresh one")
        return int(row_id)

    @staticmethod
    def _fresh(issued: _dt.datetime | None, *, used: bool, now: _dt.datetime) -> None:
        """Refuse a round nonce (`issued`: when this service issued it; None: a legacy one, checked apart)
        that a round already used, or an expired one."""
        if issued is None:
            return
        if used:
            raise Conflict("nonce already used: a replay")
        if now - issued > NONCE_TTL:
            raise Forbidden("nonce expired: ask for a fresh one")

    @staticmethod
    def _scan_of(node_id: str, sent: RoundScan, held_id: int | None, held_failing: str | None) -> _Scan:
        """The scan a round names: the one held with its digest (`held_id`, its failing ids `held_failing`),
        else the body sent (ScanNeeded without one)."""
        from obelisk.core import findings as fmt

        if held_id is not None and held_failing is not None:
            return _Scan(sent.sha256, tuple(json.loads(held_failing)), int(held_id), None)
        if sent.report is None:
            raise ScanNeeded(f"send the scan: this service holds no scan with sha256 {sent.sha256} for node "
                             f"{node_id}; send the round again with the scan's body")
        failing = tuple(f.id for f in sent.report.findings if f.status in fmt.FAILING)
        return _Scan(sent.sha256, failing, None, fmt.serialize(sent.report, compact=True))

    def _verify(self, node_id: str, state: _NodeState, ev: Any, scan: _Scan | None, key_round: bool) -> _Verified:
        """The verifier's checks of `ev` for a node in `state`, against its image's references (no database)."""
        from obelisk.attest import verify
        from obelisk.core import findings as fmt

        assert state.ak_record is not None
        previous = (verify.Counters(state.clock, state.reset_count or 0, state.restart_count or 0)
                    if state.clock is not None else None)
        opts = verify.Options(nonce=ev.nonce, ak=_ak_of(state.ak_record, node_id), previous=previous,
                              source=f"fleet: node {node_id}")
        refs = self._image_references(state.image_id)
        verify.apply_references(opts, refs)
        incremental = IncrementalChecker(refs, _progress_of(node_id, state.ima_progress))
        opts.ima_check = incremental
        report, counters = verify.verify(ev, opts)
        # the scan's findings belong right after the verifier's; they are kept once per scan and joined in
        # when the round is read (joined_report), so here only their failing ids count
        position = len(report.findings) if scan is not None else None
        report = replace(report, findings=report.findings + tuple(
            round_rules.node_findings(scan is not None, refs.manifest, ev.kernel, key_round=key_round,
                                      rollback=lambda: _rollback_finding(refs.manifest, ev, opts.ak))))
        split = len(report.findings) if position is None else position
        bad = [f.id for f in report.findings[:split] if f.status in fmt.FAILING]
        bad += scan.failing if scan is not None else ()
        bad += [f.id for f in report.findings[split:] if f.status in fmt.FAILING]
        passed = not bad
        summary = "all checks passed" if passed else "failed: " + ", ".join(bad)
        # only a passing round's position is kept: a failed one is checked in full next time
        progress = imaprogress.serialize(incremental.state) if passed and incremental.state is not None else None
        return _Verified(fmt.serialize(report, compact=True), passed, summary, counters, progress, position)

    def _record(self, conn: Connection, node_id: str, node: _NodeState, ev: Any, verified: _Verified,
                scan: _Scan | None, legacy: int | None, now: _dt.datetime,
                events: list[dict[str, Any]]) -> dict[str, Any]:
        """Keep a verified round (and its scan, when new) and update its node (one insert, one update; an
        event on a change of status, added to `events` to announce after the commit)."""
        scan_id = None if scan is None else scan.scan_id
        if scan is not None and scan_id is None:
            # new to us when read; another round of the node may have kept it since (the node's row is locked
            # now, so no third one can)
            held = conn.execute(_READ_SCAN, {"node_id": node_id, "sha256": scan.sha256}).first()
            if held is not None:
                scan_id = int(held[0])
            else:
                inserted = conn.execute(_INSERT_SCAN, {
                    "node_id": node_id, "sha256": scan.sha256, "report": scan.report,
                    "failing": json.dumps(list(scan.failing)), "received_at": now}).inserted_primary_key
                assert inserted is not None
                scan_id = int(inserted[0])
        conn.execute(_INSERT_ROUND, {
            "node_id": node_id, "nonce": ev.nonce.hex(), "nonce_id": legacy,
            "image_id": node.image_id, "at": now, "passed": verified.passed, "summary": verified.summary[:4000],
            "report": verified.report, "scan_id": scan_id, "scan_position": verified.scan_position})
        values: dict[str, Any] = {"last_attested": now, "hostname": ev.kernel.get("hostname", node.hostname)[:255],
                                  "ima_progress": verified.ima_progress}
        if scan is not None:
            values["scan_sha256"] = scan.sha256
        counters = verified.counters
        if verified.passed and counters is not None:
            values.update(clock=counters.clock, reset_count=counters.reset_count,
                          restart_count=counters.restart_count)
        status, change = node.status, None
        if node.status == QUARANTINED:
            pass  # only an operator lifts a quarantine; the round is kept
        elif verified.passed:
            if node.status != TRUSTED:
                status, change = TRUSTED, ("attested", verified.summary)
        elif node.status == FAILED and self._failed_in_a_row(conn, node_id) >= FAILURES_TO_QUARANTINE:
            status, change = QUARANTINED, ("auto-quarantine",
                                           f"{FAILURES_TO_QUARANTINE} failed rounds in a row; {verified.summary}")
        elif node.status != FAILED:
            status, change = FAILED, ("attestation-failed", verified.summary)
        if change is not None:
            values["status"] = status
            conn.execute(_INSERT_EVENT, {"node_id": node_id, "at": now, "kind": change[0], "old_status": node.status,
                                         "new_status": status, "detail": change[1]})
            events.append(_event_doc(node_id, now, change[0], node.status, status, change[1]))
        conn.execute(_UPDATE_NODE, {"node_key": node_id, **values})
        return {"node": node_id, "status": status, "passed": verified.passed, "summary": verified.summary}

    def release_key(self, node_id: str, bundle: bytes) -> dict[str, Any]:
        """A node's /var key, only for evidence over a fresh nonce that verifies now, and a trusted node.

        The round is verified and kept like any other (`submit`); a node that is quarantined, failed,
        pending or unknown gets nothing. The key is made on first release and kept wrapped under `kek`.
        """
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if self.kek is None:
            raise Forbidden("key release is not enabled on this service (fleet serve --kek)")
        result = self.submit(node_id, bundle, key_round=True)  # commits the round whatever it says
        now = self.now()
        with self.sessions.begin() as s:
            node = s.get(db.Node, node_id, with_for_update=True)
            assert node is not None
            if not result["passed"] or node.status != TRUSTED:
                why = f"node is {node.status}" + ("" if result["passed"] else f"; {result['summary']}")
                self._event(s, db.Event(node_id=node_id, at=now, kind="key-refused", old_status=node.status,
                                        new_status=node.status, detail=why))
                refused = Forbidden(f"key refused: {why}")
            else:
                refused = None
                aead = AESGCM(self.kek)
                row = s.get(db.NodeKey, node_id, with_for_update=True)
                if row is None:
                    key = secrets.token_bytes(32)
                    iv = secrets.token_bytes(12)
                    row = db.NodeKey(node_id=node_id, wrapped=(iv + aead.encrypt(iv, key, node_id.encode())).hex(),
                                     created_at=now, released=0)
                    s.add(row)
                else:
                    wrapped = bytes.fromhex(row.wrapped)
                    key = aead.decrypt(wrapped[:12], wrapped[12:], node_id.encode())
                row.released = (row.released or 0) + 1
                row.last_released_at = now
                self._event(s, db.Event(node_id=node_id, at=now, kind="key-released", old_status=node.status,
                                        new_status=node.status, detail=f"release {row.released}"))
        if refused is not None:
            raise refused
        return {"node": node_id, "status": TRUSTED, "key": key.hex()}

    @staticmethod
    def _failed_in_a_row(conn: Connection, node_id: str) -> int:
        recent = conn.scalars(select(db.Attestation.passed).where(db.Attestation.node_id == node_id)
                           .order_by(db.Attestation.id.desc()).limit(FAILURES_TO_QUARANTINE)).all()
        count = 0
        for passed in recent:
            if passed:
                break
            count += 1
        return count

    def _image_references(self, image_id: int) -> References:
        """The verifier's references from a registered manifest (its signature was checked at `image add`)."""
        refs = self._references.get(image_id)
        if refs is not None:
            return refs
        from obelisk.attest.ima_check import References
        from obelisk.core.findings import Finding, Severity, Status
        from obelisk.image import manifest as mf

        with self.sessions() as s:
            img = s.get(db.Image, image_id)
        assert img is not None
        m = mf.parse(img.manifest.encode(), f"image {img.name}:{img.version}")
        sig = mf.ManifestSignature.loads(img.signature.encode(), f"image {img.name}:{img.version} signature")
        signed = Finding(id="attest.reference.signature", title="Reference manifest is signed by the customer CA",
                         status=Status.PASS, severity=Severity.CRITICAL, benchmark="attestation", section="reference",
                         detail=f"checked at fleet image add; signer {img.signer}")
        refs = References(ima_reference=m.ima_reference, predicted=dict(m.pcrs.predicted),
                          boot_predictions=tuple(m.pcrs.predictions),
                          keyring=_image_keyring([(f"{img.name}:{img.version} manifest signer", sig.certificate)]),
                          findings=[signed], manifest=m)
        self._references[image_id] = refs
        return refs


def open_fleet(url: str, ca_pem: bytes, **options: Any) -> Fleet:
    """The fleet over the database at `url` (migrated first), checking manifests against the CA in `ca_pem`."""
    from cryptography import x509

    try:
        ca = x509.load_pem_x509_certificate(ca_pem)
    except ValueError as exc:
        raise InputError(f"customer CA is not a PEM certificate: {exc}") from None
    kek = options.get("kek")
    if kek is not None and len(kek) != 32:
        raise InputError("the key-encryption key must be 32 bytes (64 hex digits)")
    return Fleet(db.open_database(url), ca, **options)

