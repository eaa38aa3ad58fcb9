"""Training loop, config, metrics, checkpoints and resume on tiny generated data (CPU)."""

from __future__ import annotations

import csv
import os

import numpy as np
import pytest
import torch

from crfkit._validation import CRFTypeError, CRFValueError
from crfkit.training import (
    Config,
    confusion_matrix,
    evaluate,
    iou_from_confusion,
    load_checkpoint,
    load_config,
    load_model,
    poly_lr,
    predict_images,
    segmentation_metrics,
    train,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _one_thread():
    """Small tensors: one thread avoids oversubscription on a shared machine."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_config(crf_iters: int = 2, steps: int = 6, **train_kw) -> Config:
    over = [
        "model.backbone=small",
        "model.head=none",
        "model.num_classes=4",
        f"model.crf_iters={crf_iters}",
        "model.small_width=8",
        "model.small_channels=8",
        "model.pairwise_init_std=0.05",
        "data.name=shapes",
        "data.shapes_train_images=16",
        "data.shapes_val_images=4",
        "data.shapes_size=24",
        "data.num_workers=0",
        "optim.lr=0.05",
        f"train.steps={steps}",
        "train.batch_size=4",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.progress=false",
        "train.eval_batch_size=4",
    ]
    over += [f"train.{k}={v}" for k, v in train_kw.items()]
    return load_config(None, over)


def test_defaults_are_the_papers_recipe():
    cfg = Config()
    assert (cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay, cfg.optim.poly_power) == (
        0.007,
        0.9,
        1e-4,
        0.9,
    )
    assert (cfg.data.crop_size, cfg.data.scale_min, cfg.data.scale_max, cfg.data.rotation) == (
        513,
        0.5,
        1.5,
        10.0,
    )
    assert cfg.train.batch_size == 16 and cfg.train.steps == 30000 and cfg.model.sync_bn
    assert cfg.model.output_stride == 16


def test_config_files_and_overrides(tmp_path):
    p = tmp_path / "c.toml"
    p.write_text('[model]\ncrf_iters = 15\nhead = "aspp"\n[optim]\nlr = 0.01\n')
    cfg = load_config(
        str(p),
        ["optim.lr=0.02", "model.offsets=[[0,1],[1,0]]", "data.root=/data/x", "train.amp=false"],
    )
    assert cfg.model.crf_iters == 15 and cfg.model.head == "aspp"
    assert cfg.optim.lr == 0.02 and cfg.model.offsets == [[0, 1], [1, 0]]
    assert cfg.data.root == "/data/x" and cfg.train.amp is False
    assert Config.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(CRFValueError, match="unknown config key optim.learning_rate"):
        load_config(None, ["optim.learning_rate=1"])
    with pytest.raises(CRFTypeError, match="expected int for train.steps"):
        load_config(None, ["train.steps=1.5"])
    with pytest.raises(CRFValueError, match="section.key=value"):
        load_config(None, ["lr=1"])


@pytest.mark.parametrize("name", sorted(os.listdir(os.path.join(ROOT, "configs"))))
def test_bundled_configs_load(name):
    cfg = load_config(os.path.join(ROOT, "configs", name))
    assert cfg.model.num_classes >= 2


def test_poly_schedule_closed_form():
    assert poly_lr(0.007, 0, 100, 0.9) == 0.007
    assert abs(poly_lr(0.007, 50, 100, 0.9) - 0.007 * 0.5**0.9) < 1e-15
    assert poly_lr(0.007, 100, 100, 0.9) == 0.0


def test_confusion_and_iou_against_numpy():
    rng = np.random.default_rng(0)
    L = 4
    t = rng.integers(0, L, 500)
    t[rng.random(500) < 0.1] = 255
    p = rng.integers(0, L, 500)
    conf = confusion_matrix(torch.from_numpy(p), torch.from_numpy(t), L)
    for a in range(L):
        for b in range(L):
            assert conf[a, b] == np.sum((t == a) & (p == b))
    iou = iou_from_confusion(conf)
    for c in range(L):
        inter = np.sum((t == c) & (p == c))
        union = np.sum(((t == c) | (p == c)) & (t != 255))
        assert abs(float(iou[c]) - inter / union) < 1e-12
    m = segmentation_metrics(conf)
    assert abs(m["miou"] - float(iou.mean())) < 1e-12
    # a class that never occurs nor is predicted is left out of the mean
    conf2 = torch.zeros(3, 3, dtype=torch.int64)
    conf2[0, 0], conf2[1, 1], conf2[1, 0] = 5, 3, 1
    m2 = segmentation_metrics(conf2)
    assert m2["iou"][2] is None and abs(m2["miou"] - (5 / 6 + 3 / 4) / 2) < 1e-12


@pytest.mark.parametrize("crf_iters", [0, 2])
def test_a_few_steps_lower_the_loss(tmp_path, crf_iters):
    torch.manual_seed(0)
    cfg = tiny_config(crf_iters=crf_iters, steps=8, checkpoint_every=0)
    cfg.data.shapes_train_images = 4  # one global batch, seen every step
    cfg.optim.lr = 0.1
    out = train(cfg, str(tmp_path), evaluate_at_end=False)
    with open(tmp_path / "log.csv") as fh:
        losses = [float(r["loss"]) for r in csv.DictReader(fh)]
    assert len(losses) == 8 and out["step"] == 8
    assert losses[-1] < 0.8 * losses[0]


def test_resume_is_bitwise_equal(tmp_path):
    cfg = tiny_config(crf_iters=2, steps=6)
    full = train(cfg, str(tmp_path / "full"), evaluate_at_end=False)
    part = train(
        cfg, str(tmp_path / "part"), stop_after=5, evaluate_at_end=False
    )  # dies after step 5
    assert part["step"] == 5
    assert (
        load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))["step"] == 4
    )  # the last periodic one
    resumed = train(cfg, str(tmp_path / "part"), resume=True, evaluate_at_end=False)
    assert full["step"] == resumed["step"] == 6
    a = load_checkpoint(str(tmp_path / "full" / "checkpoint.pt"))
    b = load_checkpoint(str(tmp_path / "part" / "checkpoint.pt"))
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(sa["momentum_buffer"], sb["momentum_buffer"])
    # the log was cut back to the checkpoint and continued: one row per step
    with open(tmp_path / "part" / "log.csv") as fh:
        assert [int(r["step"]) for r in csv.DictReader(fh)] == [1, 2, 3, 4, 5, 6]
    # a different schedule cannot resume the run
    bad = tiny_config(crf_iters=2, steps=6)
    bad.optim.lr = 0.5
    with pytest.raises(CRFValueError, match="optim"):
        train(bad, str(tmp_path / "part"), resume=True, evaluate_at_end=False)


def test_eval_and_predict_from_checkpoint(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    cfg = tiny_config(crf_iters=2, steps=2)
    summary = train(cfg, str(tmp_path))
    m = summary["metrics"]
    assert 0.0 <= m["miou"] <= 1.0 and len(m["iou"]) == 4
    assert (tmp_path / "metrics.json").exists() and (tmp_path / "eval.csv").exists()
    model, cfg2 = load_model(str(tmp_path / "checkpoint.pt"))
    assert cfg2 == cfg
    from crfkit.training import build_datasets

    _, val = build_datasets(cfg2, train=False)
    again = evaluate(model, val, 4, "cpu", cfg=cfg2)
    assert again["miou"] == pytest.approx(m["miou"], abs=1e-12)
    img = (np.random.default_rng(0).random((20, 22, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "x.jpg")
    written = predict_images(
        model,
        [str(tmp_path / "x.jpg")],
        str(tmp_path / "pred"),
        mean=(0.5, 0.5, 0.5),
        std=(0.25, 0.25, 0.25),
    )
    with Image.open(written[0]) as im:
        assert im.mode == "P" and im.size == (22, 20)
        assert set(np.unique(np.asarray(im))) <= {0, 1, 2, 3}


def test_cli_train_eval_predict(tmp_path):
    pytest.importorskip("typer")
    Image = pytest.importorskip("PIL.Image")
    from crfkit.cli.main import main

    common = [
        "--set",
        "model.backbone=small",
        "--set",
        "model.head=none",
        "--set",
        "model.num_classes=4",
        "--set",
        "model.small_width=8",
        "--set",
        "model.small_channels=8",
        "--set",
        "data.shapes_train_images=8",
        "--set",
        "data.shapes_val_images=2",
        "--set",
        "data.shapes_size=24",
        "--set",
        "data.num_workers=0",
        "--set",
        "train.batch_size=4",
    ]
    cfg = os.path.join(ROOT, "configs", "shapes_cpu_crf.toml")
    out = str(tmp_path / "run")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "segment",
                "train",
                cfg,
                "--out",
                out,
                "--set",
                "train.steps=2",
                "--set",
                "model.crf_iters=2",
                "--no-progress",
                *common,
            ]
        )
    assert e.value.code == 0
    assert os.path.isfile(os.path.join(out, "checkpoint.pt"))
    with pytest.raises(SystemExit) as e:
        main(
            [
                "segment",
                "eval",
                os.path.join(out, "checkpoint.pt"),
                "--out",
                str(tmp_path / "ev.json"),
            ]
        )
    assert e.value.code == 0 and (tmp_path / "ev.json").exists()
    img = (np.random.default_rng(0).random((24, 24, 3)) * 255).astype(np.uint8)
    Image.fromarray(img).save(tmp_path / "y.jpg")
    with pytest.raises(SystemExit) as e:
        main(
            [
                "segment",
                "predict",
                os.path.join(out, "checkpoint.pt"),
                str(tmp_path / "y.jpg"),
                "--out",
                str(tmp_path / "pred"),
            ]
        )
    assert e.value.code == 0 and (tmp_path / "pred" / "y.png").exists()
