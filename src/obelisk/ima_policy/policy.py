"""The kernel's IMA policy grammar (Documentation/ABI/testing/ima_policy, Linux 6.1), as data,
and a parser of policy text into rules.

    rule := action [condition ...] [option ...]
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ACTIONS = ("measure", "dont_measure", "appraise", "dont_appraise", "audit", "dont_audit", "hash", "dont_hash")
# Rules of one group are matched first-wins against each other (ima_match_policy's actmask).
ACTION_GROUP = {"measure": "measure", "dont_measure": "measure", "appraise": "appraise",
                "dont_appraise": "appraise", "audit": "audit", "dont_audit": "audit", "hash": "hash",
                "dont_hash": "hash"}

FUNCS = ("BPRM_CHECK", "MMAP_CHECK", "MMAP_CHECK_REQPROT", "CREDS_CHECK", "FILE_CHECK", "MODULE_CHECK",
         "FIRMWARE_CHECK", "POLICY_CHECK", "KEXEC_KERNEL_CHECK", "KEXEC_INITRAMFS_CHECK", "KEXEC_CMDLINE",
         "KEY_CHECK", "CRITICAL_DATA", "SETXATTR_CHECK")
FUNC_ALIASES = {"FILE_MMAP": "MMAP_CHECK", "PATH_CHECK": "FILE_CHECK"}
# Functions that measure a buffer, not a file: they can be measured but never appraised.
BUFFER_FUNCS = ("KEXEC_CMDLINE", "KEY_CHECK", "CRITICAL_DATA")
# Content the kernel itself loads: appraising it is cheap (rare) and must not be scoped away.
KERNEL_LOAD_FUNCS = ("MODULE_CHECK", "FIRMWARE_CHECK", "POLICY_CHECK", "KEXEC_KERNEL_CHECK",
                     "KEXEC_INITRAMFS_CHECK")
MASKS = ("MAY_READ", "MAY_WRITE", "MAY_APPEND", "MAY_EXEC")
TEMPLATES = ("ima", "ima-ng", "ima-ngv2", "ima-sig", "ima-sigv2", "ima-buf", "ima-modsig", "evm-sig")
HASH_ALGOS = ("md5", "sha1", "sha224", "sha256", "sha384", "sha512", "sm3", "streebog256", "streebog512",
              "sha3-256", "sha3-384", "sha3-512", "wp256", "wp384", "wp512", "rmd160")

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_HEX = re.compile(r"^(0x)?[0-9a-fA-F]{1,16}$")
_DEC = re.compile(r"^\d{1,10}$")
_LSM = re.compile(r"^[A-Za-z0-9_.:-]+$")


def _choice(values: Sequence[str]) -> Callable[[str], str | None]:
    def check(v: str) -> str | None:
        return None if v in values else f"must be one of {', '.join(values)}"
    return check


def _func(v: str) -> str | None:
    return None if v in FUNCS or v in FUNC_ALIASES else f"unknown function (known: {', '.join(FUNCS)})"


def _mask(v: str) -> str | None:
    return None if v.lstrip("^") in MASKS else "must be [^]MAY_READ, MAY_WRITE, MAY_APPEND or MAY_EXEC"


def _hex(v: str) -> str | None:
    return None if _HEX.match(v) else "must be a hex number"


def _uuid(v: str) -> str | None:
    return None if _UUID.match(v) else "must be a UUID (8-4-4-4-12 hex digits)"


def _dec(v: str) -> str | None:
    return None if _DEC.match(v) else "must be a decimal number"


def _pcr(v: str) -> str | None:
    return None if _DEC.match(v) and int(v) < 24 else "must be a PCR index 0-23"


def _lsm(v: str) -> str | None:
    return None if _LSM.match(v) else "must be an LSM label"


def _text(v: str) -> str | None:
    return None if v and " " not in v else "must not be empty"


def _appraise_type(v: str) -> str | None:
    return None if v in ("imasig", "imasig|modsig", "sigv3") else "must be imasig, imasig|modsig or sigv3"


def _algos(v: str) -> str | None:
    bad = [a for a in v.split(",") if a not in HASH_ALGOS]
    return None if not bad else f"unknown hash algorithm {bad[0]!r}"


def _keyrings(v: str) -> str | None:
    return None if all(k for k in v.split("|")) else "must be keyring names separated by '|'"


@dataclass(frozen=True)
class Keyword:
    name: str
    kind: str  # "condition" or "option"
    check: object  # value validator -> error text or None; None for flags without a value
    operators: tuple[str, ...] = ("=",)
    only_actions: tuple[str, ...] = ()  # empty: any action
    since: str = ""  # kernel version that added it


# One line per keyword: the kernel's grammar, auditable against the ABI document.
KEYWORDS: dict[str, Keyword] = {k.name: k for k in (
    Keyword("func", "condition", _func),
    Keyword("mask", "condition", _mask),
    Keyword("fsmagic", "condition", _hex),
    Keyword("fsuuid", "condition", _uuid),
    Keyword("fsname", "condition", _text, since="5.16"),
    Keyword("uid", "condition", _dec, ("=", "<", ">")),
    Keyword("euid", "condition", _dec, ("=", "<", ">")),
    Keyword("gid", "condition", _dec, ("=", "<", ">"), since="5.16"),
    Keyword("egid", "condition", _dec, ("=", "<", ">"), since="5.16"),
    Keyword("fowner", "condition", _dec, ("=", "<", ">")),
    Keyword("fgroup", "condition", _dec, ("=", "<", ">"), since="5.16"),
    Keyword("subj_user", "condition", _lsm),
    Keyword("subj_role", "condition", _lsm),
    Keyword("subj_type", "condition", _lsm),
    Keyword("obj_user", "condition", _lsm),
    Keyword("obj_role", "condition", _lsm),
    Keyword("obj_type", "condition", _lsm),
    Keyword("appraise_type", "option", _appraise_type, only_actions=("appraise",)),
    Keyword("appraise_flag", "option", _choice(("check_blacklist",)), only_actions=("appraise",)),
    Keyword("appraise_algos", "option", _algos, only_actions=("appraise",), since="5.17"),
    Keyword("digest_type", "option", _choice(("verity",)), only_actions=("measure", "appraise"), since="6.3"),
    Keyword("template", "option", _choice(TEMPLATES), only_actions=("measure",)),
    Keyword("pcr", "option", _pcr, only_actions=("measure",)),
    Keyword("keyrings", "option", _keyrings, only_actions=("measure",)),
    Keyword("label", "option", _text, only_actions=("measure",)),
    Keyword("permit_directio", "option", None),
)}


@dataclass(frozen=True)
class Term:
    key: str
    op: str  # "=", "<", ">", or "" for a flag
    value: str

    def normalized(self) -> tuple[str, str, str]:
        value = self.value
        if self.key == "func":
            value = FUNC_ALIASES.get(value, value)
        elif self.key == "fsmagic" and _HEX.match(value):
            value = hex(int(value, 16))
        elif self.key == "fsuuid":
            value = value.lower()
        return self.key, self.op, value

    def text(self) -> str:
        return self.key if not self.op else f"{self.key}{self.op}{self.value}"


@dataclass(frozen=True)
class Rule:
    line: int
    text: str
    action: str
    terms: tuple[Term, ...]
    errors: tuple[str, ...] = ()  # grammar errors (the kernel would reject the policy)

    @property
    def group(self) -> str:
        return ACTION_GROUP.get(self.action, "")

    def get(self, key: str) -> str | None:
        for t in self.terms:
            if t.key == key:
                return FUNC_ALIASES.get(t.value, t.value) if key == "func" else t.value
        return None

    def conditions(self) -> frozenset[tuple[str, str, str]]:
        return frozenset(t.normalized() for t in self.terms if KEYWORDS.get(t.key, Keyword("", "", None)).kind
                         == "condition")


@dataclass(frozen=True)
class Policy:
    rules: tuple[Rule, ...]
    comments: dict[int, str] = field(default_factory=dict)


_TERM = re.compile(r"^([a-z_]+)([=<>])(.*)$")


def parse_rule(text: str, line: int) -> Rule:
    words = text.split()
    action = words[0]
    errors: list[str] = []
    if action not in ACTIONS:
        errors.append(f"unknown action {_short(action)!r} (known: {', '.join(ACTIONS)})")
    terms: list[Term] = []
    seen: set[str] = set()
    for word in words[1:]:
        m = _TERM.match(word)
        key, op, value = (m.group(1), m.group(2), m.group(3)) if m else (word, "", "")
        kw = KEYWORDS.get(key)
        terms.append(Term(key, op, value))
        if kw is None:
            errors.append(f"unknown keyword {_short(key)!r}")
            continue
        if key in seen:
            errors.append(f"{key} given twice")
        seen.add(key)
        if kw.check is None:
            if op:
                errors.append(f"{key} takes no value")
            continue
        if not op:
            errors.append(f"{key} needs a value")
            continue
        if op not in kw.operators:
            errors.append(f"{key} does not take the operator {op!r}")
        problem = kw.check(value)  # type: ignore[operator]
        if problem:
            errors.append(f"{_short(key + '=' + value)}: {problem}")
    return Rule(line, text, action, tuple(terms), _bounded_errors(errors))


MAX_ERRORS_PER_RULE = 8


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded_errors(errors: list[str]) -> tuple[str, ...]:
    """Each distinct error once, at most MAX_ERRORS_PER_RULE: a rule repeating one keyword 5,000 times
    is one problem, not 5,000 findings that each carry the whole rule."""
    unique = list(dict.fromkeys(errors))
    if len(unique) > MAX_ERRORS_PER_RULE:
        more = len(unique) - MAX_ERRORS_PER_RULE + 1
        unique = [*unique[:MAX_ERRORS_PER_RULE - 1], f"... and {more} more problems in this rule"]
    return tuple(unique)


def parse(text: str) -> Policy:
    rules = []
    comments = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments[lineno] = stripped[1:].strip()
            continue
        rules.append(parse_rule(stripped, lineno))
    return Policy(tuple(rules), comments)
