"""Exact references for small models: enumeration and two-pass message passing on forests.

These are the independent truths the tests hold the approximate algorithms against, and they
are available to users (``crfkit.marginals(mrf, method="exact")``).

* :func:`enumerate_mrf` scores every labelling (``L ** N`` of them, refused above
  :data:`MAX_LABELLINGS`) and returns the log-partition, unary and pairwise marginals and a MAP
  labelling.
* :func:`tree_sum_product` / :func:`tree_max_product` run the classical two-pass algorithm
  (leaves to roots, roots to leaves) level by level on a forest: exact in one pass each way,
  vectorised over the nodes of a level.

Every function takes a :class:`crfkit.GraphMRF` (batched or not); results carry the batch
dimension only when the model does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._validation import CRFTypeError, CRFValueError
from ..models.graph import GraphMRF

__all__ = [
    "MAX_LABELLINGS",
    "ExactResult",
    "enumerate_mrf",
    "tree_sum_product",
    "tree_max_product",
    "is_forest",
    "MAX_TABLE_ENTRIES",
    "MAX_TOTAL_ENTRIES",
    "EliminationResult",
    "elimination_order",
    "eliminate",
    "eliminate_arrays",
    "greedy_elimination_order",
]

#: Largest number of labellings :func:`enumerate_mrf` accepts.
MAX_LABELLINGS = 2_000_000


@dataclass
class ExactResult:
    """Exact quantities of a small model.

    Attributes:
        unary: ``[N, L]`` (``[B, N, L]``) marginals; for max-product, max-marginals
            ``max_{x: x_i = a} score(x)``.
        pairwise: ``[E, L, L]`` (``[B, E, L, L]``) marginals (max-marginals for max-product).
        log_partition: ``[]`` (``[B]``) ``log Σ_x exp(score(x))``; for max-product the max score.
        labels: ``[N]`` (``[B, N]``) a MAP labelling (``None`` when not computed).
        max_score: ``[]`` (``[B]``) the score of ``labels`` (``None`` when not computed).
    """

    unary: torch.Tensor
    pairwise: torch.Tensor
    log_partition: torch.Tensor
    labels: torch.Tensor | None = None
    max_score: torch.Tensor | None = None
    converged: bool = True
    iterations: int = 0
    max_residual: float = 0.0


def _check_mrf(mrf) -> GraphMRF:
    if not isinstance(mrf, GraphMRF):
        raise CRFTypeError(f"expected a crfkit.GraphMRF, got {type(mrf).__name__}")
    return mrf


def _batched_tables(mrf: GraphMRF) -> tuple[torch.Tensor, torch.Tensor]:
    """``unary [B, N, L]`` and dense ``pairwise [B, E, L, L]`` (B = 1 for an unbatched model)."""
    un = mrf.unary if mrf.batched else mrf.unary[None]
    pw = mrf.edge_tables()
    if not mrf.batched:
        pw = pw[None]
    pw = pw.expand(un.shape[0], mrf.num_edges, mrf.num_labels, mrf.num_labels)
    return un, pw


def enumerate_mrf(mrf: GraphMRF, *, chunk: int = 65536) -> ExactResult:
    """Exact log-partition, marginals and a MAP labelling by scoring all ``L ** N`` labellings.

    Args:
        mrf: a :class:`crfkit.GraphMRF` with ``L ** N <= MAX_LABELLINGS`` (2e6).
        chunk: labellings scored at once.

    Returns:
        :class:`ExactResult` with ``unary [N, L]``, ``pairwise [E, L, L]``, ``log_partition []``,
        ``labels [N]`` and ``max_score []`` (a leading ``B`` when the model is batched).

    Raises:
        CRFValueError: the model has more than ``MAX_LABELLINGS`` labellings.
    """
    mrf = _check_mrf(mrf)
    N, L, E = mrf.num_nodes, mrf.num_labels, mrf.num_edges
    total = L**N
    if total > MAX_LABELLINGS:
        raise CRFValueError(
            f"expected a model with at most {MAX_LABELLINGS} labellings to enumerate, got "
            f"L**N = {L}**{N} (about {float(total):.3g}); use method='trbp' or 'bethe', or "
            "tree_sum_product for a forest"
        )
    un, pw = _batched_tables(mrf)
    B = un.shape[0]
    dev, dt = un.device, un.dtype
    src, dst = mrf.edges[:, 0], mrf.edges[:, 1]
    powers = L ** torch.arange(N - 1, -1, -1, device=dev)
    # first pass: scores in chunks -> log Z and argmax
    scores_all = []
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(total, start + chunk), device=dev)
        x = (idx[:, None] // powers) % L  # [K, N]
        s = un[:, torch.arange(N, device=dev)[None, :], x].sum(-1)  # [B, K]
        if E:
            s = s + pw[:, torch.arange(E, device=dev)[None, :], x[:, src], x[:, dst]].sum(-1)
        scores_all.append(s)
    scores = torch.cat(scores_all, dim=1)  # [B, total]
    logz = torch.logsumexp(scores, dim=1)
    best = scores.argmax(dim=1)
    labels = (best[:, None] // powers) % L
    max_score = scores.gather(1, best[:, None]).squeeze(1)
    p = torch.exp(scores - logz[:, None])  # [B, total]
    unary = torch.zeros(B, N, L, dtype=dt, device=dev)
    pair = torch.zeros(B, E, L * L, dtype=dt, device=dev)
    for start in range(0, total, chunk):
        idx = torch.arange(start, min(total, start + chunk), device=dev)
        x = (idx[:, None] // powers) % L  # [K, N]
        pk = p[:, start : start + idx.numel()]  # [B, K]
        onehot = torch.nn.functional.one_hot(x, L).to(dt)  # [K, N, L]
        unary += torch.einsum("bk,knl->bnl", pk, onehot)
        if E:
            code = x[:, src] * L + x[:, dst]  # [K, E]
            oh = torch.nn.functional.one_hot(code, L * L).to(dt)
            pair += torch.einsum("bk,kef->bef", pk, oh)
    pair = pair.reshape(B, E, L, L)
    res = ExactResult(unary, pair, logz, labels, max_score)
    if not mrf.batched:
        res = ExactResult(unary[0], pair[0], logz[0], labels[0], max_score[0])
    return res


# ---------------------------------------------------------------------------- forests


def _forest_order(edges: torch.Tensor, N: int):
    """Root every tree of the forest; return ``levels``: a list of (child nodes, parent nodes,
    edge ids, child-is-src flags) from the roots outwards, and ``roots``.

    Raises CRFValueError when the graph has a cycle.
    """
    import numpy as np

    e = edges.detach().cpu().numpy()
    E = e.shape[0]
    if E > N - 1:
        raise CRFValueError(f"expected a forest (no cycles), got a graph with E={E} >= N={N} edges")
    adj: list[list[tuple[int, int]]] = [[] for _ in range(N)]
    for k, (a, b) in enumerate(e.tolist()):
        adj[a].append((b, k))
        adj[b].append((a, k))
    seen = np.zeros(N, dtype=bool)
    depth = np.full(N, -1, dtype=np.int64)
    parent = np.full(N, -1, dtype=np.int64)
    pedge = np.full(N, -1, dtype=np.int64)
    comp = np.zeros(N, dtype=np.int64)
    roots = []
    for r in range(N):
        if seen[r]:
            continue
        roots.append(r)
        seen[r] = True
        depth[r] = 0
        comp[r] = len(roots) - 1
        frontier = [r]
        while frontier:
            nxt = []
            for u in frontier:
                for v, k in adj[u]:
                    if k == pedge[u]:
                        continue
                    if seen[v]:
                        raise CRFValueError(
                            "expected a forest (no cycles), got a graph with a cycle"
                        )
                    seen[v] = True
                    depth[v] = depth[u] + 1
                    parent[v] = u
                    pedge[v] = k
                    comp[v] = comp[u]
                    nxt.append(v)
            frontier = nxt
    levels = []
    for d in range(1, int(depth.max()) + 1 if N else 1):
        child = np.nonzero(depth == d)[0]
        par = parent[child]
        eid = pedge[child]
        child_is_src = e[eid, 0] == child
        levels.append(
            (
                torch.as_tensor(child, device=edges.device),
                torch.as_tensor(par, device=edges.device),
                torch.as_tensor(eid, device=edges.device),
                torch.as_tensor(child_is_src, device=edges.device),
            )
        )
    roots_t = torch.as_tensor(np.array(roots, dtype=np.int64), device=edges.device)
    return levels, roots_t, torch.as_tensor(comp, device=edges.device)


def is_forest(mrf: GraphMRF) -> bool:
    """Whether the graph of ``mrf`` has no cycle."""
    try:
        _forest_order(mrf.edges, mrf.num_nodes)
    except CRFValueError:
        return False
    return True


def _tree_pass(mrf: GraphMRF, semiring: str) -> ExactResult:
    mrf = _check_mrf(mrf)
    un, pw = _batched_tables(mrf)
    B, N, L = un.shape
    E = mrf.num_edges
    levels, roots, comp = _forest_order(mrf.edges, N)

    def reduce(x, dim):
        return torch.logsumexp(x, dim) if semiring == "sum" else x.amax(dim)

    # table oriented as [child label, parent label] per edge of each level
    def oriented(eid, child_is_src):
        t = pw[:, eid]  # [B, k, L, L] as (src, dst)
        return torch.where(child_is_src[None, :, None, None], t, t.transpose(-1, -2))

    up = torch.zeros(
        B, N, L, dtype=un.dtype, device=un.device
    )  # message child -> parent, stored at child
    inside = un.clone()  # θ_i + Σ messages from children
    for child, par, eid, cis in reversed(levels):
        t = oriented(eid, cis)  # [B, k, Lc, Lp]
        msg = reduce(inside[:, child, :, None] + t, 2)  # [B, k, Lp]
        up[:, child] = msg
        inside.index_add_(1, par, msg)
    # downward: outside[i] = message from parent into i
    outside = torch.zeros_like(un)
    for child, par, eid, cis in levels:
        t = oriented(eid, cis)
        # parent's total without this child's message
        ptot = inside[:, par] + outside[:, par] - up[:, child]  # [B, k, Lp]
        outside[:, child] = reduce(ptot[:, :, None, :] + t, 3)
    total = inside + outside  # [B, N, L] log-unnormalised (max-)marginals
    tree_value = reduce(inside[:, roots], 2)  # [B, trees]
    logz = tree_value.sum(1)  # [B]
    # (max-)marginals in score units include the other trees' values
    others = (logz[:, None] - tree_value)[:, comp]  # [B, N]
    total = total + others[..., None]
    # pairwise
    pair = torch.empty(B, E, L, L, dtype=un.dtype, device=un.device)
    for child, par, eid, cis in levels:
        t = oriented(eid, cis)
        ptot = inside[:, par] + outside[:, par] - up[:, child]
        joint = inside[:, child, :, None] + t + ptot[:, :, None, :] + others[:, child, None, None]
        joint = torch.where(cis[None, :, None, None], joint, joint.transpose(-1, -2))
        pair[:, eid] = joint
    if semiring == "sum":
        unary = torch.softmax(total, -1)
        pair = torch.softmax(pair.reshape(B, E, L * L), -1).reshape(B, E, L, L)
        labels = max_score = None
    else:
        # max-marginals in score units; decode from the roots down
        unary = total
        labels = torch.empty(B, N, dtype=torch.long, device=un.device)
        labels[:, roots] = inside[:, roots].argmax(-1)
        for child, par, eid, cis in levels:
            t = oriented(eid, cis)  # [B, k, Lc, Lp]
            lp = labels[:, par]  # [B, k]
            col = t.gather(3, lp[:, :, None, None].expand(B, t.shape[1], L, 1)).squeeze(3)
            labels[:, child] = (inside[:, child] + col).argmax(-1)
        max_score = mrf.score(labels if mrf.batched else labels[0])
        if not mrf.batched:
            max_score = max_score[None]
    if not mrf.batched:
        return ExactResult(
            unary[0],
            pair[0],
            logz[0],
            None if labels is None else labels[0],
            None if max_score is None else max_score[0],
        )
    return ExactResult(unary, pair, logz, labels, max_score)


def tree_sum_product(mrf: GraphMRF) -> ExactResult:
    """Exact marginals and log-partition of a model whose graph is a forest.

    Args:
        mrf: a :class:`crfkit.GraphMRF` on a forest (raises ``CRFValueError`` on a cycle).

    Returns:
        :class:`ExactResult`: ``unary [N, L]``, ``pairwise [E, L, L]`` marginals,
        ``log_partition []`` (leading ``B`` when batched).
    """
    return _tree_pass(mrf, "sum")


def tree_max_product(mrf: GraphMRF) -> ExactResult:
    """Exact MAP of a model whose graph is a forest.

    Returns:
        :class:`ExactResult`: ``unary [N, L]`` and ``pairwise [E, L, L]`` max-marginals (in score
        units: the best score with that node / edge fixed), ``log_partition`` = the max score,
        ``labels [N]`` a MAP labelling, ``max_score`` its score (leading ``B`` when batched).
    """
    return _tree_pass(mrf, "max")


# ---------------------------------------------------------------------------- variable elimination

#: Largest table (entries) :func:`eliminate` builds by default (``2**25``: 256 MiB in float64).
MAX_TABLE_ENTRIES = 1 << 25
#: Largest sum of the table sizes :func:`eliminate` builds by default (a few seconds of numpy).
MAX_TOTAL_ENTRIES = 1 << 27


@dataclass
class EliminationResult:
    """Exact MAP (or log-partition) of a model by variable elimination.

    Attributes:
        value: the max score (``semiring="max"``) or ``log Σ_x exp(score(x))`` (``"sum"``), over
            the labellings with ``x_i < cardinalities[i]``.
        labels: ``[N]`` long, a labelling that reaches the max score (``None`` for ``"sum"``).
        order: the elimination order used.
        largest_table: entries of the largest table built.
    """

    value: float
    labels: torch.Tensor | None
    order: list[int]
    largest_table: int


def _neighbour_sets(edges, N: int) -> list[set[int]]:
    adj: list[set[int]] = [set() for _ in range(N)]
    for a, b in edges:
        if a != b:
            adj[a].add(b)
            adj[b].add(a)
    return adj


def greedy_elimination_order(adj: list[set[int]], cards: list[int], rule: str, max_entries: int, max_total: int):
    """One greedy elimination order: ``rule`` ``"min-fill"`` or ``"min-degree"`` (weighted by the
    table size), ties broken by the other measure and then by the table size. Returns
    ``(order, largest table, total entries)``, or ``None`` once a table would exceed ``max_entries``
    or the total ``max_total``.
    """
    adj = [set(s) for s in adj]
    alive = set(range(len(adj)))

    def key(v: int):
        nb = adj[v]
        size = cards[v]
        for u in nb:
            size *= cards[u]
        fill = 0
        if rule == "min-fill" or len(nb) < 12:
            nbl = list(nb)
            fill = sum(1 for i, a in enumerate(nbl) for b in nbl[i + 1 :] if b not in adj[a])
        return (fill, size) if rule == "min-fill" else (size, fill)

    cache = {v: key(v) for v in alive}
    order, largest, work = [], 0, 0
    while alive:
        v = min(alive, key=lambda u: (cache[u], u))
        size = cache[v][1] if rule == "min-fill" else cache[v][0]
        largest, work = max(largest, size), work + size
        if size > max_entries or work > max_total:
            return None
        nb = adj[v]
        touched = set(nb)
        for a in nb:
            adj[a] |= nb
            adj[a].discard(a)
            adj[a].discard(v)
            touched |= adj[a]
        alive.discard(v)
        order.append(v)
        for u in touched & alive:
            cache[u] = key(u)
    return order, largest, work


def elimination_order(
    mrf: GraphMRF, cardinalities=None, *, max_entries: int = MAX_TABLE_ENTRIES, max_total: int = MAX_TOTAL_ENTRIES
):
    """The cheaper of a greedy min-fill and a greedy min-degree elimination order of ``mrf``'s graph.

    Returns ``(order, largest table)`` with every table (an eliminated variable and its neighbours
    at that point, ``Π card``) at most ``max_entries`` and their sum at most ``max_total``, or
    ``None`` when both orders need more.
    """
    N = mrf.num_nodes
    cards = [mrf.num_labels] * N if cardinalities is None else [int(c) for c in cardinalities]
    adj = _neighbour_sets(mrf.edges.detach().cpu().tolist(), N)
    best = None
    for rule in ("min-fill", "min-degree"):
        got = greedy_elimination_order(adj, cards, rule, max_entries, max_total)
        if got is not None and (best is None or got[2] < best[2]):
            best = got
    return None if best is None else (best[0], best[1])


def _combine(factors, scope: list[int]):
    """Sum of ``(vars, table)`` factors broadcast over ``scope`` (tables indexed in their vars' order)."""
    import numpy as np

    pos = {v: k for k, v in enumerate(scope)}
    total, owned = None, False
    for vs, t in factors:
        axes = sorted(range(len(vs)), key=lambda k: pos[vs[k]])
        t = np.transpose(t, axes)
        shape = [1] * len(scope)
        for new, k in enumerate(axes):
            shape[pos[vs[k]]] = t.shape[new]
        t = t.reshape(shape)
        if total is not None and owned and np.broadcast_shapes(total.shape, t.shape) == total.shape:
            total += t  # in place: a table this function made
        else:
            total, owned = (t, False) if total is None else (total + t, True)
    return total


def eliminate(
    mrf: GraphMRF,
    cardinalities=None,
    *,
    semiring: str = "max",
    max_entries: int = MAX_TABLE_ENTRIES,
    max_total: int = MAX_TOTAL_ENTRIES,
    order: tuple[list[int], int] | None = None,
) -> EliminationResult:
    """Exact MAP (``semiring="max"``) or log-partition (``"sum"``) of an unbatched model by variable elimination.

    Variables are eliminated in :func:`elimination_order`; each step adds up the tables that
    hold the variable and maximises (log-sum-exps) it out, keeping the argmax; the labels are
    then read back in the reverse order.  Cost: the sum of the table sizes (at most
    ``max_total``), each at most ``max_entries``.

    Args:
        mrf: unbatched :class:`crfkit.GraphMRF`.
        cardinalities: optional ``[N]``: only labels ``x_i < cardinalities[i]`` are considered
            (the UAI reader pads the others with its hard score).
        semiring: ``"max"`` or ``"sum"``.
        max_entries: the largest table allowed. max_total: the largest sum of table sizes allowed.
        order: ``(order, largest table)`` from :func:`elimination_order` (computed when ``None``).

    Raises:
        CRFValueError: a batched model, a bad ``semiring``, or no order within ``max_entries``.
    """

    mrf = _check_mrf(mrf)
    if mrf.batched:
        raise CRFValueError(f"expected an unbatched model (unary [N, L]), got a batch of {mrf.batch_size}")
    if semiring not in ("max", "sum"):
        raise CRFValueError(f"expected semiring 'max' or 'sum', got {semiring!r}")
    N, L = mrf.num_nodes, mrf.num_labels
    cards = [L] * N if cardinalities is None else [int(c) for c in cardinalities]
    if len(cards) != N or min(cards, default=1) < 1 or max(cards, default=1) > L:
        raise CRFValueError(f"expected {N} cardinalities in [1, {L}], got {cards}")
    got = order if order is not None else elimination_order(mrf, cards, max_entries=max_entries, max_total=max_total)
    if got is None:
        raise CRFValueError(
            f"expected a model whose elimination tables fit in max_entries = {max_entries} (max_total = "
            f"{max_total} in all), got one that needs "
            f"more (N = {N}, E = {mrf.num_edges}, L = {L}); use method 'dd'"
        )
    order, largest = got
    un = mrf.unary.detach().double().cpu().numpy()
    tab = mrf.edge_tables().detach().double().cpu().numpy()
    unary = [un[i, : cards[i]] for i in range(N)]
    pairs = mrf.edges.detach().cpu().tolist()
    tables = [tab[e, : cards[a], : cards[b]] for e, (a, b) in enumerate(pairs)]
    value, x = eliminate_arrays(unary, pairs, tables, order, semiring)
    labels = None if x is None else torch.from_numpy(x).to(mrf.edges.device)
    return EliminationResult(value=value, labels=labels, order=order, largest_table=int(largest))


def _row_max(t2):
    """Max and argmax of every row of ``t2 [R, c]`` (column by column: fast for few columns)."""
    import numpy as np

    if t2.shape[1] > 4:
        am = t2.argmax(1)
        return t2[np.arange(t2.shape[0]), am], am
    best = t2[:, 0].copy()
    am = np.zeros(t2.shape[0], dtype=np.int64)
    for k in range(1, t2.shape[1]):
        col = t2[:, k]
        better = col > best
        am[better] = k
        np.maximum(best, col, out=best)
    return best, am


def eliminate_arrays(unary: list, pairs: list, tables: list, order: list[int], semiring: str = "max"):
    """The elimination of :func:`eliminate` on plain numpy tables (no checks).

    Args:
        unary: per variable, its scores ``[card_i]``. pairs: ``[(i, j), ...]``; tables: per pair,
            its scores ``[card_i, card_j]``. order: every variable once. semiring: ``"max"``/``"sum"``.

    Returns:
        ``(value, labels [N] int64 or None)``.
    """
    import numpy as np

    N = len(unary)
    buckets: list[list] = [[] for _ in range(N)]  # factors waiting for their first-eliminated variable
    rank = {v: k for k, v in enumerate(order)}
    constants: list[float] = []

    def put(vs: tuple, t) -> None:
        if vs:
            buckets[min(vs, key=rank.__getitem__)].append((vs, t))
        else:
            constants.append(float(t))

    for i in range(N):
        put((i,), unary[i])
    for (a, b), t in zip(pairs, tables):
        put((a, b), t)
    argmaxes = {}
    for v in order:
        fs = buckets[v]
        rest = tuple(sorted({u for vs, _ in fs for u in vs} - {v}))
        t = _combine(fs, [*rest, v])  # v last
        shape = t.shape[:-1]
        t2 = t.reshape(-1, t.shape[-1])  # a 2-D view: rows = the other variables, columns = v's labels
        if semiring == "max":
            red, am = _row_max(t2)
            argmaxes[v] = (rest, am.reshape(shape))
            red = red.reshape(shape)
        else:
            m = t2.max(1, keepdims=True)
            red = (np.log(np.exp(t2 - m).sum(1)) + m[:, 0]).reshape(shape)
        put(rest, red)
    value = float(sum(constants))
    if semiring != "max":
        return value, None
    x = np.zeros(N, dtype=np.int64)
    for v in reversed(order):
        rest, am = argmaxes[v]
        x[v] = am[tuple(x[u] for u in rest)] if rest else am
    return value, x
