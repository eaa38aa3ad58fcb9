"""Local search after the solver (``crfkit.inference.rounding``).

References: every labelling of a tiny model scored by a direct sum over numpy tables
(enumeration written here), and ``GraphMRF.score`` for the identity ``score == score(labels)``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import crfkit
from crfkit.inference.rounding import LocalSearch, improve_labels
from crfkit.io import parse_uai


def _model(seed: int, N: int = 7, L: int = 3, p: float = 0.5):
    rng = np.random.default_rng(seed)
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N) if rng.random() < p]
    unary = rng.normal(size=(N, L))
    tabs = rng.normal(size=(len(pairs), L, L)) * 2.0  # strong, frustrated couplings
    mrf = crfkit.GraphMRF(torch.tensor(unary), torch.tensor(pairs, dtype=torch.long).reshape(-1, 2), torch.tensor(tabs))
    return mrf, unary, pairs, tabs


def _brute(unary, pairs, tabs):
    N, L = unary.shape
    best, arg = -np.inf, None
    for x in itertools.product(range(L), repeat=N):
        s = sum(unary[i, x[i]] for i in range(N)) + sum(t[x[i], x[j]] for (i, j), t in zip(pairs, tabs))
        if s > best:
            best, arg = s, x
    return best, arg


@pytest.mark.parametrize("seed", range(6))
def test_reaches_the_enumerated_optimum_and_keeps_the_identity(seed):
    mrf, unary, pairs, tabs = _model(seed)
    opt, _ = _brute(unary, pairs, tabs)
    start = torch.zeros(mrf.num_nodes, dtype=torch.long)
    r = improve_labels(mrf, start, time_limit=2.0, upper_bound=opt, seed=seed)
    assert r.score == pytest.approx(float(mrf.score(r.labels)), abs=1e-12)
    assert r.score >= r.initial_score
    assert r.score == pytest.approx(opt, abs=1e-9)
    assert r.info["reached_bound"]


@pytest.mark.parametrize("seed", range(4))
def test_moves_never_lower_the_score(seed):
    mrf, unary, pairs, tabs = _model(100 + seed, N=12, L=3, p=0.4)
    ls = LocalSearch(mrf)
    rng = np.random.default_rng(seed)
    for _ in range(10):
        x = rng.integers(0, 3, size=12)
        s = ls.score(x)
        assert s == pytest.approx(float(mrf.score(torch.from_numpy(x))), abs=1e-9)
        y = ls.forest_move(x, rng)
        assert ls.score(y) >= s - 1e-9
        z, _ = ls.icm(x)
        assert ls.score(z) >= s - 1e-9


def test_beliefs_and_zero_time_limit():
    mrf, unary, pairs, tabs = _model(7)
    res = crfkit.solve_map(mrf, iters=50)
    r = improve_labels(mrf, res.labels, res.marginals, time_limit=0.0)
    assert r.score >= float(res.primal[0]) - 1e-12
    assert r.score == pytest.approx(float(mrf.score(r.labels)), abs=1e-12)
    with pytest.raises(ValueError, match="time_limit"):
        improve_labels(mrf, res.labels, time_limit=-1.0)
    with pytest.raises(ValueError, match="labels"):
        improve_labels(mrf, res.labels[:3])
    with pytest.raises(ValueError, match="beliefs"):
        improve_labels(mrf, res.labels, torch.zeros(2, 2))


HARD = """MARKOV
5
3 3 3 3 3
5
2 0 1
2 1 2
2 2 3
2 3 4
2 4 0
"""


def test_hard_zeros_are_avoided_when_a_feasible_labelling_exists():
    # 3-colouring of a 5-cycle (feasible), with random soft preferences on allowed pairs
    rng = np.random.default_rng(3)
    tabs = []
    text = HARD
    for _ in range(5):
        t = rng.random((3, 3)) + 0.5
        np.fill_diagonal(t, 0.0)
        tabs.append(t)
        text += "\n9\n " + " ".join(repr(float(v)) for v in t.ravel()) + "\n"
    m = parse_uai(text)
    pairs = [(0, 1), (1, 2), (2, 3), (3, 4), (4, 0)]
    with np.errstate(divide="ignore"):
        opt, arg = _brute(np.zeros((5, 3)), pairs, [np.log(t) for t in tabs])
    start = torch.zeros(5, dtype=torch.long)  # every edge forbidden
    assert not m.is_feasible(start)
    r = improve_labels(m.mrf, start, time_limit=1.0, hard_score=m.hard_score, upper_bound=opt)
    assert m.is_feasible(r.labels)
    assert r.score == pytest.approx(opt, abs=1e-9)


@pytest.mark.parametrize("seed", range(4))
def test_block_moves_are_exact_given_the_rest(seed):
    mrf, unary, pairs, tabs = _model(200 + seed, N=9, L=3, p=0.45)
    ls = LocalSearch(mrf)
    rng = np.random.default_rng(seed)
    opt, _ = _brute(unary, pairs, tabs)
    whole = ls.block_move(rng.integers(0, 3, size=9), np.arange(9), max_entries=1 << 20)
    assert ls.score(whole) == pytest.approx(opt, abs=1e-9)  # the block is the whole model
    for _ in range(5):
        x = rng.integers(0, 3, size=9)
        block = ls.ball(int(rng.integers(9)), 4, rng)
        y = ls.block_move(x, block, max_entries=1 << 20)
        outside = np.setdiff1d(np.arange(9), block)
        assert (y[outside] == x[outside]).all()
        best = -np.inf  # the best labels of the block given the rest, by enumeration
        for lab in itertools.product(range(3), repeat=len(block)):
            z = x.copy()
            z[block] = lab
            best = max(best, float(mrf.score(torch.from_numpy(z))))
        assert ls.score(y) == pytest.approx(best, abs=1e-9)
    assert ls.block_move(x, np.arange(9), max_entries=2) is None  # no table of 2 entries will do
