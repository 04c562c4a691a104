"""The node's boot-time entry points, run by /sbin/obelisk-init: `python3 -m obelisk.cli.node_init unlock-var`,
and with `runtime.enabled` `python3 -m obelisk.cli.node_init runtime` (containerd and the spec's workloads)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

BOOT_EVENTS = "/run/obelisk/boot-events"


def finish_boot(tcti: str, boot_events: str = BOOT_EVENTS) -> Callable[[], None]:
    """The sysinit phase into PCR 11 (what obelisk-init's shell otherwise does after unlock-var) and its
    line in the node's boot-phase log; obelisk-init skips its own extension when the line is there."""

    def extend() -> None:
        from obelisk.image import measure
        from obelisk.tpm import device

        digest = measure.phase_digest("sysinit")
        device.extend_digest(tcti, measure.PCR, digest)
        with open(boot_events, "a") as log:
            log.write(f"{measure.PCR} sysinit {digest.hex()}\n")

    return extend


def fleet_key(tcti: str, wait: float, retry: float) -> Callable[[], bytes] | None:
    """The fleet's part of /var's key (a round the service verifies), when this node has a fleet."""
    import socket

    from obelisk.fleet import node as fleet_node

    found = fleet_node.settings()
    if found is None:
        return None

    def ask() -> bytes:
        agent = fleet_node.agent(found, fleet_node.image_identity(), tcti)
        return fleet_node.release_key(agent, socket.gethostname(),
                                      lambda line: print(f"obelisk: {line}", flush=True), wait=wait, retry=retry)

    return ask


def slot_command(command: str) -> int:
    from obelisk.attest import upgrade
    from obelisk.core.errors import ObeliskError
    from obelisk.image import efiboot, slots

    def say(line: str) -> None:
        print(f"obelisk: {line}", flush=True)

    try:
        disk = slots.disk_of()
        node = upgrade.Node(disk=disk, efivars=efiboot.EfiVars())
        if command == "slot-boot":
            var = slots.disk_of_partition("var")
            upgrade.on_boot(node, var, say)
        else:
            upgrade.deadline(node, say)
    except (ObeliskError, slots.SlotError, OSError) as exc:
        say(f"{command}: {exc}")
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obelisk-node-init")
    sub = parser.add_subparsers(dest="command", required=True)
    unlock = sub.add_parser("unlock-var", help="unlock the LUKS2 /var with the TPM (and/or the fleet) and mount it")
    unlock.add_argument("--device", help="default: obelisk.var= on the kernel command line (a path or "
                                         "PARTLABEL=name), else /dev/vdb")
    unlock.add_argument("--mount", default="/var")
    unlock.add_argument("--tcti", default="device:/dev/tpmrm0")
    unlock.add_argument("--fleet-wait", type=float, default=900, metavar="SECONDS",
                        help="disk.unlock fleet: how long to wait for the service's key (approval, network)")
    unlock.add_argument("--fleet-retry", type=float, default=10, metavar="SECONDS")
    sub.add_parser("runtime", help="mount cgroup v2, start containerd and the image's workloads (runs until the "
                                   "node stops)")
    sub.add_parser("slot-boot", help="A/B slots: record a failed trial, mark this boot's trial (docs/upgrade.md)")
    sub.add_parser("trial-deadline", help="reboot into the committed slot if this trial boot has not committed")
    args = parser.parse_args(argv)
    if args.command == "runtime":
        from obelisk.image import node_runtime

        return node_runtime.main()
    if args.command in ("slot-boot", "trial-deadline"):
        return slot_command(args.command)
    from obelisk.core.errors import ObeliskError
    from obelisk.disk.unlock import unlock_or_tmpfs

    try:
        ask = fleet_key(args.tcti, args.fleet_wait, args.fleet_retry)
    except ObeliskError as exc:  # the fleet settings are unreadable: the TPM-only path may still work
        print(f"obelisk: fleet settings: {exc}", flush=True)
        ask = None
    return unlock_or_tmpfs(args.device, mountpoint=args.mount, tcti=args.tcti, fleet_key=ask,
                           finish_boot=finish_boot(args.tcti) if ask else None)


if __name__ == "__main__":
    sys.exit(main())
