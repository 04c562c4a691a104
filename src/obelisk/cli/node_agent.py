"""The node agent's entry point on the node: `python3 -m obelisk.cli.node_agent --config agent.json`."""

from __future__ import annotations

import argparse
import sys

from obelisk.core.errors import InputError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="obelisk-agent", description="obelisk node agent (mTLS, read-only)")
    parser.add_argument("--config", required=True, help="agent.json (cert, key, client_ca, ...)")
    parser.add_argument("--port", type=int, help="override the configured port")
    args = parser.parse_args(argv)
    from obelisk.attest.agent import serve

    try:
        serve(args.config, args.port)
    except InputError as exc:
        print(f"obelisk-agent: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
