"""A plan's analysis: how the sources' updates interact (hub.merge.analyze), computed in
the web process from the sources' factors, fetched through the worker's source cache."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hub.runtime import Hub
from hub.services.merge_plan import MergePlan
from hub.services.source_cache import CachedFile, SourceCache

SOURCE_FILES = ("adapter_config.json", "adapter_model.safetensors")


def analyze_plan(hub: Hub, plan: MergePlan) -> dict:
    """Norms and cosines of the planned sources' weighted updates, overall and per module."""
    from hub.merge import SourceSpec
    from hub.merge.analyze import analyze

    cache = SourceCache(hub.store, hub.settings.worker_cache_dir, hub.settings.worker_cache_bytes)
    work = Path(tempfile.mkdtemp(prefix="analyze-", dir=hub.settings.data_dir / "tmp"))
    contexts = []
    try:
        specs = []
        for index, source in enumerate(plan.sources):
            files = [CachedFile(path, source.file(path).blob_key, source.file(path).sha256,
                                source.file(path).size) for path in SOURCE_FILES]
            context = cache.folder(files, work / f"source-{index}")
            specs.append(SourceSpec(context.__enter__(), source.weight, source.label))
            contexts.append(context)
        # The web process merges nothing: its analyses run on the CPU.
        return analyze(specs, [source.label for source in plan.sources], device="cpu")
    finally:
        for context in reversed(contexts):
            context.__exit__(None, None, None)
        shutil.rmtree(work, ignore_errors=True)
