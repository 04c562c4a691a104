"""Rate limits on the node endpoints, which anyone who reaches the service can call before proving anything.

Token buckets: one per source address and one for the whole service (per `fleet serve` process). A
request takes a token from its source's bucket and from the global one; when either is empty it is
refused (429) with the seconds until a token is back (Retry-After). A bucket holds `burst` tokens and
refills at `rate` per second. Nodes behind one NAT share a source address: size the per-source limit
for the largest site (a node makes two requests a round, one round per interval).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from obelisk.core.errors import InputError

MAX_SOURCES = 100_000  # buckets kept; past it, full (idle) ones are forgotten


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size

    @classmethod
    def parse(cls, text: str, option: str) -> Limit | None:
        """`RATE` or `RATE,BURST` (requests per second, requests at once; burst defaults to 2 x rate, at least
        1); `0` or `off`: no limit."""
        if text.strip().lower() in ("0", "off"):
            return None
        rate_text, _, burst_text = text.partition(",")
        try:
            rate = float(rate_text)
            burst = float(burst_text) if burst_text else max(1.0, 2 * rate)
        except ValueError:
            raise InputError(f"{option}: expected RATE or RATE,BURST (numbers), got {text!r}") from None
        if not (rate > 0 and burst >= 1 and math.isfinite(rate) and math.isfinite(burst)):
            raise InputError(f"{option}: rate must be > 0 and burst >= 1, got {text!r}")
        return cls(rate, burst)

    def __str__(self) -> str:
        return f"{self.rate:g},{self.burst:g}"


PER_SOURCE = Limit(20.0, 60.0)  # defaults of `fleet serve`
OVERALL = Limit(500.0, 1000.0)


class _Bucket:
    __slots__ = ("tokens", "at")

    def __init__(self, tokens: float, at: float):
        self.tokens = tokens
        self.at = at

    def refill(self, limit: Limit, now: float) -> None:
        self.tokens = min(limit.burst, self.tokens + (now - self.at) * limit.rate)
        self.at = now

    def wait(self, limit: Limit) -> float:
        """Seconds until a token is back (0 when one is there)."""
        return 0.0 if self.tokens >= 1 else (1 - self.tokens) / limit.rate


class RateLimiter:
    def __init__(self, per_source: Limit | None = PER_SOURCE, overall: Limit | None = OVERALL,
                 clock: Callable[[], float] = time.monotonic):
        self.per_source = per_source
        self.overall = overall
        self.clock = clock
        self._lock = threading.Lock()
        self._sources: dict[str, _Bucket] = {}
        self._all = _Bucket(overall.burst if overall else 0.0, clock())

    def admit(self, source: str) -> float | None:
        """None when `source` may go on (its tokens are taken); else the seconds it should wait."""
        now = self.clock()
        with self._lock:
            mine = None
            if self.per_source is not None:
                mine = self._sources.get(source)
                if mine is None:
                    if len(self._sources) >= MAX_SOURCES:
                        self._forget_idle(now)
                    mine = self._sources[source] = _Bucket(self.per_source.burst, now)
                mine.refill(self.per_source, now)
                if (wait := mine.wait(self.per_source)) > 0:
                    return wait
            if self.overall is not None:
                self._all.refill(self.overall, now)
                if (wait := self._all.wait(self.overall)) > 0:
                    return wait
                self._all.tokens -= 1
            if mine is not None:
                mine.tokens -= 1
            return None

    def _forget_idle(self, now: float) -> None:
        assert self.per_source is not None
        limit = self.per_source
        self._sources = {k: b for k, b in self._sources.items()
                         if b.tokens + (now - b.at) * limit.rate < limit.burst}
        if len(self._sources) >= MAX_SOURCES:  # all busy: a flood from many addresses; start over
            self._sources.clear()


def retry_after(seconds: float) -> str:
    """The Retry-After header's value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
