"""Every command and option of the CLI stays: the argparse tree is compared with a committed snapshot.

A new command or option is added to the snapshot (`OBELISK_UPDATE_CLI_SNAPSHOT=1 pytest tests/cli`);
one that disappears or changes its choices fails here, so a refactor cannot drop what users type.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from obelisk.cli.main import COMMAND_MODULES, build_parser

SNAPSHOT = Path(__file__).with_name("cli_tree.json")


def _tree(parser: argparse.ArgumentParser) -> dict[str, Any]:
    options: dict[str, Any] = {}
    commands: dict[str, Any] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in sorted(action.choices.items()):
                commands[name] = _tree(sub)
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        key = " ".join(sorted(action.option_strings)) or f"<{action.dest}>"
        options[key] = {
            "nargs": str(action.nargs) if action.nargs is not None else None,
            "choices": sorted(str(c) for c in action.choices) if action.choices else None,
            "takes_value": action.nargs != 0,
        }
    return {"options": options, "commands": commands}


def cli_tree() -> dict[str, Any]:
    return _tree(build_parser(modules=COMMAND_MODULES))


def _flatten(tree: dict[str, Any], prefix: str = "obelisk") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for option, shape in tree["options"].items():
        flat[f"{prefix} {option}"] = shape
    for name, sub in tree["commands"].items():
        flat[f"{prefix} {name}"] = "command"
        flat.update(_flatten(sub, f"{prefix} {name}"))
    return flat


def test_every_command_and_option_of_the_snapshot_still_exists():
    current = cli_tree()
    if os.environ.get("OBELISK_UPDATE_CLI_SNAPSHOT"):
        SNAPSHOT.write_text(json.dumps(current, indent=1, sort_keys=True) + "\n")
    expected = _flatten(json.loads(SNAPSHOT.read_text()))
    actual = _flatten(current)
    missing = sorted(k for k in expected if k not in actual)
    changed = sorted(k for k in expected if k in actual and actual[k] != expected[k])
    added = sorted(k for k in actual if k not in expected)
    assert not missing, f"commands or options gone: {missing}"
    assert not changed, f"commands or options changed: {[(k, expected[k], actual[k]) for k in changed]}"
    assert not added, f"new commands or options: add them to {SNAPSHOT.name}: {added}"


def test_the_snapshot_covers_every_top_level_command():
    tree = json.loads(SNAPSHOT.read_text())
    assert {"keys", "ima", "kernel", "scan", "k8s", "attest", "disk", "report", "build", "image", "boot",
            "demo"} <= set(tree["commands"])
