"""General graphs cut into chains (path cover) and dual decomposition on them.

References: the graph's own edge list (cover checks), ``GraphMRF.score`` (chain scores sum
to the model score), enumeration and the local-polytope LP (``crfkit.inference.lp``, HiGHS)
for ``solve_map``, and the same model solved as a ``GridCRF``.
"""

from __future__ import annotations

import networkx as nx
import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import crfkit
from crfkit.decomposition.graph import (
    DEFAULT_MAX_LENGTH,
    graph_chain_problem,
    graph_chains,
    path_cover,
)
from crfkit.models.pairwise import Potts, TruncatedLinear


# ------------------------------------------------------------------------------ graphs
def random_graph(seed: int, n: int, kind: str) -> np.ndarray:
    """Edges ``[E, 2]`` of a random graph (orientation random, so chains must flip some)."""
    rng = np.random.default_rng(seed)
    if kind == "ba":
        g = nx.barabasi_albert_graph(n, 2, seed=seed)
    elif kind == "gnp":
        g = nx.gnp_random_graph(n, 0.3, seed=seed)
    elif kind == "tree":
        g = nx.random_labeled_tree(n, seed=seed)
    elif kind == "grid":
        g = nx.convert_node_labels_to_integers(nx.grid_2d_graph(3, max(n // 3, 1)))
    else:
        raise ValueError(kind)
    e = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    flip = rng.random(len(e)) < 0.5
    e[flip] = e[flip][:, ::-1]
    return e


def check_cover(N: int, edges: np.ndarray, cover) -> None:
    E = len(edges)
    seen = np.zeros(E, dtype=np.int64)
    node_count = np.zeros(N, dtype=np.int64)
    for c in range(cover.num_chains):
        nodes, eids, flips = cover.chain(c)
        assert len(nodes) >= 1 and len(eids) == len(nodes) - 1
        assert len(set(nodes.tolist())) == len(nodes), "a chain visits a node twice"
        node_count[nodes] += 1
        for k, (e, f) in enumerate(zip(eids, flips)):
            seen[e] += 1
            a, b = (edges[e, 1], edges[e, 0]) if f else (edges[e, 0], edges[e, 1])
            assert (a, b) == (nodes[k], nodes[k + 1]), "chain edge does not join consecutive nodes"
    assert (seen == 1).all(), "every edge must lie in exactly one chain"
    assert (node_count >= 1).all(), "every node must lie in a chain"


@pytest.mark.parametrize("kind", ["ba", "gnp", "tree", "grid"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_cover_covers_every_edge_once(kind, seed):
    N = 15
    edges = random_graph(seed, N, kind)
    N = max(N, int(edges.max()) + 1)
    check_cover(N, edges, path_cover(N, edges))


@given(
    n=st.integers(1, 12),
    p=st.floats(0.0, 1.0),
    seed=st.integers(0, 10_000),
    directed=st.booleans(),
    max_length=st.sampled_from([None, 2, 3, 5]),
)
def test_path_cover_hypothesis(n, p, seed, directed, max_length):
    g = nx.gnp_random_graph(n, p, seed=seed)
    edges = np.array(list(g.edges()), dtype=np.int64).reshape(-1, 2)
    rng = np.random.default_rng(seed)
    flip = rng.random(len(edges)) < 0.5
    edges[flip] = edges[flip][:, ::-1]
    cover = path_cover(n, edges, directed=directed, max_length=max_length)
    check_cover(n, edges, cover)
    if directed:
        assert not cover.flipped.any()
    if max_length is not None:
        assert cover.lengths.max() <= max_length


def test_isolated_nodes_and_empty_graph():
    edges = np.array([[0, 1], [1, 2]])
    cover = path_cover(6, edges)
    check_cover(6, edges, cover)
    assert sorted(c for c in range(cover.num_chains) if cover.lengths[c] == 1) != []
    empty = path_cover(4, np.zeros((0, 2), dtype=np.int64))
    check_cover(4, np.zeros((0, 2), dtype=np.int64), empty)
    assert empty.num_chains == 4


def test_long_chains_on_a_path_and_a_cycle():
    # a path graph is covered by one chain (odd-degree ends are taken as starts)
    n = 40
    perm = np.random.default_rng(0).permutation(n)
    edges = np.stack([perm[:-1], perm[1:]], 1)
    assert path_cover(n, edges).num_chains == 1
    # a cycle needs two chains (a chain is a simple path)
    cyc = np.stack([np.arange(n), (np.arange(n) + 1) % n], 1)
    assert path_cover(n, cyc).num_chains == 2


def test_groups_cover_same_chains_with_padding():
    edges = random_graph(3, 60, "ba")
    N = 60
    groups = graph_chains(N, edges, max_groups=3)
    assert 1 <= len(groups) <= 3
    total_nodes = 0
    for g in groups:
        C, n = g.nodes.shape
        valid = torch.arange(n)[None, :] < g.lengths[:, None]
        assert bool(((g.nodes >= 0) == valid).all())
        assert int(g.lengths.max()) == n
        total_nodes += int(g.lengths.sum())
    cover = path_cover(N, edges, max_length=DEFAULT_MAX_LENGTH)
    assert total_nodes == int(cover.lengths.sum())
    assert max(int(g.lengths.max()) for g in groups) <= DEFAULT_MAX_LENGTH


# ------------------------------------------------------------------------------ chain scores
def _chain_score_total(problem, x: torch.Tensor) -> torch.Tensor:
    """Sum of every chain's pairwise scores at labelling ``x [V]`` plus unary (per batch)."""
    V = problem.num_nodes
    total = torch.zeros(problem.batch_size, dtype=problem.unary.dtype)
    total = total.index_add(0, problem.node_batch, problem.unary[torch.arange(V), x])
    for g in problem.groups:
        C, n = g.nodes.shape
        if n < 2:
            continue
        lab = x[g.nodes.clamp(min=0)]
        s = g.pairwise.score(lab[:, :-1], lab[:, 1:])
        valid = torch.arange(n - 1)[None, :] < (g.lengths - 1)[:, None]
        s = torch.where(valid, s, torch.zeros_like(s))
        b = problem.node_batch[g.nodes[:, 0]]
        total = total.index_add(0, b, s.sum(1))
    return total


FORMS = [
    "dense",
    "shared_sym",
    "shared_asym",
    "weighted",
    "weighted_sym",
    "potts",
    "tl",
    "tl_scalar",
]


def make_mrf(
    form: str, N: int, edges: np.ndarray, L: int, B: int | None, seed: int
) -> crfkit.GraphMRF:
    g = torch.Generator().manual_seed(seed)
    E = len(edges)
    lead = (B,) if B else ()
    unary = torch.randn(*lead, N, L, generator=g, dtype=torch.float64)
    w = torch.rand(*lead, E, generator=g, dtype=torch.float64) + 0.1
    table = torch.randn(L, L, generator=g, dtype=torch.float64)
    if form == "dense":
        pw = torch.randn(*lead, E, L, L, generator=g, dtype=torch.float64)
    elif form == "shared_sym":
        pw = table + table.T
    elif form == "shared_asym":
        pw = table
    elif form == "weighted":
        pw = (w, table)
    elif form == "weighted_sym":
        pw = (w, table + table.T)
    elif form == "potts":
        pw = Potts(w)
    elif form == "tl":
        pw = TruncatedLinear(w, 2.0)
    else:
        pw = TruncatedLinear(0.7, 1.5)
    return crfkit.GraphMRF(unary, torch.from_numpy(edges), pw)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("batch", [None, 2])
def test_chain_scores_sum_to_model_score(form, batch):
    N, L = 14, 3
    edges = random_graph(7, N, "ba")
    mrf = make_mrf(form, N, edges, L, batch, seed=11)
    problem = graph_chain_problem(mrf)
    assert problem.batch_size == (batch or 1)
    assert problem.node_shape == ((batch, N) if batch else (N,))
    gen = torch.Generator().manual_seed(3)
    for _ in range(5):
        x = torch.randint(0, L, (batch or 1, N), generator=gen)
        ref = mrf.score(x if batch else x[0]).reshape(-1)
        got = _chain_score_total(problem, x.reshape(-1))
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("form", ["dense", "weighted", "shared_asym", "tl"])
def test_chain_problem_is_differentiable(form):
    """Gradients of the summed chain score w.r.t. the model's tensors equal those of score()."""
    N, L = 10, 3
    edges = random_graph(5, N, "ba")
    mrf = make_mrf(form, N, edges, L, None, seed=2)
    leaves = [mrf.unary] + [t for t in mrf.term.tensors() if isinstance(t, torch.Tensor)]
    leaves = [t.detach().requires_grad_(True) for t in leaves]
    term = mrf.term
    if form == "dense":
        pw = leaves[1]
    elif form in ("weighted",):
        pw = (leaves[1], leaves[2])
    elif form == "shared_asym":
        pw = leaves[1]
    else:
        pw = TruncatedLinear(leaves[1], term.truncation)
    m = crfkit.GraphMRF(leaves[0], mrf.edges, pw)
    x = torch.randint(0, L, (N,), generator=torch.Generator().manual_seed(0))
    ref = torch.autograd.grad(m.score(x), leaves)
    got = torch.autograd.grad(_chain_score_total(graph_chain_problem(m), x).sum(), leaves)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b)


def test_asymmetric_shared_table_stays_cheap_with_directed_walks():
    N, L = 20, 4
    edges = random_graph(1, N, "ba")
    mrf = make_mrf("shared_asym", N, edges, L, None, seed=0)
    problem = graph_chain_problem(mrf)
    assert all(g.pairwise.kind == "weighted" for g in problem.groups if g.nodes.shape[1] > 1)
    undirected = graph_chain_problem(mrf, directed=False)
    x = torch.randint(0, L, (N,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(_chain_score_total(undirected, x), mrf.score(x).reshape(1))


def test_refuses_other_models():
    with pytest.raises(TypeError):
        graph_chain_problem("not a model")
    with pytest.raises(ValueError):
        path_cover(3, np.array([[0, 1]]), max_length=1)


# ------------------------------------------------------------------------------ solve_map
def _solve_map():
    fn = getattr(crfkit, "solve_map", None)
    if fn is None:
        try:
            from crfkit.inference.dual_decomposition import solve_map as fn
        except ImportError:  # pragma: no cover - until the lead's solver lands
            pytest.skip("crfkit.solve_map is not available yet")
    return fn


@pytest.mark.parametrize("kind,seed", [("ba", 0), ("gnp", 1), ("tree", 2), ("ba", 3)])
def test_solve_map_bounds_on_small_graphs(kind, seed):
    from crfkit.inference.lp import exact_map_bruteforce, local_polytope_lp

    solve_map = _solve_map()
    N, L = 9, 3
    edges = random_graph(seed, N, kind)
    N = max(N, int(edges.max()) + 1)
    mrf = make_mrf("dense", N, edges, L, None, seed=seed)
    res = solve_map(mrf, iters=300)
    exact = exact_map_bruteforce(mrf.unary, mrf.edges, mrf.edge_tables())
    lp = local_polytope_lp(mrf.unary, mrf.edges, mrf.edge_tables())
    tol = 1e-7
    assert res.labels.shape == (N,)
    primal, dual = float(res.primal.reshape(-1)[0]), float(res.dual.reshape(-1)[0])
    torch.testing.assert_close(
        mrf.score(res.labels).reshape(-1)[0].item(), primal, rtol=1e-12, atol=1e-12
    )
    assert primal <= exact.value + tol
    assert exact.value <= lp.value + tol
    assert lp.value <= dual + tol
    # the dual approaches the LP optimum
    assert dual - lp.value <= 1e-2 * max(1.0, abs(lp.value))
    if kind == "tree":  # LP tight on trees: the certificate proves the labelling optimal
        assert dual - exact.value <= 1e-3


def test_solve_map_batched_graph_matches_unbatched():
    solve_map = _solve_map()
    N, L, B = 10, 3, 2
    edges = random_graph(4, N, "ba")
    mrf = make_mrf("dense", N, edges, L, B, seed=4)
    res = solve_map(mrf, iters=200)
    assert res.labels.shape == (B, N)
    for b in range(B):
        one = crfkit.GraphMRF(mrf.unary[b], mrf.edges, mrf.pairwise[b])
        r1 = solve_map(one, iters=200)
        from crfkit.inference.lp import local_polytope_lp

        lp = local_polytope_lp(one.unary, one.edges, one.edge_tables()).value
        # both are certificates of the same model: each >= LP, both close to it
        for d in (float(res.dual[b]), float(r1.dual.reshape(-1)[0])):
            assert lp - 1e-7 <= d <= lp + 1e-2 * max(1.0, abs(lp))


@pytest.mark.parametrize(
    "forms",
    [
        ("dense",) * 4,
        ("potts",) * 2,
    ],
)
def test_grid_and_graph_give_the_same_map_dual(forms):
    """The same model as GridCRF and as GraphMRF: both duals are certificates >= the LP optimum
    and both converge to it, so they agree to the tolerance of convergence."""
    from crfkit.inference.lp import local_polytope_lp

    solve_map = _solve_map()
    g = torch.Generator().manual_seed(5)
    B, L, H, W = 1, 3, 4, 4
    offsets = crfkit.DEFAULT_OFFSETS[: len(forms)]
    unary = torch.randn(B, L, H, W, generator=g, dtype=torch.float64)
    pairwise = []
    for f in forms:
        if f == "dense":
            pairwise.append(torch.randn(B, L, L, H, W, generator=g, dtype=torch.float64))
        else:
            pairwise.append(Potts(torch.rand(B, H, W, generator=g, dtype=torch.float64) + 0.2))
    crf = crfkit.GridCRF(unary, pairwise, offsets=offsets)
    mrf = crf.to_graph_mrf()
    r_grid = solve_map(crf, iters=400)
    r_graph = solve_map(mrf, iters=400)
    lp = local_polytope_lp(mrf.unary[0], mrf.edges, mrf.edge_tables()[0]).value
    d_grid, d_graph = float(r_grid.dual[0]), float(r_graph.dual[0])
    tol = 5e-3 * max(1.0, abs(lp))
    assert lp - 1e-7 <= d_grid <= lp + tol
    assert lp - 1e-7 <= d_graph <= lp + tol
    assert abs(d_grid - d_graph) <= tol
    # both labellings are scored by the same model
    torch.testing.assert_close(
        crf.score(r_graph.labels.reshape(B, H, W)), r_graph.primal.reshape(B)
    )


@pytest.mark.parametrize("form", ["weighted", "shared_asym", "tl_scalar"])
def test_solve_map_other_pairwise_forms(form):
    from crfkit.inference.lp import exact_map_bruteforce, local_polytope_lp

    solve_map = _solve_map()
    N, L = 8, 3
    edges = random_graph(6, N, "gnp")
    mrf = make_mrf(form, N, edges, L, None, seed=6)
    res = solve_map(mrf, iters=200)
    tables = mrf.edge_tables()
    exact = exact_map_bruteforce(mrf.unary, mrf.edges, tables).value
    lp = local_polytope_lp(mrf.unary, mrf.edges, tables).value
    primal, dual = float(res.primal.reshape(-1)[0]), float(res.dual.reshape(-1)[0])
    assert primal <= exact + 1e-7 and exact <= lp + 1e-7 and lp <= dual + 1e-7
    assert dual - lp <= 2e-2 * max(1.0, abs(lp))
