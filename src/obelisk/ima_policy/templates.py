"""IMA template descriptors and the fields they are made of (kernel ima_template.c).

A template names an ordered list of fields. In the binary list and in the template
hash every field is `u32 length | bytes` -- except the legacy `ima` template, whose
digest has no length and whose name is hashed zero-padded to 256 bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from obelisk.core.errors import ParseError

# Built-in templates: name -> field ids (security/integrity/ima/ima_template.c)
BUILTIN: dict[str, tuple[str, ...]] = {
    "ima": ("d", "n"),
    "ima-ng": ("d-ng", "n-ng"),
    "ima-ngv2": ("d-ngv2", "n-ng"),
    "ima-sig": ("d-ng", "n-ng", "sig"),
    "ima-sigv2": ("d-ngv2", "n-ng", "sig"),
    "ima-buf": ("d-ng", "n-ng", "buf"),
    "ima-modsig": ("d-ng", "n-ng", "sig", "d-modsig", "modsig"),
    "evm-sig": ("d-ng", "n-ng", "evmsig", "xattrnames", "xattrlengths", "xattrvalues", "iuid", "igid", "imode"),
}

# How each field is shown in the ascii list.
DIGEST = "digest"  # plain hex (ima template 'd')
DIGEST_ALGO = "digest-algo"  # "<algo>:\0<digest>" shown "algo:hex"
DIGEST_TYPE_ALGO = "digest-type-algo"  # "<type>:<algo>:\0<digest>" shown "type:algo:hex"
STRING = "string"  # NUL-terminated text, shown as text
HEX = "hex"  # raw bytes shown as hex
UINT = "uint"  # little-endian (canonical) unsigned integer shown in decimal

FIELD_KINDS: dict[str, str] = {
    "d": DIGEST,
    "n": STRING,
    "d-ng": DIGEST_ALGO,
    "d-ngv2": DIGEST_TYPE_ALGO,
    "n-ng": STRING,
    "sig": HEX,
    "buf": HEX,
    "d-modsig": DIGEST_ALGO,
    "modsig": HEX,
    "evmsig": HEX,
    "xattrnames": STRING,
    "xattrlengths": HEX,
    "xattrvalues": HEX,
    "iuid": UINT,
    "igid": UINT,
    "imode": UINT,
}

# Size of the name buffer the legacy 'ima' template hashes (IMA_EVENT_NAME_LEN_MAX + 1).
IMA_NAME_HASHED_LEN = 256
MAX_TEMPLATE_NAME = 255


@dataclass(frozen=True)
class Template:
    name: str
    fields: tuple[str, ...]

    @property
    def legacy(self) -> bool:
        """The original 'ima' template with its special binary and hash layout."""
        return self.name == "ima"


_CACHE: dict[str, Template] = {}


def lookup(name: str, where: str = "template", source: str | None = None, offset: int | None = None) -> Template:
    """The template for a list entry's template name.

    A kernel booted with ima_template_fmt= records the format itself ("d-ng|n-ng|iuid")
    as the name, so a '|'-separated list of known field ids is accepted too.
    """
    found = _CACHE.get(name)
    if found is not None:
        return found
    if name in BUILTIN:
        tpl = Template(name, BUILTIN[name])
    else:
        fields = tuple(name.split("|"))
        if not name or any(f not in FIELD_KINDS for f in fields):
            raise ParseError(f"{where}: unknown template {name[:64]!r}", source=source, offset=offset)
        tpl = Template(name, fields)
    if len(_CACHE) < 256:
        _CACHE[name] = tpl
    return tpl
