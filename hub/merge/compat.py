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
    fan_in_fan_out: bool = False


def natural_key(name: str) -> list:
    """Sort key that puts layers.2 before layers.10."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def check_together(sources: Sequence[SourceShapes]) -> None:
    """Refuse sources trained on different base models (of those that name one), or for
    different model families (Conv1D against Linear layouts)."""
    bases = {s.base_model for s in sources if s.base_model}
    if len(bases) > 1:
        raise IncompatibleAdapters(f"sources were trained on different base models: "
                                   f"{', '.join(sorted(bases))}")
    # PEFT saves the fan_in_fan_out of the LAST layer it wrapped, so a GPT-2 adapter that
    # also targets lm_head (a Linear) says false. Only sources that share no module at all
    # while disagreeing are from different model families.
    conv: set[str] = set()
    plain: set[str] = set()
    for source in sources:
        names = {name for name, shape in source.modules.items() if shape.kind == "linear"}
        (conv if source.fan_in_fan_out else plain).update(names)
    if conv and plain and not conv & plain:
        raise IncompatibleAdapters("sources disagree on fan_in_fan_out (Conv1D vs Linear layout)"
                                   " and share no module: they are for different models")


def check_delta_shapes(sources: Sequence[SourceShapes], instead: str) -> None:
    """Refuse a delta whose layout (in x out or out x in) the adapters cannot tell.

    The saved fan_in_fan_out describes only PEFT's last wrapped layer, and the names alone
    do not decide either (StarCoder's c_attn is a Linear). A LoRA output is unaffected:
    B @ A is (out x in) for both, and PEFT works the layout out again when it loads.
    `instead` says how the caller asks for a LoRA output.
    """
    for source in sources:
        for name, shape in source.modules.items():
            conv1d = name.rsplit(".", 1)[-1] in CONV1D_NAMES
            if shape.kind == "linear" and conv1d != source.fan_in_fan_out:
                raise IncompatibleAdapters(
                    f"cannot tell whether {name} of {source.label} is a Conv1D (in x out) or a"
                    " Linear (out x in) layer: PEFT saves fan_in_fan_out for its last layer"
                    f" only; {instead}, which PeftModel loads either way")


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
