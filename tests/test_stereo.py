"""Stereo: matching costs, contrast weights, winner-take-all, bad-pixel rates, the CLI end to end.

References are direct loops over pixels written from the definitions in ``data/stereo.py``'s
docstrings, independent of its vectorised code.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from crfkit.data.stereo import (
    StereoPair,
    StereoParams,
    bad_pixel_rate,
    build_stereo_crf,
    contrast_weights,
    downscale,
    downscale_disparity,
    matching_cost,
    upsample_disparity,
    winner_take_all,
)


def _census_bits_direct(img: np.ndarray, r: int, y: int, x: int) -> list[bool]:
    H, W = img.shape
    bits = []
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            if dy == 0 and dx == 0:
                continue
            yy, xx = min(max(y + dy, 0), H - 1), min(max(x + dx, 0), W - 1)
            bits.append(img[yy, xx] < img[y, x])
    return bits


def _pair(rng, H=7, W=9):
    left = rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8)
    right = rng.integers(0, 256, size=(H, W, 3)).astype(np.uint8)
    return left, right


def test_cost_volume_tad_direct(rng):
    left, right = _pair(rng)
    L, trunc = 4, 40.0
    cost = matching_cost(left, right, L, "tad", ad_truncation=trunc)
    assert cost.shape == (L, 7, 9) and cost.dtype == torch.float32
    gl, gr = left.astype(np.float64).mean(2), right.astype(np.float64).mean(2)
    for d in range(L):
        for y in range(7):
            for x in range(9):
                want = min(abs(gl[y, x] - gr[y, max(x - d, 0)]), trunc)
                assert abs(float(cost[d, y, x]) - want) < 1e-4


@pytest.mark.parametrize("method", ["census", "ad_census"])
def test_cost_volume_census_direct(rng, method):
    left, right = _pair(rng, 6, 8)
    L, r = 3, 1
    cost = matching_cost(left, right, L, method, census_radius=r, ad_scale=7.0, census_scale=5.0)
    assert cost.shape == (L, 6, 8)
    gl, gr = left.astype(np.float32).mean(2), right.astype(np.float32).mean(2)
    nbits = (2 * r + 1) ** 2 - 1
    for d in range(L):
        for y in range(6):
            for x in range(8):
                xr = max(x - d, 0)
                hd = sum(a != b for a, b in zip(_census_bits_direct(gl, r, y, x), _census_bits_direct(gr, r, y, xr)))
                if method == "census":
                    want = hd / nbits
                else:
                    ad = np.abs(left[y, x].astype(np.float64) - right[y, xr].astype(np.float64)).mean()
                    want = (1 - np.exp(-ad / 7.0)) + (1 - np.exp(-hd / 5.0 * 48.0 / nbits))
                assert abs(float(cost[d, y, x]) - want) < 1e-5


@pytest.mark.parametrize("method", ["tad", "census", "ad_census"])
def test_wta_recovers_a_known_shift(method):
    g = np.random.default_rng(7)
    H, W, shift, r = 12, 40, 5, 2
    right = g.integers(0, 256, size=(H, W + shift, 3)).astype(np.uint8)
    left = right[:, :W].copy()
    right = right[:, shift:]  # left[y, x] == right[y, x - shift]
    cost = matching_cost(left, right, 10, method, census_radius=r, ad_truncation=255.0)
    wta = winner_take_all(-cost[None])[0]
    # inside, away from the left border (x - shift >= 0) and census' replicated borders, the
    # true shift costs least everywhere (other shifts may tie by chance) and wins nearly always
    sl = (slice(r, H - r), slice(shift + r, W - r))
    assert torch.equal(cost[shift][sl], cost.min(0).values[sl])
    assert float((wta[sl] == shift).float().mean()) > 0.95


def test_bad_pixel_rate_hand_count():
    gt = np.array([[1.0, 2.0, np.inf], [4.0, 5.0, 6.0]], dtype=np.float32)
    est = np.array([[1.5, 4.5, 0.0], [4.0, 7.0, 3.0]], dtype=np.float32)
    # errors on finite gt: 0.5, 2.5, 0, 2.0, 3.0 -> > 1: 3 of 5; > 2: 2 of 5 (2.0 is not > 2)
    assert bad_pixel_rate(est, gt, 1.0) == pytest.approx(3 / 5)
    assert bad_pixel_rate(est, gt, 2.0) == pytest.approx(2 / 5)
    with pytest.raises(ValueError, match="same shape"):
        bad_pixel_rate(est[:1], gt, 1.0)
    with pytest.raises(ValueError, match="finite"):
        bad_pixel_rate(est, np.full_like(gt, np.inf), 1.0)


def test_downscale_and_upsample(rng):
    img = rng.random((9, 11, 3)).astype(np.float32)
    small = downscale(img, 2)
    assert small.shape == (4, 5, 3)
    np.testing.assert_allclose(small[1, 3], img[2:4, 6:8].mean(axis=(0, 1)), rtol=1e-6)
    disp = np.array([[1.0, np.inf], [2.0, 4.0]], dtype=np.float32)
    full = np.kron(disp, np.ones((2, 2), dtype=np.float32))
    full[0, 0] = np.inf  # block (0,0) mean of finite values: 1.0
    d2 = downscale_disparity(full, 2)
    np.testing.assert_allclose(d2, np.array([[0.5, np.inf], [1.0, 2.0]]))
    up = upsample_disparity(np.array([[1, 2], [3, 4]]), 2, (5, 5))
    assert up.shape == (5, 5)
    assert up[0, 0] == 2 and up[0, 3] == 4 and up[4, 4] == 8 and up[4, 0] == 6
    with pytest.raises(ValueError):
        upsample_disparity(np.zeros((2, 2)), 2, (7, 4))
    with pytest.raises(ValueError):
        downscale(img, 0)


def test_contrast_weights_direct(rng):
    img = rng.integers(0, 256, size=(5, 6, 3)).astype(np.uint8)
    offs = ((0, 1), (1, 0), (0, 2), (2, 0), (1, -1))
    ws = contrast_weights(img, offs, weight=0.7, sigma=15.0, floor=0.1, stride_scale=[1, 1, 0.5, 0.5, 1])
    f = img.astype(np.float64)
    for k, ((dy, dx), s) in enumerate(zip(offs, [1, 1, 0.5, 0.5, 1])):
        assert ws[k].shape == (1, 5, 6)
        for y in range(5):
            for x in range(6):
                if y + dy < 5 and 0 <= x + dx < 6:
                    diff = np.abs(f[y, x] - f[y + dy, x + dx]).max()
                    want = 0.7 * s * (0.1 + 0.9 * np.exp(-diff / 15.0))
                    assert abs(float(ws[k][0, y, x]) - want) < 1e-5


def test_build_stereo_crf_synthetic(rng):
    left = rng.integers(0, 256, size=(16, 24, 3)).astype(np.uint8)
    right = np.roll(left, -2, axis=1)
    gt = np.full((16, 24), 2.0, dtype=np.float32)
    pair = StereoPair(left, right, gt)
    crf, parts = build_stereo_crf(pair, StereoParams(factor=4, cost_factor=2, num_labels=3))
    assert crf.shape == (1, 3, 4, 6)
    assert parts["cost"].shape == (3, 4, 6)
    # each grid pixel's cost is the mean of its 2x2 half-resolution costs
    half = matching_cost(downscale(left, 2), downscale(right, 2), 3, "census")
    np.testing.assert_allclose(parts["cost"][:, 1, 2].numpy(), half[:, 2:4, 4:6].mean(dim=(1, 2)).numpy(), rtol=1e-6)
    torch.testing.assert_close(crf.unary, -parts["cost"][None])
    with pytest.raises(ValueError, match="divide"):
        build_stereo_crf(pair, StereoParams(factor=4, cost_factor=3))


def test_cli_end_to_end(tmp_path):
    pytest.importorskip("skimage")
    pytest.importorskip("typer")
    pytest.importorskip("PIL")
    pytest.importorskip("matplotlib")
    from PIL import Image
    from typer.testing import CliRunner

    from crfkit.cli.main import build_app
    from crfkit.data.stereo import load_motorcycle
    from crfkit.io.pfm import read_pfm

    out = tmp_path / "run"
    result = CliRunner().invoke(
        build_app(),
        [
            "stereo",
            "--out",
            str(out),
            "--scale",
            "0.125",
            "--iters",
            "4",
            "--stages",
            "2",
            "--icm-sweeps",
            "1",
            "--quiet",
        ],
    )
    assert result.exit_code == 0, result.output
    for name in ("disparity.pfm", "disparity.png", "side_by_side.png", "report.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in out.iterdir()) == [
        "disparity.pfm",
        "disparity.png",
        "report.json",
        "side_by_side.png",
    ]
    gt = load_motorcycle().disparity
    disp = read_pfm(out / "disparity.pfm")
    assert disp.shape == gt.shape and np.isfinite(disp).all()
    report = json.loads((out / "report.json").read_text())
    for key in (
        "wta",
        "crf",
        "iterations",
        "time_seconds",
        "settings",
        "labels",
        "grid",
        "tuning_note",
    ):
        assert key in report
    for key in ("bad_1px", "bad_2px", "score", "dual_bound", "gap"):
        assert key in report["crf"]
    # the report's numbers agree with the files and with each other
    assert report["crf"]["bad_2px"] == pytest.approx(bad_pixel_rate(disp, gt, 2.0))
    assert report["crf"]["bad_1px"] == pytest.approx(bad_pixel_rate(disp, gt, 1.0))
    assert report["crf"]["score"] <= report["crf"]["dual_bound"] + 1e-6 * abs(report["crf"]["dual_bound"])
    assert report["crf"]["gap"] == pytest.approx(report["crf"]["dual_bound"] - report["crf"]["score"], abs=1e-6)
    assert report["iterations"] == 4 and report["grid"] == [62, 92]
    step = report["disparity_step_px"]
    np.testing.assert_allclose(disp / step, np.round(disp / step), atol=1e-5)
    with Image.open(out / "disparity.png") as im:
        assert im.size[0] == 741 and im.size[1] > 500  # the map and a colour bar below it
    with Image.open(out / "side_by_side.png") as im:
        w, h = im.size
    assert w > 4 * 741 and h > 500


def test_cli_rejects_bad_scale(tmp_path):
    pytest.importorskip("typer")
    from typer.testing import CliRunner

    from crfkit.cli.main import build_app

    result = CliRunner().invoke(build_app(), ["stereo", "--out", str(tmp_path), "--scale", "0.3", "--quiet"])
    assert result.exit_code == 2
    assert "1 / an integer" in result.output
