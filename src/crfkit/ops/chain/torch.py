"""Vectorised PyTorch chain kernel with a hand-written backward.

All chains and labels are processed in parallel; the loop runs over chain positions
(``O(n)`` sequential steps, each ``O(L²)`` per chain for tables, ``O(L)`` for the
Potts / truncated-linear fast paths).

Memory: the forward saves only the ``L``-vectors of messages (``f`` from the left and
``g`` from the right, ``[n, C, L]`` each); the backward recomputes the soft-max
(or arg-max) weights of every step from them instead of storing ``L²`` per edge.

Messages (scores maximised, ``smax`` = max if ``gamma == 0`` else ``gamma * logsumexp(·/gamma)``)::

    f_0 = 0,      f_{k+1}(c) = smax_a  unary_k(a) + f_k(a) + phi_k(a, c)
    g_{n-1} = 0,  g_k(a)     = smax_c  phi_k(a, c) + unary_{k+1}(c) + g_{k+1}(c)
    marginal_k = unary_k + f_k + g_k,   value = smax(marginal_0)
"""

from __future__ import annotations

import torch

from ...decomposition.chains import ChainPairwise

__all__ = ["chain_marginals_torch", "chain_values_torch", "chain_viterbi_torch"]


def _exp_floor(dtype) -> float:
    """Below this, ``exp`` underflows to 0 anyway; torch's CPU ``exp`` is 12-30x slower on such
    (denormal-producing) inputs, so they are clamped first (documented once, here)."""
    return -80.0 if dtype in (torch.float32, torch.float16, torch.bfloat16) else -700.0


def _exp(z: torch.Tensor) -> torch.Tensor:
    """``exp(z)`` for ``z <= 0`` with ``z`` clamped at the underflow floor first (in place on ``z``;
    ``exp(-80)`` = 1.8e-35 stands for 0, a relative error far below float32's resolution)."""
    return z.clamp_(min=_exp_floor(z.dtype)).exp_()


def _smax(t: torch.Tensor, gamma: float, dim: int) -> torch.Tensor:
    if gamma == 0.0:
        return t.amax(dim=dim)
    s = t / gamma
    m = s.amax(dim=dim, keepdim=True)
    return gamma * (m.squeeze(dim) + torch.log(_exp(s.sub_(m)).sum(dim=dim)))


def _weights(t: torch.Tensor, m: torch.Tensor, gamma: float, dim: int) -> torch.Tensor:
    """Soft-max weights ``exp((t - m) / gamma)`` along ``dim`` (one-hot arg-max if gamma == 0)."""
    if gamma == 0.0:
        idx = t.argmax(dim=dim, keepdim=True)
        return torch.zeros_like(t).scatter_(dim, idx, 1.0)
    return _exp((t - m.unsqueeze(dim)).div_(gamma))


class _Step:
    """One message step ``m = smax_a x(a) + phi_k(a, ·)`` (``reverse``: ``smax_c phi_k(·, c) + x(c)``)
    and its vector-Jacobian product, for one pairwise kind."""

    def __init__(self, pw: ChainPairwise, gamma: float, L: int, dtype):
        self.pw, self.gamma, self.L = pw, gamma, L
        self.kind = pw.kind
        self.fast = None
        if pw.kind == "truncated_linear":
            nonneg = bool((pw.weight >= 0).all()) if pw.weight.numel() else True
            if gamma == 0.0 and nonneg:
                self.fast = "tl_max"
            elif gamma > 0.0 and pw.is_potts and nonneg:
                self.fast = "potts_lse"
            else:
                idx = torch.arange(L, device=pw.weight.device, dtype=dtype)
                self.dist = (idx[:, None] - idx[None, :]).abs().clamp(max=float(pw.truncation))
        self.idx = torch.arange(L, device=(pw.tables if pw.tables is not None else pw.weight).device)

    # -- dense view of one step -------------------------------------------------------
    def _table(self, k: int) -> torch.Tensor:
        pw = self.pw
        if self.kind == "dense":
            return pw.tables[:, k]
        if self.kind == "weighted":
            return pw.weight[:, k, None, None] * pw.tables
        return -pw.weight[:, k, None, None] * self.dist

    def _t(self, x: torch.Tensor, k: int, reverse: bool) -> torch.Tensor:
        tab = self._table(k)
        return tab + x[:, None, :] if reverse else x[:, :, None] + tab

    # -- forward ---------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, k: int, reverse: bool) -> torch.Tensor:
        if self.fast == "tl_max":
            return self._tl_max(x, k)[0]
        if self.fast == "potts_lse":
            return self._potts_lse(x, k)
        return _smax(self._t(x, k, reverse), self.gamma, dim=2 if reverse else 1)

    def _tl_max(self, x: torch.Tensor, k: int):
        w = self.pw.weight[:, k, None]  # [C, 1]
        pos = self.idx.to(x.dtype)
        a_vals, a_idx = torch.cummax(x + w * pos, dim=1)
        left = a_vals - w * pos
        b_vals, b_idx = torch.cummax((x - w * pos).flip(1), dim=1)
        right = b_vals.flip(1) + w * pos
        b_idx = (self.L - 1) - b_idx.flip(1)
        top, top_idx = x.max(dim=1, keepdim=True)
        trunc = (top - w * float(self.pw.truncation)).expand_as(x)
        use_right = right > left
        m = torch.where(use_right, right, left)
        arg = torch.where(use_right, b_idx, a_idx)
        use_trunc = trunc > m
        m = torch.where(use_trunc, trunc, m)
        arg = torch.where(use_trunc, top_idx.expand_as(x), arg)
        return m, arg

    def _potts_lse(self, x: torch.Tensor, k: int) -> torch.Tensor:
        # smax_a x(a) - w [a != c] = g * logaddexp(x(c)/g + log(1 - e^{-w/g}), (smax(x) - w)/g),
        # written in the log domain so that nothing underflows for large w / g
        g = self.gamma
        w = self.pw.weight[:, k, None]
        total = _smax(x, g, dim=1)[:, None]
        return g * torch.logaddexp(x / g + torch.log1p(-torch.exp(-w / g)), (total - w) / g)

    # -- backward --------------------------------------------------------------------------
    def vjp(self, x, m, dm, k, reverse, grads):
        """Return ``dx`` for ``m = step(x)`` given ``dm``; add pairwise gradients into ``grads``."""
        if self.fast == "tl_max":
            _, arg = self._tl_max(x, k)
            dx = torch.zeros_like(x).scatter_add_(1, arg, dm)
            dist = (arg - self.idx).abs().to(x.dtype).clamp(max=float(self.pw.truncation))
            grads["weight"][:, k] -= (dm * dist).sum(dim=1)
            return dx
        if self.fast == "potts_lse":
            return self._potts_vjp(x, m, dm, k, grads)
        dim = 2 if reverse else 1
        t = self._t(x, k, reverse)
        dt = _weights(t, m, self.gamma, dim) * dm.unsqueeze(dim)
        dx = dt.sum(dim=1 if reverse else 2)
        if self.kind == "dense":
            grads["tables"][:, k] += dt
        elif self.kind == "weighted":
            grads["weight"][:, k] += (dt * self.pw.tables).sum(dim=(1, 2))
            grads["tables"] += self.pw.weight[:, k, None, None] * dt
        else:
            grads["weight"][:, k] -= (dt * self.dist).sum(dim=(1, 2))
        return dx

    def _potts_vjp(self, x, m, dm, k, grads):
        g = self.gamma
        w = self.pw.weight[:, k, None]
        ew = torch.exp(-w / g)
        p_same = _exp((x - m) / g)  # P(a = c | c)
        mmin = m.amin(dim=1, keepdim=True)
        # Σ_c dm(c) P(a | c) for a != c, written stably (see module docs of the chain kernels)
        s = (dm * _exp((mmin - m) / g)).sum(dim=1, keepdim=True)
        other = _exp((x - w - mmin) / g) * s - dm * p_same * ew
        dx = other + dm * p_same
        grads["weight"][:, k] -= (dm * (1.0 - p_same)).sum(dim=1)
        return dx


class _ChainMarginals(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary, tables, weight, lengths, gamma, kind, truncation):
        C, n, L = unary.shape
        pw = ChainPairwise(kind, tables=tables, weight=weight, truncation=truncation)
        step = _Step(pw, gamma, L, unary.dtype)
        u = unary.detach().transpose(0, 1)  # [n, C, L] view
        valid = (torch.arange(n, device=unary.device)[:, None] < lengths[None, :])  # [n, C]
        f = unary.new_zeros(n, C, L)
        graw = unary.new_zeros(n, C, L)
        g = unary.new_zeros(n, C, L)
        for k in range(n - 1):
            f[k + 1] = step(u[k] + f[k], k, reverse=False)
            j = n - 2 - k
            graw[j] = step(u[j + 1] + g[j + 1], j, reverse=True)
            g[j] = graw[j] * valid[j + 1, :, None]
        marg = (u + f + g) * valid[:, :, None]
        value = _smax(u[0] + g[0], gamma, dim=1)
        ctx.save_for_backward(unary, tables, weight, lengths, f, graw, valid)
        ctx.gamma, ctx.kind, ctx.truncation = gamma, kind, truncation
        return marg.transpose(0, 1).contiguous(), value

    @staticmethod
    def backward(ctx, d_marg, d_value):
        unary, tables, weight, lengths, f, graw, valid = ctx.saved_tensors
        gamma = ctx.gamma
        C, n, L = unary.shape
        pw = ChainPairwise(ctx.kind, tables=tables, weight=weight, truncation=ctx.truncation)
        step = _Step(pw, gamma, L, unary.dtype)
        u = unary.transpose(0, 1)
        g = graw.clone()
        g[: n - 1] *= valid[1:, :, None]
        grads = {}
        if tables is not None:
            grads["tables"] = torch.zeros(tables.shape, dtype=tables.dtype, device=tables.device)
        if weight is not None:
            grads["weight"] = torch.zeros(weight.shape, dtype=weight.dtype, device=weight.device)
        dm = (d_marg.transpose(0, 1) * valid[:, :, None]) if d_marg is not None else unary.new_zeros(n, C, L)
        du = dm.clone()
        df = dm.clone()
        dg = dm.clone()
        if d_value is not None:
            x0 = u[0] + g[0]
            p0 = _weights(x0, _smax(x0, gamma, dim=1), gamma, dim=1) * d_value[:, None]
            du[0] += p0
            dg[0] += p0
        # g recursion: g_j = valid_{j+1} * step(u_{j+1} + g_{j+1}, j, reverse); dg_j complete in increasing j
        for j in range(n - 1):
            dmj = dg[j] * valid[j + 1, :, None]
            dx = step.vjp(u[j + 1] + g[j + 1], graw[j], dmj, j, True, grads)
            du[j + 1] += dx
            dg[j + 1] += dx
        # f recursion: f_{k+1} = step(u_k + f_k, k); df_{k+1} complete in decreasing k
        for k in range(n - 2, -1, -1):
            dx = step.vjp(u[k] + f[k], f[k + 1], df[k + 1], k, False, grads)
            du[k] += dx
            df[k] += dx
        d_unary = du.transpose(0, 1).contiguous().to(unary.dtype)
        d_tables = grads.get("tables") if ctx.needs_input_grad[1] else None
        d_weight = grads.get("weight") if ctx.needs_input_grad[2] else None
        return d_unary, d_tables, d_weight, None, None, None, None


def chain_marginals_torch(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of chains; see :func:`crfkit.ops.chain.chain_marginals`.

    Args:
        unary: ``[C, n, L]``; pairwise: :class:`ChainPairwise`; lengths: ``[C]`` long;
        gamma: ``0`` (max) or ``> 0`` (smoothed max).

    Returns:
        ``marginals [C, n, L]`` (zero on padding), ``value [C]``.
    """
    gamma = float(gamma)
    return _ChainMarginals.apply(
        unary, pairwise.tables, pairwise.weight, lengths, gamma, pairwise.kind, pairwise.truncation
    )


@torch.no_grad()
def chain_values_torch(
    unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor, gamma: float
) -> torch.Tensor:
    """Only the (smoothed) max of each chain, ``[C]``: one pass of messages, no marginals, no grad."""
    C, n, L = unary.shape
    step = _Step(pairwise, float(gamma), L, unary.dtype)
    u = unary.transpose(0, 1)
    valid = torch.arange(n, device=unary.device)[:, None] < lengths[None, :]
    g = unary.new_zeros(C, L)
    for j in range(n - 2, -1, -1):
        g = step(u[j + 1] + g, j, reverse=True) * valid[j + 1, :, None]
    return _smax(u[0] + g, float(gamma), dim=1)


@torch.no_grad()
def chain_viterbi_torch(unary: torch.Tensor, pairwise: ChainPairwise, lengths: torch.Tensor) -> torch.Tensor:
    """A maximising labelling of each chain, ``[C, n]`` long (``0`` on padding)."""
    C, n, L = unary.shape
    step = _Step(pairwise, 0.0, L, unary.dtype)
    u = unary.transpose(0, 1)
    valid = torch.arange(n, device=unary.device)[:, None] < lengths[None, :]
    g = unary.new_zeros(n, C, L)
    for j in range(n - 2, -1, -1):
        g[j] = step(u[j + 1] + g[j + 1], j, reverse=True) * valid[j + 1, :, None]
    labels = torch.zeros(n, C, dtype=torch.long, device=unary.device)
    labels[0] = (u[0] + g[0]).argmax(dim=1)
    for k in range(n - 1):
        if pairwise.kind == "dense":
            row = pairwise.tables[:, k].gather(1, labels[k][:, None, None].expand(C, 1, L)).squeeze(1)
        elif pairwise.kind == "weighted":
            rows = pairwise.tables.gather(1, labels[k][:, None, None].expand(C, 1, L)).squeeze(1)
            row = pairwise.weight[:, k, None] * rows
        elif pairwise.kind == "truncated_linear":
            dist = (labels[k][:, None] - torch.arange(L, device=unary.device)).abs().to(unary.dtype)
            row = -pairwise.weight[:, k, None] * dist.clamp(max=float(pairwise.truncation))
        nxt = (row + u[k + 1] + g[k + 1]).argmax(dim=1)
        labels[k + 1] = torch.where(valid[k + 1], nxt, torch.zeros_like(nxt))
    return labels.transpose(0, 1).contiguous()
