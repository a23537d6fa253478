"""A plan's analysis: how the sources' updates interact (hub.merge.analyze), computed in
the web process from the sources' factors, fetched through the worker's source cache."""
from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

from hub.errors import RateLimited
from hub.runtime import Hub
from hub.services.merge_plan import MergePlan
from hub.services.source_cache import ADAPTER_FILES, CachedFile, SourceCache


#: Analyses at once in one process: each uses every core for a moment; more wait their turn
#: as a 429, never as a pile of threads.
_RUNNING = threading.BoundedSemaphore(1)
RETRY_AFTER_SECONDS = 2


def analyze_plan(hub: Hub, plan: MergePlan) -> dict:
    """Norms and cosines of the planned sources' weighted updates, overall and per module."""
    if not _RUNNING.acquire(blocking=False):
        raise RateLimited("Another analysis is running on this hub process; send the plan"
                          " again in a moment.", retry_after=RETRY_AFTER_SECONDS)
    try:
        return _analyze(hub, plan)
    finally:
        _RUNNING.release()


def _analyze(hub: Hub, plan: MergePlan) -> dict:
    from hub.merge import SourceSpec
    from hub.merge.analyze import analyze

    cache = SourceCache(hub.store, hub.settings.worker_cache_dir, hub.settings.worker_cache_bytes)
    work = Path(tempfile.mkdtemp(prefix="analyze-", dir=hub.settings.data_dir / "tmp"))
    sources = [[CachedFile(path, s.file(path).blob_key, s.file(path).sha256, s.file(path).size)
                for path in ADAPTER_FILES] for s in plan.sources]
    try:
        with cache.folders(sources, work) as folders:
            specs = [SourceSpec(folder, s.weight, s.label)
                     for folder, s in zip(folders, plan.sources)]
            # The web process merges nothing: its analyses run on the CPU.
            return analyze(specs, [s.label for s in plan.sources], device="cpu")
    finally:
        shutil.rmtree(work, ignore_errors=True)
