"""The analysis's inner products and findings, on plain tensors against dense float64 updates."""
from __future__ import annotations

import json

import pytest
import torch

from hub.merge.analyze import inner_products, report
from hub.merge.plan import ModulePlan


def _factors(seed: int, d: int, k: int, ranks, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    Bs = [torch.randn(d, r, generator=g).to(dtype) for r in ranks]
    As = [torch.randn(r, k, generator=g).to(dtype) for r in ranks]
    return Bs, As


def _dense_inner(Bs, As, coefs) -> torch.Tensor:
    updates = [c * (b.double() @ a.double()) for b, a, c in zip(Bs, As, coefs)]
    return torch.tensor([[float((u * v).sum()) for v in updates] for u in updates], dtype=torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_inner_products_equal_those_of_the_dense_float64_updates(dtype):
    Bs, As = _factors(0, 23, 17, [4, 1, 6, 3], dtype)
    coefs = [0.7, -1.3, 2.0, 0.25]
    expected = _dense_inner(Bs, As, coefs)
    torch.testing.assert_close(inner_products(Bs, As, coefs), expected, rtol=1e-12, atol=0)


def test_a_negative_coefficient_flips_the_signs_of_its_inner_products_only():
    Bs, As = _factors(1, 12, 9, [3, 2])
    plain = inner_products(Bs, As, [1.0, 1.0])
    flipped = inner_products(Bs, As, [1.0, -1.0])
    torch.testing.assert_close(flipped, plain * torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64))


def test_an_update_whose_factors_cancel_has_exactly_zero_inner_products():
    b = torch.randn(16, 1, dtype=torch.float64)
    a = torch.randn(1, 10, dtype=torch.float64)
    # [b, -b] [a; a] = 0 although neither factor is: the trace formula leaves rounding noise.
    Bs = [torch.cat([b, -b], 1), torch.randn(16, 2, dtype=torch.float64)]
    As = [torch.cat([a, a], 0), torch.randn(2, 10, dtype=torch.float64)]
    inner = inner_products(Bs, As, [3.0, 1.0])
    assert inner[0].tolist() == [0.0, 0.0] and inner[:, 0].tolist() == [0.0, 0.0]
    assert inner[1, 1] > 0


def test_inner_products_are_exactly_symmetric():
    Bs, As = _factors(2, 40, 30, [5, 7, 3])
    inner = inner_products(Bs, As, [0.3, 1.1, -0.9])
    assert torch.equal(inner, inner.T)


def _plan(name: str, present: list[int]) -> ModulePlan:
    return ModulePlan(name, "linear", (4, 4), (4, 4), [(i, None) for i in present])


def _gram(vectors: list[list[float]]) -> torch.Tensor:
    v = torch.tensor(vectors, dtype=torch.float64)
    return v @ v.T


def test_report_names_opposed_pairs_a_dominant_source_zero_updates_and_lone_modules():
    plans = [_plan("m.0", [0, 1, 2, 3]), _plan("m.1", [0])]
    inners = [_gram([[1.0, 0.0], [-1.0, 0.1], [0.0, 50.0], [0.0, 0.0]]), _gram([[2.0, 0.0]])]
    labels = ["a@1", "b@1", "c@1", "z@1"]
    result = report(labels, [1.0, -1.0, 1.0, 0.0], plans, inners)
    json.dumps(result, allow_nan=False)
    summary = result["summary"]
    assert [p["sources"] for p in summary["opposed"]] == [["a@1", "b@1"]]
    assert summary["opposed"][0]["modules_opposed"] == 1
    assert [d["source"] for d in summary["dominant"]] == ["c@1"]
    assert summary["zero"] == ["z@1"]
    assert summary["only_in"] == [{"source": "a@1", "modules": ["m.1"]}]
    assert any("negative" in text for text in summary["findings"])
    assert result["cosine"][3] == [None] * 4 and result["sources"][3]["norm"] == 0.0
    assert result["modules"][1]["norms"] == [2.0, None, None, None]
    assert result["modules"][1]["cosine"][0] == [1.0, None, None, None]


def test_overall_figures_sum_the_modules_inner_products():
    plans = [_plan("m.0", [0, 1]), _plan("m.1", [1, 0])]
    first, second = _gram([[1.0, 2.0], [2.0, -1.0]]), _gram([[0.0, 3.0], [1.0, 1.0]])
    result = report(["a", "b"], [1.0, 1.0], plans, [first, second])
    # The second plan lists source 1 first: its matrix is in that order.
    total = first + second.flip(0, 1)
    assert result["sources"][0]["norm"] == pytest.approx(float(total[0, 0]) ** 0.5)
    assert result["cosine"][0][1] == pytest.approx(float(total[0, 1] / (total[0, 0] * total[1, 1]) ** 0.5))
    assert result["summary"]["merged_norm"] == pytest.approx(float(total.sum()) ** 0.5)


def test_inner_products_by_small_chunks_of_rows_equal_the_dense_reference(monkeypatch):
    from hub.merge import analyze

    monkeypatch.setattr(analyze, "CHUNK_BYTES", 8 * 7 * 3)  # 3 rows of the 7 stacked columns a chunk
    Bs, As = _factors(3, 50, 41, [3, 4], torch.float16)
    coefs = [1.5, -0.5]
    torch.testing.assert_close(inner_products(Bs, As, coefs), _dense_inner(Bs, As, coefs), rtol=1e-12, atol=0)
