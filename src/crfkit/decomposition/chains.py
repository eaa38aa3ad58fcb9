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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ChainPairwise", "ChainGroup", "ChainProblem"]

KINDS = ("dense", "weighted", "truncated_linear")


@dataclass
class ChainPairwise:
    """Pairwise scores along a batch of chains; edge ``k`` joins positions ``k`` and ``k+1``.

    ``kind``:

    - ``"dense"``: ``tables [C, n-1, L, L]``; entry ``[c, k, a, b]`` scores label ``a``
      at position ``k`` with label ``b`` at position ``k+1``.
    - ``"weighted"``: ``weight [C, n-1]`` times ``tables [C, L, L]`` (one table per chain,
      typically an expanded view of one table per offset); never expanded to ``L²`` per edge.
    - ``"truncated_linear"``: ``-weight[c, k] * min(|a - b|, truncation)`` with ``weight
      [C, n-1]`` and a float ``truncation`` (``1`` is the Potts model ``-w [a != b]``).
    """

    kind: str
    tables: torch.Tensor | None = None
    weight: torch.Tensor | None = None
    truncation: float | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"expected kind in {KINDS}, got {self.kind!r}")
        if self.kind == "dense" and (self.tables is None or self.tables.dim() != 4):
            raise ValueError("dense chain pairwise needs tables [C, n-1, L, L]")
        if self.kind == "weighted" and (
            self.tables is None or self.tables.dim() != 3 or self.weight is None or self.weight.dim() != 2
        ):
            raise ValueError("weighted chain pairwise needs weight [C, n-1] and tables [C, L, L]")
        if self.kind == "truncated_linear" and (
            self.weight is None or self.weight.dim() != 2 or self.truncation is None
        ):
            raise ValueError("truncated_linear chain pairwise needs weight [C, n-1] and a truncation")

    @property
    def is_potts(self) -> bool:
        return self.kind == "truncated_linear" and float(self.truncation) <= 1.0

    def num_chains(self) -> int:
        return (self.tables if self.kind == "dense" else self.weight).shape[0]

    def dense(self, num_labels: int) -> torch.Tensor:
        """The same scores as full tables ``[C, n-1, L, L]`` (for references and small problems)."""
        if self.kind == "dense":
            return self.tables
        if self.kind == "weighted":
            return self.weight[:, :, None, None] * self.tables[:, None, :, :]
        idx = torch.arange(num_labels, device=self.weight.device, dtype=self.weight.dtype)
        dist = (idx[:, None] - idx[None, :]).abs().clamp(max=float(self.truncation))
        return -self.weight[:, :, None, None] * dist

    def select(self, index: torch.Tensor) -> ChainPairwise:
        """The pairwise of a subset of chains, ``index [C']`` (long)."""
        if self.kind == "dense":
            return ChainPairwise("dense", tables=self.tables[index])
        if self.kind == "weighted":
            return ChainPairwise("weighted", tables=self.tables[index], weight=self.weight[index])
        return ChainPairwise("truncated_linear", weight=self.weight[index], truncation=self.truncation)

    def score(self, left: torch.Tensor, right: torch.Tensor) -> torch.Tensor:
        """Score of label pairs along chains: ``left, right [C, n-1]`` long -> ``[C, n-1]``."""
        if self.kind == "dense":
            C, m = left.shape
            flat = self.tables.reshape(C * m, -1)
            L = self.tables.shape[-1]
            return flat.gather(1, (left * L + right).reshape(-1, 1)).reshape(C, m)
        if self.kind == "weighted":
            C = left.shape[0]
            L = self.tables.shape[-1]
            flat = self.tables.reshape(C, L * L)
            return self.weight * flat.gather(1, left * L + right)
        dist = (left - right).abs().to(self.weight.dtype).clamp(max=float(self.truncation))
        return -self.weight * dist

    def row(self, left: torch.Tensor, num_labels: int) -> torch.Tensor:
        """Scores ``phi_k(left_k, ·)``: ``left [C, n-1]`` -> ``[C, n-1, L]`` (the right node's view)."""
        if self.kind == "dense":
            idx = left[:, :, None, None].expand(-1, -1, 1, num_labels)
            return self.tables.gather(2, idx).squeeze(2)
        if self.kind == "weighted":
            C = left.shape[0]
            rows = self.tables.gather(1, left[:, :, None].expand(C, left.shape[1], num_labels))
            return self.weight[:, :, None] * rows
        idx = torch.arange(num_labels, device=left.device)
        dist = (left[:, :, None] - idx).abs().to(self.weight.dtype).clamp(max=float(self.truncation))
        return -self.weight[:, :, None] * dist

    def column(self, right: torch.Tensor, num_labels: int) -> torch.Tensor:
        """Scores ``phi_k(·, right_k)``: ``right [C, n-1]`` -> ``[C, n-1, L]`` (the left node's view)."""
        if self.kind == "dense":
            idx = right[:, :, None, None].expand(-1, -1, num_labels, 1)
            return self.tables.gather(3, idx).squeeze(3)
        if self.kind == "weighted":
            C = right.shape[0]
            cols = self.tables.transpose(1, 2).gather(
                1, right[:, :, None].expand(C, right.shape[1], num_labels)
            )
            return self.weight[:, :, None] * cols
        return self.row(right, num_labels)


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
