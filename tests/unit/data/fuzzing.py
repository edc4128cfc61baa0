"""What the hostile-input fuzz tests share: the property, the bounds, the byte mutations, the count.

The property (issue 16, point 5): any input gives a result or a coded medpipe error — a
:class:`~medpipe.errors.MedpipeError` whose ``code`` is registered in :class:`~medpipe.errors.Code` and
raises that exception class — never another exception, a hang, or memory beyond a bound. Time is
bounded by hypothesis' ``deadline`` per example (no reader waits on anything: no network, no stdin),
memory by :func:`coded_or_result` measuring the peak Python/numpy allocation with :mod:`tracemalloc`.

Each target has a short run in the default suite (:data:`SHORT`) and a long one marked ``slow``
(:data:`LONG`); ``-s`` prints how many inputs each test tried (:data:`TRIED`), for docs/security.md.
"""

from __future__ import annotations

import atexit
import tracemalloc
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from medpipe.errors import Code, MedpipeError

T = TypeVar("T")

_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
#: Default suite: a few dozen examples per target, a few seconds in all.
SHORT = settings(max_examples=50, deadline=2000, suppress_health_check=_CHECKS, database=None)
#: ``-m slow``: thousands of examples per target.
LONG = settings(max_examples=2000, deadline=5000, suppress_health_check=_CHECKS, database=None)
#: Inputs tried per target in this process (printed at exit with ``pytest -s``).
TRIED: Counter[str] = Counter()


@atexit.register
def _print_counts() -> None:
    if TRIED:
        print("\nfuzz inputs tried: " + ", ".join(f"{k} {v}" for k, v in sorted(TRIED.items())))


def coded_or_result(target: str, fn: Callable[[], T], *, max_peak: int) -> T | MedpipeError:
    """``fn()``'s result, or the coded error it raised; fail on any other exception or on a peak
    allocation above ``max_peak`` bytes (tracemalloc sees numpy buffers and bytearrays, not mmaps)."""
    TRIED[target] += 1
    tracemalloc.start()
    try:
        result: T | MedpipeError = fn()
    except MedpipeError as e:
        assert isinstance(e.code, Code), f"{type(e).__name__} with unregistered code {e.code!r}"
        assert isinstance(e, e.code.error), f"{e.code} raised as {type(e).__name__}, not {e.code.error.__name__}"
        result = e
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert peak <= max_peak, f"{target}: peak allocation {peak} bytes > bound {max_peak}"
    return result


def mutated_bytes(seed: bytes, max_edits: int = 8) -> st.SearchStrategy[bytes]:
    """``seed`` with a few byte flips, insertions, deletions, and maybe a truncation."""

    @st.composite
    def build(draw: Any) -> bytes:
        data = bytearray(seed)
        for _ in range(draw(st.integers(0, max_edits))):
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            kind = draw(st.sampled_from(("flip", "set", "insert", "delete")))
            if kind == "flip":
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif kind == "set":
                data[at] = draw(st.integers(0, 255))
            elif kind == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=16))
            else:
                del data[at : at + draw(st.integers(1, 16))]
        if draw(st.booleans()):
            data = data[: draw(st.integers(0, len(data)))]
        return bytes(data)

    return build()
