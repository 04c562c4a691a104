"""On the node: the container runtime and the spec's workloads (run by /sbin/obelisk-init, `runtime.enabled`).

`python3 -m obelisk.cli.node_init runtime` mounts cgroup v2 (unified) at /sys/fs/cgroup, enables its
controllers, starts containerd with /etc/containerd/config.toml (state under /var/lib/containerd on the
encrypted /var, sockets under /run/containerd), waits for its socket, then imports and starts every workload
of /etc/obelisk/workloads.json through `ctr` (image/workloads.py builds the command lines) and keeps
containerd running. Each workload's state goes to /run/obelisk/workloads/NAME.json, its output to
/var/log/obelisk/workloads/NAME.log (bounded); the agent reads both. Standard library only, plus
`disk.unlock.mount` (Debian's essential set has no mount(8)).
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Callable

from obelisk.core import atomic
from obelisk.image import workloads as wl

MAX_LOG = 1 << 20  # bytes per log file; the previous one is kept as NAME.log.1
CONTAINERD_LOG = "/var/log/obelisk/containerd.log"
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
SOCKET_WAIT = 180.0  # seconds; containerd starts in a few seconds, slower under software emulation
CONTROLLERS = ("cpu", "memory", "pids", "io")

Log = Callable[[str], None]


def _say(line: str) -> None:
    print(f"obelisk: runtime: {line}", flush=True)


def mount_cgroup2(root: str = wl.CGROUP_ROOT) -> str:
    """cgroup v2 at /sys/fs/cgroup (unless something is mounted there already); its controllers enabled for
    children. Returns what it did, for the console."""
    with open("/proc/self/mounts") as handle:
        mounted = [line.split() for line in handle]
    current = next((m[2] for m in mounted if len(m) > 2 and m[1] == root), None)
    if current is None:
        from obelisk.disk.unlock import MS_NODEV, MS_NOSUID, mount

        ms_noexec = 8
        mount("cgroup2", root, "cgroup2", MS_NOSUID | MS_NODEV | ms_noexec, "nsdelegate")
        current = "cgroup2"
    if current != "cgroup2":
        return f"{root} is {current}, not cgroup v2: containers get no limits"
    enabled = []
    for controller in CONTROLLERS:
        try:
            with open(os.path.join(root, "cgroup.subtree_control"), "w") as handle:
                handle.write(f"+{controller}")
            enabled.append(controller)
        except OSError:
            pass
    return f"cgroup v2 at {root}, controllers for children: {' '.join(enabled) or 'none'}"


class BoundedLog:
    """Appends to PATH; past MAX_LOG bytes PATH becomes PATH.1 and a new PATH starts."""

    def __init__(self, path: str, limit: int = MAX_LOG):
        self.path, self.limit = path, limit
        self.lock = threading.Lock()

    def write(self, data: bytes) -> None:
        with self.lock:
            try:
                if os.path.getsize(self.path) + len(data) > self.limit:
                    os.replace(self.path, self.path + ".1")
            except FileNotFoundError:
                pass
            with open(self.path, "ab") as handle:
                handle.write(data)

    def pump(self, stream: object) -> None:
        read = getattr(stream, "read1", None) or stream.read  # type: ignore[attr-defined]
        while chunk := read(65536):
            self.write(chunk)


def _run(argv: list[str], timeout: float = 300) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, capture_output=True, timeout=timeout, env={"PATH": PATH})


def wait_for_containerd(proc: subprocess.Popen[bytes], timeout: float = SOCKET_WAIT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"containerd exited with status {proc.returncode} (see {CONTAINERD_LOG})")
        if os.path.exists(wl.CONTAINERD_SOCKET) and _run(
                ["ctr", "--address", wl.CONTAINERD_SOCKET, "version"], timeout=30).returncode == 0:
            return
        time.sleep(0.5)
    raise RuntimeError(f"containerd's socket did not answer within {timeout:.0f} s")


class Runner:
    def __init__(self, workloads: tuple[wl.NodeWorkload, ...], say: Log = _say,
                 state_dir: str = wl.STATE_DIR, log_dir: str = wl.LOG_DIR):
        self.workloads, self.say, self.state_dir, self.log_dir = workloads, say, state_dir, log_dir
        # one import at a time: concurrent imports of the same blobs collide on containerd's ingest refs
        self.import_lock = threading.Lock()

    def set_state(self, state: wl.State) -> None:
        atomic.write_bytes(wl.state_path(state.name, self.state_dir), wl.serialize_state(state))

    def set_runtime(self, word: str) -> None:
        atomic.write_bytes(wl.RUNTIME_STATE, (json.dumps({"containerd": word}) + "\n").encode())

    def supervise(self, w: wl.NodeWorkload) -> None:
        state = wl.State(name=w.name, state="importing")
        self.set_state(state)
        with self.import_lock:
            done = _run(wl.import_argv(w), timeout=600)
        if done.returncode != 0:
            error = done.stderr.decode(errors="replace").strip()[-500:]
            self.set_state(wl.State(name=w.name, state="failed", error=f"image import failed: {error}"))
            self.say(f"{w.name}: image import failed: {error}")
            return
        for argv in wl.cleanup_argvs(w):  # a container a previous boot left in containerd's metadata
            _run(argv, timeout=60)
        os.makedirs(w.cgroup_parent, exist_ok=True)
        try:
            with open(os.path.join(w.cgroup_parent, "cgroup.subtree_control"), "w") as handle:
                handle.write("+memory")
        except OSError:
            pass  # runc enables the controllers it needs itself
        log = BoundedLog(wl.log_path(w.name, self.log_dir))
        runs = 0
        while True:
            runs += 1
            started = time.time()
            self.set_state(wl.State(name=w.name, state="running", runs=runs, started=started))
            self.say(f"{w.name}: started ({w.image}, memory.max {w.memory_limit}, seccomp {w.seccomp}, "
                     f"apparmor {w.apparmor})")
            proc = subprocess.Popen(wl.run_argv(w), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, env={"PATH": PATH})
            assert proc.stdout is not None
            log.pump(proc.stdout)
            status = proc.wait()
            self.set_state(wl.State(name=w.name, state="exited", runs=runs, exit_status=status, started=started,
                                    finished=time.time()))
            self.say(f"{w.name}: exited with status {status}")
            if w.restart != "always":
                return
            time.sleep(2)

    def prepare(self) -> None:
        """What must hold before the agent answers (its scan reads it): cgroup v2 mounted, states pending."""
        os.makedirs(self.state_dir, exist_ok=True)
        os.makedirs(self.log_dir, mode=0o750, exist_ok=True)
        for w in self.workloads:
            self.set_state(wl.State(name=w.name, state="pending"))
        self.say(mount_cgroup2())

    def run(self) -> int:
        """containerd and the workloads, until the node stops."""
        enabled = ""
        try:
            with open("/sys/module/apparmor/parameters/enabled") as handle:
                enabled = handle.read().strip()
        except OSError:
            pass
        self.say("AppArmor enabled" if enabled == "Y" else "AppArmor is not enabled: containers are not confined by it")
        for d, mode in (("/var/lib/containerd", 0o711), ("/run/containerd", 0o711)):
            os.makedirs(d, mode=mode, exist_ok=True)
        log = BoundedLog(CONTAINERD_LOG)
        started = False
        while True:
            self.set_runtime("starting")
            proc = subprocess.Popen(["containerd", "--config", wl.CONTAINERD_CONFIG], stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={"PATH": PATH})
            assert proc.stdout is not None
            threading.Thread(target=log.pump, args=(proc.stdout,), daemon=True).start()
            try:
                wait_for_containerd(proc)
            except RuntimeError as exc:
                self.set_runtime(f"failed: {exc}")
                self.say(str(exc))
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
                time.sleep(5)
                continue
            self.set_runtime("running")
            self.say(f"containerd running (pid {proc.pid}, state on /var/lib/containerd)")
            if not started:  # workloads start once; a restarted containerd keeps their containers (shims)
                started = True
                for w in self.workloads:
                    threading.Thread(target=self._guarded, args=(w,), daemon=True).start()
            status = proc.wait()
            self.set_runtime(f"failed: exited with status {status}, restarting")
            self.say(f"containerd exited with status {status}; starting it again")
            time.sleep(2)

    def _guarded(self, w: wl.NodeWorkload) -> None:
        try:
            self.supervise(w)
        except Exception as exc:  # one workload's failure must not stop the others
            self.set_state(wl.State(name=w.name, state="failed", error=f"{type(exc).__name__}: {exc}"))
            self.say(f"{w.name}: {type(exc).__name__}: {exc}")


def main(node_file: str = "/" + wl.NODE_FILE, background: bool = True) -> int:
    """Prepare in the foreground (obelisk-init waits: the agent's first scan must see cgroup v2), then
    run containerd and the workloads in a child process that outlives this one."""
    try:
        with open(node_file, "rb") as handle:
            declared = wl.parse_node_file(handle.read(1 << 20), node_file)
    except FileNotFoundError:
        declared = ()
    runner = Runner(declared)
    runner.prepare()
    if background and os.fork() > 0:
        return 0
    return runner.run()
