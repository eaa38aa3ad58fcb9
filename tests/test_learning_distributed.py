"""Data-parallel learning: two gloo processes under torchrun give the single-process answer."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from crfkit.data.synthetic import synthetic_instances
from crfkit.learning import FeatureCRF, fit

SCRIPT = str(Path(__file__).resolve().parents[1] / "benchmarks" / "learn_distributed.py")


@pytest.mark.parametrize("method", ["full", pytest.param("bbpl", marks=pytest.mark.slow)])
def test_two_process_gloo_matches_single_process(tmp_path, method):
    import torch.distributed as tdist

    if not tdist.is_available():
        pytest.skip("torch.distributed not available")
    out = tmp_path / "res.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        SCRIPT,
        "--graph",
        "grid",
        "--size",
        "3",
        "--instances",
        "4",
        "--labels",
        "3",
        "--unary-dim",
        "3",
        "--pairwise-dim",
        "2",
        "--samples",
        "5",
        "--seed",
        "1",
        "--method",
        method,
        "--blocks",
        "2",
        "--steps",
        "20",
        "--out",
        str(out),
    ]
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["world_size"] == 2
    insts, _ = synthetic_instances(
        4, "grid", 3, num_labels=3, unary_dim=3, pairwise_dim=2, num_samples=5, seed=1
    )
    if method == "full":
        # the data-parallel gradient is the full-data gradient: identical steps
        ref = fit(
            FeatureCRF(3, 3, 2),
            insts,
            method="full",
            blocks=2,
            max_steps=20,
            gtol=0.0,
            eval_every=2,
        )
        assert torch.allclose(
            torch.tensor(got["weights"], dtype=torch.float64), ref.weights, atol=1e-9
        )
        assert got["history"][-1]["objective"] == pytest.approx(
            ref.history[-1]["objective"], rel=1e-9
        )
    else:
        # BBPL: each rank visits its own blocks; the objective is evaluated over all instances
        assert got["history"][-1]["objective"] < got["history"][0]["objective"]
