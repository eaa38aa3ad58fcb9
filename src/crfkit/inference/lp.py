"""Exact references for MAP: the local-polytope LP relaxation (HiGHS) and enumeration.

The LP relaxation of MAP (scores maximised)::

    max  Σ_i Σ_l θ_i(l) μ_i(l) + Σ_e Σ_{a,c} θ_e(a, c) μ_e(a, c)
    s.t. μ ≥ 0,  Σ_l μ_i(l) = 1,
         Σ_c μ_e(a, c) = μ_{e0}(a),  Σ_a μ_e(a, c) = μ_{e1}(c)      (for every edge e)

Its optimum bounds the best labelling's score from above and equals it on trees; every
dual-decomposition bound is at least this value.  Solved exactly (simplex, float64) with
HiGHS through ``highspy`` (the ``peers`` / ``dev`` extra), imported lazily.

Shape letters: ``N`` nodes, ``E`` edges, ``L`` labels, ``B`` batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, fmt_shape

__all__ = [
    "LPSolution",
    "MAPSolution",
    "local_polytope_lp",
    "lp_relaxation",
    "exact_map_bruteforce",
    "MAX_ENUMERATION",
]

MAX_ENUMERATION = 2_000_000
"""The most labellings :func:`exact_map_bruteforce` enumerates."""


@dataclass
class LPSolution:
    """Optimum of the local-polytope LP.

    ``value``: the LP optimum (float). ``unary_marginals [N, L]`` and
    ``pairwise_marginals [E, L, L]`` (float64 tensors): an optimal point.
    """

    value: float
    unary_marginals: torch.Tensor
    pairwise_marginals: torch.Tensor


@dataclass
class MAPSolution:
    """A best labelling: ``value`` (float) and ``labels [N]`` (long)."""

    value: float
    labels: torch.Tensor


def _as_numpy(x, name: str, dims: int, *, integer: bool = False) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    elif not isinstance(x, np.ndarray):
        raise CRFTypeError(
            f"expected {name} as a torch.Tensor or numpy array, got {type(x).__name__}"
        )
    if x.ndim != dims:
        raise CRFShapeError(f"expected {name} with {dims} dimensions, got {fmt_shape(x.shape)}")
    if integer:
        if not np.issubdtype(x.dtype, np.integer):
            raise CRFTypeError(f"expected {name} to have an integer dtype, got {x.dtype}")
        return x.astype(np.int64)
    if not np.issubdtype(x.dtype, np.floating):
        raise CRFTypeError(f"expected {name} to have a floating dtype, got {x.dtype}")
    x = x.astype(np.float64)
    if not np.isfinite(x).all():
        raise CRFValueError(
            f"expected finite values in {name}, got {int((~np.isfinite(x)).sum())} that are not"
        )
    return x


def _check_model(unary, edges, tables) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u = _as_numpy(unary, "unary [N, L]", 2)
    e = _as_numpy(edges, "edges [E, 2]", 2, integer=True)
    N, L = u.shape
    if e.shape[1] != 2:
        raise CRFShapeError(f"expected edges of shape [E, 2], got {fmt_shape(e.shape)}")
    E = e.shape[0]
    t = _as_numpy(tables, "tables [E, L, L]", 3)
    if t.shape != (E, L, L):
        raise CRFShapeError(
            f"expected tables of shape [E, L, L] = {fmt_shape((E, L, L))}, got {fmt_shape(t.shape)}"
        )
    if E and (e.min() < 0 or e.max() >= N):
        raise CRFValueError(
            f"expected edges with node indices in [0, {N - 1}], "
            f"got values in [{e.min()}, {e.max()}]"
        )
    return u, e, t


def local_polytope_lp(unary, edges, tables, *, solver: str = "ipm") -> LPSolution:
    """Solve the LP relaxation of MAP over the local polytope exactly (HiGHS, float64).

    Args:
        unary: ``[N, L]`` node scores (tensor or array).
        edges: ``[E, 2]`` integer node pairs; edge ``e`` joins ``edges[e, 0]`` (label ``a``)
            and ``edges[e, 1]`` (label ``c``).
        tables: ``[E, L, L]`` edge scores ``θ_e(a, c)``.
        solver: HiGHS's ``"ipm"`` (interior point then crossover to a vertex: the default,
            much faster than simplex on these LPs) or ``"simplex"``.

    Returns:
        :class:`LPSolution` with the optimum and an optimal ``μ``.
    """
    u, e, t = _check_model(unary, edges, tables)
    if solver not in ("ipm", "simplex"):
        raise CRFValueError(f"expected solver 'ipm' or 'simplex', got {solver!r}")
    try:
        import highspy
    except ImportError:  # pragma: no cover - depends on the install
        raise ImportError(
            "local_polytope_lp needs HiGHS: pip install highspy (crfkit[peers])"
        ) from None
    N, L = u.shape
    E = e.shape[0]
    nn = N * L
    start, cols, vals = _local_polytope_rows(e, N, L)
    x = _solve_highs(highspy, -np.concatenate([u.ravel(), t.ravel()]), start, cols, vals, N, solver)
    value = float(u.ravel() @ x[:nn] + t.ravel() @ x[nn:])
    return LPSolution(
        value=value,
        unary_marginals=torch.from_numpy(x[:nn].reshape(N, L).copy()),
        pairwise_marginals=torch.from_numpy(x[nn:].reshape(E, L, L).copy()),
    )


def _local_polytope_rows(e: np.ndarray, N: int, L: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The equality constraints of the local polytope as a row-wise sparse matrix ``(start [R + 1],
    cols, vals)`` over the columns ``μ_i(l)`` (``i * L + l``) then ``μ_e(a, c)``
    (``N * L + e * L * L + a * L + c``); rows: ``N`` normalisations (``= 1``), then ``E * L``
    consistencies with the first node and ``E * L`` with the second (``= 0``)."""
    E = e.shape[0]
    nn, ne = N * L, E * L * L
    num_row = N + 2 * E * L
    a_idx = np.arange(L)
    # rows 0..N-1: normalisation
    r0 = np.repeat(np.arange(N), L)
    c0 = np.arange(nn)
    v0 = np.ones(nn)
    # rows N + e*L + a: Σ_c μ_e(a, c) - μ_{e0}(a) = 0
    ee, aa, cc = np.meshgrid(np.arange(E), a_idx, a_idx, indexing="ij")
    col_e = nn + (ee * L * L + aa * L + cc).ravel()
    r1 = (N + ee * L + aa).ravel()
    r1n = N + (np.arange(E)[:, None] * L + a_idx[None, :]).ravel()
    c1n = (e[:, 0][:, None] * L + a_idx[None, :]).ravel()
    # rows N + E*L + e*L + c: Σ_a μ_e(a, c) - μ_{e1}(c) = 0
    r2 = (N + E * L + ee * L + cc).ravel()
    r2n = N + E * L + (np.arange(E)[:, None] * L + a_idx[None, :]).ravel()
    c2n = (e[:, 1][:, None] * L + a_idx[None, :]).ravel()
    rows = np.concatenate([r0, r1, r1n, r2, r2n])
    cols = np.concatenate([c0, col_e, c1n, col_e, c2n])
    vals = np.concatenate([v0, np.ones(ne), -np.ones(E * L), np.ones(ne), -np.ones(E * L)])
    order = np.lexsort((cols, rows))
    rows, cols, vals = rows[order], cols[order], vals[order]
    start = np.zeros(num_row + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=num_row), out=start[1:])
    return start, cols, vals


def _solve_highs(highspy, cost: np.ndarray, start, cols, vals, N: int, solver: str) -> np.ndarray:
    """Minimise ``cost · x`` over ``x >= 0`` with the rows ``(start, cols, vals)`` equal to 1 (the
    first ``N``) or 0 (the rest); returns an optimal ``x`` (float64)."""
    num_col, num_row = cost.shape[0], start.shape[0] - 1
    lp = highspy.HighsLp()
    lp.num_col_ = num_col
    lp.num_row_ = num_row
    lp.col_cost_ = cost  # HiGHS minimises
    lp.col_lower_ = np.zeros(num_col)
    lp.col_upper_ = np.full(num_col, highspy.kHighsInf)
    lower = np.zeros(num_row)
    lower[:N] = 1.0
    lp.row_lower_ = lower
    lp.row_upper_ = lower.copy()
    lp.a_matrix_.format_ = highspy.MatrixFormat.kRowwise
    lp.a_matrix_.start_ = start.astype(np.int32)
    lp.a_matrix_.index_ = cols.astype(np.int32)
    lp.a_matrix_.value_ = vals
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("solver", solver)
    if solver == "ipm":
        h.setOptionValue("run_crossover", "on")
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(
            f"HiGHS did not solve the LP relaxation: {h.modelStatusToString(status)}"
        )
    return np.asarray(h.getSolution().col_value, dtype=np.float64)


def _model_arrays(model) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    from ..models.graph import GraphMRF
    from ..models.grid import GridCRF

    if isinstance(model, GridCRF):
        model = model.to_graph_mrf()
    if not isinstance(model, GraphMRF):
        raise CRFTypeError(f"expected a GridCRF or GraphMRF, got {type(model).__name__}")
    tables = model.edge_tables().detach()
    unary = model.unary.detach()
    if not model.batched:
        unary, tables = unary[None], tables[None]
    return [(unary[b], model.edges, tables[b]) for b in range(unary.shape[0])]


def lp_relaxation(model, *, solver: str = "ipm") -> list[LPSolution]:
    """:func:`local_polytope_lp` of each model of a ``GridCRF`` or ``GraphMRF`` (batch order)."""
    return [local_polytope_lp(u, e, t, solver=solver) for u, e, t in _model_arrays(model)]


def exact_map_bruteforce(
    unary, edges, tables, *, max_labellings: int = MAX_ENUMERATION
) -> MAPSolution:
    """Best labelling by enumeration, for tiny models (tests and references).

    Args:
        unary: ``[N, L]``; edges: ``[E, 2]``; tables: ``[E, L, L]`` (as :func:`local_polytope_lp`).
        max_labellings: refuse models with more than this many labellings ``L ** N``.

    Returns:
        :class:`MAPSolution` (``value`` in float64; ties go to the first labelling in
        lexicographic order, node 0 most significant).
    """
    u, e, t = _check_model(unary, edges, tables)
    N, L = u.shape
    count = L**N
    if count > max_labellings:
        raise CRFValueError(
            f"expected a model with at most {max_labellings} labellings to enumerate, "
            f"got L**N = {L}**{N} = {count}"
        )
    radix = L ** np.arange(N - 1, -1, -1, dtype=np.int64)
    best_val, best_idx = -np.inf, 0
    chunk = max(1, 1 << 16)
    for lo in range(0, count, chunk):
        idx = np.arange(lo, min(count, lo + chunk), dtype=np.int64)
        lab = (idx[:, None] // radix[None, :]) % L  # [M, N]
        s = u[np.arange(N)[None, :], lab].sum(1)
        if len(e):
            s = s + t[np.arange(len(e))[None, :], lab[:, e[:, 0]], lab[:, e[:, 1]]].sum(1)
        k = int(np.argmax(s))
        if s[k] > best_val:
            best_val, best_idx = float(s[k]), int(idx[k])
    labels = (best_idx // radix) % L
    return MAPSolution(value=best_val, labels=torch.from_numpy(labels.astype(np.int64)))
