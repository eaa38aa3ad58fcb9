"""Exact variable elimination (``crfkit.inference.exact.eliminate``) and ``crfkit solve``'s use of it.

References: every labelling of a small model scored by a direct sum over numpy tables
(enumeration written here, zeros as ``-inf``), and the factor products of the UAI text.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

import crfkit
from crfkit._validation import CRFValueError
from crfkit.inference.exact import eliminate, elimination_order
from crfkit.io import parse_uai


def _random_uai(seed: int, N: int, p: float, zeros: float):
    """A random pairwise UAI text (mixed cardinalities, some zero entries) and its factors."""
    rng = np.random.default_rng(seed)
    cards = rng.integers(1, 4, size=N).tolist()
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N) if rng.random() < p]
    factors = [((i,), np.exp(rng.normal(size=cards[i]))) for i in range(N)]
    for i, j in pairs:
        t = np.exp(2.0 * rng.normal(size=(cards[i], cards[j])))
        zero = rng.random(t.shape) < zeros
        zero.flat[rng.integers(t.size)] = False  # a table of zeros only is refused by the reader
        t[zero] = 0.0
        factors.append(((j, i) if rng.random() < 0.5 else (i, j), t))  # t indexed [x_min, x_max]
    lines = ["MARKOV", str(N), " ".join(map(str, cards)), str(len(factors))]
    lines += [f"{len(s)} " + " ".join(map(str, s)) for s, _ in factors]
    for s, t in factors:
        t = t.T if len(s) == 2 and s[0] > s[1] else t  # the table follows the scope's order
        lines += ["", str(t.size), " " + " ".join(repr(float(v)) for v in t.ravel())]
    return "\n".join(lines) + "\n", cards, factors


def _brute(cards, factors):
    """(max log value, its labelling, log-sum) over every labelling, zeros as -inf."""
    best, arg, logs = -math.inf, None, []
    for x in itertools.product(*[range(c) for c in cards]):
        v = 0.0
        for s, t in factors:
            key = tuple(x[k] for k in sorted(s)) if len(s) == 2 else (x[s[0]],)
            f = float(t[key])
            v += math.log(f) if f > 0 else -math.inf
        logs.append(v)
        if v > best:
            best, arg = v, x
    a = np.array(logs)
    m = a.max()
    return best, arg, (m + math.log(np.exp(a - m).sum())) if np.isfinite(m) else -math.inf


@pytest.mark.parametrize("seed", range(12))
def test_elimination_matches_enumeration_with_hard_zeros(seed):
    N = 5 + seed % 4
    text, cards, factors = _random_uai(seed, N, p=0.6, zeros=0.12 if seed % 2 else 0.0)
    best, _, logz = _brute(cards, factors)
    model = parse_uai(text)
    r = eliminate(model.mrf, model.cardinalities)
    if not np.isfinite(best):  # every labelling uses a zero: so must the one found
        assert not model.is_feasible(r.labels)
        return
    assert r.value == pytest.approx(best, abs=1e-9)
    x = r.labels.tolist()
    assert all(0 <= x[i] < cards[i] for i in range(N))
    assert model.is_feasible(r.labels)  # never a forbidden pair when a feasible labelling exists
    assert float(model.score(r.labels)) == pytest.approx(best, abs=1e-9)
    if seed % 2 == 0:  # no zeros: the log-sum is exact (with zeros it counts the hard score's e^-64 tail)
        s = eliminate(model.mrf, model.cardinalities, semiring="sum")
        assert s.value == pytest.approx(logz, abs=1e-9)
        assert s.labels is None


def test_elimination_on_a_plain_graph_mrf_and_its_order():
    rng = np.random.default_rng(3)
    N, L = 9, 2
    pairs = [(i, j) for i in range(N) for j in range(i + 1, N) if rng.random() < 0.4]
    unary, tabs = rng.normal(size=(N, L)), rng.normal(size=(len(pairs), L, L))
    mrf = crfkit.GraphMRF(torch.tensor(unary), torch.tensor(pairs).reshape(-1, 2), torch.tensor(tabs))
    best = max(
        sum(unary[i, x[i]] for i in range(N)) + sum(t[x[i], x[j]] for (i, j), t in zip(pairs, tabs))
        for x in itertools.product(range(L), repeat=N)
    )
    r = eliminate(mrf)
    assert r.value == pytest.approx(best, abs=1e-9)
    assert sorted(r.order) == list(range(N))
    order, largest = elimination_order(mrf)
    assert sorted(order) == list(range(N)) and 2 <= largest <= L**N


def test_elimination_refuses_a_model_too_large():
    side = 12  # a 12 x 12 grid: elimination needs tables of about 2**13 entries
    idx = np.arange(side * side).reshape(side, side)
    edges = np.concatenate([np.stack([idx[:, :-1].ravel(), idx[:, 1:].ravel()], 1),
                            np.stack([idx[:-1].ravel(), idx[1:].ravel()], 1)])
    mrf = crfkit.GraphMRF(torch.zeros(side * side, 2), torch.tensor(edges), torch.zeros(len(edges), 2, 2))
    assert elimination_order(mrf, max_entries=64) is None
    with pytest.raises(CRFValueError, match="max_entries = 64"):
        eliminate(mrf, max_entries=64)
    with pytest.raises(CRFValueError, match="semiring"):
        eliminate(mrf, semiring="min")
