"""Which modules a merge touches, from which sources, in which layout.

`load_sources` reads and cross-checks the sources; `plan_modules` takes the union of
their modules and refuses sources that disagree on a module's kind or shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from hub.errors import IncompatibleAdapters
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


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


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
        _check_together(sources)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


def _check_together(sources: list[LoraSource]) -> None:
    bases = {s.base_model for s in sources if s.base_model}
    if len(bases) > 1:
        raise IncompatibleAdapters(f"sources were trained on different base models: "
                                   f"{', '.join(sorted(bases))}")
    # PEFT saves the fan_in_fan_out of the LAST layer it wrapped, so a GPT-2 adapter that
    # also targets lm_head (a Linear) says false. Only sources that share no module at all
    # while disagreeing are from different model families.
    conv, plain = _modules_by_layout(sources)
    if conv and plain and not conv & plain:
        raise IncompatibleAdapters("sources disagree on fan_in_fan_out (Conv1D vs Linear layout)"
                                   " and share no module: they are for different models")


def _modules_by_layout(sources: list[LoraSource]) -> tuple[set[str], set[str]]:
    """Linear-kind module names of sources saved with fan_in_fan_out true, and false."""
    conv: set[str] = set()
    plain: set[str] = set()
    for source in sources:
        names = {name for name, ref in source.modules.items() if ref.kind == "linear"}
        (conv if source.config.get("fan_in_fan_out", False) else plain).update(names)
    return conv, plain


#: The module names transformers gives its Conv1D layers (GPT-2 and relatives).
CONV1D_NAMES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})


def check_delta_layout(sources: list[LoraSource]) -> None:
    """Refuse a delta whose layout (in x out or out x in) the adapter cannot tell.

    The saved fan_in_fan_out describes only PEFT's last wrapped layer, and the names alone
    do not decide either (StarCoder's c_attn is a Linear). A LoRA output is unaffected:
    B @ A is (out x in) for both, and PEFT works the layout out again when it loads.
    """
    for source in sources:
        saved = bool(source.config.get("fan_in_fan_out", False))
        for name, ref in source.modules.items():
            if ref.kind == "linear" and (name.rsplit(".", 1)[-1] in CONV1D_NAMES) != saved:
                raise IncompatibleAdapters(
                    f"cannot tell whether {name} of {source.path} is a Conv1D (in x out) or a"
                    " Linear (out x in) layer: PEFT saves fan_in_fan_out for its last layer"
                    " only; use --output lora, which PeftModel loads either way")


def layouts(sources: list[LoraSource]) -> set[bool]:
    # fan_in_fan_out only concerns Linear/Conv1D modules; an embedding-only source has no say.
    return {bool(s.config.get("fan_in_fan_out", False)) for s in sources
            if any(ref.kind == "linear" for ref in s.modules.values())}


def plan_modules(sources: list[LoraSource]) -> list[ModulePlan]:
    """The union of modules, checking that sources agree on each module's kind and shape."""
    plans: dict[str, ModulePlan] = {}
    for index, source in enumerate(sources):
        for name, ref in source.modules.items():
            plan = plans.get(name)
            if plan is None:
                plans[name] = ModulePlan(name, ref.kind, ref.lora_shape, ref.base_shape, [(index, ref)],
                                         ref.kind == "embedding" or ref.fan_in_fan_out)
                continue
            if plan.kind != ref.kind or plan.lora_shape != ref.lora_shape:
                first = sources[plan.parts[0][0]].path
                raise IncompatibleAdapters(
                    f"module {name}: {first} has a {plan.kind} update of shape "
                    f"{plan.lora_shape[0]}x{plan.lora_shape[1]} but {source.path} has a {ref.kind} "
                    f"update of shape {ref.lora_shape[0]}x{ref.lora_shape[1]}")
            plan.parts.append((index, ref))
    return [plans[name] for name in sorted(plans, key=_natural)]
