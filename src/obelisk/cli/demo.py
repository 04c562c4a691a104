"""`obelisk demo`: the main job on the bundled example (what `scripts/demo` runs).

keys -> build -> verify -> fleet service -> boot two nodes -> attest -> the fleet approves and attests
them -> HTML reports -> stop, each stage timed and shown; the stages live in `obelisk.lab.walkthrough`.
"""

from __future__ import annotations

import argparse

from obelisk.cli.common import add_quiet, emit_result


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="the whole product on the bundled example: keys, build, verify, a fleet service, "
                       "two nodes booted, attested and approved, HTML reports (every stage timed)")
    p.add_argument("--example", default="examples/node",
                   help="example directory with spec.yaml (default examples/node)")
    p.add_argument("--workdir", default="demo-out",
                   help="where keys, the image, the nodes, the fleet service and results go (default demo-out)")
    p.add_argument("--keep-running", action="store_true",
                   help="leave the nodes and the fleet service running at the end")
    p.add_argument("--format", choices=("text", "json"), default=None)
    add_quiet(p)
    p.set_defaults(handler=_demo)


def _demo(args: argparse.Namespace) -> int:
    from pathlib import Path

    from obelisk.core.errors import InputError
    from obelisk.lab.walkthrough import Walk, run

    example = Path(args.example)
    if not (example / "spec.yaml").is_file():
        raise InputError("not an example directory (no spec.yaml)", source=str(example))
    walk = Walk(example=example, workdir=Path(args.workdir).absolute(), quiet=args.quiet,
                keep_running=args.keep_running)
    result = run(walk)

    def text(d: dict) -> str:
        times = ", ".join(f"{k} {v:.1f} s" for k, v in d["timings_s"].items())
        verdict = "FAILED" if d["failed"] else "passed"
        return (f"demo {verdict}; HTML report: {d['report']}; fleet HTML report: {d['fleet_report']}\n"
                f"stage times: {times} (total {sum(d['timings_s'].values()):.1f} s)\n")

    args.output = None
    return emit_result(args, result, text, exit_code=1 if result["failed"] else 0)
