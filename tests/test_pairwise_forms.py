"""The pairwise-form protocol: one validation for grids and graphs, the chain-form registry,
fast paths named by the form, and the ``validate_args`` switch."""

from __future__ import annotations

import itertools

import pytest
import torch

import crfkit
from crfkit.decomposition.chains import (
    ChainPairwise,
    DenseChainPairwise,
    TruncatedLinearChainPairwise,
    WeightedChainPairwise,
)
from crfkit.nn import DualDecompositionCRF
from crfkit.ops.chain import chain_marginals, chain_marginals_reference

f64 = torch.float64
EDGES = torch.tensor([[0, 1], [1, 2], [2, 3]])


@pytest.mark.parametrize(
    "form",
    [crfkit.Potts(float("nan")), crfkit.Potts(float("inf")), crfkit.TruncatedLinear(float("-inf"), 2.0)],
    ids=["potts-nan", "potts-inf", "tl-neg-inf"],
)
def test_graph_refuses_non_finite_scalar_weights(form):
    with pytest.raises(ValueError, match="finite"):
        crfkit.GraphMRF(torch.randn(4, 3, dtype=f64), EDGES, form)


def test_bare_tuple_of_wrong_length_is_refused():
    table = torch.randn(3, 3, dtype=f64)
    with pytest.raises(TypeError, match="pair"):
        crfkit.GraphMRF(torch.randn(4, 3, dtype=f64), EDGES, (torch.ones(3, dtype=f64), table, table))


def test_bare_pair_means_weighted_table():
    """``(weight, table)`` scores ``weight[e] * table[a, c]``: checked by enumeration."""
    gen = torch.Generator().manual_seed(0)
    unary = torch.randn(4, 3, dtype=f64, generator=gen)
    w, table = torch.rand(3, dtype=f64, generator=gen), torch.randn(3, 3, dtype=f64, generator=gen)
    mrf = crfkit.GraphMRF(unary, EDGES, (w, table))
    assert isinstance(mrf.term, crfkit.WeightedTable)
    for lab in itertools.product(range(3), repeat=4):
        x = torch.tensor(lab)
        want = sum(unary[i, x[i]] for i in range(4)) + sum(w[e] * table[x[i], x[j]] for e, (i, j) in enumerate(EDGES))
        assert torch.allclose(mrf.score(x), want)


def test_chain_form_registry():
    t = torch.randn(2, 3, 4, 4)
    pw = ChainPairwise("dense", tables=t)
    assert type(pw) is DenseChainPairwise and pw.kind == "dense"
    assert type(ChainPairwise("weighted", weight=torch.ones(2, 3), tables=t[:, 0])) is WeightedChainPairwise
    sub = pw.select(torch.tensor([1]))
    assert type(sub) is DenseChainPairwise and torch.equal(sub.tables, t[1:])
    with pytest.raises(ValueError, match="kind"):
        ChainPairwise("sparse", tables=t)


@pytest.mark.parametrize(
    "weight_sign, gamma, truncation, want",
    [(1, 0.0, 2.0, "distance transform"), (1, 0.5, 1.0, "Potts closed form"), (1, 0.5, 2.0, None),
     (-1, 0.0, 2.0, None), (-1, 0.5, 1.0, None)],
)
def test_fast_path_named_by_the_form(weight_sign, gamma, truncation, want):
    pw = TruncatedLinearChainPairwise(weight=weight_sign * torch.rand(3, 4) + weight_sign * 0.1, truncation=truncation)
    assert pw.fast_path(gamma) == want
    assert pw.fast_path(gamma, allow_sync=False) is None  # sign unknown and no host read: exact tables
    flagged = TruncatedLinearChainPairwise(weight=pw.weight, truncation=truncation, nonneg=weight_sign > 0)
    assert flagged.fast_path(gamma, allow_sync=False) == want


def test_model_decides_the_sign_once():
    w = torch.rand(1, 3, 3, dtype=f64)
    crf = crfkit.GridCRF(torch.randn(1, 2, 3, 3, dtype=f64), [crfkit.Potts(w), crfkit.Potts(-0.5)], ((0, 1), (1, 0)))
    assert [t.nonneg for t in crf.terms] == [True, False]
    lazy = crfkit.GridCRF(crf.unary, [crfkit.Potts(w), crfkit.Potts(-0.5)], ((0, 1), (1, 0)), validate_args=False)
    assert [t.nonneg for t in lazy.terms] == [None, False]


@pytest.mark.parametrize("gamma", [0.0, 0.7])
@pytest.mark.parametrize("truncation", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("validate", [True, False])
def test_truncated_linear_paths_match_reference(gamma, truncation, validate):
    """Fast path (validate: sign read on the host) and exact path (no sync) against the reference,
    values and gradients, including a truncation below 1 (a scaled Potts model)."""
    gen = torch.Generator().manual_seed(3)
    C, n, L = 3, 5, 4
    u = torch.randn(C, n, L, dtype=f64, generator=gen, requires_grad=True)
    w = torch.rand(C, n - 1, dtype=f64, generator=gen).requires_grad_()
    lengths = torch.tensor([5, 3, 1])
    pw = TruncatedLinearChainPairwise(weight=w, truncation=truncation)
    m, v = chain_marginals(u, pw, lengths, gamma, implementation="torch", validate_args=validate)
    mr, vr = chain_marginals_reference(u, pw, lengths, gamma)
    assert torch.allclose(m, mr, atol=1e-9) and torch.allclose(v, vr, atol=1e-9)
    up = torch.randn(C, n, L, dtype=f64, generator=gen)
    g = torch.autograd.grad((m * up).sum() + v.sum(), (u, w))
    gr = torch.autograd.grad((mr * up).sum() + vr.sum(), (u, w))
    for a, b in zip(g, gr):
        assert torch.allclose(a, b, atol=1e-7)


def test_layer_validate_args_off_same_output_and_no_value_checks():
    gen = torch.Generator().manual_seed(5)
    unary = torch.randn(2, 3, 4, 4, dtype=f64, generator=gen)
    pairwise = [crfkit.Potts(torch.rand(2, 4, 4, dtype=f64, generator=gen)), torch.randn(3, 3, dtype=f64)]
    offsets = ((0, 1), (1, 0))
    on = DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets)(unary, pairwise)
    off = DualDecompositionCRF(num_iters=3, gamma=1.0, offsets=offsets, validate_args=False)(unary, pairwise)
    assert torch.allclose(on, off, atol=1e-10)
    bad = unary.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        DualDecompositionCRF(num_iters=2, offsets=offsets)(bad, pairwise)
    DualDecompositionCRF(num_iters=2, offsets=offsets, validate_args=False)(bad, pairwise)  # not checked


@pytest.mark.parametrize("step", ["fast", 0.0, -1.0, float("inf"), 1e3])
def test_layer_refuses_bad_step_at_construction(step):
    with pytest.raises(ValueError, match="step"):
        DualDecompositionCRF(step=step)


def test_solve_map_validate_args_off_same_result():
    gen = torch.Generator().manual_seed(7)
    crf = crfkit.GridCRF(
        torch.randn(1, 3, 3, 3, dtype=f64, generator=gen),
        [crfkit.TruncatedLinear(torch.rand(1, 3, 3, dtype=f64, generator=gen), 2.0), torch.randn(3, 3, dtype=f64)],
        ((0, 1), (1, 0)),
    )
    a = crfkit.solve_map(crf, iters=60)
    b = crfkit.solve_map(crf, iters=60, validate_args=False)
    assert torch.equal(a.labels, b.labels)
    assert torch.allclose(a.dual, b.dual, rtol=1e-9) and torch.allclose(a.primal, b.primal)
    # independent truth: enumeration of the 3^9 labellings bounds the result
    best = max(crf.score(torch.tensor(x).view(1, 3, 3)).item() for x in itertools.product(range(3), repeat=9))
    assert a.primal.item() <= best + 1e-9 <= a.dual.item() + 2e-9
