"""The image spec: one table of settings from which parsing, validation and docs all derive.

Every key a spec file may hold is one `Setting` in `SETTINGS` (section, name, kind, default,
help). `load_spec` reads YAML against that table: an unknown key, a wrong type, a missing
file or an impossible combination (`RULES`) is rejected before any build work starts, with
one line naming the field. `render_docs` writes docs/image-spec.md from the same table, so
the file format, its errors and its documentation cannot drift apart (mkosi's approach).
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError
from obelisk.core.yamlsafe import load_yaml_file
from obelisk.image.fleet_node import FLEET_URL

IMA_POLICIES = ("appraise-rootfs", "appraise-containers", "appraise-all", "measure-only", "custom", "none")
APPRAISING = ("appraise-rootfs", "appraise-containers", "appraise-all")
ROOTFS_BASES = ("busybox", "debian", "directory", "tarball")
K8S_ROLES = ("none", "worker", "control-plane")
HASHES = ("sha256", "sha384", "sha512")
UNLOCK_MODES = ("tpm", "fleet", "tpm+fleet")  # where /var's key comes from (disk/unlock.py)
# What the node runs to unlock an encrypted /var (image/node_init.py): TPM library, cryptsetup, mke2fs.
ENCRYPTION_PACKAGES = ("python3-tpm2-pytss", "cryptsetup-bin", "e2fsprogs")
# What runtime.enabled starts on the node (image/node_runtime.py): containerd 1.6 (ctr, the runc v2 shim), runc,
# apparmor_parser for the containers' AppArmor profile, the CNI plugins and iptables for kubelet's pod networks.
RUNTIME_PACKAGES = ("containerd", "runc", "apparmor", "containernetworking-plugins", "iptables")


class SpecError(InputError):
    """A spec problem, always naming the field (`section.key`)."""

    def __init__(self, source: str, key: str, message: str):
        self.key = key
        super().__init__(f"{key}: {message}", source=source)


# --- value kinds: each converts a YAML value or raises ValueError with the reason ---

@dataclass(frozen=True)
class Kind:
    name: str  # as the docs show it
    convert: Callable[[Any], Any]
    is_path: bool = False  # relative paths resolve against the spec's directory; must exist


def _str(v: Any) -> str:
    if isinstance(v, bool) or not isinstance(v, (str, int, float)):
        raise ValueError(f"expected a string, got {type(v).__name__}")
    return str(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        if isinstance(v, str) and re.fullmatch(r"[0-9]{1,20}", v):
            return int(v)
        raise ValueError(f"expected an integer, got {_show(v)}")
    return v


def _show(v: Any) -> str:
    """A value for an error message: short, one line."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"expected true or false, got {v!r}")
    return v


def _str_list(v: Any) -> tuple[str, ...]:
    if isinstance(v, str):
        return tuple(v.split())
    if not isinstance(v, list):
        raise ValueError(f"expected a list, got {type(v).__name__}")
    return tuple(_str(x) for x in v)


def _pcr_list(v: Any) -> tuple[int, ...]:
    if isinstance(v, str):
        v = [x for x in v.replace(",", " ").split()]
    if not isinstance(v, list):
        raise ValueError(f"expected a list of PCR numbers, got {type(v).__name__}")
    out = []
    for x in v:
        n = _int(x)
        if not 0 <= n <= 23:
            raise ValueError(f"PCR {n} out of range 0-23")
        out.append(n)
    if len(set(out)) != len(out):
        raise ValueError("PCR listed twice")
    return tuple(sorted(out))


def _mode(v: Any) -> int:
    if isinstance(v, int) and not isinstance(v, bool):
        text = str(v)  # YAML reads 0755 as octal 493 only with the 0o prefix; 755 as decimal
        v = text if v > 0o7777 or not text.startswith("0") else oct(v)[2:]
    if not isinstance(v, str) or not re.fullmatch(r"0?o?[0-7]{3,4}", v):
        raise ValueError(f"expected an octal mode such as \"0644\", got {v!r}")
    return int(v.replace("o", ""), 8)


@dataclass(frozen=True)
class Permission:
    """A mode (and owner) for files matching a glob in the rootfs."""

    glob: str
    mode: int
    uid: int = 0
    gid: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"path": self.glob, "mode": f"{self.mode:04o}", "uid": self.uid, "gid": self.gid}


def _permissions(v: Any) -> tuple[Permission, ...]:
    if not isinstance(v, list):
        raise ValueError("expected a list of {path, mode, uid, gid}")
    out = []
    for i, item in enumerate(v):
        if not isinstance(item, dict):
            raise ValueError(f"[{i}]: expected a mapping")
        unknown = set(item) - {"path", "mode", "uid", "gid"}
        if unknown:
            raise ValueError(f"[{i}]: unknown key {sorted(unknown)[0]!r} (known: path, mode, uid, gid)")
        if "path" not in item or "mode" not in item:
            raise ValueError(f"[{i}]: needs path and mode")
        try:
            uid, gid = _int(item.get("uid", 0)), _int(item.get("gid", 0))
            if not (0 <= uid < 0xFFFFFFFF and 0 <= gid < 0xFFFFFFFF):
                raise ValueError(f"uid/gid {uid}:{gid} out of range")
            out.append(Permission(glob=_str(item["path"]).lstrip("/"), mode=_mode(item["mode"]), uid=uid, gid=gid))
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
    return tuple(out)


_WORKLOAD_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
_MEMORY = re.compile(r"([0-9]{1,15})(Ki|Mi|Gi)?")
_MEMORY_UNITS = {None: 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
MIN_WORKLOAD_MEMORY = 4 << 20  # below this the runtime itself (runc's init) cannot start
WORKLOAD_CHOICES = {"seccomp": ("default", "unconfined"), "apparmor": ("default", "unconfined"),
                    "restart": ("never", "always")}


def memory_bytes(v: Any) -> int:
    """A memory size: bytes, or a number with Ki, Mi or Gi (Kubernetes' binary suffixes)."""
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    match = _MEMORY.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"expected a size such as 64Mi, got {_show(v)}")
    return int(match.group(1)) * _MEMORY_UNITS[match.group(2)]


@dataclass(frozen=True)
class Workload:
    """A container the node's init starts from an OCI image layout shipped in the image (runtime.workloads)."""

    name: str
    image: str  # the OCI image layout directory as written in the spec (relative to the spec's directory)
    memory_limit: int  # bytes: the container's cgroup memory.max
    command: tuple[str, ...] = ()  # empty: the image's own entrypoint and command
    seccomp: str = "default"  # default: the runtime's default profile; unconfined: none
    apparmor: str = "default"  # default: the runtime's default profile; unconfined: none
    host_network: bool = False  # false: its own network namespace (loopback only)
    restart: str = "never"  # always: started again when it exits

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "image": self.image, "memory_limit": self.memory_limit,
                "command": list(self.command), "seccomp": self.seccomp, "apparmor": self.apparmor,
                "host_network": self.host_network, "restart": self.restart}


def _workload(item: Any) -> Workload:
    if not isinstance(item, dict):
        raise ValueError("expected a mapping")
    known = [f.name for f in dataclasses.fields(Workload)]
    unknown = sorted(set(map(str, item)) - set(known))
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(known)})")
    for key in ("name", "image", "memory_limit"):
        if key not in item:
            raise ValueError(f"needs {key}")
    name = _str(item["name"])
    if not _WORKLOAD_NAME.fullmatch(name):
        raise ValueError(f"name: {_show(name)}: lowercase letters, digits and '-' only (at most 63)")
    memory = memory_bytes(item["memory_limit"])
    if memory < MIN_WORKLOAD_MEMORY:
        raise ValueError(f"memory_limit: {memory} bytes, less than the {MIN_WORKLOAD_MEMORY} a container needs")
    choices = {}
    for key, allowed in WORKLOAD_CHOICES.items():
        value = _str(item.get(key, allowed[0]))
        if value not in allowed:
            raise ValueError(f"{key}: {_show(value)} is not one of {', '.join(allowed)}")
        choices[key] = value
    command = item.get("command", [])
    if not isinstance(command, list):
        raise ValueError("command: expected a list of strings")
    return Workload(name=name, image=_str(item["image"]), memory_limit=memory,
                    command=tuple(_str(c) for c in command),
                    host_network=_bool(item.get("host_network", False)), **choices)


def _workloads(v: Any) -> tuple[Workload, ...]:
    if not isinstance(v, list):
        raise ValueError("expected a list of workloads")
    out: list[Workload] = []
    for i, item in enumerate(v):
        try:
            workload = _workload(item)
        except ValueError as exc:
            raise ValueError(f"[{i}]: {exc}") from None
        if any(w.name == workload.name for w in out):
            raise ValueError(f"[{i}]: name {workload.name!r} used twice")
        out.append(workload)
    return tuple(out)


def _key_ref(v: Any) -> str:
    return _str(v)


STR = Kind("string", _str)
INT = Kind("integer", _int)
BOOL = Kind("boolean", _bool)
STR_LIST = Kind("list of strings", _str_list)
PCRS = Kind("list of PCR numbers", _pcr_list)
PATH = Kind("path", _str, is_path=True)
FILE = Kind("file", _str, is_path=True)
FILES = Kind("list of files", _str_list, is_path=True)
KEY = Kind("file or PKCS#11 URI", _key_ref, is_path=True)
PERMISSIONS = Kind("list of {path, mode, uid, gid}", _permissions)
WORKLOADS = Kind("list of {name, image, memory_limit, command, seccomp, apparmor, host_network, restart}",
                 _workloads)


@dataclass(frozen=True)
class Setting:
    """One key of the spec file."""

    section: str
    name: str
    kind: Kind
    default: Any = None  # None: optional and absent
    required: bool = False
    choices: tuple[str, ...] = ()
    help: str = ""
    example: str = ""
    minimum: int | None = None  # integers: the accepted range, checked before any work
    maximum: int | None = None
    max_bytes: int = 0  # FILE, FILES and KEY: a regular file of at most this size

    @property
    def key(self) -> str:
        return f"{self.section}.{self.name}" if self.section else self.name


UINT32_MAX = 2**32 - 1  # SquashFS stores modification times as 32-bit unsigned seconds
MAX_DISK_MIB = 16 * 1024 * 1024  # 16 TiB: ext4's largest file with 4 KiB blocks (the /var disk is a sparse file)
SMALL_FILE = 1024 * 1024  # keys, certificates, policies and config fragments
KERNEL_IMAGE_BYTES = 512 * 1024 * 1024  # kernel_hardening.kimage.MAX_IMAGE_BYTES

SETTINGS: tuple[Setting, ...] = (
    Setting("", "name", STR, required=True, help="Image name; used in artifact names and the manifest.",
            example="example-node"),
    Setting("", "version", STR, "0.0.0", help="Image version recorded in the manifest."),
    Setting("", "source_date_epoch", INT, None, minimum=0, maximum=UINT32_MAX,
            help="Timestamp (seconds since 1970) given to every file, archive and signature time field, "
                 "so that builds are reproducible. Defaults to $SOURCE_DATE_EPOCH, else 0."),
    Setting("kernel", "source", PATH, help="Kernel source tree or tarball (Debian's "
            "/usr/src/linux-source-6.1.tar.xz) built with the hardening profile and the customer CA.",
            example="/usr/src/linux-source-6.1.tar.xz"),
    Setting("kernel", "profile", STR, "module-less",
            help="Hardening profile of the kernel build (kernel_hardening: module-less, kspp, or a YAML file)."),
    Setting("kernel", "fragments", FILES, (), max_bytes=SMALL_FILE,
            help="Extra .config fragments applied after the profile (e.g. the NIC and /var filesystem of your "
                 "platform)."),
    Setting("kernel", "randstruct_seed", FILE, max_bytes=4096,
            help="The customer's secret seed for structure layout randomisation (CONFIG_RANDSTRUCT): a file of "
                 "16 to 4096 secret bytes, mode 0600 (`obelisk keys generate` makes keys/randstruct.seed). The "
                 "same seed rebuilds the same kernel; without one the build leaves RANDSTRUCT out and says so."),
    Setting("kernel", "image", FILE, max_bytes=KERNEL_IMAGE_BYTES,
               help="A prebuilt bzImage to use instead of building from kernel.source."),
    Setting("kernel", "cmdline", STR_LIST, ("console=ttyS0",),
            help="Kernel command line words added after obelisk's: the root and IMA parameters it needs and "
                 "every parameter kernel.profile asks for. A word that makes the line fail the profile's "
                 "command-line checks (pti=off, lsm=...) stops the build unless kernel.waivers waives it."),
    Setting("kernel", "waivers", FILE, max_bytes=SMALL_FILE,
            help="Waivers (`kernel check --waivers` format: id, reason, approver, expires) for profile "
                 "command-line checks the image's line may fail, e.g. kernel.cmdline.pti; recorded in the "
                 "manifest's boot.waived."),
    Setting("rootfs", "base", STR, "busybox", choices=ROOTFS_BASES,
            help="Userland: busybox (Debian's busybox-static, a few MB), debian (mmdebstrap from Debian's "
                 "archive), or a user-supplied directory or tarball (rootfs.path)."),
    Setting("rootfs", "path", PATH, help="The directory or tarball for rootfs.base directory|tarball."),
    Setting("rootfs", "suite", STR, "bookworm", help="Debian suite for rootfs.base debian."),
    Setting("rootfs", "mirror", STR, "http://deb.debian.org/debian", help="Debian mirror for rootfs.base debian."),
    Setting("rootfs", "packages", STR_LIST, (), help="Extra Debian packages for rootfs.base debian."),
    Setting("rootfs", "overlay", PATH, help="A directory copied over the base (configuration, binaries)."),
    Setting("rootfs", "permissions", PERMISSIONS, (),
            help="Modes and owners for paths matching each glob, applied in order (the last match wins); "
                 "everything else is 0755 for directories and executables, 0644 for other files, owned by root."),
    Setting("signing", "key", KEY, max_bytes=SMALL_FILE, help="Customer IMA signing key: a PEM file or a PKCS#11 URI "
            "(pkcs11:token=...;object=...). Signs every file and the manifest.", example="keys/ima.key"),
    Setting("signing", "cert", FILE, max_bytes=SMALL_FILE,
               help="X.509 certificate of signing.key (its subjectKeyIdentifier names "
            "the key in every signature).", example="keys/ima.crt"),
    Setting("signing", "ca", FILE, max_bytes=SMALL_FILE,
               help="Customer CA certificate: compiled into the kernel as trusted key, "
            "installed on the node for the agent's client-certificate check.", example="keys/ca.crt"),
    Setting("signing", "hash", STR, "sha256", choices=HASHES, help="Hash algorithm of the IMA signatures."),
    Setting("signing", "passphrase_env", STR, help="Environment variable holding signing.key's passphrase "
            "(never put the passphrase in the spec)."),
    Setting("ima", "policy", STR, "appraise-rootfs", choices=IMA_POLICIES,
            help="IMA policy profile (ima_policy) loaded by the initramfs; custom: ima.policy_file."),
    Setting("ima", "policy_file", FILE, max_bytes=SMALL_FILE,
               help="Your own IMA policy file, used verbatim with ima.policy: custom "
            "(it is signed and appraised like every other file)."),
    Setting("kubernetes", "role", STR, "worker", choices=K8S_ROLES,
            help="Kubernetes configuration rendered into the rootfs (cis_checks); binaries are not "
                 "included: they go under /opt/kubernetes/bin (see docs/image.md)."),
    Setting("kubernetes", "version", STR, "1.31", help="Kubernetes minor version the configuration targets."),
    Setting("tpm", "enabled", BOOL, True, help="The node has a TPM 2.0 (attestation, sealed disk key)."),
    Setting("disk", "encryption", BOOL, False,
            help="Mount /var from a LUKS2 volume that the node creates at its first boot in disk.raw's var "
                 "partition, its key sealed in the TPM to the UKI the build predicted (PCR 11) and, with "
                 "secure_boot.enabled, the customer's Secure Boot state (PCR 7); needs rootfs.base debian with "
                 "python3-tpm2-pytss, cryptsetup-bin and e2fsprogs."),
    Setting("disk", "pcrs", PCRS, (11,),
            help="PCRs the disk key is sealed to through disk.policy: PCR 11 (the UKI and the boot phases). "
                 "PCR 7 is added by value when secure_boot.enabled (the build predicts it from the customer's "
                 "keys); other firmware PCRs depend on the machine (reseal with `obelisk disk reseal`)."),
    Setting("disk", "policy", STR, "pcr", choices=("pcr", "signed"),
            help="How /var's key is bound to PCR 11. pcr: to the PCR 11 of the image that created /var at "
                 "first boot (a new image needs `obelisk disk reseal`). signed: to any PCR 11 value "
                 "disk.policy_key approved (TPM2 PolicyAuthorize, as systemd-cryptenroll --tpm2-public-key); "
                 "each build signs its own prediction into the UKI's .pcrsig section (OUT/tpm2-pcr-signature.json), "
                 "so an updated image opens the same /var."),
    Setting("disk", "policy_key", KEY, max_bytes=SMALL_FILE,
               help="With disk.policy: signed, the key that approves PCR 11 values "
            "(a PEM file or PKCS#11 URI; RSA or ECDSA P-256). Never the IMA key: an IMA signature over a "
            "crafted file would approve any policy. `obelisk keys generate` makes one (disk-policy.key).",
            example="keys/disk-policy.key"),
    Setting("disk", "policy_cert", FILE, max_bytes=SMALL_FILE,
               help="Certificate of disk.policy_key, issued by signing.ca.",
            example="keys/disk-policy.pem"),
    Setting("disk", "unlock", STR, "tpm", choices=UNLOCK_MODES,
            help="Where /var's key comes from. tpm: sealed in the node's TPM (disk.policy). fleet: released by "
                 "the fleet service (fleet.url) only after a round whose quote over a fresh nonce verified against "
                 "this build's manifest; nothing on the node opens /var alone. tpm+fleet: both: the LUKS2 key is "
                 "derived (HKDF-SHA256) from the TPM-sealed part and the service's part, so neither a stolen disk "
                 "with its TPM nor the service alone opens /var."),
    Setting("disk", "size_mib", INT, 64, minimum=32, maximum=MAX_DISK_MIB,
               help="Size of the /var partition in disk.raw (the node creates its filesystem at first boot)."),
    Setting("secure_boot", "enabled", BOOL, False,
            help="UEFI Secure Boot with the customer's own keys: the UKI in disk.raw is signed with "
                 "secure_boot.db_key, OUT/ovmf-vars.fd has PK, KEK and db enrolled with Secure Boot enforcing, "
                 "and the build predicts PCR 7 (the Secure Boot state), to which /var is bound by value."),
    Setting("secure_boot", "pk_cert", FILE, max_bytes=SMALL_FILE,
            help="Platform Key certificate (issued by signing.ca; `obelisk keys generate` makes pk.pem).",
            example="keys/pk.pem"),
    Setting("secure_boot", "kek_cert", FILE, max_bytes=SMALL_FILE,
            help="Key Exchange Key certificate (issued by signing.ca).", example="keys/kek.pem"),
    Setting("secure_boot", "db_key", KEY, max_bytes=SMALL_FILE,
            help="The db key that signs the UKI: a PEM file or a PKCS#11 URI.", example="keys/db.key"),
    Setting("secure_boot", "db_cert", FILE, max_bytes=SMALL_FILE,
            help="Certificate of secure_boot.db_key, issued by signing.ca; enrolled in db.", example="keys/db.pem"),
    Setting("upgrade", "rollback_index", INT, None, minimum=0, maximum=64,
            help="Rollback protection (docs/upgrade.md): this image's rollback index. /var opens only while the "
                 "node's rollback floor (a TPM NV index the node defines when it creates /var) is at most this "
                 "value: the customer signs PolicyPCR(11) + PolicyNV(floor <= index) for the image. Raise it in a "
                 "release that fixes a hole older images must not reopen /var with. Unset: no rollback "
                 "protection (the image's approval is PCR 11 alone, as before). Needs disk.policy: signed."),
    Setting("upgrade", "advance_rollback_index", BOOL, True,
            help="With upgrade.rollback_index: when this image has opened /var, the node raises its rollback "
                 "floor to the image's index (never lowers it), locking older images out of /var."),
    Setting("upgrade", "slot_size_mib", INT, 512, minimum=16, maximum=MAX_DISK_MIB,
            help="Size of each of the two root slots (A/B) in disk.raw: the root SquashFS must fit, and every image "
                 "a node is upgraded to must keep the same size (the node's partition table never changes). Each "
                 "slot's dm-verity partition is sized for a full slot. disk.raw is sparse: unused space costs "
                 "nothing."),
    Setting("upgrade", "boot_size_mib", INT, 64, minimum=64, maximum=4096,
            help="Size of each slot's boot partition (FAT32 with the slot's UKI as EFI/BOOT/BOOTX64.EFI; slot a's is "
                 "the ESP). The same in every image a node is upgraded to."),
    Setting("upgrade", "preserve_var", BOOL, True,
            help="`obelisk upgrade` keeps /var (the default: /var is this node's encrypted state, opened by every "
                 "image the customer signed, and an upgrade that loses it is a reinstall). false: the trial boot "
                 "of the new image erases /var and creates it anew (Talos wipes its EPHEMERAL partition by default)."),
    Setting("upgrade", "trial_seconds", INT, 300, minimum=30, maximum=3600,
            help="How long a trial boot of a newly written slot may take to come up (agent answering, self-check "
                 "passed) before the node reboots itself into its previous slot."),
    Setting("agent", "port", INT, 8443, minimum=1, maximum=65535,
               help="TCP port of the node agent (HTTPS, mutual TLS)."),
    Setting("runtime", "enabled", BOOL, False,
            help="A container runtime on the node: containerd (its configuration rendered by obelisk, state on "
                 "/var) and runc, started by the node's init with cgroup v2 and AppArmor; kubelet stays yours "
                 "(/opt/kubernetes/bin). Needs rootfs.base debian with " + ", ".join(RUNTIME_PACKAGES) + "."),
    Setting("runtime", "workloads", WORKLOADS, (),
            help="Containers the node's init starts at every boot, like static pods: `name` (lowercase, "
                 "digits, '-'), `image` (an OCI image layout directory beside the spec: the image's first "
                 "linux/amd64 manifest is packed into the signed root), `memory_limit` (required: bytes or "
                 "Ki/Mi/Gi; the container's cgroup v2 memory.max, OOM-killed above it), `command` (default: "
                 "the image's), `seccomp` and `apparmor` (`default`: the runtime's default profile; "
                 "`unconfined`), `host_network` (default false: a network namespace of its own), `restart` "
                 "(`never` or `always`). The agent reports each one at GET /v1/workloads."),
    Setting("fleet", "url", STR,
            help="The fleet service (`obelisk fleet serve`) the node registers with at boot and attests to every "
                 "fleet.interval seconds, connecting out only (https://HOST:PORT). The join token is a secret and "
                 "never goes into the image: it is provisioned on the node's config disk "
                 "(`obelisk boot --fleet-join-token FILE`), which may also override this URL.",
            example="https://fleet.example:8444"),
    Setting("fleet", "interval", INT, 60, minimum=5, maximum=86400,
            help="Seconds between the node's attestation rounds (the service marks a node unreachable after "
                 "three missed rounds of its own --interval)."),
    Setting("fleet", "ca", FILE, max_bytes=SMALL_FILE,
            help="CA the fleet service's TLS certificate must chain to; default signing.ca. Installed on the "
                 "signed root, so a changed config disk can redirect the node but not make it trust another "
                 "service.", example="keys/ca.crt"),
)

SECTIONS = tuple(dict.fromkeys(s.section for s in SETTINGS))
_BY_KEY = {s.key: s for s in SETTINGS}


def _section_class(section: str) -> type:
    fields = [(s.name, Any, field(default=s.default)) for s in SETTINGS if s.section == section]
    return dataclasses.make_dataclass(f"{section.capitalize()}Spec", fields, frozen=True)


# Section records are generated from the table: spec.kernel.image, spec.disk.pcrs, ...
SECTION_CLASSES: dict[str, type] = {sec: _section_class(sec) for sec in SECTIONS if sec}


@dataclass(frozen=True)
class Spec:
    name: str
    version: str
    source_date_epoch: int
    kernel: Any
    rootfs: Any
    signing: Any
    ima: Any
    kubernetes: Any
    tpm: Any
    disk: Any
    agent: Any
    secure_boot: Any = None
    fleet: Any = None
    upgrade: Any = None
    runtime: Any = None
    source: str = ""  # the spec file it came from
    base_dir: str = ""  # relative paths were resolved against this

    def get(self, key: str) -> Any:
        section, _, name = key.rpartition(".")
        return getattr(getattr(self, section), name) if section else getattr(self, name)

    def to_json(self) -> dict[str, Any]:
        """The spec as the manifest records it (resolved values, paths as written relative to base_dir)."""
        out: dict[str, Any] = {}
        for s in SETTINGS:
            value = self.get(s.key)
            if isinstance(value, tuple):
                value = [v.to_json() if hasattr(v, "to_json") else v for v in value]
            if s.kind.is_path and isinstance(value, str) and not value.startswith("pkcs11:"):
                value = _relative(value, self.base_dir)
            elif s.kind.is_path and isinstance(value, list):
                value = [_relative(v, self.base_dir) for v in value]
            target = out.setdefault(s.section, {}) if s.section else out
            target[s.name] = value
        return out


def _relative(path: str, base: str) -> str:
    try:
        return os.path.relpath(path, base) if base and os.path.isabs(path) else path
    except ValueError:
        return path


# --- cross-field rules: each names the field to blame ---

@dataclass(frozen=True)
class Rule:
    key: str  # the field named in the error
    message: str
    violated: Callable[[Spec], bool]


RULES: tuple[Rule, ...] = (
    Rule("ima.policy", "appraisal needs signed files: set signing.key and signing.cert (or use measure-only)",
         lambda s: s.ima.policy in APPRAISING and not s.signing.key),
    Rule("ima.policy_file", "ima.policy: custom needs ima.policy_file",
         lambda s: s.ima.policy == "custom" and not s.ima.policy_file),
    Rule("ima.policy_file", "only used with ima.policy: custom",
         lambda s: s.ima.policy != "custom" and bool(s.ima.policy_file)),
    Rule("signing.cert", "signing.key needs its certificate", lambda s: bool(s.signing.key) and not s.signing.cert),
    Rule("signing.key", "signing.cert given without signing.key", lambda s: bool(s.signing.cert) and not s.signing.key),
    Rule("disk.encryption", "the disk key is sealed by the TPM: encryption needs tpm.enabled: true",
         lambda s: s.disk.encryption and not s.tpm.enabled),
    Rule("disk.pcrs", "encryption needs at least one PCR to seal to", lambda s: s.disk.encryption and not s.disk.pcrs),
    Rule("disk.pcrs", "only PCR 11 (obelisk's boot measurements) can be predicted by the build and sealed to "
         "before the first boot; firmware PCRs depend on the machine",
         lambda s: s.disk.encryption and any(p != 11 for p in s.disk.pcrs)),
    Rule("disk.policy", "signed needs signing.key (the manifest is signed) and disk.policy_key",
         lambda s: s.disk.encryption and s.disk.policy == "signed" and not s.signing.key),
    Rule("disk.policy_key", "disk.policy: signed needs disk.policy_key and disk.policy_cert",
         lambda s: s.disk.encryption and s.disk.policy == "signed" and not (s.disk.policy_key and s.disk.policy_cert)),
    Rule("disk.policy_key", "only used with disk.encryption and disk.policy: signed",
         lambda s: bool(s.disk.policy_key) and not (s.disk.encryption and s.disk.policy == "signed")),
    Rule("disk.encryption", "the busybox userland cannot unlock /var (no Python TPM library, no cryptsetup): "
         "use rootfs.base debian", lambda s: s.disk.encryption and s.rootfs.base == "busybox"),
    Rule("rootfs.packages", "disk.encryption needs " + ", ".join(ENCRYPTION_PACKAGES) + " in the node's userland",
         lambda s: s.disk.encryption and s.rootfs.base == "debian"
         and not set(ENCRYPTION_PACKAGES) <= set(s.rootfs.packages)),
    Rule("upgrade.rollback_index", "rollback protection is part of the customer-signed /var policy: it needs "
         "disk.encryption: true, disk.policy: signed and a TPM unlock (disk.unlock tpm or tpm+fleet)",
         lambda s: s.upgrade.rollback_index is not None
         and not (s.disk.encryption and s.disk.policy == "signed" and s.disk.unlock != "fleet")),
    Rule("disk.unlock", "fleet and tpm+fleet unlock an encrypted /var: they need disk.encryption: true",
         lambda s: s.disk.unlock != "tpm" and not s.disk.encryption),
    Rule("disk.unlock", "fleet and tpm+fleet need fleet.url (where the node asks for its /var key)",
         lambda s: s.disk.unlock != "tpm" and not s.fleet.url),
    Rule("fleet.url", "expected https://HOST[:PORT] (the node speaks HTTPS only)",
         lambda s: bool(s.fleet.url) and not re.fullmatch(FLEET_URL, s.fleet.url)),
    Rule("fleet.url", "the node proves itself to the fleet with its TPM: needs tpm.enabled: true",
         lambda s: bool(s.fleet.url) and not s.tpm.enabled),
    Rule("fleet.url", "the busybox userland cannot run the fleet client (no Python TPM library): use rootfs.base "
         "debian with python3-tpm2-pytss", lambda s: bool(s.fleet.url) and s.rootfs.base == "busybox"),
    Rule("rootfs.packages", "fleet.url needs python3-tpm2-pytss in the node's userland (the fleet client)",
         lambda s: bool(s.fleet.url) and s.rootfs.base == "debian" and "python3-tpm2-pytss" not in s.rootfs.packages),
    Rule("fleet.ca", "fleet.url needs fleet.ca or signing.ca (the service's certificate must chain to one)",
         lambda s: bool(s.fleet.url) and not (s.fleet.ca or s.signing.ca)),
    Rule("fleet.ca", "only used with fleet.url", lambda s: bool(s.fleet.ca) and not s.fleet.url),
    Rule("rootfs.path", "rootfs.base directory|tarball needs rootfs.path",
         lambda s: s.rootfs.base in ("directory", "tarball") and not s.rootfs.path),
    Rule("rootfs.path", "only used with rootfs.base directory|tarball",
         lambda s: s.rootfs.base in ("busybox", "debian") and bool(s.rootfs.path)),
    Rule("rootfs.path", "rootfs.base directory needs a directory",
         lambda s: s.rootfs.base == "directory" and bool(s.rootfs.path) and not os.path.isdir(s.rootfs.path)),
    Rule("rootfs.path", "rootfs.base tarball needs a file",
         lambda s: s.rootfs.base == "tarball" and bool(s.rootfs.path) and not os.path.isfile(s.rootfs.path)),
    Rule("rootfs.overlay", "must be a directory",
         lambda s: bool(s.rootfs.overlay) and not os.path.isdir(s.rootfs.overlay)),
    Rule("kernel.image", "give kernel.image or kernel.source, not both",
         lambda s: bool(s.kernel.image) and bool(s.kernel.source)),
    Rule("kernel.source", "building the kernel with the customer CA needs signing.ca",
         lambda s: bool(s.kernel.source) and not s.signing.ca),
    Rule("secure_boot.enabled", "needs secure_boot.pk_cert, kek_cert, db_key and db_cert",
         lambda s: s.secure_boot.enabled and not (s.secure_boot.pk_cert and s.secure_boot.kek_cert
                                                  and s.secure_boot.db_key and s.secure_boot.db_cert)),
    Rule("secure_boot.enabled", "needs a kernel (kernel.source or kernel.image) for the UKI",
         lambda s: s.secure_boot.enabled and not (s.kernel.source or s.kernel.image)),
    Rule("secure_boot.db_cert", "needs signing.ca: the Secure Boot certificates must chain to the customer CA",
         lambda s: s.secure_boot.enabled and not s.signing.ca),
    Rule("secure_boot.db_key", "only used with secure_boot.enabled: true",
         lambda s: not s.secure_boot.enabled and bool(s.secure_boot.db_key)),
    Rule("runtime.enabled", "the container runtime comes from Debian's archive: needs rootfs.base debian",
         lambda s: s.runtime.enabled and s.rootfs.base != "debian"),
    Rule("rootfs.packages", "runtime.enabled needs " + ", ".join(RUNTIME_PACKAGES) + " in the node's userland",
         lambda s: s.runtime.enabled and s.rootfs.base == "debian"
         and not set(RUNTIME_PACKAGES) <= set(s.rootfs.packages)),
    Rule("runtime.workloads", "workloads need the container runtime: set runtime.enabled: true",
         lambda s: bool(s.runtime.workloads) and not s.runtime.enabled),
    Rule("agent.port", "must be 1-65535", lambda s: not 0 < s.agent.port < 65536),
    Rule("disk.size_mib", "must be at least 32 (LUKS2 header and a filesystem)", lambda s: s.disk.size_mib < 32),
    Rule("kubernetes.version", "expected MAJOR.MINOR such as 1.31",
         lambda s: not re.fullmatch(r"1\.[0-9]{2}", s.kubernetes.version)),
    Rule("source_date_epoch", "must not be negative", lambda s: s.source_date_epoch < 0),
)


def _existing(source: str, key: str, base: str, value: str, max_bytes: int = 0) -> str:
    """The path resolved against the spec's directory; with max_bytes, it must be a regular file that
    size or smaller (checked with stat: a FIFO or device is never opened). Contents are never shown."""
    if "\0" in value or len(value) > 4096:
        raise SpecError(source, key, f"{_show(value)}: not a usable path")
    expanded = os.path.expanduser(value)
    path = os.path.normpath(os.path.join(base, expanded))
    if not os.path.isabs(expanded) and os.path.commonpath([base, path]) != base:
        raise SpecError(source, key, f"{_show(value)}: a relative path must stay inside the spec's directory "
                        "(name a file elsewhere by its absolute path)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SpecError(source, key, f"{value}: no such file or directory") from None
    except OSError as exc:
        raise SpecError(source, key, f"{value}: {exc.strerror}") from None
    if max_bytes:
        if not stat.S_ISREG(st.st_mode):
            raise SpecError(source, key, f"{value}: not a regular file")
        if st.st_size > max_bytes:
            raise SpecError(source, key, f"{value}: larger than {max_bytes} bytes")
        if not os.access(path, os.R_OK):
            raise SpecError(source, key, f"{value}: not readable")
    return path


def _check_range(s: Setting, value: Any, source: str) -> None:
    if not isinstance(value, int):
        return
    if (s.minimum is not None and value < s.minimum) or (s.maximum is not None and value > s.maximum):
        raise SpecError(source, s.key, f"{_show(value)} is out of range {_range_text(s)}")


def _range_text(s: Setting) -> str:
    return f"{s.minimum if s.minimum is not None else ''}..{s.maximum if s.maximum is not None else ''}"


def parse_spec(data: Any, source: str, base_dir: str | os.PathLike[str]) -> Spec:
    """Check `data` (parsed YAML) against SETTINGS and RULES; resolve paths against base_dir."""
    base = os.path.abspath(base_dir)
    if not isinstance(data, dict):
        raise SpecError(source, "(top level)", "expected a mapping of settings")
    values: dict[str, Any] = {}
    for top, value in data.items():
        top = str(top)
        if top in SECTION_CLASSES:
            if value is None:
                value = {}
            if not isinstance(value, dict):
                raise SpecError(source, top, "expected a mapping")
            for name, v in value.items():
                key = f"{top}.{name}"
                if key not in _BY_KEY:
                    known = ", ".join(s.name for s in SETTINGS if s.section == top)
                    raise SpecError(source, key, f"unknown key (known in {top}: {known})")
                values[key] = v
        elif top in _BY_KEY and not _BY_KEY[top].section:
            values[top] = value
        else:
            known = ", ".join(s.key for s in SETTINGS if not s.section) + ", " + ", ".join(SECTION_CLASSES)
            raise SpecError(source, top, f"unknown key (known: {known})")

    resolved: dict[str, Any] = {}
    for s in SETTINGS:
        if s.key not in values or values[s.key] is None:
            if s.required:
                raise SpecError(source, s.key, "missing (required)")
            resolved[s.key] = s.default
            continue
        try:
            value = s.kind.convert(values[s.key])
        except ValueError as exc:
            raise SpecError(source, s.key, str(exc)) from None
        if s.choices and value not in s.choices:
            raise SpecError(source, s.key, f"{_show(value)} is not one of {', '.join(s.choices)}")
        _check_range(s, value, source)
        if s.kind.is_path and isinstance(value, tuple):
            value = tuple(_existing(source, s.key, base, v, s.max_bytes) for v in value)
        elif s.kind.is_path and not (s.kind is KEY and value.startswith("pkcs11:")):
            value = _existing(source, s.key, base, value, s.max_bytes)
        elif s.kind is WORKLOADS:
            for i, w in enumerate(value):
                image = _existing(source, f"{s.key}[{i}].image", base, w.image)
                if not os.path.isfile(os.path.join(image, "oci-layout")):
                    raise SpecError(source, f"{s.key}[{i}].image", f"{w.image}: not an OCI image layout "
                                    "(no oci-layout file)")
        resolved[s.key] = value

    if resolved["source_date_epoch"] is None:
        env = os.environ.get("SOURCE_DATE_EPOCH", "0")
        if not re.fullmatch(r"[0-9]{1,20}", env):
            raise SpecError("$SOURCE_DATE_EPOCH", "source_date_epoch", f"not an integer: {_show(env)}")
        resolved["source_date_epoch"] = int(env)
        _check_range(_BY_KEY["source_date_epoch"], int(env), "$SOURCE_DATE_EPOCH")

    sections = {sec: cls(**{s.name: resolved[s.key] for s in SETTINGS if s.section == sec})
                for sec, cls in SECTION_CLASSES.items()}
    spec = Spec(name=resolved["name"], version=resolved["version"],
                source_date_epoch=resolved["source_date_epoch"], source=source, base_dir=base, **sections)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}", spec.name):
        raise SpecError(source, "name", "letters, digits, '.', '_' and '-' only (at most 63)")
    for rule in RULES:
        if rule.violated(spec):
            raise SpecError(source, rule.key, rule.message)
    return spec


def load_spec(path: str | os.PathLike[str]) -> Spec:
    p = Path(path)
    data = load_yaml_file(p, floats_as_text=True)
    return parse_spec(data, str(p), p.parent)


# --- docs ---

def _default_text(s: Setting) -> str:
    if s.required:
        return "required"
    if s.default is None:
        return "—"
    if isinstance(s.default, bool):
        return "true" if s.default else "false"
    if isinstance(s.default, tuple):
        return "[" + ", ".join(str(x) for x in s.default) + "]"
    return f"`{s.default}`"


def render_docs() -> str:
    """docs/image-spec.md, generated from SETTINGS and RULES (a test keeps the file in step)."""
    lines = [
        "# Image spec reference",
        "",
        "<!-- Generated from src/obelisk/image/spec.py by `obelisk image spec-docs`; do not edit. -->",
        "",
        "`obelisk build SPEC.yaml -o OUT` reads one YAML file. Relative paths are resolved against the",
        "spec file's directory, must stay inside it and must exist. Unknown keys, wrong types, missing files and the",
        "combinations listed under *Rules* are rejected before any build work starts, naming the field.",
        "",
    ]
    for sec in SECTIONS:
        lines += [f"## `{sec}`" if sec else "## Top level", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for s in SETTINGS:
            if s.section != sec:
                continue
            sep = " \\| "
            kind = s.kind.name + (f" ({sep.join(s.choices)})" if s.choices else "")
            if s.minimum is not None or s.maximum is not None:
                kind += f" ({_range_text(s)})"
            if s.max_bytes:
                kind += f" (regular file, at most {s.max_bytes} bytes)"
            lines.append(f"| `{s.key}` | {kind} | {_default_text(s)} | {s.help} |")
        lines.append("")
    lines += ["## Rules", "", "| field | rejected when |", "|---|---|"]
    for r in RULES:
        lines.append(f"| `{r.key}` | {r.message} |")
    lines.append("")
    return "\n".join(lines)


def example_yaml() -> str:
    """A commented skeleton spec with every key and its default."""
    out = []
    for sec in SECTIONS:
        if sec:
            out.append(f"{sec}:")
        for s in SETTINGS:
            if s.section != sec:
                continue
            indent = "  " if sec else ""
            out.append(f"{indent}# {s.help}")
            value = s.example or (_default_text(s).strip("`") if s.default is not None else "")
            out.append(f"{indent}{'# ' if not s.required and s.default is None else ''}{s.name}: {value}")
    return "\n".join(out) + "\n"
