"""Convex belief propagation (Bethe, TRW and any convex counting numbers), log domain.

The variational problem (``MATH.md``) is

    A(θ) ≈ max_{μ ∈ LOCAL(G)} ⟨θ, μ⟩ + T · (Σ_i c_i H(μ_i) + Σ_ij c_ij H(μ_ij))

at temperature ``T`` (``T = 1``: the log-partition approximation; ``T = 0``: max-product).
With ``ĉ_i = c_i + Σ_{k∈N(i)} c_ik`` the messages are

    λ_{i→ij}(x_i) = (c_ij / ĉ_i) · (θ_i(x_i) + Σ_k m_{ki}(x_i)) − m_{ji}(x_i)
    m_{ij}(x_j)   = T c_ij · log Σ_{x_i} exp((θ_ij(x_i, x_j) + λ_{i→ij}(x_i)) / (T c_ij))
    b_i           ∝ exp((θ_i + Σ_k m_{ki}) / (T ĉ_i))
    b_ij          ∝ exp((θ_ij + λ_{i→ij} + λ_{j→ij}) / (T c_ij))

(the formulas were re-derived from the Lagrangian of the problem above; they agree with
``MATH.md``).  ``log Σ exp`` becomes ``max`` at ``T = 0``.

Structure is compiled once (:class:`CompiledGraph`): the ``2E`` directed edges ``d`` (``d < E``:
``edges[d, 0] → edges[d, 1]``; ``d ≥ E``: the reverse of edge ``d − E``), their source, target,
undirected edge and reverse.  A sweep is a few gathers, one ``index_add`` and one reduction over
``[B, 2E, L, L]``: no Python loop over nodes or edges.

Two levels of API:

* :func:`marginals` — the front door: ``method="bethe" | "trbp" | "convex" | "exact"``.
* :class:`ConvexBP` — the stateful engine (messages kept between calls): :meth:`ConvexBP.sweep`
  (parallel schedule), :meth:`ConvexBP.block_sweep` / :meth:`ConvexBP.run_block` (only the
  messages into a node block, the rest held), :meth:`ConvexBP.beliefs`,
  :meth:`ConvexBP.free_energy`, :meth:`ConvexBP.set_potentials`.  Learning uses it for warm
  starts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._validation import CRFTypeError, CRFValueError, check_finite, check_tensor
from ..models.graph import GraphMRF

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


# ----------------------------------------------------------------------------- structure


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


# ----------------------------------------------------------------------------- counting numbers


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
        raise CRFValueError(f"expected method in {METHODS}, got {method!r}")
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
    message formulas divide by.  (``MATH.md``'s ``ĉ_i ≥ 0`` alone is not sufficient: the Bethe
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


# ----------------------------------------------------------------------------- engine


def _dense_pairwise(mrf: GraphMRF) -> torch.Tensor:
    pw = mrf.edge_tables()
    if not mrf.batched:
        pw = pw[None]
    return pw


class _Stall:
    """Says when a residual has not halved over ``window`` sweeps."""

    def __init__(self, window: int = 40):
        self.window, self.count, self.ref = window, 0, float("inf")

    def stalled(self, res: float) -> bool:
        self.count += 1
        if self.count < self.window:
            return False
        hit = res > 0.5 * self.ref
        self.ref, self.count = res, 0
        return hit


class ConvexBP:
    """Stateful convex BP on one graph structure, batched over ``B`` models.

    Args:
        graph: a :class:`CompiledGraph` (or a :class:`crfkit.GraphMRF`, whose potentials are then
            loaded).
        c_node: ``[N]`` counting numbers of the nodes; c_edge: ``[E]`` of the edges
            (see :func:`counting_numbers`).
        num_labels: ``L`` (taken from the model when a GraphMRF is given).
        temperature: ``T >= 0``; ``0`` is max-product.
        damping: ``α`` in ``[0, 1)``: new message ``= (1 − α) · update + α · old``.
        adaptive_damping: in :meth:`run` / :meth:`run_block`, when the residual has not halved
            over 40 sweeps, raise the damping to ``(1 + α) / 2`` (at most 0.95); it stays raised.
        batch_size, dtype: used when ``graph`` is a CompiledGraph.

    State, stored edge-major so that every gather and scatter moves whole rows:
    ``messages [2E, B, L]`` (normalised to max 0 over the target's labels), ``unary_pot [N, B, L]``,
    ``pair_pot [E, B, L, L]``, and ``incoming [N, B, L]`` (the sum of the messages into each node,
    kept up to date by every update).  The public methods take and return batch-first tensors.

    Sum-product sweeps run in the probability domain (``Σ_i exp(λ_i) K_ij`` with
    ``K = exp(θ / (T c))`` shifted per table) when the tables' range allows it in the dtype
    (about 60 nats in float32, 600 in float64), else in the log domain; the incoming sums of a full
    sweep are one sparse (CSR) product.
    """

    def __init__(
        self,
        graph,
        c_node: torch.Tensor,
        c_edge: torch.Tensor,
        *,
        num_labels: int | None = None,
        temperature: float = 1.0,
        damping: float = 0.0,
        adaptive_damping: bool = True,
        batch_size: int = 1,
        dtype: torch.dtype = torch.float64,
    ):
        mrf = None
        if isinstance(graph, GraphMRF):
            mrf = graph
            graph = CompiledGraph(mrf.edges, mrf.num_nodes)
            num_labels = mrf.num_labels
            batch_size = mrf.batch_size
            dtype = mrf.unary.dtype
        if not isinstance(graph, CompiledGraph):
            raise CRFTypeError(f"expected a CompiledGraph or GraphMRF, got {type(graph).__name__}")
        if num_labels is None:
            raise CRFValueError("expected num_labels with a CompiledGraph, got None")
        T = float(temperature)
        if not (T >= 0.0) or T == float("inf"):
            raise CRFValueError(f"expected temperature >= 0 and finite, got {temperature!r}")
        a = float(damping)
        if not (0.0 <= a < 1.0):
            raise CRFValueError(f"expected damping in [0, 1), got {damping!r}")
        self.graph = graph
        self.L = int(num_labels)
        self.B = int(batch_size)
        self.T = T
        self.damping = a
        self.adaptive_damping = bool(adaptive_damping)
        self.dtype = dtype
        dev = graph.device
        cn = torch.as_tensor(c_node, dtype=torch.float64).cpu()
        ce = torch.as_tensor(c_edge, dtype=torch.float64).cpu()
        ch = cn.clone().index_add_(0, graph.dsrc.cpu(), torch.cat([ce, ce]))
        if graph.E and bool((ce <= 0).any()):
            raise CRFValueError(f"expected c_edge > 0, got min {float(ce.min()):.4g}")
        if bool((ch <= 0).any()):
            raise CRFValueError(
                f"expected c_node + Σ c_edge > 0 at every node, got min {float(ch.min()):.4g}"
            )
        self.c_node = cn.to(dev, dtype)
        self.c_edge = ce.to(dev, dtype)
        self.c_hat = ch.to(dev, dtype)
        cdir = torch.cat([self.c_edge, self.c_edge])
        self._ratio = (cdir / self.c_hat[graph.dsrc])[:, None, None]  # [2E, 1, 1]
        self._cT = (cdir * T)[:, None, None]  # [2E, 1, 1]
        E2, N, B, L = 2 * graph.E, graph.N, self.B, self.L
        self.messages = torch.zeros(E2, B, L, dtype=dtype, device=dev)
        self.incoming = torch.zeros(N, B, L, dtype=dtype, device=dev)
        self.unary_pot = torch.zeros(N, B, L, dtype=dtype, device=dev)
        self.pair_pot = torch.zeros(graph.E, B, L, L, dtype=dtype, device=dev)
        self._dir_pot = None
        self._dir_potT = None
        self._kernel = None
        self._csr = None
        self.iterations = 0
        if mrf is not None:
            un = mrf.unary if mrf.batched else mrf.unary[None]
            self.set_potentials(un, _dense_pairwise(mrf).expand(self.B, -1, -1, -1))

    # ------------------------------------------------------------------ potentials
    def set_potentials(self, unary: torch.Tensor, pairwise: torch.Tensor) -> None:
        """Replace all potentials: ``unary [B, N, L]``, ``pairwise [B, E, L, L]``. Messages are kept."""
        s = {"B": self.B, "N": self.graph.N, "L": self.L, "E": self.graph.E}
        check_tensor(unary, "unary", "B N L", s, floating=True)
        check_tensor(pairwise, "pairwise", "B E L L", s, floating=True)
        self.unary_pot = unary.detach().to(self.dtype).transpose(0, 1).contiguous()
        self.pair_pot = pairwise.detach().to(self.dtype).transpose(0, 1).contiguous()
        self._dir_pot = None
        self._dir_potT = None
        self._kernel = None

    def update_potentials(self, nodes=None, unary_rows=None, edges=None, pair_rows=None) -> None:
        """Overwrite some potentials: unary of ``nodes`` with ``unary_rows [B, n, L]`` and pairwise of
        ``edges`` with ``pair_rows [B, e, L, L]`` (work proportional to the rows)."""
        if nodes is not None:
            self.unary_pot[nodes] = unary_rows.detach().to(self.dtype).transpose(0, 1)
        if edges is not None:
            p = pair_rows.detach().to(self.dtype).transpose(0, 1)
            self.pair_pot[edges] = p
            if self._dir_pot is not None:
                E = self.graph.E
                self._dir_pot[edges] = p
                self._dir_pot[edges + E] = p.transpose(-1, -2)
            self._dir_potT = None
            self._kernel = None

    def _directed(self) -> torch.Tensor:
        """``[2E, B, L, L]``: table of each directed edge as ``[x_src, x_dst]``."""
        if self._dir_pot is None:
            self._dir_pot = torch.cat([self.pair_pot, self.pair_pot.transpose(-1, -2)], dim=0)
        return self._dir_pot

    def _directed_label_major(self) -> torch.Tensor:
        """``[L_src, 2E, B, L_dst]``: the directed tables, source label first (cached)."""
        if self._dir_potT is None:
            self._dir_potT = self._directed().movedim(-2, 0).contiguous()
        return self._dir_potT

    def _kernel_of(self, potT: torch.Tensor, din) -> torch.Tensor | bool:
        """``exp(θ_d / (T c_d) − max)`` for label-major tables ``potT [L, D, B, L]`` of directed
        edges ``din`` when their range fits the dtype, else ``False``."""
        x = potT / self._cT[din]
        if x.numel() == 0:
            return False
        lo = x.amin((0, -1), keepdim=True)
        hi = x.amax((0, -1), keepdim=True)
        limit = 60.0 if self.dtype in (torch.float32, torch.float16, torch.bfloat16) else 600.0
        if float((hi - lo).max()) >= limit:
            return False
        return torch.exp(x - hi)

    def _prob_kernel(self):
        """The kernel of every directed edge (cached until the potentials change)."""
        if self._kernel is None:
            self._kernel = self._kernel_of(self._directed_label_major(), slice(None))
        return self._kernel

    # ------------------------------------------------------------------ updates
    def _messages_for(self, din, src, rev, potT, kernelT=None) -> torch.Tensor:
        """New (normalised) messages ``[D, B, L]`` on directed edges ``din``, from label-major
        tables ``potT [L_src, D, B, L_dst]`` (and their kernel). The reduction over the source
        label is a loop over its ``L`` values on ``[D, B, L]`` slices: no ``[D, B, L, L]``
        temporary (about 3x faster on the CPU than a broadcast reduction)."""
        S = self.unary_pot[src] + self.incoming[src]  # [D, B, L]
        lam = self._ratio[din] * S - self.messages[rev]
        L = self.L
        if self.T > 0:
            cT = self._cT[din]  # [D, 1, 1]
            if kernelT is not None and kernelT is not False:
                z = lam / cT
                vT = torch.exp(z - z.amax(-1, keepdim=True)).movedim(-1, 0)[
                    ..., None
                ]  # [L, D, B, 1]
                acc = kernelT[0] * vT[0]
                for a in range(1, L):
                    acc.addcmul_(kernelT[a], vT[a])
                new = cT * torch.log(acc)
                new = new - new.amax(-1, keepdim=True)
                if bool(torch.isfinite(new).all()):
                    return new
            x = (potT + lam.movedim(-1, 0)[..., None]) / cT
            new = cT * torch.logsumexp(x, dim=0)
        else:
            lamT = lam.movedim(-1, 0)[..., None]  # [L, D, B, 1]
            new = potT[0] + lamT[0]
            for a in range(1, L):
                torch.maximum(new, potT[a] + lamT[a], out=new)
        return new - new.amax(dim=-1, keepdim=True)

    def _incoming_matrix(self):
        if self._csr is None:
            g = self.graph
            import warnings

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "sparse CSR support is in beta"
                idx = torch.stack([g.ddst, torch.arange(2 * g.E, device=g.device)])
                vals = torch.ones(2 * g.E, dtype=self.dtype, device=g.device)
                self._csr = (
                    torch.sparse_coo_tensor(idx, vals, (g.N, 2 * g.E)).coalesce().to_sparse_csr()
                )
        return self._csr

    def recompute_incoming(self) -> None:
        """Recompute ``incoming`` from the messages (one sparse product; removes rounding drift)."""
        g = self.graph
        if g.E == 0:
            self.incoming = torch.zeros_like(self.incoming)
            return
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            inc = self._incoming_matrix() @ self.messages.reshape(2 * g.E, self.B * self.L)
        self.incoming = inc.reshape(g.N, self.B, self.L)

    def sweep(self) -> float:
        """One parallel update of every message. Returns the largest change of a message."""
        g = self.graph
        if g.E == 0:
            return 0.0
        potT = self._directed_label_major()
        kernel = self._prob_kernel() if self.T > 0 else None
        new = self._messages_for(slice(None), g.dsrc, g.rev, potT, kernel)
        if self.damping:
            new = (1 - self.damping) * new + self.damping * self.messages
        res = float((new - self.messages).abs().max())
        self.messages = new
        self.recompute_incoming()
        self.iterations += 1
        return res

    def run(self, tol: float = 1e-6, max_iters: int = 1000) -> tuple[bool, int, float]:
        """Parallel sweeps until the largest message change is ``< tol`` or ``max_iters`` sweeps.

        Returns ``(converged, iterations, max_residual)``.
        """
        res = float("inf")
        watch = _Stall()
        for it in range(1, max_iters + 1):
            res = self.sweep()
            if res < tol:
                return True, it, res
            self._adapt(watch, res)
        return self.graph.E == 0, max_iters, res

    def _adapt(self, watch, res: float) -> None:
        """Raise the damping when the residual stalls (TRW with small edge counting numbers and
        hubs oscillates undamped; damping moves no fixed point)."""
        if self.adaptive_damping and watch.stalled(res) and self.damping < 0.95:
            self.damping = min(0.95, 0.5 * (1.0 + self.damping))

    def block_sweep(self, block: Block, potT: torch.Tensor | None = None, kernel=None) -> float:
        """One update of the messages into ``block`` (all at once), the others held.
        ``potT``: the block's label-major tables (computed when not given)."""
        if block.din.numel() == 0:
            return 0.0
        if potT is None:
            potT = self._directed()[block.din].movedim(-2, 0).contiguous()
        new = self._messages_for(block.din, block.src, block.rev, potT, kernel)
        old = self.messages[block.din]
        if self.damping:
            new = (1 - self.damping) * new + self.damping * old
        delta = new - old
        self.messages[block.din] = new
        self.incoming.index_add_(0, block.dst, delta)
        return float(delta.abs().max())

    def run_block(
        self, block: Block, tol: float = 1e-6, max_iters: int = 1000
    ) -> tuple[bool, int, float]:
        """Block sweeps until converged: returns ``(converged, iterations, max_residual)``.

        Work per sweep is proportional to the edges into the block, not to the graph.
        """
        if block.din.numel() == 0:
            return True, 0, 0.0
        potT = self._directed()[block.din].movedim(-2, 0).contiguous()
        kernel = self._kernel_of(potT, block.din) if self.T > 0 else None
        res = float("inf")
        watch = _Stall()
        for it in range(1, max_iters + 1):
            res = self.block_sweep(block, potT, kernel)
            if res < tol:
                return True, it, res
            self._adapt(watch, res)
        return False, max_iters, res

    # ------------------------------------------------------------------ beliefs
    def _lambda(self, d: torch.Tensor) -> torch.Tensor:
        src = self.graph.dsrc[d]
        S = self.unary_pot[src] + self.incoming[src]
        return self._ratio[d] * S - self.messages[self.graph.rev[d]]

    def log_unary_beliefs(self, nodes=None) -> torch.Tensor:
        """``[B, n, L]`` log unary beliefs (``T > 0``) or max-marginals ``S_i / ĉ_i`` shifted to max 0 (``T = 0``)."""
        if nodes is None:
            S, ch = self.unary_pot + self.incoming, self.c_hat
        else:
            S, ch = self.unary_pot[nodes] + self.incoming[nodes], self.c_hat[nodes]
        x = (S / ch[:, None, None]).transpose(0, 1)
        if self.T > 0:
            return torch.log_softmax(x / self.T, dim=-1)
        return x - x.amax(-1, keepdim=True)

    def log_pairwise_beliefs(self, edges=None) -> torch.Tensor:
        """``[B, e, L, L]`` log pairwise beliefs (``T > 0``) or max-marginals shifted to max 0 (``T = 0``)."""
        E = self.graph.E
        if edges is None:
            edges = torch.arange(E, device=self.graph.device)
        lam_s = self._lambda(edges)  # from edges[:, 0]
        lam_t = self._lambda(edges + E)
        c = self.c_edge[edges][:, None, None, None]
        x = ((self.pair_pot[edges] + lam_s[..., :, None] + lam_t[..., None, :]) / c).transpose(0, 1)
        B, e, L = x.shape[0], x.shape[1], self.L
        if self.T > 0:
            return torch.log_softmax(x.reshape(B, e, L * L) / self.T, -1).reshape(B, e, L, L)
        return x - x.reshape(B, e, L * L).amax(-1)[..., None, None]

    def beliefs(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unary [B, N, L], pairwise [B, E, L, L])`` beliefs (``T > 0``).

        At ``T = 0`` the unary entry is one-hot at the best label (ties share) and the pairwise
        entry the outer product of the endpoints'."""
        lu = self.log_unary_beliefs()
        if self.T > 0:
            return lu.exp(), self.log_pairwise_beliefs().exp()
        top = (lu == 0).to(lu.dtype)
        u = top / top.sum(-1, keepdim=True)
        e = self.graph.edges
        return u, u[:, e[:, 0], :, None] * u[:, e[:, 1], None, :]

    def block_beliefs(self, block: Block) -> tuple[torch.Tensor, torch.Tensor]:
        """``(unary [B, n_b, L], pairwise [B, E_b, L, L])`` beliefs of ``block.nodes`` and ``block.edges``."""
        return self.log_unary_beliefs(block.nodes).exp(), self.log_pairwise_beliefs(
            block.edges
        ).exp()

    def free_energy(self) -> torch.Tensor:
        """``[B]`` the variational objective at the current beliefs:
        ``⟨θ, b⟩ + T (Σ_i c_i H(b_i) + Σ_ij c_ij H(b_ij))``; at a fixed point the approximation
        of ``A(θ)`` (an upper bound on ``log Z`` with TRW counting numbers, exact on a forest with
        Bethe's).  At ``T = 0``: the score of :meth:`decode`'s labelling."""
        if self.T == 0:
            return self.score(self.decode())
        lu = self.log_unary_beliefs()
        lp = self.log_pairwise_beliefs()
        bu, bp = lu.exp(), lp.exp()
        energy = (bu * self.unary_pot.transpose(0, 1)).sum((-1, -2)) + (
            bp * self.pair_pot.transpose(0, 1)
        ).sum((-1, -2, -3))
        hu = -(bu * lu).sum(-1)  # [B, N]
        hp = -(bp * lp).sum((-1, -2))  # [B, E]
        ent = (hu * self.c_node).sum(-1) + (hp * self.c_edge).sum(-1)
        return energy + self.T * ent

    def decode(self) -> torch.Tensor:
        """``[B, N]`` the best label of each node under its unary belief / max-marginal."""
        return self.log_unary_beliefs().argmax(-1)

    def score(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B]`` score of ``labels [B, N]`` under the current potentials."""
        e = self.graph.edges
        up = self.unary_pot.transpose(0, 1)
        un = up.gather(-1, labels[..., None]).squeeze(-1).sum(-1)
        L = self.L
        flat = self.pair_pot.transpose(0, 1).reshape(self.B, self.graph.E, L * L)
        pw = (
            flat.gather(-1, (labels[:, e[:, 0]] * L + labels[:, e[:, 1]])[..., None])
            .squeeze(-1)
            .sum(-1)
        )
        return un + pw


# ----------------------------------------------------------------------------- front door


@dataclass
class BPResult:
    """Result of :func:`marginals`.

    Attributes:
        unary: ``[N, L]`` (``[B, N, L]`` for a batched model) beliefs, rows sum to 1 (at
            temperature 0: one-hot at the best label).
        pairwise: ``[E, L, L]`` (``[B, E, L, L]``) pairwise beliefs.
        log_partition: ``[]`` (``[B]``) the variational value (see :meth:`ConvexBP.free_energy`).
        converged: whether the largest message change fell below ``tol``.
        iterations: sweeps run.
        max_residual: the largest message change of the last sweep.
        c_node, c_edge: ``[N]``, ``[E]`` the counting numbers used (``None`` for ``"exact"``).
        labels: ``[N]`` (``[B, N]``) the best label of each node's belief / max-marginal.
        max_marginals: at temperature 0, ``[N, L]`` max-marginals shifted to max 0; else ``None``.
    """

    unary: torch.Tensor
    pairwise: torch.Tensor
    log_partition: torch.Tensor
    converged: bool
    iterations: int
    max_residual: float
    c_node: torch.Tensor | None = None
    c_edge: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    max_marginals: torch.Tensor | None = None


def _as_graph_mrf(mrf):
    from ..models.grid import GridCRF

    if isinstance(mrf, GridCRF):
        return mrf.to_graph_mrf()
    if not isinstance(mrf, GraphMRF):
        raise CRFTypeError(f"expected a crfkit.GraphMRF (or GridCRF), got {type(mrf).__name__}")
    return mrf


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
    """Beliefs and the variational log-partition of a pairwise model by convex BP.

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
        :class:`BPResult`.
    """
    mrf = _as_graph_mrf(mrf)
    if method not in METHODS:
        raise CRFValueError(f"expected method in {METHODS}, got {method!r}")
    if method == "exact":
        from .exact import (
            MAX_LABELLINGS,
            enumerate_mrf,
            is_forest,
            tree_max_product,
            tree_sum_product,
        )

        if float(temperature) not in (0.0, 1.0):
            raise CRFValueError(
                f"expected temperature 0 or 1 with method='exact', got {temperature!r}"
            )
        if mrf.num_labels**mrf.num_nodes <= MAX_LABELLINGS:
            r = enumerate_mrf(mrf)
            if temperature == 0:
                L = mrf.num_labels
                top = torch.nn.functional.one_hot(r.labels, L).to(mrf.unary.dtype)
                e = mrf.edges
                pw = top[..., e[:, 0], :, None] * top[..., e[:, 1], None, :]
                return BPResult(top, pw, r.max_score, True, 0, 0.0, labels=r.labels)
            return BPResult(
                r.unary, r.pairwise, r.log_partition, True, 0, 0.0, labels=r.unary.argmax(-1)
            )
        if is_forest(mrf):
            if temperature == 0:
                r = tree_max_product(mrf)
                mm = r.unary - r.unary.amax(-1, keepdim=True)
                L = mrf.num_labels
                top = torch.nn.functional.one_hot(r.labels, L).to(mrf.unary.dtype)
                e = mrf.edges
                pw = top[..., e[:, 0], :, None] * top[..., e[:, 1], None, :]
                return BPResult(
                    top, pw, r.max_score, True, 0, 0.0, labels=r.labels, max_marginals=mm
                )
            r = tree_sum_product(mrf)
            return BPResult(
                r.unary, r.pairwise, r.log_partition, True, 0, 0.0, labels=r.unary.argmax(-1)
            )
        raise CRFValueError(
            f"expected a model small enough to enumerate (L**N <= {MAX_LABELLINGS}) or a forest for "
            f"method='exact', got L={mrf.num_labels}, N={mrf.num_nodes} on a graph with cycles"
        )
    if counting is not None and method != "convex":
        raise CRFValueError(
            f"expected counting only with method='convex', got counting with method={method!r}"
        )
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
        if blocks is None:
            blocks = torch.arange(mrf.num_nodes).chunk(min(8, mrf.num_nodes))
        blks = [graph.block(torch.as_tensor(b)) for b in blocks]
        covered = torch.zeros(mrf.num_nodes, dtype=torch.bool)
        for b in blks:
            covered[b.nodes.cpu()] = True
        if not bool(covered.all()):
            raise CRFValueError(
                f"expected blocks covering all N={mrf.num_nodes} nodes, got {int(covered.sum())} covered"
            )
        converged, iters, res = False, 0, float("inf")
        for it in range(1, max_iters + 1):
            before = bp.messages.clone()
            for b in blks:
                bp.run_block(b, tol=tol * 0.1, max_iters=max_iters)
            bp.recompute_incoming()
            res = float((bp.messages - before).abs().max()) if bp.messages.numel() else 0.0
            iters = it
            if res < tol:
                converged = True
                break
    bu, bpw = bp.beliefs()
    value = bp.free_energy()
    labels = bp.decode()
    mm = bp.log_unary_beliefs() if bp.T == 0 else None
    if not mrf.batched:
        bu, bpw, value, labels = bu[0], bpw[0], value[0], labels[0]
        mm = None if mm is None else mm[0]
    return BPResult(bu, bpw, value, bool(converged), int(iters), float(res), cn, ce, labels, mm)
