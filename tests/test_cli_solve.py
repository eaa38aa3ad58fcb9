"""``crfkit solve``: UAI file in, competition result file and JSON summary out.

References: the joint distribution of the model computed here by products of the factor
values written into the file (enumeration).
"""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from crfkit.cli import solve as solve_cli  # noqa: E402
from crfkit.io import read_map_result, read_mar_result  # noqa: E402

# a loopy model: 4 variables on a cycle (cards 2, 3, 2, 2), a zero, a reversed duplicate scope
CARDS = [2, 3, 2, 2]


def _factors(seed: int):
    rng = np.random.default_rng(seed)
    f = [((0,), rng.random(2) + 0.1), ((1,), rng.random(3) + 0.1)]
    for i, j in [(0, 1), (1, 2), (2, 3), (3, 0), (1, 0)]:
        f.append(((i, j), rng.random((CARDS[i], CARDS[j])) * 2 + 0.05))
    f[3][1][0, 1] = 0.0  # a zero on (1, 2)
    return f


def _text(factors) -> str:
    lines = ["MARKOV", str(len(CARDS)), " ".join(map(str, CARDS)), str(len(factors))]
    lines += [f"{len(s)} " + " ".join(map(str, s)) for s, _ in factors]
    for _, t in factors:
        lines += ["", str(t.size), " " + " ".join(repr(float(v)) for v in t.ravel())]
    return "\n".join(lines) + "\n"


def _joint(factors, evidence=None):
    p = {}
    for x in itertools.product(*[range(c) for c in CARDS]):
        if evidence and any(x[v] != val for v, val in evidence.items()):
            continue
        v = 1.0
        for s, t in factors:
            v *= t[tuple(x[k] for k in s)]
        p[x] = v
    return p


def _app():
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)

    @app.callback()
    def _main() -> None:  # keep `solve` a subcommand even when it is the only one
        pass

    solve_cli.register(app)
    return app


@pytest.fixture
def model(tmp_path):
    factors = _factors(0)
    path = tmp_path / "loop.uai"
    path.write_text(_text(factors))
    return path, factors


def test_map(model, tmp_path):
    path, factors = model
    out = tmp_path / "res.MAP"
    r = CliRunner().invoke(
        _app(), ["solve", str(path), "--task", "MAP", "--iters", "300", "--out", str(out)]
    )
    assert r.exit_code == 0, r.output
    joint = _joint(factors)
    best = max(joint, key=joint.get)
    labels = tuple(read_map_result(out).tolist())
    summary = json.loads((tmp_path / "res.MAP.json").read_text())
    assert summary["score"] == pytest.approx(math.log(joint[labels]), abs=1e-9)
    assert summary["score"] <= math.log(joint[best]) + 1e-9
    assert summary["dual_bound"] >= math.log(joint[best]) - 1e-9
    assert summary["gap"] == pytest.approx(max(0.0, summary["dual_bound"] - summary["score"]))
    assert summary["feasible"] is True
    assert "dual bound" in r.output and "gap" in r.output


def test_map_with_evidence_default_out(model, tmp_path):
    path, factors = model
    evid = tmp_path / "loop.evid"
    evid.write_text("2 0 1 3 0\n")
    r = CliRunner().invoke(
        _app(),
        ["solve", str(path), "--task", "map", "--evidence", str(evid), "--iters", "200", "--quiet"],
    )
    assert r.exit_code == 0, r.output
    labels = read_map_result(tmp_path / "loop.uai.MAP").tolist()
    assert labels[0] == 1 and labels[3] == 0
    joint = _joint(factors, {0: 1, 3: 0})
    summary = json.loads((tmp_path / "loop.uai.MAP.json").read_text())
    assert summary["dual_bound"] >= math.log(max(joint.values())) - 1e-9
    assert summary["observed"] == 2


def test_mar_exact_and_trbp(model, tmp_path):
    path, factors = model
    joint = _joint(factors)
    Z = sum(joint.values())
    for method in ("exact", "trbp"):
        out = tmp_path / f"{method}.MAR"
        r = CliRunner().invoke(
            _app(), ["solve", str(path), "--task", "MAR", "--method", method, "--out", str(out)]
        )
        assert r.exit_code == 0, r.output
        probs = read_mar_result(out)
        assert [len(p) for p in probs] == CARDS
        summary = json.loads((tmp_path / f"{method}.MAR.json").read_text())
        if method == "exact":
            assert summary["log_partition"] == pytest.approx(math.log(Z), abs=1e-9)
            for i, c in enumerate(CARDS):
                ref = [sum(v for k, v in joint.items() if k[i] == l) / Z for l in range(c)]
                np.testing.assert_allclose(probs[i].numpy(), ref, atol=1e-9)
        else:  # TRW: an upper bound on log Z; beliefs are distributions
            assert summary["log_partition"] >= math.log(Z) - 1e-6
            for p in probs:
                assert float(p.sum()) == pytest.approx(1.0)


def test_malformed_file_exit_code(tmp_path):
    bad = tmp_path / "bad.uai"
    bad.write_text("MARKOV\n2\n2 2\n1\n2 0 1\n\n4\n 1 2 -3 4\n")
    r = CliRunner().invoke(_app(), ["solve", str(bad), "--task", "MAP"])
    assert r.exit_code == 2
    assert "line 8" in r.output
    assert not (tmp_path / "bad.uai.MAP").exists()
