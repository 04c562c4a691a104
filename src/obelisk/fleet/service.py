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
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import CursorResult, select, update
from sqlalchemy.orm import Session, sessionmaker

from obelisk.attest.ima_check import IncrementalChecker
from obelisk.core.errors import InputError, ObeliskError
from obelisk.fleet import db, round_rules
from obelisk.ima_policy import progress as imaprogress

if TYPE_CHECKING:
    from cryptography import x509

    from obelisk.attest.ima_check import References
    from obelisk.core.findings import Report

def _progress_of(node: db.Node) -> imaprogress.ImaProgress | None:
    """The node's saved IMA position; an unreadable one (an older obelisk's) only costs a full check."""
    if not node.ima_progress:
        return None
    try:
        return imaprogress.parse(node.ima_progress, f"node {node.id} ima_progress")
    except InputError:
        return None


PENDING, APPROVED, TRUSTED, FAILED, QUARANTINED, UNREACHABLE = (
    "pending", "approved", "trusted", "failed", "quarantined", "unreachable")
STATUSES = (PENDING, APPROVED, TRUSTED, FAILED, QUARANTINED, UNREACHABLE)
ROUND, CREDENTIAL = "round", "credential"
NONCE_SIZE = 32
NONCE_TTL = _dt.timedelta(minutes=5)
MISSED_INTERVALS = 3  # no evidence within this many intervals: unreachable
FAILURES_TO_QUARANTINE = 2  # consecutive failed rounds


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


def split_round(body: bytes, source: str) -> tuple[bytes, Report | None]:
    """A round's body: a bare evidence bundle, or {"schema": obelisk.fleet-round/1, "evidence": {...},
    "scan": obelisk.report/1 | null} when the node adds its CIS/STIG scan."""
    from obelisk.core import findings as fmt

    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise InputError("round is not JSON", source=source) from None
    if not isinstance(doc, dict) or doc.get("schema") != ROUND_SCHEMA:
        return body, None
    extra = sorted(set(doc) - {"schema", "evidence", "scan"})
    if extra or not isinstance(doc.get("evidence"), dict):
        raise InputError(f"{extra[0] if extra else 'evidence'}: " + ("unknown field" if extra else "expected an "
                                                                     "object"), source=source)
    scan = doc.get("scan")
    report = fmt.parse(json.dumps(scan), f"{source}: scan") if scan is not None else None
    return json.dumps(doc["evidence"]).encode(), report


def node_id_of(ek_public: bytes) -> str:
    """A node's id: the first 16 hex digits of its EK's name digest (stable for the TPM's life)."""
    from obelisk.attest.akrecord import name_of

    return "n" + name_of(ek_public)[2:].hex()[:16]


def _iso(t: _dt.datetime | None) -> str | None:
    return t.astimezone(_dt.UTC).isoformat().replace("+00:00", "Z") if t else None


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
    _references: dict[int, References] = field(default_factory=dict)

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
        s.info.setdefault("fleet_events", []).append({
            "node": ev.node_id, "at": _iso(ev.at), "kind": ev.kind, "old_status": ev.old_status,
            "new_status": ev.new_status, "detail": ev.detail})

    def _committed(self, s: Session) -> None:
        for doc in s.info.pop("fleet_events", []):
            self.log(f"node {doc['node']}: {doc['kind']}: {doc['old_status']} -> {doc['new_status']}"
                     + (f" ({doc['detail']})" if doc["detail"] else ""))
            if self.webhooks is not None:
                self.webhooks.send(doc)

    def __post_init__(self) -> None:
        from sqlalchemy import event

        event.listen(self.sessions, "after_commit", self._committed)
        event.listen(self.sessions, "after_rollback", lambda s: s.info.pop("fleet_events", None))

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
            rows = s.execute(select(db.Attestation, db.Image, db.Nonce).join(db.Image, db.Attestation.image_id ==
                                                                             db.Image.id)
                             .join(db.Nonce, db.Attestation.nonce_id == db.Nonce.id)
                             .where(db.Attestation.node_id == node_id).order_by(db.Attestation.id)).all()
            events = s.scalars(select(db.Event).where(db.Event.node_id == node_id).order_by(db.Event.id)).all()
            out: list[dict[str, Any]] = [
                {"type": "attestation", "id": a.id, "at": _iso(a.at), "passed": a.passed, "summary": a.summary,
                 "image": f"{i.name}:{i.version}", "nonce": n.value} for a, i, n in rows]
            out += [{"type": "event", "id": e.id, "at": _iso(e.at), "kind": e.kind, "old_status": e.old_status,
                     "new_status": e.new_status, "detail": e.detail} for e in events]
            return sorted(out, key=lambda r: (r["at"] or "", r["type"], r["id"]))

    def latest(self) -> list[dict[str, Any]]:
        """Every node (as `nodes`) with its last round: `attestation` id and `report` (obelisk.report/1 JSON)."""
        rows = self.nodes()
        with self.sessions() as s:
            for row in rows:
                last = s.scalars(select(db.Attestation).where(db.Attestation.node_id == row["id"])
                                 .order_by(db.Attestation.id.desc()).limit(1)).first()
                row["attestation"] = last.id if last else None
                row["report"] = last.report if last else None
        return rows

    def report(self, attestation_id: int) -> str:
        with self.sessions() as s:
            a = s.get(db.Attestation, attestation_id)
            if a is None:
                raise NotFound(f"no attestation {attestation_id}")
            return a.report

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
        now = self.now()
        with self.sessions.begin() as s:
            node = s.get(db.Node, node_id)
            if node is None:
                raise NotFound(f"unknown node {node_id!r}: register first")
            if node.ak_record is None:
                raise Forbidden(f"node {node_id} has not proven its AK (credential activation)")
            if node.status == PENDING:
                raise Forbidden(f"node {node_id} is pending: an operator must approve it (fleet approve)")
            nonce = secrets.token_bytes(NONCE_SIZE)
            s.add(db.Nonce(value=nonce.hex(), node_id=node_id, purpose=ROUND, issued_at=now,
                           expires_at=now + NONCE_TTL))
        return nonce

    def submit(self, node_id: str, bundle: bytes, *, key_round: bool = False) -> dict[str, Any]:
        """Verify a round's evidence against the node's image; keep the result; update the node's status.

        `key_round`: the round asks for /var's key, from the initramfs (`round_rules` says what that spares)."""
        from obelisk.attest import akrecord, verify
        from obelisk.attest import evidence as evmod
        from obelisk.core import findings as fmt

        try:
            evidence_bytes, scan = split_round(bundle, f"round from {node_id}")
            ev = evmod.parse(evidence_bytes, source=f"evidence from {node_id}")
        except InputError as exc:
            raise FleetError(str(exc)) from None
        now = self.now()
        with self.sessions.begin() as s:
            node = s.get(db.Node, node_id, with_for_update=True)
            if node is None:
                raise NotFound(f"unknown node {node_id!r}: register first")
            if node.ak_record is None or node.status == PENDING:
                raise Forbidden(f"node {node_id} is not approved")
            row = s.scalars(select(db.Nonce).where(db.Nonce.value == ev.nonce.hex(), db.Nonce.purpose == ROUND,
                                                   db.Nonce.node_id == node_id)).first()
            if row is None:
                raise Forbidden("evidence is not over a nonce this service issued to this node")
            if row.used_at is not None:
                raise Conflict("nonce already used: a replay")
            if row.expires_at < now:
                raise Forbidden("nonce expired: ask for a fresh one")
            self._claim(s, row, now)
            record = akrecord.parse(node.ak_record.encode(), f"node {node_id} AK")
            previous = (verify.Counters(node.clock, node.reset_count or 0, node.restart_count or 0)
                        if node.clock is not None else None)
            opts = verify.Options(nonce=bytes.fromhex(row.value), ak=record, previous=previous,
                                  source=f"fleet: node {node_id}")
            refs = self._image_references(s, node.image_id)
            verify.apply_references(opts, refs)
            incremental = IncrementalChecker(refs, _progress_of(node))
            opts.ima_check = incremental
            report, counters = verify.verify(ev, opts)
            report = replace(report, findings=report.findings + tuple(
                round_rules.node_findings(scan, refs.manifest, ev.kernel, key_round=key_round)))
            passed = not report.failed
            bad = [f.id for f in report.findings if f.status.value in ("fail", "error")]
            summary = "all checks passed" if passed else "failed: " + ", ".join(bad)
            s.add(db.Attestation(node_id=node_id, nonce_id=row.id, image_id=node.image_id, at=now, passed=passed,
                                 summary=summary[:4000], report=fmt.serialize(report)))
            node.last_attested = now
            node.hostname = ev.kernel.get("hostname", node.hostname)[:255]
            if passed and counters is not None:
                node.clock, node.reset_count, node.restart_count = (counters.clock, counters.reset_count,
                                                                    counters.restart_count)
            # only a passing round's position is kept: a failed one is checked in full next time
            node.ima_progress = (imaprogress.serialize(incremental.state)
                                 if passed and incremental.state is not None else None)
            if node.status == QUARANTINED:
                pass  # only an operator lifts a quarantine; the round is kept
            elif passed:
                if node.status != TRUSTED:
                    self._change(s, node, TRUSTED, "attested", summary)
            elif node.status == FAILED and self._failed_in_a_row(s, node_id) >= FAILURES_TO_QUARANTINE:
                self._change(s, node, QUARANTINED, "auto-quarantine",
                             f"{FAILURES_TO_QUARANTINE} failed rounds in a row; {summary}")
            elif node.status != FAILED:
                self._change(s, node, FAILED, "attestation-failed", summary)
            return {"node": node_id, "status": node.status, "passed": passed, "summary": summary}

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
    def _failed_in_a_row(s: Session, node_id: str) -> int:
        s.flush()
        recent = s.scalars(select(db.Attestation.passed).where(db.Attestation.node_id == node_id)
                           .order_by(db.Attestation.id.desc()).limit(FAILURES_TO_QUARANTINE)).all()
        count = 0
        for passed in recent:
            if passed:
                break
            count += 1
        return count

    def _image_references(self, s: Session, image_id: int) -> References:
        """The verifier's references from a registered manifest (its signature was checked at `image add`)."""
        refs = self._references.get(image_id)
        if refs is not None:
            return refs
        from obelisk.attest.ima_check import References
        from obelisk.core.findings import Finding, Severity, Status
        from obelisk.ima_policy.keyring import Keyring
        from obelisk.image import manifest as mf

        img = s.get(db.Image, image_id)
        assert img is not None
        m = mf.parse(img.manifest.encode(), f"image {img.name}:{img.version}")
        sig = mf.ManifestSignature.loads(img.signature.encode(), f"image {img.name}:{img.version} signature")
        signed = Finding(id="attest.reference.signature", title="Reference manifest is signed by the customer CA",
                         status=Status.PASS, severity=Severity.CRITICAL, benchmark="attestation", section="reference",
                         detail=f"checked at fleet image add; signer {img.signer}")
        refs = References(ima_reference=m.ima_reference, predicted=dict(m.pcrs.predicted),
                          boot_predictions=tuple(m.pcrs.predictions),
                          keyring=Keyring([(f"{img.name}:{img.version} manifest signer", sig.certificate)]),
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

