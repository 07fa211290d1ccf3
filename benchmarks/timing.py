"""How the benchmarks time a piece of work: the smallest of several runs (the least disturbed
by the rest of the machine)."""

import time
from typing import Callable


def best_of(run: Callable[[], object], repeats: int = 3) -> float:
    """The smallest wall time, in seconds, of ``repeats`` calls of ``run``."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
