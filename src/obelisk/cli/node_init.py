"""The node's boot-time entry point, run by /sbin/obelisk-init: `python3 -m obelisk.cli.node_init unlock-var`."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obelisk-node-init")
    sub = parser.add_subparsers(dest="command", required=True)
    unlock = sub.add_parser("unlock-var", help="unlock the LUKS2 /var with the TPM and mount it")
    unlock.add_argument("--device", help="default: obelisk.var= on the kernel command line (a path or "
                                         "PARTLABEL=name), else /dev/vdb")
    unlock.add_argument("--mount", default="/var")
    unlock.add_argument("--tcti", default="device:/dev/tpmrm0")
    args = parser.parse_args(argv)
    from obelisk.disk.unlock import unlock_or_tmpfs

    return unlock_or_tmpfs(args.device, mountpoint=args.mount, tcti=args.tcti)


if __name__ == "__main__":
    sys.exit(main())
