"""Planning a merge of published versions: every check a merge gets, from the database.

`parse_merge_request` turns a MergeSpec body into a MergeRequest; `plan_merge` resolves
its sources as the caller sees them, checks that they merge (kinds, shapes, base model,
mergeable, licences, limits) and sizes the output. The merge service queues only what a
plan accepted, so a worker never gets a merge the engine would refuse for these reasons.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

from sqlalchemy.orm import Session

from hub.config import Settings
from hub.errors import IncompatibleAdapters, InvalidMerge, InvalidRequest
from hub.licenses import DerivedLicense, SourceLicense, derive_license
from hub.merge import ENGINE_VERSION
from hub.merge.compat import check_delta_shapes, check_together, union_modules
from hub.formats import CONFIG_FILE, WEIGHTS_FILE
from hub.formats.rules import MERGE_DTYPES
from hub.merge.spec import DENSE_METHODS, MergeSpec, output_dtype
from hub.models import Adapter, Version
from hub.services.accounts import Principal
from hub.services.catalog import get_version
from hub.services.layouts import source_shapes, version_layout
from hub.services.names import split_adapter_id
from hub.storage import BlobStore

SPEC_FIELDS = {"sources", "method", "rank", "density", "majority_sign_method", "seed",
               "output", "dtype", "analyze"}
SOURCE_FIELDS = {"adapter", "version", "weight"}
_ITEMSIZE = {"float16": 2, "bfloat16": 2, "float32": 4}


@dataclass(frozen=True)
class SourceRef:
    """A source as asked for: `owner/name`, a label or `latest`, a weight."""

    owner: str
    name: str
    version: str
    weight: float


@dataclass(frozen=True)
class MergeRequest:
    """A parsed MergeSpec body: the sources, the engine's spec, and whether to analyze."""

    sources: tuple[SourceRef, ...]
    spec: MergeSpec
    analyze: bool = False


@dataclass
class PlannedSource:
    """A resolved source: the version row, its weight and its layout."""

    adapter: Adapter
    version: Version
    weight: float
    layout: dict

    @property
    def label(self) -> str:
        """owner/name@version."""
        return f"{self.adapter.owner.name}/{self.adapter.name}@{self.version.label}"

    def file(self, path: str):
        """The version's file row at `path`."""
        return next(file for file in self.version.files if file.path == path)


@dataclass
class MergePlan:
    """What a merge will do: resolved sources, derived licence, modules and output size."""

    request: MergeRequest
    sources: list[PlannedSource]
    license: DerivedLicense
    reasons: list[str]
    modules: int
    output_bytes: int
    source_bytes: int

    @property
    def cache_key(self) -> str:
        """sha256 of the canonical spec: same sources' bytes and parameters, same key."""
        return hashlib.sha256(json.dumps(canonical_spec(self), sort_keys=True,
                                         separators=(",", ":")).encode()).hexdigest()


def parse_merge_request(body: object) -> MergeRequest:
    """A MergeRequest from a MergeSpec JSON object, or InvalidRequest / InvalidMerge."""
    if not isinstance(body, dict):
        raise InvalidRequest("The body must be a JSON object: a MergeSpec (see docs/api.md).")
    unknown = sorted(set(body) - SPEC_FIELDS)
    if unknown:
        raise InvalidRequest(f"Unknown field(s): {', '.join(unknown)}; a MergeSpec has"
                             f" {', '.join(sorted(SPEC_FIELDS))}.")
    raw_sources = body.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise InvalidMerge("'sources' must be a non-empty list of {\"adapter\": \"owner/name\","
                           " \"version\": \"1.0.0\" | \"latest\", \"weight\": 0.7}.")
    sources = tuple(_parse_source(index, raw) for index, raw in enumerate(raw_sources))
    if not isinstance(body.get("analyze", False), bool):
        raise InvalidRequest("'analyze' must be true or false.")
    method = body.get("method", "linear")
    if not isinstance(method, str):
        raise InvalidMerge(f"'method' must be a string, got {method!r}")
    spec = MergeSpec(method=method, rank=body.get("rank"), density=body.get("density"),
                     majority_sign_method=body.get("majority_sign_method", "total"),
                     seed=body.get("seed", 0), output=body.get("output", "lora"),
                     dtype=body.get("dtype"), device="auto").validate()
    if method in ("svd",) and spec.rank is None:
        raise InvalidMerge("method 'svd' (PEFT's name) needs a rank; 'linear' without a rank"
                           " is the exact sum")
    return MergeRequest(sources, spec, body.get("analyze", False))


def _parse_source(index: int, raw: object) -> SourceRef:
    where = f"sources[{index}]"
    if not isinstance(raw, dict):
        raise InvalidMerge(f"{where} must be an object with adapter, version and weight")
    unknown = sorted(set(raw) - SOURCE_FIELDS)
    if unknown:
        raise InvalidMerge(f"{where} has unknown field(s) {', '.join(unknown)}")
    adapter = raw.get("adapter")
    parts = split_adapter_id(adapter)
    if parts is None:
        raise InvalidMerge(f"{where}.adapter must be 'owner/name', got {adapter!r}")
    owner, name = parts
    version = raw.get("version", "latest")
    if not isinstance(version, str) or not version:
        raise InvalidMerge(f"{where}.version must be a version label or 'latest'")
    weight = raw.get("weight", 1.0)
    try:
        value = float(weight) if not isinstance(weight, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        value = math.nan
    if not isinstance(weight, (int, float)) or not math.isfinite(value):
        raise InvalidMerge(f"{where}.weight must be a finite number, got {str(weight)[:40]}")
    return SourceRef(owner, name, version, value)


def plan_merge(session: Session, store: BlobStore, settings: Settings,
               principal: Principal | None, request: MergeRequest) -> MergePlan:
    """Resolve, check and size a merge, or raise the error the merge would get."""
    _check_limits(settings, request)
    sources = [_resolve(session, store, principal, ref) for ref in request.sources]
    shapes = [source_shapes(s.label, s.layout) for s in sources]
    check_together(shapes)
    modules = union_modules(shapes)
    if request.spec.output == "delta":
        check_delta_shapes(shapes, 'ask for "output": "lora"')
    total = sum(s.version.size_bytes for s in sources)
    if total > settings.max_merge_source_bytes:
        raise InvalidMerge(f"the sources hold {total} bytes; this hub merges at most"
                           f" {settings.max_merge_source_bytes} (LORASTACK_MAX_MERGE_SOURCE_BYTES)")
    license_, reasons = _derive(principal, sources)
    return MergePlan(request, sources, license_, reasons, len(modules),
                     _output_bytes(request.spec, sources, modules), total)


def _check_limits(settings: Settings, request: MergeRequest) -> None:
    if len(request.sources) > settings.max_merge_sources:
        raise InvalidMerge(f"{len(request.sources)} sources; this hub merges at most"
                           f" {settings.max_merge_sources} (LORASTACK_MAX_MERGE_SOURCES)")
    rank = request.spec.rank
    if rank is not None and rank > settings.max_merge_rank:
        raise InvalidMerge(f"rank {rank} is above this hub's limit of"
                           f" {settings.max_merge_rank} (LORASTACK_MAX_MERGE_RANK)")


def _resolve(session: Session, store: BlobStore, principal: Principal | None,
             ref: SourceRef) -> PlannedSource:
    # A private source the caller cannot see is NotFound, exactly as when it is read.
    adapter, version = get_version(session, principal, ref.owner, ref.name, ref.version)
    label = f"{ref.owner}/{ref.name}@{version.label}"
    if not version.mergeable:
        why = version.not_mergeable_reason or (
            f"it is a {version.peft_type} adapter with parts a plain LoRA merge cannot carry")
        raise IncompatibleAdapters(f"{label} cannot be merged: {why}")
    return PlannedSource(adapter, version, ref.weight, version_layout(session, store, version))


def source_license(version: Version, owned: bool) -> SourceLicense:
    """A source version's licence as the licence rules take it (hub.licenses.derive)."""
    adapter = version.adapter
    return SourceLicense(version.license, version.license_name, version.license_link,
                         requester_owns=owned,
                         source=f"{adapter.owner.name}/{adapter.name}@{version.label}")


def _derive(principal: Principal | None,
            sources: list[PlannedSource]) -> tuple[DerivedLicense, list[str]]:
    given = [source_license(s.version, principal is not None
                            and principal.owns(s.adapter.owner.name)) for s in sources]
    derived = derive_license(given)
    reasons = [f"{s.label} is under {s.version.license}" for s in sources]
    if derived.id == "other" and len({g.license_id for g in given}) > 1:
        reasons.append("different licences combine into 'other': each source's terms apply")
    if not derived.commercial_use:
        reasons.append("a source forbids commercial use, so the merge does too")
    if derived.derivatives == "share-alike":
        reasons.append(f"a share-alike source makes {derived.id} the merge's licence")
    if derived.derivatives == "forbidden":
        reasons.append("a no-derivatives source is merged by its owner: the merge forbids"
                       " derivatives too")
    if derived.attribution:
        reasons.append("attribution is required: the model card credits every source")
    if derived.use_restrictions:
        reasons.append("a source carries use restrictions, which the merge keeps")
    return derived, reasons


def planned_dtype(spec: MergeSpec, sources: list[PlannedSource]) -> str:
    """The output dtype the engine will choose (hub.merge.spec.output_dtype)."""
    return output_dtype(spec.dtype, {MERGE_DTYPES[dtype] for source in sources
                                     for dtype in source.layout["dtypes"]})


def _output_bytes(spec: MergeSpec, sources: list[PlannedSource],
                  modules: dict[str, list[int]]) -> int:
    """An upper bound of the output's tensor bytes (a linear merge's numerical rank can be
    lower than the sources' total rank)."""
    itemsize = _ITEMSIZE[planned_dtype(spec, sources)]
    total = 0
    for name, indices in modules.items():
        module = sources[indices[0]].layout["modules"][name]
        out_features, in_features = module["shape"]
        if spec.output == "delta":
            total += out_features * in_features * itemsize
            continue
        rank_in = sum(sources[i].layout["modules"][name]["rank"] for i in indices)
        rank = min(spec.rank or rank_in, rank_in, out_features, in_features)
        total += rank * (out_features + in_features) * itemsize
    return total


def canonical_spec(plan: MergePlan) -> dict:
    """What decides a merge's result: the sources (their versions: the model card and the
    report name them, with their licences; their digests: the bytes) and weights, the
    method's parameters that apply to it, the output, the dtype and the engine's version."""
    spec = plan.request.spec
    method = spec.canonical_method
    dense = method in DENSE_METHODS
    return {
        "engine": ENGINE_VERSION,
        "sources": [{"version": s.version.id,
                     "weights": s.file(WEIGHTS_FILE).sha256,
                     "config": s.file(CONFIG_FILE).sha256, "weight": s.weight}
                    for s in plan.sources],
        "method": method,
        "rank": spec.rank,
        "density": spec.density if dense else None,
        "majority_sign_method": spec.majority_sign_method if method in (
            "ties", "dare_ties") else None,
        # DARE draws its masks and a dense truncation its sketch from the seed.
        "seed": spec.seed if dense else None,
        "output": spec.output,
        "dtype": planned_dtype(spec, plan.sources),
    }


def request_view(request: MergeRequest, plan: MergePlan | None = None) -> dict:
    """The MergeSpec as stored on the merge and shown back, with resolved labels."""
    spec = request.spec
    sources = ([{"adapter": f"{s.adapter.owner.name}/{s.adapter.name}",
                 "version": s.version.label, "weight": s.weight} for s in plan.sources]
               if plan is not None else
               [{"adapter": f"{r.owner}/{r.name}", "version": r.version, "weight": r.weight}
                for r in request.sources])
    return {"sources": sources, "method": spec.method, "rank": spec.rank,
            "density": spec.density, "majority_sign_method": spec.majority_sign_method,
            "seed": spec.seed, "output": spec.output, "dtype": spec.dtype}


def plan_view(plan: MergePlan) -> dict:
    """The JSON answer of POST /merges/plan."""
    return {
        "sources": [{"adapter": f"{s.adapter.owner.name}/{s.adapter.name}",
                     "version": s.version.label,
                     "sha256": s.file(WEIGHTS_FILE).sha256,
                     "weight": s.weight, "license": s.version.license} for s in plan.sources],
        "license": {**plan.license.to_dict(), "reasons": plan.reasons},
        "modules": plan.modules,
        "output_bytes": plan.output_bytes,
        "source_bytes": plan.source_bytes,
        "dtype": planned_dtype(plan.request.spec, plan.sources),
        "spec": request_view(plan.request, plan),
        "cache_key": plan.cache_key,
    }
