"""Command lines as data: Kubernetes-style flags and systemd unit ExecStart/Environment.

No shell: a systemd unit is parsed the way systemd reads it (sections, continuation lines,
Environment=/EnvironmentFile=, ExecStart= resets, $VAR and ${VAR} expansion), and flags the way
pflag reads them (--name=value, --name value, a bare boolean --name, last one wins).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

# Flags that take no separate value: "--profiling false" is --profiling=true plus a stray word.
BOOL_FLAGS = frozenset({
    "anonymous-auth", "profiling", "client-cert-auth", "peer-client-cert-auth", "auto-tls", "peer-auto-tls",
    "use-service-account-credentials", "service-account-lookup", "service-account-extend-token-expiration",
    "rotate-certificates", "make-iptables-util-chains", "protect-kernel-defaults", "seccomp-default",
    "allow-privileged", "enable-bootstrap-token-auth", "authentication-token-webhook", "leader-elect",
    "enable-aggregator-routing", "enable-admission-plugins-all", "rotate-server-certificates",
    "fail-swap-on", "enable-debugging-handlers", "enable-server", "exit-on-lock-contention",
})

MAX_ARGS = 4096


@dataclass(frozen=True)
class Flag:
    name: str
    value: str
    position: int  # index of the argument in the command line


@dataclass(frozen=True)
class CommandLine:
    argv: tuple[str, ...]
    flags: dict[str, Flag] = field(compare=False, hash=False)

    def get(self, name: str) -> str | None:
        f = self.flags.get(name)
        return None if f is None else f.value

    def show(self, name: str) -> str:
        f = self.flags.get(name)
        return f"--{name}" if f is None else f"--{name}={f.value}"


def parse_flags(argv: list[str] | tuple[str, ...]) -> CommandLine:
    """Parse argv[1:] of a Kubernetes component; the last occurrence of a flag wins (as in pflag)."""
    argv = tuple(argv[:MAX_ARGS])
    flags: dict[str, Flag] = {}
    i = 1
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            break
        if arg.startswith("-") and len(arg) > 1:
            body = arg.lstrip("-")
            if "=" in body:
                name, value = body.split("=", 1)
            elif body in BOOL_FLAGS:
                name, value = body, "true"
            elif i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                name, value = body, argv[i + 1]
                i += 1
            else:
                name, value = body, "true"
            if name:
                flags[name] = Flag(name, value, i)
        i += 1
    return CommandLine(argv, flags)


# ------------------------------------------------------------------ systemd units

UNIT_DIRS = ("etc/systemd/system", "run/systemd/system", "usr/local/lib/systemd/system",
             "usr/lib/systemd/system", "lib/systemd/system")


@dataclass(frozen=True)
class Unit:
    name: str
    files: tuple[Path, ...]  # main unit file, then drop-ins in the order systemd applies them
    exec_start: tuple[str, ...]  # argv after expansion ("" when none)
    environment: dict[str, str] = field(compare=False, hash=False)
    environment_files: tuple[Path, ...] = ()


def find_unit_files(root: Path, name: str) -> tuple[Path, ...]:
    """The unit file systemd would load for `name`, followed by its drop-ins."""
    main = None
    for d in UNIT_DIRS:
        candidate = root / d / name
        if candidate.is_file() or candidate.is_symlink():
            main = candidate
            break
    dropins: dict[str, Path] = {}
    for d in reversed(UNIT_DIRS):  # higher-precedence directories replace same-named drop-ins
        ddir = root / d / f"{name}.d"
        if ddir.is_dir():
            for f in ddir.iterdir():
                if f.name.endswith(".conf"):
                    dropins[f.name] = f
    files = ([main] if main is not None else []) + [dropins[k] for k in sorted(dropins)]
    return tuple(files)


def _logical_lines(text: str) -> list[str]:
    out: list[str] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not buf and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        out.append(buf + line)
        buf = ""
    if buf:
        out.append(buf)
    return out


def _split(value: str) -> list[str]:
    try:
        return shlex.split(value, posix=True)
    except ValueError:
        return value.split()


def read_env_file(text: str) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, value = line.split("=", 1)
        key = key.removeprefix("export ").strip()
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        env[key] = value
    return env


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def expand_exec(words: list[str], env: dict[str, str]) -> list[str]:
    """systemd's ExecStart expansion: a word that is exactly $VAR splits on whitespace, ${VAR} does not."""
    out: list[str] = []
    for w in words:
        m = re.fullmatch(r"\$([A-Za-z_][A-Za-z0-9_]*)", w)
        if m:
            out.extend(env.get(m.group(1), "").split())
            continue
        out.append(_VAR.sub(lambda mm: env.get(mm.group(1) or mm.group(2), ""), w))
    return out


def parse_unit(root: Path, files: tuple[Path, ...], read: Callable[[Path], str]) -> Unit:
    """Combine a unit and its drop-ins. `read(path) -> str` raises OSError/ValueError on bad files."""
    env: dict[str, str] = {}
    env_files: list[Path] = []
    exec_start: list[str] = []
    for f in files:
        section = ""
        for line in _logical_lines(read(f)):
            if line.startswith("[") and line.endswith("]"):
                section = line[1:-1]
                continue
            if section != "Service" or "=" not in line:
                continue
            key, value = (s.strip() for s in line.split("=", 1))
            if key == "Environment":
                for item in _split(value):
                    if "=" in item:
                        k, v = item.split("=", 1)
                        env[k] = v
            elif key == "EnvironmentFile":
                optional = value.startswith("-")
                path = root / value.lstrip("-").lstrip("/")
                try:
                    env.update(read_env_file(read(path)))
                    env_files.append(path)
                except OSError:
                    if not optional:
                        raise
            elif key == "ExecStart":
                exec_start = [] if not value else _split(value.lstrip("-@+!:"))
    argv = expand_exec(exec_start, env)
    return Unit(name=files[0].name if files else "", files=files, exec_start=tuple(argv), environment=env,
                environment_files=tuple(env_files))
