"""Typed collectors: what a node's Kubernetes components really run with.

A `NodeView` is built once per scan from a root directory (a live node's `/`, a mounted image,
an extracted backup) and, on a live node, from `/proc`:

* each component's effective command line: from `/proc/<pid>/cmdline` when the process runs,
  otherwise from its static pod manifest or systemd unit (with drop-ins and environment files);
* the kubelet's effective configuration (flags over `--config` over `--config-dir` drop-ins
  over defaults; see kubelet.py);
* file mode and owner (names from the root's own passwd/group/sysusers.d), parents included;
* certificates and their key sizes.

Nothing here decides pass or fail; engine.py does. Unreadable or malformed inputs are recorded
as `InputProblem`s naming the file, and the scan goes on.
"""

from __future__ import annotations

import errno
import functools
import os
import stat as stat_mod
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from obelisk.cis_checks.cmdline import CommandLine, Unit, find_unit_files, parse_flags, parse_unit
from obelisk.core.errors import InputError
from obelisk.core.inputs import read_bounded
from obelisk.core.yamlsafe import load_yaml

MAX_FILE_BYTES = 4 * 1024 * 1024
CONTROL_PLANE = ("kube-apiserver", "kube-controller-manager", "kube-scheduler")
COMPONENT_NAMES = (*CONTROL_PLANE, "etcd", "kubelet", "kube-proxy", "containerd")
MANIFEST_DIR = "etc/kubernetes/manifests"
# etcd flag -> key in its --config-file YAML
ETCD_FILE_KEYS = {
    "data-dir": "data-dir",
    "listen-client-urls": "listen-client-urls",
    "listen-peer-urls": "listen-peer-urls",
    "cert-file": "client-transport-security.cert-file",
    "key-file": "client-transport-security.key-file",
    "client-cert-auth": "client-transport-security.client-cert-auth",
    "trusted-ca-file": "client-transport-security.trusted-ca-file",
    "auto-tls": "client-transport-security.auto-tls",
    "peer-cert-file": "peer-transport-security.cert-file",
    "peer-key-file": "peer-transport-security.key-file",
    "peer-client-cert-auth": "peer-transport-security.client-cert-auth",
    "peer-trusted-ca-file": "peer-transport-security.trusted-ca-file",
    "peer-auto-tls": "peer-transport-security.auto-tls",
    "cipher-suites": "cipher-suites",
    "tls-min-version": "tls-min-version",
}


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() also accepts '²', which int() rejects."""
    return text.isascii() and text.isdigit()



@dataclass(frozen=True)
class InputProblem:
    path: str  # as seen on the node ("/etc/kubernetes/manifests/kube-apiserver.yaml")
    message: str
    component: str | None = None


@dataclass(frozen=True)
class Component:
    name: str
    cmdline: CommandLine
    source_kind: str  # "process" | "manifest" | "unit" | "binary" (installed, not running: containerd in an image)
    source: str  # node path of the manifest/unit/binary, or "pid N"
    manifest: str | None = None  # node path of its static pod manifest, when it has one
    unit_files: tuple[str, ...] = ()
    image: str = ""
    path_map: tuple[tuple[str, str], ...] = ()  # container mountPath -> host path (static pods)
    env: tuple[tuple[str, str], ...] = ()  # environment of the process/container/unit
    env_source: str = ""
    # settings that do not come from the command line: (flag name, value, source) — etcd's ETCD_*
    # variables and its --config-file
    overlay: tuple[tuple[str, str, str], ...] = ()
    ignore_flags: bool = False  # etcd with --config-file ignores its other flags and variables
    config_error: str = ""

    def flag(self, name: str) -> str | None:
        if not self.ignore_flags or name == "config-file":
            value = self.cmdline.get(name)
            if value is not None:
                return value
        for n, value, _ in self.overlay:
            if n == name:
                return value
        return None

    def flag_evidence(self, name: str) -> tuple[str, str, str]:
        """(kind, source, detail) saying where the effective value of a flag comes from."""
        if not self.ignore_flags or name == "config-file":
            if self.cmdline.get(name) is not None:
                return "flag", self.source, self.cmdline.show(name)
        for n, value, source in self.overlay:
            if n == name:
                return "config", source, f"{name}={value}"
        return "flag", self.source, f"--{name} not set"

    def evidence_source(self) -> str:
        return self.source

    def host_path(self, path: str) -> str:
        """A path as the component sees it, mapped through its hostPath mounts to the node."""
        best = None
        for mount, host in self.path_map:
            if path == mount or path.startswith(mount.rstrip("/") + "/"):
                if best is None or len(mount) > len(best[0]):
                    best = (mount, host)
        if best is None:
            return path
        mount, host = best
        return host.rstrip("/") + path[len(mount.rstrip("/")):] if path != mount else host


@dataclass(frozen=True)
class FileInfo:
    path: str  # node path
    exists: bool
    mode: int = 0
    uid: int = -1
    gid: int = -1
    owner: str = ""
    group: str = ""
    is_dir: bool = False
    error: str = ""

    @property
    def mode_text(self) -> str:
        return f"{self.mode:o}" if self.exists else "absent"

    @property
    def owner_text(self) -> str:
        return f"{self.owner}:{self.group}" if self.exists else "absent"


@dataclass(frozen=True)
class CertInfo:
    path: str
    key_type: str = ""
    key_bits: int = 0
    not_after: str = ""
    expired: bool = False
    error: str = ""


def _read_small(path: Path) -> bytes:
    """A regular file of at most MAX_FILE_BYTES, without ever blocking (a FIFO is refused by name);
    ValueError says why not, without the host path (callers name the node path)."""
    try:
        return read_bounded(path, "file", MAX_FILE_BYTES)
    except InputError as exc:
        why = str(exc).removeprefix(f"{exc.source}: ")
        if why.startswith("cannot read file: it is") or why.startswith("file larger"):
            raise ValueError(why.removeprefix("cannot read file: ")) from None
        error = errno.ENOENT if why.endswith("not found") else errno.EIO
        raise OSError(error, why.removeprefix("cannot read file: "), str(path)) from None


def re_octal(text: str) -> bool:
    return len(text) in (3, 4) and all(ch in "01234567" for ch in text)


def _component_from_argv(argv: list[str]) -> str | None:
    if not argv:
        return None
    base = PurePosixPath(argv[0]).name
    if base == "hyperkube" and len(argv) > 1:
        base = argv[1]
    return base if base in COMPONENT_NAMES else None


class NodeView:
    """Everything a scan reads from one node, loaded lazily and cached."""

    def __init__(self, root: str | Path, proc: str | Path | None = None, sys: str | Path | None = None):
        self.root = Path(root)
        self._host_root = self.root.resolve() == Path("/")
        self.proc = Path(proc) if proc is not None else None
        self.sys = Path(sys) if sys is not None else None  # the node's /sys: kernel facts of live scans
        self.problems: list[InputProblem] = []
        self.components: dict[str, Component] = {}
        self.manifests: dict[str, str] = {}  # node path -> component (every parsed static pod manifest)
        self.manifest_dirs: list[str] = []
        self._load()

    # ---------------------------------------------------------------- paths and reading
    def host(self, node_path: str) -> Path:
        """The file under the scanned root for a path as the node sees it.

        Symbolic links are followed inside the root, as the node would follow them: an absolute
        link in a mounted image points into the image, never at the scanning host's own files.
        A link loop raises OSError(ELOOP).
        """
        if self._host_root:
            return Path("/") / node_path.lstrip("/")
        return self._resolve(node_path)

    def _resolve(self, node_path: str) -> Path:
        import errno

        pending = [p for p in PurePosixPath("/" + node_path.lstrip("/")).parts[1:]]
        cur = self.root
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if cur != self.root:
                    cur = cur.parent
                continue
            nxt = cur / part
            if nxt.is_symlink():
                hops += 1
                if hops > 40:
                    raise OSError(errno.ELOOP, "Too many levels of symbolic links", self.node_path(nxt))
                target = os.readlink(nxt)
                if target.startswith("/"):
                    cur = self.root
                pending[:0] = [p for p in PurePosixPath(target).parts if p != "/"]
                continue
            cur = nxt
        return cur

    def _inside(self, path: Path) -> Path:
        """A path under the root (as built by joining) with its links resolved inside the root."""
        if self._host_root:
            return path
        try:
            rel = path.relative_to(self.root)
        except ValueError:
            return path
        return self._resolve("/" + str(rel))

    def node_path(self, path: Path) -> str:
        try:
            return "/" + str(path.relative_to(self.root)).lstrip("./")
        except ValueError:
            return str(path)

    def read_bytes(self, path: Path) -> bytes:
        """A small regular file under the root (never blocks); OSError/ValueError name the problem."""
        return _read_small(self._inside(path))

    def read_text(self, path: Path) -> str:
        """Read a small text file under the root; OSError/ValueError name the problem."""
        return _read_small(self._inside(path)).decode("utf-8", errors="replace")

    def problem(self, path: str, message: str, component: str | None = None) -> None:
        self.problems.append(InputProblem(path, message, component))

    def load_yaml_file(self, node_path: str, component: str | None = None) -> Any:
        """Parse a YAML file on the node; on failure record a problem and return None."""
        try:
            text = self.read_text(self.host(node_path))
            return load_yaml(text, node_path)
        except InputError as exc:
            self.problem(node_path, str(exc).removeprefix(f"{node_path}: "), component)
        except (OSError, ValueError) as exc:
            self.problem(node_path, f"cannot read: {getattr(exc, 'strerror', None) or exc}", component)
        return None

    # ---------------------------------------------------------------- discovery
    def _load(self) -> None:
        processes = self._processes() if self.proc is not None else {}
        self._load_manifests(MANIFEST_DIR)
        kubelet_unit = self._unit_component("kubelet")
        for name in ("etcd", "kube-proxy", "containerd", *CONTROL_PLANE):
            if name not in self.components:
                self._unit_component(name)
        # a kubelet's staticPodPath elsewhere than the default directory
        kubelet = processes.get("kubelet") or kubelet_unit
        if kubelet is not None:
            from obelisk.cis_checks.kubelet import static_pod_dir

            extra = static_pod_dir(self, kubelet)
            if extra and extra.strip("/") != MANIFEST_DIR:
                self._load_manifests(extra.strip("/"))
        # running processes win over files: they show what really runs
        for name, comp in processes.items():
            base = self.components.get(name)
            self.components[name] = Component(
                name=name, cmdline=comp.cmdline, source_kind="process", source=comp.source,
                manifest=base.manifest if base else None, unit_files=base.unit_files if base else (),
                image=base.image if base else "", path_map=base.path_map if base else (),
                env=comp.env, env_source=comp.env_source)
        if "containerd" not in self.components:
            from obelisk.cis_checks.runtime import containerd_binary

            binary = containerd_binary(self)  # installed: an image's init starts it without a unit
            if binary is not None:
                self.components["containerd"] = Component(name="containerd", cmdline=parse_flags(["containerd"]),
                                                          source_kind="binary", source=binary)
        if "etcd" in self.components:
            try:
                self.components["etcd"] = self._etcd_settings(self.components["etcd"])
            except (TypeError, AttributeError, ValueError) as exc:
                import dataclasses

                self.components["etcd"] = dataclasses.replace(
                    self.components["etcd"], ignore_flags=True,
                    config_error=f"etcd settings unusable ({type(exc).__name__}: {exc})")

    def _etcd_settings(self, comp: Component) -> Component:
        """etcd reads --config-file (then ignores flags and variables), else flags over ETCD_* variables."""
        import dataclasses

        config_file = comp.cmdline.get("config-file")
        if config_file:
            path = comp.host_path(config_file)
            before = len(self.problems)
            doc = self.load_yaml_file(path, "etcd")
            if len(self.problems) > before or not isinstance(doc, dict):
                msg = self.problems[before].message if len(self.problems) > before else "expected a mapping"
                del self.problems[before:]
                return dataclasses.replace(comp, ignore_flags=True, config_error=f"{path}: {msg}")
            overlay = []
            for flag, key in ETCD_FILE_KEYS.items():
                cur: Any = doc
                for part in key.split("."):
                    cur = cur.get(part) if isinstance(cur, dict) else None
                if cur is None or cur == "":
                    continue
                if isinstance(cur, bool):
                    value = "true" if cur else "false"
                elif isinstance(cur, list):
                    value = ",".join(str(v) for v in cur)
                else:
                    value = str(cur)
                overlay.append((flag, value, path))
            return dataclasses.replace(comp, overlay=tuple(overlay), ignore_flags=True)
        overlay = []
        for key, value in comp.env:
            if key.startswith("ETCD_") and key not in ("ETCD_UNSUPPORTED_ARCH",):
                flag = key[5:].lower().replace("_", "-")
                overlay.append((flag, value, f"{comp.env_source}: {key}"))
        return dataclasses.replace(comp, overlay=tuple(overlay)) if overlay else comp

    def _processes(self) -> dict[str, Component]:
        found: dict[str, Component] = {}
        proc = self.proc
        if proc is None:
            return found
        try:
            entries = sorted((e for e in os.listdir(proc) if _digits(e)), key=int)
        except OSError:
            return found
        for pid in entries:
            try:
                raw = (proc / pid / "cmdline").read_bytes()[: 1024 * 1024]
            except OSError:
                continue
            argv = [a.decode("utf-8", errors="replace") for a in raw.split(b"\0")]
            if argv and argv[-1] == "":
                argv.pop()
            name = _component_from_argv(argv)
            if name and name not in found:
                if PurePosixPath(argv[0]).name == "hyperkube":
                    argv = argv[1:]
                env: list[tuple[str, str]] = []
                try:
                    raw_env = (proc / pid / "environ").read_bytes()[: 1024 * 1024]
                    for item in raw_env.split(b"\0"):
                        key, sep, value = item.decode("utf-8", errors="replace").partition("=")
                        if sep:
                            env.append((key, value))
                except OSError:
                    pass
                found[name] = Component(name=name, cmdline=parse_flags(argv), source_kind="process",
                                        source=f"pid {pid}", env=tuple(env), env_source=f"pid {pid} environment")
        return found

    @functools.cached_property
    def process_names(self) -> tuple[str, ...]:
        """comm of every process (live scans only)."""
        names: list[str] = []
        if self.proc is None:
            return ()
        try:
            entries = [e for e in os.listdir(self.proc) if _digits(e)]
        except OSError:
            return ()
        for pid in entries:
            try:
                names.append((self.proc / pid / "comm").read_text(errors="replace").strip())
            except OSError:
                continue
        return tuple(names)

    def _load_manifests(self, rel_dir: str) -> None:
        self.manifest_dirs.append("/" + rel_dir)
        try:
            directory = self.host("/" + rel_dir)
        except OSError as exc:
            self.problem("/" + rel_dir, f"cannot read: {exc.strerror}")
            return
        if not directory.is_dir():
            return
        for f in sorted(directory.iterdir()):
            if f.name.startswith(".") or f.suffix not in (".yaml", ".yml", ".json", ".manifest"):
                continue
            node_path = "/" + rel_dir.strip("/") + "/" + f.name
            guess = next((n for n in COMPONENT_NAMES if f.stem == n), None)
            doc = self.load_yaml_file(node_path, guess)
            if doc is None:
                if guess:
                    self.manifests[node_path] = guess
                continue
            try:
                comp = self._component_from_pod(doc, node_path, guess)
            except (TypeError, AttributeError, ValueError, KeyError) as exc:  # a structure no Pod has
                self.problem(node_path, f"not a usable static pod manifest ({type(exc).__name__})", guess)
                comp = None
            if comp is not None:
                self.manifests[node_path] = comp.name
                self.components.setdefault(comp.name, comp)
            else:
                self.manifests[node_path] = ""

    def _component_from_pod(self, doc: Any, node_path: str, guess: str | None) -> Component | None:
        if not isinstance(doc, dict) or doc.get("kind") != "Pod":
            kind = doc.get("kind") if isinstance(doc, dict) else type(doc).__name__
            self.problem(node_path, f"not a static pod manifest (kind {kind!r}, expected 'Pod')", guess)
            return None
        spec = doc.get("spec")
        containers = spec.get("containers") if isinstance(spec, dict) else None
        if not isinstance(spec, dict) or not isinstance(containers, list) or not containers:
            self.problem(node_path, "spec.containers: missing or empty", guess)
            return None
        for c in containers:
            if not isinstance(c, dict):
                continue
            command = c.get("command") or []
            args = c.get("args") or []
            if not isinstance(command, list) or not isinstance(args, list):
                self.problem(node_path, "container command/args: expected lists", guess)
                return None
            argv = [str(a) for a in (*command, *args)]
            name = _component_from_argv(argv) or (c.get("name") if c.get("name") in COMPONENT_NAMES else None)
            if name is None:
                continue
            if argv and PurePosixPath(argv[0]).name == "hyperkube":
                argv = argv[1:]
            if not argv or _component_from_argv(argv) is None:
                argv = [name, *argv]
            volumes = {v.get("name"): (v.get("hostPath") or {}).get("path")
                       for v in (spec.get("volumes") or []) if isinstance(v, dict)}
            path_map = tuple((m["mountPath"], host) for m in (c.get("volumeMounts") or [])
                             if isinstance(m, dict) and isinstance(m.get("mountPath"), str)
                             and isinstance(host := volumes.get(m.get("name")), str))
            env = tuple((str(e["name"]), str(e.get("value", ""))) for e in (c.get("env") or [])
                        if isinstance(e, dict) and isinstance(e.get("name"), str))
            return Component(name=name, cmdline=parse_flags(argv), source_kind="manifest", source=node_path,
                             manifest=node_path, image=str(c.get("image") or ""), path_map=path_map, env=env,
                             env_source=f"{node_path} (container env)")
        if guess:
            self.problem(node_path, f"no container runs {guess}", guess)
        return None

    def _unit_component(self, name: str) -> Component | None:
        files = find_unit_files(self.root, f"{name}.service")
        if not files:
            return None
        try:
            unit: Unit = parse_unit(self.root, files, self.read_text)
        except (OSError, ValueError) as exc:
            where = self.node_path(Path(getattr(exc, "filename", None) or files[0]))
            self.problem(where, f"cannot read: {getattr(exc, 'strerror', None) or exc}", name)
            return None
        unit_files = tuple(self.node_path(f) for f in files)
        if not unit.exec_start or _component_from_argv(list(unit.exec_start)) != name:
            if name == "kubelet":
                self.problem(unit_files[0], "kubelet.service has no ExecStart running kubelet", name)
            return None
        comp = Component(name=name, cmdline=parse_flags(list(unit.exec_start)), source_kind="unit",
                         source=" + ".join(unit_files), unit_files=unit_files,
                         env=tuple(sorted(unit.environment.items())),
                         env_source=" + ".join(unit_files + tuple(self.node_path(f) for f in unit.environment_files)))
        self.components.setdefault(name, comp)
        return comp

    # ---------------------------------------------------------------- roles
    @property
    def control_plane(self) -> bool:
        return any(n in self.components for n in CONTROL_PLANE)

    def component_problems(self, name: str | None) -> list[InputProblem]:
        return [p for p in self.problems if p.component == name]

    # ---------------------------------------------------------------- files
    @functools.cached_property
    def _names(self) -> tuple[dict[int, str], dict[int, str]]:
        users: dict[int, str] = {0: "root"}
        groups: dict[int, str] = {0: "root"}
        for rel, table in (("etc/passwd", users), ("etc/group", groups)):
            try:
                for line in self.read_text(self.root / rel).splitlines():
                    parts = line.split(":")
                    if len(parts) >= 3 and _digits(parts[2]):
                        table.setdefault(int(parts[2]), parts[0])
            except (OSError, ValueError):
                pass
        for rel in ("etc/sysusers.d", "usr/lib/sysusers.d", "run/sysusers.d"):
            d = self.root / rel
            if not d.is_dir():
                continue
            for f in sorted(d.glob("*.conf")):
                try:
                    text = self.read_text(f)
                except (OSError, ValueError):
                    continue
                for line in text.splitlines():
                    parts = line.split()
                    if len(parts) < 3 or parts[0] not in ("u", "g"):
                        continue
                    first, _, second = parts[2].partition(":")
                    if parts[0] == "u" and _digits(first):
                        users.setdefault(int(first), parts[1])
                        gid = second if _digits(second) else first  # sysusers makes a same-named group
                        groups.setdefault(int(gid), parts[1])
                    elif parts[0] == "g" and _digits(first):
                        groups.setdefault(int(first), parts[1])
        return users, groups

    def file_info(self, node_path: str) -> FileInfo:
        try:
            st = self.host(node_path).stat()
        except FileNotFoundError:
            return FileInfo(node_path, exists=False)
        except OSError as exc:
            return FileInfo(node_path, exists=False, error=f"cannot stat: {exc.strerror}")
        users, groups = self._names
        return FileInfo(node_path, exists=True, mode=stat_mod.S_IMODE(st.st_mode), uid=st.st_uid, gid=st.st_gid,
                        owner=users.get(st.st_uid, str(st.st_uid)), group=groups.get(st.st_gid, str(st.st_gid)),
                        is_dir=stat_mod.S_ISDIR(st.st_mode))

    @functools.cached_property
    def tmpfiles(self) -> dict[str, tuple[FileInfo, str]]:
        """Directories systemd-tmpfiles creates at boot ('d'/'D' lines): path -> (declared info, source).

        An image's /var is often empty until first boot; what tmpfiles.d declares is what will exist.
        """
        files: dict[str, Path] = {}
        for rel in ("usr/lib/tmpfiles.d", "run/tmpfiles.d", "etc/tmpfiles.d"):  # later directories win by name
            d = self.root / rel
            if d.is_dir():
                for f in sorted(d.glob("*.conf")):
                    files[f.name] = f
        users, groups = self._names
        by_user = {v: k for k, v in users.items()}
        by_group = {v: k for k, v in groups.items()}
        out: dict[str, tuple[FileInfo, str]] = {}
        for name in sorted(files):
            f = files[name]
            try:
                text = self.read_text(f)
            except (OSError, ValueError):
                continue
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 5 or parts[0] not in ("d", "D") or not parts[1].startswith("/"):
                    continue
                mode = int(parts[2], 8) if re_octal(parts[2]) else 0o755
                user = parts[3] if parts[3] != "-" else "root"
                group = parts[4] if parts[4] != "-" else "root"
                info = FileInfo(parts[1].rstrip("/") or "/", exists=True, mode=mode,
                                uid=by_user.get(user, -1), gid=by_group.get(group, -1),
                                owner=user, group=group, is_dir=True)
                out.setdefault(info.path, (info, self.node_path(f)))
        return out

    def parents(self, node_path: str) -> list[FileInfo]:
        """Directories above a file, inside the scanned root (the root itself excluded)."""
        out = []
        p = PurePosixPath(node_path).parent
        while str(p) not in ("/", "."):
            out.append(self.file_info(str(p)))
            p = p.parent
        return out

    def walk(self, node_dir: str) -> list[str]:
        """A directory and everything under it (node paths), without following symlinks out."""
        try:
            base = self.host(node_dir)
        except OSError:
            return [node_dir]  # file_info reports the loop
        if not base.exists():
            return []
        out = [node_dir]
        prefix = node_dir.rstrip("/")
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames.sort()
            rel = os.path.relpath(dirpath, base)
            here = prefix if rel == "." else f"{prefix}/{rel}"
            for n in sorted(dirnames) + sorted(filenames):
                out.append(f"{here}/{n}")
            if len(out) > 100_000:
                break
        return out

    def glob(self, pattern: str) -> list[str]:
        return sorted(self.node_path(p) for p in self.root.glob(pattern.lstrip("/")))

    def certificate(self, node_path: str) -> CertInfo:
        from cryptography import x509
        from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

        try:
            data = _read_small(self.host(node_path))
        except OSError as exc:
            return CertInfo(node_path, error=f"cannot read: {exc.strerror}")
        except ValueError as exc:
            return CertInfo(node_path, error=f"cannot read: {exc}")
        try:
            cert = (x509.load_pem_x509_certificates(data)[0] if b"-----BEGIN" in data
                    else x509.load_der_x509_certificate(data))
        except ValueError as exc:
            return CertInfo(node_path, error=f"not a certificate: {exc}")
        key = cert.public_key()
        if isinstance(key, rsa.RSAPublicKey):
            key_type, bits = "RSA", key.key_size
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key_type, bits = f"EC {key.curve.name}", key.curve.key_size
        elif isinstance(key, ed25519.Ed25519PublicKey):
            key_type, bits = "Ed25519", 256
        elif isinstance(key, ed448.Ed448PublicKey):
            key_type, bits = "Ed448", 448
        else:
            key_type, bits = type(key).__name__, 0
        import datetime as _dt

        not_after = cert.not_valid_after_utc
        return CertInfo(node_path, key_type=key_type, key_bits=bits, not_after=not_after.isoformat(),
                        expired=not_after < _dt.datetime.now(_dt.UTC))

    # ---------------------------------------------------------------- versions
    @functools.cached_property
    def kubernetes_version(self) -> tuple[int, int] | None:
        """(major, minor) from the API server's or kubelet's image tag, when visible."""
        import re

        for name in (*CONTROL_PLANE, "kube-proxy"):
            comp = self.components.get(name)
            if comp and comp.image:
                m = re.search(r":v?(\d+)\.(\d+)", comp.image)
                if m:
                    return int(m.group(1)), int(m.group(2))
        return None
