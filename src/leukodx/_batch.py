"""One way to run a batch of files: each item's result kept as it finishes, a failing item recorded
(its one-line reason) while the others go on, and Ctrl-C answered with what was finished so far."""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

from leukodx._progress import track
from leukodx.errors import Interrupted, item_error

T = TypeVar("T")
R = TypeVar("R")


def run_batch(items: Iterable[T], work: Callable[[T], R], unit: str, on_result: Callable[[R], None] | None = None,
              on_error: Callable[[str, str], None] | None = None, key: str = "file") -> tuple[list[R], list[dict]]:
    """``work(item)`` for each item, in order; returns (results, failures ``{key: item, "error": reason}``).

    Any exception of one item, a ``LeukodxError`` or a bug (``item_error`` names it as internal), is that
    item's failure, never the batch's. On Ctrl-C, ``Interrupted`` carries ``partial=(results, failures)``
    for the caller to write."""
    items = list(items)
    results: list[R] = []
    failures: list[dict] = []
    try:
        for item in track(items, unit):
            try:
                result = work(item)
            except Exception as exc:  # noqa: BLE001 - one item never costs the batch its other results
                message = item_error(item, exc)
                failures.append({key: str(item), "error": message})
                if on_error:
                    on_error(str(item), message)
                continue
            results.append(result)
            if on_result:
                on_result(result)
    except KeyboardInterrupt:
        raise Interrupted(len(results), len(items), unit, partial=(results, failures)) from None
    return results, failures
