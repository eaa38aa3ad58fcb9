"""``crfkit solve`` MAP options of issues 16/17: exact method, local search, --out checks, infeasibility.

References: the joint distribution of the model computed by products of the factor values
written into the file (enumeration, helpers of ``test_cli_solve``).
"""

from __future__ import annotations

import json
import math
import os

import pytest

typer = pytest.importorskip("typer")
from typer.testing import CliRunner  # noqa: E402

from crfkit.cli.solve import solve_file  # noqa: E402
from crfkit.io import read_map_result  # noqa: E402
from test_cli_solve import _app, _factors, _joint, _text  # noqa: E402


@pytest.fixture
def model(tmp_path):
    factors = _factors(1)
    path = tmp_path / "loop.uai"
    path.write_text(_text(factors))
    return path, factors


@pytest.mark.parametrize("method", ["exact", "dd"])
def test_map_methods_reach_the_enumerated_optimum(model, tmp_path, method):
    path, factors = model
    joint = _joint(factors)
    best = max(joint.values())
    s = solve_file(path, "MAP", method=method, out=tmp_path / f"{method}.MAP", progress=False, iters=200)
    labels = tuple(read_map_result(tmp_path / f"{method}.MAP").tolist())
    assert s["method"] == method
    assert s["score"] == pytest.approx(math.log(joint[labels]), abs=1e-9)
    assert s["score"] == pytest.approx(math.log(best), abs=1e-9)
    assert s["dual_bound"] >= math.log(best) - 1e-9
    if method == "dd":
        assert s["rounding"]["solver_score"] <= s["score"] + 1e-12  # the search never lowers it


def test_wrong_method_is_an_error(model, tmp_path):
    path, _ = model
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--method", "bethe", "--quiet"])
    assert r.exit_code == 2 and "--method" in r.output and "dd, exact" in r.output
    with pytest.raises(ValueError, match="trbp, bethe, exact"):
        solve_file(path, "MAR", method="dd", out=tmp_path / "x.MAR", progress=False)


def test_out_is_checked_before_solving(model, tmp_path):
    path, _ = model
    folder = tmp_path / "adir"
    folder.mkdir()
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--out", str(folder), "--quiet"])
    assert r.exit_code == 2 and "directory" in r.output
    r = CliRunner().invoke(
        _app(), ["solve", str(path), "--task", "MAP", "--out", str(tmp_path / "nope" / "r.MAP"), "--quiet"]
    )
    assert r.exit_code == 2 and "existing folder" in r.output
    if os.geteuid() != 0:  # root writes anywhere
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        with pytest.raises(ValueError, match="not writable"):
            solve_file(path, "MAP", out=ro / "r.MAP", progress=False)


INFEASIBLE = """MARKOV
2
2 2
3
1 0
1 1
2 0 1

2
 1 0

2
 1 0

4
 0 1 1 1
"""


@pytest.mark.parametrize("method", ["dd", "exact"])
def test_infeasible_model_is_an_error(tmp_path, method):
    path = tmp_path / "inf.uai"
    path.write_text(INFEASIBLE)
    with pytest.raises(ValueError, match="infeasible"):
        solve_file(path, "MAP", method=method, out=tmp_path / "inf.MAP", progress=False, iters=100)
    assert not (tmp_path / "inf.MAP").exists()


def test_round_time_option(model, tmp_path):
    path, _ = model
    out = tmp_path / "r.MAP"
    r = CliRunner().invoke(
        _app(), ["solve", str(path), "--task", "MAP", "--round-time", "0", "--out", str(out), "--quiet"]
    )
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "r.MAP.json").read_text())
    assert s["rounding"]["rounds"] == 0
