"""`obelisk upgrade URL OUT`: stream a built image to a node's agent, wait for its trial boot, attest.

The stream is the one `attest/upgrade.py` reads: the signed manifest, then slot a's partitions of
OUT/disk.raw (the root, the boot partition, the hash tree last). The agent verifies before writing;
this side only frames the bytes and times the steps: stream (sending, which is also the node's
writing: the agent writes as the bytes arrive), reboot (until the agent answers again from the new
slot, committed, or from the old one with the trial recorded as failed), attest (optional).

`preflight` (`obelisk upgrade --check`) says before anything is written whether the new image will
open this node's /var: PCR 7 as the node's firmware measured it (its current event log) against the
PCR 7 the new image's /var policy expects, and the node's rollback floor against the new image's
rollback index.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.attest import agent_client
from obelisk.attest.upgrade import BOOT_PART, ROOT_PART, VERITY_PART, frame_header
from obelisk.core import https
from obelisk.core.errors import InputError
from obelisk.core.inputs import read_bounded
from obelisk.image import disk_image, manifest

_CHUNK = 1 << 20


@dataclass(frozen=True)
class StreamPart:
    name: str
    path: Path
    offset: int
    length: int


def stream_parts(out: Path) -> tuple[bytes, bytes, list[StreamPart]]:
    """The manifest, its signature and the parts of OUT to send, checked to exist and fit."""
    mpath, spath = out / manifest.MANIFEST, out / manifest.SIGNATURE
    if not mpath.is_file() or not spath.is_file():
        raise InputError("not a finished obelisk image (manifest.json and manifest.json.sig)", source=str(out))
    data = read_bounded(mpath, "image manifest", manifest.MAX_MANIFEST_BYTES)
    sig = read_bounded(spath, "manifest signature", 1 << 20)
    m = manifest.parse(data, str(mpath))
    layout = m.boot.disk_image
    if layout is None:
        raise InputError("boot.disk_image: the image has no disk.raw to upgrade from", source=str(mpath))
    try:
        esp = layout.partition(disk_image.ESP)
    except KeyError:
        raise InputError("boot.disk_image: no esp partition", source=str(mpath)) from None
    parts = []
    for name, path, offset, length in ((ROOT_PART, out / ROOT_PART, 0, None),
                                       (BOOT_PART, out / "disk.raw", esp.start, esp.size),
                                       (VERITY_PART, out / VERITY_PART, 0, None)):
        if not path.is_file():
            raise InputError(f"missing {path.name}", source=str(out))
        size = path.stat().st_size
        if length is None:
            length = size
        if offset + length > size:
            raise InputError(f"{path.name} is shorter than the manifest's layout", source=str(path))
        parts.append(StreamPart(name, path, offset, length))
    return data, sig, parts


def body(data: bytes, sig: bytes, parts: list[StreamPart], progress: Callable[[int], None]) -> Iterator[bytes]:
    yield frame_header(manifest.MANIFEST, len(data)) + data
    yield frame_header(manifest.SIGNATURE, len(sig)) + sig
    for part in parts:
        yield frame_header(part.name, part.length)
        with open(part.path, "rb") as handle:
            handle.seek(part.offset)
            left = part.length
            while left:
                chunk = handle.read(min(_CHUNK, left))
                if not chunk:
                    raise InputError(f"{part.path.name} shrank while being sent", source=str(part.path))
                left -= len(chunk)
                progress(len(chunk))
                yield chunk


def total_length(data: bytes, sig: bytes, parts: list[StreamPart]) -> int:
    headers = sum(len(frame_header(n, 0)) for n in (manifest.MANIFEST, manifest.SIGNATURE, *(p.name for p in parts)))
    return headers + len(data) + len(sig) + sum(p.length for p in parts)


@dataclass
class UpgradeResult:
    url: str
    image: str
    version: str
    outcome: str  # "committed" | "rolled-back" | "refused" | "timeout" | "written" (no wait)
    slot: str | None = None
    bytes_sent: int = 0
    bytes_written: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # stream, reboot, attest
    detail: str = ""
    status: dict[str, Any] | None = None  # the agent's /v1/upgrade after the reboot

    def to_json(self) -> dict[str, Any]:
        return {"url": self.url, "image": self.image, "version": self.version, "outcome": self.outcome,
                "slot": self.slot, "bytes_sent": self.bytes_sent, "bytes_written": self.bytes_written,
                "seconds": {k: round(v, 3) for k, v in self.seconds.items()}, "detail": self.detail,
                "status": self.status}


def send(endpoint: agent_client.AgentEndpoint, out: Path, progress: Callable[[int], None] = lambda n: None,
         ) -> tuple[int, dict[str, Any], int, float]:
    """POST the image; (HTTP status, the agent's JSON answer, bytes sent, seconds)."""
    import json

    data, sig, parts = stream_parts(out)
    length = total_length(data, sig, parts)
    began = time.monotonic()
    try:
        status, raw = https.exchange(endpoint.url, endpoint.context(), "POST", "/v1/upgrade",
                                     body=body(data, sig, parts, progress),
                                     headers={"Content-Length": str(length),
                                              "Content-Type": "application/octet-stream"},
                                     timeout=max(endpoint.timeout, 300.0), default_port=8443, limit=1 << 20,
                                     what="agent")
    except https.TransportError as exc:
        raise agent_client.AgentError(str(exc)) from None
    try:
        answer = json.loads(raw)
    except ValueError:
        answer = {"error": raw[:200].decode(errors="replace")}
    return status, answer if isinstance(answer, dict) else {}, length, time.monotonic() - began


def wait_for_slot(endpoint: agent_client.AgentEndpoint, target: str, timeout: float,
                  sleep: Callable[[float], None] = time.sleep) -> tuple[str, dict[str, Any] | None]:
    """After the reboot: ("committed", status) once the agent answers from `target` committed;
    ("rolled-back", status) when it answers from the other slot with the trial recorded as failed."""
    import json

    end = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    sleep(5.0)  # the agent answers until the node reboots (two seconds after its answer)
    while time.monotonic() < end:
        try:
            status, raw = endpoint.get("/v1/upgrade")
        except agent_client.AgentError:
            sleep(2.0)
            continue
        if status == 200:
            last = json.loads(raw)
            if last.get("booted") == target and last.get("committed") == target and not last.get("in_trial"):
                return "committed", last
            failed = (last.get("last_trial") or {}).get("result") == "failed"
            if last.get("booted") != target and failed and not last.get("trial"):
                return "rolled-back", last
        sleep(2.0)
    return "timeout", last


def upgrade_node(endpoint: agent_client.AgentEndpoint, out: Path, *, wait: float = 900.0,
                 progress: Callable[[int], None] = lambda n: None,
                 attest: Callable[[], bool] | None = None) -> UpgradeResult:
    m = manifest.load(out / manifest.MANIFEST)
    # the role and the node's state first: a refusal costs one request, not the image's bytes
    status, raw = endpoint.get("/v1/upgrade")
    if status != 200:
        import json

        try:
            reason = json.loads(raw).get("error", "")
        except (ValueError, AttributeError):
            reason = raw[:200].decode(errors="replace")
        return UpgradeResult(url=endpoint.url, image=m.image.name, version=m.image.version, outcome="refused",
                             detail=f"agent answered {status}: {reason}")
    status, answer, sent, seconds = send(endpoint, out, progress)
    result = UpgradeResult(url=endpoint.url, image=m.image.name, version=m.image.version, outcome="refused",
                           bytes_sent=sent, seconds={"stream": seconds})
    if status != 200:
        result.detail = f"agent answered {status}: {answer.get('error', '')}"
        result.bytes_written = int(answer.get("bytes_written") or 0)
        return result
    result.slot = str(answer.get("slot"))
    result.bytes_written = int(answer.get("bytes_written") or 0)
    result.seconds["write"] = float(answer.get("receive_write_seconds") or 0.0)
    if wait <= 0:
        result.outcome = "written"
        return result
    began = time.monotonic()
    result.outcome, result.status = wait_for_slot(endpoint, result.slot, wait)
    result.seconds["reboot"] = time.monotonic() - began
    if result.outcome == "rolled-back":
        result.detail = f"the trial boot of slot {result.slot} did not commit: the node went back by itself"
    elif result.outcome == "timeout":
        result.detail = f"the node did not answer from a committed slot within {wait:g} s"
    if result.outcome == "committed" and attest is not None:
        began = time.monotonic()
        ok = attest()
        result.seconds["attest"] = time.monotonic() - began
        if not ok:
            result.outcome, result.detail = "attest-failed", "the upgraded node did not attest as the new image"
    return result


def preflight(endpoint: agent_client.AgentEndpoint, out: Path, *, ak: str | None = None) -> Any:
    """`obelisk upgrade --check`: will the new image open this node's /var? A Report (core.findings), nothing
    written: PCR 7 as the node's firmware measured it this boot (its event log, replayed) against what the new
    image expects /var's key to open under, and the node's rollback floor against the new rollback index.
    Needs the reader role (the node's evidence); with `ak` the floor's certification is checked too."""
    from obelisk.attest import akrecord
    from obelisk.attest import evidence as evmod
    from obelisk.core.findings import Finding, Report, Severity, Status, Subject
    from obelisk.tpm import eventlog, nvcertify
    from obelisk.tpm import rollback_policy as rp

    m = manifest.load(out / manifest.MANIFEST)
    nonce = agent_client.fresh_nonce()
    bundle = evmod.parse(endpoint.evidence(nonce), source=f"{endpoint.url}/v1/evidence")
    findings: list[Finding] = []
    wanted = m.disk.sealed_to.get(7) if m.disk.sealed_to else None
    if wanted is None and 7 in m.pcrs.predicted:
        wanted = m.pcrs.predicted[7]
    title7 = "PCR 7 (Secure Boot state) on this node is what the new image expects"
    if wanted is None:
        findings.append(Finding(id="upgrade.check.pcr7", title=title7, status=Status.SKIP,
                                detail="the new image predicts no PCR 7 (built without Secure Boot)"))
    elif bundle.event_log is None:
        findings.append(Finding(id="upgrade.check.pcr7", title=title7, status=Status.ERROR, severity=Severity.HIGH,
                                detail="the node sent no firmware event log"))
    else:
        now = eventlog.replay(eventlog.parse(bundle.event_log, "event log")).value(m.pcrs.bank, 7)
        ok = now == wanted
        findings.append(Finding(id="upgrade.check.pcr7", title=title7, status=Status.PASS if ok else Status.FAIL,
                                severity=Severity.HIGH, observed=now.hex(), expected=wanted.hex(),
                                detail="" if ok else "the node's firmware measures another Secure Boot state than the "
                                "new image was built for (a db/dbx or firmware update?): its /var would stay locked "
                                "under the new image"))
    title_rb = "the node's rollback floor lets the new image open /var"
    if m.disk.rollback_index is None:
        findings.append(Finding(id="upgrade.check.rollback", title=title_rb, status=Status.SKIP,
                                detail="the new image has no rollback index"))
    elif bundle.rollback_floor is None:
        findings.append(Finding(id="upgrade.check.rollback", title=title_rb, status=Status.PASS,
                                observed="no floor certified", expected=f"floor <= {m.disk.rollback_index}",
                                detail="the node has no rollback floor yet"))
    elif ak is not None:
        record = akrecord.parse(read_bounded(ak, "AK record", 1 << 20), ak)
        found = agent_client.image_rollback_finding(m, bundle.rollback_floor, nonce, record.public_key)
        from dataclasses import replace

        findings.append(replace(found, id="upgrade.check.rollback", title=title_rb))
    else:
        attest = nvcertify.parse(bundle.rollback_floor[0], "rollback_floor.attest")
        floor = rp.rollback_index_of(int.from_bytes(attest.contents, "big"))
        ok = floor <= m.disk.rollback_index
        findings.append(Finding(id="upgrade.check.rollback", title=title_rb, status=Status.PASS if ok else Status.FAIL,
                                severity=Severity.HIGH, observed=f"floor {floor}",
                                expected=f"floor <= {m.disk.rollback_index}",
                                detail=("" if ok else f"the node's floor is {floor}, above the new image's rollback "
                                        f"index {m.disk.rollback_index}: /var would stay locked")
                                + " (certification not checked: no --ak)"))
    subject = Subject("node", f"{m.image.name} {m.image.version} @ {endpoint.url}")
    return Report(findings=tuple(findings), subject=subject, command="upgrade --check")
