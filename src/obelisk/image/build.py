"""`obelisk build`: the pipeline from a spec to OUT, each step cached by the digest of its inputs.

    preflight ─► base rootfs ─► compose (obelisk files, modes) ─► sign (xattr file) ─► SquashFS ─► dm-verity
                                                                                   ├► initramfs
                 kernel (prebuilt or kernel_hardening build) ─────────────────────┤
                                           UKI (stub + kernel + initramfs + command line with the root hash,
                                           .pcrsig, signed with the db key) ─► disk.raw (ESP, root, verity, var)
                                                                                   └► SBOM, manifest, signature

With a kernel the build predicts what measured boot will show: PCR 4 (the UKI as the firmware
starts it), PCR 7 (the customer's Secure Boot variables and the db entry that admits the UKI) and
PCR 11 (the UKI's sections and the boot phases), all in the signed manifest.

Every problem the spec or its inputs can have is found by `preflight` before any step runs.
OUT is assembled under a temporary name and renamed only when complete: a build killed
midway leaves no OUT (or the previous, complete one).
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from obelisk import __version__
from obelisk.core import atomic, tools
from obelisk.core.digest import file_hexdigest, tree_content_digest, tree_stat_digest
from obelisk.core.errors import InputError
from obelisk.core.findings import Status
from obelisk.core.progress import progress
from obelisk.image import cmdline, initramfs, manifest, measure, rootfs, sbom, scripts, squashfs
from obelisk.image.cache import StepCache
from obelisk.image.spec import Permission, Spec, SpecError
from obelisk.tpm.prediction import PcrPrediction

if TYPE_CHECKING:
    from obelisk.tpm.seal import SignedPolicy

ARTIFACT_KERNEL = "bzImage"
ARTIFACT_INITRAMFS = "initramfs.cpio"
ARTIFACT_ROOTFS = "rootfs.squashfs"
ARTIFACT_POLICY = "ima-policy"
ARTIFACT_SBOM = "sbom.spdx.json"
ARTIFACT_REFERENCE = "ima-reference.json"
ARTIFACT_VAR_POLICY = "tpm2-pcr-signature.json"  # the customer-signed PCR 11 policy (also the UKI's .pcrsig)
ARTIFACT_UKI = "uki.efi"
ARTIFACT_VERITY = "rootfs.verity"  # the root's dm-verity hash tree
ARTIFACT_DISK = "disk.raw"
ARTIFACT_VARIABLES = "ovmf-vars.fd"  # OVMF's variable store with the customer's PK, KEK and db (secure_boot)
ESP_UKI_PATH = "EFI/BOOT/BOOTX64.EFI"  # the removable-media path every UEFI firmware boots without a boot entry
NODE_INIT = "sbin/obelisk-init"
BOOT_COMPLETE_COMMAND = "usr/lib/obelisk/boot-complete.tpm2"  # TPM2_PCR_Extend, sent by obelisk-init


@dataclass(frozen=True)
class Keys:
    """The customer's signing material, loaded and cross-checked once."""

    key: Any  # obelisk.signer.keys.SigningKey
    cert: x509.Certificate
    ca: x509.Certificate | None
    cert_digest: str


@dataclass(frozen=True)
class Plan:
    """What preflight resolved: everything the steps need, nothing left to fail on input."""

    spec: Spec
    keys: Keys | None
    busybox: Path | None
    ima_policy: bytes | None
    kubernetes_files: tuple[rootfs.ExtraFile, ...]
    kubernetes_modes: tuple[Permission, ...] = ()
    policy_signer: Keys | None = None  # disk.policy signed: the key approving PCR 11 values
    secure_boot: SecureBootPlan | None = None
    cmdline_waived: tuple[manifest.CmdlineWaiver, ...] = ()  # profile checks the line fails, waived
    kernel_left_out: tuple[str, ...] = ()  # profile options the kernel build leaves out, each with why


@dataclass(frozen=True)
class SecureBootPlan:
    """secure_boot.enabled, resolved: the enrollment, its variable store, what PCR 7 will hold."""

    enrollment: Any  # obelisk.signer.secureboot.Enrollment
    variables: bytes  # OUT/ovmf-vars.fd
    pcr7: PcrPrediction
    db_key: str  # a PEM file or a PKCS#11 URI, for signer.authenticode.sign_pe
    db_cert: Path


@dataclass
class BuildResult:
    out: Path
    artifacts: Mapping[str, manifest.Artifact]
    files: int
    steps: dict[str, str] = field(default_factory=dict)  # step -> "cached" | "built"
    left_out: tuple[str, ...] = ()  # hardening the profile asks for that this build leaves out, and why

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "artifacts": {name: asdict(a) for name, a in self.artifacts.items()},
                "files": self.files, "steps": self.steps, "left_out": list(self.left_out)}


# --- preflight: every input problem, before any work ---

def _load_signer(spec: Spec, key_ref: str, cert_path: str, field: str) -> tuple[Any, x509.Certificate]:
    """A signing key (a PEM file or a PKCS#11 URI, through signer.keys) and its certificate, matched."""
    from obelisk.signer.keys import PassphraseSource, check_key_matches_certificate, load_certificate, load_signing_key

    passphrase = PassphraseSource(env=spec.signing.passphrase_env) if spec.signing.passphrase_env else None
    try:
        key = load_signing_key(key_ref, passphrase)
        cert = load_certificate(cert_path)
        check_key_matches_certificate(key, cert, cert_path)
    except InputError as exc:
        raise SpecError(spec.source, field, str(exc)) from None
    return key, cert


def _check_issued_by_ca(spec: Spec, cert: x509.Certificate, ca: x509.Certificate, field: str) -> None:
    """The certificate chains to signing.ca now (the kernel ignores validity later: see signer.certs)."""
    import datetime as _dt

    from obelisk.signer.certs import ChainError, check_issued_by

    try:
        check_issued_by(cert, ca, at=_dt.datetime.now(_dt.UTC))
    except ChainError as exc:
        raise SpecError(spec.source, field, f"does not chain to signing.ca: {exc}") from None


def _cert_digest(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest()


def _load_keys(spec: Spec) -> Keys | None:
    if not spec.signing.key:
        return None
    from obelisk.signer.keys import load_certificate

    key, cert = _load_signer(spec, spec.signing.key, spec.signing.cert, "signing")
    try:
        ca = load_certificate(spec.signing.ca) if spec.signing.ca else None
    except InputError as exc:
        raise SpecError(spec.source, "signing", str(exc)) from None
    if ca is not None:
        _check_issued_by_ca(spec, cert, ca, "signing.cert")
    return Keys(key, cert, ca, _cert_digest(cert))


# SquashFS has no UUID: the kernel reports all zeros for it, and ima_policy's appraise-rootfs
# profile scopes its rules by fsuuid. /var (ext2, random UUID) is then outside the policy.
SQUASHFS_FSUUID = "00000000-0000-0000-0000-000000000000"


def _render_policy(spec: Spec) -> bytes | None:
    if spec.ima.policy == "none":
        return None
    if spec.ima.policy == "custom":
        from obelisk.core.errors import InputError
        from obelisk.core.inputs import read_bounded
        from obelisk.image.spec import SMALL_FILE

        try:
            return read_bounded(spec.ima.policy_file, "IMA policy", SMALL_FILE)
        except InputError as exc:
            raise SpecError(spec.source, "ima.policy_file", str(exc)) from None
    try:
        from obelisk.ima_policy import profiles
    except ImportError:
        raise SpecError(spec.source, "ima.policy", f"{spec.ima.policy}: the ima_policy profiles are not "
                        "available in this obelisk (use ima.policy: custom with ima.policy_file)") from None
    try:
        return profiles.render(profiles.load(spec.ima.policy), fsuuid=SQUASHFS_FSUUID).encode()
    except InputError as exc:
        raise SpecError(spec.source, "ima.policy", str(exc)) from None


def _render_kubernetes(spec: Spec) -> tuple[tuple[rootfs.ExtraFile, ...], tuple[Permission, ...]]:
    """The hardened Kubernetes configuration (cis_checks), with the modes the benchmarks ask for.

    Entries under /var are left out: /var is the node's own volume, mounted over the image's.
    """
    if spec.kubernetes.role == "none":
        return (), ()
    import tempfile

    from obelisk.cis_checks.render import render_tree

    with tempfile.TemporaryDirectory(prefix="obelisk-k8s-") as tmp:
        try:
            # an obelisk node has no systemd: the kubelet and containerd put pods in cgroups themselves
            tree = render_tree(tmp, spec.kubernetes.role, spec.kubernetes.version, cgroup_driver="cgroupfs")
        except InputError as exc:
            raise SpecError(spec.source, "kubernetes", str(exc)) from None
        files, modes = [], []
        for f in tree.files:
            if f.path.startswith("/var/"):
                continue
            rel = f.path.lstrip("/")
            modes.append(Permission(glob=rel, mode=f.mode, uid=f.uid, gid=f.gid))
            if f.kind == "file":
                files.append(rootfs.ExtraFile(rel, (Path(tmp) / rel).read_bytes(), f.mode))
    return tuple(files), tuple(modes)


def _kernel_inputs(spec: Spec) -> tuple[str, ...]:
    """The profile loads and the randstruct seed is a secret file; returns what the build will leave out."""
    if not spec.kernel.source:
        return ()
    from obelisk.kernel_hardening import randstruct
    from obelisk.kernel_hardening.profile import load_profile
    from obelisk.kernel_hardening.resolve import NO_SEED, RANDSTRUCT_OPTIONS

    try:
        profile = load_profile(spec.kernel.profile)
    except InputError as exc:
        raise SpecError(spec.source, "kernel.profile", str(exc)) from None
    if spec.kernel.randstruct_seed:
        try:
            randstruct.read_seed(spec.kernel.randstruct_seed)
        except InputError as exc:
            raise SpecError(spec.source, "kernel.randstruct_seed", str(exc)) from None
        return ()
    return tuple(f"{r.name}: {NO_SEED}" for r in profile.of_kind("kconfig")
                 if r.name in RANDSTRUCT_OPTIONS and r.requested_value() == "y")


def _cmdline_inputs(spec: Spec) -> tuple[manifest.CmdlineWaiver, ...]:
    """The line must pass the kernel profile's command-line checks, or the spec must waive each failure.

    Checked on the line without its dm-verity root words (known only once the root is built): those
    set up the root device, and no profile check is about them."""
    findings = cmdline.profile_findings(spec, cmdline.kernel_cmdline(spec))
    cmdline.refuse_failing(spec, findings)
    return tuple(manifest.CmdlineWaiver(id=f.id, observed=f.observed, expected=f.expected or "", reason=f.waiver.reason,
                                        approver=f.waiver.approver, expires=f.waiver.expires.isoformat())
                 for f in findings if f.status is Status.WAIVED and f.waiver is not None)


def _load_policy_key(spec: Spec, ima: Keys | None) -> Keys:
    """disk.policy_key: loaded, matched with its certificate, chained to signing.ca, and not the IMA key."""
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from obelisk.signer.keys import same_public_key

    key, cert = _load_signer(spec, spec.disk.policy_key, spec.disk.policy_cert, "disk.policy_key")
    public = cert.public_key()
    if ima is not None and same_public_key(public, ima.cert.public_key()):  # type: ignore[arg-type]
        raise SpecError(spec.source, "disk.policy_key", "is the IMA signing key: an IMA signature over a crafted "
                        "file would approve any PCR policy; use a key of its own (keys generate makes one)")
    if not (isinstance(public, rsa.RSAPublicKey)
            or (isinstance(public, ec.EllipticCurvePublicKey) and public.curve.name == "secp256r1")):
        raise SpecError(spec.source, "disk.policy_key", "must be RSA or ECDSA P-256 (the TPM checks the signature)")
    if ima is not None and ima.ca is not None:
        _check_issued_by_ca(spec, cert, ima.ca, "disk.policy_cert")
    return Keys(key, cert, ima.ca if ima else None, _cert_digest(cert))


def _secure_boot(spec: Spec) -> SecureBootPlan | None:
    """secure_boot: the db key matches its certificate, PK, KEK and db chain to signing.ca, and the
    variable store and PCR 7 follow from them."""
    if not spec.secure_boot.enabled:
        return None
    from obelisk.image import varstore
    from obelisk.signer.secureboot import load_enrollment

    tools.which("osslsigncode")
    _load_signer(spec, spec.secure_boot.db_key, spec.secure_boot.db_cert, "secure_boot.db_key")
    try:
        enrollment = load_enrollment(spec.signing.ca, spec.secure_boot.pk_cert, spec.secure_boot.kek_cert,
                                     spec.secure_boot.db_cert)
    except InputError as exc:
        raise SpecError(spec.source, "secure_boot", str(exc)) from None
    data, seen = varstore.render_varstore(enrollment, secure_boot=True)
    pcr7 = varstore.pcr7_prediction(seen, enrollment)
    return SecureBootPlan(enrollment=enrollment, variables=data, pcr7=pcr7, db_key=spec.secure_boot.db_key,
                          db_cert=Path(spec.secure_boot.db_cert))


def var_recipe(plan: Plan) -> bytes | None:
    """/etc/obelisk/var-seal.json: how the node seals /var at its first boot (disk/recipe.py)."""
    if not plan.spec.disk.encryption:
        return None
    from obelisk.disk import recipe

    unlock = plan.spec.disk.unlock
    if unlock == "fleet":  # nothing sealed on the node: the service's key alone opens /var
        return recipe.serialize(recipe.VarRecipe(policy_key=None, unlock=unlock))
    bound = {7: plan.secure_boot.pcr7.value} if plan.secure_boot else {}
    if plan.policy_signer is not None:
        upgrade = plan.spec.upgrade
        return recipe.serialize(recipe.VarRecipe(policy_key=_public_der(plan.policy_signer.cert),
                                                 signed_pcrs=(measure.PCR,), bound=bound, unlock=unlock,
                                                 rollback_index=upgrade.rollback_index,
                                                 advance_rollback_index=bool(upgrade.advance_rollback_index)))
    return recipe.serialize(recipe.VarRecipe(policy_key=None, bound=bound, bound_at_first_boot=(measure.PCR,),
                                             unlock=unlock))


def _public_der(cert: x509.Certificate) -> bytes:
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def signed_var_policy(plan: Plan, unseal: bytes) -> bytes | None:
    """disk.policy signed: disk.policy_key's approval of this UKI's PCR 11 at leave-initrd, as systemd's
    tpm2-pcr-signature.json (the UKI's .pcrsig)."""
    if plan.policy_signer is None:
        return None
    from obelisk.disk import pcrsig
    from obelisk.signer.keys import sign_tpm_policy
    from obelisk.tpm import seal

    values = {measure.PCR: unseal}
    signature = sign_tpm_policy(plan.policy_signer.key, seal.policy_pcr_digest((measure.PCR,), values))
    policies = [seal.SignedPolicy(pcrs=(measure.PCR,), values=values, signature=signature)]
    public_der = _public_der(plan.policy_signer.cert)
    if plan.spec.upgrade.rollback_index is not None:
        # the PCR-only entry stays first: systemd's tools and volumes sealed before rollback protection read it
        policies += rollback_approvals(plan.policy_signer.key, public_der, values, plan.spec.upgrade.rollback_index)
    return pcrsig.serialize(policies, public_der)


def rollback_approvals(key: Any, public_der: bytes, values: Mapping[int, bytes],
                       rollback_index: int) -> tuple[SignedPolicy, SignedPolicy]:
    """The customer's two approvals for an image with rollback protection (docs/upgrade.md):
    unseal /var: PolicyPCR(values) + PolicyNV(floor <= rollback_index), policyRef UNSEAL_REF;
    raise the floor: PolicyPCR(values), policyRef ADVANCE_REF (the floor index's authPolicy)."""
    from obelisk.signer.keys import sign_tpm_policy
    from obelisk.tpm import rollback, seal
    from obelisk.tpm import rollback_policy as rp

    pcrs = tuple(sorted(values))
    check = rollback.rollback_check(public_der, rollback_index)
    unseal = seal.SignedPolicy(pcrs=pcrs, values=dict(values), signature=b"", policy_ref=rp.UNSEAL_REF,
                               rollback=check)
    advance = seal.SignedPolicy(pcrs=pcrs, values=dict(values), signature=b"", policy_ref=rp.ADVANCE_REF)
    return (replace(unseal, signature=sign_tpm_policy(key, unseal.approved, unseal.policy_ref)),
            replace(advance, signature=sign_tpm_policy(key, advance.approved, advance.policy_ref)))


def preflight(spec: Spec) -> Plan:
    for tool in ("gensquashfs", "rdsquashfs", "busybox"):
        tools.which(tool)
    if spec.rootfs.base == "debian":
        tools.which("mmdebstrap")
    if spec.kernel.source:
        tools.which("make")
    left_out = _kernel_inputs(spec)
    keys = _load_keys(spec)
    policy_signer = _load_policy_key(spec, keys) if spec.disk.encryption and spec.disk.policy == "signed" else None
    if spec.kernel.source or spec.kernel.image:
        from obelisk.image import uki

        uki.load_stub()  # missing: one line naming systemd-boot-efi, before any work
        for tool in ("veritysetup", "sfdisk", "mkfs.vfat", "mcopy"):
            tools.which(tool)
    waived = _cmdline_inputs(spec)
    k8s_files, k8s_modes = _render_kubernetes(spec)
    if spec.runtime.enabled and spec.kubernetes.role == "none":  # runtime_files adds containerd's config alone
        from obelisk.cis_checks.render import CONTAINERD_CONFIG_MODE, PATHS

        k8s_modes += (Permission(glob=PATHS["containerd_config"].lstrip("/"), mode=CONTAINERD_CONFIG_MODE),)
    fleet_files(spec)  # fleet.ca readable and a certificate, before any work
    return Plan(spec=spec, keys=keys, busybox=Path(tools.which("busybox")), ima_policy=_render_policy(spec),
                kubernetes_files=k8s_files, kubernetes_modes=k8s_modes, policy_signer=policy_signer,
                secure_boot=_secure_boot(spec), cmdline_waived=waived, kernel_left_out=left_out)


# --- steps: explicit inputs, one output directory each ---

def step_base(plan: Plan, cache: StepCache) -> tuple[Path, bool]:
    s = plan.spec.rootfs
    inputs: dict[str, Any] = {"base": s.base}
    if s.base == "busybox":
        assert plan.busybox is not None
        inputs["busybox"] = file_hexdigest(plan.busybox)
    elif s.base == "directory":
        inputs["tree"] = tree_content_digest(s.path)
    elif s.base == "tarball":
        inputs["tarball"] = file_hexdigest(s.path)
    else:
        inputs.update(suite=s.suite, mirror=s.mirror, packages=list(s.packages), epoch=plan.spec.source_date_epoch,
                      recipe=rootfs.MMDEBSTRAP_RECIPE)

    def produce(out: Path) -> None:
        root = out / "root"
        root.mkdir()
        if s.base == "busybox":
            rootfs.base_busybox(root, plan.busybox)  # type: ignore[arg-type]
        elif s.base == "directory":
            rootfs.base_directory(root, Path(s.path))
        elif s.base == "tarball":
            rootfs.base_tarball(root, Path(s.path))
        else:
            rootfs.base_debian(root, s.suite, s.mirror, s.packages, plan.spec.source_date_epoch)

    return cache.run("rootfs-base", inputs, produce)


def node_files(plan: Plan) -> list[rootfs.ExtraFile]:
    """What obelisk adds to every rootfs: identity, certificates, policy, node init, Kubernetes configuration."""
    spec = plan.spec
    files = [rootfs.ExtraFile("etc/obelisk/image", f"name={spec.name}\nversion={spec.version}\n".encode())]
    if plan.keys is not None:
        files.append(rootfs.ExtraFile("etc/keys/x509_ima.der", plan.keys.cert.public_bytes(serialization.Encoding.DER)))
        if plan.keys.ca is not None:
            files.append(rootfs.ExtraFile("etc/obelisk/ca.pem",
                                          plan.keys.ca.public_bytes(serialization.Encoding.PEM)))
    if plan.ima_policy is not None:
        files.append(rootfs.ExtraFile("etc/ima/ima-policy", plan.ima_policy))
    files.append(rootfs.ExtraFile(NODE_INIT, node_init_script(spec).encode(), 0o755))
    if spec.tpm.enabled:
        files.append(rootfs.ExtraFile(BOOT_COMPLETE_COMMAND,
                                      measure.extend_command(measure.PCR, measure.phase_digest("sysinit"))))
    recipe = var_recipe(plan)
    if recipe is not None:
        files.append(rootfs.ExtraFile("etc/obelisk/var-seal.json", recipe))
    files.extend(fleet_files(spec))
    files.append(rootfs.ExtraFile("opt/kubernetes/README", KUBERNETES_README.encode()))
    files.extend(plan.kubernetes_files)
    files.extend(runtime_files(spec))
    return files


def runtime_files(spec: Spec) -> list[rootfs.ExtraFile]:
    """With runtime.enabled: containerd's configuration, the workloads' list and each one's OCI archive."""
    if not spec.runtime.enabled:
        return []
    from obelisk.cis_checks.render import CONTAINERD_CONFIG_MODE, render_containerd_config
    from obelisk.image import workloads

    files = [rootfs.ExtraFile(workloads.NODE_FILE, workloads.node_file(spec.runtime.workloads))]
    if spec.kubernetes.role == "none":  # else the Kubernetes configuration carries it (the same template)
        files.append(rootfs.ExtraFile(workloads.CONTAINERD_CONFIG.lstrip("/"),
                                      render_containerd_config(cgroup_driver="cgroupfs"), CONTAINERD_CONFIG_MODE))
    for i, w in enumerate(spec.runtime.workloads):
        try:
            archive = workloads.pack_archive(os.path.join(spec.base_dir, w.image), w.name, spec.source_date_epoch)
        except InputError as exc:
            raise SpecError(spec.source, f"runtime.workloads[{i}].image", str(exc)) from None
        files.append(rootfs.ExtraFile(f"{workloads.ARCHIVE_DIR}/{w.name}.tar", archive))
    return files


def fleet_files(spec: Spec) -> list[rootfs.ExtraFile]:
    """/etc/obelisk/fleet.json (and fleet.ca) on the signed root: where the node reports and whom it trusts.
    The join token is not here: it is a secret, provisioned on the node's config disk."""
    if not spec.fleet.url:
        return []
    from obelisk.image import fleet_node

    files = []
    ca = fleet_node.DEFAULT_CA
    if spec.fleet.ca:
        from obelisk.signer.keys import load_certificate

        try:
            pem = load_certificate(spec.fleet.ca).public_bytes(serialization.Encoding.PEM)
        except InputError as exc:
            raise SpecError(spec.source, "fleet.ca", str(exc)) from None
        files.append(rootfs.ExtraFile(fleet_node.CA_PATH.lstrip("/"), pem))
        ca = fleet_node.CA_PATH
    files.append(rootfs.ExtraFile(fleet_node.IMAGE_PATH.lstrip("/"), fleet_node.serialize(
        fleet_node.FleetNode(url=spec.fleet.url, interval=spec.fleet.interval, ca=ca))))
    return files


def var_mode(spec: Spec) -> str:
    return "luks2" if spec.disk.encryption else "plain"


def node_init_script(spec: Spec) -> str:
    """/sbin/obelisk-init, from templates/obelisk-init.sh.j2."""
    return scripts.render("obelisk-init.sh.j2", measure="yes" if spec.tpm.enabled else "no", var_mode=var_mode(spec),
                          port=spec.agent.port, boot_complete="/" + BOOT_COMPLETE_COMMAND,
                          boot_complete_digest=measure.phase_digest("sysinit").hex(),
                          runtime="yes" if spec.runtime.enabled else "no")


KUBERNETES_README = """Kubernetes binaries are not part of Debian 12's archive and are not in this image.
Put kubelet, containerd and (control plane) kube-apiserver, kube-controller-manager,
kube-scheduler and etcd under /opt/kubernetes/bin in your own overlay (rootfs.overlay):
they are then IMA-signed with the rest of the image. The configuration under /etc/kubernetes
was rendered by obelisk and passes its CIS/STIG checks.
"""


def step_compose(plan: Plan, base: Path, cache: StepCache) -> tuple[Path, bool]:
    spec = plan.spec
    extras = node_files(plan)
    inputs = {
        "base": base.name,
        "agent": tree_content_digest(AGENT_PACKAGE) if (base / "root" / "usr/bin/python3").exists() else None,
        "overlay": tree_content_digest(spec.rootfs.overlay) if spec.rootfs.overlay else None,
        "extras": [[f.path, f.mode, hashlib.sha256(f.data).hexdigest()] for f in extras],
        "permissions": [p.to_json() for p in plan.kubernetes_modes + spec.rootfs.permissions],
    }

    def produce(out: Path) -> None:
        root = out / "root"
        shutil.copytree(base / "root", root, symlinks=True)
        os.chmod(root, 0o755)
        for d in rootfs.BASE_DIRS:
            (root / d).mkdir(parents=True, exist_ok=True)
        if spec.rootfs.overlay:
            shutil.copytree(spec.rootfs.overlay, root, symlinks=True, dirs_exist_ok=True)
        rootfs.add_files(root, extras)
        if (root / "usr/bin/python3").exists():
            install_agent(root)
        rootfs.check_no_login(root)
        if spec.disk.encryption:
            rootfs.check_encryption_tools(root)
        if spec.runtime.enabled:
            rootfs.check_runtime_tools(root)
        # obelisk's declared modes first (Kubernetes configuration), the spec's last: the user decides.
        rootfs.normalize_modes(root, plan.kubernetes_modes + spec.rootfs.permissions)

    return cache.run("rootfs", inputs, produce)


AGENT_PACKAGE = Path(__file__).resolve().parent.parent  # the obelisk package the agent runs from


def install_agent(root: Path) -> None:
    """obelisk's Python package under /usr/lib/obelisk/python, for the node agent (signed like the rest)."""
    dest = root / "usr/lib/obelisk/python/obelisk"
    shutil.copytree(AGENT_PACKAGE, dest, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "tests"))


def step_sign(plan: Plan, tree: Path, cache: StepCache, quiet: bool) -> tuple[Path, bool]:
    assert plan.keys is not None
    keys = plan.keys
    inputs = {"tree": tree.name, "cert": keys.cert_digest, "hash": plan.spec.signing.hash}

    def produce(out: Path) -> None:
        from obelisk.signer.sign import sign_tree

        sign_tree([str(tree / "root")], keys.key, keys.cert, hash_name=plan.spec.signing.hash,
                  xattr_file=str(out / "ima.xattrs"), quiet=quiet, cert_source=str(plan.spec.signing.cert))

    return cache.run("sign", inputs, produce)


def step_squashfs(plan: Plan, tree: Path, xattrs: Path | None, cache: StepCache,
                  owners: list[tuple[str, int, int]]) -> tuple[Path, bool]:
    inputs = {"tree": tree.name, "xattrs": file_hexdigest(xattrs) if xattrs else None,
              "epoch": plan.spec.source_date_epoch, "gensquashfs": _tool_version("gensquashfs"),
              "recipe": squashfs.RECIPE, "owners": [list(o) for o in owners]}

    def produce(out: Path) -> None:
        squashfs.pack(tree / "root", xattrs, out / ARTIFACT_ROOTFS, plan.spec.source_date_epoch, owners)
        size = (out / ARTIFACT_ROOTFS).stat().st_size
        if size % 4096:  # dm-verity covers whole 4 KiB blocks: the partition must hold exactly the image
            raise RuntimeError(f"gensquashfs wrote {size} bytes, not a whole number of 4096-byte blocks")

    return cache.run("squashfs", inputs, produce)


def step_initramfs(plan: Plan, cache: StepCache) -> tuple[Path, bool]:
    assert plan.busybox is not None
    cert_der = plan.keys.cert.public_bytes(serialization.Encoding.DER) if plan.keys else None
    init = initramfs.render_init(measure=plan.spec.tpm.enabled, var_mode=var_mode(plan.spec))
    inputs = {"busybox": file_hexdigest(plan.busybox), "cert": hashlib.sha256(cert_der or b"").hexdigest(),
              "epoch": plan.spec.source_date_epoch, "init": hashlib.sha256(init.encode()).hexdigest()}

    def produce(out: Path) -> None:
        atomic.write_bytes(out / ARTIFACT_INITRAMFS,
                           initramfs.build(plan.busybox, cert_der, plan.spec.source_date_epoch, init))  # type: ignore[arg-type]

    return cache.run("initramfs", inputs, produce)


def step_kernel(plan: Plan, cache: StepCache, quiet: bool) -> tuple[Path | None, bool]:
    """bzImage: the spec's prebuilt one, or kernel_hardening's build (profile + fragments, customer CA inside)."""
    spec = plan.spec
    if spec.kernel.image:
        return Path(spec.kernel.image), True
    if not spec.kernel.source:
        return None, True
    from obelisk.kernel_hardening import randstruct
    from obelisk.kernel_hardening.kconfig_tree import compiler_version_text, gcc_plugins_available
    from obelisk.kernel_hardening.source import source_tree

    source = spec.kernel.source
    from obelisk.kernel_hardening.profile import load_profile

    # The profile's content, not its name: a changed built-in profile must rebuild the kernel. Not where it
    # was read from: the same profile in another checkout is the same input.
    profile = hashlib.sha256(repr(replace(load_profile(spec.kernel.profile), path="")).encode()
                             ).hexdigest()
    seed = randstruct.read_seed(spec.kernel.randstruct_seed) if spec.kernel.randstruct_seed else None
    inputs = {"source": file_hexdigest(source) if os.path.isfile(source) else tree_stat_digest(Path(source)),
              "profile": [spec.kernel.profile, profile], "ca": file_hexdigest(spec.signing.ca),
              "fragments": [file_hexdigest(f) for f in spec.kernel.fragments],
              # the compiler decides what Kconfig offers (GCC plugins need their headers installed)
              "toolchain": [compiler_version_text(), gcc_plugins_available()]}
    if seed is not None:  # a digest of the secret, never the secret (the cache's inputs are not secret)
        inputs["randstruct_seed"] = hashlib.sha256(seed.encode()).hexdigest()

    def produce(out: Path) -> None:
        from obelisk.kernel_hardening import build as kbuild
        from obelisk.kernel_hardening.profile import load_profile
        from obelisk.kernel_hardening.resolve import resolve

        tree = source_tree(source, quiet=quiet)
        res = resolve(tree, load_profile(spec.kernel.profile), fragments=list(spec.kernel.fragments),
                      randstruct_seed=seed is not None)
        atomic.write_text(out / "config", res.config_text)
        kbuild.build(source, out / "config", spec.signing.ca, out / "kernel", jobs=os.cpu_count() or 2, quiet=quiet,
                     randstruct_seed=seed)
        os.replace(out / "kernel" / "bzImage", out / ARTIFACT_KERNEL)

    out, cached = cache.run("kernel", inputs, produce)
    return out / ARTIFACT_KERNEL, cached


def _tool_version(tool: str) -> str:
    return tools.run(tool, ["--version"]).stdout.decode(errors="replace").splitlines()[0].strip()


# --- manifest ---

def file_records(root: Path, xattrs: dict[bytes, bytes], owners: dict[str, tuple[int, int]] | None = None
                 ) -> tuple[manifest.FileRecord, ...]:
    """Every entry of the staged rootfs as the image will hold it: modes as staged, owners root unless
    `owners` (relative path -> uid, gid) says otherwise; uid and gid are recorded only when not 0."""
    owners = owners or {}
    records = []
    root_b = os.fsencode(root)
    entries = []
    for dirpath, dirnames, filenames in os.walk(root_b):
        for name in dirnames + filenames:
            entries.append(os.path.join(dirpath, name))
    for full in sorted(entries, key=lambda p: os.path.relpath(p, root_b)):
        rel = os.path.relpath(full, root_b)
        path = "/" + os.fsdecode(rel)
        st = os.lstat(full)
        owner = owners.get(os.fsdecode(rel))
        uid, gid = owner if owner is not None and any(owner) else (None, None)
        if stat.S_ISDIR(st.st_mode):
            records.append(manifest.FileRecord(path, manifest.DIR, mode=f"{stat.S_IMODE(st.st_mode):04o}",
                                               uid=uid, gid=gid))
        elif stat.S_ISLNK(st.st_mode):
            records.append(manifest.FileRecord(path, manifest.SLINK, target=os.fsdecode(os.readlink(full)),
                                               uid=uid, gid=gid))
        elif stat.S_ISREG(st.st_mode):
            value = xattrs.get(rel)
            records.append(manifest.FileRecord(path, manifest.FILE, mode=f"{stat.S_IMODE(st.st_mode):04o}",
                                               size=st.st_size, sha256=file_hexdigest(os.fsdecode(full)),
                                               uid=uid, gid=gid,
                                               ima=base64.b64encode(value).decode() if value is not None else None))
    return tuple(records)


@dataclass(frozen=True)
class BootChain:
    """What the UKI boot path is made of and what it measures (with a kernel)."""

    cmdline: str
    verity: Any  # image.dmverity.VerityTree
    sections: Mapping[str, str]  # UKI section -> sha256
    authenticode: bytes
    signed_by: str | None  # sha256 of the db certificate
    predictions: tuple[PcrPrediction, ...]  # PCR 4, 7 (secure boot), 11
    unseal: bytes  # PCR 11 at leave-initrd
    layout: Any  # image.disk_image.DiskLayout


def disk_seed(spec: Spec) -> str:
    """What the verity salt and superblock UUID are derived from: the image's name and version."""
    return f"obelisk:{spec.name}:{spec.version}"


def layout_seed(spec: Spec) -> str:
    """What disk.raw's GUIDs and the ESP's volume id are derived from: the image's name alone, so every
    version has the same partition table and PARTUUIDs (an upgrade writes into the node's slots)."""
    return f"obelisk:{spec.name}"


def os_release(spec: Spec) -> bytes:
    return (f'NAME="obelisk"\nID=obelisk\nPRETTY_NAME="obelisk {spec.name} {spec.version}"\n'
            f"IMAGE_ID={spec.name}\nIMAGE_VERSION={spec.version}\n").encode()


def step_boot_chain(plan: Plan, squashfs_image: Path, initramfs_image: Path, kernel: Path, out: Path) -> BootChain:
    """dm-verity over the root, the UKI (signed with the db key under secure_boot), disk.raw; into `out`."""
    from obelisk.image import disk_image, dmverity, uki
    from obelisk.signer import authenticode

    spec = plan.spec
    tree = dmverity.format_hash_tree(squashfs_image, out / ARTIFACT_VERITY, seed=disk_seed(spec))
    seed = layout_seed(spec)
    line = cmdline.kernel_cmdline(spec, (disk_image.verity_root_argument(tree, seed),
                                         cmdline.verity_word(tree.root_hash, tree.salt, tree.hash_start_block)))
    cmdline.check_length(spec, line)
    pcrpkey = (plan.policy_signer.cert.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo) if plan.policy_signer else None)
    sections = uki.UkiSections(linux=kernel.read_bytes(), initrd=initramfs_image.read_bytes(), cmdline=line.encode(),
                               osrel=os_release(spec), pcrpkey=pcrpkey)
    pcr11 = measure.predict(uki.pcr11_prediction(sections).events)
    pcrsig = signed_var_policy(plan, pcr11.unseal)
    if pcrsig is not None:  # not measured by the stub: the signature over PCR 11 cannot be inside it
        sections = replace(sections, pcrsig=pcrsig)
        (out / ARTIFACT_VAR_POLICY).write_bytes(pcrsig)
    unsigned = out / ".uki-unsigned.efi"
    uki.write_uki(unsigned, sections)
    signed_by = None
    if plan.secure_boot is not None:
        authenticode.sign_pe(unsigned, out / ARTIFACT_UKI, plan.secure_boot.db_key, plan.secure_boot.db_cert,
                             signing_time=spec.source_date_epoch)
        unsigned.unlink()
        signed_by = hashlib.sha256(plan.secure_boot.enrollment.db).hexdigest()
        atomic.write_bytes(out / ARTIFACT_VARIABLES, plan.secure_boot.variables)
    else:
        os.replace(unsigned, out / ARTIFACT_UKI)
    digest = authenticode.load_authenticode_digest(out / ARTIFACT_UKI)
    # Without Secure Boot the firmware also measures the kernel the stub loads (LoadImage) into PCR 4
    secure = plan.secure_boot is not None
    kernel_digest = None if secure else uki.kernel_authenticode_digest(sections)
    predictions = [uki.pcr4_prediction(digest, secure_boot=secure, kernel_authenticode=kernel_digest)]
    if plan.secure_boot is not None:
        predictions.append(plan.secure_boot.pcr7)
    predictions.append(pcr11.pcr11)
    layout = disk_image.build_disk_image(out / ARTIFACT_DISK, esp_files={ESP_UKI_PATH: out / ARTIFACT_UKI},
                                         root=squashfs_image, root_verity=out / ARTIFACT_VERITY,
                                         var_size=spec.disk.size_mib << 20, seed=seed,
                                         source_date_epoch=spec.source_date_epoch,
                                         esp_size=spec.upgrade.boot_size_mib << 20,
                                         slot_size=spec.upgrade.slot_size_mib << 20)
    return BootChain(cmdline=line, verity=tree,
                     sections={n: hashlib.sha256(d).hexdigest() for n, d in sections.by_name().items()},
                     authenticode=digest, signed_by=signed_by, predictions=tuple(predictions), unseal=pcr11.unseal,
                     layout=layout)


def build_manifest(plan: Plan, artifacts: Mapping[str, manifest.Artifact],
                   files: tuple[manifest.FileRecord, ...], chain: BootChain | None) -> manifest.Manifest:
    spec = plan.spec
    mf = manifest
    boot = mf.Boot(cmdline=chain.cmdline if chain else cmdline.kernel_cmdline(spec),
                   devices=mf.Devices(root=cmdline.ROOT_DEVICE, var=cmdline.VAR_DEVICE, config=cmdline.CONFIG_DEVICE),
                   waived=plan.cmdline_waived or None)
    predictions: tuple[PcrPrediction, ...] = ()
    sealed_to: dict[int, bytes] = {}
    if chain is not None:
        v = chain.verity
        boot = replace(boot, uki=mf.Uki(sections=chain.sections, authenticode_sha256=chain.authenticode.hex(),
                                        signed_by=chain.signed_by),
                       verity=mf.Verity(root_hash=v.root_hash, salt=v.salt, hash_algorithm=v.hash_algorithm,
                                        data_block_size=v.data_block_size, hash_block_size=v.hash_block_size),
                       disk_image=chain.layout)
        if plan.secure_boot is not None:
            e = plan.secure_boot.enrollment
            boot = replace(boot, secure_boot=mf.SecureBoot(
                pk_sha256=hashlib.sha256(e.pk).hexdigest(), kek_sha256=hashlib.sha256(e.kek).hexdigest(),
                db_sha256=hashlib.sha256(e.db).hexdigest(), variables=ARTIFACT_VARIABLES))
        if spec.tpm.enabled:
            predictions = chain.predictions
        if spec.disk.encryption:
            sealed_to = {measure.PCR: chain.unseal}
            if plan.secure_boot is not None:
                sealed_to[7] = plan.secure_boot.pcr7.value
    return mf.Manifest(
        image=mf.Image(name=spec.name, version=spec.version),
        tool=mf.Tool(name="obelisk", version=__version__, gensquashfs=_tool_version("gensquashfs")),
        source_date_epoch=spec.source_date_epoch,
        spec=spec.to_json(),
        signing=(mf.Signing(key_id=_key_id(plan.keys.cert), hash=spec.signing.hash,
                            certificate_sha256=plan.keys.cert_digest) if plan.keys else None),
        artifacts=artifacts,
        files=files,
        ima_reference=mf.ima_reference(files, f"{spec.name}-{spec.version}"),
        boot=boot,
        pcrs=mf.Pcrs(
            bank=measure.BANK,
            predicted={p.pcr: p.value for p in predictions},
            predictions=predictions,
            note="PCR 4 holds the UKI as the firmware started it, PCR 7 the Secure Boot state and the db entry "
                 "that admitted the UKI, PCR 11 the UKI's sections (systemd-stub) and the boot phases: the events "
                 "above, predicted here. PCRs 0-3 and 5-6 depend on the machine's firmware and PCR 10 on the "
                 "order of IMA measurements: the verifier replays the event log and the IMA list for those",
        ),
        disk=mf.Disk(var=var_mode(spec), policy=spec.disk.policy if spec.disk.encryption else None,
                     sealed_to=sealed_to,
                     signed_policy=ARTIFACT_VAR_POLICY if plan.policy_signer and chain else None,
                     policy_certificate=(plan.policy_signer.cert.public_bytes(serialization.Encoding.PEM).decode()
                                         if plan.policy_signer else None),
                     size_mib=spec.disk.size_mib, rollback_index=spec.upgrade.rollback_index,
                     advance_rollback_index=(spec.upgrade.advance_rollback_index
                                             if spec.upgrade.rollback_index is not None else None)),
        kubernetes=mf.Kubernetes(role=spec.kubernetes.role, version=spec.kubernetes.version,
                                 binaries="/opt/kubernetes/bin (not included)"),
        sbom=ARTIFACT_SBOM,
    )


def _key_id(cert: x509.Certificate) -> str:
    from obelisk.signer.keys import ima_key_id

    return ima_key_id(cert).hex()


# --- the pipeline ---

def build(spec: Spec, out: Path, *, cache: StepCache, quiet: bool = False) -> BuildResult:
    plan = preflight(spec)
    steps: dict[str, str] = {}

    def mark(name: str, cached: bool) -> None:
        steps[name] = "cached" if cached else "built"

    with progress("building image", total=7, quiet=quiet) as bar:
        bar.stage("rootfs base")
        base, c = step_base(plan, cache)
        mark("rootfs-base", c)
        bar.advance()
        bar.stage("rootfs compose")
        tree, c = step_compose(plan, base, cache)
        mark("rootfs", c)
        bar.advance()
        xattr_path: Path | None = None
        xattrs: dict[bytes, bytes] = {}
        if plan.keys is not None:
            bar.stage("signing files")
            signed, c = step_sign(plan, tree, cache, quiet=True)
            mark("sign", c)
            xattr_path = signed / "ima.xattrs"
            from obelisk.signer.verify import load_dump

            xattrs = load_dump(str(xattr_path))
        bar.advance()
        bar.stage("squashfs")
        owners = rootfs.owners(tree / "root", plan.kubernetes_modes + spec.rootfs.permissions)
        sq, c = step_squashfs(plan, tree, xattr_path, cache, owners)
        mark("squashfs", c)
        bar.advance()
        bar.stage("initramfs")
        ir, c = step_initramfs(plan, cache)
        mark("initramfs", c)
        bar.advance()
        bar.stage("kernel")
        kernel, c = step_kernel(plan, cache, quiet)
        if spec.kernel.source:
            mark("kernel", c)
        bar.stage("manifest")
        files = file_records(tree / "root", xattrs, {path: (uid, gid) for path, uid, gid in owners})
        with atomic.atomic_directory(out) as tmp:
            shutil.copyfile(sq / ARTIFACT_ROOTFS, tmp / ARTIFACT_ROOTFS)
            shutil.copyfile(ir / ARTIFACT_INITRAMFS, tmp / ARTIFACT_INITRAMFS)
            if kernel is not None:
                shutil.copyfile(kernel, tmp / ARTIFACT_KERNEL)
            if plan.ima_policy is not None:
                (tmp / ARTIFACT_POLICY).write_bytes(plan.ima_policy)
            chain = None
            if kernel is not None:
                bar.stage("UKI and disk.raw")
                chain = step_boot_chain(plan, sq / ARTIFACT_ROOTFS, ir / ARTIFACT_INITRAMFS, kernel, tmp)
            packages = sbom.dpkg_packages(tree / "root")
            if spec.rootfs.base == "busybox":
                packages.append(sbom.Package("busybox-static", _busybox_version()))
            (tmp / ARTIFACT_SBOM).write_bytes(sbom.render(spec.name, spec.version, packages,
                                                          [f for f in files if f.type == manifest.FILE],
                                                          spec.source_date_epoch))
            (tmp / ARTIFACT_REFERENCE).write_bytes(manifest.dumps(
                manifest.ima_reference(files, f"{spec.name}-{spec.version}").to_json()))
            artifacts = {p.name: manifest.artifact_record(p) for p in sorted(tmp.iterdir())}
            data = manifest.serialize(build_manifest(plan, artifacts, files, chain))
            (tmp / manifest.MANIFEST).write_bytes(data)
            if plan.keys is not None:
                sig = manifest.sign(data, plan.keys.key, plan.keys.cert, spec.signing.hash)
                (tmp / manifest.SIGNATURE).write_bytes(manifest.dumps(sig.to_json()))
            for p in tmp.iterdir():
                os.chmod(p, 0o644)
            os.chmod(tmp, 0o755)
            os.sync()
        bar.advance()
    return BuildResult(out=out, artifacts=artifacts, files=sum(1 for f in files if f.type == manifest.FILE),
                       steps=steps, left_out=plan.kernel_left_out)


def _busybox_version() -> str:
    try:
        out = tools.run("dpkg-query", ["-W", "-f=${Version}", "busybox-static"], check=False).stdout.decode()
        return out.strip() or "NOASSERTION"
    except Exception:  # dpkg-query missing: not a Debian build host
        return "NOASSERTION"
