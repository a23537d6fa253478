"""Properties of the exact factored paths, on plain tensors."""
from __future__ import annotations

import os

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.merge.factored import core_svd, factored_sum, factored_sum_batched, numerical_rank

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


@FAST
@given(st.integers(1, 12), st.integers(1, 12), st.integers(0, 12), st.integers(0, 2**31 - 1))
def test_core_svd_matches_torch_svd_including_rank_deficient_cores(m, n, rank, seed):
    g = torch.Generator().manual_seed(seed)
    core = (torch.randn(2, m, rank, generator=g, dtype=torch.float64)
            @ torch.randn(2, rank, n, generator=g, dtype=torch.float64)).to(DEVICE)
    U, S, Vh = core_svd(core)
    expected = torch.linalg.svdvals(core)
    torch.testing.assert_close(S[:, : expected.shape[1]], expected, rtol=1e-6, atol=1e-6)
    keep = int(min(rank, m, n))
    rebuilt = (U[..., :keep] * S[:, None, :keep]) @ Vh[:, :keep]
    torch.testing.assert_close(rebuilt, core, rtol=1e-6, atol=1e-6)
    assert core_svd(torch.full((1, 3, 3), float("nan"), dtype=torch.float64, device=DEVICE))[1].isnan().all()
