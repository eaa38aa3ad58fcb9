"""Graph compilation for convex BP: a graph's index tensors, built once (``docs/maths.md``, "Convex BP
messages").

The ``2E`` directed edges ``d`` (``d < E``: ``edges[d, 0] → edges[d, 1]``; ``d ≥ E``: the reverse of
edge ``d − E``) with their source, target, undirected edge and reverse, so that a sweep is a few
gathers and scatters over flat tensors (no Python loop over nodes or edges); and node blocks
(:class:`Block`): what a block update reads and writes.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import CRFValueError

__all__ = ["CompiledGraph", "Block"]


class CompiledGraph:
    """Index tensors of a graph, built once.

    Attributes:
        N, E: number of nodes and edges.
        edges: ``[E, 2]`` long.
        dsrc, ddst: ``[2E]`` source and target node of each directed edge.
        dedge: ``[2E]`` undirected edge of each directed edge.
        rev: ``[2E]`` the reverse directed edge.
        degree: ``[N]`` long.
    """

    def __init__(self, edges: torch.Tensor, num_nodes: int):
        edges = edges.long()
        self.N = int(num_nodes)
        self.E = int(edges.shape[0])
        self.edges = edges
        E = self.E
        self.dsrc = torch.cat([edges[:, 0], edges[:, 1]])
        self.ddst = torch.cat([edges[:, 1], edges[:, 0]])
        ar = torch.arange(E, device=edges.device)
        self.dedge = torch.cat([ar, ar])
        self.rev = torch.cat([ar + E, ar])
        self.degree = torch.bincount(self.ddst, minlength=self.N)

    @property
    def device(self):
        return self.edges.device

    def block(self, nodes: torch.Tensor) -> Block:
        """Precompute the indices of a node block (see :class:`Block`)."""
        return Block(self, nodes)


class Block:
    """A node block and what a block update touches.

    Attributes:
        nodes: ``[n_b]`` the block's nodes (sorted, unique).
        din: ``[D_b]`` directed edges whose target is in the block (the messages updated).
        edges: ``[E_b]`` undirected edges incident on the block (their beliefs are refreshed).
        region: ``[R_b]`` block nodes and their neighbours (the potentials a block update reads).
    """

    def __init__(self, graph: CompiledGraph, nodes: torch.Tensor):
        if not isinstance(nodes, torch.Tensor):
            nodes = torch.as_tensor(np.asarray(nodes), dtype=torch.long)
        nodes = nodes.to(graph.device).long().flatten().unique()
        if nodes.numel() == 0:
            raise CRFValueError("expected a non-empty node block, got no nodes")
        if int(nodes.min()) < 0 or int(nodes.max()) >= graph.N:
            raise CRFValueError(
                f"expected block nodes in [0, {graph.N - 1}], got values in [{int(nodes.min())}, {int(nodes.max())}]"
            )
        mask = torch.zeros(graph.N, dtype=torch.bool, device=graph.device)
        mask[nodes] = True
        self.nodes = nodes
        self.mask = mask
        self.din = torch.nonzero(mask[graph.ddst]).flatten()
        self.edges = graph.dedge[self.din].unique()
        self.region = torch.cat([nodes, graph.dsrc[self.din]]).unique()
        self.src = graph.dsrc[self.din]
        self.dst = graph.ddst[self.din]
        self.rev = graph.rev[self.din]

    def __len__(self):
        return int(self.nodes.numel())
