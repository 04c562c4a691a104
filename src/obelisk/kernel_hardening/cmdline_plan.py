"""The kernel command line a profile asks for, and the check of a planned one.

An image's command line is the UKI's `.cmdline`: measured into PCR 11 and, under Secure Boot, the
only one the node boots with. So it carries every parameter the profile asks for, even those the
kernel's configuration already defaults to (`init_on_alloc=1` beside CONFIG_INIT_ON_ALLOC_DEFAULT_ON):
the line alone passes the profile's command-line checks, and an auditor reading PCR 11's `.cmdline`
needs no config to see it. Requirements the profile itself makes moot (`module.sig_enforce` with
CONFIG_MODULES=n) add nothing; `absent` and `not_in` requirements add nothing and are checked.
"""

from __future__ import annotations

from obelisk.core.findings import Finding
from obelisk.kernel_hardening.check import Inputs, check, moot_reason
from obelisk.kernel_hardening.inputs import parse_cmdline
from obelisk.kernel_hardening.profile import Profile, Requirement


def required_word(req: Requirement) -> str | None:
    """The one word that satisfies a command-line requirement, or None when its absence does."""
    if req.present:
        return req.name
    if req.absent or req.not_in:
        return None
    value = req.requested_value()
    return None if value is None else f"{req.name}={value}"


def profile_words(profile: Profile) -> tuple[str, ...]:
    """What the profile asks of the command line, in the profile's order (parents first)."""
    words = []
    for req in profile.of_kind("cmdline"):
        if moot_reason(req, None, profile):  # judged by what the profile asks of the config
            continue
        word = required_word(req)
        if word is not None:
            words.append(word)
    return tuple(dict.fromkeys(words))


def cmdline_findings(profile: Profile, text: str, source: str) -> tuple[Finding, ...]:
    """The profile's command-line checks on `text`, without a config: what the line says is all that counts."""
    return check(profile, Inputs(cmdline=parse_cmdline(text, source)))
