"""Parse XML files the user brings (DISA XCCDF, CCI list) without entities or network access."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from obelisk.core.errors import InputError

MAX_XML_BYTES = 64 * 1024 * 1024


def parse_xml_file(path: str | Path) -> Any:  # an lxml element (lxml has no type information)
    from lxml import etree

    from obelisk.core.inputs import read_bounded

    p = Path(path)
    data = read_bounded(p, "XML file", MAX_XML_BYTES)
    parser = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False, huge_tree=False,
                             remove_comments=True)
    try:
        return etree.fromstring(data, parser)
    except etree.XMLSyntaxError as exc:
        line = f" (line {exc.lineno})" if getattr(exc, "lineno", None) else ""
        msg = " ".join(str(exc.msg or "").split())[:200]
        raise InputError(f"not well-formed XML{line}: {msg}", source=str(p)) from None
    except ValueError as exc:  # lxml refuses some inputs with ValueError
        raise InputError(f"not usable XML: {' '.join(str(exc).split())[:200]}", source=str(p)) from None


# Characters XML 1.0 cannot carry (C0 controls except tab/newline/return, U+FFFE/U+FFFF, lone surrogates).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff\ud800-\udfff]")


def xml_text(value: str | None) -> str:
    """Text safe for an XML element or attribute: evidence from a hostile node may hold anything."""
    if not value:
        return ""
    return _NOT_XML.sub(lambda m: f"\\x{ord(m.group()):02x}", value)
