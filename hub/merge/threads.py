"""Worker threads for torch work that runs best one intra-op thread per worker."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Iterator

import torch


@contextmanager
def single_threaded_pool(workers: int, name: str) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose workers run torch ops on one intra-op thread each.

    For work that is serial inside torch (a CPU generator's draws) or too small for torch's
    own threads (one module's factored merge): one worker per core instead. Pending work is
    cancelled and the workers joined on exit.
    """
    threads = torch.get_num_threads()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name,
                              initializer=torch.set_num_threads, initargs=(1,))
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        # set_num_threads also sets what new threads start with: the workers' 1 must not stay.
        torch.set_num_threads(threads)
