"""Stronger rounding for :class:`~crfkit.GraphMRF`: labellings that close the gap to the bound.

:func:`improve_labels` takes a model and what :func:`crfkit.solve_map` returns (its labels and
its summed max-marginals ``[N, L]``) and searches for better labellings, within a time limit:

1. **Starting points.** The given labels, the argmax of the max-marginals, and a sequential
   (TRW-S-style) decoding: nodes in order, each takes the label that maximises its
   max-marginal plus the exact pairwise scores towards the neighbours already decided, minus
   what the max-marginal had assumed for them (``max_l`` of the same table row).
2. **Local search.** Iterated conditional modes (ICM) in *colour classes*: a greedy colouring
   of the graph puts nodes that share no edge in one class, and all nodes of a class move at
   once to their best label given the rest (exact, so the score never decreases), until no
   node changes.
3. **Block moves** (large-neighbourhood search). A random breadth-first ball of nodes gets
   its exact best labels given the rest, by variable elimination
   (:func:`crfkit.inference.exact.eliminate_arrays`, min-fill order); the ball grows while
   its largest elimination table stays within ``block_entries`` and shrinks when it does not
   (on a 20 x 20 grid that is about 200 nodes).  Moves that keep the score are taken, so the
   search walks plateaus; after ``block_moves`` moves in a row without a gain comes:
4. **Annealed restarts.** Parallel tempering by chromatic heat-bath sampling (each class
   sampled from ``softmax(conditional / T)`` at ``replicas`` temperatures between
   ``t_range`` times the model's typical local spread), started from the best labelling or,
   for the hotter half, from the max-marginals sampled at a temperature; the best labelling
   it sees is polished (ICM and random exact forest moves), and the block moves resume.

It stops early when the best score reaches ``upper_bound`` (a certificate such as
``MAPResult.dual``: gap 0 proves the labelling optimal) or when the time limit runs out.
The returned labelling is never worse than the one given (its score is recomputed with
``mrf.score``), so ``primal == model.score(labels)`` still holds for the caller.

Hard constraints: pass ``hard_score`` (:attr:`crfkit.io.uai.UAIModel.hard_score`) so the
temperature scale ignores the forbidden entries; at every temperature used, a forbidden entry
is ``e^{-64/T}``-unlikely or less; ICM never picks one when an allowed label exists, and a
block move (exact, over the labels whose unary entry is allowed) never when the block has an
allowed labelling given the rest.

Everything runs on the CPU in float64 numpy over flat index arrays built once
(incidences sorted by node), independent of the solver's chain decomposition.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, check_labels, fmt_shape
from ..models.graph import GraphMRF

__all__ = ["RoundingResult", "LocalSearch", "improve_labels"]


@dataclass
class RoundingResult:
    """Result of :func:`improve_labels`.

    Attributes:
        labels: ``[N]`` long, the best labelling found (never worse than the input).
        score: ``mrf.score(labels)`` as a float.
        initial_score: the input labelling's score.
        info: counters (restarts, sweeps, seconds, which start won, whether the bound was met).
    """

    labels: torch.Tensor
    score: float
    initial_score: float
    info: dict = field(default_factory=dict)


class LocalSearch:
    """Flat index structure of an unbatched ``GraphMRF`` for conditional updates (built once).

    Args:
        mrf: unbatched :class:`~crfkit.GraphMRF` (``unary [N, L]``, ``edges [E, 2]``).
        hard_score: entries ``<= hard_score`` are forbidden (left out of the temperature scale).
    """

    def __init__(self, mrf: GraphMRF, hard_score: float | None = None):
        if not isinstance(mrf, GraphMRF):
            raise CRFTypeError(f"expected a GraphMRF, got {type(mrf).__name__}")
        if mrf.batched:
            raise CRFShapeError(f"expected an unbatched GraphMRF (unary [N, L]), got a batch of {mrf.batch_size}")
        self.N, self.L = mrf.num_nodes, mrf.num_labels
        self.unary = mrf.unary.detach().double().cpu().numpy()
        edges = mrf.edges.cpu().numpy()
        tab = mrf.edge_tables().detach().double().cpu().numpy().reshape(-1, self.L, self.L)
        self.edges, self.tables = edges, tab
        E = edges.shape[0]
        # incidences: node i sees table T[x_j, x_i] (oriented so the last axis is its own label)
        inc_node = np.concatenate([edges[:, 0], edges[:, 1]])
        inc_nbr = np.concatenate([edges[:, 1], edges[:, 0]])
        inc_tab = np.concatenate([np.transpose(tab, (0, 2, 1)), tab]) if E else np.zeros((0, self.L, self.L))
        order = np.argsort(inc_node, kind="stable")
        self.inc_node, self.inc_nbr, self.inc_tab = inc_node[order], inc_nbr[order], inc_tab[order]
        self._starts = np.searchsorted(self.inc_node, np.arange(self.N + 1))
        self.colours = self._colour_classes()
        self.scale = self._local_scale(hard_score)
        # labels a block move considers: those with an allowed unary score (all when none is forbidden)
        ok = np.ones_like(self.unary, dtype=bool) if hard_score is None else self.unary > hard_score
        self.allowed = [np.nonzero(r)[0] if r.any() else np.arange(self.L) for r in ok]

    def _colour_classes(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
        """Greedy colouring (largest degree first); per class: nodes, padded neighbours ``[n_k, D]`` and tables."""
        N = self.N
        starts = np.searchsorted(self.inc_node, np.arange(N + 1))
        deg = np.diff(starts)
        colour = np.full(N, -1, dtype=np.int64)
        for i in np.argsort(-deg, kind="stable").tolist():
            used = set(colour[self.inc_nbr[starts[i] : starts[i + 1]]].tolist())
            k = 0
            while k in used:
                k += 1
            colour[i] = k
        out = []
        L = self.L
        for k in range(int(colour.max()) + 1):
            nodes = np.nonzero(colour == k)[0]
            D = max(int(deg[nodes].max()), 1)
            # padded [n_k, D] incidence slots; a padding slot reads an all-zero table at neighbour 0
            slot = np.full((len(nodes), D), -1, dtype=np.int64)
            for r, i in enumerate(nodes.tolist()):
                slot[r, : deg[i]] = np.arange(starts[i], starts[i + 1])
            pad = slot < 0
            tab = np.concatenate([self.inc_tab, np.zeros((1, L, L))])[np.where(pad, len(self.inc_tab), slot)]
            tab = np.ascontiguousarray(tab.reshape(-1, L))  # [n_k * D * L, L]
            base = (np.arange(len(nodes) * D, dtype=np.int64) * L).reshape(len(nodes), D)
            nbr = np.where(pad, 0, self.inc_nbr[np.where(pad, 0, slot)] if len(self.inc_nbr) else 0)
            out.append((nodes, nbr, base, tab))
        return out

    def _local_scale(self, hard_score: float | None) -> float:
        """Median over nodes of the spread of unary + incident tables (forbidden entries left out)."""
        lo = -math.inf if hard_score is None else hard_score

        def spread(a: np.ndarray) -> np.ndarray:
            a = a.reshape(a.shape[0], -1)
            ok = a > lo
            hi = np.where(ok, a, -np.inf).max(1)
            lw = np.where(ok, a, np.inf).min(1)
            return np.where(np.isfinite(hi) & np.isfinite(lw), hi - lw, 0.0)

        s = spread(self.unary)
        if len(self.inc_tab):
            s = s + np.bincount(self.inc_node, weights=spread(self.inc_tab), minlength=self.N)
        pos = s[s > 0]
        return float(np.median(pos)) if pos.size else 1.0

    def score(self, x: np.ndarray) -> float:
        """Score of ``x [N]`` (float64, same sum as ``GraphMRF.score``)."""
        s = self.unary[np.arange(self.N), x].sum()
        if len(self.edges):
            s += self.tables[np.arange(len(self.edges)), x[self.edges[:, 0]], x[self.edges[:, 1]]].sum()
        return float(s)

    def conditional(self, x: np.ndarray, cls) -> np.ndarray:
        """Unary plus incident pairwise scores of a colour class's nodes given ``x``.

        ``x [N]`` -> ``[n_k, L]``; ``x [R, N]`` (R replicas) -> ``[R, n_k, L]``.
        """
        nodes, nbr, base, tab = cls
        rows = np.take(tab, base + x[..., nbr], axis=0)  # [(R,) n_k, D, L]: row x_j of each oriented table
        return self.unary[nodes] + rows.sum(-2)

    def score_batch(self, X: np.ndarray) -> np.ndarray:
        """Scores ``[R]`` of labellings ``X [R, N]``."""
        s = self.unary[np.arange(self.N), X].sum(-1)
        if len(self.edges):
            s = s + self.tables[np.arange(len(self.edges)), X[:, self.edges[:, 0]], X[:, self.edges[:, 1]]].sum(-1)
        return s

    def tempering(
        self, X: np.ndarray, temps: np.ndarray, sweeps: int, rng: np.random.Generator, deadline: float = math.inf
    ) -> tuple[np.ndarray, float, int]:
        """Parallel tempering: replica ``r`` of ``X [R, N]`` is heat-bath sampled at ``temps[r]`` by colour
        classes; neighbouring temperatures swap states (Metropolis rule) after every sweep.

        ``X`` is updated in place (so a later call continues the chains). Returns the best labelling
        seen ``[N]``, its score, and the sweeps run (stops at ``deadline``).
        """
        R = X.shape[0]
        inv = 1.0 / temps
        S = self.score_batch(X)
        k = int(S.argmax())
        best_x, best = X[k].copy(), float(S[k])
        n = 0
        for n in range(1, sweeps + 1):
            for cls in self.colours:
                nodes = cls[0]
                cond = self.conditional(X, cls)  # [R, n_k, L]
                old = X[:, nodes]
                if self.L == 2:  # heat bath = logistic noise on the difference
                    new = (rng.logistic(size=old.shape) < (cond[..., 1] - cond[..., 0]) * inv[:, None]).astype(np.int64)
                else:  # heat bath = Gumbel-max
                    new = (cond * inv[:, None, None] + rng.gumbel(size=cond.shape)).argmax(-1)
                # a class has no edge inside it, so the score changes by the sum of conditional changes
                gain = np.take_along_axis(cond, new[..., None], -1) - np.take_along_axis(cond, old[..., None], -1)
                S += gain.sum((1, 2))
                X[:, nodes] = new
            k = int(S.argmax())
            if S[k] > best:
                best_x, best = X[k].copy(), float(S[k])
            a = np.arange(n % 2, R - 1, 2)
            if len(a):
                acc = np.log(rng.random(len(a))) < (S[a + 1] - S[a]) * (inv[a] - inv[a + 1])
                i, j = a[acc], a[acc] + 1
                X[i], X[j] = X[j], X[i].copy()
                S[i], S[j] = S[j], S[i].copy()
            if n % 4 == 0 and time.perf_counter() > deadline:
                break
        return best_x, best, n

    def icm(self, x: np.ndarray, max_sweeps: int = 1000) -> tuple[np.ndarray, int]:
        """Colour-class ICM to a local optimum (each class moves to its exact best labels)."""
        x = x.copy()
        for sweep in range(max_sweeps):
            changed = False
            for cls in self.colours:
                cond = self.conditional(x, cls)
                cur = cond[np.arange(len(cls[0])), x[cls[0]]]
                best = cond.argmax(1)
                better = cond[np.arange(len(cls[0])), best] > cur + 1e-12 * (1.0 + np.abs(cur))
                if better.any():
                    x[cls[0][better]] = best[better]
                    changed = True
            if not changed:
                return x, sweep + 1
        return x, max_sweeps

    def forest_move(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Exact update of a random induced forest conditioned on the rest (never lowers the score).

        Nodes are taken in random order and join the block when their block neighbours lie in
        distinct trees (union-find), so the block induces a forest; max-product dynamic
        programming on each tree, with the other nodes fixed at ``x [N]``, gives its best labels.
        """
        N = self.N
        starts = self._starts
        parent_uf = np.arange(N)

        def find(a: int) -> int:
            while parent_uf[a] != a:
                parent_uf[a] = parent_uf[parent_uf[a]]
                a = parent_uf[a]
            return a

        inb = np.zeros(N, dtype=bool)
        for v in rng.permutation(N).tolist():
            nb = self.inc_nbr[starts[v] : starts[v + 1]]
            roots = [find(int(j)) for j in nb[inb[nb]]]
            if len(roots) == len(set(roots)):
                inb[v] = True
                for r in roots:
                    parent_uf[r] = v
        # conditional unary: unary + incidences to nodes outside the block
        out = ~inb[self.inc_nbr]
        cond = self.unary.copy()
        np.add.at(cond, self.inc_node[out], self.inc_tab[np.nonzero(out)[0], x[self.inc_nbr[out]]])
        # root each tree, order nodes by BFS, pass max-product messages leaves -> roots
        par = np.full(N, -1, dtype=np.int64)
        par_inc = np.full(N, -1, dtype=np.int64)
        seen = ~inb
        order = []
        for r in np.nonzero(inb)[0].tolist():
            if seen[r]:
                continue
            seen[r] = True
            queue = [r]
            while queue:
                v = queue.pop()
                order.append(v)
                for k in range(starts[v], starts[v + 1]):
                    j = int(self.inc_nbr[k])
                    if not seen[j]:
                        seen[j] = True
                        par[j], par_inc[j] = v, k
                        queue.append(j)
        # inc k = (node v, nbr j) holds T[x_j, x_v]; the child j needs the incidence (j, v): T[x_v, x_j]
        arg = {}
        for v in reversed(order):
            p = par[v]
            if p < 0:
                continue
            k = par_inc[v]
            tab_pv = self.inc_tab[k]  # [x_v (nbr = child), x_p (own)] viewed from the parent p
            m = tab_pv + cond[v][:, None]  # [L_child, L_parent]
            arg[v] = m.argmax(0)
            cond[p] += m.max(0)
        new = x.copy()
        for v in order:
            p = par[v]
            new[v] = int(cond[v].argmax()) if p < 0 else int(arg[v][new[p]])
        return new

    def polish(self, x: np.ndarray, rng: np.random.Generator, patience: int = 4, deadline: float = math.inf):
        """ICM, then random forest moves (each followed by ICM) until ``patience`` in a row gain nothing.

        Returns ``(labels [N], score, icm sweeps, forest moves)``.
        """
        x, sweeps = self.icm(x)
        s, fails, moves = self.score(x), 0, 0
        while fails < patience and time.perf_counter() < deadline:
            y, n = self.icm(self.forest_move(x, rng))
            sweeps, moves = sweeps + n, moves + 1
            t = self.score(y)
            if t > s + 1e-12 * (1.0 + abs(s)):
                x, s, fails = y, t, 0
            else:
                fails += 1
        return x, s, sweeps, moves

    def ball(self, start: int, size: int, rng: np.random.Generator) -> np.ndarray:
        """Up to ``size`` nodes around ``start``, breadth first with the nodes of each ring shuffled."""
        inb = np.zeros(self.N, dtype=bool)
        inb[start] = True
        members, ring = [start], [start]
        while ring and len(members) < size:
            nxt = []
            for v in rng.permutation(np.array(ring)).tolist():
                for j in self.inc_nbr[self._starts[v] : self._starts[v + 1]].tolist():
                    if not inb[j] and len(members) < size:
                        inb[j] = True
                        members.append(j)
                        nxt.append(j)
            ring = nxt
        return np.array(members, dtype=np.int64)

    def block_move(self, x: np.ndarray, block: np.ndarray, max_entries: int) -> np.ndarray | None:
        """The best labels of ``block`` given the rest of ``x [N]``, by exact variable elimination
        (:func:`crfkit.inference.exact.eliminate_arrays`) over each node's allowed labels.

        Returns the new labelling, or ``None`` when the block's elimination needs a table over
        ``max_entries`` entries (a smaller block is needed).
        """
        from .exact import eliminate_arrays, greedy_elimination_order

        inb = np.zeros(self.N, dtype=bool)
        inb[block] = True
        local = np.full(self.N, -1, dtype=np.int64)
        local[block] = np.arange(len(block))
        cond = self.unary[block].copy()  # unary + incident tables towards nodes outside the block
        k = np.nonzero(inb[self.inc_node] & ~inb[self.inc_nbr])[0]
        np.add.at(cond, local[self.inc_node[k]], self.inc_tab[k, x[self.inc_nbr[k]]])
        ei = np.nonzero(inb[self.edges[:, 0]] & inb[self.edges[:, 1]])[0]
        pairs = local[self.edges[ei]].tolist()
        allowed = [self.allowed[v] for v in block.tolist()]
        cards = [len(a) for a in allowed]
        adj: list[set[int]] = [set() for _ in block]
        for a, b in pairs:
            adj[a].add(b)
            adj[b].add(a)
        got = greedy_elimination_order(adj, cards, "min-fill", max_entries, 8 * max_entries)
        if got is None:
            return None
        unary = [cond[r, allowed[r]] for r in range(len(block))]
        tables = [self.tables[e][np.ix_(allowed[a], allowed[b])] for e, (a, b) in zip(ei.tolist(), pairs)]
        _, y = eliminate_arrays(unary, pairs, tables, got[0])
        new = x.copy()
        new[block] = [allowed[r][y[r]] for r in range(len(block))]
        return new

    def sequential(self, beliefs: np.ndarray, order: np.ndarray) -> np.ndarray:
        """TRW-S-style decoding: node by node, max-marginal plus exact scores to decided neighbours."""
        x = np.full(self.N, -1, dtype=np.int64)
        starts = np.searchsorted(self.inc_node, np.arange(self.N + 1))
        for i in order.tolist():
            s = beliefs[i].copy()
            for k in range(starts[i], starts[i + 1]):
                j = self.inc_nbr[k]
                if x[j] >= 0:
                    t = self.inc_tab[k]
                    s += t[x[j]] - t.max(0)
            x[i] = int(s.argmax())
        return x


def _as_labels(labels, N: int, L: int) -> np.ndarray:
    lab = torch.as_tensor(labels).reshape(-1)
    if lab.numel() != N:
        got = fmt_shape(torch.as_tensor(labels).shape)
        raise CRFShapeError(f"expected labels of shape [N] with N = {N}, got {got}")
    check_labels(lab, "labels", L)
    return lab.long().cpu().numpy().copy()


def _as_beliefs(beliefs, N: int, L: int) -> np.ndarray | None:
    if beliefs is None:
        return None
    b = torch.as_tensor(beliefs).detach().double().cpu().reshape(-1).numpy()
    if b.size != N * L or not np.isfinite(b).all():
        got = fmt_shape(torch.as_tensor(beliefs).shape)
        raise CRFShapeError(f"expected finite beliefs of shape [N, L] = [{N}, {L}], got {got}")
    return b.reshape(N, L)


class _Search:
    """The state :func:`improve_labels` shares between its phases: the best labelling so far,
    its score, the clock, the counters and the block size of the large-neighbourhood moves."""

    def __init__(self, ls: LocalSearch, x0: np.ndarray, deadline: float, reach: float | None, seed: int,
                 patience: int, block_entries: int):
        self.ls, self.deadline, self.reach, self.patience = ls, deadline, reach, patience
        self.rng = np.random.default_rng(seed)
        self.best_x, self.best, self.won = x0, ls.score(x0), "input"
        self.block_entries, self.block_size = block_entries, min(ls.N, 32)
        self.info = {"rounds": 0, "sweeps": 0, "icm_sweeps": 0, "forest_moves": 0, "block_moves": 0,
                     "reached_bound": False}

    def done(self) -> bool:
        return self.reach is not None and self.best >= self.reach

    def out_of_time(self) -> bool:
        return time.perf_counter() >= self.deadline

    def consider(self, x: np.ndarray, name: str) -> bool:
        """Polish ``x`` (ICM and forest moves); keep it when it beats the best."""
        x, s, n, moves = self.ls.polish(x, self.rng, self.patience, deadline=self.deadline)
        self.info["icm_sweeps"] += n
        self.info["forest_moves"] += moves
        if s > self.best:
            self.best_x, self.best, self.won = x, s, name
            return True
        return False

    def blocks(self, max_moves: int) -> None:
        """Large-neighbourhood search from the best labelling: random breadth-first blocks solved
        exactly given the rest; the block grows while its elimination fits ``block_entries``
        and shrinks when it does not. Moves that keep the score are taken (a plateau walk)."""
        ls = self.ls
        x, s, stale = self.best_x.copy(), self.best, 0
        while stale < max_moves and not self.done() and not self.out_of_time():
            block = ls.ball(int(self.rng.integers(ls.N)), self.block_size, self.rng)
            y = ls.block_move(x, block, self.block_entries)
            if y is None:
                if self.block_size <= 2:
                    return  # even two nodes need too large a table: no block moves on this model
                self.block_size = max(2, int(self.block_size * 0.8))
                continue
            self.info["block_moves"] += 1
            self.block_size = min(ls.N, int(self.block_size * 1.1) + 1)
            t = ls.score(y)
            stale = 0 if t > s + 1e-12 * (1.0 + abs(s)) else stale + 1
            if t >= s - 1e-12 * (1.0 + abs(s)):
                x, s = y, t
            if s > self.best:
                self.best_x, self.best, self.won = x.copy(), s, "blocks"

    def tempering(self, X: np.ndarray, temps: np.ndarray, sweeps: int) -> None:
        """One round of parallel tempering, its best labelling polished; the coldest replica
        then restarts from the best labelling."""
        x, _, n = self.ls.tempering(X, temps, sweeps, self.rng, deadline=self.deadline)
        self.info["sweeps"] += n
        self.info["rounds"] += 1
        self.consider(x, "tempering")
        X[0] = self.best_x


def _replicas(search: _Search, b: np.ndarray | None, replicas: int, t_range) -> tuple[np.ndarray, np.ndarray]:
    """Temperatures and start states of the tempering replicas: the best labelling, and for the
    hotter half (with beliefs) the max-marginals sampled at their temperature."""
    ls, rng = search.ls, search.rng
    R = max(int(replicas), 2)
    temps = ls.scale * t_range[0] * (t_range[1] / t_range[0]) ** (np.arange(R) / (R - 1))
    X = np.repeat(search.best_x[None], R, axis=0)
    if b is not None:
        for r in range(R // 2, R):
            p = np.exp((b - b.max(1, keepdims=True)) / temps[r])
            c = np.cumsum(p, 1)
            X[r] = np.minimum((c < (rng.random(ls.N) * c[:, -1])[:, None]).sum(1), ls.L - 1)
    return temps, X


def improve_labels(
    mrf: GraphMRF,
    labels,
    beliefs: torch.Tensor | None = None,
    *,
    time_limit: float = 2.0,
    upper_bound: float | None = None,
    hard_score: float | None = None,
    sweeps: int = 200,
    replicas: int = 8,
    patience: int = 4,
    t_range: tuple[float, float] = (0.05, 0.2),
    block_entries: int = 1 << 16,
    block_moves: int = 40,
    seed: int = 0,
    tol: float = 1e-9,
) -> RoundingResult:
    """Improve a labelling of an unbatched ``GraphMRF`` by local search (see the module docstring).

    Args:
        mrf: unbatched :class:`~crfkit.GraphMRF` (``unary [N, L]``).
        labels: ``[N]`` the starting labelling (e.g. ``MAPResult.labels``).
        beliefs: optional ``[N, L]`` summed max-marginals (``MAPResult.marginals``) for the
            sequential decoding and the sampled restarts.
        time_limit: seconds for the whole search (``0``: the deterministic starts and ICM only).
        upper_bound: a certificate (``MAPResult.dual``); stop when the score reaches it within
            ``tol * max(1, |bound|)``.
        hard_score: entries ``<= hard_score`` are forbidden (e.g. ``UAIModel.hard_score``).
        sweeps: sweeps of parallel tempering between two rounds of block moves.
        replicas: number of tempering replicas (temperatures).
        patience: forest moves in a row without a gain before a polish stops.
        t_range: lowest and highest temperature, as fractions of the model's typical local spread.
        block_entries: the largest elimination table of a block move.
        block_moves: block moves in a row without a gain before a tempering round.
        seed: seed of the random restarts (the search is deterministic given it, except for
            where the time limit cuts it).

    Returns:
        :class:`RoundingResult` with ``score == float(mrf.score(labels))`` and
        ``score >= initial_score``.
    """
    t0 = time.perf_counter()
    if not (isinstance(time_limit, (int, float)) and time_limit >= 0 and math.isfinite(time_limit)):
        raise CRFValueError(f"expected a finite time_limit >= 0 seconds, got {time_limit!r}")
    ls = LocalSearch(mrf, hard_score)
    x0 = _as_labels(labels, ls.N, ls.L)
    b = _as_beliefs(beliefs, ls.N, ls.L)
    reach = None if upper_bound is None else float(upper_bound) - tol * max(1.0, abs(float(upper_bound)))
    search = _Search(ls, x0, t0 + time_limit, reach, seed, patience, block_entries)
    starts = [(x0, "input")]
    if b is not None:
        starts.append((b.argmax(1), "argmax"))
        starts.append((ls.sequential(b, np.arange(ls.N)), "sequential"))
        starts.append((ls.sequential(b, np.arange(ls.N)[::-1]), "sequential-reversed"))
    for x, name in starts:
        search.consider(x, name)
    if not search.done() and not search.out_of_time():
        temps, X = _replicas(search, b, replicas, t_range)
        while not search.done() and not search.out_of_time():
            search.blocks(block_moves)
            if not search.done() and not search.out_of_time():
                search.tempering(X, temps, sweeps)
    return _result(mrf, x0, search, t0)


def _result(mrf: GraphMRF, x0: np.ndarray, search: _Search, t0: float) -> RoundingResult:
    """The best labelling as a :class:`RoundingResult`, its score recomputed by ``mrf.score``."""
    search.info["reached_bound"] = bool(search.done())
    dev = mrf.edges.device
    lab = torch.from_numpy(search.best_x).to(dev)
    with torch.no_grad():
        final = float(mrf.score(lab))
        first = float(mrf.score(torch.from_numpy(x0).to(dev)))
    if final < first:  # rounding noise in the float64 re-sum: keep the input
        lab, final = torch.from_numpy(x0).to(dev), first
    info = dict(search.info, won=search.won, seconds=time.perf_counter() - t0)
    return RoundingResult(labels=lab, score=final, initial_score=first, info=info)
