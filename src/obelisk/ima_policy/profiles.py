"""IMA policy profiles: data files in profiles/, rendered into the policy text the kernel loads."""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable

from obelisk.core.errors import InputError
from obelisk.core.yamlsafe import load_yaml
from obelisk.ima_policy.policy import parse_rule

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass(frozen=True)
class ProfileRule:
    rule: str  # may hold {fsuuid}
    why: str


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    requires: tuple[str, ...]
    rules: tuple[ProfileRule, ...]


def _dir() -> Traversable:
    return resources.files("obelisk.ima_policy").joinpath("profiles")


def names() -> list[str]:
    return sorted(p.name[:-5] for p in _dir().iterdir() if p.name.endswith(".yaml"))


def load(name: str) -> Profile:
    if name not in names():
        raise InputError(f"unknown IMA policy profile {name!r} (known: {', '.join(names())})")
    source = f"profiles/{name}.yaml"
    data = load_yaml(_dir().joinpath(f"{name}.yaml").read_bytes(), source)
    try:
        rules = tuple(ProfileRule(str(r["rule"]), str(r["why"])) for r in data["rules"])
        return Profile(str(data["name"]), " ".join(str(data["description"]).split()),
                       tuple(data.get("requires") or ()), rules)
    except (KeyError, TypeError) as exc:
        raise InputError(f"malformed profile: {exc}", source=source) from None


def load_all() -> list[Profile]:
    return [load(n) for n in names()]


def render(profile: Profile, *, fsuuid: str | None = None) -> str:
    """The policy text: each rule preceded by a comment saying why it is there."""
    if "fsuuid" in profile.requires:
        if not fsuuid:
            raise InputError(f"profile {profile.name} scopes appraisal to the image's root filesystem: "
                             f"give its UUID with --fsuuid")
    if fsuuid is not None and not _UUID.match(fsuuid):
        raise InputError(f"--fsuuid {fsuuid!r} is not a UUID (8-4-4-4-12 hex digits)")
    lines = [f"# IMA policy rendered by obelisk from profile {profile.name}",
             f"# {profile.description}",
             "# The kernel applies the first matching rule of each action (measure, appraise)."]
    for i, r in enumerate(profile.rules, 1):
        text = r.rule.replace("{fsuuid}", fsuuid.lower() if fsuuid else "")
        rule = parse_rule(text, i)
        if rule.errors:  # a profile must never ship a rule the kernel rejects
            raise InputError(f"profile {profile.name} rule {i}: {rule.errors[0]}")
        lines.append("")
        lines.append(f"# {r.why}")
        lines.append(text)
    return "\n".join(lines) + "\n"
