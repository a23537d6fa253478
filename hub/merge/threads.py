"""Worker threads for the merge engine that leave the process's torch thread settings alone.

torch's intra-op thread count is per thread (OpenMP's nthreads ICV, MKL's local count),
but `torch.set_num_threads` also stores a process-wide default, which every thread takes
on its first torch call. So a worker can run on one thread while every other thread, and
every thread started later, keeps its own count, provided the default is put back at once.
torch has no call that sets one thread's count alone: a thread whose first torch call
falls in the moment a worker is set up (a thread start long) would still start on one.
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Callable, Iterator

import torch

# Held while the process-wide default is not the process's own: concurrent merges take
# turns, so none reads another's 1 as the value to put back.
_DEFAULT_LOCK = threading.Lock()


def _set_default(threads: int) -> None:
    """Set the process-wide default from a short-lived thread of its own, so that no running
    thread's count changes with it."""
    helper = threading.Thread(target=torch.set_num_threads, args=(threads,),
                              name="lorastack-torch-default")
    helper.start()
    helper.join()


def _one_intra_op_thread() -> None:
    """Pool initializer: this thread's torch ops run on one thread; nothing else changes."""
    with _DEFAULT_LOCK:
        # A new thread's first torch call copies the process default into it; so this
        # reads the default, and the 1 set below is not undone by that copy later.
        default = torch.get_num_threads()
        torch.set_num_threads(1)
        _set_default(default)


@contextmanager
def joined_pool(workers: int, name: str, initializer: Callable[[], None] | None = None
                ) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose pending work is cancelled and workers joined on exit."""
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name, initializer=initializer)
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def single_threaded_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A joined thread pool whose workers run torch ops on one intra-op thread each.

    For work too small for torch's own threads (one module's factored merge): one worker
    per core instead. Only the workers' count changes: the calling thread's, other
    threads', and the one new threads start with stay as they were, even with several
    pools at once.
    """
    with joined_pool(workers, name, _one_intra_op_thread) as pool:
        yield pool
