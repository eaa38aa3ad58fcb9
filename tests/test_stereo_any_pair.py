"""Stereo for any pair: the energy's resolution independence (closed form), generated pairs with
known disparity (layers, slanted planes, occlusions, an exposure change), ground-truth files, the
CLI on user images, bad input (one-line errors, nothing written) and whole-folder output."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from crfkit.data.stereo import StereoPair, StereoParams, bad_pixel_rate, build_stereo_crf, synthetic_pair


@pytest.mark.parametrize("factor", [1, 2, 4])
def test_smoothness_per_full_resolution_pixel(factor):
    # uniform views: every census cost is 0, so the score is the smoothness alone.  A vertical
    # depth edge of jump J px along the full height H costs sw * J * H per stride-1 pixel pair
    # crossing it, plus stride2_scale * 2 stride-2 pairs per row: -score = sw * J * H * (1 + 2 s2),
    # whatever the grid's resolution (closed form; the grid divides the energy by f^2).
    H = W = 32
    img = np.full((H, W, 3), 128, dtype=np.uint8)
    p = StereoParams(factor=factor, max_disparity=12, smooth_weight=0.3, truncation=16, stride2_scale=0.5)
    crf, parts = build_stereo_crf(StereoPair(img, img), p)
    assert float(crf.unary.abs().max()) == 0.0
    step, (h, w) = parts["step"], crf.shape[2:]
    J = 4
    labels = torch.zeros(1, h, w, dtype=torch.long)
    labels[:, :, w // 2 :] = J // step
    energy = -float(crf.score(labels)[0]) * factor**2
    assert energy == pytest.approx(0.3 * J * H * (1 + 2 * 0.5), rel=1e-5)


def test_label_step_and_count_from_the_range():
    assert StereoParams(factor=4, max_disparity=64).label_step() == 2
    assert StereoParams(factor=4, max_disparity=64).labels() == 33  # 0, 2, ..., 64
    assert StereoParams(factor=2, max_disparity=64).labels() == 65
    p = StereoParams(factor=1, max_disparity=300, max_labels=96)
    assert p.label_step() == 4 and p.labels() == 76 and p.labels() <= 96
    with pytest.raises(ValueError, match="max_disparity"):
        StereoParams(max_disparity=0).labels()


def test_truncation_beyond_the_range_is_linear():
    # no two labels are more than L - 1 apart, so any truncation >= (L - 1) steps gives the
    # linear energy: a huge truncation is the same CRF as truncation = the disparity range
    img = synthetic_pair("layers", seed=4, shape=(32, 48), max_disparity=12)
    p = StereoParams(factor=2, max_disparity=12)
    L, step = p.labels(), p.label_step()
    huge, _ = build_stereo_crf(img, StereoParams(factor=2, max_disparity=12, truncation=1e300))
    exact, _ = build_stereo_crf(img, StereoParams(factor=2, max_disparity=12, truncation=(L - 1) * step))
    labels = torch.randint(0, L, (1, *huge.shape[2:]), generator=torch.Generator().manual_seed(0))
    assert float(huge.score(labels)[0]) == float(exact.score(labels)[0])
    assert huge.terms[0].truncation == L - 1


@pytest.mark.parametrize("kind", ["layers", "planes"])
def test_synthetic_pair_is_consistent(kind):
    # the right view at x - d(x) shows what the left shows at x, where nothing occludes it
    pair = synthetic_pair(kind, seed=3, shape=(60, 90), max_disparity=16, noise=0.0)
    d = pair.disparity
    assert np.isfinite(d).all() and 0 <= d.min() and d.max() <= 16
    ys, xs = np.mgrid[0:60, 0:90]
    xr = np.round(xs - d).astype(int)
    ok = (xr >= 0) & (np.abs(d - np.round(d)) < 0.05)
    diff = np.abs(pair.left.astype(float) - pair.right[ys, np.clip(xr, 0, 89)].astype(float)).max(axis=2)
    assert np.median(diff[ok]) < 3.0  # occluded pixels (a minority) differ


def _match(pair, D, scale, iters=60):
    import crfkit.stereo

    return crfkit.stereo.match(pair.left, pair.right, max_disparity=D, scale=scale, iters=iters)


@pytest.mark.parametrize(
    "kind, exposure",
    [("layers", {}), ("planes", {"gain": 0.7, "bias": 15.0, "gamma": 1.2})],
)
def test_match_recovers_generated_disparity(kind, exposure):
    pair = synthetic_pair(kind, seed=11, shape=(120, 160), max_disparity=24, **exposure)
    res = _match(pair, 24, 0.25)
    assert res.disparity.shape == (120, 160) and res.disparity.dtype == np.float32
    assert res.score <= res.bound + 1e-6 * abs(res.bound) and res.gap >= -1e-6
    crf_bad = bad_pixel_rate(res.disparity, pair.disparity, 2.0)
    wta_bad = bad_pixel_rate(res.wta_disparity, pair.disparity, 2.0)
    assert crf_bad < 0.12 and crf_bad < 0.7 * wta_bad
    assert set(res.timing) >= {"build", "solve", "total"}


@pytest.mark.parametrize("kind", ["layers", "planes"])
def test_half_resolution_no_worse_than_quarter(kind):
    # the energy's optimum (alpha-expansion, gco: within 0.1% of solve_map's score, far faster)
    # at half resolution is at least as accurate as at quarter, on pairs not used for tuning
    pytest.importorskip("gco")
    import importlib.util

    from crfkit.data.stereo import upsample_disparity

    path = os.path.join(os.path.dirname(__file__), os.pardir, "benchmarks", "bench_stereo.py")
    spec = importlib.util.spec_from_file_location("bench_stereo", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    pair = synthetic_pair(kind, seed=200, shape=(240, 320), max_disparity=40)
    bad = {}
    for f in (4, 2):
        crf, parts = build_stereo_crf(pair, StereoParams(factor=f, max_disparity=40))
        labels = bench.alpha_expansion(crf)[0]
        up = upsample_disparity(labels[0].double().numpy() * parts["step"] / f, f, pair.disparity.shape)
        bad[f] = bad_pixel_rate(up, pair.disparity, 2.0)
    assert bad[2] <= bad[4]


def test_match_rejects_bad_input():
    import crfkit.stereo

    a = np.zeros((20, 30), np.uint8)
    with pytest.raises(ValueError, match="same size"):
        crfkit.stereo.match(a, np.zeros((20, 31), np.uint8), max_disparity=5)
    with pytest.raises(ValueError, match="at least"):
        crfkit.stereo.match(np.zeros((1, 1), np.uint8), np.zeros((1, 1), np.uint8), max_disparity=1)
    with pytest.raises(ValueError, match="max_disparity"):
        crfkit.stereo.match(a, a, max_disparity=0)
    with pytest.raises(ValueError, match="below the image width"):
        crfkit.stereo.match(a, a, max_disparity=30)
    with pytest.raises(ValueError, match="2 to 512 labels"):  # below one label step (2 px at 1/4)
        crfkit.stereo.match(a, a, max_disparity=1)
    with pytest.raises(TypeError, match="StereoParams fields"):
        crfkit.stereo.match(a, a, max_disparity=5, smoothness=1.0)
    for kw, needle in [
        ({"iters": 0}, "iters"),
        ({"iters": 2.5}, "iters"),
        ({"stages": 0}, "stages"),
        ({"decode_every": -1}, "decode_every"),
        ({"icm_sweeps": -1}, "icm_sweeps"),
        ({"gamma": -1.0}, "gamma"),
        ({"gamma": float("nan")}, "gamma"),
        ({"callback": 3}, "callback"),
    ]:
        with pytest.raises((ValueError, TypeError), match=needle):
            crfkit.stereo.match(a, a, max_disparity=5, **kw)
    with pytest.raises(ValueError, match="no such file"):
        crfkit.stereo.match("/nonexistent/left.png", "/nonexistent/right.png", max_disparity=5)


def test_ground_truth_files(tmp_path):
    from PIL import Image

    from crfkit.io.pfm import write_pfm
    from crfkit.stereo import load_ground_truth

    raw = np.array([[0, 8, 16], [24, 0, 255]], dtype=np.uint8)
    Image.fromarray(raw).save(tmp_path / "gt.png")
    got = load_ground_truth(tmp_path / "gt.png", 4)
    want = np.array([[np.inf, 2, 4], [6, np.inf, 63.75]], dtype=np.float32)
    np.testing.assert_array_equal(got, want)
    write_pfm(tmp_path / "gt.pfm", want * 2)
    np.testing.assert_array_equal(load_ground_truth(tmp_path / "gt.pfm", 2), want)
    with pytest.raises(ValueError, match="> 0"):
        load_ground_truth(tmp_path / "gt.png", 0)


# ----------------------------------------------------------------------------- the CLI


@pytest.fixture
def user_pair(tmp_path):
    from PIL import Image

    pair = synthetic_pair("layers", seed=2, shape=(48, 64), max_disparity=12)
    Image.fromarray(pair.left).save(tmp_path / "left.png")
    Image.fromarray(pair.right.mean(axis=2).astype(np.uint8)).save(tmp_path / "right.pgm")  # grey view
    gt = np.round(pair.disparity * 4).astype(np.uint8)
    gt[:4, :4] = 0  # unknown
    Image.fromarray(gt).save(tmp_path / "gt.png")
    return tmp_path


def _cli(args):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from crfkit.cli.main import build_app

    return CliRunner().invoke(build_app(), ["stereo", *args, "--quiet"])


def test_cli_user_pair_with_ground_truth(user_pair):
    from crfkit.io.pfm import read_pfm
    from crfkit.stereo import load_ground_truth

    out = user_pair / "run"
    base = [str(user_pair / "left.png"), str(user_pair / "right.pgm"), "--max-disparity", "12", "--scale", "0.5"]
    r = _cli([*base, "--gt", str(user_pair / "gt.png"), "--gt-scale", "4", "--iters", "5", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(out)) == ["disparity.pfm", "disparity.png", "report.json", "side_by_side.png"]
    report = json.loads((out / "report.json").read_text())
    disp = read_pfm(out / "disparity.pfm")
    gt = load_ground_truth(user_pair / "gt.png", 4)
    assert disp.shape == (48, 64)
    for t in (1, 2, 4):
        assert report["crf"][f"bad_{t}px"] == pytest.approx(bad_pixel_rate(disp, gt, t))
    first_id = report["run_id"]
    # a second run into the same folder replaces it whole: no file of the first run is left
    r = _cli([*base, "--iters", "3", "--out", str(out)])
    assert r.exit_code == 0, r.output
    report2 = json.loads((out / "report.json").read_text())
    assert report2["run_id"] != first_id and "bad_2px" not in report2["crf"] and not report2["ground_truth"]
    assert sorted(os.listdir(out)) == ["disparity.pfm", "disparity.png", "report.json", "side_by_side.png"]
    assert [n for n in os.listdir(user_pair) if n.startswith(".")] == []  # no staging folder left


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--labels", "5000"], "--labels"),
        (["--smooth-weight", "-5"], "--smooth-weight"),
        (["--smooth-weight", "1e300"], "<= 1e+06"),
        (["--truncation", "nan"], "--truncation"),
        (["--max-disparity", "0.5"], "at least 2 labels"),
        (["--iters", "0"], "--iters"),
        (["--gamma", "-1"], "--gamma"),
        (["--cost", "sad"], "--cost"),
        (["--decode-every", "-1"], "--decode-every"),
        (["--icm-sweeps", "-1"], "--icm-sweeps"),
        (["--threads", "-2"], "--threads"),
        (["--threads", "1000000"], "[0, 1024]"),
        (["--stages", "0"], "--stages"),
        (["--max-disparity", "0"], "max-disparity"),
        (["--max-disparity", "64"], "below the image width"),
        (["--scale", "0.3"], "1 / an integer"),
        (["--gt-scale", "0", "--gt", "GT"], "gt"),
    ],
)
def test_cli_bad_options_one_line_and_nothing_written(user_pair, extra, needle):
    out = user_pair / "out"
    extra = [str(user_pair / "gt.png") if e == "GT" else e for e in extra]
    args = [str(user_pair / "left.png"), str(user_pair / "right.pgm"), "--out", str(out)]
    if "--max-disparity" not in extra:
        args += ["--max-disparity", "12"]
    before = sorted(os.listdir(user_pair))
    r = _cli([*args, *extra])
    assert r.exit_code == 2, r.output
    lines = [ln for ln in r.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("crfkit stereo: error:") and needle in lines[0], r.output
    assert "Traceback" not in r.output
    assert sorted(os.listdir(user_pair)) == before


def test_cli_bad_files_and_folders(user_pair, tmp_path):
    from PIL import Image

    Image.fromarray(np.zeros((48, 60), np.uint8)).save(user_pair / "narrow.png")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(user_pair / "dot.png")
    Image.fromarray(np.full((40, 64), 8, np.uint8)).save(user_pair / "gt_small.png")
    (user_pair / "afile").write_text("x")
    (user_pair / "busy").mkdir()
    (user_pair / "busy" / "mine.txt").write_text("keep me")
    left, right = str(user_pair / "left.png"), str(user_pair / "right.pgm")
    cases = [
        ([str(user_pair / "missing.png"), right, "--out", str(user_pair / "o")], "no such file"),
        ([left, str(user_pair / "narrow.png"), "--out", str(user_pair / "o")], "same size"),
        ([str(user_pair / "dot.png"), str(user_pair / "dot.png"), "--out", str(user_pair / "o")], "at least"),
        ([left, right, "--out", ""], "--out"),
        ([left, right, "--out", str(user_pair / "afile")], "existing file"),
        ([left, right, "--out", str(user_pair / "afile" / "x")], "under the file"),
        ([left, right, "--out", str(user_pair / "busy")], "other files"),
        ([left, right, "--out", "/proc/x"], "writable"),
        ([left, "--out", str(user_pair / "o")], "both LEFT and RIGHT"),
        ([left, right, "--gt", str(user_pair / "gt_small.png"), "--out", str(user_pair / "o")], "64 x 48, got 64 x 40"),
        ([left, right, "--gt", str(user_pair / "nogt.png"), "--out", str(user_pair / "o")], "no such file"),
    ]
    before = sorted(os.listdir(user_pair))
    for args, needle in cases:
        if "--max-disparity" not in args and len(args) > 3:
            args = [*args, "--max-disparity", "12"]
        r = _cli(args)
        assert r.exit_code == 2, (args, r.output)
        lines = [ln for ln in r.output.splitlines() if ln.strip()]
        assert len(lines) == 1 and needle in lines[0], (args, r.output)
    assert sorted(os.listdir(user_pair)) == before
    assert (user_pair / "busy" / "mine.txt").read_text() == "keep me"
    r = _cli([left, right, "--out", str(user_pair / "o")])
    assert r.exit_code == 2 and "--max-disparity" in r.output


@pytest.mark.parametrize("interrupt", [KeyboardInterrupt, OSError])
def test_interrupted_rerun_leaves_the_old_run_whole(user_pair, monkeypatch, interrupt):
    # a re-run that dies after writing some of its files (Ctrl-C, a full disk) leaves the old
    # folder exactly as it was (same files, same bytes) and no staging folder beside it
    import crfkit.cli.stereo as cli

    out = user_pair / "run"
    base = [str(user_pair / "left.png"), str(user_pair / "right.pgm"), "--max-disparity", "12", "--iters", "3"]
    assert _cli([*base, "--out", str(out)]).exit_code == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    real = cli._write_outputs

    def dying(folder, *args):
        real(folder, *args)  # the new pictures are written, then the run dies
        raise interrupt("stopped")

    monkeypatch.setattr(cli, "_write_outputs", dying)
    with pytest.raises(interrupt):  # other settings: other pictures (a mix would show)
        cli.run_stereo(
            out, user_pair / "left.png", user_pair / "right.pgm", max_disparity=12, smooth_weight=0.0, progress=False
        )
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert [n for n in os.listdir(user_pair) if n.startswith(".")] == []


def test_failed_swap_puts_the_old_run_back(user_pair, monkeypatch):
    # the swap is two renames (old run aside, new run in); if the second fails the old run returns
    import crfkit.cli.stereo as cli

    out = user_pair / "run"
    base = [str(user_pair / "left.png"), str(user_pair / "right.pgm"), "--max-disparity", "12", "--iters", "3"]
    assert _cli([*base, "--out", str(out)]).exit_code == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    real_rename, calls = os.rename, []

    def flaky(src, dst):
        calls.append(os.path.basename(str(src)))
        if len(calls) == 2:
            raise OSError("disk gone")
        real_rename(src, dst)

    monkeypatch.setattr(cli.os, "rename", flaky)
    with pytest.raises(OSError, match="disk gone"):
        cli.run_stereo(out, user_pair / "left.png", user_pair / "right.pgm", max_disparity=12, iters=3, progress=False)
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert [n for n in os.listdir(user_pair) if n.startswith(".")] == []


def test_a_file_added_to_out_during_the_run_is_kept(user_pair, monkeypatch):
    # --out was checked (only crfkit's files) before the run; a file that appears in it while the
    # run solves is moved aside with the old run, never deleted
    import crfkit.cli.stereo as cli

    out = user_pair / "run"
    base = [str(user_pair / "left.png"), str(user_pair / "right.pgm"), "--max-disparity", "12", "--iters", "3"]
    assert _cli([*base, "--out", str(out)]).exit_code == 0
    real = cli._write_outputs

    def meanwhile(folder, *args):
        (out / "notes.txt").write_text("mine")
        real(folder, *args)

    monkeypatch.setattr(cli, "_write_outputs", meanwhile)
    cli.run_stereo(out, user_pair / "left.png", user_pair / "right.pgm", max_disparity=12, iters=3, progress=False)
    assert sorted(os.listdir(out)) == ["disparity.pfm", "disparity.png", "report.json", "side_by_side.png"]
    kept = [n for n in os.listdir(user_pair) if n.startswith(".run.old-")]
    assert len(kept) == 1 and (user_pair / kept[0] / "notes.txt").read_text() == "mine"
