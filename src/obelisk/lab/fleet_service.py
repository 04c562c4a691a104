"""A fleet service on this machine for lab nodes (the demo's): `obelisk fleet serve` as its own process,
SQLite in its directory, reachable by operators at https://127.0.0.1:PORT and by QEMU nodes at
https://10.0.2.100:PORT (their one forward, lab/boot.py).

Everything it needs is issued here from the customer CA: the service's TLS certificate (for both
addresses), an operator's client certificate (every operator action is audited with its subject), and
a join token that registrations must present (a file the lab puts on each node's config disk).

    DIR/fleet.db        the service's database        DIR/serve.log   its log
    DIR/join-tokens     the tokens it accepts         DIR/join-token  the one the nodes get (0600)
    DIR/server/, DIR/operator/                        certificates and keys
    DIR/serve.pid       its process id (to stop a service left running)
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from obelisk.core import atomic
from obelisk.core.errors import ObeliskError
from obelisk.fleet.client import FleetClient, FleetClientError

NODE_ADDRESS = "10.0.2.100"  # the service as QEMU nodes see it (lab.boot.fleet_forward)
OPERATOR = "demo operator"


class FleetServiceError(ObeliskError):
    exit_code = 1


@dataclass(frozen=True)
class LocalFleet:
    process: subprocess.Popen[bytes]
    directory: Path
    port: int
    operator: FleetClient  # the operator's client (its certificate's subject is in the audit)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def node_url(self) -> str:
        return f"https://{NODE_ADDRESS}:{self.port}"

    @property
    def join_token(self) -> Path:
        return self.directory / "join-token"

    @property
    def db(self) -> Path:
        return self.directory / "fleet.db"

    @property
    def log(self) -> Path:
        return self.directory / "serve.log"


def start(directory: Path, ca: Path, ca_key: Path, *, interval: int = 60, timeout: float = 60) -> LocalFleet:
    """Issue what the service needs and start it; returns once it accepts connections."""
    from obelisk.attest.agent_certs import issue
    from obelisk.lab.boot import free_port

    directory.mkdir(parents=True, exist_ok=True)
    server = issue(ca, ca_key, directory / "server", "obelisk fleet", server=True,
                   hosts=("127.0.0.1", "localhost", NODE_ADDRESS))
    operator = issue(ca, ca_key, directory / "operator", OPERATOR, server=False)
    token = secrets.token_urlsafe(24)
    atomic.write_text(directory / "join-tokens", token + "\n", mode=0o600)
    atomic.write_text(directory / "join-token", token + "\n", mode=0o600)
    port = free_port()
    with open(directory / "serve.log", "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "obelisk", "fleet", "serve", "--db", str(directory / "fleet.db"),
             "--listen", f"127.0.0.1:{port}", "--ca", str(ca), "--cert", str(server.cert), "--key", str(server.key),
             "--interval", str(interval), "--join-tokens", str(directory / "join-tokens")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
    atomic.write_text(directory / "serve.pid", f"{process.pid}\n")
    fleet = LocalFleet(process, directory, port, FleetClient(f"https://127.0.0.1:{port}", str(ca), str(operator.cert),
                                                              str(operator.key), timeout=60))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise FleetServiceError(f"fleet serve exited ({process.returncode}): "
                                    f"{fleet.log.read_text(errors='replace').strip()[-500:]}")
        try:
            fleet.operator.nodes()  # answers over TLS to the operator: ready
            return fleet
        except FleetClientError:
            time.sleep(0.2)
    stop(fleet)
    raise FleetServiceError(f"fleet serve did not listen on 127.0.0.1:{port} within {timeout:.0f} s (log {fleet.log})")


def stop(fleet: LocalFleet) -> None:
    """SIGTERM, then SIGKILL after 10 s."""
    if fleet.process.poll() is None:
        fleet.process.send_signal(signal.SIGTERM)
        try:
            fleet.process.wait(10)
        except subprocess.TimeoutExpired:
            fleet.process.kill()
            fleet.process.wait()
    with_pid = fleet.directory / "serve.pid"
    if with_pid.exists():
        os.unlink(with_pid)
