"""Models: ``GridCRF.score`` against a direct sum, pairwise forms against full tables,
conversions to edge lists / ``GraphMRF``, and the contract's attributes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given

import crfkit
from helpers import (
    FORMS,
    all_scores,
    direct_score,
    grid_edges,
    grid_specs,
    random_spec,
    spec_tables,
    spec_to_crf,
)


def _random_labels(rng, spec, count=1):
    B, L, H, W = spec.shape
    return [rng.integers(0, L, size=(B, H, W)) for _ in range(count)]


@given(spec=grid_specs())
def test_score_equals_direct_sum(spec):
    crf = spec_to_crf(spec)
    rng = np.random.default_rng(0)
    for labels in _random_labels(rng, spec, 4):
        got = crf.score(torch.as_tensor(labels)).numpy()
        np.testing.assert_allclose(got, direct_score(spec, labels), rtol=1e-12, atol=1e-12)


@given(spec=grid_specs(max_hw=2, max_labels=3, max_batch=1))
def test_score_every_labelling(spec):
    """All labellings at once (batched copies of the model) against the vectorised direct sum."""
    B, L, H, W = spec.shape
    scores, X = all_scores(spec)
    M = X.shape[0]
    dense = spec_tables(spec)
    crf = crfkit.GridCRF(
        torch.as_tensor(spec.unary).expand(M, L, H, W).contiguous(),
        [torch.as_tensor(t).expand(M, L, L, H, W).contiguous() for t in dense],
        offsets=spec.offsets,
    )
    got = crf.score(torch.as_tensor(X)).numpy()
    np.testing.assert_allclose(got, scores[0], rtol=1e-12, atol=1e-12)


@given(spec=grid_specs())
def test_pairwise_forms_score_like_full_tables(spec):
    """Every form (shared, weighted, Potts, truncated linear) scores like its full tables."""
    crf = spec_to_crf(spec)
    crf_dense = spec_to_crf(spec, dense=True)
    rng = np.random.default_rng(1)
    for labels in _random_labels(rng, spec, 4):
        lab = torch.as_tensor(labels)
        torch.testing.assert_close(crf.score(lab), crf_dense.score(lab), rtol=1e-12, atol=1e-12)


@given(spec=grid_specs())
def test_stacked_pairwise_tensor_equals_list(spec):
    """A single ``[B, K, L, L, H, W]`` tensor means per-edge tables for all offsets."""
    tables = np.stack(spec_tables(spec), axis=1)
    crf = crfkit.GridCRF(torch.as_tensor(spec.unary), torch.as_tensor(tables), offsets=spec.offsets)
    ref = spec_to_crf(spec)
    labels = torch.as_tensor(_random_labels(np.random.default_rng(2), spec)[0])
    torch.testing.assert_close(crf.score(labels), ref.score(labels), rtol=1e-12, atol=1e-12)


@given(spec=grid_specs())
def test_edge_list_and_graph_mrf(spec):
    """``edge_list`` holds every edge once with its table; ``to_graph_mrf`` scores the same."""
    B, L, H, W = spec.shape
    crf = spec_to_crf(spec)
    edges, tables = crf.edge_list()
    expected = grid_edges(H, W, spec.offsets)
    assert edges.shape == (len(expected), 2)
    assert tables.shape == (B, len(expected), L, L)
    dense = spec_tables(spec)
    want = {(i, j): dense[k][:, :, :, y, x] for k, y, x, i, j in expected}
    assert len(want) == len(expected)  # offsets are distinct, so are the node pairs
    for e, (i, j) in enumerate(edges.tolist()):
        np.testing.assert_allclose(tables[:, e].numpy(), want[(i, j)], rtol=1e-12, atol=1e-12)
    mrf = crf.to_graph_mrf()
    labels = _random_labels(np.random.default_rng(3), spec)[0]
    torch.testing.assert_close(
        mrf.score(torch.as_tensor(labels.reshape(B, H * W))), crf.score(torch.as_tensor(labels))
    )


def test_default_offsets_are_the_papers():
    assert tuple(map(tuple, crfkit.DEFAULT_OFFSETS)) == ((0, 1), (1, 0), (0, 2), (2, 0))
    rng = np.random.default_rng(4)
    spec = random_spec(rng, 1, 2, 3, 4)
    crf = crfkit.GridCRF(
        torch.as_tensor(spec.unary), [torch.as_tensor(t) for t in spec_tables(spec)]
    )
    assert crf.offsets == crfkit.DEFAULT_OFFSETS


def test_attributes_are_the_constructor_arguments():
    rng = np.random.default_rng(5)
    spec = random_spec(rng, 2, 3, 3, 3, offsets=((0, 1), (1, 1)), forms=["weighted", "potts"])
    unary = torch.as_tensor(spec.unary)
    pairwise = [
        (torch.as_tensor(spec.terms[0][1]), torch.as_tensor(spec.terms[0][2])),
        crfkit.Potts(torch.as_tensor(spec.terms[1][1])),
    ]
    crf = crfkit.GridCRF(unary, pairwise, offsets=((0, 1), (1, 1)))
    assert crf.unary is unary
    assert crf.pairwise is pairwise
    assert tuple(crf.offsets) == ((0, 1), (1, 1))


def test_weighted_table_is_not_expanded():
    """The weighted form keeps ``weight [B, H, W]`` and ``table [L, L]``; nothing of size
    ``L² H W`` is stored by the model."""
    B, L, H, W = 2, 5, 4, 4
    weight = torch.rand(B, H, W, dtype=torch.float64)
    table = torch.randn(L, L, dtype=torch.float64)
    crf = crfkit.GridCRF(
        torch.randn(B, L, H, W, dtype=torch.float64), [(weight, table)], offsets=((0, 1),)
    )
    term = crf.terms[0]
    assert isinstance(term, crfkit.WeightedTable)
    assert term.weight.shape == (B, H, W) and term.table.shape == (L, L)
    for t in term.tensors():
        assert t.numel() < B * L * L * H * W


@pytest.mark.parametrize("form", FORMS)
def test_score_is_differentiable(form):
    """``score`` is linear in the potentials: its gradient is the labelling's indicator."""
    rng = np.random.default_rng(6)
    spec = random_spec(rng, 1, 3, 2, 3, offsets=((0, 1),), forms=[form])
    crf = spec_to_crf(spec)
    unary = crf.unary.clone().requires_grad_(True)
    crf2 = crfkit.GridCRF(unary, crf.pairwise, offsets=crf.offsets)
    labels = torch.as_tensor(rng.integers(0, 3, size=(1, 2, 3)))
    crf2.score(labels).sum().backward()
    onehot = torch.nn.functional.one_hot(labels, 3).permute(0, 3, 1, 2).to(torch.float64)
    torch.testing.assert_close(unary.grad, onehot)
