"""Decompressing untrusted data with a size and a ratio cap: the one way obelisk inflates a file.

A 1 MB gzip stream can inflate to 1 GB. `inflate` decompresses in chunks and stops as soon as the
output passes `limit` bytes or `ratio` times the compressed size (whichever is lower, never below
`floor`), so memory stays bounded by the cap, not by what the attacker wrote. The caps per kind of
input are listed in docs/limits.md.
"""

from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Protocol

from obelisk.core.errors import ParseError

_CHUNK = 1 << 20


class _Decompressor(Protocol):
    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...

    @property
    def eof(self) -> bool: ...


class _Zlib:
    """zlib.decompressobj with the bz2/lzma interface (unconsumed input kept inside)."""

    def __init__(self, wbits: int):
        self._d = zlib.decompressobj(wbits=wbits)
        self._pending = b""

    def decompress(self, data: bytes, max_length: int = -1) -> bytes:
        out = self._d.decompress(self._pending + data, max_length if max_length > 0 else 0)
        self._pending = self._d.unconsumed_tail
        return out

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return not self._pending


def _decompressor(kind: str) -> _Decompressor:
    if kind == "gzip":
        return _Zlib(31)
    if kind == "xz":
        return lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    if kind == "lzma":
        return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE)
    if kind == "bzip2":
        return bz2.BZ2Decompressor()
    raise ValueError(f"unknown compression {kind}")


def inflate(data: bytes, kind: str, *, limit: int, ratio: int, source: str | None = None, offset: int = 0,
            what: str = "compressed data", floor: int = 1 << 20) -> bytes:
    """The decompressed `data` (one stream of `kind`: gzip, xz, lzma or bzip2).

    ParseError naming `source` and `offset` when it does not decompress, or inflates beyond
    min(limit, max(floor, ratio * len(data))) bytes. Trailing data after the stream is ignored.
    """
    cap = min(limit, max(floor, ratio * len(data)))
    d = _decompressor(kind)
    chunks: list[bytes] = []
    size = 0
    try:
        out = d.decompress(data, _CHUNK)
        while True:
            chunks.append(out)
            size += len(out)
            if size > cap:
                raise ParseError(f"{what} inflates beyond {cap} bytes ({kind}; limit {limit}, ratio {ratio}:1)",
                                 source=source, offset=offset)
            if d.eof or (not out and getattr(d, "needs_input", True)):
                break
            out = d.decompress(b"", _CHUNK)
    except (zlib.error, lzma.LZMAError, OSError, EOFError, ValueError) as exc:
        raise ParseError(f"{what} does not decompress ({kind}): {exc}", source=source, offset=offset) from None
    if not d.eof:
        raise ParseError(f"{what} is truncated ({kind})", source=source, offset=offset + len(data))
    return b"".join(chunks)
