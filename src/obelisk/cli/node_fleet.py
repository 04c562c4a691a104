"""The node's fleet client loop, started in the background by /sbin/obelisk-init when the image
(`fleet.url`) or the node's config disk names a fleet service:

    python3 -m obelisk.cli.node_fleet run [--config-dir /run/obelisk/config] [--tcti device:/dev/tpmrm0]

It registers with the node's TPM (EK, AK; make/activate credential) under the image's identity
(/etc/obelisk/image), then attests every fleet.interval seconds. Outbound HTTPS only.
"""

from __future__ import annotations

import argparse
import socket
import sys

from obelisk.core.errors import InputError


def _log(line: str) -> None:
    print(f"obelisk-fleet: {line}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obelisk-node-fleet", description="the node's fleet client (push)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="register, then attest every interval (never returns unless --rounds)")
    run.add_argument("--config-dir", default="/run/obelisk/config", help="the node's config disk")
    run.add_argument("--fleet-settings", default="/etc/obelisk/fleet.json", help="the image's fleet settings")
    run.add_argument("--image-identity", default="/etc/obelisk/image", help="name= and version= of this image")
    run.add_argument("--tcti", default="device:/dev/tpmrm0")
    run.add_argument("--scan-root", default="/", help="CIS/STIG scan made every round, sent when changed ('' for none)")
    run.add_argument("--rounds", type=int, default=0, help="stop after N attempts (default: never)")
    args = parser.parse_args(argv)
    from obelisk.fleet import node as fleet_node

    try:
        found = fleet_node.settings(args.config_dir, args.fleet_settings)
        if found is None:
            _log("no fleet configured (fleet.url in the image, or fleet.json on the config disk)")
            return 0
        agent = fleet_node.agent(found, fleet_node.image_identity(args.image_identity), args.tcti,
                                 scan_root=args.scan_root or None)
    except InputError as exc:
        _log(f"error: {exc}")
        return 2
    _log(f"reporting to {found.url} every {found.interval} s")
    results = fleet_node.attest_forever(agent, found.interval, socket.gethostname(), _log, rounds=args.rounds)
    return 0 if results and results[-1].get("passed") else 1


if __name__ == "__main__":
    sys.exit(main())
