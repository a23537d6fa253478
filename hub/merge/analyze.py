"""How merge sources interact, before a merge: norms and cosines of their weighted updates.

Every figure is exact and comes from the factors alone, never from a d x k matrix:
`<B_i A_i, B_j A_j>_F = tr((B_i^T B_j)(A_j A_i^T))`. With `B = [B_1 .. B_n]` (d x R) and
`A = [A_1; ..; A_n]` (R x k) stacked once per module, that is the sum over block (i, j) of
`(B^T B) * (A A^T)` (elementwise; both Grams are symmetric), so two float64 Gram products
per module give every pair at once, in O((d + k) R^2). A source's update is `w_i s_i B_i A_i`:
its norm scales by |w_i| and a negative weight flips the sign of its cosines, which are
those of the updates the linear merge actually adds.

`analyze` returns plain JSON: `sources` (label, weight, norm of the whole weighted update,
modules adapted), `cosine` (n x n, of the whole updates: the per-module inner products
summed), `modules` (per module, each source's norm and the n x n cosines; null where a
source does not adapt the module) and `summary` (opposed pairs, a dominant source, zero
updates, modules only one source adapts, the linear merge's norm, and the same in words).
A zero update (weight 0, factors that cancel) has norm 0 and null cosines.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch

from hub.errors import InvalidMerge, NonFiniteWeights
from hub.merge.engine import resolve_device
from hub.merge.plan import ModulePlan, load_sources, plan_modules
from hub.merge.sources import LoraSource
from hub.merge.spec import DEVICES, SourceSpec, validate_sources
from hub.merge.threads import single_threaded_pool

T = TypeVar("T")
V = TypeVar("V")

#: Below this overall or per-module cosine two updates are said to pull against each other.
#: Unrelated fine-tunes are nearly orthogonal at model sizes (|cos| ~ r / sqrt(d k)), so this
#: is well clear of their noise.
OPPOSED_COSINE = -0.1
#: A source whose norm exceeds this multiple of the median of the others' dwarfs them.
DOMINANT_RATIO = 10.0
#: Bytes of float64 rows widened at a time for a Gram product on a CPU: a chunk that stays in
#: cache for its GEMM, where a whole widened stack (megabytes) would make it wait on memory.
CHUNK_BYTES = 1 << 20


def inner_products(Bs: Sequence[torch.Tensor], As: Sequence[torch.Tensor], coefs: Sequence[float],
                   device: torch.device | None = None) -> torch.Tensor:
    """The n x n float64 Frobenius inner products of the updates `coefs[i] * Bs[i] @ As[i]`."""
    device = Bs[0].device if device is None else torch.device(device)
    ranks = [b.shape[1] for b in Bs]
    d, k, R = Bs[0].shape[0], As[0].shape[1], sum(ranks)
    # Stacked in the stored dtype (cat promotes mixed ones exactly); widened chunk by chunk.
    B = torch.cat([b.to(device) for b in Bs], 1)
    A = torch.cat([a.to(device) for a in As], 0)
    Gb, Ga = _gram(B), _gram(A.T)
    blocks = torch.zeros(len(Bs), R, dtype=torch.float64, device=device)
    offset = 0
    for j, r in enumerate(ranks):
        blocks[j, offset:offset + r] = 1.0
        offset += r
    inner = blocks @ (Gb * Ga) @ blocks.T
    # sum_p |b_p| |a_p| bounds |B_i A_i|_F; the trace formula's rounding is ~(d + k) eps of
    # its square, so an update below that is zero (an adapter minus itself, factors that
    # cancel), not a direction: it gets no cosine rather than one of rounding noise.
    bound = blocks @ (Gb.diagonal() * Ga.diagonal()).sqrt()
    coef = torch.tensor([float(c) for c in coefs], dtype=torch.float64, device=device)
    # The block sums round differently for (i, j) and (j, i): their mean is exactly symmetric.
    inner = (inner + inner.T) / 2 * (coef[:, None] * coef[None, :])
    floor = (d + k) * torch.finfo(torch.float64).eps * (coef.abs() * bound) ** 2
    zero = inner.diagonal() <= floor
    return inner.masked_fill(zero[:, None] | zero[None, :], 0.0)


def _gram(tall: torch.Tensor) -> torch.Tensor:
    """`tall^T tall` in float64, widening a chunk of rows at a time."""
    rows, R = tall.shape
    # On a GPU one product of the whole stack beats many launches; its memory is not the limit.
    step = max(1, CHUNK_BYTES // (8 * R)) if tall.device.type == "cpu" else max(rows, 1)
    G = torch.zeros(R, R, dtype=torch.float64, device=tall.device)
    for lo in range(0, rows, step):
        chunk = tall[lo:lo + step]
        if chunk.dtype == torch.float16:
            # Exact either way, but torch casts float16 -> float64 in scalar code, a sizeable
            # share of the GEMM's time; float16 -> float32 is one vector instruction.
            chunk = chunk.float()
        chunk = chunk.to(torch.float64)
        G.addmm_(chunk.T, chunk)
    return G


def analyze(sources: list[SourceSpec], labels: Sequence[str] | None = None,
            device: str = "cpu") -> dict:
    """Norms and cosine similarities of the sources' weighted updates, overall and per module."""
    specs = validate_sources(sources)
    names = [str(s.path) for s in specs] if labels is None else [str(label) for label in labels]
    if len(names) != len(specs):
        raise InvalidMerge(f"{len(names)} labels for {len(specs)} sources")
    if device not in DEVICES:
        raise InvalidMerge(f"device must be auto, cpu or cuda, got {device!r}")
    where = resolve_device(device)
    loaded = load_sources(specs)
    try:
        _skip_hashing(loaded)
        plans = plan_modules(loaded)
        inners = map_modules(lambda plan: _module_inner(plan, loaded, where), plans, where)
    finally:
        for source in loaded:
            source.close()
    return report(names, [s.weight for s in loaded], plans, inners)


def map_modules(work: Callable[[T], V], items: Sequence[T], device: torch.device) -> list[V]:
    """`work` over the modules, results in order; on a CPU, one single-threaded worker per core."""
    # A module's Gram products are too small for torch's intra-op threads to share well (and
    # on a busy machine their barriers stall): the modules are spread instead, as the merge does.
    workers = min(torch.get_num_threads(), len(items)) if device.type == "cpu" else 1
    if workers <= 1:
        return [work(item) for item in items]
    with single_threaded_pool(workers, "lorastack-analyze") as pool:
        return list(pool.map(work, items))


def _skip_hashing(sources: list[LoraSource]) -> None:
    # load_source starts hashing each file for a merge report; nothing here needs the digest,
    # and on a few cores the hashing would compete with the Gram products.
    for source in sources:
        source.digest.cancel()


def _module_inner(plan: ModulePlan, sources: list[LoraSource], device: torch.device
                  ) -> torch.Tensor:
    """The module's inner products among the sources that adapt it (in `plan.parts` order)."""
    factors = [sources[i].factors(ref, device, check_finite=False, dtype=None)
               for i, ref in plan.parts]
    coefs = [sources[i].weight * ref.scale for i, ref in plan.parts]
    inner = inner_products([b for _, b in factors], [a for a, _ in factors], coefs, device)
    # Factors are finite when their squared column norms are (float64 holds any float32
    # square), so checking the result costs one reduction instead of a pass over the factors.
    if not bool(torch.isfinite(inner).all()):
        bad = ", ".join(str(sources[i].path) for i, _ in plan.parts)
        raise NonFiniteWeights(f"module {plan.name}: non-finite values in the factors of {bad}")
    return inner.cpu()


def report(labels: list[str], weights: list[float], plans: list[ModulePlan],
           inners: list[torch.Tensor]) -> dict:
    """The JSON-ready analysis from each module's inner products (see `inner_products`)."""
    n = len(labels)
    total = torch.zeros(n, n, dtype=torch.float64)
    modules = []
    for plan, inner in zip(plans, inners):
        index = torch.tensor([i for i, _ in plan.parts])
        full = torch.zeros(n, n, dtype=torch.float64)
        full[index[:, None], index[None, :]] = inner
        total += full  # the whole updates' inner products: sums over their modules
        present = [False] * n
        for i in index.tolist():
            present[i] = True
        norms, cosine = _norms_and_cosines(full.tolist(), present)
        modules.append({"module": plan.name, "norms": norms, "cosine": cosine})
    counts = [sum(m["norms"][i] is not None for m in modules) for i in range(n)]
    norms, cosine = _norms_and_cosines(total.tolist(), [True] * n)
    sources = [{"label": label, "weight": weight, "norm": norm, "modules": count}
               for label, weight, norm, count in zip(labels, weights, norms, counts)]
    summary = _summary(sources, cosine, modules)
    summary["merged_norm"] = math.sqrt(max(0.0, float(total.sum())))
    return {"sources": sources, "cosine": cosine, "modules": modules, "summary": summary}


def _norms_and_cosines(inner: list[list[float]], present: list[bool]
                       ) -> tuple[list[float | None], list[list[float | None]]]:
    """Norms (None where absent) and cosines (None where either update is absent or zero)."""
    norms = [math.sqrt(max(0.0, inner[i][i])) if present[i] else None for i in range(len(inner))]
    cosine = [[None if not a or not b else 1.0 if i == j else
               max(-1.0, min(1.0, inner[i][j] / (a * b))) for j, b in enumerate(norms)]
              for i, a in enumerate(norms)]
    return norms, cosine


def _summary(sources: list[dict], cosine: list[list], modules: list[dict]) -> dict:
    """Plain findings: zero updates, opposed pairs, a dominant source, modules only one adapts."""
    findings: list[str] = []
    zero = [s["label"] for s in sources if not s["norm"]]
    findings += [f"{label}: its weighted update is zero (weight 0 or factors that cancel): it "
                 f"changes nothing and has no cosine with the others." for label in zero]
    opposed = _opposed(sources, cosine, modules, findings)
    dominant = _dominant(sources, findings)
    only_in = _only_in(sources, modules, findings)
    return {"opposed": opposed, "dominant": dominant, "zero": zero, "only_in": only_in,
            "findings": findings}


def _opposed(sources: list[dict], cosine: list[list], modules: list[dict],
             findings: list[str]) -> list[dict]:
    """Pairs opposed overall or on some of the modules they share."""
    out = []
    for i, first in enumerate(sources):
        for j in range(i + 1, len(sources)):
            second, overall = sources[j], cosine[i][j]
            shared = [m["cosine"][i][j] for m in modules
                      if m["norms"][i] is not None and m["norms"][j] is not None]
            against = sum(1 for c in shared if c is not None and c < OPPOSED_COSINE)
            pulls = overall is not None and overall < OPPOSED_COSINE
            if not pulls and not against:
                continue
            out.append({"sources": [first["label"], second["label"]], "cosine": overall,
                        "modules_opposed": against, "modules_shared": len(shared)})
            text = (f"{first['label']} and {second['label']} "
                    f"{'pull against each other' if pulls else 'are opposed on some modules'}: "
                    f"cosine {'n/a' if overall is None else f'{overall:.3f}'} overall, below "
                    f"{OPPOSED_COSINE} on {against} of {len(shared)} shared modules")
            if first["weight"] * second["weight"] < 0:
                text += " (one weight is negative, which flips the sign)"
            findings.append(text + ".")
    return out


def _dominant(sources: list[dict], findings: list[str]) -> list[dict]:
    """Sources whose norm exceeds DOMINANT_RATIO times the median of the other non-zero norms."""
    out = []
    for i, source in enumerate(sources):
        others = [s["norm"] for j, s in enumerate(sources) if j != i and s["norm"]]
        if not source["norm"] or not others:
            continue
        ratio = source["norm"] / statistics.median(others)
        if ratio > DOMINANT_RATIO:
            out.append({"source": source["label"], "ratio_to_median": ratio})
            findings.append(f"{source['label']} dwarfs the rest: its update's norm is {ratio:.1f}x "
                            f"the median of the others'.")
    return out


def _only_in(sources: list[dict], modules: list[dict], findings: list[str]) -> list[dict]:
    """Per source, the modules no other source adapts (none when there is one source)."""
    out = []
    for i, source in enumerate(sources):
        alone = [m["module"] for m in modules if len(sources) > 1 and m["norms"][i] is not None
                 and sum(x is not None for x in m["norms"]) == 1]
        if alone:
            out.append({"source": source["label"], "modules": alone})
            findings.append(f"{source['label']} alone adapts {len(alone)} of its "
                            f"{source['modules']} modules.")
    return out
