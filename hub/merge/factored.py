"""Exact linear merging in factored form: never forms a d x k matrix.

`sum_i c_i B_i A_i = B A` with `B = [c_i B_i]` (d x R) and `A = [A_i]` (R x k). Factor the
Gram matrix `B^T B = W W^T` (Cholesky where B is well conditioned, else an eigendecomposition
that drops directions under its rounding floor); then `Q = B W^-T` has orthonormal columns
and `B A = Q Z` with `Z = W^T A` (R x k). The eigendecomposition of the small
`Z Z^T = W^T (A A^T) W = U S^2 U^T` gives the SVD of the sum, `B A = (Q U) S (Z^T U S^-1)^T`.
Cost O((d + k) R^2) instead of O(d k min(d, k)), all of it in matrix products: unlike a
Householder QR of the tall d x R factors (BLAS-2 bound on a CPU), Gram matrices run at
GEMM speed. They are accumulated in float64, so squaring loses only what lies below
~sqrt(eps64) ~ 1e-8 of the norm of the inputs, under float32 input precision.
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


def _eigh_desc(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (descending, clamped at 0) and eigenvectors of a batch of symmetric matrices."""
    lam, V = torch.linalg.eigh(G)
    return lam.flip(-1).clamp_min(0.0), V.flip(-1)


#: The Cholesky whitening is taken where `|L|_F^2 |L^-1|_F^2`, an upper bound on cond(B)^2,
#: stays under this: CholeskyQR loses ~eps64 cond(B)^2 ~ 1e-9 of orthogonality there, far
#: under float32 output precision. Worse-conditioned (or rank-deficient) stacks, such as an
#: adapter merged with itself, take the eigendecomposition, which drops what is noise.
CHOLESKY_COND2_MAX = 1e7

#: On a GPU the R x R steps (Cholesky, eigh) of modules whose stacked rank is at most this run
#: on the host: torch's CUDA eigh solves matrices above 32 x 32 one cuSOLVER call at a time
#: (pytorch/pytorch#175585), milliseconds each, where LAPACK takes 0.2 ms at R = 48 and
#: 1.5 ms at R = 128. Larger cores stay on the device (49 ms per eigh at R = 512 on one core).
HOST_CORE_MAX_RANK = 128


def _core_device(device: torch.device, R: int) -> torch.device:
    """Where a batch's R x R work runs: the host for small cores on a GPU, else `device`."""
    if device.type != "cpu" and R <= HOST_CORE_MAX_RANK:
        return torch.device("cpu")
    return device


def _whiten(G: torch.Tensor, d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(W, P) with `G ~= W W^T` and `P = pinv(W)^T`, for a batch of Gram matrices `G = B^T B`.

    `B P` then has orthonormal columns and `B P W^T = B`, up to the directions dropped.
    Cholesky (`W = L`, `P = L^-T`; with the inverse 3-6x cheaper than eigh, R = 512 to 48)
    where B is well conditioned; elsewhere `W = V L^(1/2)` from the eigendecomposition,
    without the directions under the Gram's rounding floor (~(d + R) eps64 of its trace):
    they carry at most sqrt of that (~1e-7) of the product, and L^(-1/2) would only amplify
    their noise.
    """
    n, R, _ = G.shape
    L, info = torch.linalg.cholesky_ex(G)
    eye = torch.eye(R, dtype=G.dtype, device=G.device).expand(n, R, R)
    L_inv = torch.linalg.solve_triangular(L, eye, upper=False)
    cond2 = L.square().sum((-2, -1)) * L_inv.square().sum((-2, -1))
    chol = (info == 0) & (cond2 <= CHOLESKY_COND2_MAX)  # NaN (a failed factor) compares False
    W, P = L, L_inv.mT
    if bool(chol.all()):
        return W, P
    rest = (~chol).nonzero().squeeze(1)
    G_rest = G[rest]
    lam, V = _eigh_desc(G_rest)
    floor = (d + R) * torch.finfo(G.dtype).eps * G_rest.diagonal(dim1=-2, dim2=-1).sum(-1, keepdim=True)
    kept = lam > floor
    root = torch.where(kept, lam.sqrt(), 0.0)
    inv_root = torch.where(kept, 1.0 / root.where(kept, 1.0), 0.0)
    W, P = W.clone(), P.clone()
    W[rest] = V * root[:, None, :]
    P[rest] = V * inv_root[:, None, :]
    return W, P


Items = list[tuple[list[torch.Tensor], list[torch.Tensor], list[float]]]


def _stage_dtype(items: Items) -> torch.dtype:
    """One dtype that holds every factor exactly: the stored one when they agree."""
    found = {t.dtype for Bs, As, _ in items for t in (*Bs, *As)}
    if len(found) == 1:
        return found.pop()
    return torch.float64 if torch.float64 in found else torch.float32


def _stack(items: Items, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Stacked factors in float64 on `device` (n x d x R, n x R x k); each column's coefficient (n x R, host).

    Factors already on `device` are widened straight to float64 in one copy. Factors on the
    host bound for a GPU are first packed in their stored dtype into one pinned buffer, so a
    batch crosses the bus in two transfers at half (fp16) the bytes, not two per factor.
    """
    if items[0][0][0].device == device:
        B, A, coefs = _packed(items, torch.float64, device)
    else:
        pin = device.type == "cuda"
        B_host, A_host, coefs = _packed(items, _stage_dtype(items), torch.device("cpu"), pin)
        B = B_host.to(device, non_blocking=pin).to(torch.float64)
        A = A_host.to(device, non_blocking=pin).to(torch.float64)
    coef = torch.tensor(coefs, dtype=torch.float64).view(B.shape[0], B.shape[2])
    return B, A, coef


def _packed(items: Items, dtype: torch.dtype, device: torch.device, pin: bool = False
            ) -> tuple[torch.Tensor, torch.Tensor, list[float]]:
    """The factors side by side in new (n x d x R, n x R x k) tensors of `dtype`; the coefficients."""
    Bs0, As0, _ = items[0]
    n, d, k, R = len(items), Bs0[0].shape[0], As0[0].shape[1], sum(b.shape[1] for b in Bs0)
    B = torch.empty(n, d, R, dtype=dtype, device=device, pin_memory=pin)
    A = torch.empty(n, R, k, dtype=dtype, device=device, pin_memory=pin)
    coefs = []
    for j, (Bs, As, cs) in enumerate(items):
        offset = 0
        for b, a, c in zip(Bs, As, cs):
            r = b.shape[1]
            B[j, :, offset:offset + r].copy_(b)
            A[j, offset:offset + r].copy_(a)
            offset += r
            coefs.extend([float(c)] * r)
    return B, A, coefs


def _scales(items: Items, nb2: list[list[float]], na2: list[list[float]]) -> list[float]:
    """Per module `sum_i |c_i| |B_i| |A_i|` (Frobenius), from the Gram diagonals already on the host."""
    out = []
    for j, (Bs, _, cs) in enumerate(items):
        total, offset = 0.0, 0
        for b, c in zip(Bs, cs):
            r = b.shape[1]
            total += abs(c) * (sum(nb2[j][offset:offset + r]) * sum(na2[j][offset:offset + r])) ** 0.5
            offset += r
        out.append(total)
    return out


def factored_sum(Bs: list[torch.Tensor], As: list[torch.Tensor], coefs: list[float],
                 rank: int | None = None) -> LowRank:
    """Best rank-`rank` (or exact, at numerical rank) factors of `sum_i coefs[i] B_i A_i`."""
    return factored_sum_batched([(Bs, As, coefs)], rank)[0]


def factored_sum_batched(items: Items, rank: int | None = None,
                         device: torch.device | None = None) -> list[LowRank]:
    """`factored_sum` for several modules whose stacked factors share one shape (d x R, R x k).

    One batched GEMM / Cholesky / eigh call per step instead of one per module: on a GPU
    this removes the per-call launch overhead that dominates at LoRA sizes. Factors may be
    in any float dtype and on the host or on `device` (default: where the factors are); the
    results' factors are float32 on `device`, their singular values float32 on the host.
    """
    device = items[0][0][0].device if device is None else torch.device(device)
    B, A, coef = _stack(items, device)
    n, d, R = B.shape
    k = A.shape[2]
    # The products with the tall factors run on `device`; everything R x R runs on `core`.
    core = _core_device(device, R)
    Gb, Ga, coef = (B.mT @ B).to(core), (A @ A.mT).to(core), coef.to(core)
    nb2, na2 = Gb.diagonal(dim1=-2, dim2=-1), Ga.diagonal(dim1=-2, dim2=-1)
    # NaN/inf anywhere in a factor reaches its column's squared norm (float64 cannot overflow
    # on float32 inputs); such modules get NaN singular values for the caller to refuse.
    bad = ~(torch.isfinite(nb2).all(-1) & torch.isfinite(na2).all(-1))
    live = (nb2 > 0) & (na2 > 0) & (coef != 0) & ~bad[:, None]
    # Balance each rank-1 term c_j b_j a_j to |b_j| = |a_j| (on the R x R Grams only): the
    # Gram truncation below is then relative to sum_j |c_j b_j| |a_j| <= the inputs' norm,
    # whatever the scale split between B and A, or between sources, was.
    ratio = torch.where(live, (na2.sqrt() / (coef.abs() * nb2.sqrt()).where(live, 1.0)).sqrt(), 1.0)
    db = torch.where(live, coef * ratio, 0.0)
    da = torch.where(live, 1.0 / ratio, 0.0)
    Gb = torch.where(bad[:, None, None], 0.0, db[:, :, None] * Gb * db[:, None, :])
    Ga = torch.where(bad[:, None, None], 0.0, da[:, :, None] * Ga * da[:, None, :])
    host = torch.cat([nb2, na2], dim=1).cpu()  # one transfer (if any) for the norms and the bad flags
    scales = _scales(items, host[:, :R].tolist(), host[:, R:].tolist())

    W, P = _whiten(Gb, d)
    mu, U = _eigh_desc(W.mT @ Ga @ W)  # Z Z^T, Z = W^T Da A
    S = torch.where(bad[:, None], float("nan"), mu.sqrt())
    S_cpu = S.cpu()
    exact = [numerical_rank(S_cpu[j], (d, k), scales[j]) for j in range(n)]
    # Directions beyond the numerical rank are rounding noise, never worth keeping.
    keep = [e if rank is None else min(rank, e) for e in exact]
    top = max(max(keep), 1)
    Ut, St = U[:, :, :top], S[:, :top].nan_to_num(0.0)
    half = St.sqrt()
    inv_half = torch.where(St > 0, 1.0 / half.where(St > 0, 1.0), 0.0)
    # Balanced factors (sqrt(S) on each side) keep half-precision outputs in range:
    # B' = B Db P U_r S_r^(1/2) and A' = S_r^(-1/2) U_r^T W^T Da A, formed as R x r transforms
    # and applied in float64: their entries grow where B's columns nearly cancel, and
    # float64 keeps that cancellation exact far below float32 output precision.
    Tb = (db[:, :, None] * (P @ Ut) * half[:, None, :]).to(device)
    Ta = ((inv_half[:, :, None] * (Ut.mT @ W.mT)) * da[:, None, :]).to(device)
    B_all = (B @ Tb).float()
    A_all = (Ta @ A).float()
    del B, A
    S32 = S_cpu.float()  # on the host whichever device did the R x R work
    out = []
    for j, r in enumerate(keep):
        if r == 0:
            # PEFT cannot hold a rank-0 module: keep one zero direction.
            out.append(LowRank(torch.zeros(d, 1, device=device), torch.zeros(1, k, device=device),
                               S32[j], 0, 1.0))
            continue
        kept = energy_fraction(S_cpu[j, :exact[j]], r)
        out.append(LowRank(B_all[j, :, :r].contiguous(), A_all[j, :r].contiguous(), S32[j], r, kept))
    return out
