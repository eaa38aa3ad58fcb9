"""Data-parallel variational-likelihood learning under ``torchrun`` (an experiment script; the library
part is :func:`crfkit.learning.distributed.fit_distributed`)::

    torchrun --standalone --nproc_per_node 2 benchmarks/learn_distributed.py \\
        --graph grid --size 16 --instances 4 --method bbpl --steps 200 --out result.json

generates ``--instances`` synthetic instances (the same on every rank, seeded), keeps the rank's
share, learns, and writes the weights and history (rank 0) as JSON (stdout without ``--out``).
gloo on CPU, NCCL on GPU.
"""

from __future__ import annotations

import argparse
import json

import torch

from crfkit.data.synthetic import synthetic_instances
from crfkit.io.atomic import atomic_write_text
from crfkit.learning import FeatureCRF
from crfkit.learning.distributed import fit_distributed


def main(argv=None):
    ap = argparse.ArgumentParser(
        description="data-parallel variational-likelihood learning (run under torchrun)"
    )
    ap.add_argument("--graph", default="grid", choices=["grid", "ba"])
    ap.add_argument("--size", type=int, default=8)
    ap.add_argument("--instances", type=int, default=4)
    ap.add_argument("--labels", type=int, default=8)
    ap.add_argument("--unary-dim", type=int, default=20)
    ap.add_argument("--pairwise-dim", type=int, default=10)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--method", default="bbpl", choices=["full", "inner_dual", "bbpl"])
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--l2", type=float, default=1e-2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backend", default=None, help="gloo (default on CPU) or nccl")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    import torch.distributed as tdist

    backend = a.backend or ("nccl" if torch.cuda.is_available() else "gloo")
    tdist.init_process_group(backend)
    try:
        torch.set_num_threads(1)
        insts, _ = synthetic_instances(
            a.instances,
            a.graph,
            a.size,
            num_labels=a.labels,
            unary_dim=a.unary_dim,
            pairwise_dim=a.pairwise_dim,
            num_samples=a.samples,
            seed=a.seed,
        )
        model = FeatureCRF(a.labels, a.unary_dim, a.pairwise_dim)
        res = fit_distributed(
            model,
            insts,
            method=a.method,
            blocks=a.blocks,
            l2=a.l2,
            max_steps=a.steps,
            gtol=0.0,
            eval_every=max(1, a.steps // 10),
        )
        if tdist.get_rank() == 0:
            payload = {
                "world_size": tdist.get_world_size(),
                "backend": backend,
                "steps": res.steps,
                "seconds": res.seconds,
                "weights": res.weights.tolist(),
                "history": res.history,
            }
            text = json.dumps(payload)
            if a.out:
                atomic_write_text(a.out, text)
            else:
                print(text)
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
