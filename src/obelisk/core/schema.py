"""The version key of obelisk's own JSON formats.

Every obelisk JSON document names its format and version under `schema`
(`"schema": "obelisk.evidence/1"`). Evidence bundles and AK records written before this
convention carry it under `format`; readers still accept that key. A document carrying both
keys with different values is refused: which one to believe would be a guess.
"""

from __future__ import annotations

from typing import Any

KEY = "schema"
OLD_KEY = "format"


def schema_of(doc: dict[str, Any]) -> Any:
    """The version string of `doc` (`schema`, else the old `format`); None when it has neither.

    Raises ValueError when both keys are present with different values.
    """
    if KEY in doc and OLD_KEY in doc and doc[KEY] != doc[OLD_KEY]:
        raise ValueError(f"{KEY!r} ({doc[KEY]!r}) and the old {OLD_KEY!r} ({doc[OLD_KEY]!r}) disagree")
    return doc[KEY] if KEY in doc else doc.get(OLD_KEY)
