"""The merge engine: merge the planned modules (`hub.merge.plan`) and write the result.

Public entry points: `merge` (in memory) and `merge_to_folder` (atomic folder output).
"""
from __future__ import annotations

import math
import time
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field, replace
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Optional, TypeVar

import torch

from hub.errors import IncompatibleAdapters, InvalidMerge, NonFiniteWeights
from hub.merge import dense, factored, writer
from hub.merge.plan import ModulePlan, check_delta_layout, layouts, load_sources, plan_modules
from hub.merge.sources import LoraSource
from hub.merge.spec import MergeSpec, ProgressFn, SourceSpec, output_dtype, validate_sources
from hub.merge.threads import single_threaded_pool

T = TypeVar("T")
_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class MergeResult:
    """A merge held in memory: tensors (LoRA factors or deltas), config and report."""

    tensors: dict[str, torch.Tensor]
    config: Optional[dict]
    report: dict
    ranks: dict[str, int] = field(default_factory=dict)


def resolve_device(device: str) -> torch.device:
    """auto -> cuda when available, else cpu; cuda without a GPU is refused."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise InvalidMerge("device cuda was asked for but no CUDA GPU is available")
    return torch.device(device)


#: Factor bytes per batched linear call (GPU only: batching saves launches, on CPU it only costs
#: memory); small enough to stay near one module's working set.
BATCH_BYTES = {"cpu": 0, "cuda": 512 << 20}


class _Loaded(list):
    """The loaded sources in the caller's order, with the labels the report and the engine's
    errors name them by (never their folders: a worker's are cache or temp paths)."""

    def __init__(self, sources: list[LoraSource], labels: list[str]) -> None:
        super().__init__(sources)
        self.labels = labels


def _labels(plan: ModulePlan, sources: _Loaded) -> str:
    return ", ".join(sources.labels[i] for i, _ in plan.parts)


def _linear_coefs(plan: ModulePlan, sources: list[LoraSource]) -> list[float]:
    return [sources[i].weight * ref.scale for i, ref in plan.parts]


def _check_finite(plan: ModulePlan, sources: _Loaded, low: factored.LowRank) -> None:
    # NaN/inf in any factor makes the singular values NaN: one cheap check per module. (An
    # inf singular value is a float32 overflow of a finite one: the factors may still fit.)
    if bool(torch.isnan(low.singular_values).any()):
        raise NonFiniteWeights(f"module {plan.name}: non-finite values in the factors of "
                               f"{_labels(plan, sources)}")


def _peak(t: torch.Tensor) -> float:
    """max |t|, NaN when t holds one: a fused reduction for large tensors, abs + max for small."""
    if t.numel() == 0:
        return 0.0
    if t.numel() >= 1 << 20:
        return float(torch.linalg.vector_norm(t, float("inf")))
    return float(t.abs().max())


def _check_update(plan: ModulePlan, sources: _Loaded, t: torch.Tensor,
                  peak: float | None = None) -> float:
    """The peak magnitude of a merged update or factor (`peak` when already known), refused
    when not finite: the sources are finite (checked on reading), so the products, the
    weights or DARE's 1/density rescale took them beyond float32."""
    peak = _peak(t) if peak is None else peak
    if not math.isfinite(peak):
        raise NonFiniteWeights(f"module {plan.name}: the merged update is not finite: it overflows "
                               f"float32 (the values of {_labels(plan, sources)} or their weights "
                               f"are too large, or the density too small)")
    return peak


def _in_dtype(plan: ModulePlan, sources: _Loaded, tensor: torch.Tensor,
              dtype: torch.dtype, peak: float | None = None) -> torch.Tensor:
    """`tensor` on the host in the output dtype; refused when a value does not fit it (a cast
    to float16 turns what exceeds 65504 into inf, which nobody should find in a merge)."""
    peak = _check_update(plan, sources, tensor, peak)
    # Rounding is monotonic: when the peak fits the dtype, every value does.
    if not math.isfinite(float(torch.tensor(peak, dtype=torch.float64).to(dtype))):
        name = str(dtype).replace("torch.", "")
        wider = "float32 or bfloat16" if dtype == torch.float16 else "float32"
        raise InvalidMerge(f"module {plan.name}: merged values reach {peak:.3g}, beyond what "
                           f"{name} holds (at most {torch.finfo(dtype).max:.5g}); "
                           f"choose dtype {wider}")
    return tensor.to("cpu", dtype).contiguous()


def _linear_batches(plans: list[ModulePlan], device: torch.device) -> list[list[ModulePlan]]:
    """Modules whose stacked factors share a shape, grouped up to the batch byte budget."""
    groups: dict[tuple, list[ModulePlan]] = {}
    for plan in plans:
        groups.setdefault((plan.lora_shape, plan.rank_in), []).append(plan)
    budget = BATCH_BYTES.get(device.type, BATCH_BYTES["cpu"])
    batches = []
    for (shape, rank_in), members in groups.items():
        per_module = 8 * (shape[0] + shape[1]) * rank_in * 2  # float64 stacks and their products
        size = max(1, budget // max(per_module, 1))
        batches.extend(members[i:i + size] for i in range(0, len(members), size))
    return batches


def _merge_linear_batch(batch: list[ModulePlan], sources: _Loaded, spec: MergeSpec,
                        device: torch.device, host_dtype: torch.dtype | None = None
                        ) -> list[factored.LowRank]:
    """The factored linear merge of a batch; with `host_dtype`, factors moved to the host in it
    (done here, in the worker thread: on a CPU the main thread converting meanwhile cost 1.3x)."""
    # Stored dtype, on the host: factored_sum_batched packs a batch for the device and widens
    # it there (one transfer per batch on a GPU, one float64 copy on the CPU).
    host = torch.device("cpu")
    items = []
    for plan in batch:
        factors = [sources[i].factors(ref, host, check_finite=False, dtype=None) for i, ref in plan.parts]
        items.append(([b for _, b in factors], [a for a, _ in factors], _linear_coefs(plan, sources)))
    lows = factored.factored_sum_batched(items, spec.rank, device)
    finite = torch.stack([~torch.isnan(low.singular_values).any() for low in lows]).tolist()
    for plan, low, ok in zip(batch, lows, finite):
        if not ok:
            _check_finite(plan, sources, low)
    if host_dtype is not None:
        # Every factor's peak in one transfer (one sync on a GPU, not two per module).
        peaks = torch.stack([t.abs().amax() for low in lows for t in (low.A, low.B)]).tolist()
        lows = [replace(low, A=_in_dtype(plan, sources, low.A, host_dtype, peaks[2 * j]),
                        B=_in_dtype(plan, sources, low.B, host_dtype, peaks[2 * j + 1]))
                for j, (plan, low) in enumerate(zip(batch, lows))]
    return lows


def _merge_module(plan: ModulePlan, sources: _Loaded, spec: MergeSpec,
                  device: torch.device) -> tuple[factored.LowRank | None, torch.Tensor | None]:
    """(low-rank factors, dense update) of one module; the one not needed is None."""
    method = spec.canonical_method
    if method == "linear" and (spec.output != "delta" or spec.rank is not None):
        return _merge_linear_batch([plan], sources, spec, device)[0], None
    factors = [sources[i].factors(ref, device) for i, ref in plan.parts]
    weights = [sources[i].weight for i, _ in plan.parts]
    if method == "linear":  # an exact dense delta: the sum itself
        total = None
        for c, (a, b) in zip(_linear_coefs(plan, sources), factors):
            term = (c * b) @ a
            total = term if total is None else total.add_(term)
        return None, total

    def delta(j: int, lo: int, hi: int) -> torch.Tensor:  # rows lo:hi of dW_j = s_j B_j A_j
        a, b = factors[j]
        return (plan.parts[j][1].scale * b[lo:hi]) @ a

    shape = (factors[0][1].shape[0], factors[0][0].shape[1])
    merged = dense.combine(method, delta, shape, weights, spec.density, spec.majority_sign_method,
                           spec.seed, plan.name)
    if spec.output == "delta" and spec.rank is None:
        return None, merged  # checked when cast for writing
    peak = _check_update(plan, sources, merged)
    # Without --rank a dense method keeps the sources' total rank budget at this module.
    rank = spec.rank if spec.rank is not None else plan.rank_in
    return dense.truncate(merged, rank, plan.rank_in, seed=spec.seed, peak=peak), None


def _entry(plan: ModulePlan, spec: MergeSpec, low: factored.LowRank | None) -> dict:
    entry = {"module": plan.name, "kind": plan.kind, "shape": list(plan.base_shape),
             "sources": len(plan.parts), "rank_in": plan.rank_in}
    if low is not None:
        entry.update(rank=low.rank, energy_kept=round(low.energy_kept, 8), svd=(
            "factored" if spec.canonical_method == "linear" else low.svd))
    else:
        entry.update(rank=None, energy_kept=1.0, svd=None)
    return entry


def _map_batches(batches: list[list[ModulePlan]], work: Callable[[list[ModulePlan]], T],
                 device: torch.device) -> Iterator[T]:
    """`work` over the batches, results in order; close the iterator to stop early.

    A CPU module's factored merge is a few small GEMMs, R x R factorizations and some
    dozens of tiny ops: too small for torch's intra-op threads to help, so the modules
    go to one single-threaded worker per thread torch may use (1.4x on 2 cores). On a GPU
    the batches already fill the device.
    """
    workers = min(torch.get_num_threads(), len(batches)) if device.type == "cpu" else 1
    if workers <= 1:
        yield from map(work, batches)
        return
    todo = iter(batches)
    with single_threaded_pool(workers, "lorastack-merge") as pool:
        # A bounded window of modules in flight: results are handed on in order and dropped,
        # so memory stays at a few modules' working sets however far the workers could run.
        pending = deque(pool.submit(work, batch) for batch in islice(todo, 2 * workers))
        while pending:
            result = pending.popleft().result()
            following = next(todo, None)
            if following is not None:
                pending.append(pool.submit(work, following))
            yield result


def _iter_merge(sources: _Loaded, plans: list[ModulePlan], spec: MergeSpec,
                device: torch.device, progress: ProgressFn | None, share: float,
                dtype: torch.dtype | None = None
                ) -> Iterator[tuple[ModulePlan, factored.LowRank | None, torch.Tensor | None, dict]]:
    """Merged modules: in plan order, except the factored linear LoRA path (shape batches, in
    batch order: only the LoRA collector takes it, and it does not depend on order), whose
    factors come back on the host in `dtype` when one is given."""
    if spec.canonical_method == "linear" and spec.output == "lora":
        # Batch order (modules of one shape together: on a CPU, sizes that repeat also let
        # the allocator reuse its blocks, 1.4x faster than plan order), each module handed on
        # as soon as it is done; the LoRA writer sorts by name and the report by plan.
        done = 0
        batches = _linear_batches(plans, device)
        merged = _map_batches(batches, lambda batch: _merge_linear_batch(batch, sources, spec, device, dtype),
                              device)
        # Closed on the way out, error or not: no worker may still read a source the caller
        # is about to close (an error's traceback would otherwise keep the pool alive).
        with closing(merged):
            for batch, lows in zip(batches, merged):
                for plan, low in zip(batch, lows):
                    yield plan, low, None, _entry(plan, spec, low)
                done += len(batch)
                if progress is not None:
                    progress(share * done / len(plans))
        return
    for done, plan in enumerate(plans, start=1):
        low, full = _merge_module(plan, sources, spec, device)
        yield plan, low, full, _entry(plan, spec, low)
        if progress is not None:
            progress(share * done / len(plans))


def _to_base_layout(plan: ModulePlan, update: torch.Tensor) -> torch.Tensor:
    # B @ A is (out x in); Conv1D (fan_in_fan_out) and embeddings store (in x out).
    return update.T if plan.transposed else update


def _out_dtype(spec: MergeSpec, sources: list[LoraSource]) -> torch.dtype:
    return _DTYPES[output_dtype(spec.dtype, set().union(*(s.dtypes for s in sources)))]


def _report(spec: MergeSpec, sources: _Loaded, device: torch.device, dtype: torch.dtype,
            modules: list[dict], started: float) -> dict:
    # Sources by label and content (sha256): no path of the machine that merged.
    kept = [m["energy_kept"] for m in modules if m["energy_kept"] is not None]
    return {
        "format": "lorastack-merge-report/2",
        "method": spec.method,
        "canonical_method": spec.canonical_method,
        "params": {"rank": spec.rank, "density": spec.density,
                   "majority_sign_method": spec.majority_sign_method, "seed": spec.seed,
                   "output": spec.output, "dtype": str(dtype).replace("torch.", "")},
        "device": str(device),
        "elapsed_s": round(time.perf_counter() - started, 4),
        "sources": [{"label": label, "weight": s.weight, "sha256": s.sha256,
                     "license": s.license, "base_model": s.base_model,
                     "modules": len(s.modules), "ignored_tensors": s.ignored}
                    for s, label in zip(sources, sources.labels)],
        "licenses": sorted({s.license for s in sources if s.license}),
        "energy_kept_min": min(kept) if kept else None,
        "modules": modules,
    }


def _close(sources: list[LoraSource]) -> None:
    for source in sources:
        source.close()


def _prepare(sources: list[SourceSpec], spec: MergeSpec):
    spec.validate()
    device = resolve_device(spec.device)
    sources = validate_sources(sources)
    loaded = _Loaded(load_sources(sources), [s.label for s in sources])
    if spec.output == "delta":
        try:
            check_delta_layout(loaded)
        except IncompatibleAdapters:
            _close(loaded)
            raise
    return loaded, plan_modules(loaded), device, _out_dtype(spec, loaded)


def _add_lora(tensors: dict, ranks: dict, plan: ModulePlan, sources: _Loaded,
              low: factored.LowRank, dtype, cast: bool) -> None:
    """Add a module's factors; `cast`: still to cast to `dtype` (and check), else done already."""
    key_a, key_b = writer.lora_keys(plan.name, plan.kind)
    for key, t in ((key_a, low.A), (key_b, low.B)):
        tensors[key] = _in_dtype(plan, sources, t, dtype) if cast else t.contiguous()
    ranks[plan.name] = low.A.shape[0]


def _config(ranks: dict, loaded: list[LoraSource]) -> dict:
    return writer.lora_config(ranks, [s.config for s in loaded], layouts(loaded) == {True})


def _collect_lora(loaded, plans, spec, device, dtype, progress, upto: float,
                  entries: list) -> tuple[dict, dict]:
    """The merged LoRA factors (PEFT keys) and ranks, module by module."""
    tensors: dict[str, torch.Tensor] = {}
    ranks: dict[str, int] = {}
    order = {plan.name: index for index, plan in enumerate(plans)}
    done = []
    # The factored linear path's workers cast (and check) the factors: no torch work is done
    # here while they run (OpenMP threads spinning here would slow them down).
    cast_by_workers = spec.canonical_method == "linear"
    with closing(_iter_merge(loaded, plans, spec, device, progress, upto, dtype)) as merged:
        for plan, low, _full, entry in merged:
            _add_lora(tensors, ranks, plan, loaded, low, dtype, cast=not cast_by_workers)
            done.append(entry)
    entries.extend(sorted(done, key=lambda entry: order[entry["module"]]))
    ranks = {plan.name: ranks[plan.name] for plan in plans}
    return tensors, ranks


def merge(sources: list[SourceSpec], spec: MergeSpec, progress: ProgressFn | None = None) -> MergeResult:
    """Merge in memory: LoRA factors (PEFT keys) or dense deltas (base weight names)."""
    started = time.perf_counter()
    loaded, plans, device, dtype = _prepare(sources, spec)
    entries: list[dict] = []
    try:
        if spec.output == "lora":
            tensors, ranks = _collect_lora(loaded, plans, spec, device, dtype, progress, 1.0,
                                           entries)
        else:
            tensors, ranks = {}, {}
            for plan, low, full, entry in _iter_merge(loaded, plans, spec, device, progress, 1.0):
                entries.append(entry)
                update = _to_base_layout(plan, full if full is not None else low.dense())
                tensors[f"{plan.name}.weight"] = _in_dtype(plan, loaded, update, dtype)
        config = _config(ranks, loaded) if spec.output == "lora" else None
        return MergeResult(tensors, config, _report(spec, loaded, device, dtype, entries, started), ranks)
    finally:
        _close(loaded)


def _write_delta(path: Path, loaded, plans, spec, device, dtype, progress, entries: list) -> None:
    stream = writer.SafetensorsStream(path, [(f"{p.name}.weight", dtype, p.base_shape) for p in plans],
                                      {"format": "pt"})
    try:
        for plan, low, full, entry in _iter_merge(loaded, plans, spec, device, progress, 0.99):
            update = full if full is not None else low.dense()
            stream.write(f"{plan.name}.weight",
                         _in_dtype(plan, loaded, _to_base_layout(plan, update), dtype))
            entries.append(entry)
    except BaseException:
        stream.abort()
        raise
    stream.close()


def merge_to_folder(sources: list[SourceSpec], spec: MergeSpec, out_dir: str | Path,
                    progress: ProgressFn | None = None) -> dict:
    """Merge into `out_dir` (created atomically; nothing is left behind on failure); returns the report."""
    started = time.perf_counter()
    writer.check_target(Path(out_dir))
    loaded, plans, device, dtype = _prepare(sources, spec)
    try:
        with writer.staging(Path(out_dir)) as tmp:
            entries: list[dict] = []
            if spec.output == "delta":
                _write_delta(tmp / writer.DELTA_NAME, loaded, plans, spec, device, dtype, progress, entries)
            else:
                tensors, ranks = _collect_lora(loaded, plans, spec, device, dtype, progress, 0.95,
                                               entries)
                writer.write_tensors(tmp / "adapter_model.safetensors", tensors, {"format": "pt"})
                writer.write_json(tmp / "adapter_config.json", _config(ranks, loaded))
            report = _report(spec, loaded, device, dtype, entries, started)
            writer.write_json(tmp / writer.REPORT_NAME, report)
    finally:
        _close(loaded)
    if progress is not None:
        progress(1.0)
    return report
