"""Turning dual-decomposition beliefs into labellings, and improving labellings.

- :func:`decode_argmax`: the paper's Eq. (22), ``x_i = argmax_l Σ_t μ_i^t(l)``.
- :func:`chain_icm`: block coordinate ascent on the true score where each block is a set of
  chains that share no node and no edge: every chain of the block is solved exactly by
  Viterbi conditioned on the current labels of all other nodes, so the score never decreases
  (iterated conditional modes with chains instead of single nodes).
- :func:`conditional_chain_decode`: TRW-S-style decoding: the chains of one group are solved
  exactly with, at each node, the other sub-problems' max-marginals as extra unary scores;
  used as a starting point for :func:`chain_icm`.

All functions work on a :class:`~crfkit.decomposition.ChainProblem` and flat labels ``[V]``.
"""

from __future__ import annotations

from functools import cached_property

import numpy as np
import torch

from ..decomposition.chains import ChainGroup, ChainProblem
from ..ops.chain import chain_viterbi, choose_implementation

__all__ = ["ProblemEdges", "decode_argmax", "chain_icm", "problem_score"]


def decode_argmax(node_beliefs: torch.Tensor) -> torch.Tensor:
    """Eq. (22): ``node_beliefs [V, L]`` (summed max-marginals) -> labels ``[V]``."""
    return node_beliefs.argmax(dim=1)


class ProblemEdges:
    """Index structure of a chain problem for scoring and conditioning (built once)."""

    def __init__(self, problem: ChainProblem):
        self.problem = problem
        self.groups = problem.groups

    @cached_property
    def chain_colours(self) -> list[list[torch.Tensor]]:
        """Per group, a list of chain-index tensors: chains of one colour share no node and no edge."""
        out = []
        problem = self.problem
        # every model edge as a node pair (from all groups)
        pairs = []
        for g in self.groups:
            nodes = g.nodes
            if nodes.shape[1] > 1:
                a, b = nodes[:, :-1], nodes[:, 1:]
                ok = b >= 0
                pairs.append(torch.stack([a[ok], b[ok]], dim=1))
        edges = torch.cat(pairs).cpu().numpy() if pairs else np.zeros((0, 2), dtype=np.int64)
        V = problem.num_nodes
        for g in self.groups:
            nodes = g.nodes.cpu().numpy()
            C = nodes.shape[0]
            valid = nodes >= 0
            chain_of_slot = np.repeat(np.arange(C), nodes.shape[1]).reshape(nodes.shape)[valid]
            node_of_slot = nodes[valid]
            # node -> chains (a node can lie in several chains of one group on general graphs)
            order = np.argsort(node_of_slot, kind="stable")
            sn, sc = node_of_slot[order], chain_of_slot[order]
            conflicts = []
            # chains sharing a node
            same = sn[1:] == sn[:-1]
            conflicts.append(np.stack([sc[:-1][same], sc[1:][same]], axis=1))
            # chains joined by an edge: map both endpoints to (one of) their chains
            first_chain = np.full(V, -1, dtype=np.int64)
            first_chain[sn[::-1]] = sc[::-1]
            if len(edges):
                ca, cb = first_chain[edges[:, 0]], first_chain[edges[:, 1]]
                ok = (ca >= 0) & (cb >= 0) & (ca != cb)
                conflicts.append(np.stack([ca[ok], cb[ok]], axis=1))
            multi = np.unique(sn[1:][same]) if same.any() else np.zeros(0, dtype=np.int64)
            conf = np.concatenate(conflicts) if conflicts else np.zeros((0, 2), dtype=np.int64)
            if len(multi):
                # nodes in several chains: every chain through the node conflicts with the neighbours'
                # chains too; add conflicts for all chains of both endpoints
                in_multi = np.isin(sn, multi)
                extra_nodes, extra_chains = sn[in_multi], sc[in_multi]
                node_to_chains: dict[int, list[int]] = {}
                for nd, ch in zip(extra_nodes.tolist(), extra_chains.tolist()):
                    node_to_chains.setdefault(nd, []).append(ch)
                extra = []
                for a, b in edges.tolist():
                    for x in node_to_chains.get(a, [first_chain[a]] if first_chain[a] >= 0 else []):
                        for y in node_to_chains.get(b, [first_chain[b]] if first_chain[b] >= 0 else []):
                            if x != y:
                                extra.append((x, y))
                if extra:
                    conf = np.concatenate([conf, np.asarray(extra, dtype=np.int64)])
            out.append(_greedy_colouring(C, conf, g.nodes.device))
        return out


def _greedy_colouring(C: int, conflicts: np.ndarray, device) -> list[torch.Tensor]:
    if C == 0:
        return []
    if len(conflicts):
        both = np.concatenate([conflicts, conflicts[:, ::-1]])
        both = np.unique(both, axis=0)
        order = np.argsort(both[:, 0], kind="stable")
        both = both[order]
        starts = np.searchsorted(both[:, 0], np.arange(C + 1))
        nbrs = both[:, 1]
    else:
        starts = np.zeros(C + 1, dtype=np.int64)
        nbrs = np.zeros(0, dtype=np.int64)
    colour = np.full(C, -1, dtype=np.int64)
    for c in range(C):
        used = set(colour[nbrs[starts[c] : starts[c + 1]]].tolist())
        k = 0
        while k in used:
            k += 1
        colour[c] = k
    return [torch.from_numpy(np.nonzero(colour == k)[0]).to(device) for k in range(int(colour.max()) + 1)]


def _group_contributions(g: ChainGroup, labels: torch.Tensor, L: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores that group ``g``'s edges add to each chain slot given ``labels [V]``:
    ``[C, n, L]`` (entry ``[c, k, l]``: the edges of chain ``c`` at position ``k`` with label ``l`` there)
    and the slot mask ``[C, n]``."""
    nodes = g.nodes
    C, n = nodes.shape
    valid = nodes >= 0
    lab = labels[nodes.clamp(min=0)]
    dtype = g.pairwise.weight.dtype if g.pairwise.weight is not None else g.pairwise.tables.dtype
    out = torch.zeros(C, n, L, dtype=dtype, device=nodes.device)
    if n > 1:
        edge_ok = valid[:, 1:]
        col = g.pairwise.column(lab[:, 1:], L) * edge_ok[..., None]  # left node's view
        row = g.pairwise.row(lab[:, :-1], L) * edge_ok[..., None]  # right node's view
        out[:, :-1] += col
        out[:, 1:] += row
    return out, valid


def conditional_unary(problem: ChainProblem, labels: torch.Tensor) -> tuple[torch.Tensor, list]:
    """``cond [V, L]``: unary plus all pairwise scores with every neighbour at its current label."""
    L = problem.num_labels
    cond = problem.unary.detach().clone()
    per_group = []
    for g in problem.groups:
        contrib, valid = _group_contributions(g, labels, L)
        cond.index_add_(0, g.nodes[valid], contrib[valid].to(cond.dtype))
        per_group.append((contrib, valid))
    return cond, per_group


@torch.no_grad()
def problem_score(problem: ChainProblem, labels: torch.Tensor) -> torch.Tensor:
    """Score of flat labels ``[V]`` per batch element ``[B]`` (float64)."""
    B = problem.batch_size
    un = problem.unary.detach().gather(1, labels[:, None]).squeeze(1).double()
    total = torch.zeros(B, dtype=torch.float64, device=labels.device).index_add_(0, problem.node_batch, un)
    for g in problem.groups:
        nodes = g.nodes
        if nodes.shape[1] < 2:
            continue
        lab = labels[nodes.clamp(min=0)]
        s = g.pairwise.score(lab[:, :-1], lab[:, 1:]) * (nodes[:, 1:] >= 0)
        batch = problem.node_batch[nodes[:, 0]]
        total.index_add_(0, batch, s.sum(dim=1).double())
    return total


def _compiled_conditioning(problem: ChainProblem, implementation: str | None = None):
    """The compiled conditioning module when the chain kernels run on numba here (CPU float32 or
    float64 scores, known chain forms), else ``None`` (the torch version below)."""
    unary = problem.unary
    if unary.dtype not in (torch.float32, torch.float64) or choose_implementation(unary, implementation) != "numba":
        return None
    if any(getattr(g.pairwise, "kind", None) not in ("dense", "weighted", "truncated_linear") for g in problem.groups):
        return None
    from ..ops.chain import numba_conditional

    return numba_conditional if numba_conditional.AVAILABLE else None


@torch.no_grad()
def chain_icm(
    problem: ChainProblem, labels: torch.Tensor, edges: ProblemEdges, sweeps: int = 2, implementation: str | None = None
) -> torch.Tensor:
    """Improve flat labels ``[V]`` by ``sweeps`` rounds of exact chain updates (never lowers the score).

    On the CPU with the compiled chain kernels, the conditioned scores are computed by
    :mod:`crfkit.ops.chain.numba_conditional` (one fused pass per group); otherwise by torch ops.
    ``implementation`` picks the chain kernel as in :func:`~crfkit.ops.chain.chain_marginals`."""
    compiled = _compiled_conditioning(problem, implementation)
    if compiled is not None:
        groups = compiled.groups_of(problem, problem.unary.dtype)

        def local_scores(gi, chains, labels):
            cond = compiled.conditional_scores(problem.unary, groups, labels)
            return compiled.chain_local_scores(cond, groups[gi], chains, labels), problem.groups[gi].nodes[chains] >= 0
    else:

        def local_scores(gi, chains, labels):
            cond, per_group = conditional_unary(problem, labels)
            contrib, valid = per_group[gi]
            nodes, v = problem.groups[gi].nodes[chains], valid[chains]
            return (cond[nodes.clamp(min=0)] - contrib[chains]) * v[..., None], v

    return _icm_sweeps(problem, labels, edges, sweeps, local_scores, implementation)


def _icm_sweeps(problem: ChainProblem, labels: torch.Tensor, edges: ProblemEdges, sweeps: int, local_scores,
                implementation: str | None) -> torch.Tensor:
    """Up to ``sweeps`` rounds of exact chain updates, one colour class of chains at a time;
    ``local_scores(group, chains, labels)`` gives their scores given the rest and their valid
    positions. Stops early when a round changes nothing."""
    labels = labels.clone()
    for _ in range(sweeps):
        changed = False
        for gi, g in enumerate(problem.groups):
            for chains in edges.chain_colours[gi]:
                local, v = local_scores(gi, chains, labels)
                nodes = g.nodes[chains]
                new = chain_viterbi(local, g.pairwise.select(chains), g.lengths[chains], implementation=implementation)
                old = labels[nodes[v]]
                if not torch.equal(old, new[v]):
                    changed = True
                labels[nodes[v]] = new[v]
        if not changed:
            break
    return labels
