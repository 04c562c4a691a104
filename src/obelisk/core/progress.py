"""Progress for long work: shown on a terminal, silent in CI, with --quiet, or when stderr is not a tty."""

from __future__ import annotations

import os
import sys
from typing import Protocol


class Progress(Protocol):
    def advance(self, n: int = 1) -> None: ...
    def stage(self, text: str) -> None: ...
    def close(self) -> None: ...


def interactive(quiet: bool = False) -> bool:
    """True when a person is watching: a terminal on stderr, not CI, not --quiet."""
    return not quiet and not os.environ.get("CI") and sys.stderr.isatty()


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def stage(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass

    def __enter__(self) -> _Silent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _RichProgress(_Silent):
    def __init__(self, description: str, total: int | None):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as RP

        self._progress = RP(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(),
                            console=Console(stderr=True), transient=True)
        self._task = self._progress.add_task(description, total=total)
        self._progress.start()

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._task, n)

    def stage(self, text: str) -> None:
        self._progress.update(self._task, description=text)

    def close(self) -> None:
        self._progress.stop()


def progress(description: str, total: int | None = None, *, quiet: bool = False) -> _Silent:
    """A progress display (a context manager) that is a no-op unless a person is watching."""
    if interactive(quiet):
        return _RichProgress(description, total)
    return _Silent()
