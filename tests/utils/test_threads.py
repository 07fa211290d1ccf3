"""ordered_map: results in order, a bounded number ahead, errors where they are due."""

import threading
import time

import pytest

from aml.utils.threads import ordered_map


@pytest.mark.parametrize("threads", [0, 1, 3])
def test_results_come_in_order_whatever_finishes_first(threads):
    def slow_first(index):
        time.sleep(0.02 if index % 3 == 0 else 0)
        return index * 10

    assert list(ordered_map(slow_first, 10, threads, ahead=4)) == [10 * i for i in range(10)]


def test_no_more_than_ahead_items_are_started_before_the_caller_asks():
    started = []
    lock = threading.Lock()

    def record(index):
        with lock:
            started.append(index)
        return index

    results = ordered_map(record, 100, threads=2, ahead=5)
    assert next(results) == 0
    time.sleep(0.05)
    assert max(started) <= 6  # the item given and at most 5 + 1 queued behind it
    results.close()
    assert len(started) <= 6  # nothing more was started
    assert not [t for t in threading.enumerate() if t.name.startswith("aml-read")]  # the pool is stopped


def test_an_error_is_raised_where_its_item_is_due():
    def fail_at_three(index):
        if index == 3:
            raise ValueError("item 3")
        return index

    results = ordered_map(fail_at_three, 10, threads=2, ahead=4)
    assert [next(results) for _ in range(3)] == [0, 1, 2]
    with pytest.raises(ValueError, match="item 3"):
        next(results)


def test_each_thread_runs_the_initializer_before_its_first_item():
    ready = set()
    lock = threading.Lock()

    def initializer():
        with lock:
            ready.add(threading.current_thread().name)

    def seen(index):
        return threading.current_thread().name in ready

    assert all(ordered_map(seen, 20, threads=3, ahead=6, initializer=initializer))
    assert 1 <= len(ready) <= 3
