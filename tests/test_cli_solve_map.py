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


@pytest.mark.parametrize("method", ["exact", "dd", "auto"])
def test_map_methods_reach_the_enumerated_optimum(model, tmp_path, method):
    path, factors = model
    joint = _joint(factors)
    best = max(joint.values())
    s = solve_file(path, "MAP", method=method, out=tmp_path / f"{method}.MAP", progress=False, iters=200)
    labels = tuple(read_map_result(tmp_path / f"{method}.MAP").tolist())
    assert s["method"] == ("exact" if method == "auto" else method)  # auto: a 4-variable model is small
    assert s["certificate_source"] == ("dual decomposition" if method == "dd" else "exact")
    if method != "dd":
        assert s["optimal"] and s["gap"] == 0.0 and s["dual_bound"] == s["score"]
    assert s["optimal"] == (s["gap"] <= 1e-9 * max(1.0, abs(s["dual_bound"])))
    assert s["score"] == pytest.approx(math.log(joint[labels]), abs=1e-9)
    assert s["score"] == pytest.approx(math.log(best), abs=1e-9)
    assert s["dual_bound"] >= math.log(best) - 1e-9
    if method == "dd":
        assert s["rounding"]["solver_score"] <= s["score"] + 1e-12  # the search never lowers it


def test_wrong_method_is_an_error(model, tmp_path):
    path, _ = model
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--method", "bethe", "--quiet"])
    assert r.exit_code == 2 and "--method" in r.output and "auto, exact, dd" in r.output
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
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--out", "", "--quiet"])
    assert r.exit_code == 2 and "expected --out a file path, got ''" in r.output
    if os.path.isdir("/proc/self"):  # a folder where even root cannot create files
        r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--out", "/proc/x.MAP", "--quiet"])
        assert r.exit_code == 2 and "writable folder" in r.output and "/proc/x.MAP" in r.output
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


def test_time_limit_option(model, tmp_path):
    path, _ = model
    out = tmp_path / "r.MAP"
    r = CliRunner().invoke(
        _app(),
        ["solve", str(path), "--task", "MAP", "--method", "dd", "--time-limit", "0", "--out", str(out), "--quiet"],
    )
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "r.MAP.json").read_text())
    assert s["rounding"]["rounds"] == 0 and s["certificate_source"] == "dual decomposition"
    for bad in (-1.0, float("nan"), float("inf"), "10"):
        with pytest.raises(ValueError, match="--time-limit"):
            solve_file(path, "MAP", time_limit=bad, out=out, progress=False)
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--time-limit", "-1", "--quiet"])
    assert r.exit_code == 2 and "--time-limit" in r.output


def test_exact_on_a_model_too_large_is_a_clear_error(tmp_path):
    side = 40  # a 40 x 40 binary grid: elimination tables of about 2**41 entries
    n = side * side
    pairs = [(r * side + c, r * side + c + 1) for r in range(side) for c in range(side - 1)]
    pairs += [(r * side + c, (r + 1) * side + c) for r in range(side - 1) for c in range(side)]
    lines = ["MARKOV", str(n), " ".join(["2"] * n), str(len(pairs))] + [f"2 {i} {j}" for i, j in pairs]
    lines += ["4\n 1 2 2 1"] * len(pairs)
    path = tmp_path / "grid.uai"
    path.write_text("\n".join(lines) + "\n")
    r = CliRunner().invoke(_app(), ["solve", str(path), "--task", "MAP", "--method", "exact", "--quiet"])
    assert r.exit_code == 2 and "max_entries" in r.output and "use method 'dd'" in r.output
    assert len(r.output.strip().splitlines()) == 1
    assert not (tmp_path / "grid.uai.MAP").exists()
