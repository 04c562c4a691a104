import argparse
import importlib

from obelisk.cli.main import COMMAND_MODULES, COMMANDS, _Parser, build_parser


def test_command_map_names_exactly_the_modules_that_register_each_command():
    registered: dict[str, set[str]] = {}
    for name in COMMAND_MODULES:
        parser = _Parser(prog="t")
        sub = parser.add_subparsers(dest="c", parser_class=_Parser)
        importlib.import_module(name).register(sub)
        for command in sub.choices:
            registered.setdefault(command, set()).add(name)
    assert {c: set(m) for c, m in COMMANDS.items()} == registered


def test_a_command_line_builds_only_its_command_and_help_builds_all():
    only_ima = build_parser(["ima", "sign", "--help"])
    choices = next(a for a in only_ima._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(choices) == {"ima", "keys"}  # the signer adds both; the IMA log commands join `ima`
    assert {"sign", "verify", "policy", "log"} <= set(choices["ima"]._obelisk_group.choices)
    every = build_parser(["--help"])
    choices = next(a for a in every._actions if isinstance(a, argparse._SubParsersAction)).choices
    assert set(choices) == set(COMMANDS)


def test_unknown_command_is_a_usage_error(obelisk_cli):
    proc = obelisk_cli("frobnicate")
    assert proc.returncode == 2 and "invalid choice: 'frobnicate'" in proc.stderr and "Traceback" not in proc.stderr
