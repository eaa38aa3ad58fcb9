"""Convex belief propagation, the front door: :func:`marginals` (Bethe, TRW, user counting numbers,
exact) and its result :class:`BPResult` (``docs/maths.md``, "Convex BP messages" and "Counting
numbers and the convexity check").

The pieces live beside this file: graph compilation in :mod:`crfkit.inference.bp_graph`, counting
numbers and the convexity check in :mod:`crfkit.inference.counting`, the stateful engine
:class:`ConvexBP` in :mod:`crfkit.inference.bp_engine`.  They are re-exported here, so
``from crfkit.inference.convex_bp import ConvexBP`` keeps working.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import CRFTypeError, CRFValueError
from ..models.graph import GraphMRF
from ..models.grid import GridCRF
from .bp_engine import ConvexBP, _dense_pairwise
from .bp_graph import Block, CompiledGraph
from .counting import check_convex_counting, counting_numbers, edge_appearance_probabilities
from .exact import MAX_LABELLINGS, enumerate_mrf, is_forest, tree_max_product, tree_sum_product
from .threads import with_solver_threads

__all__ = [
    "CompiledGraph",
    "Block",
    "ConvexBP",
    "BPResult",
    "marginals",
    "counting_numbers",
    "edge_appearance_probabilities",
    "check_convex_counting",
]

METHODS = ("bethe", "trbp", "convex", "exact")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        if x.numel() == 1:
            return f"{float(x):.6g}"
        return f"tensor(shape={list(x.shape)}, dtype={str(x.dtype).removeprefix('torch.')})"
    return repr(x)


@dataclass(repr=False)
class BPResult:
    """Result of :func:`marginals` (``crfkit.belief_propagation``).

    Attributes:
        node_beliefs: ``[N, L]`` (``[B, N, L]`` for a batched model) the node beliefs ``b_i``, rows
            sum to 1 (at temperature 0: one-hot at the best label).  Also readable as ``.unary``.
        edge_beliefs: ``[E, L, L]`` (``[B, E, L, L]``) the edge beliefs ``b_ij``, consistent with
            the node beliefs (row sums ``b_i``, column sums ``b_j``).  Also readable as ``.pairwise``.
        log_partition: ``[]`` (``[B]``) the variational value (see :meth:`ConvexBP.free_energy`): an
            upper bound on ``log Z`` with TRW counting numbers, exact on trees with Bethe numbers.
        converged: whether the largest message change fell below ``tol``.
        iterations: sweeps run.
        max_residual: the largest message change of the last sweep.
        c_node, c_edge: ``[N]``, ``[E]`` the counting numbers used (``None`` for ``"exact"``).
        labels: ``[N]`` (``[B, N]``) the best label of each node's belief / max-marginal.
        max_marginals: at temperature 0, ``[N, L]`` max-marginals shifted to max 0; else ``None``.

    ``MAPResult.marginals`` of :func:`crfkit.solve_map` are *summed (smoothed) max-marginals* of the
    dual decomposition, not probabilities; ``BPResult.node_beliefs`` are probabilities.
    """

    node_beliefs: torch.Tensor
    edge_beliefs: torch.Tensor
    log_partition: torch.Tensor
    converged: bool
    iterations: int
    max_residual: float
    c_node: torch.Tensor | None = None
    c_edge: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    max_marginals: torch.Tensor | None = None

    @property
    def unary(self) -> torch.Tensor:
        """``node_beliefs`` under its earlier name."""
        return self.node_beliefs

    @property
    def pairwise(self) -> torch.Tensor:
        """``edge_beliefs`` under its earlier name."""
        return self.edge_beliefs

    def __repr__(self) -> str:
        fields = ("node_beliefs", "edge_beliefs", "log_partition", "converged", "iterations", "max_residual")
        parts = [f"{k}={_describe(getattr(self, k))}" for k in fields]
        return f"BPResult({', '.join(parts)})"


def _as_graph_mrf(mrf):
    if isinstance(mrf, GridCRF):
        return mrf.to_graph_mrf()
    if not isinstance(mrf, GraphMRF):
        raise CRFTypeError(f"expected a crfkit.GraphMRF (or GridCRF), got {type(mrf).__name__}")
    return mrf


def _one_hot_beliefs(mrf: GraphMRF, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Node and edge beliefs concentrated on one labelling (temperature 0)."""
    top = torch.nn.functional.one_hot(labels, mrf.num_labels).to(mrf.unary.dtype)
    e = mrf.edges
    return top, top[..., e[:, 0], :, None] * top[..., e[:, 1], None, :]


def _exact_marginals(mrf: GraphMRF, temperature: float) -> BPResult:
    """``method="exact"``: enumeration up to ``MAX_LABELLINGS`` labellings, two-pass on forests."""
    if float(temperature) not in (0.0, 1.0):
        raise CRFValueError(f"expected temperature 0 or 1 with method='exact', got {temperature!r}")
    if mrf.num_labels**mrf.num_nodes <= MAX_LABELLINGS:
        r = enumerate_mrf(mrf)
        if temperature == 0:
            top, pw = _one_hot_beliefs(mrf, r.labels)
            return BPResult(top, pw, r.max_score, True, 0, 0.0, labels=r.labels)
        return BPResult(r.unary, r.pairwise, r.log_partition, True, 0, 0.0, labels=r.unary.argmax(-1))
    if is_forest(mrf):
        if temperature == 0:
            r = tree_max_product(mrf)
            mm = r.unary - r.unary.amax(-1, keepdim=True)
            top, pw = _one_hot_beliefs(mrf, r.labels)
            return BPResult(top, pw, r.max_score, True, 0, 0.0, labels=r.labels, max_marginals=mm)
        r = tree_sum_product(mrf)
        return BPResult(r.unary, r.pairwise, r.log_partition, True, 0, 0.0, labels=r.unary.argmax(-1))
    raise CRFValueError(
        f"expected a model small enough to enumerate (L**N <= {MAX_LABELLINGS}) or a forest for "
        f"method='exact', got L={mrf.num_labels}, N={mrf.num_nodes} on a graph with cycles"
    )


def _run_blocks(bp: ConvexBP, graph: CompiledGraph, num_nodes: int, blocks, tol: float, max_iters: int):
    """The block schedule: each round runs every block to ``tol / 10`` in turn; returns
    ``(converged, rounds, residual)`` with the residual the largest message change over a round."""
    if blocks is None:
        blocks = torch.arange(num_nodes).chunk(min(8, num_nodes))
    blks = [graph.block(torch.as_tensor(b)) for b in blocks]
    covered = torch.zeros(num_nodes, dtype=torch.bool)
    for b in blks:
        covered[b.nodes.cpu()] = True
    if not bool(covered.all()):
        raise CRFValueError(f"expected blocks covering all N={num_nodes} nodes, got {int(covered.sum())} covered")
    res, iters = float("inf"), 0
    for it in range(1, max_iters + 1):
        before = bp.messages.clone()
        for b in blks:
            bp.run_block(b, tol=tol * 0.1, max_iters=max_iters)
        bp.recompute_incoming()
        res = float((bp.messages - before).abs().max()) if bp.messages.numel() else 0.0
        iters = it
        if res < tol:
            return True, iters, res
    return False, iters, res


@with_solver_threads
def marginals(
    mrf: GraphMRF,
    method: str = "trbp",
    counting=None,
    *,
    damping: float = 0.0,
    tol: float = 1e-6,
    max_iters: int = 1000,
    schedule: str = "parallel",
    blocks=None,
    temperature: float = 1.0,
    adaptive_damping: bool = True,
) -> BPResult:
    """Beliefs and the variational log-partition of a pairwise model by convex BP
    (top level: ``crfkit.belief_propagation``; ``crfkit.inference.bp_marginals`` is the same function).

    Args:
        mrf: a :class:`crfkit.GraphMRF` (unary ``[N, L]`` or ``[B, N, L]``); a
            :class:`crfkit.GridCRF` is converted with ``to_graph_mrf()`` (nodes ``y * W + x``).
        method: ``"bethe"`` (loopy BP), ``"trbp"`` (TRW, edge appearance probabilities from a
            covering by spanning forests), ``"convex"`` (``counting`` given and checked), or
            ``"exact"`` (enumeration up to 2e6 labellings, two-pass on forests; refuses others).
        counting: ``(c_node [N], c_edge [E])`` for ``method="convex"``.
        damping: message damping in ``[0, 1)``.
        tol: stop when the largest message change (log domain) is below ``tol``.
        max_iters: sweep cap (for the block schedule: rounds over all blocks).
        schedule: ``"parallel"`` (all messages at once) or ``"block"`` (blocks in turn, each run
            to ``tol``; ``blocks`` a list of node index tensors, default 8 ranges of node indices).
        temperature: ``T`` (1: sum-product; 0: max-product).
        adaptive_damping: raise the damping when the residual stalls (see :class:`ConvexBP`).

    Returns:
        :class:`BPResult` (``node_beliefs``, ``edge_beliefs``, ``log_partition``, ...).
    """
    mrf = _as_graph_mrf(mrf)
    if mrf.unary.dtype not in (torch.float32, torch.float64):
        raise CRFTypeError(
            f"expected a float32 or float64 model for convex BP, got {mrf.unary.dtype} (convert it, e.g. "
            f"GraphMRF(unary.float(), ...))"
        )
    if method not in METHODS:
        raise CRFValueError(f"expected method in {METHODS}, got {method!r}")
    if method == "exact":
        return _exact_marginals(mrf, temperature)
    if counting is not None and method != "convex":
        raise CRFValueError(f"expected counting only with method='convex', got counting with method={method!r}")
    if schedule not in ("parallel", "block"):
        raise CRFValueError(f"expected schedule 'parallel' or 'block', got {schedule!r}")
    graph = CompiledGraph(mrf.edges, mrf.num_nodes)
    cn, ce = counting_numbers(graph, method, counting)
    bp = ConvexBP(
        graph,
        cn,
        ce,
        num_labels=mrf.num_labels,
        temperature=temperature,
        damping=damping,
        adaptive_damping=adaptive_damping,
        batch_size=mrf.batch_size,
        dtype=mrf.unary.dtype,
    )
    un = mrf.unary if mrf.batched else mrf.unary[None]
    bp.set_potentials(un, _dense_pairwise(mrf).expand(mrf.batch_size, -1, -1, -1))
    if schedule == "parallel":
        converged, iters, res = bp.run(tol=tol, max_iters=max_iters)
    else:
        converged, iters, res = _run_blocks(bp, graph, mrf.num_nodes, blocks, tol, max_iters)
    bu, bpw = bp.beliefs()
    value = bp.free_energy()
    labels = bp.decode()
    mm = bp.log_unary_beliefs() if bp.T == 0 else None
    if not mrf.batched:
        bu, bpw, value, labels = bu[0], bpw[0], value[0], labels[0]
        mm = None if mm is None else mm[0]
    return BPResult(bu, bpw, value, bool(converged), int(iters), float(res), cn, ce, labels, mm)
