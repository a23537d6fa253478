"""What a merge is asked to do: sources, method and parameters, validated without torch."""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from hub.errors import InvalidMerge

#: The methods, each defined on the per-module updates dW_i = s_i B_i A_i.
METHODS = ("linear", "ties", "dare_linear", "dare_ties", "magnitude_prune")
#: PEFT's combination types, which here mean the product-space method they approximate.
ALIASES = {
    "svd": "linear",
    "cat": "linear",
    "ties_svd": "ties",
    "dare_linear_svd": "dare_linear",
    "dare_ties_svd": "dare_ties",
    "magnitude_prune_svd": "magnitude_prune",
}
DENSE_METHODS = ("ties", "dare_linear", "dare_ties", "magnitude_prune")
SIGN_METHODS = ("total", "frequency")
OUTPUTS = ("lora", "delta")
DTYPES = ("float16", "bfloat16", "float32")
DEVICES = ("auto", "cpu", "cuda")

ProgressFn = Callable[[float], None]


@dataclass(frozen=True)
class SourceSpec:
    """One adapter folder, the weight its update gets (negative subtracts), and the label
    the merge report names it by (by default the folder's own name)."""

    path: Path
    weight: float = 1.0
    # The folder may be a cache or temp path of the process that merges, which the report
    # (published with the merge) must not show: a service passes `owner/name@version`.
    label: Optional[str] = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.label is None:
            object.__setattr__(self, "label", self.path.name or self.path.resolve().name or str(self.path))
        elif not isinstance(self.label, str) or not self.label.strip():
            raise InvalidMerge(f"a source label must be a non-empty string, got {self.label!r}")
        try:
            weight = float(self.weight)
        except (TypeError, ValueError):
            raise InvalidMerge(f"weight for {self.label} is not a number: {self.weight!r}") from None
        if not math.isfinite(weight):
            raise InvalidMerge(f"weight for {self.label} is not a finite number: {self.weight!r}")
        object.__setattr__(self, "weight", weight)


@dataclass(frozen=True)
class MergeSpec:
    """How to merge: method (or a PEFT alias), target rank and the method's parameters."""

    method: str = "linear"
    rank: Optional[int] = None
    density: Optional[float] = None
    majority_sign_method: str = "total"
    seed: int = 0
    output: str = "lora"
    dtype: Optional[str] = None
    device: str = "auto"

    @property
    def canonical_method(self) -> str:
        """The method after resolving PEFT's aliases."""
        return ALIASES.get(self.method, self.method)

    def validate(self) -> "MergeSpec":
        """Refuse unknown methods and out-of-range parameters with one clear InvalidMerge."""
        if self.method not in METHODS and self.method not in ALIASES:
            known = ", ".join(METHODS + tuple(ALIASES))
            raise InvalidMerge(f"unknown merge method {self.method!r} (known: {known})")
        method = self.canonical_method
        if self.rank is not None:
            if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
                raise InvalidMerge(f"rank must be an integer >= 1, got {self.rank!r}")
        if method in DENSE_METHODS:
            if self.density is None:
                raise InvalidMerge(f"method {self.method!r} needs a density in (0, 1]")
            density = self.density
            # A float compare, not math.isfinite: that overflows on a huge int.
            if isinstance(density, bool) or not isinstance(density, (int, float)) \
                    or not 0.0 < density <= 1.0:
                raise InvalidMerge(f"density must be in (0, 1], got {str(density)[:40]}")
        elif self.density is not None:
            raise InvalidMerge(f"density applies to ties, dare and magnitude_prune, not {self.method!r}")
        if self.majority_sign_method not in SIGN_METHODS:
            raise InvalidMerge(f"majority sign method must be total or frequency, "
                               f"got {self.majority_sign_method!r}")
        if (isinstance(self.seed, bool) or not isinstance(self.seed, int)
                or not 0 <= self.seed < 2**63):
            # torch's generators take seeds below 2**63 (the derived per-module seeds too).
            raise InvalidMerge(f"seed must be an integer from 0 to 2**63 - 1, got "
                               f"{str(self.seed)[:40]}")
        if self.output not in OUTPUTS:
            raise InvalidMerge(f"output must be lora or delta, got {self.output!r}")
        if self.dtype is not None and self.dtype not in DTYPES:
            raise InvalidMerge(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.device not in DEVICES:
            raise InvalidMerge(f"device must be auto, cpu or cuda, got {self.device!r}")
        return self


def output_dtype(asked: str | None, source_dtypes: set[str]) -> str:
    """The output's dtype: the one asked for, else the sources' one dtype when the output
    can hold it (float16, bfloat16, float32), else float32."""
    if asked is not None:
        return asked
    return next(iter(source_dtypes)) if len(source_dtypes) == 1 and \
        next(iter(source_dtypes)) in DTYPES else "float32"


def validate_sources(sources: list[SourceSpec]) -> list[SourceSpec]:
    """At least one source, each a SourceSpec with a finite weight."""
    if not sources:
        raise InvalidMerge("a merge needs at least one source adapter")
    return [s if isinstance(s, SourceSpec) else SourceSpec(*s) for s in sources]
