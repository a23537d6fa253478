"""The merge engine: plan modules across sources, merge one module at a time, write.

Public entry points: `merge` (in memory) and `merge_to_folder` (atomic folder output).
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import torch

from hub.errors import IncompatibleAdapters, InvalidMerge
from hub.merge import dense, factored, writer
from hub.merge.sources import LoraSource, ModuleRef, load_source
from hub.merge.spec import DENSE_METHODS, MergeSpec, ProgressFn, SourceSpec, validate_sources

_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


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


@dataclass
class MergeResult:
    """A merge held in memory: tensors (LoRA factors or deltas), config and report."""

    tensors: dict[str, torch.Tensor]
    config: Optional[dict]
    report: dict
    ranks: dict[str, int] = field(default_factory=dict)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidMerge("device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


def load_sources(specs: list[SourceSpec]) -> list[LoraSource]:
    """Load every source and refuse sources that cannot be merged together."""
    sources = [load_source(s.path, s.weight) for s in validate_sources(specs)]
    bases = {s.base_model for s in sources if s.base_model}
    if len(bases) > 1:
        raise IncompatibleAdapters(f"sources were trained on different base models: "
                                   f"{', '.join(sorted(bases))}")
    modes = {bool(s.config.get("fan_in_fan_out", False)) for s in sources}
    if len(modes) > 1:
        raise IncompatibleAdapters("sources disagree on fan_in_fan_out (Conv1D vs Linear layout)")
    return sources


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


def _merge_module(plan: ModulePlan, sources: list[LoraSource], spec: MergeSpec,
                  device: torch.device) -> tuple[factored.LowRank | None, torch.Tensor | None]:
    """(low-rank factors, dense update) of one module; the one not needed is None."""
    method = spec.canonical_method
    factors = [sources[i].factors(ref, device) for i, ref in plan.parts]
    weights = [sources[i].weight for i, _ in plan.parts]
    if method == "linear":
        coefs = [w * ref.scale for w, (_, ref) in zip(weights, plan.parts)]
        if spec.output == "delta" and spec.rank is None:
            total = None
            for c, (a, b) in zip(coefs, factors):
                term = (c * b) @ a
                total = term if total is None else total.add_(term)
            return None, total
        low = factored.factored_sum([b for _, b in factors], [a for a, _ in factors], coefs, spec.rank)
        return low, None

    def delta(j: int) -> torch.Tensor:
        a, b = factors[j]
        return (plan.parts[j][1].scale * b) @ a

    merged = dense.combine(method, delta, weights, spec.density, spec.majority_sign_method,
                           spec.seed, plan.name)
    if spec.output == "delta" and spec.rank is None:
        return None, merged
    # Without --rank a dense method keeps the sources' total rank budget at this module.
    rank = spec.rank if spec.rank is not None else plan.rank_in
    return dense.truncate(merged, rank), None


def _iter_merge(sources: list[LoraSource], plans: list[ModulePlan], spec: MergeSpec,
                device: torch.device, progress: ProgressFn | None, share: float
                ) -> Iterator[tuple[ModulePlan, factored.LowRank | None, torch.Tensor | None, dict]]:
    for done, plan in enumerate(plans, start=1):
        low, full = _merge_module(plan, sources, spec, device)
        entry = {"module": plan.name, "kind": plan.kind, "shape": list(plan.base_shape),
                 "sources": len(plan.parts), "rank_in": plan.rank_in}
        if low is not None:
            entry.update(rank=low.rank, energy_kept=round(low.energy_kept, 8), svd=(
                "factored" if spec.canonical_method == "linear" else low.svd))
        else:
            entry.update(rank=None, energy_kept=1.0, svd=None)
        yield plan, low, full, entry
        if progress is not None:
            progress(share * done / len(plans))


def _to_base_layout(plan: ModulePlan, update: torch.Tensor) -> torch.Tensor:
    # B @ A is (out x in); Conv1D (fan_in_fan_out) and embeddings store (in x out).
    return update.T if plan.transposed else update


def _out_dtype(spec: MergeSpec, sources: list[LoraSource]) -> torch.dtype:
    if spec.dtype is not None:
        return _DTYPES[spec.dtype]
    found = set().union(*(s.dtypes for s in sources))
    return _DTYPES.get(found.pop(), torch.float32) if len(found) == 1 else torch.float32


def _report(spec: MergeSpec, sources: list[LoraSource], device: torch.device, dtype: torch.dtype,
            modules: list[dict], started: float) -> dict:
    kept = [m["energy_kept"] for m in modules if m["energy_kept"] is not None]
    return {
        "format": "lorastack-merge-report/1",
        "method": spec.method,
        "canonical_method": spec.canonical_method,
        "params": {"rank": spec.rank, "density": spec.density,
                   "majority_sign_method": spec.majority_sign_method, "seed": spec.seed,
                   "output": spec.output, "dtype": str(dtype).replace("torch.", "")},
        "device": str(device),
        "elapsed_s": round(time.perf_counter() - started, 4),
        "sources": [{"path": str(s.path), "weight": s.weight, "sha256": s.sha256,
                     "license": s.license, "base_model": s.base_model,
                     "modules": len(s.modules), "ignored_tensors": s.ignored} for s in sources],
        "licenses": sorted({s.license for s in sources if s.license}),
        "energy_kept_min": min(kept) if kept else None,
        "modules": modules,
    }


def _prepare(sources: list[SourceSpec], spec: MergeSpec):
    spec.validate()
    device = resolve_device(spec.device)
    loaded = load_sources(sources)
    return loaded, plan_modules(loaded), device, _out_dtype(spec, loaded)


def merge(sources: list[SourceSpec], spec: MergeSpec, progress: ProgressFn | None = None) -> MergeResult:
    """Merge in memory: LoRA factors (PEFT keys) or dense deltas (base weight names)."""
    started = time.perf_counter()
    loaded, plans, device, dtype = _prepare(sources, spec)
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    entries = []
    for plan, low, full, entry in _iter_merge(loaded, plans, spec, device, progress, 1.0):
        entries.append(entry)
        if spec.output == "delta":
            update = full if full is not None else low.dense()
            tensors[f"{plan.name}.weight"] = _to_base_layout(plan, update).to("cpu", dtype).contiguous()
        else:
            key_a, key_b = writer.lora_keys(plan.name, plan.kind)
            tensors[key_a] = low.A.to("cpu", dtype).contiguous()
            tensors[key_b] = low.B.to("cpu", dtype).contiguous()
            ranks[plan.name] = low.A.shape[0]
    config = None
    if spec.output == "lora":
        config = writer.lora_config(ranks, [s.config for s in loaded],
                                    bool(loaded[0].config.get("fan_in_fan_out", False)))
    return MergeResult(tensors, config, _report(spec, loaded, device, dtype, entries, started), ranks)


def merge_to_folder(sources: list[SourceSpec], spec: MergeSpec, out_dir: str | Path,
                    progress: ProgressFn | None = None) -> dict:
    """Merge into `out_dir` (created atomically; nothing is left behind on failure); returns the report."""
    started = time.perf_counter()
    writer.check_target(Path(out_dir))
    loaded, plans, device, dtype = _prepare(sources, spec)
    with writer.staging(Path(out_dir)) as tmp:
        entries = []
        if spec.output == "delta":
            stream = writer.SafetensorsStream(
                tmp / writer.DELTA_NAME,
                [(f"{p.name}.weight", dtype, p.base_shape) for p in plans], {"format": "pt"})
            try:
                for plan, low, full, entry in _iter_merge(loaded, plans, spec, device, progress, 0.99):
                    update = full if full is not None else low.dense()
                    stream.write(f"{plan.name}.weight", _to_base_layout(plan, update))
                    entries.append(entry)
            finally:
                stream.close()
        else:
            tensors: dict[str, torch.Tensor] = {}
            ranks: dict[str, int] = {}
            for plan, low, _full, entry in _iter_merge(loaded, plans, spec, device, progress, 0.95):
                key_a, key_b = writer.lora_keys(plan.name, plan.kind)
                tensors[key_a] = low.A.to("cpu", dtype).contiguous()
                tensors[key_b] = low.B.to("cpu", dtype).contiguous()
                ranks[plan.name] = low.A.shape[0]
                entries.append(entry)
            writer.write_tensors(tmp / "adapter_model.safetensors", tensors, {"format": "pt"})
            config = writer.lora_config(ranks, [s.config for s in loaded],
                                        bool(loaded[0].config.get("fan_in_fan_out", False)))
            writer.write_json(tmp / "adapter_config.json", config)
        report = _report(spec, loaded, device, dtype, entries, started)
        writer.write_json(tmp / writer.REPORT_NAME, report)
    if progress is not None:
        progress(1.0)
    return report
