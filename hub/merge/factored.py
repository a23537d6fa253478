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


def factored_sum(Bs: list[torch.Tensor], As: list[torch.Tensor], coefs: list[float],
                 rank: int | None = None) -> LowRank:
    """Best rank-`rank` (or exact, at numerical rank) factors of `sum_i coefs[i] B_i A_i`."""
    B = torch.cat([c * b for c, b in zip(coefs, Bs)], dim=1)
    A = torch.cat(As, dim=0)
    d, k = B.shape[0], A.shape[1]
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    # The core is at most R x R; float64 there costs nothing and keeps small singular values.
    core = Rb.double() @ Ra.double().T
    U, S, Vh = torch.linalg.svd(core, full_matrices=False)
    scale = sum(abs(c) * float(torch.linalg.norm(b)) * float(torch.linalg.norm(a))
                for c, b, a in zip(coefs, Bs, As))
    exact_rank = numerical_rank(S, (d, k), scale)
    # Directions beyond the numerical rank are rounding noise, never worth keeping.
    r = exact_rank if rank is None else min(rank, exact_rank)
    U = Qb @ U.to(Qb.dtype)
    Vh = Vh.to(Qa.dtype) @ Qa.T
    S32 = S.to(Qb.dtype)
    kept = energy_fraction(S[:exact_rank], r) if exact_rank else 1.0
    if r == 0:
        # PEFT cannot hold a rank-0 module: keep one zero direction.
        return LowRank(torch.zeros(d, 1, device=B.device), torch.zeros(1, k, device=B.device),
                       S32, 0, 1.0)
    B_out, A_out = split_factors(U, S32, Vh, r)
    return LowRank(B_out, A_out, S32, r, kept)
