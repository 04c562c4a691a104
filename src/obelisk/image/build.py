"""`obelisk build`: the pipeline from a spec to OUT, each step cached by the digest of its inputs.

    preflight ─► base rootfs ─► compose (obelisk files, modes) ─► sign (xattr file) ─► SquashFS
                                                                                   ├► initramfs
                 kernel (prebuilt or kernel_hardening build) ─────────────────────┤
                                                                                   └► SBOM, manifest, signature

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
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from obelisk import __version__
from obelisk.core import atomic, tools
from obelisk.core.digest import file_hexdigest, tree_content_digest, tree_stat_digest
from obelisk.core.errors import InputError
from obelisk.core.progress import progress
from obelisk.image import cmdline, initramfs, manifest, measure, rootfs, sbom, scripts, squashfs
from obelisk.image.cache import StepCache
from obelisk.image.spec import Permission, Spec, SpecError

ARTIFACT_KERNEL = "bzImage"
ARTIFACT_INITRAMFS = "initramfs.cpio"
ARTIFACT_ROOTFS = "rootfs.squashfs"
ARTIFACT_POLICY = "ima-policy"
ARTIFACT_SBOM = "sbom.spdx.json"
ARTIFACT_REFERENCE = "ima-reference.json"
ARTIFACT_VAR_POLICY = "var-policy.json"  # the customer-signed PCR 11 policy that opens /var (disk.policy signed)
VAR_POLICY_IN_INITRAMFS = "etc/obelisk/var-policy.json"
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


@dataclass
class BuildResult:
    out: Path
    artifacts: Mapping[str, manifest.Artifact]
    files: int
    steps: dict[str, str] = field(default_factory=dict)  # step -> "cached" | "built"

    def to_json(self) -> dict[str, Any]:
        return {"out": str(self.out), "artifacts": {name: asdict(a) for name, a in self.artifacts.items()},
                "files": self.files, "steps": self.steps}


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
            tree = render_tree(tmp, spec.kubernetes.role, spec.kubernetes.version)
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


def _kernel_inputs(spec: Spec) -> None:
    if not spec.kernel.source:
        return
    from obelisk.kernel_hardening.profile import load_profile

    try:
        load_profile(spec.kernel.profile)
    except InputError as exc:
        raise SpecError(spec.source, "kernel.profile", str(exc)) from None


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


def signed_var_policy(plan: Plan, rootfs_sha256: bytes) -> bytes | None:
    """disk.policy signed: disk.policy_key's approval of this image's PCR 11 at the unlock point."""
    spec = plan.spec
    if not (spec.disk.encryption and spec.disk.policy == "signed"):
        return None
    from obelisk.disk import policy as policymod
    from obelisk.signer.keys import sign_tpm_policy
    from obelisk.tpm import seal

    assert plan.policy_signer is not None
    prediction = measure.predict(measure.boot_events(cmdline.kernel_cmdline(spec), rootfs_sha256))
    values = {measure.PCR: prediction.unseal}
    signature = sign_tpm_policy(plan.policy_signer.key, seal.policy_pcr_digest((measure.PCR,), values))
    policy = seal.SignedPolicy(pcrs=(measure.PCR,), values=values, signature=signature)
    return manifest.dumps(policymod.to_json(policy))


def preflight(spec: Spec) -> Plan:
    for tool in ("gensquashfs", "rdsquashfs", "busybox"):
        tools.which(tool)
    if spec.rootfs.base == "debian":
        tools.which("mmdebstrap")
    if spec.kernel.source:
        tools.which("make")
        _kernel_inputs(spec)
    keys = _load_keys(spec)
    policy_signer = _load_policy_key(spec, keys) if spec.disk.encryption and spec.disk.policy == "signed" else None
    k8s_files, k8s_modes = _render_kubernetes(spec)
    return Plan(spec=spec, keys=keys, busybox=Path(tools.which("busybox")), ima_policy=_render_policy(spec),
                kubernetes_files=k8s_files, kubernetes_modes=k8s_modes, policy_signer=policy_signer)


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
                                      measure.extend_command(measure.PCR, measure.BOOT_COMPLETE_DIGEST)))
    files.append(rootfs.ExtraFile("opt/kubernetes/README", KUBERNETES_README.encode()))
    files.extend(plan.kubernetes_files)
    return files


def var_mode(spec: Spec) -> str:
    return "luks2" if spec.disk.encryption else "plain"


def node_init_script(spec: Spec) -> str:
    """/sbin/obelisk-init, from templates/obelisk-init.sh.j2."""
    return scripts.render("obelisk-init.sh.j2", measure="yes" if spec.tpm.enabled else "no", var_mode=var_mode(spec),
                          port=spec.agent.port, boot_complete="/" + BOOT_COMPLETE_COMMAND,
                          boot_complete_digest=measure.BOOT_COMPLETE_DIGEST.hex())


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
        if size % 512:  # PCR 11 measures the whole root disk: it must hold exactly the image's bytes
            raise RuntimeError(f"gensquashfs wrote {size} bytes, not a whole number of 512-byte sectors")

    return cache.run("squashfs", inputs, produce)


def step_initramfs(plan: Plan, cache: StepCache, var_policy: bytes | None) -> tuple[Path, bool]:
    assert plan.busybox is not None
    cert_der = plan.keys.cert.public_bytes(serialization.Encoding.DER) if plan.keys else None
    init = initramfs.render_init(measure=plan.spec.tpm.enabled, var_mode=var_mode(plan.spec))
    inputs = {"busybox": file_hexdigest(plan.busybox), "cert": hashlib.sha256(cert_der or b"").hexdigest(),
              "epoch": plan.spec.source_date_epoch, "init": hashlib.sha256(init.encode()).hexdigest(),
              "var_policy": hashlib.sha256(var_policy).hexdigest() if var_policy else None}
    extra = {VAR_POLICY_IN_INITRAMFS: var_policy} if var_policy else {}

    def produce(out: Path) -> None:
        atomic.write_bytes(out / ARTIFACT_INITRAMFS,
                           initramfs.build(plan.busybox, cert_der, plan.spec.source_date_epoch, init,  # type: ignore[arg-type]
                                           extra))

    return cache.run("initramfs", inputs, produce)


def step_kernel(plan: Plan, cache: StepCache, quiet: bool) -> tuple[Path | None, bool]:
    """bzImage: the spec's prebuilt one, or kernel_hardening's build (profile + fragments, customer CA inside)."""
    spec = plan.spec
    if spec.kernel.image:
        return Path(spec.kernel.image), True
    if not spec.kernel.source:
        return None, True
    from obelisk.kernel_hardening.source import source_tree

    source = spec.kernel.source
    from obelisk.kernel_hardening.profile import load_profile

    # The profile's content, not its name: a changed built-in profile must rebuild the kernel. Not where it
    # was read from: the same profile in another checkout is the same input.
    profile = hashlib.sha256(repr(replace(load_profile(spec.kernel.profile), path="")).encode()
                             ).hexdigest()
    inputs = {"source": file_hexdigest(source) if os.path.isfile(source) else tree_stat_digest(Path(source)),
              "profile": [spec.kernel.profile, profile], "ca": file_hexdigest(spec.signing.ca),
              "fragments": [file_hexdigest(f) for f in spec.kernel.fragments]}

    def produce(out: Path) -> None:
        from obelisk.kernel_hardening import build as kbuild
        from obelisk.kernel_hardening.profile import load_profile
        from obelisk.kernel_hardening.resolve import resolve

        tree = source_tree(source, quiet=quiet)
        res = resolve(tree, load_profile(spec.kernel.profile), fragments=list(spec.kernel.fragments))
        atomic.write_text(out / "config", res.config_text)
        kbuild.build(source, out / "config", spec.signing.ca, out / "kernel", jobs=os.cpu_count() or 2, quiet=quiet)
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


def build_manifest(plan: Plan, artifacts: Mapping[str, manifest.Artifact],
                   files: tuple[manifest.FileRecord, ...]) -> manifest.Manifest:
    spec = plan.spec
    line = cmdline.kernel_cmdline(spec)
    events = measure.boot_events(line, bytes.fromhex(artifacts[ARTIFACT_ROOTFS].sha256))
    prediction = measure.predict(events)
    mf = manifest
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
        boot=mf.Boot(cmdline=line, devices=mf.Devices(root=cmdline.ROOT_DEVICE, var=cmdline.VAR_DEVICE,
                                                      config=cmdline.CONFIG_DEVICE)),
        pcrs=mf.Pcrs(
            bank=measure.BANK,
            predicted={measure.PCR: prediction.final} if spec.tpm.enabled else {},
            events=events if spec.tpm.enabled else (),
            note="PCR 11 holds obelisk's boot measurements (the events above), predicted here; PCRs 0-9 "
                 "depend on the firmware and boot path of the machine, PCR 10 on the order of IMA "
                 "measurements: the verifier replays the event log and the IMA list for those",
        ),
        disk=mf.Disk(var=var_mode(spec), policy=spec.disk.policy if spec.disk.encryption else None,
                     sealed_to={measure.PCR: prediction.unseal} if spec.disk.encryption else {},
                     signed_policy=ARTIFACT_VAR_POLICY if plan.policy_signer else None,
                     policy_certificate=(plan.policy_signer.cert.public_bytes(serialization.Encoding.PEM).decode()
                                         if plan.policy_signer else None),
                     size_mib=spec.disk.size_mib),
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
        var_policy = signed_var_policy(plan, bytes.fromhex(file_hexdigest(sq / ARTIFACT_ROOTFS)))
        ir, c = step_initramfs(plan, cache, var_policy)
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
            if var_policy is not None:
                (tmp / ARTIFACT_VAR_POLICY).write_bytes(var_policy)
            packages = sbom.dpkg_packages(tree / "root")
            if spec.rootfs.base == "busybox":
                packages.append(sbom.Package("busybox-static", _busybox_version()))
            (tmp / ARTIFACT_SBOM).write_bytes(sbom.render(spec.name, spec.version, packages,
                                                          [f for f in files if f.type == manifest.FILE],
                                                          spec.source_date_epoch))
            (tmp / ARTIFACT_REFERENCE).write_bytes(manifest.dumps(
                manifest.ima_reference(files, f"{spec.name}-{spec.version}").to_json()))
            artifacts = {p.name: manifest.artifact_record(p) for p in sorted(tmp.iterdir())}
            data = manifest.serialize(build_manifest(plan, artifacts, files))
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
                       steps=steps)


def _busybox_version() -> str:
    try:
        out = tools.run("dpkg-query", ["-W", "-f=${Version}", "busybox-static"], check=False).stdout.decode()
        return out.strip() or "NOASSERTION"
    except Exception:  # dpkg-query missing: not a Debian build host
        return "NOASSERTION"
