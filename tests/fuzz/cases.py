"""Shared by the fuzzers: their hypothesis settings and a count of the cases each one really ran.

Every fuzz test calls ``ran(name)`` once per example hypothesis feeds it, so the counts printed at the end of
``make test`` (``tests/fuzz/conftest.py``) and by ``bench/fuzz.py`` are what ran, shrinking included.

Bounded by default (the whole set well under a minute, derandomized so ``make test`` is repeatable);
``BMSGW_FUZZ_EXAMPLES=20000`` gives every fuzzer that many examples, with fresh random choices each run.
"""
from __future__ import annotations

import os
from collections import Counter

from hypothesis import HealthCheck, settings

COUNTS: Counter = Counter()

_LONG = int(os.environ.get("BMSGW_FUZZ_EXAMPLES", "0") or 0)

settings.register_profile(
    "bmsgw-fuzz", deadline=None, derandomize=True, database=None, print_blob=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large, HealthCheck.filter_too_much])
settings.register_profile(
    "bmsgw-fuzz-long", parent=settings.get_profile("bmsgw-fuzz"), derandomize=False)


def fuzz_settings(examples: int) -> settings:
    """The settings of one fuzzer: ``examples`` cases in ``make test``, BMSGW_FUZZ_EXAMPLES in a long run."""
    if _LONG:
        return settings(settings.get_profile("bmsgw-fuzz-long"), max_examples=_LONG)
    return settings(settings.get_profile("bmsgw-fuzz"), max_examples=examples)


def ran(name: str) -> None:
    COUNTS[name] += 1


def summary() -> str:
    return ", ".join(f"{name} {COUNTS[name]} cases" for name in sorted(COUNTS))
