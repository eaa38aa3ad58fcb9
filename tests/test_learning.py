"""Variational-likelihood learning: gradients, exactness on trees, recovery, agreement of learners."""

import itertools

import pytest
import torch

import crfkit
from crfkit.data.synthetic import grid_edges, random_instance
from crfkit.learning import FeatureCRF, Instance, VariationalObjective, fit
from crfkit.learning.models import FeatureParams


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def chain_edges(n):
    return torch.tensor([[i, i + 1] for i in range(n - 1)], dtype=torch.long)


def star_tree(n):
    return torch.tensor(
        [[0, 1], [1, 2], [1, 3], [3, 4], [0, 5], [5, 6], [6, 7]][: n - 1], dtype=torch.long
    )


def exact_nll(model, inst, w, l2):
    """(1/M) Σ_m [log Z − score(y_m)] + l2/2 ‖w‖², by enumeration (differentiable in w)."""
    p = FeatureParams(inst, model)
    tu, tp = p.unary(w), p.pairwise(w)
    N, L = tu.shape
    e = inst.edges
    xs = torch.tensor(list(itertools.product(range(L), repeat=N)), dtype=torch.long)

    def score(x):
        return tu[torch.arange(N), x].sum(-1) + tp[
            torch.arange(e.shape[0]), x[..., e[:, 0]], x[..., e[:, 1]]
        ].sum(-1)

    return torch.logsumexp(score(xs), 0) - score(inst.labels).mean() + 0.5 * l2 * (w @ w)


def exact_sample(model, inst, M, seed):
    mrf = model.to_graph_mrf(inst)
    N, L = mrf.num_nodes, mrf.num_labels
    xs = torch.tensor(list(itertools.product(range(L), repeat=N)), dtype=torch.long)
    s = (
        torch.stack([mrf.score(x) for x in xs])
        if len(xs) < 50
        else (
            mrf.unary[torch.arange(N), xs].sum(-1)
            + mrf.pairwise[
                torch.arange(mrf.num_edges), xs[:, mrf.edges[:, 0]], xs[:, mrf.edges[:, 1]]
            ].sum(-1)
        )
    )
    g = torch.Generator().manual_seed(seed)
    idx = torch.multinomial(torch.softmax(s, 0), M, replacement=True, generator=g)
    return xs[idx]


def small_feature_instance(edges, n, L=3, Fu=3, Fp=2, seed=0, M=50):
    g = torch.Generator().manual_seed(seed)
    fu = torch.randn(n, Fu, generator=g, dtype=torch.float64)
    fp = torch.randn(edges.shape[0], Fp, generator=g, dtype=torch.float64)
    model = FeatureCRF(
        L,
        Fu,
        Fp,
        torch.randn(Fu, L, generator=g, dtype=torch.float64),
        torch.randn(Fp, L, L, generator=g, dtype=torch.float64) * 0.7,
    )
    inst = Instance(edges, fu, fp, torch.zeros(1, n, dtype=torch.long))
    inst.labels = exact_sample(model, inst, M, seed + 1)
    return inst, model


@pytest.mark.parametrize("counting", ["trbp", "bethe"])
def test_objective_gradient_matches_finite_differences(counting):
    edges = torch.cat([grid_edges(2, 3), torch.tensor([[0, 5]])])
    inst, true = small_feature_instance(edges, 6, seed=3)
    model = FeatureCRF(3, 3, 2)
    obj = VariationalObjective.from_data(
        model, [inst], counting=counting, l2=0.1, tol=1e-12, damping=0.2
    )
    w = true.weights() * 0.5
    _, g = obj.value_and_grad(w)
    h = 1e-5
    for k in [0, 4, 8, 9, 13, 20, 26]:
        d = torch.zeros_like(w)
        d[k] = h
        fd = (obj.value(w + d) - obj.value(w - d)) / (2 * h)
        assert fd == pytest.approx(float(g[k]), abs=1e-6)


def test_table_mrf_gradient_matches_finite_differences():
    gen = torch.Generator().manual_seed(4)
    edges = torch.cat([grid_edges(2, 2), torch.tensor([[0, 3]])])
    mrf = crfkit.GraphMRF(
        torch.randn(4, 2, generator=gen, dtype=torch.float64),
        edges,
        torch.randn(5, 2, 2, generator=gen, dtype=torch.float64),
    )
    samples = torch.randint(0, 2, (7, 4), generator=gen)
    obj = VariationalObjective.from_data(
        mrf, samples, counting="trbp", l2=0.05, tol=1e-12, damping=0.2
    )
    w = obj.w0
    _, g = obj.value_and_grad(w)
    h = 1e-5
    for k in range(0, w.numel(), 3):
        d = torch.zeros_like(w)
        d[k] = h
        fd = (obj.value(w + d) - obj.value(w - d)) / (2 * h)
        assert fd == pytest.approx(float(g[k]), abs=1e-6)


def test_bethe_on_tree_equals_exact_maximum_likelihood():
    n = 7
    inst, true = small_feature_instance(star_tree(n), n, seed=5, M=40)
    l2 = 0.05
    model = FeatureCRF(3, 3, 2)
    res = fit(
        model,
        [inst],
        method="full",
        counting="bethe",
        l2=l2,
        max_steps=4000,
        gtol=1e-9,
        inner_tol=1e-12,
        eval_every=10**9,
    )
    # exact ML by enumeration + LBFGS
    w = torch.zeros(model.num_params, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w],
        lr=1,
        max_iter=500,
        tolerance_grad=1e-12,
        tolerance_change=1e-14,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        v = exact_nll(model, inst, w, l2)
        v.backward()
        return v

    opt.step(closure)
    w_ml = w.detach()
    assert float((res.weights - w_ml).norm() / w_ml.norm()) < 1e-4
    # the variational objective is the exact one on a tree with Bethe numbers
    obj = VariationalObjective.from_data(model, [inst], counting="bethe", l2=l2, tol=1e-12)
    assert obj.value(w_ml) == pytest.approx(float(exact_nll(model, inst, w_ml, l2)), abs=1e-8)
    assert res.history[-1]["objective"] == pytest.approx(
        float(exact_nll(model, inst, w_ml, l2)), abs=1e-7
    )


def centred(model_or_w, model):
    w = model_or_w if isinstance(model_or_w, torch.Tensor) else model_or_w.weights()
    m = model.with_weights(w)
    wu = m.unary_weights - m.unary_weights.mean(1, keepdim=True)
    wp = m.pairwise_weights - m.pairwise_weights.mean((1, 2), keepdim=True)
    return torch.cat([wu.flatten(), wp.flatten()])


def test_recovers_true_weights_as_samples_grow():
    n = 8
    edges = chain_edges(n)
    errs = []
    for M in (100, 10000):
        inst, true = small_feature_instance(edges, n, Fu=2, Fp=2, seed=7, M=M)
        model = FeatureCRF(3, 2, 2)
        res = fit(
            model,
            [inst],
            method="full",
            counting="bethe",
            l2=1e-6,
            max_steps=3000,
            gtol=1e-7,
            inner_tol=1e-10,
            eval_every=10**9,
        )
        ct = centred(true, true)
        errs.append(float((centred(res.weights, model) - ct).norm() / ct.norm()))
    assert errs[1] < errs[0] / 3
    assert errs[1] < 0.1


def test_three_learners_reach_the_same_optimum():
    inst, _ = random_instance(
        grid_edges(3, 4),
        12,
        num_labels=3,
        unary_dim=3,
        pairwise_dim=2,
        num_samples=20,
        grid_shape=(3, 4),
        seed=2,
        burn_in=50,
    )
    model = FeatureCRF(3, 3, 2)
    kw = dict(counting="trbp", l2=0.1, gtol=1e-7, inner_tol=1e-10)
    full = fit(model, [inst], method="full", max_steps=3000, eval_every=10**9, **kw)
    inner = fit(model, [inst], method="inner_dual", max_steps=3000, eval_every=10**9, **kw)
    bbpl = fit(model, [inst], method="bbpl", blocks=2, max_steps=12000, eval_every=200, **kw)
    for r in (inner, bbpl):
        assert r.converged
        assert r.history[-1]["objective"] == pytest.approx(full.history[-1]["objective"], rel=1e-6)
        assert float((r.weights - full.weights).norm() / full.weights.norm()) < 1e-4
    # the history is measured the same way: objective never above its start
    assert all(h["objective"] <= bbpl.history[0]["objective"] for h in bbpl.history)


def test_bbpl_on_table_mrf_and_random_blocks():
    gen = torch.Generator().manual_seed(9)
    edges = grid_edges(3, 3)
    mrf = crfkit.GraphMRF(
        torch.zeros(9, 2, dtype=torch.float64), edges, torch.zeros(12, 2, 2, dtype=torch.float64)
    )
    samples = torch.randint(0, 2, (30, 9), generator=gen)
    a = fit(
        mrf,
        samples,
        method="full",
        l2=0.1,
        max_steps=2000,
        gtol=1e-8,
        eval_every=10**9,
        inner_tol=1e-10,
    )
    b = fit(
        mrf,
        samples,
        method="bbpl",
        blocks=[torch.tensor([0, 1, 2, 3]), torch.tensor([4, 5, 6, 7, 8])],
        block_order="random",
        l2=0.1,
        max_steps=20000,
        gtol=1e-8,
        eval_every=10**9,
        inner_tol=1e-10,
    )
    assert isinstance(a.mrf, crfkit.GraphMRF) and a.mrf.unary.shape == (9, 2)
    assert torch.allclose(a.weights, b.weights, atol=1e-5)


def test_bad_input_is_refused():
    edges = grid_edges(2, 2)
    model = FeatureCRF(3, 2, 2)
    fu = torch.randn(4, 2, dtype=torch.float64)
    fp = torch.randn(4, 2, dtype=torch.float64)
    lab = torch.zeros(5, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="unary_features"):
        fit(model, [Instance(edges, torch.randn(4, 3, dtype=torch.float64), fp, lab)])
    with pytest.raises(ValueError, match="pairwise_features"):
        fit(model, [Instance(edges, fu, torch.randn(3, 2, dtype=torch.float64), lab)])
    with pytest.raises(ValueError, match="labels"):
        fit(model, [Instance(edges, fu, fp, lab + 3)])
    with pytest.raises(ValueError, match="non-empty|at least one"):
        fit(model, [])
    with pytest.raises(ValueError, match="at least one"):
        fit(model, [Instance(edges, fu, fp, lab[:0])])
    nan = fu.clone()
    nan[1, 1] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        fit(model, [Instance(edges, nan, fp, lab)])
    with pytest.raises(ValueError, match="method"):
        fit(model, [Instance(edges, fu, fp, lab)], method="sgd")
    mrf = crfkit.GraphMRF(
        torch.zeros(4, 3, dtype=torch.float64), edges, torch.zeros(4, 3, 3, dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="samples"):
        fit(mrf, torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="samples"):
        fit(mrf, torch.full((3, 4), 7, dtype=torch.long))
    with pytest.raises(TypeError):
        fit("model", [])


def test_torch_optimizer_and_budget():
    inst, _ = small_feature_instance(chain_edges(5), 5, seed=11, M=30)
    model = FeatureCRF(3, 3, 2)
    res = fit(
        model,
        [inst],
        method="inner_dual",
        optimizer=torch.optim.Adam,
        optimizer_kwargs={"lr": 0.05},
        max_steps=60,
        gtol=0.0,
        eval_every=30,
    )
    assert res.steps == 60 and [h["step"] for h in res.history] == [0, 30, 60]
    assert res.history[-1]["objective"] < res.history[0]["objective"]
    assert isinstance(res.model, FeatureCRF) and res.mrf is None
