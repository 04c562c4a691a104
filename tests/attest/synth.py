"""Synthesized attestation evidence for the verifier's tests: no TPM, every structure built by obelisk's own
serializers.

`make_ak` is an attestation key in software (RSA-2048 or ECDSA P-256) with its TPM2B_PUBLIC and AK record.
`boot` is one consistent boot of a node: a firmware event log (PCRs 0-9, and PCR 11 as systemd-stub measured
the UKI's sections), an IMA list (PCR 10) whose boot_aggregate covers PCRs 0-9, the boot phases the node
extended into PCR 11 after the stub (its boot_events), and the sha256 PCR values they replay to.
`references` is what the build predicts for such a node. `attest` is the TPMS_ATTEST a TPM would sign,
`evidence` the signed bundle, `options` the verifier's options. A test changes one thing and checks which
finding fails.
"""

from __future__ import annotations

import functools
import hashlib
import uuid
from dataclasses import dataclass, replace

from obelisk.attest import akrecord, ima_check, verify
from obelisk.attest import evidence as evmod
from obelisk.attest.evidence import Evidence
from obelisk.core.findings import Finding, Report, Status
from obelisk.image import measure
from obelisk.image.uki import UkiSections, pcr11_prediction
from obelisk.tpm import algorithms as alg
from obelisk.tpm import bootevents, eventlog, uefi
from obelisk.tpm import quote as q
from obelisk.tpm.pcr import composite_digest
from obelisk.tpm.prediction import ExpectedEvent

USER_WITH_AUTH, ADMIN_WITH_POLICY, DECRYPT = 0x40, 0x80, 0x20000
AK_ATTRIBUTES = (akrecord.FIXED_TPM | akrecord.FIXED_PARENT | akrecord.SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH
                 | akrecord.RESTRICTED | akrecord.SIGN)
EK_ATTRIBUTES = (akrecord.FIXED_TPM | akrecord.FIXED_PARENT | akrecord.SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY
                 | akrecord.RESTRICTED | DECRYPT)

NONCE = bytes.fromhex("5eed") + bytes(range(18))
CLOCK = q.ClockInfo(clock=5_000_000, reset_count=7, restart_count=2, safe=True)
QUOTED = (q.PCRSelection("sha256", tuple(range(12))),)  # what the agent asks for: sha256 PCRs 0-11

def variable(name: str, value: bytes, guid: bytes = eventlog.EFI_GLOBAL_VARIABLE) -> bytes:
    """UEFI_VARIABLE_DATA of a variable event, through the format's one serializer (tpm/uefi.py)."""
    return uefi.serialize_variable_data(uefi.UefiVariableData(uuid.UUID(bytes_le=guid), name, value))


# (pcr, event type, data): what firmware measures; digests are computed over the data
FIRMWARE = ((0, 0x8, b"S-CRTM 1.0"), (0, 0x80000008, b"firmware blob"),
            (7, 0x80000001, variable("SecureBoot", b"\1")),
            (7, 0x4, b"\0\0\0\0"), (4, 0x80000003, b"shim"), (4, 0x80000003, b"kernel"), (9, 0xD, b"initrd"),
            (8, 0xD, b"cmdline ima_policy=tcb"))
CMDLINE = "console=ttyS0 ima_policy=tcb ima_appraise=enforce"
FILES = {"/usr/bin/kubelet": b"kubelet 1.30", "/usr/bin/containerd": b"containerd 1.7", "/usr/sbin/sshd": b"sshd"}


# ---- the attestation key ----------------------------------------------------------------------------

@dataclass(frozen=True)
class SoftAK:
    """An AK whose private key is in this process, and the verifier's record of it."""

    kind: str  # rsa | ecc
    private_key: object
    record: akrecord.AKRecord

    def sign(self, message: bytes, hash_name: str = "sha256") -> bytes:
        """TPMT_SIGNATURE over `message`, as TPM2_Quote returns it (RSASSA or ECDSA)."""
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, padding
        from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

        algorithm = {"sha1": hashes.SHA1(), "sha256": hashes.SHA256(), "sha384": hashes.SHA384()}[hash_name]
        if self.kind == "ecc":
            r, s = decode_dss_signature(self.private_key.sign(message, ec.ECDSA(algorithm)))
            sig = q.Signature(alg.ECDSA, alg.by_name(hash_name).alg_id, ecdsa_r=r.to_bytes(32, "big"),
                              ecdsa_s=s.to_bytes(32, "big"))
        else:
            sig = q.Signature(alg.RSASSA, alg.by_name(hash_name).alg_id,
                              rsa=self.private_key.sign(message, padding.PKCS1v15(), algorithm))
        return q.serialize_signature(sig)


def _tpm2b_public(public_key, attributes: int, **template) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from tpm2_pytss import TPM2B_PUBLIC

    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return TPM2B_PUBLIC.from_pem(pem, objectAttributes=attributes, **template).marshal()


@functools.cache
def _private_key(kind: str, label: str):
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    return ec.generate_private_key(ec.SECP256R1()) if kind == "ecc" else rsa.generate_private_key(65537, 2048)


@functools.cache
def ek_public() -> bytes:
    """The node TPM's EK (RSA-2048, restricted decryption key): the AK's parent in the record."""
    return _tpm2b_public(_private_key("rsa", "ek").public_key(), EK_ATTRIBUTES, symmetric="aes128cfb")


@functools.cache
def make_ak(kind: str = "rsa", attributes: int = AK_ATTRIBUTES, label: str = "ak") -> SoftAK:
    """An AK of `kind` under `ek_public()`; another `label` gives another key pair."""
    key = _private_key(kind, label)
    scheme = "ecdsa:sha256" if kind == "ecc" else "rsassa:sha256"
    public = _tpm2b_public(key.public_key(), attributes, scheme=scheme)
    return SoftAK(kind, key, akrecord.from_public(public, ek_public=ek_public(), source=f"synth {kind} {label}"))


# ---- one boot of a node ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Boot:
    """What a node measured, its logs, and the sha256 PCR values they replay to."""

    event_log: bytes
    ima_log: bytes
    boot_events: bytes
    pcrs: dict[int, bytes]  # sha256, PCRs 0-11
    cmdline: str


def extend(value: bytes, digest: bytes) -> bytes:
    return hashlib.sha256(value + digest).digest()


def uki_sections(cmdline: str = CMDLINE) -> UkiSections:
    """The node's UKI: its command line is the part a test changes."""
    return UkiSections(linux=b"bzImage", initrd=b"initramfs.cpio", cmdline=cmdline.encode(), osrel=b"ID=obelisk\n")


def stub_events(cmdline: str = CMDLINE) -> tuple[ExpectedEvent, ...]:
    """What systemd-stub measures into PCR 11 for `uki_sections(cmdline)` (image/uki.py)."""
    return pcr11_prediction(uki_sections(cmdline)).events


def with_stub_events(log: eventlog.EventLog, events: tuple[ExpectedEvent, ...]) -> eventlog.EventLog:
    """`log` continued with the stub's EV_IPL events. Their sha1 digests are stand-ins (sha1 of the sha256
    digest): only the sha256 bank is quoted and predicted."""
    sha1, sha256 = alg.by_name("sha1").alg_id, alg.by_name("sha256").alg_id
    first = len(log.events)
    added = tuple(eventlog.Event(pcr=e.pcr, event_type=e.event_type,
                                 digests=tuple((a, hashlib.sha1(e.digest).digest() if a == sha1 else e.digest)
                                               for a in (alg.by_name(b).alg_id for b in log.banks)
                                               if a in (sha1, sha256)),
                                 data=e.data, number=first + i) for i, e in enumerate(events))
    return replace(log, events=log.events + added)


def boot_event_list() -> list[bootevents.LoggedEvent]:
    """The boot phases the node extends into PCR 11 after the stub, in order (image/measure.py)."""
    return [bootevents.LoggedEvent(measure.PCR, word, measure.phase_digest(word)) for word in measure.PHASES]


def replay_boot_events(events: list[bootevents.LoggedEvent], start: bytes = bytes(32)) -> bytes:
    value = start
    for e in events:
        value = extend(value, e.digest)
    return value


def ima_list(boot_pcrs: dict[int, bytes], files: dict[str, bytes]) -> tuple[bytes, bytes]:
    """(binary IMA list, the sha256 PCR 10 it replays to): boot_aggregate over PCRs 0-9, then `files`."""
    from obelisk.ima_policy import measurement_list as ml

    aggregate = hashlib.sha256(b"".join(boot_pcrs[i] for i in range(10))).digest()
    entries = [ml.make_entry("ima-ng", [ml.digest_field("sha256", aggregate), ml.name_field("boot_aggregate")],
                             number=1)]
    for number, (path, content) in enumerate(files.items(), start=2):
        entries.append(ml.make_entry("ima-ng", [ml.digest_field("sha256", hashlib.sha256(content).digest()),
                                                ml.name_field(path)], number=number))
    pcr10 = bytes(32)
    for e in entries:  # kernel >= 5.8: the sha256 bank is extended with sha256(template data)
        pcr10 = extend(pcr10, hashlib.sha256(e.template_data).digest())
    return ml.serialize_binary(entries), pcr10


def boot(firmware=FIRMWARE, files: dict[str, bytes] | None = None, cmdline: str = CMDLINE,
         events: list[bootevents.LoggedEvent] | None = None) -> Boot:
    """A node booted with these measurements (the UKI's command line `cmdline`, the boot phases `events`);
    its logs tell the truth about them."""
    log = with_stub_events(eventlog.build(firmware, banks=("sha1", "sha256")), stub_events(cmdline))
    replayed = eventlog.replay(log)
    pcrs = {i: replayed.value("sha256", i) for i in range(10)}
    ima, pcrs[10] = ima_list(pcrs, FILES if files is None else files)
    logged = boot_event_list() if events is None else events
    pcrs[11] = replay_boot_events(logged, replayed.value("sha256", 11))
    return Boot(eventlog.serialize(log), ima, bootevents.serialize(logged), pcrs, cmdline)


def boot_from_log(event_log: bytes, files: dict[str, bytes] | None = None, cmdline: str = CMDLINE) -> Boot:
    """A node whose firmware log is `event_log` (a real one, or a mutated one), its PCRs what that log replays to:
    the quote is consistent with the log, so only the event data's binding to its digests can tell a lie."""
    replayed = eventlog.replay(eventlog.parse(event_log))
    pcrs = {i: replayed.value("sha256", i) for i in range(10)}
    ima, pcrs[10] = ima_list(pcrs, FILES if files is None else files)
    logged = boot_event_list()
    pcrs[11] = replay_boot_events(logged, replayed.value("sha256", 11))
    return Boot(event_log, ima, bootevents.serialize(logged), pcrs, cmdline)


def logged_stub(event_log: bytes) -> tuple[ExpectedEvent, ...]:
    """The PCR 11 events of a real firmware log as the build's prediction: for tests about other PCRs."""
    sha256 = alg.by_name("sha256").alg_id
    return tuple(ExpectedEvent(11, e.event_type, e.digest(sha256) or b"", f"logged event {e.number}", e.data)
                 for e in eventlog.parse(event_log).events if e.pcr == 11 and e.event_type != eventlog.EV_NO_ACTION)


def references(files: dict[str, bytes] | None = None, cmdline: str = CMDLINE,
               stub: tuple[ExpectedEvent, ...] | None = None) -> ima_check.References:
    """What the image build knows: PCR 11 predicted event by event (the stub's measurements of the UKI
    with `cmdline`, or `stub`, then the boot phases), and the IMA reference digests."""
    from obelisk.ima_policy import reference

    files = FILES if files is None else files
    ref = reference.ReferenceManifest({p: f"sha256:{hashlib.sha256(c).hexdigest()}" for p, c in files.items()})
    pcr11 = measure.predict(stub_events(cmdline) if stub is None else stub).pcr11
    return ima_check.References(ima_reference=ref, predicted={11: pcr11.value}, boot_predictions=(pcr11,))


# ---- the quote, the bundle, the verifier's options ------------------------------------------------------

def attest(ak: SoftAK, pcrs: dict[int, bytes], *, nonce: bytes = NONCE, selections=QUOTED,
           clock: q.ClockInfo = CLOCK, signer: bytes | None = None, pcr_digest: bytes | None = None) -> q.Attest:
    """The TPMS_ATTEST a TPM would make for a quote of `pcrs` (sha256 values) over `selections`."""
    order = [p for sel in selections for p in sel.pcrs]
    digest = composite_digest([pcrs[p] for p in order], "sha256") if pcr_digest is None else pcr_digest
    return q.Attest(qualified_signer=ak.record.qualified_name if signer is None else signer, extra_data=nonce,
                    clock_info=clock, firmware_version=0x2023_0001, selections=tuple(selections), pcr_digest=digest)


def evidence(ak: SoftAK, node: Boot | None = None, *, quote: q.Attest | None = None, signed_by: SoftAK | None = None,
             **changes) -> Evidence:
    """The node's bundle: `quote` (default: an honest quote of `node`'s PCRs) signed by `signed_by` (default
    `ak`), the node's logs; `changes` replace bundle fields afterwards (what a hostile node could do)."""
    node = boot() if node is None else node
    raw = q.serialize_attest(attest(ak, node.pcrs) if quote is None else quote)
    ev = Evidence(nonce=NONCE, attest=raw, signature=(signed_by or ak).sign(raw), bank="sha256",
                  pcrs=dict(node.pcrs), ak_name=ak.record.name or b"", event_log=node.event_log,
                  ima_log=node.ima_log, kernel={"hostname": "worker-1", "release": "6.1.0", "cmdline": node.cmdline},
                  boot_events=node.boot_events, collected_at="2024-05-01T12:00:00Z")
    return replace(ev, **changes)


def options(ak: SoftAK, refs: ima_check.References | None = None, **changes) -> verify.Options:
    opts = verify.Options(nonce=NONCE, ak=ak.record)
    verify.apply_references(opts, references() if refs is None else refs)
    return replace(opts, **changes)


def run(ev: Evidence, opts: verify.Options) -> tuple[Report, verify.Counters | None, dict[str, Finding]]:
    """verify() on the bundle as the verifier receives it (JSON round trip); findings by id."""
    report, counters = verify.verify(evmod.parse(evmod.serialize(ev)), opts)
    found = {f.id: f for f in report.findings}
    assert len(found) == len(report.findings), "finding ids must be unique"
    return report, counters, found


def failing(ev: Evidence, opts: verify.Options, fid: str, status: Status = Status.FAIL) -> dict[str, Finding]:
    """Verify, and assert that `fid` has `status` and that the whole report fails (exit code 1)."""
    report, _, found = run(ev, opts)
    assert fid in found, f"{fid} not reported; got {sorted(found)}"
    assert found[fid].status is status, found[fid]
    assert report.failed and report.exit_code() == 1
    return found
