"""Progress for long work: a rich bar with ETA on a terminal, a plain log line now and then otherwise."""

from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")
log = logging.getLogger("leukodx.progress")

#: below this many items no progress is shown (the work takes a moment)
MIN_ITEMS = 20


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Yield ``items``, showing progress on stderr: a bar when stderr is a terminal, else a log line
    (logger ``leukodx.progress``, INFO) at every 10% with the elapsed time."""
    if total is None:
        try:
            total = len(items)  # type: ignore[arg-type]
        except TypeError:
            total = None
    if total is not None and total < MIN_ITEMS:
        yield from items
        return
    if sys.stderr.isatty():
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, total=total, console=_console(), transient=True)
        return
    started, next_report = time.time(), 0.1
    for i, item in enumerate(items, 1):
        yield item
        if total and i / total >= next_report:
            log.info("%s: %d/%d (%.0f s)", description, i, total, time.time() - started)
            next_report = (int(i / total * 10) + 1) / 10


def _console():
    from rich.console import Console

    return Console(stderr=True)
