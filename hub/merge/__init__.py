"""hub.merge: exact, fast LoRA merging (torch + safetensors only; no web, database or S3).

The public API is re-exported lazily so that `import hub.merge` does not load torch:
`merge`, `merge_to_folder`, `SourceSpec`, `MergeSpec`, `MergeResult`, `METHODS`, `ALIASES`.
"""
from __future__ import annotations

from hub.merge.spec import ALIASES, DENSE_METHODS, METHODS, MergeSpec, SourceSpec

#: Changes whenever the same inputs could give other bytes: part of a merge's cache key.
ENGINE_VERSION = "1"

__all__ = ["ALIASES", "DENSE_METHODS", "ENGINE_VERSION", "METHODS", "MergeResult", "MergeSpec",
           "SourceSpec", "merge", "merge_to_folder"]

_LAZY = {"merge", "merge_to_folder", "MergeResult"}


def __getattr__(name: str):
    if name in _LAZY:
        from hub.merge import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'hub.merge' has no attribute {name!r}")
