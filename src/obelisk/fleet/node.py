"""The node's side of the fleet as it runs on a booted node: its settings, the attestation loop, and
the round that releases /var's key (disk.unlock fleet | tpm+fleet).

Runs from the signed root under Debian 12's python3 (cryptography 38, tpm2-pytss 2.x, no
SQLAlchemy): it imports the client only, never the service (a test keeps it so). The node only
connects out: nodes behind NAT reach the service with outbound HTTPS, nothing connects to them.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from obelisk.core.errors import InputError, ObeliskError
from obelisk.fleet.client import FleetClient, FleetClientError, NodeAgent
from obelisk.image import fleet_node

IMAGE_IDENTITY = "/etc/obelisk/image"  # name= and version= (build.node_files)
CONFIG_DIR = "/run/obelisk/config"  # the node's config disk, mounted by the initramfs
TPM = "device:/dev/tpmrm0"

Log = Callable[[str], None]
# While a node waits for approval it asks again this often (or every interval, if that is shorter), so an
# operator's approval takes effect within seconds instead of up to one interval. A refused round costs the
# service a TLS handshake and a primary-key read that writes nothing, and only unapproved nodes ask this often.
PENDING_RETRY = 5.0


def image_identity(path: str = IMAGE_IDENTITY) -> str:
    """NAME:VERSION of the image this node booted, from its signed root."""
    from obelisk.core.inputs import read_bounded

    fields = dict(line.partition("=")[::2] for line in read_bounded(path, "image identity", 4096)
                  .decode("utf-8", "replace").splitlines())
    if not fields.get("name") or not fields.get("version"):
        raise InputError("expected name= and version=", source=path)
    return f"{fields['name']}:{fields['version']}"


def _optional(path: str) -> fleet_node.FleetNode | None:
    from obelisk.core.inputs import read_bounded

    if not os.path.exists(path):
        return None
    return fleet_node.parse(read_bounded(path, "fleet settings", 64 * 1024), path)


def settings(config_dir: str = CONFIG_DIR, image_file: str = fleet_node.IMAGE_PATH) -> fleet_node.Effective | None:
    """The image's fleet settings with the config disk's URL and join token; None: this node has no fleet."""
    return fleet_node.effective(_optional(image_file), _optional(os.path.join(config_dir, fleet_node.CONFIG_NAME)),
                                config_dir)


def agent(found: fleet_node.Effective, image: str, tcti: str = TPM, scan_root: str | None = None,
          timeout: float = 60.0) -> NodeAgent:
    """The node's fleet client for `found` settings (the join token read from the config disk)."""
    from obelisk.core.inputs import read_bounded

    token = ""
    if found.token_file:
        token = read_bounded(found.token_file, "join token", 4096).decode("utf-8", "replace").strip()
    return NodeAgent(FleetClient(found.url, found.ca, timeout=timeout), image=image, tcti=tcti,
                     scan_root=scan_root, token=token)


def attest_forever(node: NodeAgent, interval: float, hostname: str, log: Log, *, rounds: int = 0,
                   sleep: Callable[[float], None] = time.sleep) -> list[dict[str, Any]]:
    """Register (again, whenever the service does not know the node), then one round every `interval`
    seconds; a refusal or an unreachable service is logged and tried again next interval, except that a
    node waiting for approval asks again every PENDING_RETRY seconds. `rounds` > 0 stops after that many
    attempts (tests)."""
    results: list[dict[str, Any]] = []
    done = 0
    pending = False
    while True:
        try:
            if node.node is None:
                registered = node.register(hostname)
                pending = registered["status"] == "pending"
                log(f"registered as {registered['node']} ({registered['status']})")
            result = node.round()
            pending = False
            results.append(result)
            log(f"round: {result['status']} ({result['summary']})")
        except FleetClientError as exc:  # pending, or the service is away
            if exc.status == 404:
                node.node = None  # the service forgot this node: register again
            elif exc.status not in (403, 429):  # a rate limit's 429 keeps the pace: one try per PENDING_RETRY
                pending = False  # the service is away or failing: no hurry
            results.append({"error": str(exc)})
            log(str(exc))
        except ObeliskError as exc:  # the TPM or a log could not be read: say so, try again
            results.append({"error": str(exc)})
            log(f"error: {exc}")
        done += 1
        if rounds and done >= rounds:
            return results
        sleep(min(interval, PENDING_RETRY) if pending else interval)


def release_key(node: NodeAgent, hostname: str, log: Log, *, wait: float, retry: float,
                sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic) -> bytes:
    """The node's /var key part from the service: register, then a round over a fresh nonce that the
    service verifies before it answers. Refusals (pending approval, service away) are retried every
    `retry` seconds for `wait` seconds; then the last reason is raised."""
    deadline = clock() + wait
    while True:
        try:
            if node.node is None:
                registered = node.register(hostname)
                log(f"registered as {registered['node']} ({registered['status']})")
            return node.key()
        except FleetClientError as exc:
            if exc.status == 404:
                node.node = None
            if clock() + retry > deadline:
                raise FleetClientError(f"no /var key from the fleet: {exc}", exc.status) from None
            log(f"waiting for the fleet to release /var's key: {exc}")
        sleep(retry)
