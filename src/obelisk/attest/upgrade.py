"""The node agent's upgrade endpoint (`POST /v1/upgrade`, operator role) and the node's side of a trial boot.

The stream (`Content-Length` bytes) is a sequence of frames, each a 4-byte big-endian name length, the
name (ASCII), an 8-byte big-endian length and that many bytes, in this order:

    manifest.json, manifest.json.sig     the new image's signed manifest
    rootfs.squashfs                      the root (sha256 and size: the manifest's artifact)
    esp                                  the boot partition, whole (sha256: the manifest's disk layout)
    rootfs.verity                        the hash tree, last (the manifest's artifact)

Before a byte is written the agent checks the manifest's signature chains to the customer CA (the CA
its clients chain to), that it is this node's image (name) and that the new disk layout puts the
inactive slot where this node's disk has it. Each part is hashed as it is written into the inactive
slot; the slot's hash tree was zeroed first and is written last, so a slot cut short matches no root
hash, and no boot entry points at it before every digest matched. Then the slot's one trial boot is
set (`image/slots.py`) and the node reboots. A 2 GiB root would not fit a node's RAM: the parts go
to the inactive slot as they arrive instead of being staged, and are not bootable until verified.

The trial boot: `on_boot` (run by obelisk-init before /var is unlocked) records a trial that the
firmware went back from as failed, erases /var when the new image's `upgrade.preserve_var` is false,
and starts the deadline guard; the agent commits the slot once it is serving and its self-check
passed (`commit_when_up`). The rollback floor is not raised on a trial boot (`disk/unlock.py`).
"""

from __future__ import annotations

import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509

from obelisk.core.errors import InputError
from obelisk.image import disk_image, efiboot, manifest, slots

ROOT_PART, BOOT_PART, VERITY_PART = "rootfs.squashfs", "esp", "rootfs.verity"
ORDER = (manifest.MANIFEST, manifest.SIGNATURE, ROOT_PART, BOOT_PART, VERITY_PART)
MAX_SIGNATURE = 1 << 20
MAX_NAME = 64
TRIAL_MARKER = "/run/obelisk/trial"
BOOT_EVENTS = "/run/obelisk/boot-events"


class Refused(Exception):
    """The upgrade was refused; `written` says whether any byte reached the inactive slot."""

    def __init__(self, code: int, message: str, written: int = 0):
        super().__init__(message)
        self.code = code
        self.written = written


# ---- the stream --------------------------------------------------------------------------------

def frame_header(name: str, length: int) -> bytes:
    raw = name.encode("ascii")
    return struct.pack(">I", len(raw)) + raw + struct.pack(">Q", length)


def _exact(stream: slots.Reader, n: int, what: str) -> bytes:
    data = b""
    while len(data) < n:
        chunk = stream.read(n - len(data))
        if not chunk:
            raise Refused(400, f"the stream ended inside {what}")
        data += chunk
    return data


def read_header(stream: slots.Reader, expected: str) -> int:
    """The next frame's length; refuses a frame other than `expected`."""
    (size,) = struct.unpack(">I", _exact(stream, 4, "a frame header"))
    if not 0 < size <= MAX_NAME:
        raise Refused(400, f"frame name of {size} bytes")
    name = _exact(stream, size, "a frame name").decode("ascii", errors="replace")
    if name != expected:
        raise Refused(400, f"frame {name!r} where {expected!r} was expected (order: {', '.join(ORDER)})")
    (length,) = struct.unpack(">Q", _exact(stream, 8, "a frame length"))
    return length


class _Limited:
    """At most `left` bytes of `stream` (the request body)."""

    def __init__(self, stream: slots.Reader, left: int):
        self.stream, self.left = stream, left

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        if n <= 0:
            return b""
        data = self.stream.read(n)
        self.left -= len(data)
        return data


# ---- checks before writing ---------------------------------------------------------------------

def issued_by(cert: x509.Certificate, ca: x509.Certificate) -> str | None:
    """None if `ca` signed `cert` and is a CA; else why not. What `manifest.chains_to` checks, with only
    what a Debian 12 node's cryptography (38: no `verify_directly_issued_by`, no `x509.verification`) has."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if cert.issuer != ca.subject:
        return f"issued by {cert.issuer.rfc4514_string()}, not by {ca.subject.rfc4514_string()}"
    key, algorithm = ca.public_key(), cert.signature_hash_algorithm
    if algorithm is None:
        return "no signature hash algorithm"
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        else:
            return f"CA key type {type(key).__name__} not accepted"
    except (InvalidSignature, ValueError):
        return "signature by the CA does not verify"
    try:
        if not ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca:
            return "the CA certificate is not a CA (basicConstraints)"
    except x509.ExtensionNotFound:
        return "the CA certificate has no basicConstraints"
    return None


def verified_manifest(data: bytes, signature: bytes, ca: x509.Certificate, image: str) -> manifest.Manifest:
    """The manifest, if signed by a key the customer CA issued and for this node's image; else Refused(403)."""
    try:
        sig = manifest.ManifestSignature.loads(signature, manifest.SIGNATURE)
        m = manifest.parse(data, manifest.MANIFEST)
    except InputError as exc:
        raise Refused(400, str(exc)) from None
    reason = issued_by(sig.certificate, ca)
    if reason is not None:
        raise Refused(403, f"the manifest's signing certificate is not the customer CA's: {reason}")
    if not manifest.check_signature(data, sig):
        raise Refused(403, "the manifest's signature does not match it")
    if image and m.image.name != image:
        raise Refused(409, f"the image is {m.image.name!r}, this node runs {image!r}")
    if m.boot.disk_image is None:
        raise Refused(409, "the image has no disk layout (built without a UKI)")
    for name in (ROOT_PART, VERITY_PART):
        if name not in m.artifacts:
            raise Refused(409, f"the manifest lists no {name}")
    return m


def parts_of(m: manifest.Manifest, slot: str) -> dict[str, slots.Part]:
    """What each frame must hash to, and which partition of `slot` it goes to."""
    s = disk_image.SLOTS[slot]
    layout = m.boot.disk_image
    assert layout is not None
    esp = layout.partition(disk_image.ESP)
    if esp.sha256 is None:
        raise Refused(409, "the manifest has no digest for the boot partition")
    root, verity = m.artifacts[ROOT_PART], m.artifacts[VERITY_PART]
    return {ROOT_PART: slots.Part(s.root, root.size, root.sha256), BOOT_PART: slots.Part(s.boot, esp.size, esp.sha256),
            VERITY_PART: slots.Part(s.verity, verity.size, verity.sha256)}


def spec_upgrade(m: manifest.Manifest) -> dict[str, Any]:
    section = m.spec.get("upgrade") if isinstance(m.spec, dict) else None
    return section if isinstance(section, dict) else {}


def read_table(disk: str) -> disk_image.GptTable:
    """The node disk's GPT (a block device or a disk image; mapped read-only, only the table is read)."""
    import mmap

    with open(disk, "rb") as handle:
        size = handle.seek(0, os.SEEK_END)
        with mmap.mmap(handle.fileno(), size, access=mmap.ACCESS_READ) as view:
            return disk_image.parse_gpt(view, disk)


# ---- the endpoint ------------------------------------------------------------------------------

@dataclass
class Node:
    """Where the node keeps what an upgrade touches; tests point these at files."""

    disk: str
    efivars: efiboot.EfiVars
    slot_file: str = slots.SLOT_FILE
    reboot: Callable[[], None] | None = None  # after the answer was sent


@dataclass(frozen=True)
class Result:
    slot: str
    image: str
    version: str
    bytes_written: int
    receive_write_seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"slot": self.slot, "image": self.image, "version": self.version, "bytes_written": self.bytes_written,
                "receive_write_seconds": round(self.receive_write_seconds, 3), "rebooting": True}


def upgrade(stream: slots.Reader, length: int, *, node: Node, ca: x509.Certificate, image: str,
            log: Callable[[str], None] = lambda line: None, now: Callable[[], float] = time.time) -> Result:
    """Verify, write the inactive slot, set its trial boot. Raises Refused (nothing activated)."""
    body = _Limited(stream, length)
    began = time.monotonic()
    data = _exact(body, min(read_header(body, manifest.MANIFEST), manifest.MAX_MANIFEST_BYTES + 1), "the manifest")
    if len(data) > manifest.MAX_MANIFEST_BYTES:
        raise Refused(413, f"manifest over {manifest.MAX_MANIFEST_BYTES} bytes")
    sig_length = read_header(body, manifest.SIGNATURE)
    if sig_length > MAX_SIGNATURE:
        raise Refused(413, f"manifest signature over {MAX_SIGNATURE} bytes")
    m = verified_manifest(data, _exact(body, sig_length, "the signature"), ca, image)
    try:
        booted = slots.booted_slot(node.slot_file)
        target = slots.other(booted)
        table = read_table(node.disk)
        layout = m.boot.disk_image
        assert layout is not None
        slots.check_layout(table, layout, target)
    except (slots.SlotError, InputError) as exc:
        raise Refused(409, str(exc)) from None
    state = slots.state(node.efivars, booted)
    if state.in_trial:
        raise Refused(409, f"slot {booted} is on its trial boot: it must commit before another upgrade")
    expected = parts_of(m, target)
    writer = slots.SlotWriter(node.disk, table)
    log(f"upgrade to {m.image.name} {m.image.version}: manifest verified, writing slot {target}")
    try:
        writer.invalidate(target)
        for name in (ROOT_PART, BOOT_PART, VERITY_PART):
            part = expected[name]
            if read_header(body, name) != part.length:
                raise Refused(400, f"{name}: the stream's length differs from the manifest's {part.length} bytes",
                              writer.written)
            writer.write(part, body)
    except slots.SlotError as exc:
        _wipe(writer, target)
        raise Refused(422, str(exc), writer.written) from None
    except Refused as exc:
        _wipe(writer, target)
        exc.written = writer.written
        raise
    except OSError as exc:
        _wipe(writer, target)
        raise Refused(500, f"writing slot {target}: {exc}", writer.written) from None
    settings = spec_upgrade(m)
    record = slots.TrialRecord(slot=target, image=m.image.name, version=m.image.version, started=int(now()),
                               deadline=int(settings.get("trial_seconds") or 300),
                               preserve_var=bool(settings.get("preserve_var", True)))
    slots.start_trial(node.efivars, table, booted, record)
    log(f"slot {target} written ({writer.written} bytes) and verified: its trial boot is next")
    return Result(slot=target, image=m.image.name, version=m.image.version, bytes_written=writer.written,
                  receive_write_seconds=time.monotonic() - began)


def _wipe(writer: slots.SlotWriter, slot: str) -> None:
    try:
        writer.invalidate(slot)
    except (OSError, slots.SlotError):
        pass


def status(node: Node) -> dict[str, Any]:
    booted = slots.booted_slot(node.slot_file)
    return slots.state(node.efivars, booted).to_json()


# ---- the node's side of the trial ---------------------------------------------------------------

def reboot_now() -> None:
    """sync, then reboot(2) (PID 1 is a shell: no init to ask)."""
    import ctypes

    os.sync()
    libc = ctypes.CDLL(None, use_errno=True)
    libc.reboot(0x01234567)  # LINUX_REBOOT_CMD_RESTART


def on_boot(node: Node, var_device: str | None, log: Callable[[str], None],
            marker: str = TRIAL_MARKER) -> slots.SlotState | None:
    """obelisk-init, before /var: a trial the firmware went back from is recorded as failed; on the trial
    boot itself the marker (with its deadline) is written and /var erased if the image does not keep it."""
    if not node.efivars.available() or not os.path.exists(node.slot_file):
        return None
    booted = slots.booted_slot(node.slot_file)
    before = slots.state(node.efivars, booted)
    after = slots.record_boot(node.efivars, booted)
    if before.trial is not None and not after.trial:
        log(f"trial boot of slot {before.trial.slot} ({before.trial.image} {before.trial.version}) failed: "
            f"back on slot {booted}, recorded")
    if after.in_trial:
        assert after.trial is not None
        Path(marker).write_text(f"{after.trial.deadline}\n")
        log(f"trial boot of slot {booted} ({after.trial.image} {after.trial.version}): it commits once the agent "
            f"is up, else the node returns to slot {slots.other(booted)} after {after.trial.deadline} s")
        if not after.trial.preserve_var and var_device:
            with open(var_device, "r+b") as var:  # the LUKS2 headers (16 MiB): the next unlock creates /var anew
                var.write(bytes(16 << 20))
                var.flush()
                os.fsync(var.fileno())
            log("/var erased for the new image (upgrade.preserve_var: false)")
    else:
        log(f"slot {booted} (committed: {after.committed})")
    return after


def deadline(node: Node, log: Callable[[str], None], reboot: Callable[[], None] = reboot_now) -> bool:
    """At the trial's deadline: still not committed -> reboot (the firmware then boots the committed slot)."""
    booted = slots.booted_slot(node.slot_file)
    if slots.state(node.efivars, booted).in_trial:
        log(f"trial boot of slot {booted} did not commit in time: rebooting into slot {slots.other(booted)}")
        reboot()
        return True
    return False


def self_check(boot_events: str = BOOT_EVENTS) -> str | None:
    """None when this boot finished as measured (the sysinit phase is in PCR 11's log); else why not."""
    try:
        lines = Path(boot_events).read_text().splitlines()
    except FileNotFoundError:
        # an image without the TPM measures no phases: the agent serving is the whole check
        return None if not os.path.exists("/dev/tpmrm0") else f"{boot_events}: missing"
    except OSError as exc:
        return f"{boot_events}: {exc.strerror}"
    if not any(line.startswith("11 sysinit ") for line in lines):
        return "the boot did not reach the sysinit phase"
    return None


def commit_when_up(node: Node, serving: Callable[[], bool], log: Callable[[str], None],
                   check: Callable[[], str | None] = self_check, wait: float = 60.0) -> threading.Thread | None:
    """On a trial boot: once the agent serves and the self-check passes, commit the slot (in a thread)."""
    if not node.efivars.available() or not os.path.exists(node.slot_file):
        return None
    booted = slots.booted_slot(node.slot_file)
    if not slots.state(node.efivars, booted).in_trial:
        return None

    def run() -> None:
        end = time.monotonic() + wait
        while not serving() and time.monotonic() < end:
            time.sleep(0.5)
        problem = check() if serving() else "the agent is not serving"
        if problem:
            log(f"slot {booted} not committed: {problem}")
            return
        done = slots.commit(node.efivars, booted)
        if done is not None:
            try:
                os.unlink(TRIAL_MARKER)
            except OSError:
                pass
            log(f"slot {booted} committed ({done.image} {done.version})")

    thread = threading.Thread(target=run, name="upgrade-commit", daemon=True)
    thread.start()
    return thread


# ---- the agent's side --------------------------------------------------------------------------

UPGRADE_DEADLINE = 3600.0
_DRAIN = 1 << 20  # seconds a whole upgrade request may take (the image crosses the network)


@dataclass
class Endpoint:
    """What the agent's `/v1/upgrade` needs: the node, the customer CA and the image it runs."""

    node: Node
    ca: x509.Certificate
    image: str
    busy: threading.Lock = field(default_factory=threading.Lock)  # one upgrade at a time

    def status(self) -> dict[str, Any]:
        return status(self.node)

    def handle(self, handler: Any) -> None:
        """POST /v1/upgrade on the agent's request handler (attest/agent.py): answer, then reboot."""
        text = (handler.headers.get("Content-Length") or "").strip()
        if handler.headers.get("Transfer-Encoding") is not None or not text.isdigit() or len(text) > 18:
            handler._error(411, "the upgrade stream needs a Content-Length")
            return
        handler.server.deadlines.arm(handler.connection, UPGRADE_DEADLINE)
        body = _Limited(handler.rfile, int(text))
        try:
            if not self.busy.acquire(blocking=False):
                raise Refused(409, "another upgrade is being written")
            try:
                result = upgrade(body, body.left, node=self.node, ca=self.ca, image=self.image,
                                 log=handler.server.log)
            except (OSError, ValueError, InputError) as exc:  # the node's disk or UEFI variables: say which
                raise Refused(500, f"{type(exc).__name__}: {exc}") from None
            finally:
                self.busy.release()
        except Refused as exc:
            handler.server.log(f"upgrade refused ({exc.written} bytes written to the inactive slot): {exc}")
            handler._note = str(exc)
            # read (and drop) what the caller is still sending, so that it reads this answer instead of a
            # reset; bounded by its Content-Length and the request's deadline
            try:
                while body.read(_DRAIN):
                    pass
            except OSError:
                return
            handler._send(exc.code, {"error": str(exc), "bytes_written": exc.written})
            return
        handler._send(200, result.to_json())
        if self.node.reboot is not None:
            threading.Timer(2.0, self.node.reboot).start()


def endpoint_for(config: Any) -> Endpoint | None:
    """The endpoint on a node booted from an A/B slot (the initramfs wrote /run/obelisk/slot); else None."""
    if not os.path.exists(slots.SLOT_FILE):
        return None
    from obelisk.signer.keys import load_certificate

    efivars = efiboot.EfiVars()
    if not efivars.available():
        return None
    try:
        disk = slots.disk_of()
    except slots.SlotError:
        return None
    return Endpoint(node=Node(disk=disk, efivars=efivars, reboot=reboot_now), ca=load_certificate(config.client_ca),
                    image=config.image)
