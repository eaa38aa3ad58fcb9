"""DistributedDataParallel: 2 CPU processes (gloo, started by torchrun) agree with 1 process."""

from __future__ import annotations

import csv
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from crfkit.training import CPUSyncBatchNorm, load_checkpoint, load_config, train

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"
)


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


OVERRIDES = [
    "model.backbone=small",
    "model.head=none",
    "model.num_classes=4",
    "model.crf_iters=2",
    "model.small_width=8",
    "model.small_channels=8",
    "model.pairwise_init_std=0.05",
    "data.name=shapes",
    "data.shapes_train_images=8",
    "data.shapes_val_images=2",
    "data.shapes_size=24",
    "data.num_workers=0",
    "optim.lr=0.05",
    "train.steps=3",
    "train.batch_size=4",
    "train.checkpoint_every=0",
    "train.log_every=1",
    "train.progress=false",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_processes_agree_with_one(tmp_path):
    one = tmp_path / "one"
    train(load_config(None, OVERRIDES), str(one), evaluate_at_end=False)
    two = tmp_path / "two"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes=1",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "crfkit.cli.main",
        "segment",
        "train",
        "--out",
        str(two),
        "--no-eval",
        "--no-progress",
    ]
    for o in OVERRIDES:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    a = load_checkpoint(str(one / "checkpoint.pt"))
    b = load_checkpoint(str(two / "checkpoint.pt"))
    assert a["step"] == b["step"] == 3
    for k in a["model"]:
        if a["model"][k].is_floating_point():
            torch.testing.assert_close(b["model"][k], a["model"][k], rtol=1e-4, atol=1e-5, msg=k)
        else:
            assert torch.equal(a["model"][k], b["model"][k]), k
    with open(one / "log.csv") as f1, open(two / "log.csv") as f2:
        l1 = [float(r["loss"]) for r in csv.DictReader(f1)]
        l2 = [float(r["loss"]) for r in csv.DictReader(f2)]
    assert l1 == pytest.approx(l2, rel=1e-4)


def test_cpu_sync_batchnorm_alone_matches_batchnorm():
    torch.manual_seed(0)
    bn = torch.nn.BatchNorm2d(3)
    sbn = CPUSyncBatchNorm(3)
    sbn.load_state_dict(bn.state_dict())
    x = torch.randn(4, 3, 5, 6, dtype=torch.float64, requires_grad=True)
    bn, sbn = bn.double(), sbn.double()
    y1, y2 = bn(x), sbn(x)
    torch.testing.assert_close(y2, y1)
    g = torch.randn_like(y1)
    (gx1,) = torch.autograd.grad(y1, x, g)
    (gx2,) = torch.autograd.grad(y2, x, g)
    torch.testing.assert_close(gx2, gx1)
    torch.testing.assert_close(sbn.running_mean, bn.running_mean)
    torch.testing.assert_close(sbn.running_var, bn.running_var)
    bn.eval()
    sbn.eval()
    torch.testing.assert_close(sbn(x), bn(x))
