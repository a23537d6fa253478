"""Properties of the exact factored paths, on plain tensors.

The linear path works from float64 Gram matrices; `_qr_reference` (the Householder-QR
formulation of DESIGN.md, float32 QR and a float64 core) is the accuracy yardstick it must
match or beat, on random sums and on the numerically hard cases.
"""
from __future__ import annotations

import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.merge.factored import factored_sum, factored_sum_batched, numerical_rank

DEVICE = os.environ.get("LORASTACK_TEST_DEVICE", "cpu")
FAST = settings(max_examples=40, deadline=None)


@st.composite
def lora_sum(draw):
    """A few random LoRA factors of one module, with weights (negative allowed)."""
    d = draw(st.integers(1, 24))
    k = draw(st.integers(1, 24))
    n = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    ranks = [draw(st.integers(1, 6)) for _ in range(n)]
    Bs = [torch.randn(d, r, generator=g).to(DEVICE) for r in ranks]
    As = [torch.randn(r, k, generator=g).to(DEVICE) for r in ranks]
    coefs = [draw(st.floats(-3, 3, allow_nan=False).filter(lambda c: abs(c) > 1e-2)) for _ in range(n)]
    return Bs, As, coefs


def _dense(Bs, As, coefs):
    return sum(c * (b.double() @ a.double()) for b, a, c in zip(Bs, As, coefs))


@FAST
@given(lora_sum())
def test_exact_factored_linear_equals_the_dense_weighted_sum(case):
    Bs, As, coefs = case
    low = factored_sum(Bs, As, coefs)
    expected = _dense(Bs, As, coefs)
    scale = max(1.0, float(expected.abs().max()))
    torch.testing.assert_close(low.dense().double(), expected, rtol=0, atol=2e-5 * scale)
    assert low.rank <= sum(b.shape[1] for b in Bs)
    assert low.energy_kept == 1.0 or low.rank == 0


@FAST
@given(lora_sum())
def test_exact_rank_is_the_numerical_rank_of_the_dense_sum(case):
    Bs, As, coefs = case
    expected = _dense(Bs, As, coefs).float().cpu()
    assert factored_sum(Bs, As, coefs).rank == int(torch.linalg.matrix_rank(expected))


@FAST
@given(lora_sum(), st.integers(1, 8))
def test_rank_r_equals_svd_truncation_of_the_dense_sum(case, r):
    Bs, As, coefs = case
    dense = _dense(Bs, As, coefs)
    U, S, Vh = torch.linalg.svd(dense, full_matrices=False)
    keep = min(r, int(torch.linalg.matrix_rank(dense.float())))
    low = factored_sum(Bs, As, coefs, rank=r)
    assert low.rank == keep
    if keep == 0:
        return
    # Eckart-Young: the error is the tail of the spectrum whatever the (non-unique) factors.
    error = float(torch.linalg.norm(low.dense().double() - dense))
    tail = float(S[keep:].pow(2).sum().sqrt())
    assert abs(error - tail) <= 1e-4 * max(1.0, float(S[0]))
    assert abs(low.energy_kept - float(S[:keep].pow(2).sum() / S.pow(2).sum())) < 1e-5


@FAST
@given(lora_sum())
def test_factors_are_balanced_so_half_precision_output_stays_in_range(case):
    Bs, As, coefs = case
    low = factored_sum(Bs, As, coefs)
    if low.rank:
        torch.testing.assert_close(low.B.norm(dim=0), low.A.norm(dim=1), rtol=1e-3, atol=1e-5)


def test_an_adapter_minus_itself_has_rank_zero_and_zero_factors():
    g = torch.Generator().manual_seed(0)
    b, a = torch.randn(40, 8, generator=g), torch.randn(8, 30, generator=g)
    low = factored_sum([b, b], [a, a], [1.0, -1.0])
    assert low.rank == 0 and float(low.dense().abs().max()) == 0.0


def test_duplicated_adapter_keeps_its_own_rank():
    g = torch.Generator().manual_seed(1)
    b, a = torch.randn(50, 4, generator=g), torch.randn(4, 60, generator=g)
    low = factored_sum([b, b, b], [a, a, a], [0.5, 0.25, 1.0])
    assert low.rank == 4
    torch.testing.assert_close(low.dense(), 1.75 * b @ a, rtol=1e-4, atol=1e-4)


def test_numerical_rank_uses_matrix_rank_default_tolerance():
    S = torch.tensor([1.0, 1e-3, 1e-9])
    assert numerical_rank(S, (100, 100)) == 2
    assert numerical_rank(S, (100, 100), scale=1e6) == 0
    assert numerical_rank(torch.tensor([]), (3, 3)) == 0


def test_wide_and_tall_modules_with_rank_above_a_dimension_are_exact():
    g = torch.Generator().manual_seed(2)
    Bs = [torch.randn(3, 5, generator=g), torch.randn(3, 4, generator=g)]
    As = [torch.randn(5, 200, generator=g), torch.randn(4, 200, generator=g)]
    low = factored_sum(Bs, As, [1.0, 2.0])
    assert low.rank == 3
    torch.testing.assert_close(low.dense(), Bs[0] @ As[0] + 2 * Bs[1] @ As[1], rtol=1e-4, atol=1e-4)


@FAST
@given(st.integers(1, 5), st.integers(0, 2**31 - 1), st.one_of(st.none(), st.integers(1, 6)))
def test_batched_modules_give_the_same_factors_as_one_at_a_time(count, seed, rank):
    g = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(count):
        ranks = [2, 3]
        Bs = [torch.randn(12, r, generator=g).to(DEVICE) for r in ranks]
        As = [torch.randn(r, 9, generator=g).to(DEVICE) for r in ranks]
        items.append((Bs, As, [1.5, -0.5]))
    batched = factored_sum_batched(items, rank)
    for (Bs, As, coefs), low in zip(items, batched):
        alone = factored_sum(Bs, As, coefs, rank)
        assert low.rank == alone.rank
        torch.testing.assert_close(low.dense(), alone.dense(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("core", ["auto", "device"])
@pytest.mark.parametrize("dtypes", [
    (torch.float16, torch.float16), (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.bfloat16), (torch.float16, torch.float64)])
def test_host_factors_are_merged_on_the_device_exactly_as_factors_already_there(monkeypatch, dtypes, core):
    # The engine reads factors on the host and lets factored_sum_batched move them: packed
    # in the stored dtype (one transfer per batch) on a GPU, widened in place on the CPU.
    # The transfer branch runs under LORASTACK_TEST_DEVICE=cuda (bench/gpu_check.sh); the
    # packing it relies on is checked on the CPU below. On a GPU, "auto" runs the R x R
    # steps on the host and "device" keeps them on the GPU (both are the CPU path here).
    if core == "device":
        monkeypatch.setattr("hub.merge.factored.HOST_CORE_MAX_RANK", 0)
    g = torch.Generator().manual_seed(11)
    items = []
    for _ in range(3):
        Bs = [(torch.randn(40, 3, generator=g) * 0.1).to(dt) for dt in dtypes]
        As = [torch.randn(3, 30, generator=g).to(dt) for dt in dtypes]
        items.append((Bs, As, [1.0, -0.75]))
    moved = factored_sum_batched(items, 4, device=DEVICE)
    there = factored_sum_batched([([b.to(DEVICE) for b in Bs], [a.to(DEVICE) for a in As], cs)
                                  for Bs, As, cs in items], 4)
    for (Bs, As, coefs), low, ref in zip(items, moved, there):
        assert low.B.device.type == DEVICE and low.B.dtype == torch.float32
        assert low.rank == ref.rank == 4
        torch.testing.assert_close(low.dense(), ref.dense(), rtol=0, atol=1e-6)
        exact = _dense(Bs, As, coefs).to(DEVICE)
        residual = exact - low.dense().double()
        # Best rank 4 of a rank-6 sum: what is left is the two smallest singular values.
        tail = torch.linalg.svdvals(exact)[4:].pow(2).sum().sqrt()
        torch.testing.assert_close(torch.linalg.norm(residual), tail, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtypes", [(torch.float16, torch.bfloat16), (torch.bfloat16, torch.float64)])
def test_packing_in_the_stage_dtype_keeps_every_factor_bit_for_bit(dtypes):
    from hub.merge.factored import _packed, _stage_dtype

    g = torch.Generator().manual_seed(5)
    items = [([torch.randn(6, r, generator=g).to(dt) for r, dt in zip((2, 3), dtypes)],
              [torch.randn(r, 4, generator=g).to(dt) for r, dt in zip((2, 3), dtypes)], [0.5, -2.0])
             for _ in range(2)]
    stage = _stage_dtype(items)
    B, A, coefs = _packed(items, stage, torch.device("cpu"))
    assert B.dtype == A.dtype == stage and B.shape == (2, 6, 5) and A.shape == (2, 5, 4)
    assert coefs == [0.5, 0.5, -2.0, -2.0, -2.0] * 2
    for j, (Bs, As, _) in enumerate(items):
        assert torch.equal(B[j].double(), torch.cat([b.double() for b in Bs], dim=1))
        assert torch.equal(A[j].double(), torch.cat([a.double() for a in As], dim=0))


def test_stage_dtype_keeps_every_factor_exact():
    from hub.merge.factored import _stage_dtype

    def item(*dts):
        return ([torch.zeros(2, 1, dtype=dt) for dt in dts], [torch.zeros(1, 2, dtype=dt) for dt in dts], [1.0] * len(dts))

    assert _stage_dtype([item(torch.float16, torch.float16)]) == torch.float16
    assert _stage_dtype([item(torch.bfloat16), item(torch.bfloat16)]) == torch.bfloat16
    assert _stage_dtype([item(torch.float16, torch.bfloat16)]) == torch.float32
    assert _stage_dtype([item(torch.float16), item(torch.float64)]) == torch.float64


def _bound(Bs, As, coefs) -> float:
    """sum_i |c_i| |B_i| |A_i|: the scale below which float32 inputs carry no information."""
    return sum(abs(c) * float(b.double().norm() * a.double().norm()) for b, a, c in zip(Bs, As, coefs))


def _qr_reference(Bs, As, coefs, rank=None) -> torch.Tensor:
    """The product of DESIGN.md's QR formulation (float32 Householder QR, float64 core SVD)."""
    B = torch.cat([c * b.float() for c, b in zip(coefs, Bs)], dim=1)
    A = torch.cat([a.float() for a in As], dim=0)
    Qb, Rb = torch.linalg.qr(B)
    Qa, Ra = torch.linalg.qr(A.T)
    U, S, Vh = torch.linalg.svd(Rb.double() @ Ra.double().T)
    keep = numerical_rank(S, (B.shape[0], A.shape[1]), _bound(Bs, As, coefs))
    keep = keep if rank is None else min(rank, keep)
    return (Qb.double() @ U[:, :keep] * S[:keep]) @ (Vh[:keep] @ Qa.double().T)


@st.composite
def scaled_lora_sum(draw):
    """LoRA sums with weights from 1e-8 to 1e8, scale moved between B and A, fp16/bf16/fp32 factors."""
    d = draw(st.integers(1, 40))
    k = draw(st.integers(1, 40))
    n = draw(st.integers(1, 4))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    Bs, As, coefs = [], [], []
    for _ in range(n):
        r = draw(st.integers(1, 8))
        split = 10.0 ** draw(st.integers(-4, 4))
        dtype = draw(st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
        Bs.append((torch.randn(d, r, generator=g) * split).to(dtype).to(DEVICE))
        As.append((torch.randn(r, k, generator=g) / split).to(dtype).to(DEVICE))
        coefs.append(draw(st.sampled_from([-1.0, 1.0])) * 10.0 ** draw(st.floats(-8, 8)))
    return Bs, As, coefs


@FAST
@given(scaled_lora_sum())
def test_exact_sum_matches_float64_dense_sum_at_any_scale_and_dtype_and_beats_qr(case):
    Bs, As, coefs = case
    expected = _dense(Bs, As, coefs)
    bound = _bound(Bs, As, coefs)
    S = torch.linalg.svdvals(expected).cpu()
    low = factored_sum(Bs, As, coefs)
    # What is dropped lies under the numerical-rank tolerance (max(d, k) eps32 of `bound`) ...
    tol = max(expected.shape) * torch.finfo(torch.float32).eps * max(bound, float(S[0]))
    assert max(S[low.rank:].tolist(), default=0.0) <= 1.01 * tol
    # ... and the rest is the float64 dense sum to float32 precision, relative to the inputs'
    # norm whatever the cancellation, and to the sum's own norm where it does not cancel.
    tail = float(S[low.rank:].pow(2).sum().sqrt())
    error = float((low.dense().double() - expected).norm())
    assert error <= tail + 1e-6 * bound
    if float(expected.norm()) >= 0.1 * bound:
        assert error <= tail + 1e-5 * float(expected.norm())
    qr_error = float((_qr_reference(Bs, As, coefs) - expected).norm())
    # The reference stays in float64; our factors are rounded to float32 and multiplied in
    # float32 by low.dense(): three roundings of 2^-24, up to ~1.8e-7 of a 1 x 1 product
    # (hypothesis found one near c = -100, b = 0.6614, a = 0.2669).
    assert error <= 2 * qr_error + 2.5e-7 * bound


def _hard_cases():
    g = torch.Generator().manual_seed(7)
    d, k, r = 160, 120, 8
    B1, B2, N = (torch.randn(d, r, generator=g) for _ in range(3))
    A1, A2 = (torch.randn(r, k, generator=g) for _ in range(2))
    Uq = torch.linalg.qr(torch.randn(d, 24, generator=g)).Q
    Vq = torch.linalg.qr(torch.randn(k, 24, generator=g)).Q
    graded = torch.logspace(0, -7, 24)
    return {
        "nearly_parallel_sources": ([B1, B1 + 1e-6 * N], [A1, A2], [1.0, 0.7]),
        "sources_parallel_to_1e-5_with_different_a": ([B1, B1 + 1e-5 * N], [A1, A2], [1.0, -1.0]),
        "nearly_parallel_sources_cancelling": ([B1, B1 + 1e-6 * N], [A1, A1], [1.0, -1.0]),
        "partly_cancelling_sources": ([B1, B1 + 1e-2 * N], [A1, A1 + 1e-2 * A2], [1.0, -1.0]),
        "exact_cancellation": ([B1, B1], [A1, A1], [0.3, -0.3]),
        "repeated_columns": ([torch.cat([B1[:, :2]] * 4, dim=1), B2], [A1, A2], [1.0, -0.5]),
        "tiny_weights": ([B1, B2], [A1, A2], [1e-8, -3e-8]),
        "huge_weights": ([B1, B2], [A1, A2], [1e8, 2e7]),
        "tiny_and_huge_weights": ([B1, B2], [A1, A2], [1e8, 1e-8]),
        "scale_moved_between_b_and_a": ([B1 * 1e4, B2 * 1e-4], [A1 * 1e-4, A2 * 1e4], [1.0, 1.0]),
        "mixed_fp16_bf16": ([B1.half(), B2.bfloat16()], [A1.half(), A2.bfloat16()], [1.0, -0.6]),
        "zero_initialised_b": ([torch.zeros(d, r), B2], [A1, A2], [1.0, 1.0]),
        "graded_spectrum_to_1e-7": ([Uq[:, :12] * graded[:12], Uq[:, 12:] * graded[12:]],
                                    [Vq.T[:12], Vq.T[12:]], [1.0, 1.0]),
        "rank_above_a_dimension": ([torch.randn(3, 5, generator=g), torch.randn(3, 4, generator=g)],
                                   [torch.randn(5, 90, generator=g), torch.randn(4, 90, generator=g)],
                                   [1.0, 2.0]),
    }


HARD = _hard_cases()


@pytest.mark.parametrize("rank", [None, 1, 5, 12])
@pytest.mark.parametrize("name", sorted(HARD))
def test_hard_cases_match_the_svd_of_the_float64_dense_sum_and_beat_qr(name, rank):
    Bs, As, coefs = HARD[name]
    Bs, As = [b.to(DEVICE) for b in Bs], [a.to(DEVICE) for a in As]
    expected = _dense(Bs, As, coefs)
    S = torch.linalg.svdvals(expected).cpu()
    bound = _bound(Bs, As, coefs)
    exact = numerical_rank(S, tuple(expected.shape), bound)
    keep = exact if rank is None else min(rank, exact)
    low = factored_sum(Bs, As, coefs, rank=rank)
    assert low.rank == keep
    if keep == 0:
        assert float(low.dense().abs().max()) == 0.0
        return
    # Singular values, Eckart-Young error and energy are those of the dense float64 truncation.
    top = min(S.shape[0], low.singular_values.shape[0])
    assert float((low.singular_values[:top].double().cpu() - S[:top]).abs().max()) <= 1e-7 * bound
    error = float((low.dense().double() - expected).norm())
    tail = float(S[keep:].pow(2).sum().sqrt())
    assert abs(error - tail) <= 1e-6 * bound
    energy = float(S[:keep].pow(2).sum() / S[:exact].pow(2).sum())
    assert abs(low.energy_kept - energy) <= 1e-9
    qr_error = float((_qr_reference(Bs, As, coefs, rank) - expected).norm())
    assert abs(error - tail) <= 2 * abs(qr_error - tail) + 1e-7 * bound


def test_non_finite_factors_give_nan_singular_values_without_spoiling_the_batch():
    g = torch.Generator().manual_seed(3)
    good = ([torch.randn(20, 3, generator=g)], [torch.randn(3, 10, generator=g)], [1.0])
    for poison in (float("nan"), float("inf")):
        b = torch.randn(20, 3, generator=g)
        b[4, 1] = poison
        bad, ok = factored_sum_batched([([b], [torch.randn(3, 10, generator=g)], [1.0]), good], rank=2)
        assert bad.singular_values.isnan().all()
        assert ok.rank == 2 and torch.isfinite(ok.singular_values).all()
        torch.testing.assert_close(ok.dense(), factored_sum(*good, rank=2).dense())


def _eigh_calls(monkeypatch) -> list[int]:
    """Count the batched eigendecompositions: one per batch on the Cholesky path, two on the
    eigendecomposition path (whitening, then the core)."""
    from hub.merge import factored

    calls: list[int] = []
    real = factored._eigh_desc

    def counted(G):
        calls.append(G.shape[0])
        return real(G)

    monkeypatch.setattr(factored, "_eigh_desc", counted)
    return calls


def _graded(d, k, top, bottom, seed):
    """B with singular values from 10^top down to 10^bottom, and a random A, as one source."""
    g = torch.Generator().manual_seed(seed)
    r = 8
    U = torch.linalg.qr(torch.randn(d, r, generator=g, dtype=torch.float64)).Q
    B = U * torch.logspace(top, bottom, r, dtype=torch.float64)
    return B.float(), torch.randn(r, k, generator=g)


@pytest.mark.parametrize("bottom", [0.0, -1.0, -2.5])
@pytest.mark.parametrize("rank", [None, 3])
def test_well_conditioned_stacks_take_cholesky_and_match_the_float64_truncation(monkeypatch, bottom, rank):
    # cond(B)^2 up to ~1e5 * R: under CHOLESKY_COND2_MAX, so one eigh per batch (the core).
    b, a = _graded(60, 50, 0.0, bottom, seed=4)
    b2, a2 = _graded(60, 50, 0.5, -1.0, seed=5)
    Bs, As, coefs = [b.to(DEVICE), b2.to(DEVICE)], [a.to(DEVICE), a2.to(DEVICE)], [1.0, -0.4]
    calls = _eigh_calls(monkeypatch)
    low = factored_sum(Bs, As, coefs, rank=rank)
    assert calls == [1]
    expected = _dense(Bs, As, coefs)
    S = torch.linalg.svdvals(expected).cpu()
    bound = _bound(Bs, As, coefs)
    keep = 16 if rank is None else rank
    assert low.rank == keep
    assert float((low.singular_values[:16].double().cpu() - S[:16]).abs().max()) <= 1e-7 * bound
    error = float((low.dense().double() - expected).norm())
    assert abs(error - float(S[keep:].pow(2).sum().sqrt())) <= 1e-6 * bound


def test_ill_conditioned_and_rank_deficient_stacks_take_the_eigendecomposition(monkeypatch):
    g = torch.Generator().manual_seed(9)
    b, a = torch.randn(40, 4, generator=g), torch.randn(4, 30, generator=g)
    near = b + 1e-4 * torch.randn(40, 4, generator=g)  # cond(B)^2 ~ 1e9 whatever the column scaling
    a2 = torch.randn(4, 30, generator=g)
    calls = _eigh_calls(monkeypatch)
    assert factored_sum([b, b], [a, a], [1.0, 0.5]).rank == 4  # the same B twice: singular Gram
    assert calls == [1, 1]
    calls.clear()
    Bs, As, coefs = [b, near], [a, a2], [1.0, -1.0]
    low = factored_sum(Bs, As, coefs)
    assert calls == [1, 1]
    expected = _dense(Bs, As, coefs)
    S = torch.linalg.svdvals(expected)
    assert low.rank == numerical_rank(S, tuple(expected.shape), _bound(Bs, As, coefs))
    error = float((low.dense().double() - expected).norm())
    assert error <= float(S[low.rank:].pow(2).sum().sqrt()) + 1e-6 * _bound(Bs, As, coefs)


def test_a_batch_mixing_both_whitenings_gives_each_module_its_own_result(monkeypatch):
    # One module per path in one batch: the eigendecomposition runs on the failing one only.
    g = torch.Generator().manual_seed(12)
    b, a = torch.randn(30, 3, generator=g), torch.randn(3, 20, generator=g)
    b2, a2 = torch.randn(30, 3, generator=g), torch.randn(3, 20, generator=g)
    items = [([b, b2], [a, a2], [1.0, 2.0]), ([b, b], [a, a2], [1.0, -1.0]), ([b2, b], [a2, a], [0.5, 1.0])]
    calls = _eigh_calls(monkeypatch)
    lows = factored_sum_batched(items, rank=None)
    assert calls == [1, 3]
    assert [low.rank for low in lows] == [6, 3, 6]
    for (Bs, As, coefs), low in zip(items, lows):
        torch.testing.assert_close(low.dense().double(), _dense(Bs, As, coefs), rtol=0, atol=1e-5)


def test_small_cores_run_on_the_host_only_beside_a_gpu():
    from hub.merge.factored import HOST_CORE_MAX_RANK, _core_device

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _core_device(cpu, 8) == cpu and _core_device(cpu, 4096) == cpu
    assert _core_device(cuda, HOST_CORE_MAX_RANK) == cpu
    assert _core_device(cuda, HOST_CORE_MAX_RANK + 1) == cuda
