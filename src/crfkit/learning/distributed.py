"""Data-parallel learning over examples with ``torch.distributed``.

Every rank holds its own instances (:func:`shard`), computes ``Σ_k M_k Fᵀ b_k`` over them and the
ranks sum it with ``all_reduce`` before every (identical) gradient step: ``fit(...,
distributed=True)``.  gloo on CPU, NCCL on GPU.  Started with ``torchrun``::

    torchrun --standalone --nproc_per_node 2 benchmarks/learn_distributed.py \\
        --graph grid --size 16 --instances 4 --method bbpl --steps 200 --out result.json

(``benchmarks/learn_distributed.py``) which generates ``--instances`` synthetic instances (the same
on every rank, seeded), keeps the rank's share, learns, and writes the weights and history (rank 0)
as JSON.
"""

from __future__ import annotations

from .learners import fit

__all__ = ["shard", "fit_distributed"]


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
