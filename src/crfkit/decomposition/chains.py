"""Batched, padded chains: the common currency of the decomposition layer.

A *chain problem* is a model cut into chains that cover every edge exactly once
(every node lies in one or more chains).  Grids (``decomposition.grid``) and
general graphs (``decomposition.graph``) both compile to a :class:`ChainProblem`;
dual decomposition (``inference``) runs on it without knowing where it came from.

Shape letters: ``C`` chains, ``n`` (padded) chain length, ``L`` labels,
``V`` nodes of the whole batch (flattened), ``B`` batch.

Chains are right-padded: chain ``c`` has ``lengths[c]`` valid positions
``0 .. lengths[c] - 1``; edge ``k`` joins positions ``k`` and ``k + 1``.
Entries of padded positions and edges are ignored by every kernel (their values
may be anything finite).

The pairwise scores along chains are :class:`~crfkit.models.chain_pairwise.ChainPairwise`
objects (one class per chain form; re-exported here, where chain backends import them from).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..models.chain_pairwise import (
    CHAIN_FORMS,
    ChainPairwise,
    DenseChainPairwise,
    TruncatedLinearChainPairwise,
    WeightedChainPairwise,
)

__all__ = [
    "ChainPairwise",
    "DenseChainPairwise",
    "WeightedChainPairwise",
    "TruncatedLinearChainPairwise",
    "CHAIN_FORMS",
    "ChainGroup",
    "ChainProblem",
]

@dataclass
class ChainGroup:
    """Chains that share one pairwise form (e.g. all chains of one grid offset).

    ``nodes [C, n]`` long: the node (index into the problem's flattened ``V`` nodes) at
    each chain position, ``-1`` on padding. ``lengths [C]`` long. ``pairwise``: a
    :class:`ChainPairwise` over the same ``C`` chains. ``name``: for messages and plots.
    """

    nodes: torch.Tensor
    lengths: torch.Tensor
    pairwise: ChainPairwise
    name: str = ""

    @property
    def num_chains(self) -> int:
        return self.nodes.shape[0]

    @property
    def max_length(self) -> int:
        return self.nodes.shape[1]


@dataclass
class ChainProblem:
    """A (batch of) pairwise model(s) cut into chain groups.

    ``unary [V, L]``: node scores of all nodes of the batch, flattened.
    ``node_batch [V]`` long: which batch element each node belongs to.
    ``groups``: the chain groups; together their edges are the model's edges, each once.
    ``node_shape``: how to fold ``[V, ...]`` back (e.g. ``(B, H, W)``), for results.
    """

    unary: torch.Tensor
    node_batch: torch.Tensor
    batch_size: int
    groups: list[ChainGroup]
    node_shape: tuple[int, ...] = field(default_factory=tuple)

    @property
    def num_nodes(self) -> int:
        return self.unary.shape[0]

    @property
    def num_labels(self) -> int:
        return self.unary.shape[1]
