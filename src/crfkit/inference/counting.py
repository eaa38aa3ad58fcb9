"""Counting numbers of convex BP (Bethe, TRW, user-given) and the convexity check
(``docs/maths.md``, "Counting numbers and the convexity check").

* :func:`counting_numbers` — ``(c_node [N], c_edge [E])`` for ``"bethe"``, ``"trbp"`` or ``"convex"``.
* :func:`edge_appearance_probabilities` — TRW's ``ρ [E]`` from a covering by spanning forests.
* :func:`check_convex_counting` — refuses counting numbers whose entropy approximation is not
  provably concave (a small LP).
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import CRFTypeError, CRFValueError, check_finite, check_tensor
from .bp_graph import CompiledGraph

__all__ = ["counting_numbers", "edge_appearance_probabilities", "check_convex_counting", "COUNTING_METHODS"]

COUNTING_METHODS = ("bethe", "trbp", "convex")


def _union_find_forest(order: np.ndarray, e: np.ndarray, N: int) -> np.ndarray:
    """Kruskal: the edges (in ``order``) kept in a maximal spanning forest."""
    parent = np.arange(N)

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    keep = np.zeros(e.shape[0], dtype=bool)
    for k in order.tolist():
        a, b = find(int(e[k, 0])), find(int(e[k, 1]))
        if a != b:
            parent[a] = b
            keep[k] = True
    return keep


def _spanning_forest(weights: np.ndarray, e: np.ndarray, N: int) -> np.ndarray:
    """Minimum-weight maximal spanning forest (scipy when present, else plain Kruskal)."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import minimum_spanning_tree
    except ImportError:  # pragma: no cover - scipy is a dev dependency
        return _union_find_forest(np.argsort(weights, kind="stable"), e, N)
    # positive, distinct weights; keep each edge's id through the matrix (lower triangle free)
    a = np.minimum(e[:, 0], e[:, 1])
    b = np.maximum(e[:, 0], e[:, 1])
    m = coo_matrix((weights, (a, b)), shape=(N, N)).tocsr()
    t = minimum_spanning_tree(m).tocoo()
    key = a.astype(np.int64) * N + b
    chosen = t.row.astype(np.int64) * N + t.col
    return np.isin(key, chosen)


def edge_appearance_probabilities(
    edges: torch.Tensor, num_nodes: int, *, seed: int = 0
) -> torch.Tensor:
    """TRW edge appearance probabilities ``ρ [E]`` from a covering of the graph by spanning forests.

    Maximal spanning forests are drawn one after another, each preferring the edges covered the
    fewest times so far (random ties), until every edge is in at least one; ``ρ_e`` is the
    fraction of forests holding edge ``e``.  The uniform distribution over these forests is a
    distribution over spanning trees (of each component), so the TRW bound holds on any graph.

    Args:
        edges: ``[E, 2]`` long.
        num_nodes: ``N``.
        seed: for the random tie-breaking.

    Returns:
        ``ρ [E]`` float64 in ``(0, 1]``.
    """
    e = edges.detach().cpu().numpy().astype(np.int64)
    E = e.shape[0]
    if E == 0:
        return torch.zeros(0, dtype=torch.float64)
    rng = np.random.default_rng(seed)
    count = np.zeros(E, dtype=np.int64)
    forests = 0
    while (count == 0).any():
        w = 1.0 + count + rng.random(E) * 0.5
        keep = _spanning_forest(w, e, num_nodes)
        count += keep
        forests += 1
        if forests > 4 * max(1, int(np.ceil(E / max(1, num_nodes - 1)))) + 8:  # pragma: no cover
            raise RuntimeError("forest covering did not terminate")
    return torch.as_tensor(count / forests, dtype=torch.float64)


def counting_numbers(
    graph: CompiledGraph, method: str, counting=None, *, check: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Counting numbers ``(c_node [N], c_edge [E])`` (float64) for ``method``.

    * ``"bethe"``: ``c_ij = 1``, ``c_i = 1 − deg(i)``.
    * ``"trbp"``: ``c_ij = ρ_ij`` from :func:`edge_appearance_probabilities`,
      ``c_i = 1 − Σ_j ρ_ij``.
    * ``"convex"``: ``counting = (c_node [N], c_edge [E])`` given by the user, checked by
      :func:`check_convex_counting` (unless ``check=False``).
    """
    N, E = graph.N, graph.E
    if method == "bethe":
        ce = torch.ones(E, dtype=torch.float64)
    elif method == "trbp":
        ce = edge_appearance_probabilities(graph.edges, N)
    elif method == "convex":
        if counting is None:
            raise CRFValueError(
                "expected counting=(c_node [N], c_edge [E]) with method='convex', got None"
            )
        if not (isinstance(counting, (tuple, list)) and len(counting) == 2):
            raise CRFTypeError(
                f"expected counting as a pair (c_node [N], c_edge [E]), got {type(counting).__name__}"
            )
        cn, ce = (torch.as_tensor(c, dtype=torch.float64).cpu() for c in counting)
        check_tensor(cn, "c_node", "N", {"N": N})
        check_tensor(ce, "c_edge", "E", {"E": E})
        check_finite(cn, "c_node")
        check_finite(ce, "c_edge")
        if check:
            check_convex_counting(graph, cn, ce)
        return cn, ce
    else:
        raise CRFValueError(f"expected method in {COUNTING_METHODS}, got {method!r}")
    cn = 1.0 - torch.zeros(N, dtype=torch.float64).index_add_(
        0, graph.dsrc.cpu(), torch.cat([ce, ce])
    )
    return cn, ce


def check_convex_counting(
    graph: CompiledGraph, c_node: torch.Tensor, c_edge: torch.Tensor, *, atol: float = 1e-9
) -> None:
    """Refuse counting numbers for which the entropy approximation is not concave.

    Sufficient condition used (Heskes 2006; Meshi et al. 2009): ``c_ij > 0`` and there are
    ``a_{ij→i}, a_{ij→j} ≥ 0`` with ``a_{ij→i} + a_{ij→j} ≤ 1`` such that
    ``c_i + Σ_j a_{ij→i} c_ij ≥ 0`` for every node (then the entropy is a positive combination
    of conditional entropies and entropies).  Also ``ĉ_i = c_i + Σ_j c_ij > 0``, which the
    message formulas divide by.  (``ĉ_i ≥ 0`` alone is not sufficient: the Bethe
    numbers satisfy it on every graph.)  Solved as a transportation LP with scipy when some
    ``c_i < 0``.
    """
    if bool((c_edge <= 0).any()):
        raise CRFValueError(
            f"expected counting numbers c_edge > 0 for a convex entropy, got min {float(c_edge.min()):.4g}"
        )
    ch = c_node.clone().index_add_(0, graph.dsrc.cpu(), torch.cat([c_edge, c_edge]))
    if bool((ch <= 0).any()):
        i = int(ch.argmin())
        raise CRFValueError(
            f"expected c_node[i] + Σ_j c_edge[ij] > 0 at every node, got {float(ch[i]):.4g} at node {i}"
        )
    need = (-c_node).clamp(min=0).numpy()
    if not (need > atol).any():
        return
    try:
        from scipy.optimize import linprog
        from scipy.sparse import coo_matrix
    except ImportError:  # pragma: no cover
        raise ImportError(
            "checking counting numbers with some c_node < 0 needs scipy: pip install scipy"
        ) from None
    e = graph.edges.cpu().numpy()
    E, N = e.shape[0], graph.N
    ce = c_edge.numpy()
    # variables: a[e, 0] (to edges[e,0]) and a[e, 1]; maximise Σ min(...) as feasibility:
    # Σ_{e∋i} a_{e,i} c_e ≥ need_i ; a_{e,0} + a_{e,1} ≤ 1 ; a ≥ 0
    rows = np.concatenate([e[:, 0], e[:, 1]])
    cols = np.concatenate([np.arange(E), np.arange(E) + E])
    vals = np.concatenate([ce, ce])
    A_node = coo_matrix((-vals, (rows, cols)), shape=(N, 2 * E))
    A_edge = coo_matrix(
        (np.ones(2 * E), (np.concatenate([np.arange(E)] * 2), cols)), shape=(E, 2 * E)
    )
    from scipy.sparse import vstack

    res = linprog(
        np.zeros(2 * E),
        A_ub=vstack([A_node, A_edge]).tocsr(),
        b_ub=np.concatenate([-need, np.ones(E)]),
        bounds=(0, 1),
        method="highs",
    )
    if res.status != 0:
        raise CRFValueError(
            "expected convex counting numbers (each node's negative c_node covered by shares of its "
            "edges' c_edge), got counting numbers for which no such split exists"
        )
