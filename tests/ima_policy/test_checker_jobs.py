"""Walks of two lists in one process do not share state: the fleet service checks several nodes' lists at
once, in threads (the job reached check_range through a module global, which the second walk replaced)."""

from __future__ import annotations

import hashlib

from obelisk.ima_policy import checker
from obelisk.ima_policy import measurement_list as ml


def _list(names: list[str]) -> bytes:
    entries = [ml.make_entry("ima-ng", [ml.digest_field("sha256", hashlib.sha256(n.encode()).digest()),
                                        ml.name_field(n)], number=i) for i, n in enumerate(names, 1)]
    return ml.serialize_binary(entries)


def _job(data: bytes, source: str) -> checker.Job:
    return checker.Job(data, "binary", "little", ("sha256",), None, None, 100, source)


def test_two_interleaved_walks_each_see_their_own_list(monkeypatch):
    monkeypatch.setattr(checker, "CHUNK_TARGET", 512)  # several chunks per list
    a = _job(_list([f"/usr/bin/a{i}" for i in range(40)]), "a")
    b = _job(_list([f"/usr/lib/b{i}" for i in range(25)]), "b")
    alone = [(r.start, r.end, r.count) for r in checker.iter_run(a, workers=1)]
    assert len(alone) > 1
    walk = checker.iter_run(a, workers=1)
    first = next(walk)
    other = list(checker.iter_run(b, workers=1))  # another node's list, walked meanwhile
    rest = list(walk)
    assert [(r.start, r.end, r.count) for r in [first, *rest]] == alone
    assert sum(r.count for r in other) == 25 and sum(r.count for r in [first, *rest]) == 40
