"""Workloads declared in the spec (`runtime.workloads`): packed into the image, started by the node, reported.

Build side:
    pack_archive(layout, name, epoch)  an OCI archive (a tar of an image layout) holding exactly the
                                       workload's image, byte-for-byte reproducible; `ctr images import` reads it
    node_file(workloads)               /etc/obelisk/workloads.json (`obelisk.workloads/1`) on the signed root
Node side (stdlib only: the node runs it from /usr/lib/obelisk/python):
    parse_node_file / serialize_node_file, the ctr command lines (`import_argv`, `run_argv`),
    the runner's state files (`State`: /run/obelisk/workloads/NAME.json, `obelisk.workload-state/1`),
    and `report()`: what the agent answers at GET /v1/workloads.

Every workload runs in containerd's `obelisk` namespace as `obelisk.local/NAME:latest`, in the cgroup
`/obelisk/NAME/task` (cgroup v2). Its parent `/obelisk/NAME` outlives the container, so its hierarchical
memory.events still counts an OOM kill after the runtime removed the container.
"""

from __future__ import annotations

import io
import json
import os
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from obelisk.cis_checks.runtime import APPARMOR_PROFILE, CONTAINERD_CONFIG, RUNTIME_STATE  # noqa: F401 - re-exported

NODE_FILE = "etc/obelisk/workloads.json"
ARCHIVE_DIR = "usr/lib/obelisk/workloads"
STATE_DIR = "/run/obelisk/workloads"
LOG_DIR = "/var/log/obelisk/workloads"
CGROUP_ROOT = "/sys/fs/cgroup"
CGROUP_PARENT = "obelisk"
NAMESPACE = "obelisk"
CONTAINERD_SOCKET = "/run/containerd/containerd.sock"
IMAGE_PREFIX = "obelisk.local/"
NODE_SCHEMA = "obelisk.workloads/1"
STATE_SCHEMA = "obelisk.workload-state/1"
REPORT_SCHEMA = "obelisk.workloads-report/1"
OUTPUT_TAIL = 4096  # bytes of each workload's output in the report
DROPPED_CAPABILITIES = ("CAP_NET_RAW",)  # CIS 5.2.8: no raw sockets (the runtime's default set keeps it)


class WorkloadError(ValueError):
    """A workloads.json or state file that does not parse; the message names the field."""


# --- build side --------------------------------------------------------------------------------------------

def _select_image(layout: Any) -> tuple[dict[str, Any], list[Any]]:
    """The first linux/amd64 image reachable from index.json: (its manifest descriptor's JSON, every
    blob descriptor it needs: manifest, config, layers), each blob checked against its digest."""
    from obelisk.core.errors import InputError
    from obelisk.signer import oci_layout as ol

    def walk(descs: list[ol.Descriptor], referrer: str, depth: int) -> tuple[dict[str, Any], list[Any]] | None:
        for i, desc in enumerate(descs):
            where = f"manifests[{i}]"
            if desc.media_type in ol.INDEX_TYPES and depth < ol.MAX_INDEX_DEPTH:
                doc = layout.read_json_blob(desc, referrer, where, ol.MAX_INDEX_BYTES)
                found = walk(ol.descriptor_list(doc, "manifests", desc.digest, ""), desc.digest, depth + 1)
                if found:
                    return found
            elif desc.media_type in ol.MANIFEST_TYPES:
                manifest = layout.read_json_blob(desc, referrer, where, ol.MAX_MANIFEST_BYTES)
                config = ol.parse_descriptor(manifest.get("config"), desc.digest, "config")
                conf = layout.read_json_blob(config, desc.digest, "config", ol.MAX_CONFIG_BYTES)
                if (conf.get("os"), conf.get("architecture")) != ("linux", "amd64"):
                    continue
                layers = ol.descriptor_list(manifest, "layers", desc.digest, "")
                for j, layer in enumerate(layers):
                    layout.check_blob(layer, desc.digest, f"layers[{j}]")
                return ({"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size},
                        [desc, config, *layers])
        return None

    found = walk(ol.descriptor_list(layout.read_index(), "manifests", layout.index_path, ""), layout.index_path, 0)
    if found is None:
        raise InputError("no linux/amd64 image in this OCI image layout", source=str(layout.root))
    return found


def image_name(name: str) -> str:
    return f"{IMAGE_PREFIX}{name}:latest"


def pack_archive(layout_dir: str | os.PathLike[str], name: str, epoch: int) -> bytes:
    """An OCI archive of the workload's image alone, as `ctr images import` reads it: oci-layout,
    an index.json naming the image `obelisk.local/NAME:latest`, and its blobs. Sorted members, owner 0,
    mtime `epoch`: the same layout gives the same bytes. InputError naming the file when the layout is bad."""
    from obelisk.signer import oci_layout as ol

    layout = ol.Layout(layout_dir)
    top, blobs = _select_image(layout)
    top["annotations"] = {"io.containerd.image.name": image_name(name), "org.opencontainers.image.ref.name": "latest"}
    index = ol.serialize_json({"schemaVersion": 2, "mediaType": ol.OCI_INDEX, "manifests": [top]})
    files: dict[str, bytes | Path] = {"oci-layout": b'{"imageLayoutVersion":"1.0.0"}', "index.json": index}
    for desc in blobs:
        files[f"blobs/{desc.algorithm}/{desc.hex}"] = layout.blob_path(desc, "index.json", "blob")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({"blobs"} | {os.path.dirname(p) for p in files if p.startswith("blobs/")})
        for d in dirs:
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, epoch
            tar.addfile(info)
        for path in sorted(files):
            content = files[path]
            data = content if isinstance(content, bytes) else content.read_bytes()
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), 0o644, epoch
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


# --- the node's list: /etc/obelisk/workloads.json ----------------------------------------------------------

@dataclass(frozen=True)
class NodeWorkload:
    """One workload as the node runs it (the spec's Workload with its archive's place on the root)."""

    name: str
    archive: str  # absolute path on the node
    memory_limit: int
    command: tuple[str, ...] = ()
    seccomp: str = "default"
    apparmor: str = "default"
    host_network: bool = False
    restart: str = "never"

    @property
    def image(self) -> str:
        return image_name(self.name)

    @property
    def cgroup(self) -> str:
        """The container's own cgroup (runc creates and removes it)."""
        return f"/{CGROUP_PARENT}/{self.name}/task"

    @property
    def cgroup_parent(self) -> str:
        """Where its memory.events outlives the container (hierarchical: the child's OOM kills count here)."""
        return f"{CGROUP_ROOT}/{CGROUP_PARENT}/{self.name}"


def node_file(workloads: tuple[Any, ...]) -> bytes:
    """workloads.json from the spec's `runtime.workloads` (image.spec.Workload records)."""
    nodes = tuple(NodeWorkload(name=w.name, archive=f"/{ARCHIVE_DIR}/{w.name}.tar", memory_limit=w.memory_limit,
                               command=tuple(w.command), seccomp=w.seccomp, apparmor=w.apparmor,
                               host_network=w.host_network, restart=w.restart) for w in workloads)
    return serialize_node_file(nodes)


def serialize_node_file(workloads: tuple[NodeWorkload, ...]) -> bytes:
    doc = {"schema": NODE_SCHEMA, "workloads": [{**asdict(w), "command": list(w.command)} for w in workloads]}
    return (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode()


_FIELD_TYPES: dict[str, type | tuple[type, ...]] = {
    "name": str, "archive": str, "memory_limit": int, "command": list, "seccomp": str, "apparmor": str,
    "host_network": bool, "restart": str}
_CHOICES = {"seccomp": ("default", "unconfined"), "apparmor": ("default", "unconfined"),
            "restart": ("never", "always")}


def parse_node_file(data: bytes, source: str = NODE_FILE) -> tuple[NodeWorkload, ...]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise WorkloadError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != NODE_SCHEMA or not isinstance(doc.get("workloads"), list):
        raise WorkloadError(f"{source}: schema: expected {NODE_SCHEMA} with a workloads list")
    out = []
    for i, item in enumerate(doc["workloads"]):
        where = f"{source}: workloads[{i}]"
        if not isinstance(item, dict) or set(item) != set(_FIELD_TYPES):
            raise WorkloadError(f"{where}: expected exactly the keys {', '.join(sorted(_FIELD_TYPES))}")
        for key, kind in _FIELD_TYPES.items():
            value = item[key]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise WorkloadError(f"{where}.{key}: wrong type")
        if not all(isinstance(c, str) for c in item["command"]):
            raise WorkloadError(f"{where}.command: expected strings")
        for key, allowed in _CHOICES.items():
            if item[key] not in allowed:
                raise WorkloadError(f"{where}.{key}: {item[key]!r} is not one of {', '.join(allowed)}")
        out.append(NodeWorkload(**{**item, "command": tuple(item["command"])}))
    return tuple(out)


# --- the ctr command lines ---------------------------------------------------------------------------------

def _ctr(*args: str) -> list[str]:
    return ["ctr", "--address", CONTAINERD_SOCKET, "--namespace", NAMESPACE, *args]


def import_argv(w: NodeWorkload) -> list[str]:
    return _ctr("images", "import", "--base-name", IMAGE_PREFIX + w.name, w.archive)


def cleanup_argvs(w: NodeWorkload) -> list[list[str]]:
    """What a previous boot may have left in containerd's metadata on /var (a task, the container)."""
    return [_ctr("tasks", "kill", "--signal", "SIGKILL", w.name), _ctr("tasks", "delete", w.name),
            _ctr("containers", "delete", w.name)]


def run_argv(w: NodeWorkload) -> list[str]:
    """`ctr run` in the foreground: its exit status is the container's. Never privileged, no host PID or IPC
    namespace, no host paths, NoNewPrivileges (ctr's default), the runtime's default capabilities without
    NET_RAW, the memory limit as cgroup v2 memory.max, and the runtime's default seccomp and AppArmor profiles
    unless the spec says unconfined."""
    args = ["run", "--rm", "--cgroup", w.cgroup, "--memory-limit", str(w.memory_limit)]
    for cap in DROPPED_CAPABILITIES:
        args += ["--cap-drop", cap]
    if w.seccomp == "default":
        args.append("--seccomp")
    if w.apparmor == "default":
        args += ["--apparmor-default-profile", APPARMOR_PROFILE]
    if w.host_network:
        args.append("--net-host")
    args += ["--label", f"obelisk.workload={w.name}", w.image, w.name, *w.command]
    return _ctr(*args)


# --- state: written by the runner, read by the agent -------------------------------------------------------

STATES = ("pending", "importing", "running", "exited", "failed")


@dataclass(frozen=True)
class State:
    name: str
    state: str  # one of STATES
    runs: int = 0  # how many times it was started this boot
    exit_status: int | None = None  # of the last run (ctr's: the container's, 128+N for signal N)
    error: str = ""  # why it could not run (import failed, the runtime is down)
    started: float | None = None  # wall clock of the last start
    finished: float | None = None


def serialize_state(s: State) -> bytes:
    return (json.dumps({"schema": STATE_SCHEMA, **asdict(s)}, sort_keys=True) + "\n").encode()


def parse_state(data: bytes, source: str) -> State:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise WorkloadError(f"{source}: not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.pop("schema", None) != STATE_SCHEMA:
        raise WorkloadError(f"{source}: schema: expected {STATE_SCHEMA}")
    try:
        s = State(**doc)
    except TypeError as exc:
        raise WorkloadError(f"{source}: {exc}") from None
    if s.state not in STATES:
        raise WorkloadError(f"{source}: state: {s.state!r} is not one of {', '.join(STATES)}")
    return s


def state_path(name: str, state_dir: str = STATE_DIR) -> str:
    return os.path.join(state_dir, f"{name}.json")


def log_path(name: str, log_dir: str = LOG_DIR) -> str:
    return os.path.join(log_dir, f"{name}.log")


# --- the agent's report ------------------------------------------------------------------------------------

def _read(path: str, limit: int = 1 << 16) -> str | None:
    try:
        with open(path, "rb") as handle:
            return handle.read(limit).decode("utf-8", "replace")
    except OSError:
        return None


def _tail(path: str, size: int = OUTPUT_TAIL) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - size))
            return handle.read(size).decode("utf-8", "replace")
    except OSError:
        return ""


def memory_events(cgroup_dir: str) -> dict[str, int]:
    """cgroup v2 memory.events (`low`, `high`, `max`, `oom`, `oom_kill`, ...): {} when absent."""
    text = _read(os.path.join(cgroup_dir, "memory.events"))
    out = {}
    for line in (text or "").splitlines():
        key, _, value = line.partition(" ")
        if value.strip().isdigit():
            out[key] = int(value)
    return out


def report(node_file_path: str = "/" + NODE_FILE, state_dir: str = STATE_DIR, log_dir: str = LOG_DIR,
           root: str = "/") -> dict[str, Any]:
    """GET /v1/workloads: the runtime's facts and, per workload, its state, last exit status, OOM kills
    (memory.events of its cgroup parent) and the tail of its output. Reads files only: no shell, no ctr."""
    from obelisk.cis_checks.runtime import runtime_facts

    facts = runtime_facts(root)
    try:
        with open(node_file_path, "rb") as handle:
            declared = parse_node_file(handle.read(1 << 20), node_file_path)
    except FileNotFoundError:
        declared = ()
    items = []
    for w in declared:
        try:
            with open(state_path(w.name, state_dir), "rb") as handle:
                st = parse_state(handle.read(1 << 16), state_path(w.name, state_dir))
        except FileNotFoundError:
            st = State(name=w.name, state="pending")
        except WorkloadError as exc:
            st = State(name=w.name, state="failed", error=str(exc))
        events = memory_events(os.path.join(root, w.cgroup_parent.lstrip("/")))
        items.append({"name": w.name, "image": w.image, "state": st.state, "runs": st.runs,
                      "exit_status": st.exit_status, "error": st.error, "started": st.started,
                      "finished": st.finished, "oom_killed": events.get("oom_kill", 0) > 0,
                      "oom_kills": events.get("oom_kill", 0), "memory_limit": w.memory_limit,
                      "seccomp": w.seccomp, "apparmor": w.apparmor, "host_network": w.host_network,
                      "restart": w.restart, "output": _tail(log_path(w.name, log_dir))})
    return {"schema": REPORT_SCHEMA, "runtime": facts.to_json(), "workloads": items}
