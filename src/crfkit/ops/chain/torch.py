"""Vectorised PyTorch chain kernel with a hand-written backward.

All chains and labels are processed in parallel; the loop runs over chain positions
(``O(n)`` sequential steps, each ``O(L²)`` per chain for tables, ``O(L)`` for the
Potts / truncated-linear fast paths).

Memory: the forward saves only the ``L``-vectors of messages (``f`` from the left and
``g`` from the right, ``[n, C, L]`` each); the backward recomputes the soft-max
(or arg-max) weights of every step from them instead of storing ``L²`` per edge.

The pairwise form decides nothing here by name: a dense step asks the form for edge ``k``'s
table (:meth:`ChainPairwise.edge_table`) and hands its gradient back
(:meth:`ChainPairwise.accumulate_grad`); a form's O(L) path is looked up by the name the form
gives (:meth:`ChainPairwise.fast_path`) in :data:`FAST_PATHS`. The reductions are the
semiring helper's (:mod:`crfkit.ops.chain.semiring`).

Messages (scores maximised, ``smax`` = max if ``gamma == 0`` else ``gamma * logsumexp(·/gamma)``)::

    f_0 = 0,      f_{k+1}(c) = smax_a  unary_k(a) + f_k(a) + phi_k(a, c)
    g_{n-1} = 0,  g_k(a)     = smax_c  phi_k(a, c) + unary_{k+1}(c) + g_{k+1}(c)
    marginal_k = unary_k + f_k + g_k,   value = smax(marginal_0)
"""

from __future__ import annotations

import torch

from ...decomposition.chains import ChainPairwise
from ...models.chain_pairwise import DISTANCE_TRANSFORM, POTTS_CLOSED_FORM
from .semiring import floored_exp, smax, smax_weights

__all__ = [
    "chain_marginals_torch",
    "chain_values_torch",
    "chain_viterbi_torch",
    "torch_forward",
    "torch_backward",
    "FAST_PATHS",
]

_DECIDE = object()


class _Step:
    """One message step ``m = smax_a x(a) + phi_k(a, ·)`` (``reverse``: ``smax_c phi_k(·, c) + x(c)``)
    and its vector-Jacobian product, for one chain form (dense tables or the form's fast path)."""

    def __init__(self, pw: ChainPairwise, gamma: float, L: int, fast=_DECIDE, allow_sync: bool = True):
        self.pw, self.gamma, self.L = pw, gamma, L
        self.fast = pw.fast_path(gamma, allow_sync) if fast is _DECIDE else fast
        self.idx = torch.arange(L, device=(pw.weight if pw.weight is not None else pw.tables).device)

    def _t(self, x: torch.Tensor, k: int, reverse: bool) -> torch.Tensor:
        tab = self.pw.edge_table(k, self.L)
        return tab + x[:, None, :] if reverse else x[:, :, None] + tab

    def __call__(self, x: torch.Tensor, k: int, reverse: bool) -> torch.Tensor:
        if self.fast is not None:
            return FAST_PATHS[self.fast][0](self, x, k)
        return smax(self._t(x, k, reverse), self.gamma, dim=2 if reverse else 1, inplace=True)

    def vjp(self, x, m, dm, k, reverse, grads):
        """Return ``dx`` for ``m = step(x)`` given ``dm``; add pairwise gradients into ``grads``."""
        if self.fast is not None:
            return FAST_PATHS[self.fast][1](self, x, m, dm, k, grads)
        dim = 2 if reverse else 1
        dt = smax_weights(self._t(x, k, reverse), m, self.gamma, dim) * dm.unsqueeze(dim)
        self.pw.accumulate_grad(grads, k, dt)
        return dt.sum(dim=1 if reverse else 2)


# -- O(L) paths of the truncated-linear forms (non-negative weights) ----------------------------
def _dt_argmax(step: _Step, x: torch.Tensor, k: int):
    """Distance transform: ``max_a x(a) - w min(|a - c|, T)`` and its arg-max, by prefix maxima.

    The prefix maxima of ``x ± w·pos`` choose the arg-max; each candidate's value is re-read from
    ``x`` at it (``(x + w·pos) - w·pos`` would lose about ``w·eps`` when ``w`` is large against
    the scores: a certificate below the primal). The same operations, in the same order, as
    ``numba.py``'s ``_dt_max``, so both backends agree bit for bit."""
    w = step.pw.weight[:, k, None]  # [C, 1]
    pos = step.idx.to(x.dtype)
    _, a_idx = torch.cummax(x + w * pos, dim=1)
    left = x.gather(1, a_idx) - w * (pos - a_idx.to(x.dtype))
    _, b_idx = torch.cummax((x - w * pos).flip(1), dim=1)
    b_idx = (step.L - 1) - b_idx.flip(1)
    right = x.gather(1, b_idx) - w * (b_idx.to(x.dtype) - pos)
    top, top_idx = x.max(dim=1, keepdim=True)
    trunc = (top - w * step.pw.truncation).expand_as(x)
    use_right = right > left
    m = torch.where(use_right, right, left)
    arg = torch.where(use_right, b_idx, a_idx)
    use_trunc = trunc > m
    m = torch.where(use_trunc, trunc, m)
    arg = torch.where(use_trunc, top_idx.expand_as(x), arg)
    return m, arg


def _dt_forward(step, x, k):
    return _dt_argmax(step, x, k)[0]


def _dt_vjp(step, x, m, dm, k, grads):
    _, arg = _dt_argmax(step, x, k)
    dx = torch.zeros_like(x).scatter_add_(1, arg, dm)
    grads["weight"][:, k] -= (dm * step.pw.distance(arg, step.idx)).sum(dim=1)
    return dx


def _potts_weight(step, k):
    """The Potts weight of edge ``k``: ``w min(T, 1)`` (a truncation ``T <= 1`` scales ``[a != c]``)."""
    return step.pw.weight[:, k, None] * min(step.pw.truncation, 1.0)


def _potts_forward(step, x, k):
    # smax_a x(a) - w [a != c] = g * logaddexp(x(c)/g + log(1 - e^{-w/g}), (smax(x) - w)/g),
    # written in the log domain so that nothing underflows for large w / g
    g = step.gamma
    w = _potts_weight(step, k)
    total = smax(x, g, dim=1)[:, None]
    return g * torch.logaddexp(x / g + torch.log1p(-torch.exp(-w / g)), (total - w) / g)


def _potts_vjp(step, x, m, dm, k, grads):
    g = step.gamma
    w = _potts_weight(step, k)
    ew = torch.exp(-w / g)
    p_same = floored_exp((x - m) / g)  # P(a = c | c)
    mmin = m.amin(dim=1, keepdim=True)
    # Σ_c dm(c) P(a | c) for a != c, written stably (see the module docs of triton.py)
    s = (dm * floored_exp((mmin - m) / g)).sum(dim=1, keepdim=True)
    other = floored_exp((x - w - mmin) / g) * s - dm * p_same * ew
    dx = other + dm * p_same
    grads["weight"][:, k] -= (dm * (1.0 - p_same)).sum(dim=1) * min(step.pw.truncation, 1.0)
    return dx


#: name of a form's fast path -> (forward step, its vjp), as this backend implements them
FAST_PATHS = {
    DISTANCE_TRANSFORM: (_dt_forward, _dt_vjp),
    POTTS_CLOSED_FORM: (_potts_forward, _potts_vjp),
}


# -- forward and backward over whole chains ------------------------------------------------------
def _valid(n: int, lengths: torch.Tensor) -> torch.Tensor:
    return torch.arange(n, device=lengths.device)[:, None] < lengths[None, :]  # [n, C]


@torch.no_grad()
def torch_forward(unary, pw: ChainPairwise, lengths, gamma: float, fast=_DECIDE, allow_sync: bool = True):
    """Messages and marginals: ``marginals [C, n, L]``, ``value [C]``, the saved messages
    ``f, graw [n, C, L]`` (``graw``: right messages before the padding mask) and the fast path."""
    C, n, L = unary.shape
    step = _Step(pw, gamma, L, fast, allow_sync)
    u = unary.detach().transpose(0, 1)  # [n, C, L] view
    valid = _valid(n, lengths)
    f = unary.new_zeros(n, C, L)
    graw = unary.new_zeros(n, C, L)
    g = unary.new_zeros(n, C, L)
    for k in range(n - 1):
        f[k + 1] = step(u[k] + f[k], k, reverse=False)
        j = n - 2 - k
        graw[j] = step(u[j + 1] + g[j + 1], j, reverse=True)
        g[j] = graw[j] * valid[j + 1, :, None]
    marg = (u + f + g) * valid[:, :, None]
    value = smax(u[0] + g[0], gamma, dim=1)
    return marg.transpose(0, 1).contiguous(), value, f, graw, step.fast


@torch.no_grad()
def torch_backward(unary, pw: ChainPairwise, lengths, gamma: float, f, graw, d_marg, d_value, fast=_DECIDE):
    """The vector-Jacobian product of :func:`torch_forward` from its saved messages:
    ``(d_unary [C, n, L], d_tables or None, d_weight or None)``."""
    C, n, L = unary.shape
    step = _Step(pw, gamma, L, fast)
    u = unary.transpose(0, 1)
    valid = _valid(n, lengths)
    g = graw.clone()
    g[: n - 1] *= valid[1:, :, None]
    tables, weight = pw.tensors()
    grads = {
        name: torch.zeros(t.shape, dtype=t.dtype, device=t.device)
        for name, t in (("tables", tables), ("weight", weight))
        if t is not None
    }
    dm = (d_marg.transpose(0, 1) * valid[:, :, None]) if d_marg is not None else unary.new_zeros(n, C, L)
    du, df, dg = dm.clone(), dm.clone(), dm.clone()
    if d_value is not None:
        x0 = u[0] + g[0]
        p0 = smax_weights(x0, smax(x0, gamma, dim=1), gamma, dim=1) * d_value[:, None]
        du[0] += p0
        dg[0] += p0
    # g recursion: g_j = valid_{j+1} * step(u_{j+1} + g_{j+1}, j, reverse); dg_j complete in increasing j
    for j in range(n - 1):
        dx = step.vjp(u[j + 1] + g[j + 1], graw[j], dg[j] * valid[j + 1, :, None], j, True, grads)
        du[j + 1] += dx
        dg[j + 1] += dx
    # f recursion: f_{k+1} = step(u_k + f_k, k); df_{k+1} complete in decreasing k
    for k in range(n - 2, -1, -1):
        dx = step.vjp(u[k] + f[k], f[k + 1], df[k + 1], k, False, grads)
        du[k] += dx
        df[k] += dx
    return du.transpose(0, 1).contiguous().to(unary.dtype), grads.get("tables"), grads.get("weight")


class _ChainMarginals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary, tables, weight, lengths, gamma, pw, allow_sync):
        pw = pw.replace(tables, weight)
        marg, value, f, graw, fast = torch_forward(unary, pw, lengths, gamma, allow_sync=allow_sync)
        ctx.save_for_backward(unary, tables, weight, lengths, f, graw)
        ctx.gamma, ctx.pw, ctx.fast = gamma, pw, fast
        return marg, value

    @staticmethod
    def backward(ctx, d_marg, d_value):
        unary, tables, weight, lengths, f, graw = ctx.saved_tensors
        pw = ctx.pw.replace(tables, weight)
        du, dt, dw = torch_backward(unary, pw, lengths, ctx.gamma, f, graw, d_marg, d_value, ctx.fast)
        d_tables = dt if ctx.needs_input_grad[1] else None
        d_weight = dw if ctx.needs_input_grad[2] else None
        return du, d_tables, d_weight, None, None, None, None


def chain_marginals_torch(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float, *, allow_sync: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of chains; see :func:`crfkit.ops.chain.chain_marginals`.

    Args:
        unary: ``[C, n, L]``; pairwise: :class:`ChainPairwise`; lengths: ``[C]`` long;
        gamma: ``0`` (max) or ``> 0`` (smoothed max).
        allow_sync: may read the weights' sign on the host to pick a fast path (``False``: a
            form whose sign is not known takes the exact table path).

    Returns:
        ``marginals [C, n, L]`` (zero on padding), ``value [C]``.
    """
    tables, weight = pairwise.tensors()
    return _ChainMarginals.apply(unary, tables, weight, lengths, float(gamma), pairwise, allow_sync)


@torch.no_grad()
def chain_values_torch(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float, *, allow_sync: bool = True
) -> torch.Tensor:
    """Only the (smoothed) max of each chain, ``[C]``: one pass of messages, no marginals, no grad."""
    C, n, L = unary.shape
    step = _Step(pairwise, float(gamma), L, allow_sync=allow_sync)
    u = unary.transpose(0, 1)
    valid = _valid(n, lengths)
    g = unary.new_zeros(C, L)
    for j in range(n - 2, -1, -1):
        g = step(u[j + 1] + g, j, reverse=True) * valid[j + 1, :, None]
    return smax(u[0] + g, float(gamma), dim=1)


@torch.no_grad()
def chain_viterbi_torch(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, *, allow_sync: bool = True
) -> torch.Tensor:
    """A maximising labelling of each chain, ``[C, n]`` long (``0`` on padding)."""
    C, n, L = unary.shape
    step = _Step(pairwise, 0.0, L, allow_sync=allow_sync)
    u = unary.transpose(0, 1)
    valid = _valid(n, lengths)
    g = unary.new_zeros(n, C, L)
    for j in range(n - 2, -1, -1):
        g[j] = step(u[j + 1] + g[j + 1], j, reverse=True) * valid[j + 1, :, None]
    labels = torch.zeros(n, C, dtype=torch.long, device=unary.device)
    labels[0] = (u[0] + g[0]).argmax(dim=1)
    for k in range(n - 1):
        nxt = (pairwise.edge_row(k, labels[k], L) + u[k + 1] + g[k + 1]).argmax(dim=1)
        labels[k + 1] = torch.where(valid[k + 1], nxt, torch.zeros_like(nxt))
    return labels.transpose(0, 1).contiguous()
