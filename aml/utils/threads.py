"""An ordered map over a pool of threads that works a bounded number of items ahead: for work
that waits on files or runs in C without Python's lock (reading files, parsing headers), where
a process per worker would cost its start (a copy of the process) and a message per item."""

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable, Deque, Generator, Optional, TypeVar

T = TypeVar("T")


def ordered_map(
    function: Callable[[int], T],
    count: int,
    threads: int,
    ahead: int,
    initializer: Optional[Callable[[], None]] = None,
) -> Generator[T, None, None]:
    """``function(0)``, ..., ``function(count - 1)`` in that order, computed by ``threads``
    threads at most ``ahead`` items ahead of the caller (in the caller's thread when
    ``threads`` is 0). An exception of ``function`` is raised where its item is due.
    Closing the generator drops what has not started and waits for what has.

    Args:
        function: what to compute for each index.
        count: how many indices.
        threads: the pool's threads (0: none).
        ahead: how many items may be computed before the caller asks for them.
        initializer: what each thread of the pool runs first.

    Returns:
        A generator of the results.

    Examples:
        >>> from aml.utils.threads import ordered_map
        >>> list(ordered_map(lambda i: i * i, 5, threads=2, ahead=3))
        [0, 1, 4, 9, 16]
    """
    if threads == 0:
        yield from (function(index) for index in range(count))
        return
    pool = ThreadPoolExecutor(threads, thread_name_prefix="aml-read", initializer=initializer)
    pending: Deque[Future] = deque()
    try:
        for index in range(count):
            pending.append(pool.submit(function, index))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
