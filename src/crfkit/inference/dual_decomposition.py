"""MAP inference by dual decomposition into chains (paper: Alg. 1, Eq. (19)/(42)).

The model's node scores are split over the chains that contain each node,
``ψ_i^t = unary_i / |T(i)| + λ_i^t`` with ``Σ_t λ_i^t = 0`` (Eq. 9/13), and the dual

    D_γ(λ) = Σ_t smax_γ over labellings of chain t of its score

is minimised by the parallel fixed-point iteration (Eq. 19 for γ = 0, Eq. 42 for γ > 0)

    λ_i^t  ←  λ_i^t − α (μ_i^t − mean_{t' ∋ i} μ_i^{t'})

where ``μ_i^t`` are the chain's (smoothed) max-marginals.  ``D_0(λ) ≥ LP optimum ≥ max score``
for every λ, so every evaluated ``D_0`` is a certificate; ``D_γ ≥ D_0`` is one too.

Three ways to run it (``solve_map``):

- ``gamma=0.0, step="paper"``: Alg. 1 exactly, step ``1 / max_t |V^t|`` (monotone, but tiny on
  large grids, and the max iteration can stall above the LP optimum);
- ``gamma > 0``: fixed smoothing;
- ``gamma=None`` (default): a continuation in γ (geometric stages, each warm-started) with an
  adaptive step that grows while the stage's objective falls and is undone when it would rise;
  the certificate is the lowest ``D_0`` seen.

Numerics: the multipliers are kept exactly summing to zero over the chains of each node and
free of per-slot constants (the directions that change nothing), by projection after every
update; certificates are summed in float64.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .._validation import CRFTypeError, CRFValueError
from ..decomposition.chains import ChainProblem
from ..ops.chain import chain_marginals, chain_values
from .decoding import ProblemEdges, chain_icm, decode_argmax, problem_score
from .solver_options import STEP_RULES, SolverOptions
from .threads import with_solver_threads

__all__ = [
    "MAPResult",
    "ChainSolution",
    "SolverOptions",
    "solve_map",
    "solve_chain_problem",
    "DualDecomposition",
    "STEP_RULES",
]



@dataclass
class MAPResult:
    """Result of :func:`solve_map`. Shapes: ``B`` batch; labels shaped like the model's nodes.

    Attributes:
        labels: the best labelling found (``[B, H, W]`` for a grid; ``[N]`` or ``[B, N]`` for a graph).
        primal: ``[B]`` its score (``== model.score(labels)``).
        dual: ``[B]`` the certificate: the lowest max-dual ``D_0`` evaluated, so
            ``primal <= max score <= LP optimum <= dual``.
        gap: ``[B]`` ``dual - primal`` (``>= 0``; ``0`` proves the labelling optimal).
        dual_history: ``[iters + 1, B]`` the objective the iteration minimises (``D_γ`` at the
            stage's γ; ``D_0`` when γ = 0), at the accepted iterate after each iteration.
        gamma_history: ``[iters + 1]`` the γ of each row of ``dual_history``.
        marginals: summed (smoothed) max-marginals ``Σ_t μ_i^t`` at the last iterate,
            ``[B, L, H, W]`` for a grid, ``[N, L]`` / ``[B, N, L]`` for a graph.
        iterations: number of iterations run; seconds: wall time.
    """

    labels: torch.Tensor
    primal: torch.Tensor
    dual: torch.Tensor
    gap: torch.Tensor
    dual_history: torch.Tensor
    marginals: torch.Tensor
    gamma_history: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    iterations: int = 0
    seconds: float = 0.0
    info: dict = field(default_factory=dict)

    def __repr__(self):
        def f(t):
            return "[" + ", ".join(f"{v:.6g}" for v in t.tolist()) + "]"

        return (
            f"MAPResult(primal={f(self.primal)}, dual={f(self.dual)}, gap={f(self.gap)}, "
            f"iterations={self.iterations}, seconds={self.seconds:.3g})"
        )


class DualDecomposition:
    """The fixed-point iteration on a :class:`ChainProblem`: slots, multipliers, evaluations.

    A *slot* is one (chain, position); ``S`` slots in all.  ``psi(λ) [S, L]`` are the chains'
    node scores.  Differentiable when the problem's tensors require grad (used by the layer).
    """

    def __init__(self, problem: ChainProblem, implementation: str | None = None, *, validate_args: bool = True):
        self.problem = problem
        self.implementation = implementation
        self.validate_args = bool(validate_args)
        unary = problem.unary
        V, L = unary.shape
        self.V, self.L = V, L
        device = unary.device
        slot_nodes, self.group_index, self.chain_batch = [], [], []
        offset = 0
        for g in problem.groups:
            valid = g.nodes >= 0
            flat = valid.reshape(-1).nonzero().squeeze(1)
            self.group_index.append((offset, flat.numel(), flat, valid))
            slot_nodes.append(g.nodes[valid])
            self.chain_batch.append(problem.node_batch[g.nodes[:, 0].clamp(min=0)])
            offset += flat.numel()
        self.S = offset
        self.slot_node = torch.cat(slot_nodes) if slot_nodes else torch.zeros(0, dtype=torch.long, device=device)
        self.slot_batch = problem.node_batch[self.slot_node]
        count = torch.zeros(V, dtype=unary.dtype, device=device).index_add_(
            0, self.slot_node, torch.ones(self.S, dtype=unary.dtype, device=device)
        )
        if self.validate_args and bool((count == 0).any()):
            raise CRFValueError(
                f"expected every node in at least one chain, got {int((count == 0).sum())} nodes in none"
            )
        self.count = count
        self._sum = _NodeSum(self.slot_node, V) if device.type == "cpu" else None
        self._center = _compiled_center(self.slot_node, V, count, implementation)
        self._psi_buf = self._dir_buf = None
        # per group: the slot of each padded position (``0`` on padding: its value is ignored by the
        # kernels), and whether the group has no padding (its slots are then a view)
        self._gather = [(flat.numel() == valid.numel(), valid.reshape(-1).long().cumsum(0).sub_(1).clamp_(min=0))
                        for (_, _, flat, valid) in self.group_index]
        if self.validate_args:
            self.max_chain_length = max((int(g.lengths.max()) for g in problem.groups if g.lengths.numel()), default=1)
        else:  # no host read: the padded length (equal to the longest chain for the decompositions)
            self.max_chain_length = max((g.max_length for g in problem.groups if g.lengths.numel()), default=1)
        self.base = unary[self.slot_node] / count[self.slot_node, None]

    # -- multipliers ---------------------------------------------------------------------
    def node_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the slots of each node: ``[S, L] -> [V, L]``."""
        if self._sum is not None:
            return self._sum(x)
        return x.new_zeros(self.V, x.shape[1]).index_add(0, self.slot_node, x)

    def node_center(self, x: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
        """``x - node_mean(x)`` (``overwrite``: into ``x``, a temporary; only without autograd);
        compiled in one pass when the chain kernels run on numba (same values bit for bit)."""
        if self._center is not None and _inplace():
            module, order = self._center
            return module.node_center(x, order, out=x if overwrite else None)
        if overwrite and _inplace():
            return x.sub_(self.node_mean(x))
        return x - self.node_mean(x)

    def node_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Mean over the slots of each node, broadcast back to slots: ``[S, L] -> [S, L]``."""
        if _inplace():
            return self.node_sum(x).div_(self.count[:, None]).index_select(0, self.slot_node)
        return (self.node_sum(x) / self.count[:, None]).index_select(0, self.slot_node)

    def project(self, lam: torch.Tensor, *, overwrite: bool = False) -> torch.Tensor:
        """Remove the directions that change nothing: zero sum over each node's slots, zero mean over labels.
        ``overwrite``: ``lam`` may be modified in place (a temporary; only without autograd)."""
        lam = self.node_center(lam, overwrite=overwrite)
        if overwrite and _inplace():
            return lam.sub_(lam.mean(dim=1, keepdim=True))
        return lam - lam.mean(dim=1, keepdim=True)

    def psi(self, lam: torch.Tensor) -> torch.Tensor:
        return self.base + lam

    def _psi_scratch(self, lam: torch.Tensor) -> torch.Tensor:
        """:meth:`psi` for one evaluation: without autograd on the CPU, into one array reused by
        every call (a fresh ``[S, L]`` array costs several in-place passes here); the chain kernels
        only read it and return new arrays."""
        if not (_inplace() and lam.device.type == "cpu"):
            return self.psi(lam)
        buf = self._psi_buf
        if buf is None or buf.shape != lam.shape or buf.dtype != lam.dtype:
            buf = self._psi_buf = torch.empty_like(lam, memory_format=torch.contiguous_format)
        return torch.add(self.base, lam, out=buf)

    # -- evaluation ----------------------------------------------------------------------
    def _chain_unary(self, psi: torch.Tensor, gi: int) -> torch.Tensor:
        g = self.problem.groups[gi]
        off, cnt, flat, _ = self.group_index[gi]
        C, n = g.nodes.shape
        full, src = self._gather[gi]
        if full:  # no padding: the group's slots are the chains, in order
            return psi[off : off + cnt].view(C, n, self.L)
        if not psi.requires_grad:  # a gather; padding holds some slot's scores (ignored by the kernels)
            return psi[off : off + cnt].index_select(0, src).view(C, n, self.L)
        out = psi.new_zeros(C * n, self.L).index_copy(0, flat, psi[off : off + cnt])
        return out.view(C, n, self.L)

    def evaluate(self, lam: torch.Tensor, gamma: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Marginals ``μ [S, L]`` and the dual per batch element ``[B]`` (float64) at ``λ``."""
        psi = self._psi_scratch(lam)
        mus, B = [], self.problem.batch_size
        dual = torch.zeros(B, dtype=torch.float64, device=lam.device)
        # without autograd on the CPU the groups' marginals go straight into one [S, L] array (the
        # compiled kernels write a group without padding in place; no concatenation)
        mu = torch.empty(self.S, self.L, dtype=lam.dtype) if _inplace() and lam.device.type == "cpu" else None
        for gi, g in enumerate(self.problem.groups):
            off, cnt, flat, _ = self.group_index[gi]
            full = self._gather[gi][0]
            dest = None if mu is None else mu[off : off + cnt]
            marg, value = chain_marginals(
                self._chain_unary(psi, gi), g.pairwise, g.lengths, gamma,
                implementation=self.implementation, validate_args=self.validate_args,
                out=dest.view(g.nodes.shape[0], g.nodes.shape[1], self.L) if dest is not None and full else None,
            )
            if dest is None:
                mus.append(marg.reshape(-1, self.L) if full else marg.reshape(-1, self.L).index_select(0, flat))
            elif not full:
                torch.index_select(marg.reshape(-1, self.L), 0, flat, out=dest)
            elif marg.data_ptr() != dest.data_ptr():  # a backend that does not take `out`
                dest.copy_(marg.reshape(-1, self.L))
            dual = dual.index_add(0, self.chain_batch[gi], value.detach().double())
        return (torch.cat(mus) if mu is None else mu), dual

    def evaluate_value(self, lam: torch.Tensor, gamma: float = 0.0) -> torch.Tensor:
        """The dual ``D_γ`` per batch element ``[B]`` (float64), values only (no marginals, no grad)."""
        psi = self._psi_scratch(lam.detach())
        dual = torch.zeros(self.problem.batch_size, dtype=torch.float64, device=lam.device)
        for gi, g in enumerate(self.problem.groups):
            value = chain_values(
                self._chain_unary(psi, gi), g.pairwise, g.lengths, gamma,
                implementation=self.implementation, validate_args=self.validate_args,
            )
            dual.index_add_(0, self.chain_batch[gi], value.double())
        return dual

    def direction(self, mu: torch.Tensor) -> torch.Tensor:
        """Eq. (19)/(42) without the step: ``μ_i^t − mean_{t'} μ_i^{t'}`` (label mean removed)."""
        d = self.node_center(mu)
        if _inplace():
            return d.sub_(d.mean(dim=1, keepdim=True))
        return d - d.mean(dim=1, keepdim=True)

    def _direction_scratch(self, mu: torch.Tensor) -> torch.Tensor:
        """:meth:`direction` for :meth:`step` without autograd: with the compiled node centring, into
        one array reused by every step (same operations; the step only reads it)."""
        if self._center is None or mu.device.type != "cpu":
            return self.direction(mu)
        buf = self._dir_buf
        if buf is None or buf.shape != mu.shape or buf.dtype != mu.dtype:
            buf = self._dir_buf = torch.empty_like(mu, memory_format=torch.contiguous_format)
        module, order = self._center
        d = module.node_center(mu, order, out=buf)
        return d.sub_(d.mean(dim=1, keepdim=True))

    def node_beliefs(self, mu: torch.Tensor) -> torch.Tensor:
        """Summed marginals ``Σ_t μ_i^t``: ``[S, L] -> [V, L]``."""
        return self.node_sum(mu)

    @property
    def paper_step(self) -> float:
        return 1.0 / self.max_chain_length

    def step(self, lam, mu, dual, alpha, gamma: float, *, extra=None, check: bool = True, slack: float = 1e-6,
             force=None):
        """One fixed-point update (Eq. 19/42), shared by :func:`solve_map` and the layer.

        ``λ' = project(λ − α (μ − mean μ) + extra)`` is evaluated at ``gamma``; with ``check``, a
        batch element whose dual rose by more than ``slack · max(|dual|, 1)`` keeps its old
        iterate, unless ``force [B]`` (a step known to be monotone). ``alpha``: a number or
        ``[S, 1]`` per slot; ``extra``: ``[S, L]`` (momentum) or ``None``.

        Returns ``(λ, μ, dual, accepted [B] or None)``.
        """
        if _inplace():  # the same arithmetic on fewer fresh [S, L] arrays (allocation is 4x a pass here)
            lam_new = lam - self._direction_scratch(mu).mul_(alpha)
            if extra is not None:
                lam_new.add_(extra)
        else:
            lam_new = lam - alpha * self.direction(mu)
            if extra is not None:
                lam_new = lam_new + extra
        lam_new = self.project(lam_new, overwrite=True)
        mu_new, dual_new = self.evaluate(lam_new, gamma)
        if not check:
            return lam_new, mu_new, dual_new, None
        ok = dual_new <= dual + slack * dual.abs().clamp(min=1.0)
        if force is not None:
            ok = ok | force
        if not ok.is_cuda and bool(ok.all()):  # every step accepted (a free check on the CPU): no selects
            return lam_new, mu_new, dual_new, ok
        if not ok.is_cuda and not bool(ok.any()):  # every step undone: the old iterate, no selects
            return lam, mu, dual, ok
        take = ok[self.slot_batch][:, None]
        return torch.where(take, lam_new, lam), torch.where(take, mu_new, mu), torch.where(ok, dual_new, dual), ok


def _compiled_center(slot_node: torch.Tensor, V: int, count: torch.Tensor, implementation: str | None):
    """``(module, order)`` for the compiled node centring when the chain kernels run on numba here
    (CPU float32/float64), else ``None`` (torch ops)."""
    from ..ops.chain import choose_implementation

    if count.dtype not in (torch.float32, torch.float64) or choose_implementation(count, implementation) != "numba":
        return None
    from ..ops.chain import numba_conditional

    if not numba_conditional.AVAILABLE:
        return None
    return numba_conditional, numba_conditional.SlotOrder(slot_node, V, count)


def _inplace() -> bool:
    """Whether the loop may update its temporaries in place: autograd off (solve_map; the layer,
    which differentiates through the loop, keeps the out-of-place ops)."""
    return not torch.is_grad_enabled()


class _NodeSum:
    """``x [S, L] -> [V, L]``, the sum over each node's slots, as gathers and in-place adds (one
    per slot rank: the ``j``-th slot of every node that has one), in slot order: the sums of
    ``index_add`` bit for bit, without its per-row loop on the CPU (10x slower here)."""

    def __init__(self, slot_node: torch.Tensor, V: int):
        order = torch.argsort(slot_node, stable=True)
        count = torch.bincount(slot_node, minlength=V)
        start = torch.cumsum(count, 0) - count
        rank = torch.arange(slot_node.numel(), device=slot_node.device) - start[slot_node[order]]
        self.V = V
        self.cols = []  # (nodes [V_j] or None for all nodes, slots [V_j]) per rank j
        for j in range(int(count.max()) if count.numel() else 0):
            at = rank == j
            nodes, slots = slot_node[order[at]], order[at]
            self.cols.append((None if nodes.numel() == V else nodes, slots))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.cols or self.cols[0][0] is not None:  # some node has no slot: start from zeros
            out = x.new_zeros(self.V, x.shape[1])
            cols = self.cols
        else:
            out = x.index_select(0, self.cols[0][1])
            cols = self.cols[1:]
        for nodes, slots in cols:
            if nodes is None and _inplace():
                out.add_(x.index_select(0, slots))
            elif nodes is None:
                out = out + x.index_select(0, slots)
            else:
                out = out.index_add(0, nodes, x.index_select(0, slots))
        return out


@dataclass
class ChainSolution:
    """What :func:`solve_chain_problem` returns, on the problem's flat nodes ``V``.

    ``labels [V]``, ``primal [B]`` and ``dual [B]`` (float64: the best score found and the
    certificate), ``dual_history [iters + 1, B]``, ``gamma_history [iters + 1]``, ``marginals
    [V, L]`` (summed (smoothed) max-marginals at the last iterate), ``iterations``, ``seconds``,
    ``info`` (paper step, final steps, rejected steps, stage gammas)."""

    labels: torch.Tensor
    primal: torch.Tensor
    dual: torch.Tensor
    dual_history: torch.Tensor
    gamma_history: torch.Tensor
    marginals: torch.Tensor
    iterations: int
    seconds: float
    info: dict


class _Incumbent:
    """The best labelling and the lowest certificate seen (per batch element).

    Only finite evaluations count: a NaN or infinite ``D`` (an overflow) never replaces a finite
    bound, and a certificate still non-finite at the end raises (:meth:`final_certificate`)."""

    def __init__(self, problem: ChainProblem, dd: DualDecomposition, opts: SolverOptions):
        B, device = problem.batch_size, problem.unary.device
        self.problem, self.dd, self.opts = problem, dd, opts
        self.edges = ProblemEdges(problem) if opts.decode == "icm" else None
        self.labels = torch.zeros(problem.num_nodes, dtype=torch.long, device=device)
        self.primal = torch.full((B,), -math.inf, dtype=torch.float64, device=device)
        self.certificate = torch.full((B,), math.inf, dtype=torch.float64, device=device)
        self._scored = False  # a labelling has been scored (the primal can be finite)
        self._changed = False  # bound or primal moved since the last convergence test

    def consider(self, labels: torch.Tensor) -> None:
        sc = problem_score(self.problem, labels)
        better = sc > self.primal  # False for NaN: a NaN score never replaces a labelling
        self._scored = True
        if bool(better.any()):
            self._changed = True
            take = better[self.problem.node_batch]
            self.labels = torch.where(take, labels, self.labels)
            self.primal = torch.where(better, sc, self.primal)

    def decode(self, mu: torch.Tensor) -> None:
        lab = decode_argmax(self.dd.node_beliefs(mu))
        self.consider(lab)
        if self.edges is not None:
            sweeps, impl = self.opts.icm_sweeps, self.opts.implementation
            self.consider(chain_icm(self.problem, lab, self.edges, sweeps=sweeps, implementation=impl))

    def bound(self, value: torch.Tensor) -> None:
        """Keep the lowest finite bound (NaN-aware: ``torch.minimum`` would propagate a NaN)."""
        value = value.to(self.certificate.dtype)
        self._changed = True
        self.certificate = torch.where(
            torch.isfinite(value), torch.minimum(self.certificate, value), self.certificate
        )

    def certify(self, lam: torch.Tensor, dual: torch.Tensor, g: float) -> None:
        self.bound(dual if g == 0.0 else self.dd.evaluate_value(lam, 0.0))
        if g > 0.0:  # D_γ >= D_0 is a valid (weaker) bound too
            self.bound(dual)

    def converged(self, tol: float) -> bool:
        """``gap <= tol · max(1, |dual|)`` with a finite primal and bound, for every batch element
        (before the first decoding the primal is ``-inf``: never converged). Reads the device only
        when the bound or the primal moved since the last test (one sync per change)."""
        if not (tol > 0 and self._scored and self._changed):
            return False
        self._changed = False
        cert, primal = self.certificate, self.primal
        ok = torch.isfinite(primal) & torch.isfinite(cert)
        ok &= (cert - primal) <= tol * cert.abs().clamp(min=1.0)
        return bool(ok.all())

    def final_certificate(self) -> torch.Tensor:
        """The certificate ``[B]``; raises if a batch element has no finite bound or labelling
        (the potentials overflow the dtype in the chains' sums)."""
        bad = ~(torch.isfinite(self.certificate) & torch.isfinite(self.primal))
        if bool(bad.any()):
            b = int(bad.nonzero()[0, 0])
            raise CRFValueError(
                f"expected a finite certificate and score, got dual={float(self.certificate[b])!r}, "
                f"primal={float(self.primal[b])!r} for batch element {b} (the potentials overflow "
                f"{self.problem.unary.dtype}: rescale them or use float64)"
            )
        return self.certificate


class _StepRule:
    """The step rule's state, per batch item: the step ``α`` (adaptive: ×1.5 after an accepted
    step, ×0.5 after a rejected one, within ``[paper step, 1]``; else fixed) and the heavy-ball
    momentum, restarted whenever a step is undone (adaptive restart) and at every new stage."""

    def __init__(self, opts: SolverOptions, paper: float, batch: int, device: torch.device):
        self.paper = paper
        self.adaptive = opts.step == "adaptive"
        self.use_momentum = self.adaptive and opts.momentum
        alpha0 = paper if isinstance(opts.step, str) else float(opts.step)
        self.alpha = torch.full((batch,), alpha0, dtype=torch.float64, device=device)
        self.run = torch.zeros(batch, dtype=torch.float64, device=device)  # accepted steps since the restart
        self.rejected = torch.zeros((), dtype=torch.long, device=device)
        self.lam_prev: torch.Tensor | None = None

    def restart(self, lam: torch.Tensor) -> None:
        self.lam_prev, self.run = lam, torch.zeros_like(self.run)

    def extrapolation(self, lam: torch.Tensor, slot_batch: torch.Tensor) -> torch.Tensor | None:
        if not self.use_momentum:
            return None
        beta = (self.run / (self.run + 1.0)).clamp(max=0.9).to(lam.dtype)[slot_batch, None]
        return (lam - self.lam_prev).mul_(beta)

    def update(self, accept: torch.Tensor, lam_old: torch.Tensor) -> None:
        if not self.adaptive:
            return
        self.rejected += (~accept).sum()
        self.lam_prev = lam_old  # after a rejected step lam == lam_old: the momentum restarts
        self.run = torch.where(accept, self.run + 1.0, torch.zeros_like(self.run))
        self.alpha = torch.where(accept, (self.alpha * 1.5).clamp(max=1.0), (self.alpha * 0.5).clamp(min=self.paper))


def _stage_of_iteration(iters: int, n_stages: int) -> list[int]:
    """The stage index of each iteration: ``iters`` split into ``n_stages`` equal runs."""
    return [min(n_stages - 1, (k * n_stages) // max(iters, 1)) for k in range(iters)]


@torch.no_grad()
def solve_chain_problem(problem: ChainProblem, options: SolverOptions | None = None, **kwargs) -> ChainSolution:
    """Run the fixed-point iteration on a chain problem (see :func:`solve_map` for the options;
    pass a :class:`SolverOptions` or its fields as keywords)."""
    opts = options if options is not None else SolverOptions(**kwargs)
    t0 = time.perf_counter()
    dd = DualDecomposition(problem, implementation=opts.implementation, validate_args=opts.validate_args)
    stage_gammas = opts.stage_gammas(problem)
    iters = opts.iters
    stage_of_iter = _stage_of_iteration(iters, len(stage_gammas))
    rule = _StepRule(opts, dd.paper_step, problem.batch_size, problem.unary.device)
    lam = torch.zeros(dd.S, problem.num_labels, dtype=problem.unary.dtype, device=problem.unary.device)
    best = _Incumbent(problem, dd, opts)
    slack = 1e-12 if lam.dtype == torch.float64 else 1e-6  # relative, for rounding

    g_cur = stage_gammas[0] if stage_gammas else 0.0
    mu, dual = dd.evaluate(lam, g_cur)
    history, gamma_hist = [dual.clone()], [g_cur]
    best.certify(lam, dual, g_cur)
    rule.restart(lam)
    for it in range(iters):
        g_new = stage_gammas[stage_of_iter[it]]
        if g_new != g_cur:
            # stage end: certificate and decoding at the old stage's end, then re-evaluate
            best.certify(lam, dual, g_cur)
            best.decode(mu)
            g_cur = g_new
            mu, dual = dd.evaluate(lam, g_cur)
            rule.restart(lam)
        lam_old = lam
        # adaptive: accept where the objective did not rise; the paper's step is monotone by the
        # theorem, so it is always accepted
        lam, mu, dual, accept = dd.step(
            lam, mu, dual, rule.alpha.to(lam.dtype)[dd.slot_batch, None], g_cur,
            extra=rule.extrapolation(lam, dd.slot_batch), check=rule.adaptive, slack=slack,
            force=rule.alpha <= rule.paper * (1 + 1e-12),
        )
        rule.update(accept, lam_old)
        history.append(dual.clone())
        gamma_hist.append(g_cur)
        _after_step(best, opts, it + 1, iters, g_cur, lam, mu, dual, rule.alpha)
        if best.converged(opts.tol):
            break
    best.certify(lam, dual, g_cur)
    best.decode(mu)
    return ChainSolution(
        labels=best.labels,
        primal=best.primal,
        dual=best.final_certificate(),
        dual_history=torch.stack(history),
        gamma_history=torch.tensor(gamma_hist, dtype=torch.float64),
        marginals=dd.node_beliefs(mu),
        iterations=len(history) - 1,
        seconds=time.perf_counter() - t0,
        info={"paper_step": rule.paper, "final_step": rule.alpha.tolist(), "rejected_steps": int(rule.rejected),
              "gammas": stage_gammas},
    )


def _after_step(best, opts: SolverOptions, done: int, iters: int, gamma: float, lam, mu, dual, alpha) -> None:
    """The bookkeeping after iteration ``done``: the bound (every iteration at γ = 0, else every
    ``certificate_every``), the decoding every ``decode_every``, and the callback."""
    if gamma == 0.0:
        best.bound(dual)
    elif opts.certificate_every and done % opts.certificate_every == 0:
        best.certify(lam, dual, gamma)
    if opts.decode_every and done % opts.decode_every == 0:
        best.decode(mu)
    if opts.callback is not None:
        opts.callback({"iteration": done, "iters": iters, "gamma": gamma, "dual": dual,
                       "certificate": best.certificate, "primal": best.primal, "step": alpha})


def _problem_of(model) -> tuple[ChainProblem, Callable]:
    from ..models.graph import GraphMRF
    from ..models.grid import GridCRF

    if isinstance(model, GridCRF):
        from ..decomposition.grid import grid_chain_problem

        B, L, H, W = model.shape
        problem = grid_chain_problem(model)

        def fold(labels, beliefs):
            return labels.view(B, H, W), beliefs.view(B, H, W, L).permute(0, 3, 1, 2)

        return problem, fold
    if isinstance(model, GraphMRF):
        from ..decomposition.graph import graph_chain_problem

        problem = graph_chain_problem(model)
        N, L = model.num_nodes, model.num_labels

        def fold(labels, beliefs):
            if model.batched:
                return labels.view(-1, N), beliefs.view(-1, N, L)
            return labels.view(N), beliefs.view(N, L)

        return problem, fold
    raise CRFTypeError(f"expected a GridCRF or a GraphMRF, got {type(model).__name__}")


@with_solver_threads
def solve_map(
    model,
    iters: int = 1000,
    gamma: float | None = None,
    step: str | float = "adaptive",
    *,
    stages: int = 20,
    gamma_start: float = 0.3,
    gamma_end: float = 1e-4,
    decode: str = "icm",
    icm_sweeps: int = 3,
    certificate_every: int = 10,
    decode_every: int | None = None,
    tol: float = 1e-9,
    momentum: bool = True,
    callback: Callable[[dict], None] | None = None,
    implementation: str | None = None,
    validate_args: bool = True,
) -> MAPResult:
    """MAP inference by dual decomposition into chains, with a certificate.

    Args:
        model: a :class:`~crfkit.GridCRF` or :class:`~crfkit.GraphMRF`.
        iters: fixed-point iterations (each: one forward-backward pass over every chain).
        gamma: ``None`` (default) for the continuation in γ; ``0.0`` for the max iteration;
            ``> 0`` for fixed smoothing.
        step: ``"adaptive"`` (default: grows ×1.5 while the objective falls, halves and undoes
            a step that would raise it, never below the paper's step), ``"paper"``
            (``1 / max_t |V^t|``, Theorem 3.2), or a fixed positive number.
        stages, gamma_start, gamma_end: the continuation: ``stages`` geometric values of γ from
            ``gamma_start`` to ``gamma_end`` times the potentials' spread, iterations split evenly.
        decode: ``"icm"`` (default: Eq. (22) then exact chain updates conditioned on the rest,
            keeping the best labelling seen) or ``"argmax"`` (the paper's Eq. (22) only).
        certificate_every: evaluate the max-dual ``D_0`` every so many iterations when γ > 0.
        decode_every: also decode every so many iterations (default: at stage ends and the end).
        momentum: with the adaptive step, add heavy-ball momentum restarted at every undone step.
        tol: stop when ``gap <= tol * max(1, |dual|)`` for every batch element (default ``1e-9``:
            a problem solved exactly, e.g. a tree, stops as soon as its gap is 0; ``0`` runs all ``iters``).
        callback: called after each iteration with a dict (iteration, gamma, dual, certificate, ...).
        implementation: force a chain kernel (``"reference"``, ``"torch"``, ``"triton"``).
        validate_args: run the checks that read tensors on the host (``lengths``, the weights'
            sign for a fast path when the model does not know it); ``False`` skips them.

    Returns:
        :class:`MAPResult` with ``primal <= max score <= LP optimum <= dual``.

    Examples:
        >>> res = crfkit.solve_map(crf, iters=100, gamma=0.0, step="paper")  # the paper's Alg. 1
    """
    options = SolverOptions(
        iters=iters, gamma=gamma, step=step, stages=stages, gamma_start=gamma_start, gamma_end=gamma_end,
        decode=decode, icm_sweeps=icm_sweeps, certificate_every=certificate_every, decode_every=decode_every,
        tol=tol, momentum=momentum, callback=callback, implementation=implementation, validate_args=validate_args,
    )  # checked here, before any work
    problem, fold = _problem_of(model)
    out = solve_chain_problem(problem, options)
    labels, marginals = fold(out.labels, out.marginals)
    with torch.no_grad():
        primal = model.score(labels).reshape(-1).double()
    dual = out.dual
    return MAPResult(
        labels=labels,
        primal=primal.to(dual.dtype),
        dual=dual,
        gap=(dual - primal).clamp(min=0.0),  # primal <= dual holds exactly; clamp rounding noise
        dual_history=out.dual_history,
        gamma_history=out.gamma_history,
        marginals=marginals,
        iterations=out.iterations,
        seconds=out.seconds,
        info=out.info,
    )
