"""Exact references: enumeration against brute force, two-pass forests against enumeration."""

import itertools
import math

import pytest
import torch

import crfkit
from crfkit.inference.exact import enumerate_mrf, is_forest, tree_max_product, tree_sum_product


def random_tree(n, gen):
    parents = [int(torch.randint(0, i, (1,), generator=gen)) for i in range(1, n)]
    return torch.tensor(
        [
            [p, i] if torch.rand(1, generator=gen) < 0.5 else [i, p]
            for i, p in zip(range(1, n), parents)
        ],
        dtype=torch.long,
    ).reshape(-1, 2)


def random_mrf(edges, n, L, gen, batch=None, scale=1.0):
    lead = () if batch is None else (batch,)
    un = torch.randn(*lead, n, L, generator=gen, dtype=torch.float64) * scale
    pw = torch.randn(*lead, edges.shape[0], L, L, generator=gen, dtype=torch.float64) * scale
    return crfkit.GraphMRF(un, edges, pw)


def brute(mrf):
    n, L = mrf.num_nodes, mrf.num_labels
    xs = torch.tensor(list(itertools.product(range(L), repeat=n)), dtype=torch.long)
    s = torch.stack([mrf.score(x) for x in xs])
    return xs, s


def test_enumeration_matches_python_loop():
    gen = torch.Generator().manual_seed(0)
    edges = torch.tensor([[0, 1], [1, 2], [2, 0], [2, 3]])
    mrf = random_mrf(edges, 4, 3, gen)
    xs, s = brute(mrf)
    r = enumerate_mrf(mrf)
    assert torch.allclose(r.log_partition, torch.logsumexp(s, 0))
    p = torch.softmax(s, 0)
    for i in range(4):
        for a in range(3):
            assert math.isclose(float(r.unary[i, a]), float(p[xs[:, i] == a].sum()), abs_tol=1e-12)
    for e, (i, j) in enumerate(edges.tolist()):
        for a in range(3):
            for c in range(3):
                m = (xs[:, i] == a) & (xs[:, j] == c)
                assert math.isclose(float(r.pairwise[e, a, c]), float(p[m].sum()), abs_tol=1e-12)
    assert float(r.max_score) == pytest.approx(float(s.max()))
    assert float(mrf.score(r.labels)) == pytest.approx(float(s.max()))


def test_enumeration_refuses_large_models():
    edges = torch.tensor([[i, i + 1] for i in range(29)])
    mrf = crfkit.GraphMRF(
        torch.zeros(30, 2, dtype=torch.float64), edges, torch.zeros(29, 2, 2, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="labellings"):
        enumerate_mrf(mrf)


@pytest.mark.parametrize("seed", range(4))
def test_tree_passes_match_enumeration(seed):
    gen = torch.Generator().manual_seed(seed)
    n, L = 7, 3
    edges = random_tree(n, gen)[: 5 if seed % 2 else None]  # seed odd: a forest of 2 trees
    mrf = random_mrf(edges, n, L, gen, batch=2)
    assert is_forest(mrf)
    ref = enumerate_mrf(mrf)
    t = tree_sum_product(mrf)
    assert torch.allclose(t.log_partition, ref.log_partition, atol=1e-10)
    assert torch.allclose(t.unary, ref.unary, atol=1e-10)
    assert torch.allclose(t.pairwise, ref.pairwise, atol=1e-10)
    m = tree_max_product(mrf)
    assert torch.allclose(m.log_partition, ref.max_score, atol=1e-10)
    assert torch.allclose(mrf.score(m.labels), ref.max_score, atol=1e-10)
    # max-marginals: max over labellings with x_i = a
    xs, _ = brute(crfkit.GraphMRF(mrf.unary[0], mrf.edges, mrf.pairwise[0]))
    s0 = torch.stack(
        [crfkit.GraphMRF(mrf.unary[0], mrf.edges, mrf.pairwise[0]).score(x) for x in xs]
    )
    for i in range(n):
        for a in range(L):
            assert float(m.unary[0, i, a]) == pytest.approx(
                float(s0[xs[:, i] == a].max()), abs=1e-10
            )


def test_tree_refuses_cycles():
    edges = torch.tensor([[0, 1], [1, 2], [2, 0]])
    mrf = crfkit.GraphMRF(
        torch.zeros(3, 2, dtype=torch.float64), edges, torch.zeros(3, 2, 2, dtype=torch.float64)
    )
    assert not is_forest(mrf)
    with pytest.raises(ValueError, match="cycle|forest"):
        tree_sum_product(mrf)


def test_marginals_exact_refuses_large_loopy():
    n = 25
    edges = torch.tensor([[i, (i + 1) % n] for i in range(n)])
    mrf = crfkit.GraphMRF(
        torch.zeros(n, 2, dtype=torch.float64), edges, torch.zeros(n, 2, 2, dtype=torch.float64)
    )
    from crfkit.inference import marginals

    with pytest.raises(ValueError, match="enumerate"):
        marginals(mrf, method="exact")
