import os

import pytest

from obelisk.core.errors import InputError
from obelisk.core.forkpool import ForkPool, WorkerError


def _pid_and_squares(chunk: list[int]) -> tuple[int, list[int]]:
    return os.getpid(), [n * n for n in chunk]


def _children_of_this_process() -> set[int]:
    me = str(os.getpid())
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as handle:
                    fields = handle.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[1] == me:
                found.add(int(entry))
    return found


@pytest.mark.parametrize("jobs", [1, 2, 3])
def test_every_item_is_done_once_in_worker_processes(jobs):
    before = _children_of_this_process()
    with ForkPool(_pid_and_squares, jobs) as pool:
        results = list(pool.map(iter(range(1000)), chunk=7))
    assert sorted(n for _, squares in results for n in squares) == [n * n for n in range(1000)]
    pids = {pid for pid, _ in results}
    assert (pids == {os.getpid()}) if jobs == 1 else (os.getpid() not in pids and len(pids) == jobs)
    assert _children_of_this_process() == before  # every worker reaped


def test_the_last_items_go_out_in_smaller_chunks():
    with ForkPool(len, 2) as pool:
        sizes = list(pool.map(range(1000), chunk=64))
    assert sum(sizes) == 1000 and max(sizes) == 64 and min(sizes) < 16


def test_no_items_and_more_workers_than_chunks():
    with ForkPool(len, 4) as pool:
        assert list(pool.map([], chunk=8)) == []
        with pytest.raises(RuntimeError, match="maps once"):
            list(pool.map([1, 2, 3], chunk=8))
    with ForkPool(len, 4) as pool:
        assert sorted(pool.map([1, 2, 3], chunk=8)) == [1, 1, 1]


def _big(chunk: list[bytes]) -> list[bytes]:
    return [item * 4 for item in chunk]


def test_messages_larger_than_a_pipe_do_not_deadlock():
    items = [os.urandom(50_000) for _ in range(40)]  # chunks of 200 kB, results of 800 kB
    with ForkPool(_big, 2) as pool:
        out = list(pool.map(items, chunk=4))
    assert sorted(x for result in out for x in result) == sorted(item * 4 for item in items)


def _refuse(chunk: list[int]) -> int:
    if 13 in chunk:
        raise InputError("thirteen", source="item 13")
    return len(chunk)


def _die(chunk: list[int]) -> int:
    if 13 in chunk:
        os._exit(3)
    return len(chunk)


def _unpicklable(chunk: list[int]) -> int:
    class Local(Exception):
        pass
    raise Local("made inside the worker")


def test_a_worker_exception_is_raised_in_the_parent_and_every_worker_stops():
    before = _children_of_this_process()
    with pytest.raises(InputError, match="item 13: thirteen"):
        with ForkPool(_refuse, 2) as pool:
            list(pool.map(range(100), chunk=5))
    with pytest.raises(WorkerError, match="exited before answering"):
        with ForkPool(_die, 2) as pool:
            list(pool.map(range(100), chunk=5))
    with pytest.raises(WorkerError, match="made inside the worker"):
        with ForkPool(_unpicklable, 2) as pool:
            list(pool.map(range(100), chunk=5))
    assert _children_of_this_process() == before


def test_a_caller_that_stops_reading_leaves_no_worker_behind():
    before = _children_of_this_process()
    with ForkPool(len, 2) as pool:
        for _ in pool.map(range(10_000), chunk=3):
            break
    assert _children_of_this_process() == before


def _announce_first_chunk(chunk: list[int]) -> int:
    """Tells the test (through an inherited pipe) that a worker is at work."""
    os.write(_ANNOUNCE[1], b"x")
    return len(chunk)


_ANNOUNCE = os.pipe()


def test_while_started_runs_while_the_workers_work_on_their_first_chunks():
    import select

    seen: list[int] = []

    def wait_for_a_worker() -> None:
        # blocks this process: only a worker that already has its first chunk can answer
        ready, _, _ = select.select([_ANNOUNCE[0]], [], [], 30)
        seen.append(len(ready))

    with ForkPool(_announce_first_chunk, 2) as pool:
        sizes = list(pool.map(range(1000), chunk=10, head=300, while_started=wait_for_a_worker))
    assert seen == [1] and sum(sizes) == 1000 and max(sizes) == 300
    with ForkPool(len, 2) as pool:  # a small job: the first chunks are cut evenly, not one worker's all
        sizes = list(pool.map(range(100), chunk=10, head=300, while_started=lambda: None))
    assert sum(sizes) == 100 and max(sizes) <= 25
    calls: list[str] = []
    with ForkPool(len, 1) as pool:  # without workers it runs before the first chunk
        assert list(pool.map(range(5), chunk=10, head=300, while_started=lambda: calls.append("x"))) == [5]
    assert calls == ["x"]


def test_an_exception_from_while_started_stops_every_worker():
    before = _children_of_this_process()

    def refuse() -> None:
        raise InputError("certificate does not match")

    with pytest.raises(InputError, match="does not match"):
        with ForkPool(len, 2) as pool:
            list(pool.map(range(10_000), chunk=10, head=500, while_started=refuse))
    assert _children_of_this_process() == before


def _child_pid() -> int:
    return os.getpid()


def _refuse_in_child() -> int:
    raise InputError("no certificate here", source="cert.pem")


def test_a_forked_call_returns_or_raises_in_this_process_and_leaves_no_child():
    from obelisk.core.forkpool import ForkedCall

    before = _children_of_this_process()
    with ForkedCall(_child_pid) as call:
        assert call.result() not in (os.getpid(), None)
        assert call.result() == call.result()  # asked again: the same answer, no second wait
    with ForkedCall(_refuse_in_child) as failing:
        with pytest.raises(InputError, match="cert.pem: no certificate here"):
            failing.result()
    with ForkedCall(lambda: os._exit(5)) as dying:
        with pytest.raises(WorkerError, match="exited before answering"):
            dying.result()
    with ForkedCall(lambda: __import__("time").sleep(60)):  # never asked: ended when the block is left
        pass
    assert _children_of_this_process() == before
