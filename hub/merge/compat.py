"""Which sources can be merged together, decided from their module shapes alone.

Torch-free, so the hub's merge plan answers from the database in the web process; the
engine's planner (hub.merge.plan) applies the same rules to loaded sources.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from hub.errors import IncompatibleAdapters


#: The module names transformers gives its Conv1D layers (GPT-2 and relatives).
CONV1D_NAMES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})


@dataclass(frozen=True)
class ModuleShape:
    """What decides whether two sources' updates of a module add up: kind and B @ A's shape."""

    kind: str  # "linear" or "embedding"
    out_features: int
    in_features: int
    rank: int


@dataclass(frozen=True)
class SourceShapes:
    """One source as the compatibility rules see it: a label, its base model, its modules."""

    label: str
    base_model: str | None
    modules: Mapping[str, ModuleShape]


def natural_key(name: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_base_models(sources: Sequence[SourceShapes]) -> None:
    """Refuse sources trained on different base models (those that name one)."""
    bases = {s.base_model for s in sources if s.base_model}
    if len(bases) > 1:
        raise IncompatibleAdapters(f"sources were trained on different base models: "
                                   f"{', '.join(sorted(bases))}")


def union_modules(sources: Sequence[SourceShapes]) -> dict[str, list[int]]:
    """Every module of any source -> the indices of the sources that adapt it, in natural
    order; IncompatibleAdapters naming the first module whose kind or shape differs."""
    seen: dict[str, tuple[int, ModuleShape]] = {}
    parts: dict[str, list[int]] = {}
    for index, source in enumerate(sources):
        for name, shape in source.modules.items():
            first = seen.get(name)
            if first is None:
                seen[name] = (index, shape)
                parts[name] = [index]
                continue
            other = first[1]
            if (other.kind, other.out_features, other.in_features) != (
                    shape.kind, shape.out_features, shape.in_features):
                raise IncompatibleAdapters(
                    f"module {name}: {sources[first[0]].label} has a {other.kind} update of"
                    f" shape {other.out_features}x{other.in_features} but {source.label} has"
                    f" a {shape.kind} update of shape {shape.out_features}x"
                    f"{shape.in_features}")
            parts[name].append(index)
    return {name: parts[name] for name in sorted(parts, key=natural_key)}
