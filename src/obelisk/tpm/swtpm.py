"""Wrapper around `swtpm`, the software TPM used by tests and by `obelisk boot`.

Starts a TPM 2.0 emulator on 127.0.0.1 (data and control ports) with its own state
directory, already started up (TPM2_Startup(CLEAR)), and gives the TCTI string that
tpm2-pytss and tpm2-tools take.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import tools
from obelisk.core.errors import ToolFailedError


def _free_port_pair() -> int:
    """A port p such that p and p+1 were both free a moment ago."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        with socket.socket() as s2:
            try:
                s2.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise ToolFailedError("swtpm", 1, "no free pair of TCP ports on 127.0.0.1")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a swtpm, killing it if it does not exit within 5 seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _state_directory(state_dir: str | os.PathLike[str] | None
                     ) -> tuple[Path, tempfile.TemporaryDirectory[str] | None]:
    """The given state directory, or a temporary one the caller owns (and cleans up when it stops)."""
    if state_dir is not None:
        return Path(state_dir), None
    owned = tempfile.TemporaryDirectory(prefix="obelisk-swtpm-")
    return Path(owned.name), owned


@dataclass
class SoftwareTPM:
    """A running swtpm. Use as a context manager; `tcti` names it for tpm2-pytss and tpm2-tools."""

    state_dir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    _owned_tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def env(self) -> dict[str, str]:
        """Environment for tpm2-tools commands aimed at this TPM."""
        return {"TPM2TOOLS_TCTI": self.tcti}

    @classmethod
    def start(cls, state_dir: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> SoftwareTPM:
        state, owned = _state_directory(state_dir)
        state.mkdir(parents=True, exist_ok=True)
        last_error = ""
        for _ in range(5):
            port = _free_port_pair()
            proc = subprocess.Popen(
                [tools.which("swtpm"), "socket", "--tpm2",
                 "--tpmstate", f"dir={state}",
                 "--server", f"type=tcp,port={port},bindaddr=127.0.0.1",
                 "--ctrl", f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                 "--flags", "not-need-init,startup-clear"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    last_error = (proc.stderr.read() if proc.stderr else b"").decode(errors="replace")
                    break
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                        return cls(state_dir=state, port=port, process=proc, _owned_tmp=owned)
                except OSError:
                    time.sleep(0.05)
            else:
                proc.kill()
                proc.wait()
                last_error = "did not start listening"
        raise ToolFailedError("swtpm", 1, last_error)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
        if self.process is not None and self.process.stderr:
            self.process.stderr.close()
        self.process = None
        if self._owned_tmp is not None:
            self._owned_tmp.cleanup()
            self._owned_tmp = None

    def __enter__(self) -> SoftwareTPM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_for_qemu(state_dir: Path, socket_path: Path, log: Path, *, detach: bool = False,
                   timeout: float = 10.0) -> subprocess.Popen[bytes]:
    """Start swtpm with its control channel on a unix socket, as QEMU's `-tpmdev emulator` expects.

    swtpm ends when QEMU disconnects (`--terminate`). With `detach` it gets its own session, so a
    node left running outlives the command that booted it.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [tools.which("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state_dir}",
         "--ctrl", f"type=unixio,path={socket_path}", "--log", f"file={log}", "--terminate"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=detach)
    deadline = time.monotonic() + timeout
    while not socket_path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            detail = log.read_text(errors="replace") if log.exists() else "did not create its socket"
            raise ToolFailedError("swtpm", proc.returncode or 1, detail)
        time.sleep(0.05)
    return proc


def qemu_tpm_args(socket_path: Path) -> list[str]:
    """QEMU arguments attaching a TIS TPM backed by the swtpm at `socket_path`."""
    return ["-chardev", f"socket,id=chrtpm,path={socket_path}",
            "-tpmdev", "emulator,id=tpm0,chardev=chrtpm", "-device", "tpm-tis,tpmdev=tpm0"]


@dataclass
class SwtpmSocket:
    """A running swtpm (TPM 2.0) whose control channel is a unix socket for QEMU."""

    state_dir: Path
    socket: Path
    process: subprocess.Popen[bytes] | None = None
    _owned: tempfile.TemporaryDirectory[str] | None = None

    @classmethod
    def start(cls, state_dir: str | os.PathLike[str] | None = None, timeout: float = 10.0) -> SwtpmSocket:
        state, owned = _state_directory(state_dir)
        sock = state / "swtpm.sock"
        proc = start_for_qemu(state, sock, state / "swtpm.log", timeout=timeout)
        return cls(state_dir=state, socket=sock, process=proc, _owned=owned)

    def qemu_args(self) -> list[str]:
        return qemu_tpm_args(self.socket)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None
        if self._owned is not None:
            self._owned.cleanup()
            self._owned = None

    def __enter__(self) -> SwtpmSocket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
