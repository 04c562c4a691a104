"""`obelisk disk` options: `--format` is the output format; the old spellings still work with a warning.

`disk enroll --format` without a value is the old spelling of `--format-volume`; `--json` is the old
spelling of `--format json`. Both print one deprecation line on stderr. The TPM and cryptsetup are
replaced by fakes here: what is tested is the command line (tests/disk/test_volume.py runs the real thing).
"""

from __future__ import annotations

import json

import pytest

from obelisk.cli import main as climain
from obelisk.cli.common import output_format

ENROLL = ["disk", "enroll", "--device", "v.img", "--pcrs", "7,11"]
DISK_COMMANDS = {
    "enroll": ENROLL,
    "unlock": ["disk", "unlock", "--device", "v.img"],
    "reseal": ["disk", "reseal", "--device", "v.img"],
    "sign-policy": ["disk", "sign-policy", "--key", "k.pem", "--pcrs", "7", "-o", "p.json"],
    "add-policy": ["disk", "add-policy", "--device", "v.img", "p.json"],
}
ENROLL_WARNING = "obelisk: warning: disk enroll --format is deprecated; use --format-volume\n"


def parse(argv: list[str]):
    return climain.build_parser(argv).parse_args(argv)


def test_enroll_bare_format_is_the_old_format_volume_with_a_warning(capsys):
    args = parse([*ENROLL, "--format"])
    assert args.format_volume is True and args.format is None
    assert capsys.readouterr().err == ENROLL_WARNING
    args = parse(["disk", "enroll", "--format", "--device", "v.img", "--pcrs", "7"])  # followed by an option
    assert args.format_volume is True and args.format is None and args.device == "v.img"
    assert capsys.readouterr().err == ENROLL_WARNING


def test_enroll_format_volume_is_the_new_spelling(capsys):
    args = parse([*ENROLL, "--format-volume"])
    assert args.format_volume is True and args.format is None
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_enroll_format_with_a_value_is_the_output_format(capsys, fmt):
    args = parse([*ENROLL, "--format", fmt])
    assert args.format == fmt and args.format_volume is False
    args = parse([*ENROLL, "--format-volume", f"--format={fmt}"])
    assert args.format == fmt and args.format_volume is True
    assert capsys.readouterr().err == ""


def test_enroll_format_refuses_other_values(capsys):
    with pytest.raises(SystemExit) as info:
        parse([*ENROLL, "--format", "yaml"])
    assert info.value.code == 2 and "invalid choice: 'yaml'" in capsys.readouterr().err


@pytest.mark.parametrize("command", sorted(DISK_COMMANDS))
def test_every_disk_command_takes_format_text_or_json(capsys, command):
    for fmt in ("text", "json"):
        args = parse([*DISK_COMMANDS[command], "--format", fmt])
        assert output_format(args) == fmt
    # text unless asked, also when stdout is not a terminal (pytest captures it): enroll's recovery key is for a person
    assert output_format(parse(DISK_COMMANDS[command])) == "text"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("command", ["enroll", "unlock", "reseal"])
def test_json_is_a_deprecated_alias_of_format_json(capsys, command):
    args = parse([*DISK_COMMANDS[command], "--json"])
    assert args.format == "json" and output_format(args) == "json"
    assert capsys.readouterr().err == f"obelisk: warning: disk {command} --json is deprecated; use --format json\n"


@pytest.mark.parametrize("command", ["enroll", "unlock", "reseal", "add-policy"])
def test_output_file_means_json_unless_asked(command):
    assert output_format(parse([*DISK_COMMANDS[command], "-o", "r.json"])) == "json"
    assert output_format(parse([*DISK_COMMANDS[command], "-o", "r.txt", "--format", "text"])) == "text"


def test_sign_policy_output_is_the_policy_file_not_the_result():
    args = parse(DISK_COMMANDS["sign-policy"])
    assert args.policy_output == "p.json" and getattr(args, "output", None) is None
    assert output_format(args) == "text"


# ---- through main(): the handlers render what the options ask, with fakes for the TPM work --------

class _Enrolled:
    tpm_keyslot, recovery_keyslot, recovery_key = 1, 2, "0123abcd-" * 7 + "0123abcd"
    pcrs, values, formatted = (7, 11), {}, True


@pytest.fixture
def fake_volume(monkeypatch):
    from obelisk.disk import volume

    calls = {}

    def enroll(device, pcrs, tcti=None, **kwargs):
        calls["enroll"] = kwargs
        return _Enrolled()

    class _Token:
        keyslot = 3

        class sealed:  # noqa: N801 - stands for a Sealed record
            pcrs = (7, 11)

    monkeypatch.setattr(volume, "enroll", enroll)
    monkeypatch.setattr(volume, "unlock", lambda device, tcti, **kw: _Token())
    monkeypatch.setattr(volume, "reseal", lambda device, tcti, **kw: _Token())
    return calls


def test_enroll_old_format_spelling_still_formats_the_volume(fake_volume, capsys):
    assert climain.main([*ENROLL, "--format"]) == 0
    out, err = capsys.readouterr()
    assert err == ENROLL_WARNING
    assert fake_volume["enroll"]["format_volume"] is True
    assert "recovery key (keyslot 2)" in out and _Enrolled.recovery_key in out


def test_enroll_format_volume_and_json_output(fake_volume, capsys):
    assert climain.main([*ENROLL, "--format-volume", "--format", "json"]) == 0
    out, err = capsys.readouterr()
    assert err == "" and fake_volume["enroll"]["format_volume"] is True
    doc = json.loads(out)
    assert doc["tpm_keyslot"] == 1 and doc["formatted"] is True and doc["recovery_key"] == _Enrolled.recovery_key


def test_enroll_result_file_holding_the_recovery_key_is_private(fake_volume, tmp_path, capsys):
    out = tmp_path / "enrolled.json"
    assert climain.main([*ENROLL, "-o", str(out)]) == 0
    assert capsys.readouterr().out == ""
    assert json.loads(out.read_text())["recovery_key"] == _Enrolled.recovery_key
    assert out.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("command", ["unlock", "reseal"])
def test_old_json_flag_and_new_format_json_print_the_same(fake_volume, capsys, command):
    assert climain.main([*DISK_COMMANDS[command], "--json"]) == 0
    old_out, old_err = capsys.readouterr()
    assert old_err == f"obelisk: warning: disk {command} --json is deprecated; use --format json\n"
    assert climain.main([*DISK_COMMANDS[command], "--format", "json"]) == 0
    new_out, new_err = capsys.readouterr()
    assert new_err == "" and new_out == old_out
    assert json.loads(new_out)["device"] == "v.img"
    assert climain.main(DISK_COMMANDS[command]) == 0
    assert capsys.readouterr().out.startswith("v.img: ")
