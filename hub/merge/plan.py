"""Which modules a merge touches, from which sources, in which layout.

`load_sources` reads and cross-checks the sources; `plan_modules` takes the union of
their modules and refuses sources that disagree on a module's kind or shape.
"""
from __future__ import annotations

from dataclasses import dataclass

from hub.merge.compat import (ModuleShape, SourceShapes, check_delta_shapes, check_together,
                              union_modules)
from hub.merge.sources import LoraSource, ModuleRef, hashing_pool, load_source
from hub.merge.spec import SourceSpec, validate_sources


@dataclass
class ModulePlan:
    """One module of the merged adapter and the sources that touch it."""

    name: str
    kind: str
    lora_shape: tuple[int, int]
    base_shape: tuple[int, int]
    parts: list[tuple[int, ModuleRef]]
    transposed: bool = False  # base weight stores (in x out): Conv1D and embeddings

    @property
    def rank_in(self) -> int:
        """Sum of the sources' ranks at this module."""
        return sum(ref.rank for _, ref in self.parts)


def load_sources(specs: list[SourceSpec]) -> list[LoraSource]:
    """Load every source and refuse sources that cannot be merged together.

    The sources' weights are hashed on a pool this call owns; the pool ends by itself
    once their hashes are done, and closing a source stops its hashing.
    """
    checked = validate_sources(specs)
    sources: list[LoraSource] = []
    try:
        with hashing_pool(len(checked)) as hasher:
            for spec in checked:
                sources.append(load_source(spec.path, spec.weight, hasher))
        check_together([_shapes(source) for source in sources])
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def check_delta_layout(sources: list[LoraSource]) -> None:
    """Refuse a delta whose layout the adapters cannot tell (hub.merge.compat)."""
    check_delta_shapes([_shapes(source) for source in sources], "use --output lora")


def layouts(sources: list[LoraSource]) -> set[bool]:
    # fan_in_fan_out only concerns Linear/Conv1D modules; an embedding-only source has no say.
    return {bool(s.config.get("fan_in_fan_out", False)) for s in sources
            if any(ref.kind == "linear" for ref in s.modules.values())}


def plan_modules(sources: list[LoraSource]) -> list[ModulePlan]:
    """The union of modules, checking that sources agree on each module's kind and shape
    (the rule the hub's plan applies from the database: hub.merge.compat)."""
    union = union_modules([_shapes(source) for source in sources])
    plans = []
    for name, indices in union.items():
        first = sources[indices[0]].modules[name]
        plans.append(ModulePlan(name, first.kind, first.lora_shape, first.base_shape,
                                [(i, sources[i].modules[name]) for i in indices],
                                first.kind == "embedding" or first.fan_in_fan_out))
    return plans


def _shapes(source: LoraSource) -> SourceShapes:
    return SourceShapes(str(source.path), source.base_model, {
        name: ModuleShape(ref.kind, ref.lora_shape[0], ref.lora_shape[1], ref.rank)
        for name, ref in source.modules.items()},
        bool(source.config.get("fan_in_fan_out", False)))
