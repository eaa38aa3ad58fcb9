"""Independent references for the tests: written from the definitions, not from crfkit's code.

- :class:`GridSpec`: a tiny grid model given by plain numpy arrays, one pairwise form per
  offset; :func:`spec_tables` expands every form to full tables by its definition
  (``docs/architecture.md``, "Conventions"), :func:`spec_to_crf` builds the ``crfkit.GridCRF`` under test.
- :func:`all_scores` / :func:`brute_max`: every labelling of a tiny grid scored by a direct sum.
- :func:`chain_brute`: max / log-sum-exp over all labellings of one chain, and each position's
  (smoothed) max-marginals with ``x_k`` fixed.
- :func:`lp_optimum`: the local-polytope LP relaxation, solved by HiGHS (``highspy``).
- :func:`smoothed_dual_min`: the minimum of the smoothed chain dual, by scipy's L-BFGS over
  free multipliers, with chain values from ``chain_marginals_reference``.
- :func:`grid_specs`: a hypothesis strategy for tiny grid models.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import torch
from hypothesis import strategies as st

import crfkit
from crfkit.models.pairwise import Potts, TruncatedLinear

#: Offsets used when drawing models: the defaults plus both diagonals and a knight move.
OFFSET_POOL = ((0, 1), (1, 0), (0, 2), (2, 0), (1, 1), (1, -1), (1, 2))
#: Pairwise forms a spec can hold.
FORMS = ("dense", "shared", "weighted", "potts", "tl", "potts_scalar")


# --------------------------------------------------------------------------------------------
# tiny grid models
# --------------------------------------------------------------------------------------------
@dataclass
class GridSpec:
    """A batch of grid models in plain numpy (float64).

    ``unary [B, L, H, W]``; ``terms[k]`` for offset ``offsets[k]`` is one of
    ``("dense", tables [B, L, L, H, W])``, ``("shared", table [L, L])``,
    ``("weighted", weight [B, H, W], table [L, L])``, ``("potts", weight [B, H, W])``,
    ``("potts_scalar", w)``, ``("tl", weight [B, H, W], truncation)``.
    """

    unary: np.ndarray
    offsets: tuple[tuple[int, int], ...]
    terms: list = field(default_factory=list)

    @property
    def shape(self):
        return self.unary.shape


def random_term(
    rng: np.random.Generator, form: str, B: int, L: int, H: int, W: int, scale: float = 1.0
):
    if form == "dense":
        return ("dense", scale * rng.normal(size=(B, L, L, H, W)))
    if form == "shared":
        return ("shared", scale * rng.normal(size=(L, L)))
    if form == "weighted":
        return ("weighted", scale * rng.uniform(-1.0, 1.0, size=(B, H, W)), rng.normal(size=(L, L)))
    if form == "potts":
        return ("potts", scale * rng.uniform(0.0, 1.5, size=(B, H, W)))
    if form == "potts_scalar":
        return ("potts_scalar", float(scale * rng.uniform(0.1, 1.5)))
    if form == "tl":
        return (
            "tl",
            scale * rng.uniform(0.0, 1.0, size=(B, H, W)),
            float(rng.choice([1.0, 1.5, 2.0])),
        )
    raise ValueError(form)


def random_spec(
    rng: np.random.Generator,
    B: int,
    L: int,
    H: int,
    W: int,
    offsets=crfkit.DEFAULT_OFFSETS,
    forms=None,
    unary_scale: float = 1.0,
    pairwise_scale: float = 1.0,
) -> GridSpec:
    """Random model; ``forms`` one per offset (default: drawn from :data:`FORMS`)."""
    offsets = tuple(tuple(o) for o in offsets)
    if forms is None:
        forms = [FORMS[i] for i in rng.integers(0, len(FORMS), size=len(offsets))]
    unary = unary_scale * rng.normal(size=(B, L, H, W))
    terms = [random_term(rng, f, B, L, H, W, pairwise_scale) for f in forms]
    return GridSpec(unary, offsets, terms)


def term_table(term, B: int, L: int, H: int, W: int) -> np.ndarray:
    """Full tables ``[B, L, L, H, W]`` of one pairwise term, from the forms' definitions."""
    a = np.arange(L)[:, None]
    c = np.arange(L)[None, :]
    kind = term[0]
    if kind == "dense":
        return np.array(term[1], dtype=np.float64)
    if kind == "shared":
        return np.broadcast_to(term[1][None, :, :, None, None], (B, L, L, H, W)).copy()
    if kind == "weighted":
        return term[1][:, None, None, :, :] * term[2][None, :, :, None, None]
    if kind in ("potts", "potts_scalar"):
        w = term[1] if kind == "potts" else np.full((B, H, W), term[1])
        return -w[:, None, None, :, :] * (a != c)[None, :, :, None, None]
    if kind == "tl":
        d = np.minimum(np.abs(a - c), term[2]).astype(np.float64)
        return -term[1][:, None, None, :, :] * d[None, :, :, None, None]
    raise ValueError(kind)


def spec_tables(spec: GridSpec) -> list[np.ndarray]:
    B, L, H, W = spec.shape
    return [term_table(t, B, L, H, W) for t in spec.terms]


def _t(x, dtype):
    return torch.as_tensor(np.ascontiguousarray(x), dtype=dtype)


def crf_term(term, dtype=torch.float64):
    """The crfkit pairwise entry for one spec term (in its own form)."""
    kind = term[0]
    if kind == "dense":
        return _t(term[1], dtype)
    if kind == "shared":
        return _t(term[1], dtype)
    if kind == "weighted":
        return (_t(term[1], dtype), _t(term[2], dtype))
    if kind == "potts":
        return Potts(_t(term[1], dtype))
    if kind == "potts_scalar":
        return Potts(float(term[1]))
    if kind == "tl":
        return TruncatedLinear(_t(term[1], dtype), float(term[2]))
    raise ValueError(kind)


def spec_to_crf(spec: GridSpec, *, dense: bool = False, dtype=torch.float64) -> crfkit.GridCRF:
    """The model under test; ``dense=True`` writes every term as full per-edge tables."""
    if dense:
        pairwise = [_t(t, dtype) for t in spec_tables(spec)]
    else:
        pairwise = [crf_term(t, dtype) for t in spec.terms]
    return crfkit.GridCRF(_t(spec.unary, dtype), pairwise, offsets=spec.offsets)


def grid_edges(H: int, W: int, offsets) -> list[tuple[int, int, int, int, int]]:
    """Every edge as ``(k, y, x, i, j)``: offset index, first pixel, node ids ``y * W + x``."""
    out = []
    for k, (dy, dx) in enumerate(offsets):
        for y in range(H):
            for x in range(W):
                y2, x2 = y + dy, x + dx
                if 0 <= y2 < H and 0 <= x2 < W:
                    out.append((k, y, x, y * W + x, y2 * W + x2))
    return out


def direct_score(spec: GridSpec, labels: np.ndarray) -> np.ndarray:
    """``labels [B, H, W]`` -> ``[B]`` by an explicit loop over pixels and edges."""
    B, L, H, W = spec.shape
    tables = spec_tables(spec)
    out = np.zeros(B)
    for b in range(B):
        s = 0.0
        for y in range(H):
            for x in range(W):
                s += spec.unary[b, labels[b, y, x], y, x]
        for k, y, x, _, _ in grid_edges(H, W, spec.offsets):
            dy, dx = spec.offsets[k]
            s += tables[k][b, labels[b, y, x], labels[b, y + dy, x + dx], y, x]
        out[b] = s
    return out


def all_labellings(H: int, W: int, L: int) -> np.ndarray:
    """Every labelling of an ``H × W`` grid: ``[L ** (H W), H, W]``."""
    grids = np.array(list(itertools.product(range(L), repeat=H * W)), dtype=np.int64)
    return grids.reshape(-1, H, W)


def all_scores(spec: GridSpec) -> tuple[np.ndarray, np.ndarray]:
    """Scores of every labelling ``[B, M]`` and the labellings ``[M, H, W]`` (direct sum)."""
    B, L, H, W = spec.shape
    X = all_labellings(H, W, L)
    flat = X.reshape(X.shape[0], H * W)
    un = spec.unary.reshape(B, L, H * W)
    scores = np.zeros((B, X.shape[0]))
    for i in range(H * W):
        scores += un[:, flat[:, i], i]
    tables = spec_tables(spec)
    for k, y, x, i, j in grid_edges(H, W, spec.offsets):
        scores += tables[k][:, flat[:, i], flat[:, j], y, x]
    return scores, X


def brute_max(spec: GridSpec) -> np.ndarray:
    return all_scores(spec)[0].max(axis=1)


# --------------------------------------------------------------------------------------------
# single chains
# --------------------------------------------------------------------------------------------
def smax_np(x: np.ndarray, gamma: float, axis=None):
    """``max`` if ``gamma == 0`` else ``gamma * logsumexp(x / gamma)`` (stable)."""
    m = np.max(x, axis=axis, keepdims=True)
    if gamma == 0.0:
        return np.squeeze(m, axis=axis) if axis is not None else float(m.squeeze())
    r = m + gamma * np.log(np.sum(np.exp((x - m) / gamma), axis=axis, keepdims=True))
    return np.squeeze(r, axis=axis) if axis is not None else float(r.squeeze())


def chain_brute(unary: np.ndarray, tables: np.ndarray, gamma: float) -> tuple[float, np.ndarray]:
    """One chain by enumeration: ``unary [m, L]``, ``tables [m-1, L, L]`` ->
    (``smax`` over all labellings, ``marginals [m, L]`` with ``x_k = l`` fixed)."""
    m, L = unary.shape
    X = np.array(list(itertools.product(range(L), repeat=m)), dtype=np.int64)  # [M, m]
    s = np.zeros(X.shape[0])
    for k in range(m):
        s += unary[k, X[:, k]]
    for k in range(m - 1):
        s += tables[k, X[:, k], X[:, k + 1]]
    value = smax_np(s, gamma)
    marg = np.zeros((m, L))
    for k in range(m):
        for l in range(L):
            marg[k, l] = smax_np(s[X[:, k] == l], gamma)
    return value, marg


def chain_tables_np(kind: str, L: int, tables=None, weight=None, truncation=None) -> np.ndarray:
    """Full tables ``[C, n-1, L, L]`` of a chain pairwise, from the kinds' definitions."""
    if kind == "dense":
        return np.asarray(tables, dtype=np.float64)
    if kind == "weighted":
        return np.asarray(weight)[:, :, None, None] * np.asarray(tables)[:, None, :, :]
    a = np.arange(L)[:, None]
    c = np.arange(L)[None, :]
    d = np.minimum(np.abs(a - c), truncation).astype(np.float64)
    return -np.asarray(weight)[:, :, None, None] * d


# --------------------------------------------------------------------------------------------
# chains of a grid, written independently of crfkit.decomposition
# --------------------------------------------------------------------------------------------
def grid_chain_lists(H: int, W: int, offset) -> list[list[int]]:
    """Maximal chains ``p, p + d, p + 2 d, ...`` of one offset, as node-id lists ``y * W + x``."""
    dy, dx = offset
    chains = []
    for y in range(H):
        for x in range(W):
            py, px = y - dy, x - dx
            if 0 <= py < H and 0 <= px < W:
                continue  # not a start: the predecessor is on the grid
            chain = []
            cy, cx = y, x
            while 0 <= cy < H and 0 <= cx < W:
                chain.append(cy * W + cx)
                cy, cx = cy + dy, cx + dx
            chains.append(chain)
    return chains


# --------------------------------------------------------------------------------------------
# the LP relaxation, by HiGHS
# --------------------------------------------------------------------------------------------
def local_polytope_lp(unary: np.ndarray, edges: np.ndarray, tables: np.ndarray) -> float:
    """``max <θ, μ>`` over the local polytope.

    ``unary [N, L]``, ``edges [E, 2]``, ``tables [E, L, L]``.

    Variables ``μ_i(a) >= 0`` and ``μ_e(a, c) >= 0``; rows ``Σ_a μ_i(a) = 1``,
    ``Σ_c μ_e(a, c) = μ_i(a)`` and ``Σ_a μ_e(a, c) = μ_j(c)``.
    """
    import highspy
    from scipy import sparse

    N, L = unary.shape
    E = edges.shape[0]
    nv = N * L + E * L * L
    rows, cols, vals = [], [], []
    r = 0
    for i in range(N):
        for a in range(L):
            rows.append(r)
            cols.append(i * L + a)
            vals.append(1.0)
        r += 1
    rhs = [1.0] * N
    for e in range(E):
        i, j = int(edges[e, 0]), int(edges[e, 1])
        base = N * L + e * L * L
        for a in range(L):  # Σ_c μ_e(a, c) - μ_i(a) = 0
            for c in range(L):
                rows.append(r)
                cols.append(base + a * L + c)
                vals.append(1.0)
            rows.append(r)
            cols.append(i * L + a)
            vals.append(-1.0)
            r += 1
        for c in range(L):  # Σ_a μ_e(a, c) - μ_j(c) = 0
            for a in range(L):
                rows.append(r)
                cols.append(base + a * L + c)
                vals.append(1.0)
            rows.append(r)
            cols.append(j * L + c)
            vals.append(-1.0)
            r += 1
        rhs += [0.0] * (2 * L)
    A = sparse.csc_matrix((vals, (rows, cols)), shape=(r, nv))
    cost = np.concatenate([unary.reshape(-1), tables.reshape(-1)])

    lp = highspy.HighsLp()
    lp.num_col_ = nv
    lp.num_row_ = r
    lp.col_cost_ = -cost  # HiGHS minimises
    lp.col_lower_ = np.zeros(nv)
    lp.col_upper_ = np.full(nv, highspy.kHighsInf)
    lp.row_lower_ = np.array(rhs)
    lp.row_upper_ = np.array(rhs)
    lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
    lp.a_matrix_.start_ = A.indptr
    lp.a_matrix_.index_ = A.indices
    lp.a_matrix_.value_ = A.data
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("primal_feasibility_tolerance", 1e-9)
    h.setOptionValue("dual_feasibility_tolerance", 1e-9)
    h.passModel(lp)
    h.run()
    status = h.getModelStatus()
    if status != highspy.HighsModelStatus.kOptimal:
        raise RuntimeError(f"HiGHS did not solve the LP: {h.modelStatusToString(status)}")
    return -float(h.getInfo().objective_function_value)


def lp_optimum(spec: GridSpec) -> np.ndarray:
    """LP relaxation of each model of the batch: ``[B]``."""
    B, L, H, W = spec.shape
    edges_full = grid_edges(H, W, spec.offsets)
    tables = spec_tables(spec)
    edges = np.array([[i, j] for _, _, _, i, j in edges_full], dtype=np.int64).reshape(-1, 2)
    out = np.zeros(B)
    for b in range(B):
        un = spec.unary[b].reshape(L, H * W).T
        tab = np.array([tables[k][b, :, :, y, x] for k, y, x, _, _ in edges_full]).reshape(-1, L, L)
        out[b] = local_polytope_lp(un, edges, tab)
    return out


# --------------------------------------------------------------------------------------------
# the smoothed dual, minimised by L-BFGS
# --------------------------------------------------------------------------------------------
def smoothed_dual_min(spec: GridSpec, b: int, gamma: float, *, max_iter: int = 3000) -> float:
    """``min`` over multipliers of ``Σ_t gamma logsumexp_{x^t}(score_t(x^t) / gamma)``.

    Chains along each offset (:func:`grid_chain_lists`); node ``i`` lies in one chain per
    offset, with unary ``ψ_i / K + λ_i^k - mean_k λ_i^k`` (so the ``K`` copies always sum to
    ``ψ_i``); chain values from ``chain_marginals_reference`` in float64, gradients by autograd.
    """
    from scipy.optimize import minimize

    from crfkit.decomposition.chains import ChainPairwise
    from crfkit.ops.chain.reference import chain_marginals_reference

    _, L, H, W = spec.shape
    K = len(spec.offsets)
    N = H * W
    tables = spec_tables(spec)
    unary = torch.as_tensor(spec.unary[b].reshape(L, N).T.copy(), dtype=torch.float64)  # [N, L]
    groups = []
    for k, (dy, dx) in enumerate(spec.offsets):
        chains = grid_chain_lists(H, W, (dy, dx))
        n = max(len(c) for c in chains)
        C = len(chains)
        nodes = torch.zeros(C, n, dtype=torch.long)
        lengths = torch.tensor([len(c) for c in chains], dtype=torch.long)
        tab = np.zeros((C, max(n - 1, 1), L, L))
        for ci, c in enumerate(chains):
            nodes[ci, : len(c)] = torch.tensor(c)
            for p in range(len(c) - 1):
                y, x = divmod(c[p], W)
                tab[ci, p] = tables[k][b, :, :, y, x]
        tab = tab[:, : max(n - 1, 0)]
        pw = ChainPairwise("dense", tables=torch.as_tensor(tab, dtype=torch.float64))
        mask = torch.arange(n)[None, :] < lengths[:, None]
        groups.append((nodes, lengths, pw, mask))

    def objective(flat: np.ndarray):
        lam = torch.tensor(flat.reshape(N, K, L), dtype=torch.float64, requires_grad=True)
        lam0 = lam - lam.mean(dim=1, keepdim=True)
        total = torch.zeros((), dtype=torch.float64)
        for k, (nodes, lengths, pw, mask) in enumerate(groups):
            psi = unary / K + lam0[:, k]  # [N, L]
            u = psi[nodes] * mask[:, :, None]
            _, value = chain_marginals_reference(u, pw, lengths, gamma)
            total = total + value.sum()
        total.backward()
        return float(total.detach()), lam.grad.numpy().reshape(-1).astype(np.float64)

    x0 = np.zeros(N * K * L)
    res = minimize(
        objective,
        x0,
        jac=True,
        method="L-BFGS-B",
        options={
            "maxiter": max_iter,
            "maxfun": 4 * max_iter,
            "ftol": 1e-15,
            "gtol": 1e-11,
            "maxcor": 30,
        },
    )
    return float(res.fun)


# --------------------------------------------------------------------------------------------
# hypothesis strategies
# --------------------------------------------------------------------------------------------
@st.composite
def grid_specs(
    draw, max_hw: int = 3, max_labels: int = 3, max_batch: int = 2, forms=FORMS, min_labels: int = 1
):
    """Tiny grid models: ``H, W <= max_hw``, ``L <= max_labels``, random offsets (incl. diagonals)
    and random pairwise forms; values from a drawn numpy seed."""
    H = draw(st.integers(1, max_hw))
    W = draw(st.integers(1, max_hw))
    L = draw(st.integers(min_labels, max_labels))
    B = draw(st.integers(1, max_batch))
    offsets = draw(st.lists(st.sampled_from(OFFSET_POOL), min_size=1, max_size=4, unique=True))
    chosen = [draw(st.sampled_from(forms)) for _ in offsets]
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    return random_spec(rng, B, L, H, W, offsets, chosen)


# --------------------------------------------------------------------------------------------
# the paper's fixed-point iteration (Alg. 1, Eq. 19 / 42), unrolled, from the paper's text
# --------------------------------------------------------------------------------------------
def grid_chain_groups(spec: GridSpec, b: int, tables=None):
    """Per offset: ``(nodes [C, n] long, lengths [C], dense ChainPairwise, mask [C, n])``,
    built from :func:`grid_chain_lists`; ``tables`` (default: :func:`spec_tables`) may be a list
    of torch tensors ``[B, L, L, H, W]`` to keep gradients."""
    from crfkit.decomposition.chains import ChainPairwise

    _, L, H, W = spec.shape
    if tables is None:
        tables = [torch.as_tensor(t) for t in spec_tables(spec)]
    groups = []
    for k, offset in enumerate(spec.offsets):
        chains = grid_chain_lists(H, W, offset)
        n = max(len(c) for c in chains)
        C = len(chains)
        nodes = torch.zeros(C, n, dtype=torch.long)
        lengths = torch.tensor([len(c) for c in chains], dtype=torch.long)
        rows = []
        for ci, c in enumerate(chains):
            nodes[ci, : len(c)] = torch.tensor(c)
            row = []
            for p in range(n - 1):
                if p < len(c) - 1:
                    y, x = divmod(c[p], W)
                    row.append(tables[k][b, :, :, y, x])
                else:
                    row.append(torch.zeros(L, L, dtype=tables[k].dtype))
            rows.append(torch.stack(row) if row else torch.zeros(0, L, L, dtype=tables[k].dtype))
        pw = ChainPairwise("dense", tables=torch.stack(rows))
        mask = torch.arange(n)[None, :] < lengths[:, None]
        groups.append((nodes, lengths, pw, mask))
    return groups


def unrolled_fpi(unary_nl: torch.Tensor, groups, gamma: float, iters: int):
    """The paper's iteration on one model: ``unary_nl [N, L]``; ``groups`` from
    :func:`grid_chain_groups` (every node in exactly one chain per group).

    ``ψ_i^t = unary_i / K`` at the start; each iteration computes the chains' (smoothed)
    max-marginals ``μ_i^t`` and updates ``ψ_i^t -= α (μ_i^t - mean_t μ_i^t)`` with
    ``α = 1 / max_t |V^t|``.  Returns ``(dual history [iters + 1], summed marginals [N, L] at
    the last iterate, summed marginals [N, L] before the last update)``; differentiable.
    """
    from crfkit.ops.chain.reference import chain_marginals_reference

    N, L = unary_nl.shape
    K = len(groups)
    alpha = 1.0 / max(int(g[1].max()) for g in groups)
    psi = [unary_nl / K for _ in range(K)]
    history = []
    prev = None
    summed = None
    for it in range(iters + 1):
        mus = []
        total = unary_nl.new_zeros(())
        for k, (nodes, lengths, pw, mask) in enumerate(groups):
            u = psi[k][nodes] * mask[:, :, None]
            marg, value = chain_marginals_reference(u, pw, lengths, gamma)
            mu = unary_nl.new_zeros(N, L).index_put((nodes[mask],), marg[mask], accumulate=True)
            mus.append(mu)
            total = total + value.sum()
        history.append(total)
        prev, summed = summed, sum(mus)
        if it == iters:
            break
        mean = summed / K
        psi = [psi[k] - alpha * (mus[k] - mean) for k in range(K)]
    return torch.stack(history), summed, prev
