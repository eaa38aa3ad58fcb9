"""Grid decomposition into chains: every edge in exactly one chain, every node in one chain per
offset, chain potentials gathered right (the chains' scores add up to the model's score)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from crfkit.decomposition import grid_chain_problem, grid_chains
from helpers import OFFSET_POOL, grid_chain_lists, grid_edges, grid_specs, spec_to_crf


def _chains_of(nodes: torch.Tensor, lengths: torch.Tensor) -> list[list[int]]:
    out = []
    for row, m in zip(nodes.tolist(), lengths.tolist()):
        assert all(v >= 0 for v in row[:m])
        assert all(v == -1 for v in row[m:]), "padding must be -1"
        out.append(row[:m])
    return out


@given(
    H=st.integers(1, 7),
    W=st.integers(1, 7),
    offset=st.sampled_from(OFFSET_POOL + ((3, -2), (0, 3))),
)
def test_grid_chains_cover_edges_and_nodes(H, W, offset):
    nodes, lengths = grid_chains(H, W, offset)
    assert nodes.dtype == torch.long and lengths.dtype == torch.long
    assert nodes.shape[0] == lengths.shape[0]
    assert int(lengths.min()) >= 1 and int(lengths.max()) == nodes.shape[1]
    chains = _chains_of(nodes, lengths)
    dy, dx = offset
    # consecutive positions differ by the offset
    for c in chains:
        for p, q in zip(c[:-1], c[1:]):
            (y1, x1), (y2, x2) = divmod(p, W), divmod(q, W)
            assert (y2 - y1, x2 - x1) == (dy, dx)
    # every node exactly once
    count = Counter(v for c in chains for v in c)
    assert sorted(count) == list(range(H * W)) and set(count.values()) == {1}
    # every edge of the offset exactly once
    chain_edges = Counter((p, q) for c in chains for p, q in zip(c[:-1], c[1:]))
    want = {(i, j) for _, _, _, i, j in grid_edges(H, W, [offset])}
    assert set(chain_edges) == want and set(chain_edges.values()) <= {1}
    # the same chains as the independent construction (order free)
    assert sorted(map(tuple, chains)) == sorted(map(tuple, grid_chain_lists(H, W, offset)))


@given(spec=grid_specs())
def test_chain_problem_scores_add_up(spec):
    """For any labelling, Σ_nodes unary + Σ_groups Σ_chains pairwise along the chain equals
    ``crf.score``: the chains hold every edge once, with its potential."""
    B, L, H, W = spec.shape
    crf = spec_to_crf(spec)
    problem = grid_chain_problem(crf)
    assert problem.batch_size == B and problem.num_labels == L and problem.num_nodes == B * H * W
    assert len(problem.groups) == len(spec.offsets)
    torch.testing.assert_close(problem.unary, crf.unary.permute(0, 2, 3, 1).reshape(B * H * W, L))
    torch.testing.assert_close(problem.node_batch, torch.arange(B).repeat_interleave(H * W))
    rng = np.random.default_rng(0)
    for _ in range(3):
        labels = torch.as_tensor(rng.integers(0, L, size=(B, H, W)))
        flat = labels.reshape(-1)
        total = problem.unary.gather(1, flat[:, None]).squeeze(1)
        total = torch.zeros(B, dtype=total.dtype).index_add_(0, problem.node_batch, total)
        edge_count = 0
        for g in problem.groups:
            if g.max_length < 2:
                continue
            left = g.nodes[:, :-1]
            right = g.nodes[:, 1:]
            ok = right >= 0
            s = g.pairwise.score(flat[left.clamp(min=0)], flat[right.clamp(min=0)]) * ok
            owner = problem.node_batch[g.nodes[:, 0]]
            total = total.index_add(0, owner, s.sum(1))
            edge_count += int(ok.sum())
        assert edge_count == B * len(grid_edges(H, W, spec.offsets))
        torch.testing.assert_close(total, crf.score(labels), rtol=1e-12, atol=1e-12)


@given(spec=grid_specs())
def test_chain_problem_nodes_once_per_offset(spec):
    B, L, H, W = spec.shape
    problem = grid_chain_problem(spec_to_crf(spec))
    for g in problem.groups:
        assert g.num_chains == g.lengths.shape[0] == g.pairwise.num_chains()
        chains = _chains_of(g.nodes, g.lengths)
        count = Counter(v for c in chains for v in c)
        assert sorted(count) == list(range(B * H * W)) and set(count.values()) == {1}
        for c in chains:  # a chain never leaves its batch element
            assert len({v // (H * W) for v in c}) == 1


@pytest.mark.parametrize("form", ["dense", "shared", "weighted", "potts", "tl"])
def test_chain_problem_is_differentiable(form):
    """Chain potentials are gathered from the model's tensors: the chains' total score of a
    labelling has the same gradient with respect to every model tensor as ``crf.score``."""
    from crfkit import GridCRF
    from helpers import crf_term, random_spec

    rng = np.random.default_rng(1)
    spec = random_spec(rng, 2, 3, 3, 3, offsets=((0, 1), (1, -1)), forms=[form, "dense"])
    B, L, H, W = spec.shape

    def build():
        unary = torch.as_tensor(spec.unary).clone().requires_grad_(True)
        pairwise = [crf_term(t) for t in spec.terms]
        leaves = [unary]
        for p in pairwise:
            ts = (
                [p]
                if isinstance(p, torch.Tensor)
                else list(p)
                if isinstance(p, tuple)
                else [p.weight]
            )
            for t in ts:
                t.requires_grad_(True)
                leaves.append(t)
        return GridCRF(unary, pairwise, offsets=spec.offsets), leaves

    labels = torch.as_tensor(rng.integers(0, L, size=(B, H, W)))
    crf, leaves = build()
    want = torch.autograd.grad(crf.score(labels).sum(), leaves)
    crf, leaves = build()
    problem = grid_chain_problem(crf)
    flat = labels.reshape(-1)
    total = problem.unary.gather(1, flat[:, None]).sum()
    for g in problem.groups:
        ok = g.nodes[:, 1:] >= 0
        s = g.pairwise.score(flat[g.nodes[:, :-1].clamp(min=0)], flat[g.nodes[:, 1:].clamp(min=0)])
        total = total + (s * ok).sum()
    got = torch.autograd.grad(total, leaves)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
