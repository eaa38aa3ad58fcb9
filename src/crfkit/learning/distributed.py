"""Data-parallel learning over examples with ``torch.distributed``.

Every rank holds its own instances (:func:`shard`), computes ``Σ_k M_k Fᵀ b_k`` over them and the
ranks sum it with ``all_reduce`` before every (identical) gradient step: ``fit(...,
distributed=True)``.  gloo on CPU, NCCL on GPU.  Started with ``torchrun``::

    torchrun --standalone --nproc_per_node 2 -m crfkit.learning.distributed \\
        --graph grid --size 16 --instances 4 --method bbpl --steps 200 --out result.json

which generates ``--instances`` synthetic instances (the same on every rank, seeded), keeps the
rank's share, learns, and writes the weights and history (rank 0) as JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import torch

from .learners import fit
from .models import FeatureCRF

__all__ = ["shard", "fit_distributed", "main"]


def shard(items, rank: int | None = None, world_size: int | None = None) -> list:
    """This rank's share of ``items`` (round robin)."""
    import torch.distributed as tdist

    if rank is None:
        rank = tdist.get_rank()
    if world_size is None:
        world_size = tdist.get_world_size()
    return list(items)[rank::world_size]


def fit_distributed(model, instances, **kwargs):
    """:func:`crfkit.learning.fit` over this rank's share of ``instances`` (all ranks pass the same
    list), gradients summed over ranks. The process group must be initialised."""
    mine = shard(instances)
    if not mine:
        raise ValueError("expected at least one instance per rank, got none for this rank")
    return fit(model, mine, distributed=True, **kwargs)


def small_instances(
    count: int,
    graph: str,
    size: int,
    *,
    num_labels: int,
    unary_dim: int,
    pairwise_dim: int,
    num_samples: int,
    seed: int,
):
    """``count`` synthetic instances from one true model (distinct features and samples)."""
    from ..data.synthetic import ba_edges, grid_edges, random_feature_crf, random_instance

    true = random_feature_crf(num_labels, unary_dim, pairwise_dim, 1.0, seed=seed)
    out = []
    for k in range(count):
        if graph == "grid":
            edges, n, shape = grid_edges(size, size), size * size, (size, size)
        else:
            edges, n, shape = ba_edges(size, 2, seed=seed + k), size, None
        inst, _ = random_instance(
            edges,
            n,
            num_labels=num_labels,
            unary_dim=unary_dim,
            pairwise_dim=pairwise_dim,
            num_samples=num_samples,
            model=true,
            grid_shape=shape,
            seed=seed + 17 * k,
            burn_in=50,
            thin=2,
        )
        out.append(inst)
    return out, true


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
        insts, _ = small_instances(
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
                d = os.path.dirname(os.path.abspath(a.out))
                fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp_")
                with os.fdopen(fd, "w") as f:
                    f.write(text)
                os.replace(tmp, a.out)
            else:
                print(text)
    finally:
        tdist.destroy_process_group()


if __name__ == "__main__":
    main()
