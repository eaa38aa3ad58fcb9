"""Cut a pairwise model on any graph into chains: a path cover.

Every edge lies in exactly one chain; every node lies in at least one chain (nodes that no
chain reaches, e.g. isolated nodes, become single-node chains).  Chains are *simple* paths
(no node twice in one chain), so each chain is a tree sub-problem of dual decomposition.

The cover is greedy and O(E) in practice: from a start node, walk along unused edges to
nodes not yet on the current path until stuck, then extend the path the same way from its
start node in the other direction; repeat while unused edges remain.  Start nodes are taken
odd-degree first (the ends of a path cover), then in index order.  Chains are then sorted
by length and cut into a few :class:`~crfkit.decomposition.chains.ChainGroup` of similar
lengths, which limits padding.

The structure (``nodes [C, n]``, edge indices and orientation per chain position) depends
only on the graph; it is computed with numpy once and cached by graph.  Pairwise scores are
gathered from the model's tensors with torch indexing, so the problem is differentiable with
respect to the unary and pairwise tensors.

Shape letters: ``B`` batch, ``N`` nodes, ``E`` edges, ``L`` labels, ``C`` chains, ``n``
(padded) chain length.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFTypeError, CRFValueError
from ..models.graph import GraphMRF
from .chains import ChainGroup, ChainProblem

__all__ = [
    "PathCover",
    "path_cover",
    "GraphChains",
    "graph_chains",
    "graph_chain_problem",
    "DEFAULT_MAX_LENGTH",
]


@dataclass(frozen=True)
class PathCover:
    """Chains covering a graph, flattened (numpy, one graph, no batch).

    ``ptr [C + 1]``: chain ``c`` is ``nodes[ptr[c]:ptr[c + 1]]``. ``nodes [sum of lengths]``.
    ``edge_ids [sum of lengths - C]``: chain ``c``'s edges are
    ``edge_ids[ptr[c] - c : ptr[c + 1] - c - 1]``; edge ``k`` of a chain joins its positions
    ``k`` and ``k + 1``. ``flipped`` (same shape, bool): the chain walks that edge from
    ``edges[e, 1]`` to ``edges[e, 0]``.
    """

    ptr: np.ndarray
    nodes: np.ndarray
    edge_ids: np.ndarray
    flipped: np.ndarray

    @property
    def num_chains(self) -> int:
        return len(self.ptr) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.ptr)

    def chain(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Nodes, edge ids and flips of chain ``c``."""
        a, b = int(self.ptr[c]), int(self.ptr[c + 1])
        return self.nodes[a:b], self.edge_ids[a - c : b - c - 1], self.flipped[a - c : b - c - 1]


def _adjacency(num_nodes: int, src: np.ndarray, dst: np.ndarray, eid: np.ndarray):
    order = np.argsort(src, kind="stable")
    start = np.searchsorted(src[order], np.arange(num_nodes + 1)).tolist()
    return start, dst[order].tolist(), eid[order].tolist()


def path_cover(
    num_nodes: int,
    edges,
    *,
    directed: bool = False,
    max_length: int | None = None,
) -> PathCover:
    """Greedy cover of a graph's edges by simple paths.

    Args:
        num_nodes: ``N``.
        edges: ``[E, 2]`` integer array (numpy or torch) of node pairs.
        directed: walk each edge only from ``edges[e, 0]`` to ``edges[e, 1]`` (no chain edge
            is then flipped: a shared non-symmetric table stays one table per chain).
        max_length: cap on the number of nodes of a chain (``None``: no cap).

    Returns:
        A :class:`PathCover`: every edge in exactly one chain, every node in at least one.

    The walk's state (used edges, the current path, adjacency cursors) lives in local buffers
    shared by small closures: a hot Python loop, kept in one frame for speed.
    """
    if isinstance(edges, torch.Tensor):
        edges = edges.detach().cpu().numpy()
    edges = np.asarray(edges, dtype=np.int64).reshape(-1, 2)
    N, E = int(num_nodes), int(edges.shape[0])
    if max_length is not None and int(max_length) < 2:
        raise CRFValueError(f"expected max_length >= 2 (or None), got {max_length!r}")
    cap = math.inf if max_length is None else int(max_length)
    fwd, bwd = _walk_adjacency(N, edges, directed)
    used = bytearray(E)
    on_path = bytearray(N)
    fptr = list(fwd[0][:-1])
    bptr = fptr if bwd is fwd else list(bwd[0][:-1])

    def step(v: int, adj, ptr) -> tuple[int, int]:
        start, dst, eid = adj
        p, end = ptr[v], start[v + 1]
        while p < end and used[eid[p]]:
            p += 1
        ptr[v] = p
        while p < end:
            e = eid[p]
            if not used[e] and not on_path[dst[p]]:
                return dst[p], e
            p += 1
        return -1, -1

    def walk(v: int, adj, ptr, out_nodes: list, out_edges: list, room: float) -> None:
        while room > 0:
            w, e = step(v, adj, ptr)
            if w < 0:
                return
            used[e] = 1
            on_path[w] = 1
            out_nodes.append(w)
            out_edges.append(e)
            v = w
            room -= 1

    def chain_from(s: int) -> tuple[list, list]:
        """A simple path through ``s`` along unused edges, walked greedily forward then backward."""
        on_path[s] = 1
        ahead_n: list[int] = []
        ahead_e: list[int] = []
        walk(s, fwd, fptr, ahead_n, ahead_e, cap - 1)
        back_n: list[int] = []
        back_e: list[int] = []
        walk(s, bwd, bptr, back_n, back_e, cap - 1 - len(ahead_n))
        nodes = back_n[::-1] + [s] + ahead_n
        for v in nodes:
            on_path[v] = 0
        return nodes, back_e[::-1] + ahead_e

    chains_nodes, chains_edges = _greedy_chains(edges, N, chain_from)
    return _pack_cover(chains_nodes, chains_edges, edges)


def _greedy_chains(edges: np.ndarray, N: int, chain_from) -> tuple[list, list]:
    """Chains from ``chain_from(start)`` until every edge is used: starts taken odd-degree first,
    then in index order, each repeated while it still yields a chain; then a single-node chain
    for every node no chain reached."""
    E = edges.shape[0]
    degree = np.bincount(edges.ravel(), minlength=N) if E else np.zeros(N, dtype=np.int64)
    order = np.concatenate(
        [np.flatnonzero(degree % 2 == 1), np.flatnonzero(degree % 2 == 0)]
    ).tolist()
    covered = bytearray(N)
    chains_nodes: list[list[int]] = []
    chains_edges: list[list[int]] = []
    remaining = E
    for s in order:
        if remaining == 0:
            break
        while True:
            nodes, chain_edges = chain_from(s)
            if len(nodes) == 1:
                break
            for v in nodes:
                covered[v] = 1
            chains_nodes.append(nodes)
            chains_edges.append(chain_edges)
            remaining -= len(nodes) - 1
    if remaining:  # pragma: no cover - every unused edge can always start a chain
        raise RuntimeError(f"path cover left {remaining} edges uncovered")
    for v in np.flatnonzero(np.frombuffer(bytes(covered), dtype=np.uint8) == 0).tolist():
        chains_nodes.append([v])
        chains_edges.append([])
    return chains_nodes, chains_edges


def _walk_adjacency(N: int, edges: np.ndarray, directed: bool):
    """The adjacency a path walks forward and backward from a node: one table both ways for an
    undirected cover; for a directed one, out-edges forward and in-edges backward."""
    E = edges.shape[0]
    eids = np.arange(E, dtype=np.int64)
    if directed:
        return _adjacency(N, edges[:, 0], edges[:, 1], eids), _adjacency(N, edges[:, 1], edges[:, 0], eids)
    src = np.concatenate([edges[:, 0], edges[:, 1]])
    dst = np.concatenate([edges[:, 1], edges[:, 0]])
    both = _adjacency(N, src, dst, np.concatenate([eids, eids]))
    return both, both


def _pack_cover(chains_nodes: list, chains_edges: list, edges: np.ndarray) -> PathCover:
    """Chains as lists of nodes and edge ids -> a flat :class:`PathCover` (with each chain edge's
    orientation against ``edges``)."""
    E = edges.shape[0]
    lengths = np.array([len(c) for c in chains_nodes], dtype=np.int64)
    ptr = np.zeros(len(chains_nodes) + 1, dtype=np.int64)
    np.cumsum(lengths, out=ptr[1:])
    nodes = np.fromiter((v for c in chains_nodes for v in c), dtype=np.int64, count=int(ptr[-1]))
    edge_ids = np.fromiter((e for c in chains_edges for e in c), dtype=np.int64, count=E)
    # the node at the left end of each chain edge
    left = np.delete(nodes, ptr[1:] - 1)
    flipped = edges[edge_ids, 0] != left if E else np.zeros(0, dtype=bool)
    return PathCover(ptr=ptr, nodes=nodes, edge_ids=edge_ids, flipped=flipped)


@dataclass(frozen=True)
class GraphChains:
    """One padded group of chains of a single graph (torch, no batch).

    ``nodes [C, n]`` long (``-1`` on padding), ``lengths [C]`` long, ``edge_ids [C, n - 1]``
    long (``0`` on padding), ``flipped [C, n - 1]`` bool (``False`` on padding).
    """

    nodes: torch.Tensor
    lengths: torch.Tensor
    edge_ids: torch.Tensor
    flipped: torch.Tensor


DEFAULT_MAX_LENGTH = 8
"""Default cap on the nodes of a chain.  Measured with ``solve_map`` (default continuation,
300 iterations) on a 16x16 8-label random grid written as a graph and on 300-node BA graphs:
chains capped at 8 reached a dual bound as close to the LP optimum as longer chains or closer
(e.g. 1207.1 vs 1211.7 uncapped, LP 1200.1) at lower cost per iteration on the CPU (fewer
sequential steps per kernel call)."""

STEP_OVERHEAD = 16
"""Cost of one sequential step of a chain kernel call, in chains (for grouping by length)."""


def _split_by_length(lengths_desc: np.ndarray, max_groups: int) -> list[tuple[int, int]]:
    """Cut chains sorted by decreasing length into at most ``max_groups`` contiguous groups.

    Minimises ``sum_g n_g * (C_g + STEP_OVERHEAD)``: padded cells plus a per-step cost of a
    kernel call (each group is one call whose sequential depth is its length ``n_g``).
    Returns ``(start, stop)`` ranges.
    """
    total = len(lengths_desc)
    values, first = np.unique(-lengths_desc, return_index=True)  # distinct lengths, decreasing
    values = -values
    D = len(values)
    starts = np.append(first, total)  # chain range of distinct value d: starts[d]..starts[d+1]
    G = max(1, min(int(max_groups), D))
    inf = float("inf")
    # best[g][j]: min padded cells covering distinct values 0..j-1 with g groups
    best = np.full((G + 1, D + 1), inf)
    arg = np.zeros((G + 1, D + 1), dtype=np.int64)
    best[0, 0] = 0.0
    for g in range(1, G + 1):
        for j in range(1, D + 1):
            i = np.arange(j)  # group covers distinct values i..j-1, padded to values[i]
            cost = best[g - 1, i] + values[i] * (starts[j] - starts[i] + STEP_OVERHEAD)
            k = int(np.argmin(cost))
            best[g, j], arg[g, j] = cost[k], k
    finals = best[1:, D]
    g_best = 1 + int(np.argmin(finals))
    cuts, j = [], D
    for g in range(g_best, 0, -1):
        i = int(arg[g, j])
        cuts.append((int(starts[i]), int(starts[j])))
        j = i
    return cuts[::-1]


def graph_chains(
    num_nodes: int,
    edges,
    *,
    directed: bool = False,
    max_length: int | None = DEFAULT_MAX_LENGTH,
    max_groups: int = 4,
    device=None,
) -> list[GraphChains]:
    """Path cover of one graph as padded chain groups (longest chains first).

    Args:
        num_nodes: ``N``. edges: ``[E, 2]``. directed, max_length: as :func:`path_cover`.
        max_groups: at most this many groups of similar chain lengths.

    Returns:
        A list of :class:`GraphChains` (cached by graph: do not modify the tensors).
    """
    if isinstance(edges, torch.Tensor):
        edges = edges.detach().cpu().numpy()
    edges = np.ascontiguousarray(np.asarray(edges, dtype=np.int64).reshape(-1, 2))
    key = (
        int(num_nodes),
        hashlib.sha1(edges.tobytes()).hexdigest(),
        edges.shape[0],
        bool(directed),
        max_length,
        int(max_groups),
    )
    groups = _CACHE.get(key)
    if groups is None:
        groups = _compile_groups(int(num_nodes), edges, directed, max_length, int(max_groups))
        _CACHE[key] = groups
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    else:
        _CACHE.move_to_end(key)
    if device is None:
        return list(groups)
    return [
        GraphChains(
            g.nodes.to(device), g.lengths.to(device), g.edge_ids.to(device), g.flipped.to(device)
        )
        for g in groups
    ]


_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 32


def _compile_groups(N, edges, directed, max_length, max_groups) -> list[GraphChains]:
    cover = path_cover(N, edges, directed=directed, max_length=max_length)
    lengths = cover.lengths
    order = np.argsort(-lengths, kind="stable")
    lengths_sorted = lengths[order]
    out = []
    for a, b in _split_by_length(lengths_sorted, max_groups):
        idx = order[a:b]
        lens = lengths[idx]
        C, n = len(idx), int(lens.max())
        t = np.arange(n)
        valid = t[None, :] < lens[:, None]
        pos = cover.ptr[idx][:, None] + t[None, :]
        nodes = np.where(valid, cover.nodes[np.minimum(pos, len(cover.nodes) - 1)], -1)
        te = np.arange(max(n - 1, 0))
        valid_e = te[None, :] < (lens - 1)[:, None]
        epos = (cover.ptr[idx] - idx)[:, None] + te[None, :]
        if len(cover.edge_ids):
            epos = np.minimum(epos, len(cover.edge_ids) - 1)
            eids = np.where(valid_e, cover.edge_ids[epos], 0)
            flips = np.where(valid_e, cover.flipped[epos], False)
        else:
            eids = np.zeros((C, max(n - 1, 0)), dtype=np.int64)
            flips = np.zeros((C, max(n - 1, 0)), dtype=bool)
        out.append(
            GraphChains(
                nodes=torch.from_numpy(np.ascontiguousarray(nodes, dtype=np.int64)),
                lengths=torch.from_numpy(np.ascontiguousarray(lens, dtype=np.int64)),
                edge_ids=torch.from_numpy(np.ascontiguousarray(eids, dtype=np.int64)),
                flipped=torch.from_numpy(np.ascontiguousarray(flips, dtype=bool)),
            )
        )
    return out


def graph_chain_problem(
    mrf: GraphMRF,
    *,
    max_length: int | None = DEFAULT_MAX_LENGTH,
    directed: bool | None = None,
    max_groups: int = 4,
) -> ChainProblem:
    """Compile a :class:`~crfkit.GraphMRF` into a :class:`ChainProblem` by a path cover.

    Args:
        mrf: the model; unary ``[N, L]`` or ``[B, N, L]``.
        max_length: cap on chain length in nodes (default :data:`DEFAULT_MAX_LENGTH`;
            ``None``: as long as the greedy walk goes).
        directed: walk edges only along ``edges[e, 0] -> edges[e, 1]``; ``None`` (default)
            does so only for a shared or weighted table that is not symmetric (or needs
            gradients), which keeps it one ``[L, L]`` table per chain without flips.
        max_groups: at most this many chain groups (chains of similar length together).

    Returns:
        A :class:`ChainProblem` with ``unary [V, L]``, ``V = B * N`` (node ``i`` of model ``b``
        is ``b * N + i``), ``batch_size = B`` (1 for an unbatched model) and ``node_shape``
        ``(B, N)`` for a batched model, ``(N,)`` for an unbatched one (so ``labels [V]``
        reshaped by ``node_shape`` come back as ``[N]``).  Chain pairwise scores are gathered
        from ``mrf``'s tensors (transposed where a chain walks an edge backwards), so the
        problem is differentiable with respect to them.
    """
    if not isinstance(mrf, GraphMRF):
        raise CRFTypeError(f"expected a GraphMRF, got {type(mrf).__name__}")
    term = mrf.term
    N, E, L, B = mrf.num_nodes, mrf.num_edges, mrf.num_labels, mrf.batch_size
    device = mrf.unary.device
    if directed is None:
        directed = term.needs_direction()
    groups1 = graph_chains(
        N,
        mrf.edges,
        directed=bool(directed),
        max_length=max_length,
        max_groups=max_groups,
        device=device,
    )
    layout = mrf.layout()
    unary = mrf.unary.reshape(B * N, L)
    node_batch = torch.arange(B, device=device).repeat_interleave(N)
    base_n = (torch.arange(B, device=device) * N)[:, None, None]
    base_e = (torch.arange(B, device=device) * E)[:, None, None]
    groups = []
    for gi, g in enumerate(groups1):
        C1, n = g.nodes.shape
        nodes = torch.where(g.nodes[None] >= 0, g.nodes[None] + base_n, torch.full_like(g.nodes[None], -1))
        index = (g.edge_ids[None] + base_e).reshape(B * C1, n - 1)  # flat edge of each chain edge
        flip = g.flipped.repeat(B, 1) if bool(g.flipped.any()) else None
        pw = term.along_chains(layout, index, flip)
        name = f"paths {gi} (length <= {n})"
        groups.append(ChainGroup(nodes=nodes.reshape(B * C1, n), lengths=g.lengths.repeat(B), pairwise=pw, name=name))
    node_shape = (B, N) if mrf.batched else (N,)
    return ChainProblem(unary=unary, node_batch=node_batch, batch_size=B, groups=groups, node_shape=node_shape)
