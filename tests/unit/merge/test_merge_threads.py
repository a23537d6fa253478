"""Merge worker pools change only their own workers' torch thread count."""
from __future__ import annotations

import threading

import torch

from hub.merge.threads import joined_pool, single_threaded_pool


def _count_in_new_thread() -> int:
    """What a thread started now runs torch ops on: the process-wide default."""
    seen = []
    thread = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    thread.start()
    thread.join()
    return seen[0]


def _with_threads(count: int):
    """Run the test body with `count` intra-op threads, restoring the process's own after."""
    class _Scope:
        def __enter__(self):
            self.before = torch.get_num_threads()
            torch.set_num_threads(count)

        def __exit__(self, *exc):
            torch.set_num_threads(self.before)

    return _Scope()


def test_single_threaded_pool_workers_run_on_one_thread_and_nobody_else_does():
    with _with_threads(3):
        with single_threaded_pool(2, "test-pool") as pool:
            # Both workers set up before the new thread starts: a thread whose first torch
            # call falls inside a worker's set-up is the window threads.py documents.
            both = threading.Barrier(2)
            workers = list(pool.map(lambda _: (both.wait(timeout=30),
                                               torch.get_num_threads())[1], range(2)))
            workers += list(pool.map(lambda _: torch.get_num_threads(), range(2)))
            during = (torch.get_num_threads(), _count_in_new_thread())
        assert workers == [1, 1, 1, 1]
        assert during == (3, 3)
        assert (torch.get_num_threads(), _count_in_new_thread()) == (3, 3)


def test_single_threaded_pool_workers_stay_on_one_thread_after_the_default_is_put_back():
    # A worker's first torch op copies the process default into it; another pool putting
    # the default back before that op must not undo the worker's 1.
    with _with_threads(2):
        with single_threaded_pool(1, "test-late") as pool:
            assert pool.submit(lambda: None).result() is None  # the worker is set up
            with single_threaded_pool(1, "test-other") as other:
                other.submit(lambda: None).result()
            count = pool.submit(lambda: (torch.ones(4) + 1, torch.get_num_threads())[1]).result()
        assert count == 1


def test_concurrent_single_threaded_pools_leave_the_default_as_they_found_it():
    with _with_threads(2):
        start = threading.Barrier(4)
        counts: list[int] = []

        def merge_like() -> None:
            start.wait()
            for _ in range(20):
                with single_threaded_pool(2, "test-race") as pool:
                    counts.extend(pool.map(lambda _: torch.get_num_threads(), range(2)))

        callers = [threading.Thread(target=merge_like) for _ in range(4)]
        for caller in callers:
            caller.start()
        for caller in callers:
            caller.join()
        assert set(counts) == {1}
        assert (torch.get_num_threads(), _count_in_new_thread()) == (2, 2)
        assert not [t.name for t in threading.enumerate() if t.name.startswith("test-race")]


def test_joined_pool_leaves_no_worker_thread_behind():
    with joined_pool(2, "test-joined") as pool:
        assert sum(pool.map(lambda x: x, range(5))) == 10
    assert not [t.name for t in threading.enumerate() if t.name.startswith("test-joined")]
