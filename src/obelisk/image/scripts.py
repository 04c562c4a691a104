"""The node's shell scripts, rendered from the Jinja2 templates in templates/.

    init.sh.j2          the initramfs's /init                 (initramfs.render_init)
    obelisk-init.sh.j2  /sbin/obelisk-init on the signed root (build.node_init_script)
    tpm-send.sh.j2      tpm_send, included by both            (measure.shell_send)
    tpm-extend.sh.j2    tpm_extend, included by init.sh.j2    (measure.shell_functions)

Every `{{ value }}` must come out as a plain shell token (letters, digits, `.`, `_`, `/`, `-`):
the environment's `finalize` checks each one, so no template can splice a quote, a space or a `$`
into a script, and none needs quoting. A name the caller did not pass is an error (StrictUndefined).
Block tags leave no empty lines (trim_blocks, lstrip_blocks); a file's last newline is kept.
tests/image/test_scripts.py checks every rendering with dash, busybox sh and shellcheck.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Any

TEMPLATES = Path(__file__).with_name("templates")
_TOKEN = re.compile(r"[A-Za-z0-9._/-]+")


def shell_token(value: Any) -> str:
    """`value` as it goes into a script; ValueError unless it is a plain shell token."""
    text = str(value)
    if isinstance(value, bool) or not _TOKEN.fullmatch(text):  # a bool is a forgotten "yes"/"no"
        raise ValueError(f"{value!r} is not a plain shell token (letters, digits, '.', '_', '/', '-')")
    return text


@functools.cache
def environment() -> Any:  # jinja2.Environment; imported here: the node's agent runs without Jinja2
    import jinja2

    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined,
                              autoescape=False, keep_trailing_newline=True, trim_blocks=True, lstrip_blocks=True,
                              finalize=shell_token)


def render(template: str, **values: Any) -> str:
    return environment().get_template(template).render(**values)
