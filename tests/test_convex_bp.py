"""Convex BP against exact references (enumeration, trees), identities of the variational value."""

import pytest
import torch

import crfkit
from crfkit.inference import ConvexBP, counting_numbers, edge_appearance_probabilities, marginals
from crfkit.inference.convex_bp import CompiledGraph
from crfkit.inference.exact import enumerate_mrf, tree_max_product, tree_sum_product


def random_tree(n, gen):
    rows = []
    for i in range(1, n):
        p = int(torch.randint(0, i, (1,), generator=gen))
        rows.append([p, i] if torch.rand(1, generator=gen) < 0.5 else [i, p])
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 2)


def random_loopy(n, extra, gen):
    e = random_tree(n, gen).tolist()
    have = {tuple(sorted(x)) for x in e}
    while len(e) < n - 1 + extra:
        a, b = torch.randint(0, n, (2,), generator=gen).tolist()
        if a != b and tuple(sorted((a, b))) not in have:
            have.add(tuple(sorted((a, b))))
            e.append([a, b])
    return torch.tensor(e, dtype=torch.long)


def grid_edges(h, w):
    e = []
    for y in range(h):
        for x in range(w):
            if x + 1 < w:
                e.append([y * w + x, y * w + x + 1])
            if y + 1 < h:
                e.append([y * w + x, (y + 1) * w + x])
    return torch.tensor(e, dtype=torch.long)


def random_mrf(edges, n, L, gen, batch=None, scale=1.0):
    lead = () if batch is None else (batch,)
    un = torch.randn(*lead, n, L, generator=gen, dtype=torch.float64) * scale
    pw = torch.randn(*lead, edges.shape[0], L, L, generator=gen, dtype=torch.float64) * scale
    return crfkit.GraphMRF(un, edges, pw)


@pytest.mark.parametrize("seed", range(5))
def test_bethe_on_trees_is_exact(seed):
    gen = torch.Generator().manual_seed(seed)
    n = 6 + seed * 3
    mrf = random_mrf(random_tree(n, gen), n, 3, gen, scale=1.5)
    ref = tree_sum_product(mrf) if n > 9 else enumerate_mrf(mrf)
    r = marginals(mrf, method="bethe", tol=1e-12, max_iters=500)
    assert r.converged
    assert float(r.log_partition) == pytest.approx(float(ref.log_partition), abs=1e-6)
    assert torch.allclose(r.unary, ref.unary, atol=1e-6)
    assert torch.allclose(r.pairwise, ref.pairwise, atol=1e-6)


def test_max_product_on_tree_is_exact():
    gen = torch.Generator().manual_seed(11)
    n = 20
    mrf = random_mrf(random_tree(n, gen), n, 4, gen, batch=3)
    ref = tree_max_product(mrf)
    for method in ("bethe", "trbp"):
        r = marginals(mrf, method=method, temperature=0.0, tol=1e-12)
        assert r.converged
        assert torch.allclose(mrf.score(r.labels), ref.max_score, atol=1e-9)
        # max-marginals equal the exact ones up to a constant per node (Bethe on a tree: ĉ = 1)
        if method == "bethe":
            mm = ref.unary - ref.unary.amax(-1, keepdim=True)
            assert torch.allclose(r.max_marginals, mm, atol=1e-8)


@pytest.mark.parametrize("seed", range(4))
def test_trw_upper_bound_consistency_and_gradient(seed):
    gen = torch.Generator().manual_seed(100 + seed)
    n, L = 8, 3
    edges = random_loopy(n, 4, gen) if seed % 2 else grid_edges(2, 4)
    mrf = random_mrf(edges, n, L, gen, scale=1.0)
    ref = enumerate_mrf(mrf)
    r = marginals(mrf, method="trbp", tol=1e-12, max_iters=5000, damping=0.3)
    assert r.converged
    assert float(r.log_partition) >= float(ref.log_partition) - 1e-9
    # local consistency of the beliefs
    e = mrf.edges
    assert torch.allclose(r.pairwise.sum(-1), r.unary[e[:, 0]], atol=1e-9)
    assert torch.allclose(r.pairwise.sum(-2), r.unary[e[:, 1]], atol=1e-9)
    assert torch.allclose(r.unary.sum(-1), torch.ones(n, dtype=torch.float64))
    # finite differences of the variational value equal the beliefs (envelope theorem)
    h = 1e-5
    for i, a in [(0, 0), (3, 2), (n - 1, 1)]:
        up, dn = mrf.unary.clone(), mrf.unary.clone()
        up[i, a] += h
        dn[i, a] -= h
        fu = marginals(
            crfkit.GraphMRF(up, edges, mrf.pairwise),
            method="trbp",
            tol=1e-12,
            max_iters=5000,
            damping=0.3,
        )
        fd = marginals(
            crfkit.GraphMRF(dn, edges, mrf.pairwise),
            method="trbp",
            tol=1e-12,
            max_iters=5000,
            damping=0.3,
        )
        fdiff = (float(fu.log_partition) - float(fd.log_partition)) / (2 * h)
        assert fdiff == pytest.approx(float(r.unary[i, a]), abs=1e-6)
    for k, a, c in [(0, 1, 2), (edges.shape[0] - 1, 0, 0)]:
        up, dn = mrf.pairwise.clone(), mrf.pairwise.clone()
        up[k, a, c] += h
        dn[k, a, c] -= h
        fu = marginals(
            crfkit.GraphMRF(mrf.unary, edges, up),
            method="trbp",
            tol=1e-12,
            max_iters=5000,
            damping=0.3,
        )
        fd = marginals(
            crfkit.GraphMRF(mrf.unary, edges, dn),
            method="trbp",
            tol=1e-12,
            max_iters=5000,
            damping=0.3,
        )
        fdiff = (float(fu.log_partition) - float(fd.log_partition)) / (2 * h)
        assert fdiff == pytest.approx(float(r.pairwise[k, a, c]), abs=1e-6)


def test_edge_appearance_probabilities_come_from_spanning_forests():
    gen = torch.Generator().manual_seed(3)
    for edges, n in [
        (grid_edges(5, 6), 30),
        (random_loopy(40, 30, gen), 40),
        (random_tree(10, gen), 10),
    ]:
        rho = edge_appearance_probabilities(edges, n)
        assert bool((rho > 0).all()) and bool((rho <= 1).all())
        # every forest of the covering is a spanning tree of the connected graph: Σ ρ = N - 1
        assert float(rho.sum()) == pytest.approx(n - 1, abs=1e-9)
    rho = edge_appearance_probabilities(random_tree(10, gen), 10)
    assert torch.allclose(rho, torch.ones_like(rho))


def test_trw_bound_on_grid_batched_and_temperature_limit():
    gen = torch.Generator().manual_seed(5)
    edges = grid_edges(3, 3)
    mrf = random_mrf(edges, 9, 3, gen, batch=2, scale=2.0)
    ref = enumerate_mrf(mrf)
    r = marginals(mrf, method="trbp", tol=1e-10, max_iters=5000, damping=0.3)
    assert r.unary.shape == (2, 9, 3) and r.pairwise.shape == (2, edges.shape[0], 3, 3)
    assert bool((r.log_partition >= ref.log_partition - 1e-9).all())
    # batched equals one at a time
    r0 = marginals(
        crfkit.GraphMRF(mrf.unary[0], edges, mrf.pairwise[0]),
        method="trbp",
        tol=1e-10,
        max_iters=5000,
        damping=0.3,
    )
    assert torch.allclose(r0.unary, r.unary[0], atol=1e-8)
    # TRW max-product value bound: the zero-temperature labelling never beats the exact max
    m = marginals(mrf, method="trbp", temperature=0.0, tol=1e-10, max_iters=2000, damping=0.5)
    assert bool((mrf.score(m.labels) <= ref.max_score + 1e-9).all())


def test_block_schedule_matches_parallel():
    gen = torch.Generator().manual_seed(7)
    n = 30
    edges = random_loopy(n, 25, gen)
    mrf = random_mrf(edges, n, 4, gen, scale=0.7)
    par = marginals(mrf, method="trbp", tol=1e-11, max_iters=5000)
    blocks = [torch.arange(0, 7), torch.arange(7, 19), torch.arange(19, 30)]
    blk = marginals(mrf, method="trbp", tol=1e-11, max_iters=5000, schedule="block", blocks=blocks)
    assert par.converged and blk.converged
    assert torch.allclose(par.unary, blk.unary, atol=1e-8)
    assert torch.allclose(par.pairwise, blk.pairwise, atol=1e-8)
    assert float(par.log_partition) == pytest.approx(float(blk.log_partition), abs=1e-8)


def test_stateful_engine_block_updates_touch_only_the_block():
    gen = torch.Generator().manual_seed(8)
    n = 20
    edges = random_loopy(n, 10, gen)
    mrf = random_mrf(edges, n, 3, gen)
    g = CompiledGraph(edges, n)
    cn, ce = counting_numbers(g, "trbp")
    bp = ConvexBP(mrf, cn, ce)
    bp.sweep()
    blk = g.block(torch.arange(5))
    before = bp.messages.clone()
    bp.run_block(blk, tol=1e-10)
    changed = (bp.messages - before).abs().amax((1, 2)) > 0  # messages are [2E, B, L]
    assert bool((g.ddst[changed] < 5).all())
    # the incrementally kept incoming sums equal a fresh recomputation
    inc = bp.incoming.clone()
    bp.recompute_incoming()
    assert torch.allclose(inc, bp.incoming, atol=1e-12)


def test_convex_counting_numbers_checked():
    gen = torch.Generator().manual_seed(9)
    n = 6
    edges = random_loopy(n, 4, gen)
    mrf = random_mrf(edges, n, 2, gen)
    g = CompiledGraph(edges, n)
    bethe = counting_numbers(g, "bethe")
    with pytest.raises(ValueError, match="convex"):
        marginals(mrf, method="convex", counting=bethe)
    # TRW numbers pass the check, and give the trbp answer
    trw = counting_numbers(g, "trbp")
    a = marginals(mrf, method="convex", counting=trw, tol=1e-11, max_iters=5000, damping=0.3)
    b = marginals(mrf, method="trbp", tol=1e-11, max_iters=5000, damping=0.3)
    assert torch.allclose(a.unary, b.unary, atol=1e-8)
    # strictly convex numbers with positive node counts: an upper bound too? not in general; only check run
    cn = torch.full((n,), 0.5, dtype=torch.float64)
    ce = torch.full((edges.shape[0],), 0.5, dtype=torch.float64)
    r = marginals(mrf, method="convex", counting=(cn, ce), tol=1e-10, max_iters=5000)
    assert r.converged
    with pytest.raises(ValueError, match="c_edge"):
        marginals(mrf, method="convex", counting=(cn, -ce))
    with pytest.raises(ValueError, match="counting"):
        marginals(mrf, method="convex")
    with pytest.raises(ValueError, match="method"):
        marginals(mrf, method="mean-field")


def test_grid_crf_input_and_exact_method():
    gen = torch.Generator().manual_seed(12)
    L, H, W = 2, 2, 3
    unary = torch.randn(1, L, H, W, generator=gen, dtype=torch.float64)
    table = torch.randn(L, L, generator=gen, dtype=torch.float64)
    crf = crfkit.GridCRF(unary, [table, table], offsets=((0, 1), (1, 0)))
    mrf = crf.to_graph_mrf()
    a = marginals(crf, method="trbp", tol=1e-11, max_iters=3000)
    b = marginals(mrf, method="trbp", tol=1e-11, max_iters=3000)
    assert torch.allclose(a.unary, b.unary, atol=1e-10)
    ex = marginals(mrf, method="exact")
    ref = enumerate_mrf(mrf)
    assert torch.allclose(ex.unary, ref.unary) and torch.allclose(
        ex.log_partition, ref.log_partition
    )
    assert bool((b.log_partition >= ref.log_partition - 1e-9).all())
