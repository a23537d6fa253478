"""Exact linear merging in factored form: never forms a d x k matrix.

`sum_i c_i B_i A_i = B A` with `B = [c_i B_i]` (d x R) and `A = [A_i]` (R x k). With
`B = Qb Rb` and `A^T = Qa Ra`, `B A = Qb (Rb Ra^T) Qa^T`, so the SVD of the small core
`Rb Ra^T = U S V^T` is the SVD of the sum: cost O((d + k) R^2) instead of O(d k min(d, k)).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class LowRank:
    """A rank-r update `B @ A` with its singular values and the energy it keeps."""

    B: torch.Tensor  # d x r
    A: torch.Tensor  # r x k
    singular_values: torch.Tensor  # all singular values of the update being approximated
    rank: int
    energy_kept: float
    svd: str = "exact"

    def dense(self) -> torch.Tensor:
        """The d x k product (for small modules and tests only)."""
        return self.B @ self.A


def numerical_rank(singular_values: torch.Tensor, shape: tuple[int, int], scale: float = 0.0) -> int:
    """Rank by torch.linalg.matrix_rank's default rule (rtol = max(d, k) * eps of float32).

    `scale` is an upper bound on the norm of the inputs, so that an update that cancels to
    rounding noise (w and -w of the same adapter) has rank 0 rather than the noise's rank.
    """
    if singular_values.numel() == 0:
        return 0
    eps = torch.finfo(torch.float32).eps
    reference = max(float(singular_values.max()), float(scale))
    tol = max(shape) * eps * reference
    return int((singular_values > tol).sum())


def split_factors(U: torch.Tensor, S: torch.Tensor, Vh: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """B = U_r sqrt(S_r), A = sqrt(S_r) Vh_r: balanced factors keep fp16 outputs in range."""
    root = S[:r].sqrt()
    return U[:, :r] * root, root[:, None] * Vh[:r]


def energy_fraction(S: torch.Tensor, r: int) -> float:
    """Fraction of squared Frobenius norm kept by the top r singular values."""
    total = float((S.double() ** 2).sum())
    if total == 0.0:
        return 1.0
    return float((S[:r].double() ** 2).sum()) / total


def core_svd(core: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Thin SVD of a batch of small float64 cores via the eigendecomposition of core^T core.

    For R x R cores with R in the hundreds (8 sources of rank 64) a symmetric eigensolver is
    an order of magnitude faster than a general SVD on both CPU and GPU. Squaring costs
    accuracy only below sqrt(eps64) ~ 1e-8 of the largest singular value, far under the
    float32 numerical-rank tolerance, and U is only formed for the directions kept.
    """
    # eigh refuses non-finite input; such cores get NaN singular values for the caller to refuse.
    bad = ~torch.isfinite(core).flatten(1).all(dim=1)
    core = torch.where(bad[:, None, None], torch.zeros_like(core), core)
    lam, V = torch.linalg.eigh(core.mT @ core)
    lam, V = lam.flip(-1).clamp_min(0.0), V.flip(-1)
    S = torch.where(bad[:, None], torch.full_like(lam, float("nan")), lam.sqrt())
    U = (core @ V) / torch.where(S > 0, S, torch.ones_like(S))[..., None, :]
    return U, S, V.mT


def factored_sum(Bs: list[torch.Tensor], As: list[torch.Tensor], coefs: list[float],
                 rank: int | None = None) -> LowRank:
    """Best rank-`rank` (or exact, at numerical rank) factors of `sum_i coefs[i] B_i A_i`."""
    return factored_sum_batched([(Bs, As, coefs)], rank)[0]


def factored_sum_batched(items: list[tuple[list[torch.Tensor], list[torch.Tensor], list[float]]],
                         rank: int | None = None) -> list[LowRank]:
    """`factored_sum` for several modules whose stacked factors share one shape (d x R, R x k).

    One batched QR / SVD call per batch instead of one per module: on a GPU this removes
    the per-call launch overhead that dominates at LoRA sizes.
    """
    B = torch.stack([torch.cat([c * b for c, b in zip(coefs, Bs)], dim=1) for Bs, _, coefs in items])
    A = torch.stack([torch.cat(As, dim=0) for _, As, _ in items])
    d, k = B.shape[1], A.shape[2]
    # Upper bounds on each module's norm, gathered in one transfer (one GPU sync per batch).
    scales = torch.stack([sum(abs(c) * torch.linalg.norm(b) * torch.linalg.norm(a)
                              for c, b, a in zip(coefs, Bs, As)) for Bs, As, coefs in items]).tolist()
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.transpose(1, 2))
    del B, A
    # The core is at most R x R; float64 there costs nothing and keeps small singular values.
    U, S, Vh = core_svd(Rb.double() @ Ra.double().transpose(1, 2))
    S_cpu = S.cpu()
    exact = [numerical_rank(S_cpu[j], (d, k), scales[j]) for j in range(len(items))]
    # Directions beyond the numerical rank are rounding noise, never worth keeping.
    keep = [e if rank is None else min(rank, e) for e in exact]
    top = max(max(keep), 1)
    S32 = S.to(Qb.dtype)
    root = S32[:, :top].sqrt()
    # Balanced factors (sqrt(S) on each side) keep half-precision outputs in range.
    B_all = (Qb @ U[:, :, :top].to(Qb.dtype)) * root[:, None, :]
    A_all = root[:, :, None] * (Vh[:, :top].to(Qa.dtype) @ Qa.transpose(1, 2))
    out = []
    for j, r in enumerate(keep):
        if r == 0:
            # PEFT cannot hold a rank-0 module: keep one zero direction.
            out.append(LowRank(torch.zeros(d, 1, device=Qb.device), torch.zeros(1, k, device=Qb.device),
                               S32[j], 0, 1.0))
            continue
        kept = energy_fraction(S_cpu[j, :exact[j]], r)
        out.append(LowRank(B_all[j, :, :r].contiguous(), A_all[j, :r].contiguous(), S32[j], r, kept))
    return out
