"""`obelisk boot OUT`: run a built image under QEMU with a software TPM, like a first node boot.

The node boots OUT/disk.raw through UEFI: Debian's OVMF with the image's variable store (the
customer's PK, KEK and db enrolled, Secure Boot enforcing), so the firmware checks the UKI's
signature and measures it into PCR 4, its Secure Boot state into PCR 7, and systemd-stub the UKI's
sections into PCR 11, exactly as on hardware. `direct_kernel` boots bzImage and the initramfs with
QEMU's -kernel instead: a developer's shortcut that nothing measures (PCRs 4, 7 and 11 then match
no prediction, and /var stays locked).

The run directory holds everything this node instance owns:

    swtpm/          the TPM's state (EK and AK made persistent before the first boot)
    ak.json         the AK record the verifier needs (`obelisk attest node --ak`)
    disk.raw        the node's disk: the image's partitions from OUT/disk.raw, and the var partition
                    the node made its /var on at first boot (kept across reboots and new images)
    ovmf-vars.fd    the node's UEFI variables (NVRAM), first copied from OUT/ovmf-vars.fd
    config.img      the node's config disk (ext2, mounted read-only at /run/obelisk/config):
                    the agent's TLS key and certificate, the client CA, agent.json, and with
                    --fleet-url / --fleet-join-token the node's fleet.json and fleet-token (0600)
    fleet-url       the fleet URL the node was provisioned with (not secret), for its forward
    client.pem/.key a verifier client certificate issued by the customer CA
    serial.log      the console
    qemu.pid, swtpm.pid, boot.json

A node reaches a fleet service through one forward: `--fleet-url https://10.0.2.100:PORT` (any
address of QEMU's user network other than the node's, 10.0.2.2 and 10.0.2.3) connects to the
service listening on the host's 127.0.0.1:PORT; the network stays restricted otherwise.

Provisioning happens here, on the host, as a cloud would do it: the agent's TLS key is generated
for this node and written onto its config disk, never into the image; the EK and AK are made in
the node's TPM. /var is the node's own business: it creates and seals it at its first boot.
At every boot (a reboot, or a new image on the same node) the image's partitions are written
from OUT into the node's disk and the var partition is left as it is.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from obelisk.core import atomic, tools
from obelisk.core.errors import InputError, ObeliskError
from obelisk.core.progress import progress
from obelisk.lab import qemu as qemu_launcher
from obelisk.lab.qemu import Drive, Firmware, GuestForward, PortForward, QemuRun
from obelisk.tpm.swtpm import start_for_qemu

if TYPE_CHECKING:
    from obelisk.attest.agent_certs import IssuedCert
    from obelisk.image.manifest import Manifest

AGENT_GUEST_PORT = 8443
GUEST_IP = "10.0.2.15"
USER_NET_RESERVED = ("10.0.2.2", "10.0.2.3", GUEST_IP)  # QEMU's gateway, DNS and the node
FLEET_URL_FILE = "fleet-url"


@dataclass(frozen=True)
class FleetProvision:
    """What `obelisk boot` writes onto a new node's config disk for its fleet client."""

    url: str | None = None  # overrides the image's fleet.url
    join_token: Path | None = None  # a file holding the join token (a secret: config disk only, 0600)


def fleet_forward(url: str) -> GuestForward | None:
    """The forward that takes the node's connections to `url` to the host's 127.0.0.1 at the same port,
    when `url` names an address of QEMU's user network; None for any other address (unreachable from
    the restricted network)."""
    import ipaddress
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    try:
        address = ipaddress.ip_address(parts.hostname or "")
    except ValueError:
        return None
    if address not in ipaddress.ip_network("10.0.2.0/24") or str(address) in USER_NET_RESERVED:
        return None
    return GuestForward(str(address), parts.port or 443, parts.port or 443)


class BootError(ObeliskError):
    exit_code = 1


@dataclass(frozen=True)
class BootedNode:
    run_dir: Path
    url: str
    port: int
    qemu_pid: int
    swtpm_pid: int
    ak: Path
    client_cert: Path
    client_key: Path
    serial_log: Path

    def to_json(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.__dict__.items()}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def kernel_cmdline(manifest: Manifest, extra: tuple[str, ...] = ()) -> str:
    """The build's command line (the UKI's .cmdline), for a direct-kernel boot (anything extra is unmeasured)."""
    if not manifest.boot.cmdline:
        raise InputError("manifest has an empty boot.cmdline: rebuild the image with this obelisk",
                         source="manifest.json")
    return " ".join([manifest.boot.cmdline, *extra])


def make_ext2_disk(path: Path, content: Path, size_mib: int, label: str) -> None:
    """An ext2 filesystem image filled from `content` (mke2fs -d: no root, no loop device)."""
    if path.exists():
        path.unlink()
    tools.run("mke2fs", ["-q", "-F", "-t", "ext2", "-L", label, "-E", "root_owner=0:0",
                         "-d", content, path, f"{size_mib}M"])


def provision(out: Path, run_dir: Path, ca: Path, ca_key: Path, manifest: Manifest, port: int,
              fleet: FleetProvision | None = None) -> dict:
    """TLS material, the /var disk and the TPM's EK/AK for a fresh node in run_dir."""
    from obelisk.attest import akrecord
    from obelisk.attest.agent_certs import issue
    from obelisk.tpm import device as tpm
    from obelisk.tpm.swtpm import SoftwareTPM

    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    var = run_dir / "config-content"
    lib = var
    lib.mkdir(parents=True, exist_ok=True)
    issue(ca, ca_key, lib, manifest.image.name, server=True,
                   hosts=("127.0.0.1", "localhost", GUEST_IP))
    client = issue(ca, ca_key, run_dir, "obelisk-verifier", server=False, roles=("reader",))  # attest node reads
    (lib / "ca.pem").write_bytes(ca.read_bytes())
    config = {"cert": "agent.pem", "key": "agent.key", "client_ca": "ca.pem", "port": AGENT_GUEST_PORT,
              "tcti": "device:/dev/tpmrm0", "image": manifest.image.name,
              "event_log": "/sys/kernel/security/tpm0/binary_bios_measurements", "scan_root": "/"}
    (lib / "agent.json").write_text(json.dumps(config, indent=1, sort_keys=True) + "\n")
    if fleet is not None:
        write_fleet_config(lib, fleet)
        if fleet.url:
            atomic.write_text(run_dir / FLEET_URL_FILE, fleet.url + "\n")
    make_ext2_disk(run_dir / "config.img", var, 4, "obelisk-config")
    os.chmod(run_dir / "config.img", 0o600)  # it holds the agent's private key
    for p in sorted(var.rglob("*"), reverse=True):  # the key now lives only on the node's disk
        p.unlink() if p.is_file() else p.rmdir()
    var.rmdir()
    # EK and AK, created in the node's TPM before its first boot (as enrollment would)
    with SoftwareTPM.start(run_dir / "swtpm") as sw:
        info = tpm.create_keys(sw.tcti)
    copy_sparse(out / DISK_IMAGE, run_dir / DISK_IMAGE)
    copy_sparse(variable_store(out, manifest), run_dir / VARIABLES)
    record = akrecord.from_public(info.public, ek_public=info.ek_public, activated=True, source="ak.json")
    atomic.write_text(run_dir / "ak.json", akrecord.serialize(record))
    return {"client_cert": client.cert, "client_key": client.key, "port": port}


def write_fleet_config(config_dir: Path, fleet: FleetProvision) -> None:
    """fleet.json (the URL, the token's file name) and fleet-token (0600) for the node's config disk."""
    from obelisk.core.inputs import read_bounded
    from obelisk.image import fleet_node

    token_name = None
    if fleet.join_token is not None:
        token = read_bounded(str(fleet.join_token), "join token", 4096).strip()
        if not token:
            raise InputError("the join token file is empty", source=str(fleet.join_token))
        token_name = fleet_node.TOKEN_NAME
        path = config_dir / token_name
        path.touch(mode=0o600)
        os.chmod(path, 0o600)
        path.write_bytes(token + b"\n")
    try:
        record = fleet_node.FleetNode(url=fleet.url, join_token=token_name)
    except ValueError as exc:
        raise InputError(f"--fleet-url: {exc}") from None
    (config_dir / fleet_node.CONFIG_NAME).write_bytes(fleet_node.serialize(record))


def _start_swtpm(run_dir: Path) -> subprocess.Popen[bytes]:
    return start_for_qemu(run_dir / "swtpm", run_dir / "swtpm.sock", run_dir / "swtpm.log", detach=True)


DISK_IMAGE = "disk.raw"
VARIABLES = "ovmf-vars.fd"


def variable_store(out: Path, manifest: Manifest) -> Path:
    """The image's OVMF variable store (Secure Boot keys enrolled), else Debian's empty one."""
    if manifest.boot.secure_boot is not None:
        return out / manifest.boot.secure_boot.variables
    return qemu_launcher.OVMF_VARS_TEMPLATE


def copy_sparse(source: Path, target: Path) -> None:
    """Copy `source` to `target` (atomically), leaving runs of zeros as holes: disk images are mostly empty."""
    block = 1 << 20
    tmp = target.with_name(f".{target.name}.tmp")
    with open(source, "rb") as src, open(tmp, "wb") as dst:
        size = os.fstat(src.fileno()).st_size
        while chunk := src.read(block):
            if chunk.count(0) == len(chunk):
                dst.seek(len(chunk), os.SEEK_CUR)
            else:
                dst.write(chunk)
        dst.truncate(size)
    os.replace(tmp, target)


def install_image(out: Path, run_dir: Path, manifest: Manifest) -> None:
    """Write OUT's disk.raw into the node's disk except its var partition: a reboot with the same image
    changes nothing, a new image replaces the image partitions, and /var stays the node's."""
    from obelisk.image import disk_image

    layout = manifest.boot.disk_image
    if layout is None:
        raise InputError("manifest has no boot.disk_image: rebuild the image with this obelisk", source="manifest.json")
    var = layout.partition(disk_image.VAR)
    node_disk = run_dir / DISK_IMAGE
    import mmap

    with open(node_disk, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as whole:
        current = disk_image.parse_gpt(whole, str(node_disk))
    held = next((p for p in current.partitions if p.name == var.name), None)
    where = (held.first_lba * layout.sector_size, (held.last_lba + 1 - held.first_lba) * layout.sector_size) \
        if held else None
    if where != (var.start, var.size) or node_disk.stat().st_size != layout.size:
        raise BootError(f"{node_disk}: its var partition is not where this image puts it; the image cannot be "
                        "installed without losing /var (boot with --fresh for a new node)")
    block = 1 << 20
    with open(out / DISK_IMAGE, "rb") as src, open(node_disk, "r+b") as dst:
        for begin, end in ((0, var.start), (var.start + var.size, layout.size)):
            src.seek(begin)
            dst.seek(begin)
            remaining = end - begin
            while remaining > 0:
                chunk = src.read(min(block, remaining))
                if not chunk:
                    break
                dst.write(chunk)
                remaining -= len(chunk)
        dst.flush()
        os.fsync(dst.fileno())


def qemu_run(out: Path, run_dir: Path, port: int, memory_mib: int, *, direct_kernel: str | None = None,
             fleet: GuestForward | None = None, reboot: bool = False) -> QemuRun:
    """The node's QEMU: UEFI (OVMF) booting the node's disk, its config disk and TPM; the network
    restricted to the agent's port, forwarded to 127.0.0.1:`port`. `direct_kernel` (a command line)
    boots OUT's bzImage and initramfs instead of the firmware: unmeasured."""
    drives = (Drive(run_dir / DISK_IMAGE, readonly=False), Drive(run_dir / "config.img"))
    common: dict[str, Any] = {"console": run_dir / "serial.log", "tpm_socket": run_dir / "swtpm.sock",
                              "memory_mib": memory_mib, "drives": drives,
                              "forwards": (PortForward(port, GUEST_IP, AGENT_GUEST_PORT),),
                              "guest_forwards": (fleet,) if fleet else (), "rng": True, "reboot": reboot}
    if direct_kernel is not None:
        return QemuRun(kernel=out / "bzImage", initramfs=out / "initramfs.cpio", cmdline=direct_kernel, **common)
    return QemuRun(kernel=None, firmware=Firmware(run_dir / VARIABLES), **common)


def provisioned_fleet_url(run_dir: Path) -> str | None:
    """The fleet URL on the node's config disk (kept beside it: not a secret). The image's own fleet.url
    gets no forward: under the lab's restricted network a node reaches a service only as `--fleet-url`."""
    try:
        return (run_dir / FLEET_URL_FILE).read_text().strip() or None
    except FileNotFoundError:
        return None


def wait_for_agent(url: str, ca: Path, cert: Path, key: Path, qemu: subprocess.Popen[bytes], serial: Path,
                   timeout: float) -> None:
    from obelisk.attest.agent_client import AgentEndpoint, AgentError

    endpoint = AgentEndpoint(url, ca=str(ca), cert=str(cert), key=str(key), timeout=5)
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        if qemu.poll() is not None:
            raise BootError(f"QEMU exited with code {qemu.returncode} before the agent answered; "
                            f"console: {_tail(serial)}")
        refused = _firmware_refusal(serial)
        if refused:
            # OVMF then waits in its shell or boot menu forever: nothing more will come
            raise BootError(f"the firmware refused to start the UKI (Secure Boot): {refused}")
        try:
            status, _ = endpoint.get("/v1/health")
            if status == 200:
                return
            last = f"HTTP {status}"
        except AgentError as exc:
            last = str(exc)
        time.sleep(1)
    raise BootError(f"the agent did not answer within {timeout:.0f} s ({last}); console: {_tail(serial)}")


FIRMWARE_REFUSALS = ("Access Denied", "Security Violation")  # edk2's BdsDxe and shell on a failed signature check


def _firmware_refusal(serial: Path) -> str:
    try:
        text = serial.read_text(errors="replace")
    except OSError:
        return ""
    return next((line.strip() for line in text.splitlines() if any(r in line for r in FIRMWARE_REFUSALS)), "")


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no console log)"
    return " | ".join(text[-lines:]) or "(empty)"


PROVISIONED = ("ak.json", "config.img", DISK_IMAGE, VARIABLES, "client.pem", "client.key", "swtpm")


def reader_client(run_dir: Path, ca: Path, ca_key: Path) -> IssuedCert:
    """The run directory's verifier certificate, issued again when an earlier obelisk made it without the
    evidence reader role (the agent refuses such a certificate); the node's side needs no change."""
    from cryptography.hazmat.primitives import serialization

    from obelisk.attest import roles
    from obelisk.attest.agent_certs import IssuedCert, issue
    from obelisk.signer.keys import load_certificate

    cert, key = run_dir / "client.pem", run_dir / "client.key"
    try:
        held = roles.roles_of(load_certificate(cert).public_bytes(serialization.Encoding.DER))
    except (InputError, ValueError):
        return IssuedCert(cert, key)  # as before: waiting for the agent names the problem
    if roles.READER in held:
        return IssuedCert(cert, key)
    return issue(ca, ca_key, run_dir, "obelisk-verifier", server=False, roles=(roles.READER,))


def is_provisioned(run_dir: Path) -> bool:
    return all((run_dir / name).exists() for name in PROVISIONED)


def policy_key_of(manifest: Manifest, ca: Path) -> bytes:
    """The key that approves PCR policies for this image (manifest disk.policy_certificate, issued by `ca`)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from obelisk.image import manifest as mf
    from obelisk.signer.keys import load_certificate

    pem = manifest.disk.policy_certificate
    try:
        cert = x509.load_pem_x509_certificate((pem or "").encode())
    except ValueError:
        raise InputError("disk.policy_certificate: missing or not a PEM certificate", source="manifest.json") from None
    reason = mf.chains_to(cert, load_certificate(ca))
    if reason:
        raise InputError(f"disk.policy_certificate does not chain to --ca: {reason}", source="manifest.json")
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def var_sealed_for(run_dir: Path, manifest: Manifest, policy_key: bytes | None = None) -> bool | None:
    """Whether the node's LUKS2 /var opens for this image's predicted PCR values (None: not made yet)."""
    import tempfile

    from obelisk.disk import volume as disk
    from obelisk.image import disk_image

    layout = manifest.boot.disk_image
    if layout is None:
        return None
    var = layout.partition(disk_image.VAR)
    with tempfile.NamedTemporaryFile(prefix="var-header-") as header, open(run_dir / DISK_IMAGE, "rb") as node:
        node.seek(var.start)
        header.write(node.read(min(var.size, 16 << 20)))  # the LUKS2 header and its token
        header.flush()
        if not disk.is_luks(header.name):
            return None
        tokens = disk.tokens(header.name)
    bound = {p: v for p, v in manifest.disk.sealed_to.items() if p != 11}
    if policy_key is not None:
        return any(t.sealed.authorize_key == policy_key and dict(t.sealed.bound) == bound for t in tokens)
    return any(not t.sealed.authorize_key and {p: t.sealed.values.get(p) for p in bound} == bound for t in tokens)


def boot(out: Path, run_dir: Path, *, ca: Path, ca_key: Path, port: int | None = None, memory_mib: int = 768,
         timeout: float = 300, extra_cmdline: tuple[str, ...] = (), fresh: bool = False, quiet: bool = True,
         direct_kernel: bool = False, fleet: FleetProvision | None = None, reboot: bool = False,
         reinstall: bool = True) -> BootedNode:
    """Boot `out` as the node of `run_dir`: a provisioned run directory boots again with its TPM, disk
    and certificates (a reboot); an empty one, or `fresh`, is provisioned first (a new node).
    `direct_kernel` is the unmeasured developer shortcut, with `extra_cmdline` appended. `fleet` goes onto
    a new node's config disk (a provisioned node keeps the one it has: refused unless `fresh`). `reboot`: the
    node's reboots restart it in place (an upgrade's trial boot, a rollback) instead of ending QEMU.
    `reinstall=False` boots a provisioned node's disk as it is (after a power cut), without writing OUT
    into it."""
    from obelisk.image import manifest as manifestmod

    needed = ("bzImage", "initramfs.cpio", "manifest.json") if direct_kernel else (DISK_IMAGE, "manifest.json")
    for name in needed:
        if not (out / name).is_file():
            raise InputError(f"no {name}: boot needs a complete image with a kernel "
                             "(kernel.image or kernel.source in the spec)", source=str(out))
    if extra_cmdline and not direct_kernel:
        raise InputError("extra kernel command-line words need --direct-kernel: the UKI's command line is signed")
    if fleet is not None and fleet.url and fleet_forward(fleet.url) is None:
        raise InputError(f"--fleet-url {fleet.url}: the node's restricted network reaches the host only through "
                         "an address of QEMU's user network, e.g. https://10.0.2.100:PORT for a service on the "
                         "host's 127.0.0.1:PORT")
    if fleet is not None and not (fresh or not is_provisioned(run_dir)):
        raise InputError("--fleet-url and --fleet-join-token go onto a new node's config disk: add --fresh "
                         "(this run directory holds a provisioned node)")
    for tool in ("qemu-system-x86_64", "swtpm", "mke2fs", *(("socat",) if fleet and fleet.url else ())):
        tools.which(tool)
    m = manifestmod.load(out / "manifest.json")
    if not direct_kernel:
        Firmware(run_dir / VARIABLES).check()
    port = port or free_port()
    line = kernel_cmdline(m, extra_cmdline) if direct_kernel else None
    with progress("booting node", total=3, quiet=quiet) as bar:
        return _boot(out, run_dir, m, ca, ca_key, port, memory_mib, timeout, line, fresh, bar, fleet, reboot,
                     reinstall)


def _boot(out: Path, run_dir: Path, m: Manifest, ca: Path, ca_key: Path, port: int, memory_mib: int,
          timeout: float, direct_kernel: str | None, fresh: bool, bar: Any,
          fleet: FleetProvision | None = None, reboot: bool = False, reinstall: bool = True) -> BootedNode:
    new_node = fresh or not is_provisioned(run_dir)
    bar.stage("provisioning (certificates, EK/AK, disk)" if new_node else "rebooting a provisioned node")
    if new_node:
        for name in PROVISIONED + ("var.img", "var-recovery.key", FLEET_URL_FILE):
            target = run_dir / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        info = provision(out, run_dir, ca, ca_key, m, port, fleet)
    else:
        client = reader_client(run_dir, ca, ca_key)
        info = {"client_cert": client.cert, "client_key": client.key, "port": port}
        if reinstall:
            install_image(out, run_dir, m)
    bar.advance()
    bar.stage("starting swtpm and QEMU")
    swtpm = _start_swtpm(run_dir)
    serial = run_dir / "serial.log"
    serial.unlink(missing_ok=True)
    url = provisioned_fleet_url(run_dir)
    forward = fleet_forward(url) if url else None
    qemu = qemu_launcher.start(qemu_run(out, run_dir, port, memory_mib, direct_kernel=direct_kernel,
                                        fleet=forward, reboot=reboot),
                               stderr=run_dir / "qemu.log", accel=os.environ.get("OBELISK_QEMU_ACCEL"), detach=True)
    (run_dir / "qemu.pid").write_text(f"{qemu.pid}\n")
    (run_dir / "swtpm.pid").write_text(f"{swtpm.pid}\n")
    node = BootedNode(run_dir=run_dir, url=f"https://127.0.0.1:{port}", port=port, qemu_pid=qemu.pid,
                      swtpm_pid=swtpm.pid, ak=run_dir / "ak.json", client_cert=info["client_cert"],
                      client_key=info["client_key"], serial_log=serial)
    atomic.write_text(run_dir / "boot.json", json.dumps(node.to_json(), indent=1, sort_keys=True) + "\n")
    bar.advance()
    bar.stage("waiting for the agent")
    try:
        wait_for_agent(node.url, ca, node.client_cert, node.client_key, qemu, serial, timeout)
    except BaseException:
        stop(run_dir)
        raise
    bar.advance()
    return node


def stop(run_dir: Path) -> list[int]:
    """Stop the QEMU and swtpm of a run directory (by their recorded pids); returns those that were running."""
    stopped = []
    for name in ("qemu.pid", "swtpm.pid"):
        path = run_dir / name
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            path.unlink(missing_ok=True)
            continue
        stopped.append(pid)
        for _ in range(100):
            if not _alive(pid):
                break
            time.sleep(0.1)
        else:
            os.kill(pid, signal.SIGKILL)
        path.unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:  # our child, now reaped
            return False
    except ChildProcessError:
        pass  # not our child (started by an earlier `obelisk boot`)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
