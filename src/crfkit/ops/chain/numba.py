"""Compiled CPU chain kernels (numba): values, marginals, Viterbi and the backward.

Same operation, signatures and semantics as :mod:`crfkit.ops.chain.torch` (see its docstring
for the message recursions); here every chain runs its own sequential dynamic program in
compiled code, ``prange`` over chains, no allocation inside the parallel loop (the
``L``-vector scratch of every chain is allocated once, outside).

Public functions (CPU tensors, float32 or float64)::

    marginals [C, n, L], value [C] = chain_marginals_numba(unary [C, n, L], pairwise, lengths [C], gamma)
    value [C]                      = chain_values_numba(unary, pairwise, lengths, gamma)
    labels [C, n] (long)           = chain_viterbi_numba(unary, pairwise, lengths)

``chain_marginals_numba`` is differentiable with respect to ``unary`` and the pairwise tensors
(``tables`` and ``weight``; the shared ``[C, L, L]`` table of the weighted form too). Its
forward saves only the ``L``-vectors of messages (``f`` and ``g``, ``[C, n, L]`` each); the
backward recomputes the soft-max (``gamma > 0``) or one-hot arg-max (``gamma == 0``, ties as
:mod:`.torch`: first maximiser of a table row, the distance transform's own choice on the
truncated-linear fast path) weights of every step.

Pairwise forms (read through :func:`_unpack`, the one place that knows ``ChainPairwise``):

- dense per-edge tables ``[C, n-1, L, L]`` and weighted (``weight [C, n-1]`` x ``tables [C, L, L]``,
  never expanded per edge): ``O(L²)`` per step;
- truncated linear / Potts ``-w min(|a - b|, T)``: ``O(L)`` per step for max with ``w >= 0`` (the
  distance transform: two passes, capped at ``max(x) - w T``) and for log-sum-exp Potts
  (``T <= 1``, ``w >= 0``; closed form in the log domain); otherwise (a negative weight anywhere,
  or log-sum-exp with ``T > 1``) the ``O(L²)`` loop over the distance table. The choice is made
  once per call for all chains, as in :mod:`.torch`.

Threads: numba's own pool, set before every call to ``CRFKIT_NUM_THREADS`` when it is set (capped
at numba's pool size, ``NUMBA_NUM_THREADS``), otherwise **1**; torch's thread count is put back
after every kernel (numba's OpenMP layer shares it). On a shared 2-core machine one
thread is never the slow choice (oversubscription made torch's default threads 17x slower than
one); the chains are independent, so ``CRFKIT_NUM_THREADS=2`` speeds up an idle 2-core machine
(see ``benchmarks/bench_chain.py``, which measures 1 vs 2 threads).

Compilation: ``cache=True`` (numba's on-disk cache next to this file, or ``NUMBA_CACHE_DIR``);
two kernels (forward, backward) plus one small Viterbi-free helper, each specialised for float32
and float64 only: every flag (form, fast path, mode, semiring) and ``gamma`` are run-time
arguments, so no new specialisation appears per setting.

If numba cannot be imported this module still imports, with ``AVAILABLE = False``; calling a
kernel then raises ``RuntimeError`` (the dispatcher falls back to the torch path).
"""

from __future__ import annotations

import math
import os

import numpy as np
import torch

from ..._validation import CRFTypeError, CRFValueError
from ...models.chain_pairwise import DISTANCE_TRANSFORM, POTTS_CLOSED_FORM

try:  # pragma: no cover - depends on the environment
    import numba
    from llvmlite import ir as _ir
    from numba import njit, prange
    from numba import types as _types
    from numba.extending import intrinsic as _intrinsic

    AVAILABLE = True
except Exception:  # pragma: no cover - numba missing or broken
    numba = None
    AVAILABLE = False
    prange = range

    def njit(*args, **kwargs):
        if args and callable(args[0]):
            return args[0]
        return lambda f: f

    def _intrinsic(f):
        return f


__all__ = [
    "AVAILABLE",
    "chain_marginals_numba",
    "chain_values_numba",
    "chain_viterbi_numba",
    "num_threads",
]

# pairwise forms and fast paths (run-time codes of the kernels)
DENSE, WEIGHTED, TRUNCATED = 0, 1, 2
SLOW, TL_MAX, POTTS_LSE = 0, 1, 2
# forward modes
VALUES, MARGINALS, VITERBI, MARGINALS_NOGRAD = 0, 1, 2, 3

_JIT = dict(cache=True, fastmath=False, nogil=True)
_PJIT = dict(parallel=True, cache=True, fastmath=False, nogil=True)


def num_threads() -> int:
    """Threads the kernels use: ``CRFKIT_NUM_THREADS`` (capped at numba's pool size) or 1."""
    if not AVAILABLE:
        return 1
    raw = os.environ.get("CRFKIT_NUM_THREADS", "").strip()
    try:
        want = int(raw) if raw else 1
    except ValueError:
        raise CRFValueError(f"expected CRFKIT_NUM_THREADS to be a positive integer, got {raw!r}") from None
    return max(1, min(want, numba.config.NUMBA_NUM_THREADS))


# ---------------------------------------------------------------------------------------------
# adapter: the only place that reads ChainPairwise
# ---------------------------------------------------------------------------------------------


def _unpack(pairwise) -> tuple[int, torch.Tensor | None, torch.Tensor | None, float]:
    """``pairwise`` -> ``(form, tables, weight, truncation)``.

    ``form``: :data:`DENSE` (``tables [C, n-1, L, L]``, ``weight None``), :data:`WEIGHTED`
    (``tables [C, L, L]``, ``weight [C, n-1]``) or :data:`TRUNCATED` (``tables None``,
    ``weight [C, n-1]``, ``truncation`` a float). Other attributes are not read.
    """
    kind = getattr(pairwise, "kind", None)
    if kind == "dense":
        return DENSE, pairwise.tables, None, 0.0
    if kind == "weighted":
        return WEIGHTED, pairwise.tables, pairwise.weight, 0.0
    if kind == "truncated_linear":
        return TRUNCATED, None, pairwise.weight, float(pairwise.truncation)
    raise CRFTypeError(f"expected a ChainPairwise (dense, weighted or truncated_linear), got {pairwise!r}")


# ---------------------------------------------------------------------------------------------
# exp that LLVM can vectorise (libm's exp is an opaque call: one element at a time)
# ---------------------------------------------------------------------------------------------

_ROUND = 6755399441055744.0  # 1.5 * 2**52: adding it rounds a float64 of magnitude < 2**51 to an integer
_LOG2E = 1.4426950408889634
_LN2_HI = 0.693147180369123816490  # ln 2 split in two (Cody-Waite): k * _LN2_HI is exact for |k| < 2**11
_LN2_LO = 1.90821492927058770002e-10


@_intrinsic
def _two_to(typingctx, t):
    """``2**k`` for ``t = k + _ROUND`` (a float64 holding the integer ``k`` in its low mantissa bits):
    a bit shift into the exponent field; valid for ``-1022 <= k <= 1023``."""
    sig = _types.float64(_types.float64)

    def codegen(context, builder, signature, args):
        i64 = _ir.IntType(64)
        bits = builder.bitcast(args[0], i64)
        e = builder.sub(bits, _ir.Constant(i64, 0x4338000000000000 - 1023))  # k + 1023
        return builder.bitcast(builder.shl(e, _ir.Constant(i64, 52)), _ir.DoubleType())

    return sig, codegen


@njit(inline="always", **_JIT)
def _exp(z):
    """``exp(z)`` in float64 for ``-708 <= z <= 0`` (callers clamp at the dtype's floor), relative error
    below 3e-16: ``z = k ln2 + r`` with ``|r| <= ln2 / 2``, Taylor polynomial of degree 13 in ``r``
    (remainder ``< r^14 / 14! < 5e-18``), times ``2**k``. Only arithmetic and bit casts, so loops of
    it vectorise (4 float64 lanes with AVX2); 4-5x faster than ``math.exp`` in the step loops."""
    z = float(z)
    t = z * _LOG2E + _ROUND
    k = t - _ROUND
    r = (z - k * _LN2_HI) - k * _LN2_LO
    p = 1.0 / 6227020800.0
    p = p * r + 1.0 / 479001600.0
    p = p * r + 1.0 / 39916800.0
    p = p * r + 1.0 / 3628800.0
    p = p * r + 1.0 / 362880.0
    p = p * r + 1.0 / 40320.0
    p = p * r + 1.0 / 5040.0
    p = p * r + 1.0 / 720.0
    p = p * r + 1.0 / 120.0
    p = p * r + 1.0 / 24.0
    p = p * r + 1.0 / 6.0
    p = p * r + 0.5
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _two_to(t)


# ---------------------------------------------------------------------------------------------
# per-step kernels (one chain, one edge); tab [L, L] and scale s: phi(a, b) = s * tab[a, b]
# ---------------------------------------------------------------------------------------------


@njit(**_JIT)
def _smax(x, L, prm):
    """(Smoothed) max of ``x[:L]``; ``prm = [gamma, 1/gamma, truncation, exp floor]``."""
    mx = x[0]
    for a in range(1, L):
        if x[a] > mx:
            mx = x[a]
    if prm[0] == 0.0:
        return mx
    s = x[0] * 0
    for a in range(L):
        s += math.exp(max((x[a] - mx) * prm[1], prm[3]))
    return mx + prm[0] * math.log(s)


@njit(**_JIT)
def _argmax(x, L):
    best = 0
    for a in range(1, L):
        if x[a] > x[best]:
            best = a
    return best


@njit(**_JIT)
def _dt_max(x, out, arg, w, prm, pos, L, lv, li):
    """Truncated-linear max step (``w >= 0``) by the distance transform, with the arg-max of
    every output label; the same tie rules as ``torch.py``'s ``_dt_argmax``, and like it the value
    re-read at the arg-max (exact when ``w`` is large against the scores)."""
    run, rx, rp, ri = x[0], x[0], pos[0], 0  # the running max, and x and pos at its arg-max
    for a in range(L):
        xa, pa = x[a], pos[a]
        v = xa + w * pa
        if a == 0 or v >= run:
            run, rx, rp, ri = v, xa, pa, a
        lv[a] = rx - w * (pa - rp)  # re-read at the arg-max: run - w·pos loses w·eps
        li[a] = ri
    top_i = _argmax(x, L)
    trunc = x[top_i] - w * prm[2]
    for a in range(L - 1, -1, -1):
        xa, pa = x[a], pos[a]
        v = xa - w * pa
        if a == L - 1 or v >= run:
            run, rx, rp, ri = v, xa, pa, a
        rv = rx - w * (rp - pa)
        m, j = lv[a], li[a]
        if rv > m:
            m, j = rv, ri
        if trunc > m:
            m, j = trunc, top_i
        out[a] = m
        arg[a] = j


@njit(**_JIT)
def _dt_max_values(x, out, w, prm, pos, L, lv):
    """:func:`_dt_max` without the arg-max bookkeeping (the forward messages): the same
    comparisons, so the same values bit for bit."""
    run, rx, rp = x[0], x[0], pos[0]  # x and pos at the running arg-max kept in registers (no
    top = x[0]                         # re-read through an index: 1.8x faster, same values)
    for a in range(L):
        xa, pa = x[a], pos[a]
        v = xa + w * pa
        if a == 0 or v >= run:
            run, rx, rp = v, xa, pa
        lv[a] = rx - w * (pa - rp)
        if xa > top:
            top = xa
    trunc = top - w * prm[2]
    for a in range(L - 1, -1, -1):
        xa, pa = x[a], pos[a]
        v = xa - w * pa
        if a == L - 1 or v >= run:
            run, rx, rp = v, xa, pa
        m = lv[a]
        rv = rx - w * (rp - pa)
        if rv > m:
            m = rv
        if trunc > m:
            m = trunc
        out[a] = m


@njit(**_JIT)
def _potts_lse(x, out, w, prm, L):
    """Log-sum-exp Potts step (``w >= 0``): ``g logaddexp(x/g + log(1 - e^{-w/g}), (smax(x) - w)/g)``."""
    g, ig = prm[0], prm[1]
    total = _smax(x, L, prm)
    c0 = math.log1p(-math.exp(-w * ig))
    b = (total - w) * ig
    for a in range(L):
        t = x[a] * ig + c0
        hi = max(t, b)
        out[a] = g * (hi + math.log1p(math.exp(-abs(t - b))))


@njit(**_JIT)
def _dense_step(x, out, tab, s, rev, prm, L, sc):
    """``out(b) = smax_a x(a) + s tab[a, b]`` (``rev``: ``out(a) = smax_b s tab[a, b] + x(b)``);
    ``sc [8, L]`` scratch (rows 3 and 6). Inner loops run over contiguous ``b`` and are elementwise
    (the reductions over ``b`` are separate loops), so they vectorise."""
    ig, fl = prm[1], prm[3]
    acc, e = sc[3], sc[6]
    if rev:
        for a in range(L):
            mx = s * tab[a, 0] + x[0]
            for b in range(1, L):
                mx = max(mx, s * tab[a, b] + x[b])
            if prm[0] != 0.0:
                for b in range(L):
                    e[b] = _exp(max((s * tab[a, b] + x[b] - mx) * ig, fl))
                tot = 0.0
                for b in range(L):
                    tot += e[b]
                mx = mx + prm[0] * math.log(tot)
            out[a] = mx
        return
    for b in range(L):
        out[b] = x[0] + s * tab[0, b]
    for a in range(1, L):
        xa = x[a]
        for b in range(L):
            out[b] = max(out[b], xa + s * tab[a, b])
    if prm[0] == 0.0:
        return
    for b in range(L):
        acc[b] = 0
    for a in range(L):
        xa = x[a]
        for b in range(L):
            acc[b] += _exp(max((xa + s * tab[a, b] - out[b]) * ig, fl))
    for b in range(L):
        out[b] = out[b] + prm[0] * math.log(acc[b])


@njit(**_JIT)
def _step(fast, x, out, tab, s, w, rev, prm, pos, L, sc, isc):
    """One message step of the chain DP (see :func:`_dense_step`); ``w`` the edge's weight
    (truncated-linear fast paths), ``sc [4, L]`` / ``isc [2, L]`` scratch."""
    if fast == TL_MAX:
        _dt_max_values(x, out, w, prm, pos, L, sc[3])
    elif fast == POTTS_LSE:
        _potts_lse(x, out, w, prm, L)
    else:
        _dense_step(x, out, tab, s, rev, prm, L, sc)


@njit(**_JIT)
def _dense_vjp(x, mv, dm, dx, tab, s, rev, prm, L, dtab, want_dtab, sc, iacc):
    """Vector-Jacobian product of :func:`_dense_step` (``mv`` its output): sets ``dx``, adds
    ``s * dt`` into ``dtab`` when ``want_dtab``; returns ``sum dt * tab`` (the scale's gradient).
    ``sc [8, L]`` scratch (rows 3, 6, 7), ``iacc [L]``."""
    ig, fl = prm[1], prm[3]
    acc, e, dsv = sc[3], sc[6], sc[7]
    for a in range(L):
        dx[a] = 0
    if prm[0] == 0.0:
        return _onehot_vjp(x, dm, dx, tab, s, rev, L, dtab, want_dtab, acc, iacc)
    for b in range(L):
        dsv[b] = 0
    for a in range(L):
        xa, dma = x[a], dm[a]
        if rev:  # dt(a, b) = exp((s tab[a, b] + x(b) - mv(a)) / g) dm(a)
            ma = mv[a]
            for b in range(L):
                e[b] = _exp(max((s * tab[a, b] + x[b] - ma) * ig, fl)) * dma
            for b in range(L):
                dx[b] += e[b]
        else:  # dt(a, b) = exp((x(a) + s tab[a, b] - mv(b)) / g) dm(b)
            for b in range(L):
                e[b] = _exp(max((xa + s * tab[a, b] - mv[b]) * ig, fl)) * dm[b]
            tot = 0.0
            for b in range(L):
                tot += e[b]
            dx[a] = tot
        for b in range(L):
            dsv[b] += e[b] * tab[a, b]
        if want_dtab:
            for b in range(L):
                dtab[a, b] += s * e[b]
    ds = 0.0
    for b in range(L):
        ds += dsv[b]
    return ds


@njit(**_JIT)
def _onehot_vjp(x, dm, dx, tab, s, rev, L, dtab, want_dtab, acc, iacc):
    """:func:`_dense_vjp` at ``gamma = 0``: the one-hot weight of the first maximiser (as torch's argmax)."""
    ds = 0.0
    if rev:  # out(a) = max_b s tab[a, b] + x(b)
        for a in range(L):
            best = s * tab[a, 0] + x[0]
            j = 0
            for b in range(1, L):
                t = s * tab[a, b] + x[b]
                if t > best:
                    best, j = t, b
            dx[j] += dm[a]
            ds += dm[a] * tab[a, j]
            if want_dtab:
                dtab[a, j] += s * dm[a]
        return ds
    for b in range(L):  # out(b) = max_a x(a) + s tab[a, b]
        acc[b] = x[0] + s * tab[0, b]
        iacc[b] = 0
    for a in range(1, L):
        xa = x[a]
        for b in range(L):
            t = xa + s * tab[a, b]
            if t > acc[b]:
                acc[b] = t
                iacc[b] = a
    for b in range(L):
        j = iacc[b]
        dx[j] += dm[b]
        ds += dm[b] * tab[j, b]
        if want_dtab:
            dtab[j, b] += s * dm[b]
    return ds


@njit(**_JIT)
def _vjp(fast, x, mv, dm, dx, tab, s, w, rev, prm, pos, L, dtab, want_dtab, sc, isc):
    """``dx`` for ``mv = step(x)`` given ``dm``; returns the gradient of the step's scale ``s``
    (slow path) or of its weight ``w`` (fast paths), and adds ``dtab`` (see :func:`_dense_vjp`)."""
    if fast == TL_MAX:
        out, arg = sc[2], isc[0]
        _dt_max(x, out, arg, w, prm, pos, L, sc[3], isc[1])
        dw = x[0] * 0
        for a in range(L):
            dx[a] = 0
        for c in range(L):
            j = arg[c]
            dx[j] += dm[c]
            dw -= dm[c] * min(abs(pos[j] - pos[c]), prm[2])
        return dw
    if fast == POTTS_LSE:
        ig, fl = prm[1], prm[3]
        ew = math.exp(-w * ig)
        mmin = mv[0]
        for c in range(1, L):
            if mv[c] < mmin:
                mmin = mv[c]
        tot = x[0] * 0
        for c in range(L):
            tot += dm[c] * math.exp(max((mmin - mv[c]) * ig, fl))
        dw = x[0] * 0
        for a in range(L):
            p_same = math.exp(max((x[a] - mv[a]) * ig, fl))
            other = math.exp(max((x[a] - w - mmin) * ig, fl)) * tot - dm[a] * p_same * ew
            dx[a] = other + dm[a] * p_same
            dw -= dm[a] * (1.0 - p_same)
        return dw
    return _dense_vjp(x, mv, dm, dx, tab, s, rev, prm, L, dtab, want_dtab, sc, isc[1])


# ---------------------------------------------------------------------------------------------
# per-chain programs and the parallel kernels
# ---------------------------------------------------------------------------------------------


@njit(**_JIT)
def _edge(form, tabs, weight, c, k):
    """``(table [L, L], scale, weight)`` of edge ``k`` of chain ``c``: ``phi = scale * table``."""
    if form == DENSE:
        return tabs[c, k], weight[c, k], weight[c, k]
    if form == WEIGHTED:
        return tabs[c, 0], weight[c, k], weight[c, k]
    return tabs[0, 0], -weight[c, k], weight[c, k]


@njit(**_JIT)
def _chain_forward(mode, form, fast, c, unary, tabs, weight, prm, pos, m, f, gc, marg, value, labels, sc, isc):
    """Forward program of chain ``c`` with ``m`` valid positions, its backward messages in ``gc
    [n, L]``; see :func:`_forward`."""
    L = unary.shape[2]
    u = unary[c]
    x = sc[0]
    if mode == VALUES:
        gv = sc[1]
        for a in range(L):
            gv[a] = 0
        for j in range(m - 2, -1, -1):
            tab, s, w = _edge(form, tabs, weight, c, j)
            for a in range(L):
                x[a] = u[j + 1, a] + gv[a]
            _step(fast, x, gv, tab, s, w, True, prm, pos, L, sc, isc)
        for a in range(L):
            x[a] = u[0, a] + gv[a]
        value[c] = _smax(x, L, prm)
        return
    for a in range(L):  # the last backward message (``g`` may be uninitialised memory)
        gc[m - 1, a] = 0
    for j in range(m - 2, -1, -1):
        tab, s, w = _edge(form, tabs, weight, c, j)
        for a in range(L):
            x[a] = u[j + 1, a] + gc[j + 1, a]
        _step(fast, x, gc[j], tab, s, w, True, prm, pos, L, sc, isc)
    for a in range(L):
        x[a] = u[0, a] + gc[0, a]
    value[c] = _smax(x, L, prm)
    if mode == VITERBI:
        lab = _argmax(x, L)
        labels[c, 0] = lab
        for k in range(m - 1):
            tab, s, w = _edge(form, tabs, weight, c, k)
            for b in range(L):
                x[b] = s * tab[lab, b] + u[k + 1, b] + gc[k + 1, b]
            lab = _argmax(x, L)
            labels[c, k + 1] = lab
        return
    if mode == MARGINALS_NOGRAD:
        _marginals_nograd(form, fast, c, u, gc, tabs, weight, prm, pos, m, marg[c], sc, isc)
        return
    fc = f[c]
    for k in range(m - 1):
        tab, s, w = _edge(form, tabs, weight, c, k)
        for a in range(L):
            x[a] = u[k, a] + fc[k, a]
        _step(fast, x, fc[k + 1], tab, s, w, False, prm, pos, L, sc, isc)
    for k in range(m):
        for a in range(L):
            marg[c, k, a] = u[k, a] + fc[k, a] + gc[k, a]


@njit(**_JIT)
def _marginals_nograd(form, fast, c, u, gc, tabs, weight, prm, pos, m, mc, sc, isc):
    """The forward messages of chain ``c`` as one ``L``-vector (nothing kept for a backward), each
    position's marginal written as soon as its message is known, padding set to zero; the same
    operations in the same order as the MARGINALS mode, so the same values bit for bit."""
    L = u.shape[1]
    x, fv, fn = sc[0], sc[4], sc[5]
    for a in range(L):
        fv[a] = 0
    for k in range(m):
        for a in range(L):
            mc[k, a] = u[k, a] + fv[a] + gc[k, a]
        if k < m - 1:
            tab, s, w = _edge(form, tabs, weight, c, k)
            for a in range(L):
                x[a] = u[k, a] + fv[a]
            _step(fast, x, fn, tab, s, w, False, prm, pos, L, sc, isc)
            fv, fn = fn, fv
    for k in range(m, mc.shape[0]):
        for a in range(L):
            mc[k, a] = 0


@njit(**_PJIT)
def _forward(mode, form, fast, unary, tabs, weight, prm, pos, lengths, f, g, marg, value, labels, sc, isc):
    """All chains in parallel. ``mode``: VALUES (``value`` only, one pass of messages), MARGINALS
    (``f``, ``g``, ``marg`` ``[C, n, L]`` and ``value``; arrays zero-initialised by the caller) or
    VITERBI (``labels [C, n]``) or MARGINALS_NOGRAD (``marg`` and ``value``; ``f`` unused). Outside
    MARGINALS, ``g`` is scratch ``[threads, n, L]`` (``[1, 0, 0]`` for VALUES) and no array needs
    initialising. Unused outputs may be empty arrays."""
    for c in prange(unary.shape[0]):
        # MARGINALS keeps every chain's g for the backward; VITERBI and MARGINALS_NOGRAD use it
        # within the chain's program only: one [n, L] scratch per thread (cache-resident)
        if mode == MARGINALS:
            gc = g[c]
        elif mode == VALUES:
            gc = g[0]
        else:
            gc = g[numba.get_thread_id()]
        _chain_forward(mode, form, fast, c, unary, tabs, weight, prm, pos, lengths[c],
                       f, gc, marg, value, labels, sc[c], isc[c])


@njit(**_JIT)
def _chain_backward(form, fast, c, unary, tabs, weight, prm, pos, m, f, g, dmarg, dvalue, du, dtabs, dw, want_dtab,
                    sc, isc):
    """Backward program of chain ``c`` (mirrors ``torch.py``'s ``_ChainMarginals.backward``)."""
    L = unary.shape[2]
    u, fc, gc, dM, duc = unary[c], f[c], g[c], dmarg[c], du[c]
    x, carry, dx, p = sc[0], sc[1], sc[4], sc[5]
    for k in range(m):
        for a in range(L):
            duc[k, a] = dM[k, a]
    # value = smax(u_0 + g_0)
    for a in range(L):
        x[a] = u[0, a] + gc[0, a]
    v = _smax(x, L, prm)
    if prm[0] == 0.0:
        for a in range(L):
            p[a] = 0
        p[_argmax(x, L)] = dvalue[c]
    else:
        for a in range(L):
            p[a] = math.exp(max((x[a] - v) * prm[1], prm[3])) * dvalue[c]
    for a in range(L):
        duc[0, a] += p[a]
        carry[a] = dM[0, a] + p[a]
    # g recursion, increasing j: g_j = step_rev(u_{j+1} + g_{j+1})
    for j in range(m - 1):
        tab, s, w = _edge(form, tabs, weight, c, j)
        dtab = dtabs[c, j] if form == DENSE else dtabs[c, 0]
        for a in range(L):
            x[a] = u[j + 1, a] + gc[j + 1, a]
        d = _vjp(fast, x, gc[j], carry, dx, tab, s, w, True, prm, pos, L, dtab, want_dtab, sc, isc)
        dw[c, j] += d if (form != TRUNCATED or fast != SLOW) else -d
        for a in range(L):
            duc[j + 1, a] += dx[a]
            carry[a] = dM[j + 1, a] + dx[a]
    # f recursion, decreasing k: f_{k+1} = step(u_k + f_k)
    for a in range(L):
        carry[a] = dM[m - 1, a]
    for k in range(m - 2, -1, -1):
        tab, s, w = _edge(form, tabs, weight, c, k)
        dtab = dtabs[c, k] if form == DENSE else dtabs[c, 0]
        for a in range(L):
            x[a] = u[k, a] + fc[k, a]
        d = _vjp(fast, x, fc[k + 1], carry, dx, tab, s, w, False, prm, pos, L, dtab, want_dtab, sc, isc)
        dw[c, k] += d if (form != TRUNCATED or fast != SLOW) else -d
        for a in range(L):
            duc[k, a] += dx[a]
            carry[a] = dM[k, a] + dx[a]


@njit(**_PJIT)
def _backward(form, fast, unary, tabs, weight, prm, pos, lengths, f, g, dmarg, dvalue, du, dtabs, dw, want_dtab,
              sc, isc):
    """Gradients of all chains in parallel: ``du [C, n, L]``, ``dtabs`` (like ``tabs``), ``dw [C, n-1]``
    (zero-initialised by the caller; every chain writes only its own rows)."""
    for c in prange(unary.shape[0]):
        _chain_backward(form, fast, c, unary, tabs, weight, prm, pos, lengths[c], f, g, dmarg, dvalue,
                        du, dtabs, dw, want_dtab, sc[c], isc[c])


# ---------------------------------------------------------------------------------------------
# launchers
# ---------------------------------------------------------------------------------------------


def _fast_code(pairwise, form: int, gamma: float, allow_sync: bool) -> int:
    """The kernels' code of the form's O(L) path (:meth:`ChainPairwise.fast_path`, the decision the
    torch path makes: a weight sign not known without a host read takes the tables when ``not
    allow_sync``), :data:`SLOW` for the table loop."""
    if form != TRUNCATED:
        return SLOW
    return {DISTANCE_TRANSFORM: TL_MAX, POTTS_CLOSED_FORM: POTTS_LSE}.get(pairwise.fast_path(gamma, allow_sync), SLOW)


class _threads:
    """Run a kernel on :func:`num_threads` numba threads, then give torch its own thread count back:
    numba's OpenMP threading layer shares the OpenMP runtime with torch, so setting numba's
    threads also set torch's (seen: torch at 3 threads came back at 1)."""

    def __enter__(self):
        self.torch_threads = torch.get_num_threads()
        numba.set_num_threads(num_threads())

    def __exit__(self, *exc):
        if torch.get_num_threads() != self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return False


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


class _Launch:
    """The numpy views, flags and scratch of one call (built on the host, no copies of contiguous
    inputs except the weighted table, made contiguous once, and the per-call ``[L, L]`` distance table)."""

    def __init__(self, unary, form, tables, weight, truncation, lengths, gamma, fast):
        if unary.device.type != "cpu":
            raise CRFValueError(f"expected CPU tensors for the numba chain kernels, got unary on {unary.device}")
        if unary.dtype not in (torch.float32, torch.float64):
            raise CRFTypeError(f"expected unary of dtype float32 or float64, got {unary.dtype}")
        if not AVAILABLE:
            raise RuntimeError("numba is not importable: use the torch chain implementation")
        C, n, L = unary.shape
        dt = unary.dtype
        self.C, self.n, self.L, self.dtype = C, n, L, dt
        self.form = form
        self.unary = _np(unary)
        self.lengths = _np(lengths.to(torch.int64))
        self.pos = np.arange(L, dtype=self.unary.dtype)
        m1 = max(n - 1, 1)
        if form == DENSE:
            self.tabs = _np(tables.to(dt))
            if n == 1:
                self.tabs = np.zeros((C, 1, L, L), dtype=self.unary.dtype)
            self.weight = np.ones((C, m1), dtype=self.unary.dtype)
        elif form == WEIGHTED:
            self.tabs = _np(tables.to(dt)).reshape(C, 1, L, L)
            self.weight = _np(weight.to(dt)) if n > 1 else np.zeros((C, 1), dtype=self.unary.dtype)
        else:
            idx = torch.arange(L, dtype=dt)
            dist = (idx[:, None] - idx[None, :]).abs().clamp(max=float(truncation))
            self.tabs = _np(dist).reshape(1, 1, L, L)
            self.weight = _np(weight.to(dt)) if n > 1 else np.zeros((C, 1), dtype=self.unary.dtype)
        self.fast = fast
        floor = -80.0 if dt == torch.float32 else -700.0
        inv = 1.0 / gamma if gamma > 0 else 0.0
        self.prm = np.array([gamma, inv, float(truncation), floor], dtype=self.unary.dtype)
        self.sc = np.zeros((C, 8, L), dtype=self.unary.dtype)
        self.isc = np.zeros((C, 2, L), dtype=np.int64)

    def empty3(self):
        return np.zeros((0, 0, 0), dtype=self.unary.dtype)

    def forward(self, mode, marg=None):
        C, n, L = self.C, self.n, self.L
        dt = self.unary.dtype
        # MARGINALS keeps f and g for the backward (zero on padding); the other modes write every
        # entry they read, so their arrays are left uninitialised
        g = (np.zeros((C, n, L), dt) if mode == MARGINALS else np.empty((1, 0, 0), dt) if mode == VALUES
             else np.empty((numba.config.NUMBA_NUM_THREADS, n, L), dt))
        f = np.zeros((C, n, L), dt) if mode == MARGINALS else self.empty3()
        if marg is None:
            marg = (np.zeros((C, n, L), dt) if mode == MARGINALS else np.empty((C, n, L), dt)
                    if mode == MARGINALS_NOGRAD else self.empty3())
        labels = np.zeros((C, n) if mode == VITERBI else (0, 0), dtype=np.int64)
        value = np.zeros(C, dtype=self.unary.dtype)
        with _threads():
            _forward(mode, self.form, self.fast, self.unary, self.tabs, self.weight, self.prm, self.pos,
                     self.lengths, f, g, marg, value, labels, self.sc, self.isc)
        return f, g, marg, value, labels


def _out_array(out: torch.Tensor | None, unary: torch.Tensor) -> np.ndarray | None:
    """``out``'s numpy view after checking it can hold the marginals of ``unary``."""
    if out is None:
        return None
    if out.shape != unary.shape or out.dtype != unary.dtype or out.device.type != "cpu" or not out.is_contiguous():
        raise CRFValueError(
            f"expected out to be a contiguous CPU tensor of shape {tuple(unary.shape)} and dtype {unary.dtype}, "
            f"got shape {tuple(out.shape)}, dtype {out.dtype} on {out.device}"
            + ("" if out.is_contiguous() else " (not contiguous)")
        )
    return out.detach().numpy()


class _ChainMarginalsNumba(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary, tables, weight, lengths, gamma, form, truncation, fast):
        launch = _Launch(unary, form, tables, weight, truncation, lengths, gamma, fast)
        f, g, marg, value, _ = launch.forward(MARGINALS)
        ctx.save_for_backward(unary, tables, weight, lengths, torch.from_numpy(f), torch.from_numpy(g))
        ctx.gamma, ctx.form, ctx.truncation, ctx.fast = gamma, form, truncation, fast
        return torch.from_numpy(marg), torch.from_numpy(value)

    @staticmethod
    def backward(ctx, d_marg, d_value):
        unary, tables, weight, lengths, f, g = ctx.saved_tensors
        form = ctx.form
        launch = _Launch(unary, form, tables, weight, ctx.truncation, lengths, ctx.gamma, ctx.fast)
        C, n, L = launch.C, launch.n, launch.L
        npdt = launch.unary.dtype
        dm = _np(d_marg.to(unary.dtype)) if d_marg is not None else np.zeros((C, n, L), dtype=npdt)
        dv = _np(d_value.to(unary.dtype)) if d_value is not None else np.zeros(C, dtype=npdt)
        du = np.zeros((C, n, L), dtype=npdt)
        want_dtab = form != TRUNCATED and ctx.needs_input_grad[1]
        dtabs = np.zeros(launch.tabs.shape if want_dtab else (C, 1, 1, 1), dtype=npdt)
        dw = np.zeros(launch.weight.shape, dtype=npdt)
        with _threads():
            _backward(form, launch.fast, launch.unary, launch.tabs, launch.weight, launch.prm, launch.pos,
                      launch.lengths, _np(f), _np(g), dm, dv, du, dtabs, dw, want_dtab, launch.sc, launch.isc)
        d_unary = torch.from_numpy(du)
        d_tables = d_weight = None
        if want_dtab:
            dt = torch.from_numpy(dtabs)
            dt = dt[:, : tables.shape[1]] if form == DENSE else dt.reshape(tables.shape)
            d_tables = dt.to(tables.dtype)
        if weight is not None and ctx.needs_input_grad[2]:
            d_weight = torch.from_numpy(dw[:, : weight.shape[1]]).to(weight.dtype)
        return d_unary, d_tables, d_weight, None, None, None, None, None


# ---------------------------------------------------------------------------------------------
# public functions
# ---------------------------------------------------------------------------------------------


def chain_marginals_numba(
    unary: torch.Tensor, pairwise, lengths: torch.Tensor, gamma: float, *, allow_sync: bool = True,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of chains; see :func:`crfkit.ops.chain.chain_marginals`.

    Args:
        unary: ``[C, n, L]`` float32/float64 on the CPU; pairwise: :class:`ChainPairwise`;
        lengths: ``[C]`` long, ``1 <= lengths <= n``; gamma: ``0`` (max) or ``> 0`` (smoothed max).
        allow_sync: may read the weights' sign to pick a fast path (``False``: a form whose sign
            is not known takes the exact table loop), as the torch path.
        out: a contiguous ``[C, n, L]`` CPU tensor of ``unary``'s dtype the marginals are written
            into (and returned) when no gradient is needed; ignored otherwise.

    Returns:
        ``marginals [C, n, L]`` (zero on padding), ``value [C]``; differentiable with respect to
        ``unary`` and the pairwise tensors.
    """
    form, tables, weight, truncation = _unpack(pairwise)
    gamma = float(gamma)
    fast = _fast_code(pairwise, form, gamma, allow_sync)
    tensors = (unary, tables, weight)
    if not (torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)):
        launch = _Launch(unary, form, tables, weight, truncation, lengths, gamma, fast)
        _, _, marg, value, _ = launch.forward(MARGINALS_NOGRAD, _out_array(out, unary))
        return (torch.from_numpy(marg) if out is None else out), torch.from_numpy(value)
    return _ChainMarginalsNumba.apply(unary, tables, weight, lengths, gamma, form, truncation, fast)


@torch.no_grad()
def chain_values_numba(
    unary: torch.Tensor, pairwise, lengths: torch.Tensor, gamma: float, *, allow_sync: bool = True
) -> torch.Tensor:
    """Only the (smoothed) max of each chain, ``[C]``: one pass of messages, no marginals, no grad."""
    form, tables, weight, truncation = _unpack(pairwise)
    gamma = float(gamma)
    launch = _Launch(unary, form, tables, weight, truncation, lengths, gamma,
                     _fast_code(pairwise, form, gamma, allow_sync))
    return torch.from_numpy(launch.forward(VALUES)[3])


@torch.no_grad()
def chain_viterbi_numba(
    unary: torch.Tensor, pairwise, lengths: torch.Tensor, *, allow_sync: bool = True
) -> torch.Tensor:
    """A maximising labelling of each chain, ``[C, n]`` long (``0`` on padding)."""
    form, tables, weight, truncation = _unpack(pairwise)
    launch = _Launch(unary, form, tables, weight, truncation, lengths, 0.0,
                     _fast_code(pairwise, form, 0.0, allow_sync))
    return torch.from_numpy(launch.forward(VITERBI)[4])
