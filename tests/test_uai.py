"""UAI model files, evidence and result files (``crfkit.io.uai``).

References: joint distributions computed here directly from the factor tables written into
the files (products of factor values over every joint assignment), and line numbers known
from the text of hand-made malformed files.
"""

from __future__ import annotations

import itertools
import math
import os

import numpy as np
import pytest
import torch

import crfkit
from crfkit.inference.lp import exact_map_bruteforce
from crfkit.io import (
    UAIFormatError,
    apply_evidence,
    format_uai,
    parse_evidence,
    parse_uai,
    read_evidence,
    read_map_result,
    read_mar_result,
    read_uai,
    write_map_result,
    write_mar_result,
    write_uai,
)

# 3 variables (cards 2, 2, 3); factors: unary on 0, pairwise (0, 1), pairwise (2, 1) with a
# zero, and a second factor on (1, 0) (reversed scope, summed into (0, 1)).
HAND = """MARKOV
3
2 2 3
4
1 0
2 0 1
2 2 1
2 1 0

2
 0.436 0.564

4
 0.128 0.872
 0.920 0.080

6
 0.210 0.333
 0.457 0.811
 0.000 0.189

4
 1 2
 3 4
"""
CARDS = [2, 2, 3]
FACTORS = [
    ((0,), np.array([0.436, 0.564])),
    ((0, 1), np.array([[0.128, 0.872], [0.920, 0.080]])),
    ((2, 1), np.array([[0.210, 0.333], [0.457, 0.811], [0.000, 0.189]])),
    ((1, 0), np.array([[1.0, 2.0], [3.0, 4.0]])),
]


def joint(cards, factors, evidence=None) -> dict[tuple, float]:
    """Normalised joint distribution by direct products of factor values."""
    p = {}
    for x in itertools.product(*[range(c) for c in cards]):
        if evidence and any(x[v] != val for v, val in evidence.items()):
            continue
        v = 1.0
        for scope, tab in factors:
            v *= tab[tuple(x[s] for s in scope)]
        p[x] = v
    z = sum(p.values())
    return {k: v / z for k, v in p.items()}


def model_joint(model, cards) -> dict[tuple, float]:
    """The read model's distribution exp(score)/Z over the real labels."""
    mrf = model.mrf
    scores = {}
    for x in itertools.product(*[range(c) for c in cards]):
        scores[x] = float(mrf.score(torch.tensor(x)))
    m = max(scores.values())
    w = {k: math.exp(v - m) for k, v in scores.items()}
    z = sum(w.values())
    return {k: v / z for k, v in w.items()}


def test_hand_written_file_marginals_and_map():
    m = parse_uai(HAND, "hand.uai")
    assert m.cardinalities.tolist() == CARDS
    assert m.mrf.num_labels == 3 and m.mrf.num_edges == 2
    ref = joint(CARDS, FACTORS)
    got = model_joint(m, CARDS)
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-15, rel=1e-9)
    # marginals and MAP
    for i, c in enumerate(CARDS):
        for l in range(c):
            mi = sum(v for k, v in ref.items() if k[i] == l)
            assert sum(v for k, v in got.items() if k[i] == l) == pytest.approx(
                mi, rel=1e-9, abs=1e-15
            )
    best = max(ref, key=ref.get)
    labels = exact_map_bruteforce(m.mrf.unary, m.mrf.edges, m.mrf.edge_tables()).labels
    assert tuple(labels.tolist()) == best
    assert m.is_feasible(labels)
    # the zero entry (x2 = 2, x1 = 0) and the forbidden labels are infeasible
    assert not m.is_feasible(torch.tensor([0, 0, 2]))
    assert not m.is_feasible(torch.tensor([2, 0, 0]))
    # a zero has probability below e^-64 of the best labelling
    assert got[(0, 0, 2)] == 0.0 or got[(0, 0, 2)] < math.exp(-64) * got[best]


def test_forbidden_labels_decide_nothing_but_feasibility():
    m = parse_uai(HAND, "hand.uai")
    mrf = m.mrf
    # every labelling with a forbidden label scores below every allowed labelling
    allowed = [
        float(mrf.score(torch.tensor(x)))
        for x in itertools.product(range(2), range(2), range(3))
        if x != (0, 0, 2) and x != (1, 0, 2)
    ]
    forbidden = [
        float(mrf.score(torch.tensor(x)))
        for x in itertools.product(range(3), repeat=3)
        if x[0] == 2 or x[1] == 2
    ]
    assert max(forbidden) < min(allowed) - 64


def test_round_trip(tmp_path):
    m = parse_uai(HAND, "hand.uai")
    path = tmp_path / "m.uai"
    write_uai(path, m)
    m2 = read_uai(path)
    assert m2.cardinalities.tolist() == m.cardinalities.tolist()
    assert torch.equal(m2.mrf.edges, m.mrf.edges)
    torch.testing.assert_close(m2.mrf.unary, m.mrf.unary, rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(m2.mrf.edge_tables(), m.mrf.edge_tables(), rtol=1e-14, atol=1e-14)
    assert m2.hard_score == pytest.approx(m.hard_score, rel=1e-14)
    # the zero comes back as a zero (not as a tiny number)
    assert " 0 " in format_uai(m2) or " 0\n" in format_uai(m2)
    # no temporary files left beside the output
    assert sorted(os.listdir(tmp_path)) == ["m.uai"]


@pytest.mark.parametrize("form", ["dense", "potts", "shared"])
def test_round_trip_of_graph_mrf(tmp_path, form):
    g = torch.Generator().manual_seed(0)
    N, L = 5, 3
    edges = torch.tensor([[0, 1], [1, 2], [3, 2], [0, 4]])
    unary = torch.randn(N, L, generator=g, dtype=torch.float64)
    if form == "dense":
        pw = torch.randn(4, L, L, generator=g, dtype=torch.float64) * 300  # values e^-900 .. e^900
    elif form == "potts":
        pw = crfkit.Potts(torch.rand(4, generator=g, dtype=torch.float64))
    else:
        pw = torch.randn(L, L, generator=g, dtype=torch.float64)
    mrf = crfkit.GraphMRF(unary, edges, pw)
    write_uai(tmp_path / "g.uai", mrf)
    back = read_uai(tmp_path / "g.uai")
    assert back.hard_score is None
    torch.testing.assert_close(back.mrf.unary, unary, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(back.mrf.edge_tables(), mrf.edge_tables(), rtol=1e-13, atol=1e-12)
    assert torch.equal(back.mrf.edges, edges)


def test_constant_factor_and_float32(tmp_path):
    text = "MARKOV\n2\n2 2\n2\n0\n2 0 1\n1\n 2.0\n4\n 1 2 3 4\n"
    m = parse_uai(text)
    assert m.constant == pytest.approx(math.log(2.0))
    x = torch.tensor([1, 1])
    assert float(m.score(x)) == pytest.approx(math.log(8.0))
    write_uai(tmp_path / "c.uai", m)
    assert read_uai(tmp_path / "c.uai").constant == pytest.approx(math.log(2.0), rel=1e-14)
    m32 = parse_uai(text, dtype=torch.float32)
    assert m32.mrf.unary.dtype == torch.float32


def test_refuses_batched_model():
    mrf = crfkit.GraphMRF(torch.zeros(2, 3, 2), torch.tensor([[0, 1]]), torch.zeros(2, 1, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        format_uai(mrf)


# ------------------------------------------------------------------------------ malformed
def _replace_line(text: str, lineno: int, new: str) -> str:
    lines = text.split("\n")
    lines[lineno - 1] = new
    return "\n".join(lines)


MALFORMED = [
    # (description, text, expected line, message fragment)
    ("negative value", HAND.replace(" 0.920 0.080", " 0.920 -0.080"), 15, ">= 0"),
    ("non-number", HAND.replace("0.872", "abc"), 14, "number"),
    ("nan", HAND.replace("0.872", "nan"), 14, "finite"),
    ("wrong count", _replace_line(HAND, 17, "5"), 17, "6 entries"),
    ("truncated last table", HAND.rsplit(" 3 4", 1)[0], 23, "ended"),
    ("truncated middle table", _replace_line(HAND, 15, " 0.920"), 18, "truncated"),
    ("higher order", _replace_line(HAND, 7, "3 2 1 0"), 7, "higher-order"),
    ("bayes", HAND.replace("MARKOV", "BAYES"), 1, "MARKOV"),
    ("bad type", HAND.replace("MARKOV", "MARKOW"), 1, "MARKOV"),
    ("zero cardinality", _replace_line(HAND, 3, "2 0 3"), 3, ">= 1"),
    ("variable out of range", _replace_line(HAND, 6, "2 0 7"), 6, "[0, 2]"),
    ("repeated variable", _replace_line(HAND, 6, "2 1 1"), 6, "twice"),
    ("extra content", HAND + "\n 7\n", 26, "end of the file"),
    ("non-integer count", _replace_line(HAND, 2, "3.5"), 2, "integer"),
]


@pytest.mark.parametrize("desc,text,line,fragment", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_files_name_the_line(desc, text, line, fragment, tmp_path):
    path = tmp_path / "bad.uai"
    path.write_text(text)
    with pytest.raises(UAIFormatError) as info:
        read_uai(path)
    msg = str(info.value)
    assert f"line {line}" in msg, msg
    assert str(path) in msg
    assert fragment in msg, msg


def test_all_zero_factor_is_refused():
    text = "MARKOV\n1\n2\n1\n1 0\n2\n 0 0\n"
    with pytest.raises(UAIFormatError, match="probability 0"):
        parse_uai(text)


# ------------------------------------------------------------------------------ evidence
def test_evidence_formats_and_conditioning(tmp_path):
    assert parse_evidence("2 0 1 2 2") == {0: 1, 2: 2}
    assert parse_evidence("1\n2 0 1 2 2\n") == {0: 1, 2: 2}
    assert parse_evidence("") == {}
    (tmp_path / "e.evid").write_text("1 2 0\n")
    ev = read_evidence(tmp_path / "e.evid", cardinalities=CARDS)
    m = apply_evidence(parse_uai(HAND), ev)
    ref = joint(CARDS, FACTORS, ev)
    got = model_joint(m, CARDS)
    for k, v in got.items():
        assert v == pytest.approx(ref.get(k, 0.0), abs=1e-20, rel=1e-9)
    with pytest.raises(UAIFormatError, match="line 1"):
        parse_evidence("1 0 5", "e", cardinalities=CARDS)
    with pytest.raises(UAIFormatError, match="pairs"):
        parse_evidence("3 0 1")
    with pytest.raises(UAIFormatError, match="integer"):
        parse_evidence("1 0 x")
    with pytest.raises(ValueError, match="probability 0"):
        # x1 = 0 with x2 = 2 is a zero, but a unary zero is needed to refuse: use a model
        apply_evidence(parse_uai("MARKOV\n1\n2\n1\n1 0\n2\n 0 1\n"), {0: 0})


# ------------------------------------------------------------------------------ results
def test_result_files(tmp_path):
    write_map_result(tmp_path / "r.MAP", torch.tensor([1, 0, 2]))
    assert (tmp_path / "r.MAP").read_text() == "MAP\n3 1 0 2\n"
    assert read_map_result(tmp_path / "r.MAP").tolist() == [1, 0, 2]
    p = torch.tensor([[0.25, 0.75, 0.0], [0.5, 0.5, 0.0], [0.2, 0.3, 0.5]], dtype=torch.float64)
    write_mar_result(tmp_path / "r.MAR", p, CARDS)
    text = (tmp_path / "r.MAR").read_text()
    assert text.startswith("MAR\n3 2 0.25 0.75 2 0.5 0.5 3 ")
    back = read_mar_result(tmp_path / "r.MAR")
    assert [len(b) for b in back] == CARDS
    torch.testing.assert_close(back[2], p[2])
    (tmp_path / "bad.MAP").write_text("MAP\n3 1 0\n")
    with pytest.raises(UAIFormatError, match="line 2"):
        read_map_result(tmp_path / "bad.MAP")
    assert sorted(os.listdir(tmp_path)) == ["bad.MAP", "r.MAP", "r.MAR"]
