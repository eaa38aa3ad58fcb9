"""The local-polytope LP (HiGHS) and the enumeration reference of ``crfkit.inference.lp``.

Independent truths: enumeration (score of every labelling by a direct sum written here),
LP tightness on trees, the LP's own constraints checked on its solution, a closed-form
frustrated cycle, and the test helpers' LP (built row by row, independently).
"""

from __future__ import annotations

import itertools

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import crfkit
from crfkit.inference.lp import (
    exact_map_bruteforce,
    local_polytope_lp,
    lp_relaxation,
)

pytest.importorskip("highspy")


def direct_max(unary: np.ndarray, edges: np.ndarray, tables: np.ndarray) -> float:
    N, L = unary.shape
    best = -np.inf
    for x in itertools.product(range(L), repeat=N):
        s = sum(unary[i, x[i]] for i in range(N))
        s += sum(tables[e, x[i], x[j]] for e, (i, j) in enumerate(edges))
        best = max(best, s)
    return float(best)


def random_model(seed: int, N: int, L: int, kind: str):
    rng = np.random.default_rng(seed)
    if kind == "tree":
        g = nx.random_labeled_tree(N, seed=seed)
    elif kind == "cycle":
        g = nx.cycle_graph(N)
    else:
        g = nx.gnp_random_graph(N, 0.5, seed=seed)
    edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    unary = rng.normal(size=(N, L))
    tables = rng.normal(size=(len(edges), L, L)) * 1.5
    return unary, edges, tables


def check_constraints(sol, edges, N, L, atol=1e-7):
    mu, mue = sol.unary_marginals.numpy(), sol.pairwise_marginals.numpy()
    assert mu.shape == (N, L) and mue.shape == (len(edges), L, L)
    assert (mu >= -atol).all() and (mue >= -atol).all()
    np.testing.assert_allclose(mu.sum(1), 1.0, atol=atol)
    for e, (i, j) in enumerate(edges):
        np.testing.assert_allclose(mue[e].sum(1), mu[i], atol=atol)
        np.testing.assert_allclose(mue[e].sum(0), mu[j], atol=atol)


@given(
    seed=st.integers(0, 10_000),
    N=st.integers(2, 6),
    L=st.integers(2, 3),
    kind=st.sampled_from(["tree", "gnp", "cycle"]),
)
def test_lp_bounds_the_map_and_is_tight_on_trees(seed, N, L, kind):
    unary, edges, tables = random_model(seed, N, L, kind)
    sol = local_polytope_lp(unary, edges, tables)
    best = direct_max(unary, edges, tables)
    check_constraints(sol, edges, N, L)
    # the value is the objective at the returned point
    val = (unary * sol.unary_marginals.numpy()).sum() + (
        tables * sol.pairwise_marginals.numpy()
    ).sum()
    assert abs(val - sol.value) <= 1e-9 * max(1.0, abs(val))
    assert sol.value >= best - 1e-7
    if kind == "tree":
        assert sol.value == pytest.approx(best, abs=1e-7)
    exact = exact_map_bruteforce(unary, edges, tables)
    assert exact.value == pytest.approx(best, abs=1e-12)
    lab = exact.labels.numpy()
    direct = unary[np.arange(N), lab].sum() + sum(
        tables[e, lab[i], lab[j]] for e, (i, j) in enumerate(edges)
    )
    assert direct == pytest.approx(best, abs=1e-12)


def test_frustrated_cycle_lp_above_map():
    # three nodes, two labels, every edge rewards disagreement: a labelling satisfies at most two
    # edges (MAP = 1 - 1 + 1 = 1), the LP puts 1/2 on each disagreeing pair (LP = 3).
    edges = np.array([[0, 1], [1, 2], [2, 0]])
    t = np.array([[-1.0, 1.0], [1.0, -1.0]])
    tables = np.stack([t, t, t])
    unary = np.zeros((3, 2))
    sol = local_polytope_lp(unary, edges, tables)
    assert sol.value == pytest.approx(3.0, abs=1e-8)
    assert exact_map_bruteforce(unary, edges, tables).value == pytest.approx(1.0)
    np.testing.assert_allclose(sol.unary_marginals.numpy(), 0.5, atol=1e-7)
    for solver in ("simplex", "ipm"):
        assert local_polytope_lp(unary, edges, tables, solver=solver).value == pytest.approx(
            3.0, abs=1e-8
        )


def test_agrees_with_helpers_lp():
    helpers = pytest.importorskip("helpers")
    for seed in range(3):
        unary, edges, tables = random_model(seed, 6, 3, "gnp")
        ref = helpers.local_polytope_lp(unary, edges, tables)
        assert local_polytope_lp(unary, edges, tables).value == pytest.approx(ref, abs=1e-7)


def test_lp_relaxation_of_models():
    g = torch.Generator().manual_seed(0)
    crf = crfkit.GridCRF(
        torch.randn(2, 2, 3, 3, generator=g, dtype=torch.float64),
        [torch.randn(2, 2, 2, 3, 3, generator=g, dtype=torch.float64) for _ in range(2)],
        offsets=((0, 1), (1, 0)),
    )
    sols = lp_relaxation(crf)
    mrf = crf.to_graph_mrf()
    assert len(sols) == 2
    for b, s in enumerate(sols):
        u, e, t = mrf.unary[b].numpy(), mrf.edges.numpy(), mrf.edge_tables()[b].numpy()
        assert s.value >= direct_max(u, e, t) - 1e-7


def test_errors():
    unary, edges, tables = random_model(0, 3, 2, "tree")
    with pytest.raises(ValueError, match="L\\*\\*N"):
        exact_map_bruteforce(
            np.zeros((30, 2)), np.zeros((0, 2), dtype=np.int64), np.zeros((0, 2, 2))
        )
    with pytest.raises(ValueError, match="tables of shape"):
        local_polytope_lp(unary, edges, tables[:, :1])
    with pytest.raises(TypeError):
        local_polytope_lp(unary.tolist(), edges, tables)
    with pytest.raises(ValueError, match="finite"):
        local_polytope_lp(np.full((3, 2), np.nan), edges, tables)
    with pytest.raises(ValueError, match="solver"):
        local_polytope_lp(unary, edges, tables, solver="magic")
