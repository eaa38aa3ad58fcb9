"""Compiled CPU (numba) scores of chains conditioned on the labels of the rest of the model.

What chain-wise ICM (:func:`crfkit.inference.decoding.chain_icm`) solves at every block: for a
set of chains of one group, the node scores of each chain position with every node outside the
chain fixed at its current label, i.e. the unary plus every pairwise term between the node and
a neighbour, minus the terms along the chain itself (those stay in the chain's own pairwise)::

    cond [V, L]           = conditional_scores(unary [V, L], groups, labels [V])
    local [C', n, L]      = chain_local_scores(cond, group, chains [C'], labels)

Each pairwise term is read in place from the group's :class:`ChainPairwise` (dense per-edge
tables, weighted shared tables, truncated linear ``-w min(|a - b|, T)``), one fused pass per
group with no ``[C, n, L]`` temporaries (the torch version builds ~10 of them per group).
Also the solver loop's node centring (:func:`node_center`: every slot's scores minus the mean
over the slots of its node, one pass instead of a gather and an add per slot rank, a division and
a broadcast back), used by :class:`crfkit.inference.dual_decomposition.DualDecomposition`.

Separate from :mod:`.numba` so that its small kernels compile on their own (seconds) and do not
invalidate the chain kernels' on-disk cache. ``AVAILABLE`` as there.
"""

from __future__ import annotations

import numpy as np
import torch

from ..._validation import CRFValueError
from .numba import AVAILABLE, DENSE, WEIGHTED, _unpack, njit

__all__ = ["AVAILABLE", "conditional_scores", "chain_local_scores", "SlotOrder", "node_center"]

_JIT = dict(cache=True, fastmath=False, nogil=True)


@njit(**_JIT)
def _phi(form, tabs, weight, trunc, c, k, a, b):
    """The score of labels ``(a, b)`` on edge ``k`` of chain ``c``."""
    if form == DENSE:
        return tabs[c, k, a, b]
    if form == WEIGHTED:
        return weight[c, k] * tabs[c, 0, a, b]
    return -weight[c, k] * min(abs(a - b), trunc)


@njit(**_JIT)
def _add_group(cond, nodes, lengths, form, tabs, weight, trunc, labels):
    """``cond[i] += phi(·, x_j)`` and ``cond[j] += phi(x_i, ·)`` for every edge ``(i, j)`` of the group."""
    L = cond.shape[1]
    for c in range(nodes.shape[0]):
        for k in range(lengths[c] - 1):
            i, j = nodes[c, k], nodes[c, k + 1]
            li, lj = labels[i], labels[j]
            for a in range(L):
                cond[i, a] += _phi(form, tabs, weight, trunc, c, k, a, lj)
                cond[j, a] += _phi(form, tabs, weight, trunc, c, k, li, a)


@njit(**_JIT)
def _local(out, cond, chains, nodes, lengths, form, tabs, weight, trunc, labels):
    """``out[r, k] = cond[node] - `` the chain's own terms at position ``k`` (zero on padding)."""
    L = cond.shape[1]
    for r in range(chains.shape[0]):
        c = chains[r]
        m = lengths[c]
        for k in range(m):
            i = nodes[c, k]
            for a in range(L):
                v = cond[i, a]
                if k > 0:
                    v -= _phi(form, tabs, weight, trunc, c, k - 1, labels[nodes[c, k - 1]], a)
                if k + 1 < m:
                    v -= _phi(form, tabs, weight, trunc, c, k, a, labels[nodes[c, k + 1]])
                out[r, k, a] = v


def _arrays(pairwise, C: int, L: int, dtype) -> tuple[int, np.ndarray, np.ndarray, float]:
    """``(form, tables [C, n-1 or 1, L, L], weight [C, n-1 or 1], truncation)`` as numpy arrays."""
    form, tables, weight, truncation = _unpack(pairwise)
    npdt = np.float64 if dtype == torch.float64 else np.float32
    if form == DENSE:
        tabs = tables.detach().to(dtype).contiguous().numpy()
        w = np.ones((C, 1), dtype=npdt)
    elif form == WEIGHTED:
        tabs = tables.detach().to(dtype).contiguous().numpy().reshape(C, 1, L, L)
        w = weight.detach().to(dtype).contiguous().numpy()
    else:
        tabs = np.zeros((1, 1, 1, 1), dtype=npdt)
        w = weight.detach().to(dtype).contiguous().numpy()
    if w.shape[1] == 0:
        w = np.zeros((C, 1), dtype=npdt)
    if tabs.shape[1] == 0:
        tabs = np.zeros((C, 1, L, L), dtype=npdt)
    return form, tabs, w, float(truncation)


class _Group:
    """The numpy views of one chain group (built once per ICM call)."""

    def __init__(self, group, L: int, dtype):
        self.nodes = group.nodes.contiguous().numpy()
        self.lengths = group.lengths.to(torch.int64).contiguous().numpy()
        self.form, self.tabs, self.weight, self.trunc = _arrays(group.pairwise, self.nodes.shape[0], L, dtype)


@torch.no_grad()
def conditional_scores(unary: torch.Tensor, groups: list, labels: torch.Tensor) -> torch.Tensor:
    """``cond [V, L]``: ``unary [V, L]`` plus every pairwise score with each neighbour at its label
    ``labels [V]``, over the chain groups ``groups`` (a list of :class:`_Group`)."""
    cond = unary.detach().clone().contiguous()
    c, lab = cond.numpy(), labels.contiguous().numpy()
    for g in groups:
        _add_group(c, g.nodes, g.lengths, g.form, g.tabs, g.weight, g.trunc, lab)
    return cond


@torch.no_grad()
def chain_local_scores(cond: torch.Tensor, group, chains: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """``[C', n, L]``: ``cond`` at the positions of ``chains [C']`` of ``group`` (a :class:`_Group`)
    without the chain's own pairwise terms; zero on padding."""
    n = group.nodes.shape[1]
    out = torch.zeros(chains.numel(), n, cond.shape[1], dtype=cond.dtype)
    _local(out.numpy(), cond.numpy(), chains.contiguous().numpy(), group.nodes, group.lengths, group.form,
           group.tabs, group.weight, group.trunc, labels.contiguous().numpy())
    return out


def groups_of(problem, dtype) -> list:
    """The :class:`_Group` of every chain group of ``problem``."""
    return [_Group(g, problem.num_labels, dtype) for g in problem.groups]


@njit(**_JIT)
def _node_center(x, out, ptr, slots, count, mean):
    """``out[s] = x[s] - (sum of x over the slots of s's node) / count``; ``slots[ptr[v]:ptr[v + 1]]``
    the slots of node ``v`` in slot order; ``out`` may be ``x``. The sum starts from the first slot
    and adds the others in order, then divides: the operations of ``DualDecomposition``'s torch
    node sums, so the same values bit for bit."""
    L = x.shape[1]
    for v in range(ptr.shape[0] - 1):
        p0, p1 = ptr[v], ptr[v + 1]
        if p1 == p0:
            continue
        s0 = slots[p0]
        for a in range(L):
            mean[a] = x[s0, a]
        for p in range(p0 + 1, p1):
            s = slots[p]
            for a in range(L):
                mean[a] += x[s, a]
        cv = count[v]
        for a in range(L):
            mean[a] = mean[a] / cv
        for p in range(p0, p1):
            s = slots[p]
            for a in range(L):
                out[s, a] = x[s, a] - mean[a]


class SlotOrder:
    """The slots of every node in slot order (``slot_node [S]`` long, ``V`` nodes, ``count [V]`` the
    slots per node in the scores' dtype), as the numpy arrays :func:`node_center` reads."""

    def __init__(self, slot_node: torch.Tensor, V: int, count: torch.Tensor):
        order = torch.argsort(slot_node, stable=True)
        per_node = torch.bincount(slot_node, minlength=V)
        self.ptr = torch.cat([per_node.new_zeros(1), per_node.cumsum(0)]).numpy()
        self.slots = order.contiguous().numpy()
        self.count = count.contiguous().numpy()


@torch.no_grad()
def node_center(x: torch.Tensor, order: SlotOrder, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """``x [S, L]`` minus the mean over each node's slots (broadcast back to its slots), into ``out``
    (a new array by default; ``out=x`` overwrites ``x``). CPU, contiguous, float32/float64."""
    if out is not None and not out.is_contiguous():
        raise CRFValueError("expected a contiguous out for node_center, got a strided tensor")
    xc = x.detach().contiguous().numpy()
    res = torch.empty(x.shape, dtype=x.dtype) if out is None else out
    _node_center(xc, res.detach().numpy(), order.ptr, order.slots, order.count, np.empty(x.shape[1], xc.dtype))
    return res
