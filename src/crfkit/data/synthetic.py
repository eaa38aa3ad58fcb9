"""Synthetic learning data as in the BBPL paper: grid and Barabási–Albert networks with random
Gaussian features and weights, labellings drawn by a vectorised Gibbs sampler.

* :func:`grid_edges` (4-connected ``H × W``, nodes ``y * W + x``), :func:`ba_edges` (networkx;
  nodes in generation order).
* :func:`random_instance` — features ``N(0, 1)`` (``F_u = 20``, ``F_p = 10``), true weights
  ``N(0, scale² / F)`` so that potentials have standard deviation about ``scale``; samples by
  Gibbs sampling; returns the :class:`crfkit.LearningInstance` and the true
  :class:`crfkit.learning.FeatureCRF`.
* :func:`gibbs_sample` — chains run in parallel; nodes of one colour class (checkerboard on
  grids, a greedy colouring in general) are resampled at once: gathers and one ``index_add`` per
  class, no Python loop over nodes.
"""

from __future__ import annotations

import numpy as np
import torch

from .._validation import CRFTypeError, CRFValueError
from ..learning.models import FeatureCRF, LearningInstance
from ..models.graph import GraphMRF

__all__ = [
    "grid_edges",
    "ba_edges",
    "greedy_colouring",
    "gibbs_sample",
    "random_instance",
    "random_feature_crf",
    "synthetic_problem",
    "synthetic_instances",
]


def grid_edges(height: int, width: int) -> torch.Tensor:
    """4-connected grid edges ``[E, 2]`` (horizontal then vertical), nodes ``y * W + x``."""
    if height < 1 or width < 1:
        raise CRFValueError(f"expected a grid of at least 1 x 1, got {height} x {width}")
    idx = torch.arange(height * width).view(height, width)
    h = torch.stack([idx[:, :-1].flatten(), idx[:, 1:].flatten()], 1)
    v = torch.stack([idx[:-1, :].flatten(), idx[1:, :].flatten()], 1)
    return torch.cat([h, v])


def ba_edges(num_nodes: int, m: int = 2, seed: int = 0) -> torch.Tensor:
    """Barabási–Albert graph edges ``[E, 2]`` (networkx; nodes in the order they were added)."""
    try:
        import networkx as nx
    except ImportError:  # pragma: no cover
        raise ImportError(
            "Barabási–Albert graphs need networkx: pip install 'crfkit[graphs]'"
        ) from None
    if num_nodes <= m:
        raise CRFValueError(f"expected num_nodes > m = {m}, got {num_nodes}")
    g = nx.barabasi_albert_graph(num_nodes, m, seed=seed)
    return torch.tensor(sorted((min(a, b), max(a, b)) for a, b in g.edges()), dtype=torch.long)


def greedy_colouring(edges: torch.Tensor, num_nodes: int) -> torch.Tensor:
    """``[N]`` colours such that no edge joins two nodes of one colour (greedy, in node order;
    on a row-major grid this is the checkerboard)."""
    e = edges.cpu().numpy()
    adj = [[] for _ in range(num_nodes)]
    for a, b in e.tolist():
        adj[a].append(b)
        adj[b].append(a)
    colour = np.full(num_nodes, -1, dtype=np.int64)
    for i in range(num_nodes):
        used = {colour[j] for j in adj[i] if colour[j] >= 0}
        c = 0
        while c in used:
            c += 1
        colour[i] = c
    return torch.as_tensor(colour)


def gibbs_sample(
    mrf: GraphMRF,
    num_samples: int = 20,
    *,
    burn_in: int = 200,
    thin: int = 10,
    chains: int | None = None,
    seed: int = 0,
    init: torch.Tensor | None = None,
) -> torch.Tensor:
    """Draw labellings of ``mrf`` (``p(x) ∝ exp(score(x))``) by Gibbs sampling.

    ``chains`` chains (default ``num_samples``) run in parallel from uniform random labels (or
    ``init [chains, N]``); after ``burn_in`` sweeps each gives one sample every ``thin`` sweeps
    until ``num_samples`` are drawn.  A sweep resamples each colour class at once.

    Args:
        mrf: an unbatched :class:`crfkit.GraphMRF`.

    Returns:
        ``[num_samples, N]`` long (chain-major: the first ``chains`` rows come from different chains).
    """
    if not isinstance(mrf, GraphMRF):
        raise CRFTypeError(f"expected a crfkit.GraphMRF, got {type(mrf).__name__}")
    if mrf.batched:
        raise CRFValueError(f"expected an unbatched GraphMRF, got a batch of {mrf.batch_size}")
    if num_samples < 1 or burn_in < 0 or thin < 1:
        raise CRFValueError(
            f"expected num_samples >= 1, burn_in >= 0, thin >= 1; got {num_samples}, {burn_in}, {thin}"
        )
    C = int(chains or num_samples)
    N, L = mrf.num_nodes, mrf.num_labels
    gen = torch.Generator().manual_seed(int(seed))
    un = mrf.unary.detach().double().cpu()
    pw = mrf.edge_tables().detach().double().cpu()
    classes = _colour_classes(mrf.edges.cpu(), pw, N)
    if init is None:
        x = torch.randint(0, L, (C, N), generator=gen)
    else:
        if not (isinstance(init, torch.Tensor) and init.shape == (C, N)):
            raise CRFValueError(
                f"expected init of shape [{C}, {N}], got {getattr(init, 'shape', type(init).__name__)}"
            )
        x = init.clone().long()

    for _ in range(burn_in):
        _gibbs_sweep(x, un, classes, gen)
    out = []
    got = 0
    while got < num_samples:
        out.append(x.clone())
        got += C
        if got < num_samples:
            for _ in range(thin):
                _gibbs_sweep(x, un, classes, gen)
    return torch.cat(out)[:num_samples]


def _colour_classes(edges: torch.Tensor, pw: torch.Tensor, N: int) -> list:
    """Per colour class of :func:`greedy_colouring`: its ``nodes``, the directed edges ``d`` into
    them, their sources, the target's position in ``nodes`` and their tables ``[x_src, x_dst]``
    (``pw [E, L, L]`` and its transpose for the reversed direction)."""
    dsrc = torch.cat([edges[:, 0], edges[:, 1]])
    ddst = torch.cat([edges[:, 1], edges[:, 0]])
    dtab = torch.cat([pw, pw.transpose(-1, -2)])  # [2E, L, L]
    colour = greedy_colouring(edges, N)
    classes = []
    for c in range(int(colour.max()) + 1 if N else 0):
        nodes = torch.nonzero(colour == c).flatten()
        pos = torch.full((N,), -1, dtype=torch.long)
        pos[nodes] = torch.arange(nodes.numel())
        d = torch.nonzero(colour[ddst] == c).flatten()
        classes.append((nodes, d, dsrc[d], pos[ddst[d]], dtab[d]))
    return classes


def _gibbs_sweep(x: torch.Tensor, un: torch.Tensor, classes: list, gen: torch.Generator) -> None:
    """One Gibbs sweep of every chain, in place on ``x [C, N]``: each colour class resampled at once
    from its conditional (Gumbel-max on ``unary + Σ pairwise`` given the neighbours' labels)."""
    C, L = x.shape[0], un.shape[1]
    for nodes, d, src, dpos, tab in classes:
        logits = un[nodes].expand(C, -1, -1).clone()  # [C, n, L]
        if d.numel():
            contrib = (
                tab[None]
                .expand(C, -1, -1, -1)
                .gather(2, x[:, src][:, :, None, None].expand(C, d.numel(), 1, L))
                .squeeze(2)
            )  # [C, D, L]
            logits.index_add_(1, dpos, contrib)
        u = torch.rand(logits.shape, generator=gen, dtype=logits.dtype).clamp_min(1e-300)
        x[:, nodes] = (logits - torch.log(-torch.log(u))).argmax(-1)


def random_feature_crf(
    num_labels=8, unary_dim=20, pairwise_dim=10, scale=1.0, seed=0, dtype=torch.float64
):
    """A :class:`crfkit.learning.FeatureCRF` with weights ``N(0, scale² / F)``."""
    gen = torch.Generator().manual_seed(int(seed))
    wu = torch.randn(unary_dim, num_labels, generator=gen, dtype=dtype) * (
        scale / max(1, unary_dim) ** 0.5
    )
    wp = torch.randn(pairwise_dim, num_labels, num_labels, generator=gen, dtype=dtype) * (
        scale / max(1, pairwise_dim) ** 0.5
    )
    return FeatureCRF(num_labels, unary_dim, pairwise_dim, wu, wp)


def random_instance(
    edges: torch.Tensor,
    num_nodes: int,
    *,
    num_labels: int = 8,
    unary_dim: int = 20,
    pairwise_dim: int = 10,
    num_samples: int = 20,
    unary_scale: float = 1.0,
    pairwise_scale: float = 1.0,
    model=None,
    grid_shape=None,
    seed: int = 0,
    burn_in: int = 200,
    thin: int = 10,
):
    """The paper's synthetic setting on one graph.

    Features ``N(0, 1)``: unary ``[N, F_u]``, pairwise ``[E, F_p]``; true weights (unless
    ``model`` is given) with potentials of standard deviation about ``unary_scale`` /
    ``pairwise_scale``; ``num_samples`` labellings by :func:`gibbs_sample`.

    Returns:
        ``(instance, true_model)``: a :class:`crfkit.LearningInstance` (labels ``[M, N]``) and
        the :class:`crfkit.learning.FeatureCRF` that generated it.
    """
    gen = torch.Generator().manual_seed(int(seed) + 1)
    fu = torch.randn(num_nodes, unary_dim, generator=gen, dtype=torch.float64)
    fp = torch.randn(edges.shape[0], pairwise_dim, generator=gen, dtype=torch.float64)
    if model is None:
        m = random_feature_crf(num_labels, unary_dim, pairwise_dim, 1.0, seed=seed)
        model = FeatureCRF(
            num_labels,
            unary_dim,
            pairwise_dim,
            m.unary_weights * unary_scale,
            m.pairwise_weights * pairwise_scale,
        )
    inst = LearningInstance(
        edges.long(), fu, fp, torch.zeros(1, num_nodes, dtype=torch.long), grid_shape=grid_shape
    )
    mrf = model.to_graph_mrf(inst)
    inst.labels = gibbs_sample(mrf, num_samples, burn_in=burn_in, thin=thin, seed=seed + 2)
    return inst, model


def synthetic_problem(
    graph: str,
    size: int,
    *,
    seed: int = 0,
    num_samples: int = 20,
    num_labels: int = 8,
    unary_dim: int = 20,
    pairwise_dim: int = 10,
    burn_in: int = 100,
    thin: int = 5,
):
    """``(instance, true_model)`` of the BBPL paper's synthetic setting: a grid (``"grid"``, side
    ``size``) or Barabási–Albert (``"ba"``, ``size`` nodes) network, 8 states, features ``N(0, 1)``
    of dimension 20 / 10, random true weights, 20 Gibbs samples."""
    if graph == "grid":
        edges, n, shape = grid_edges(size, size), size * size, (size, size)
    elif graph == "ba":
        edges, n, shape = ba_edges(size, 2, seed=seed), size, None
    else:
        raise ValueError(f"expected graph 'grid' or 'ba', got {graph!r}")
    return random_instance(
        edges,
        n,
        num_labels=num_labels,
        unary_dim=unary_dim,
        pairwise_dim=pairwise_dim,
        num_samples=num_samples,
        grid_shape=shape,
        seed=seed,
        burn_in=burn_in,
        thin=thin,
    )


def synthetic_instances(
    count: int,
    graph: str,
    size: int,
    *,
    num_labels: int,
    unary_dim: int,
    pairwise_dim: int,
    num_samples: int,
    seed: int,
):
    """``(instances, true_model)``: ``count`` synthetic instances from one true model (distinct features
    and samples; ``graph`` is ``"grid"`` (side ``size``) or ``"ba"`` (``size`` nodes))."""
    true = random_feature_crf(num_labels, unary_dim, pairwise_dim, 1.0, seed=seed)
    out = []
    for k in range(count):
        if graph == "grid":
            edges, n, shape = grid_edges(size, size), size * size, (size, size)
        else:
            edges, n, shape = ba_edges(size, 2, seed=seed + k), size, None
        inst, _ = random_instance(
            edges,
            n,
            num_labels=num_labels,
            unary_dim=unary_dim,
            pairwise_dim=pairwise_dim,
            num_samples=num_samples,
            model=true,
            grid_shape=shape,
            seed=seed + 17 * k,
            burn_in=50,
            thin=2,
        )
        out.append(inst)
    return out, true
