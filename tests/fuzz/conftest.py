"""Hypothesis profiles of the fuzz suite.

``ci`` (default): a bounded, reproducible budget run by ``.ci/run`` (derandomized: the same cases each
run). ``long``: the documented longer run, ``LEUKODX_FUZZ_PROFILE=long pytest tests/fuzz`` or
``python benchmarks/robustness.py``, with fresh random cases each time.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

from contract import write_ledger

_common = dict(deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                      HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile("ci", max_examples=int(os.environ.get("LEUKODX_FUZZ_EXAMPLES", "12")), derandomize=True,
                          **_common)
settings.register_profile("long", max_examples=int(os.environ.get("LEUKODX_FUZZ_EXAMPLES", "300")), **_common)
settings.load_profile(os.environ.get("LEUKODX_FUZZ_PROFILE", "ci"))


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("LEUKODX_FUZZ_LEDGER")
    if path:
        write_ledger(path)
