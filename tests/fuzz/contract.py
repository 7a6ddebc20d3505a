"""The fuzz suite's contract, checked for every generated case: the call returns a result, or raises
a ``LeukodxError`` whose message is one non-empty line; never another exception, never a hang (each
case is time-bounded), never unbounded memory (peak of traced allocations).

Every case is recorded in a ledger per target (cases, results, clean errors, violations, slowest case,
peak memory); ``LEUKODX_FUZZ_LEDGER=FILE`` makes the session write it (``benchmarks/robustness.py``).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import tracemalloc
from collections import defaultdict

from leukodx.errors import LeukodxError

#: seconds one case may take before it counts as a hang
CASE_SECONDS = float(os.environ.get("LEUKODX_FUZZ_CASE_SECONDS", "60"))
#: traced memory one case may peak at
CASE_MEMORY_MB = float(os.environ.get("LEUKODX_FUZZ_CASE_MB", "768"))

LEDGER: dict[str, dict] = defaultdict(lambda: {"cases": 0, "results": 0, "clean_errors": 0, "violations": [],
                                               "max_seconds": 0.0, "peak_mb": 0.0})


class Hang(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds: float):
    def stop(signum, frame):
        raise Hang(f"no answer within {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def check(target: str, fn, *args, **kwargs):
    """Run ``fn`` under the contract; record the outcome under ``target``; fail the test on a violation.
    Returns the result, or the ``LeukodxError`` raised."""
    entry = LEDGER[target]
    entry["cases"] += 1
    started = time.perf_counter()
    tracing = not tracemalloc.is_tracing()
    if tracing:
        tracemalloc.start()
    tracemalloc.reset_peak()
    outcome, violation = None, None
    try:
        with _time_limit(CASE_SECONDS):
            outcome = fn(*args, **kwargs)
        entry["results"] += 1
    except LeukodxError as exc:
        outcome = exc
        message = str(exc)
        if not message.strip() or "\n" in message.strip():
            violation = f"LeukodxError without a one-line message: {message!r}"
        else:
            entry["clean_errors"] += 1
    except Hang as exc:
        violation = f"hang: {exc}"
    except Exception as exc:  # noqa: BLE001 - what the contract forbids
        violation = f"{type(exc).__name__}: {exc}"
    finally:
        peak_mb = tracemalloc.get_traced_memory()[1] / 2 ** 20
        if tracing:
            tracemalloc.stop()
        seconds = time.perf_counter() - started
        entry["max_seconds"] = round(max(entry["max_seconds"], seconds), 3)
        entry["peak_mb"] = round(max(entry["peak_mb"], peak_mb), 1)
    if violation is None and peak_mb > CASE_MEMORY_MB:
        violation = f"memory: peak {peak_mb:.0f} MB traced (bound {CASE_MEMORY_MB:.0f} MB)"
    if violation is not None:
        entry["violations"].append(violation[:300])
        raise AssertionError(f"{target}: contract broken: {violation}")
    return outcome


def write_ledger(path: str) -> None:
    with open(path, "w") as fh:
        json.dump(dict(LEDGER), fh, indent=2)


def check_cli(target: str, argv: list[str]) -> int:
    """``leukodx ARGV`` in-process under the same bounds: exit 0 (a result) or a handled error (a
    non-zero code with an ``error:`` line or a usage message); never a traceback, never the last-resort
    handler's "internal error". Returns the exit code."""
    import io

    from leukodx.cli.app import EXIT_INTERNAL_ERROR, main

    def run() -> int:
        err, out = io.StringIO(), io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            code = main(list(argv))
        text = err.getvalue()
        if code == EXIT_INTERNAL_ERROR or "Traceback" in text or "internal error" in text:
            raise RuntimeError(f"leukodx {' '.join(argv)} -> {code}: {text.strip()[-300:]}")
        if code not in (0, 1, 2):
            raise RuntimeError(f"leukodx {' '.join(argv)} -> unexpected exit {code}")
        if code and "error" not in text.lower() and "usage" not in text.lower():
            raise RuntimeError(f"leukodx {' '.join(argv)} -> {code} without saying why")
        if code:
            from leukodx.errors import InvalidInputError

            raise InvalidInputError(f"exit {code}")  # counted as a clean error
        return code

    result = check(target, run)
    return 0 if not isinstance(result, Exception) else 2
