"""Triton kernels for the chain operation (GPU; Triton's interpreter on the CPU for tests).

Same semantics as :func:`crfkit.ops.chain.reference.chain_marginals_reference`::

    marginals [C, n, L], value [C] = chain_marginals_triton(unary [C, n, L], pairwise,
                                                             lengths [C], gamma)

Messages (scores maximised; ``smax`` is ``max`` if ``gamma == 0``, else
``gamma * logsumexp(· / gamma)``)::

    f_0 = 0,      f_{k+1}(c) = smax_a  unary_k(a) + f_k(a) + phi_k(a, c)
    g_{m-1} = 0,  g_k(a)     = smax_c  phi_k(a, c) + unary_{k+1}(c) + g_{k+1}(c)
    marginal_k = unary_k + f_k + g_k  (k < m = lengths[c], zero after),  value = smax(marginal_0)

Layout of the work (the paper's Appendix B, Alg. 2 and 3): one program per group of
``BLOCK_C`` chains; the labels of a position are processed in parallel, in tiles of
``BLOCK_I x BLOCK_J`` label pairs for tables (so any ``L`` works: block sizes come from
``L``, bigger label sets loop over tiles with an online (log-sum-exp / arg-max)
reduction); the loop over chain positions runs inside the kernel. Both message
directions advance in the same loop. Accumulation is in float32 whatever the input dtype.

Memory: the forward saves only ``L``-vectors per position (``f`` and ``g``, float32
``[C, n, L]``; for ``gamma == 0`` also the arg-max indices ``[C, n, L]`` int32 instead of
the paper's stored weights). The backward recomputes the soft-max weights of every
step from them — ``w_f(a, c) = exp((unary_k(a) + f_k(a) + phi_k(a, c) - f_{k+1}(c)) / gamma)``,
the normaliser being the saved message — so it never stores ``L²`` per edge.

Backward (``F``, ``G``: adjoints of ``f`` and ``g``; ``dM'`` the upstream gradient of the
marginals with the value's gradient folded into position 0)::

    pass 1 (k = m-2 .. 0): F_{k+1} = dM_{k+1} + dx_{k+1},
                           dx_k(a) = Σ_c w_f(a, c) F_{k+1}(c)
    pass 2 (k = 0 .. m-2): G_0 = dM'_0,  G_{k+1} = dM_{k+1} + dy_{k+1},
                           dy_{k+1}(c) = Σ_a G_k(a) w_g(a, c)
                           dphi_k(a, c) = w_f(a, c) F_{k+1}(c) + G_k(a) w_g(a, c)
    d unary_k = dM'_k + dx_k + dy_k

O(L) paths (O(L) memory traffic per edge, no ``L x L`` table anywhere in memory):

- truncated linear (Potts included), ``gamma == 0``: the distance transform written as
  prefix maxima, ``max_a x(a) - w|a - c| = max(cummax_{a<=c}(x(a) + w a) - w c,
  cummax_{a>=c}(x(a) - w a) + w c)``, with the truncation ``max_a x(a) - w T`` as a third
  candidate (exact for ``w >= 0``; for ``w < 0`` only when ``T >= L - 1``: the launcher
  checks and falls back to tiles otherwise). Its backward uses the saved arg-max indices
  (O(L) memory; the scatter of the adjoint is done by a comparison tile in registers).
- Potts (``truncation <= 1``), ``gamma > 0``: the closed form
  ``smax_a x(a) - w[a != c] = M + gamma log(e_c + exp(-w/gamma) (S - e_c))`` with
  ``e_a = exp((x(a) - M) / gamma)``, ``S = Σ e_a`` (``S - e_c`` taken without cancellation
  at the arg-max; the two terms added in the log domain, so that ``w / gamma`` in the
  hundreds neither underflows nor overflows), and the matching closed-form backward
  (stable for ``w >= 0``: it is used when every weight is ``>= 0``, a host-side check as
  for the distance transform; otherwise tiles built on the fly).

The other truncated-linear cases (``gamma > 0`` with ``truncation > 1``; negative weights)
build their ``L x L`` tiles on the fly from ``weight`` (no ``L²`` memory either).

Tiers (house style): :func:`chain_marginals_triton` (validates) -> :class:`_ChainTriton`
(autograd; saves messages, casts gradients back to the input dtypes) ->
:func:`chain_forward` / :func:`chain_backward` launchers (allocate, pick the path and the
block sizes) -> ``@triton.jit`` kernels. Under ``torch.compile`` the public function goes
through the custom op of ``crfkit.ops.chain.custom_op`` instead (no graph break).

``AVAILABLE`` is true when Triton imports and either CUDA is available or
``TRITON_INTERPRET=1`` was set before this module was imported.
"""

from __future__ import annotations

import os

import torch

from ..._validation import CRFValueError
from ...decomposition.chains import ChainPairwise, DenseChainPairwise
from ...models.chain_pairwise import DISTANCE_TRANSFORM, POTTS_CLOSED_FORM
from .checks import check_chain_inputs
from .semiring import smax, smax_weights

__all__ = ["AVAILABLE", "INTERPRET", "chain_marginals_triton", "chain_forward", "chain_backward", "as_kernel_form"]

INTERPRET = os.environ.get("TRITON_INTERPRET", "0").strip() not in ("", "0")

try:  # Triton is an optional accelerator (extra ``gpu``)
    import triton
    import triton.language as tl

    _HAS_TRITON = True
except Exception:  # pragma: no cover - depends on the machine
    triton = None
    tl = None
    _HAS_TRITON = False

AVAILABLE: bool = bool(_HAS_TRITON and (torch.cuda.is_available() or INTERPRET))

_KIND_CODE = {"dense": 0, "weighted": 1, "truncated_linear": 2}

if _HAS_TRITON:
    # ---------------------------------------------------------------------------------------
    # helpers (inlined into the kernels)
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _argmax_combine(v1, i1, v2, i2):
        take2 = v2 > v1
        return tl.where(take2, v2, v1), tl.where(take2, i2, i1)

    @triton.jit
    def _phi_tile(PHI, WGT, c64, cm3, k, a3, b3, m3, s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, trunc, KIND: tl.constexpr):
        """``phi_k(a, b)`` on a tile: ``c64 [BC,1,1]``, ``a3 [1,BI,1]``, ``b3 [1,1,BJ]``; fp32."""
        if KIND == 0:
            p = tl.load(PHI + c64 * s_pc + k * s_pk + a3 * s_pa + b3 * s_pb, mask=m3, other=0.0)
            p = p.to(tl.float32)
        elif KIND == 1:
            w = tl.load(WGT + c64 * s_wc + k * s_wk, mask=cm3, other=0.0).to(tl.float32)
            t = tl.load(PHI + c64 * s_pc + a3 * s_pa + b3 * s_pb, mask=m3, other=0.0)
            p = w * t.to(tl.float32)
        else:
            w = tl.load(WGT + c64 * s_wc + k * s_wk, mask=cm3, other=0.0).to(tl.float32)
            d = tl.minimum(tl.abs(a3 - b3).to(tl.float32), trunc)
            p = -w * d
        return p

    @triton.jit
    def _dt_max(x, w, trunc, lab, BIG: tl.constexpr):
        """``max_a x(a) - w min(|a - c|, T)`` and its arg-max; ``x [BC, BL]``, -inf on padding."""
        labf = lab.to(tl.float32)[None, :]
        idx = tl.zeros(x.shape, tl.int32) + lab[None, :]
        w2 = w[:, None]
        lv, li = tl.associative_scan((x + w2 * labf, idx), 1, _argmax_combine)
        best = lv - w2 * labf
        bi = li
        rv, ri = tl.associative_scan((x - w2 * labf, idx), 1, _argmax_combine, reverse=True)
        right = rv + w2 * labf
        upd = right > best
        best = tl.where(upd, right, best)
        bi = tl.where(upd, ri, bi)
        top = tl.max(x, axis=1)
        top_i = tl.min(tl.where(x == top[:, None], idx, BIG), axis=1)
        cand = tl.where(w >= 0, top - w * trunc, float("-inf"))
        upd = cand[:, None] > best
        best = tl.where(upd, cand[:, None], best)
        bi = tl.where(upd, top_i[:, None] + tl.zeros(x.shape, tl.int32), bi)
        return best, bi

    @triton.jit
    def _potts_smax(x, w, gamma, inv_gamma, lab, BIG: tl.constexpr):
        """``gamma logsumexp_a((x(a) - w [a != c]) / gamma)``; ``x [BC, BL]``, -inf on padding."""
        top = tl.max(x, axis=1)
        e = tl.exp((x - top[:, None]) * inv_gamma)
        s = tl.sum(e, axis=1)
        idx = tl.zeros(x.shape, tl.int32) + lab[None, :]
        top_i = tl.min(tl.where(x == top[:, None], idx, BIG), axis=1)
        is_top = idx == top_i[:, None]
        s_ex = tl.sum(tl.where(is_top, 0.0, e), axis=1)
        rest = tl.where(is_top, s_ex[:, None], s[:, None] - e)  # Σ_{a != c} e_a, no cancellation
        # two terms in the log domain: a = c scores x(c); the others smax_{a != c} x(a) - w
        pos = rest > 0.0
        t2 = top[:, None] - w[:, None] + gamma * tl.log(tl.where(pos, rest, 1.0))
        t2 = tl.where(pos, t2, float("-inf"))
        hi = tl.maximum(x, t2)
        lo = tl.minimum(x, t2)
        return hi + gamma * tl.log(1.0 + tl.exp((lo - hi) * inv_gamma))

    @triton.jit
    def _potts_adj(x, f1, adj, w, inv_gamma, lm):
        """``out(a) = Σ_c exp((x(a) - w [a != c] - f1(c)) / gamma) adj(c)`` and the diagonal weights
        ``exp((x(a) - f1(a)) / gamma)``; ``x, f1, adj [BC, BL]``, ``lm [1, BL]`` valid labels."""
        kmin = tl.min(tl.where(lm, f1, float("inf")), axis=1)
        s = tl.where(lm, tl.exp(tl.minimum((kmin[:, None] - f1) * inv_gamma, 0.0)) * adj, 0.0)
        s_all = tl.sum(s, axis=1)
        diag = tl.where(lm, tl.exp(tl.minimum((x - f1) * inv_gamma, 0.0)), 0.0)
        off = tl.exp(
            tl.minimum(
                (tl.where(lm, x, kmin[:, None]) - w[:, None] - kmin[:, None]) * inv_gamma, 80.0
            )
        )
        out = diag * adj + off * (s_all[:, None] - s)
        return tl.where(lm, out, 0.0), diag

    @triton.jit
    def _program_chains(LEN, C, BLOCK_C: tl.constexpr):
        """The chains of this program: ``(mask [BC], lengths [BC] int32, indices [BC] int64)``."""
        offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        cmask = offs_c < C
        length = tl.load(LEN + offs_c, mask=cmask, other=1).to(tl.int32)
        return cmask, length, offs_c.to(tl.int64)

    @triton.jit
    def _linear_program(LEN, C, n, L, BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr):
        """The chains of an O(L) program and one tile of all ``L`` labels: ``(cmask, length, c64,
        base2 [BC, 1], lab [BL], lm [1, BL], m2 [BC, BL])``."""
        cmask, length, c64 = _program_chains(LEN, C, BLOCK_C)
        base2 = (c64 * n * L)[:, None]
        lab = tl.arange(0, BLOCK_L)
        lm = (lab < L)[None, :]
        return cmask, length, c64, base2, lab, lm, cmask[:, None] & lm

    @triton.jit
    def _edge_weight(WGT, c64, cmask, k, s_wc, s_wk):
        """``[BC]`` the weight of edge ``k`` of each chain, in float32."""
        return tl.load(WGT + c64 * s_wc + k * s_wk, mask=cmask, other=0.0).to(tl.float32)

    @triton.jit
    def _tile(start, lab, L, cmask):
        """One tile of labels: ``start + lab``, its label mask and the chains x labels mask."""
        idx = start + lab
        valid = idx < L
        return idx, valid, cmask[:, None] & valid[None, :]

    @triton.jit
    def _online_reduce(run_m, run_s, run_i, v, idx, inv_gamma, AXIS: tl.constexpr, IS_MAX: tl.constexpr):
        """One tile of an online reduction of ``v`` over ``AXIS``: the running max and arg-max
        (``IS_MAX``; the smallest index among ties) or the running max and scaled sum of
        ``exp((v - max) / gamma)`` (log-sum-exp), shared by every tiled message."""
        BIG: tl.constexpr = 2147483647
        cmx = tl.max(v, axis=AXIS)
        if IS_MAX:
            ci = tl.min(tl.where(v == tl.expand_dims(cmx, AXIS), idx, BIG), axis=AXIS)
            upd = cmx > run_m
            run_i = tl.where(upd, ci, run_i)
            run_m = tl.where(upd, cmx, run_m)
        else:
            new_m = tl.maximum(run_m, cmx)
            tile_s = tl.sum(tl.exp((v - tl.expand_dims(new_m, AXIS)) * inv_gamma), axis=AXIS)
            run_s = run_s * tl.exp((run_m - new_m) * inv_gamma) + tile_s
            run_m = new_m
        return run_m, run_s, run_i

    @triton.jit
    def _message(U, M_IN, M_OUT, R_OUT, PHI, WGT, base2, c3, cm3, cmask, k, length, n, L, s_pc, s_pk, s_pa, s_pb,
                 s_wc, s_wk, gamma, inv_gamma, trunc, KIND: tl.constexpr, IS_MAX: tl.constexpr,
                 REVERSE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr):
        """The message over edge ``k`` of every chain of the program, in tiles of label pairs.

        Forward (``REVERSE`` false): ``M_OUT[k+1](c) = smax_a U[k](a) + M_IN[k](a) + phi_k(a, c)``;
        reverse: ``M_OUT[k](a) = smax_c phi_k(a, c) + U[k+1](c) + M_IN[k+1](c)``. ``BLOCK_O`` labels
        of the output per tile, ``BLOCK_R`` labels reduced per tile; ``R_OUT`` gets the arg-max
        (``IS_MAX``). Zero on edges past a chain's end."""
        ev = (k < length - 1)[:, None]
        lab_o = tl.arange(0, BLOCK_O)
        lab_r = tl.arange(0, BLOCK_R)
        pos_in = k + 1 if REVERSE else k
        for o0 in range(0, L, BLOCK_O):
            lo, lom, m2o = _tile(o0, lab_o, L, cmask)
            run_m = tl.full([BLOCK_C, BLOCK_O], float("-inf"), tl.float32)
            run_s = tl.zeros([BLOCK_C, BLOCK_O], tl.float32)
            run_i = tl.zeros([BLOCK_C, BLOCK_O], tl.int32)
            for r0 in range(0, L, BLOCK_R):
                lr, lrm, m2 = _tile(r0, lab_r, L, cmask)
                ptr = base2 + pos_in * L + lr[None, :]
                x = tl.load(U + ptr, mask=m2, other=0.0).to(tl.float32) + tl.load(M_IN + ptr, mask=m2, other=0.0)
                if REVERSE:  # tile [BC, out a, reduced c]
                    m3 = cm3 & lom[None, :, None] & lrm[None, None, :]
                    p = _phi_tile(PHI, WGT, c3, cm3, k, lo[None, :, None], lr[None, None, :], m3,
                                  s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, trunc, KIND)
                    v = tl.where(lrm[None, None, :], p + x[:, None, :], float("-inf"))
                    run_m, run_s, run_i = _online_reduce(run_m, run_s, run_i, v, lr[None, None, :], inv_gamma, 2,
                                                         IS_MAX)
                else:  # tile [BC, reduced a, out c]
                    m3 = cm3 & lrm[None, :, None] & lom[None, None, :]
                    p = _phi_tile(PHI, WGT, c3, cm3, k, lr[None, :, None], lo[None, None, :], m3,
                                  s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, trunc, KIND)
                    v = tl.where(lrm[None, :, None], x[:, :, None] + p, float("-inf"))
                    run_m, run_s, run_i = _online_reduce(run_m, run_s, run_i, v, lr[None, :, None], inv_gamma, 1,
                                                         IS_MAX)
            res = run_m
            if not IS_MAX:
                res = run_m + gamma * tl.log(run_s)
            ptr = base2 + (k if REVERSE else k + 1) * L + lo[None, :]
            tl.store(M_OUT + ptr, tl.where(ev, res, 0.0), mask=m2o)
            if IS_MAX:
                tl.store(R_OUT + ptr, tl.where(ev, run_i, 0), mask=m2o)

    # ---------------------------------------------------------------------------------------
    # forward, tiles of label pairs (tables, weight x table, truncated linear on the fly)
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _fwd_tile_kernel(
        U, PHI, WGT, LEN, F, G, RF, RG, C, n, L, s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, gamma, inv_gamma, trunc,
        KIND: tl.constexpr, IS_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_J:
        tl.constexpr
    ):
        cmask, length, c64 = _program_chains(LEN, C, BLOCK_C)
        base = c64 * n * L  # [BC] offset of position 0 in [C, n, L]
        base2 = base[:, None]
        c3 = c64[:, None, None]
        cm3 = cmask[:, None, None]
        lab_j = tl.arange(0, BLOCK_J)
        zero_j = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)
        for j0 in range(0, L, BLOCK_J):
            lj, _, m2 = _tile(j0, lab_j, L, cmask)
            tl.store(F + base2 + lj[None, :], zero_j, mask=m2)
            tl.store(G + base2 + (n - 1) * L + lj[None, :], zero_j, mask=m2)
        tl.debug_barrier()
        for i in range(0, n - 1):
            # left-to-right message over edge i: F[i+1](c), c tiles out, a tiles reduced
            _message(U, F, F, RF, PHI, WGT, base2, c3, cm3, cmask, i, length, n, L, s_pc, s_pk, s_pa, s_pb,
                     s_wc, s_wk, gamma, inv_gamma, trunc, KIND, IS_MAX, False, BLOCK_C, BLOCK_J, BLOCK_I)
            # right-to-left message over edge n-2-i: G[n-2-i](a), a tiles out, c tiles reduced
            _message(U, G, G, RG, PHI, WGT, base2, c3, cm3, cmask, n - 2 - i, length, n, L, s_pc, s_pk, s_pa,
                     s_pb, s_wc, s_wk, gamma, inv_gamma, trunc, KIND, IS_MAX, True, BLOCK_C, BLOCK_I, BLOCK_J)
            tl.debug_barrier()

    # ---------------------------------------------------------------------------------------
    # forward, O(L) paths: distance transform (max) and Potts closed form (smoothed max)
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _linear_message(U, M, R, WGT, msg, base2, c64, cmask, lab, lm, m2, length, k, pos_in, pos_out, L, s_wc, s_wk,
                        gamma, inv_gamma, trunc, wscale, IS_MAX: tl.constexpr):
        """The O(L) message over edge ``k`` (distance transform at ``gamma == 0``, Potts closed form
        otherwise) from ``U[pos_in] + msg``: stored at ``M[pos_out]`` (its arg-max at ``R[pos_out]``
        when ``IS_MAX``) and returned; zero on edges past a chain's end."""
        BIG: tl.constexpr = 2147483647
        ev = (k < length - 1)[:, None]
        w = _edge_weight(WGT, c64, cmask, k, s_wc, s_wk) * wscale
        x = tl.load(U + base2 + pos_in * L + lab[None, :], mask=m2, other=0.0).to(tl.float32) + msg
        x = tl.where(lm, x, float("-inf"))
        if IS_MAX:
            val, idx = _dt_max(x, w, trunc, lab, BIG)
        else:
            val = _potts_smax(x, w, gamma, inv_gamma, lab, BIG)
        out = tl.where(ev & lm, val, 0.0)
        ptr = base2 + pos_out * L + lab[None, :]
        tl.store(M + ptr, out, mask=m2)
        if IS_MAX:
            tl.store(R + ptr, tl.where(ev, idx, 0), mask=m2)
        return out

    @triton.jit
    def _fwd_linear_kernel(
        U, WGT, LEN, F, G, RF, RG, C, n, L, s_wc, s_wk, gamma, inv_gamma, trunc, wscale, IS_MAX: tl.constexpr,
        BLOCK_C: tl.constexpr, BLOCK_L: tl.constexpr
    ):
        cmask, length, c64, base2, lab, lm, m2 = _linear_program(LEN, C, n, L, BLOCK_C, BLOCK_L)
        f = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
        g = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
        tl.store(F + base2 + lab[None, :], f, mask=m2)
        tl.store(G + base2 + (n - 1) * L + lab[None, :], g, mask=m2)
        for i in range(0, n - 1):
            # left to right over edge i: F[i+1] from U[i] + F[i]
            f = _linear_message(U, F, RF, WGT, f, base2, c64, cmask, lab, lm, m2, length, i, i, i + 1, L, s_wc,
                                s_wk, gamma, inv_gamma, trunc, wscale, IS_MAX)
            # right to left over edge n-2-i: G[n-2-i] from U[n-1-i] + G[n-1-i]
            k2 = n - 2 - i
            g = _linear_message(U, G, RG, WGT, g, base2, c64, cmask, lab, lm, m2, length, k2, k2 + 1, k2, L, s_wc,
                                s_wk, gamma, inv_gamma, trunc, wscale, IS_MAX)

    # ---------------------------------------------------------------------------------------
    # marginals and value (one pass over [C, n, L])
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _marginals_kernel(
        U, F, G, LEN, MARG, VAL, C, n, L, gamma, inv_gamma, IS_MAX: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_L: tl.constexpr
    ):
        cmask, length, c64 = _program_chains(LEN, C, BLOCK_C)
        base2 = (c64 * n * L)[:, None]
        lab = tl.arange(0, BLOCK_L)
        run_m = tl.full([BLOCK_C], float("-inf"), tl.float32)
        run_s = tl.zeros([BLOCK_C], tl.float32)
        run_i = tl.zeros([BLOCK_C], tl.int32)
        for k in range(0, n):
            pv = (k < length)[:, None]
            for l0 in range(0, L, BLOCK_L):
                lj, ljm, m2 = _tile(l0, lab, L, cmask)
                ptr = base2 + k * L + lj[None, :]
                mu = tl.load(U + ptr, mask=m2, other=0.0).to(tl.float32)
                mu += tl.load(F + ptr, mask=m2, other=0.0) + tl.load(G + ptr, mask=m2, other=0.0)
                mu = tl.where(pv, mu, 0.0)
                tl.store(MARG + ptr, mu, mask=m2)
                if k == 0:  # the value: smax of the first position's marginals
                    v = tl.where(ljm[None, :], mu, float("-inf"))
                    run_m, run_s, run_i = _online_reduce(run_m, run_s, run_i, v, lj[None, :], inv_gamma, 1, IS_MAX)
        if IS_MAX:
            val = run_m
        else:
            val = run_m + gamma * tl.log(run_s)
        tl.store(VAL + c64, val, mask=cmask)

    # ---------------------------------------------------------------------------------------
    # backward, tiles (every kind; gamma == 0 from the saved arg-max indices)
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _bwd_init(DM, DU, GS, base2, cmask, n, L, BLOCK_C: tl.constexpr, BLOCK_J: tl.constexpr):
        """Start of the backward: ``dx`` is zero at the last position, ``G_0 = dM'_0``."""
        lab_j = tl.arange(0, BLOCK_J)
        for j0 in range(0, L, BLOCK_J):
            lj, _, m2 = _tile(j0, lab_j, L, cmask)
            tl.store(
                DU + base2 + (n - 1) * L + lj[None, :],
                tl.zeros([BLOCK_C, BLOCK_J], tl.float32),
                mask=m2,
            )
            tl.store(
                GS + base2 + lj[None, :],
                tl.load(DM + base2 + lj[None, :], mask=m2, other=0.0),
                mask=m2,
            )

    @triton.jit
    def _bwd_dx_pass(
        U, PHI, WGT, F, RF, DM, DU, base2, c3, cm3, cmask, length, n, L, s_pc, s_pk, s_pa, s_pb, s_wc, s_wk,
        inv_gamma, trunc, KIND: tl.constexpr, IS_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I: tl.constexpr,
        BLOCK_J: tl.constexpr
    ):
        """Pass 1, ``k = n-2 .. 0``: ``dx_k(a) = Σ_c w_f(a, c) F_{k+1}(c)`` into ``DU``, with
        ``F_{k+1} = dM_{k+1} + dx_{k+1}`` (``w_f`` the arg-max indicator at ``gamma == 0``)."""
        lab_i = tl.arange(0, BLOCK_I)
        lab_j = tl.arange(0, BLOCK_J)
        for i in range(0, n - 1):
            k = n - 2 - i
            ev = (k < length - 1)[:, None]
            for i0 in range(0, L, BLOCK_I):
                ai, aim, m2a = _tile(i0, lab_i, L, cmask)
                acc = tl.zeros([BLOCK_C, BLOCK_I], tl.float32)
                if not IS_MAX:
                    pa = base2 + k * L + ai[None, :]
                    x = tl.load(U + pa, mask=m2a, other=0.0).to(tl.float32)
                    x += tl.load(F + pa, mask=m2a, other=0.0)
                for j0 in range(0, L, BLOCK_J):
                    cj, cjm, m2c = _tile(j0, lab_j, L, cmask)
                    pc = base2 + (k + 1) * L + cj[None, :]
                    fa = tl.load(DM + pc, mask=m2c, other=0.0) + tl.load(
                        DU + pc, mask=m2c, other=0.0
                    )
                    m3 = cm3 & aim[None, :, None] & cjm[None, None, :]
                    if IS_MAX:
                        rf = tl.load(RF + pc, mask=m2c, other=-1)
                        wf = tl.where(rf[:, None, :] == ai[None, :, None], 1.0, 0.0)
                    else:
                        f1 = tl.load(F + pc, mask=m2c, other=0.0)
                        p = _phi_tile(PHI, WGT, c3, cm3, k, ai[None, :, None], cj[None, None, :], m3,
                                      s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, trunc, KIND)
                        arg = (x[:, :, None] + p - f1[:, None, :]) * inv_gamma
                        wf = tl.exp(tl.minimum(arg, 0.0))
                    wf = tl.where(m3, wf, 0.0)
                    acc += tl.sum(wf * fa[:, None, :], axis=2)
                tl.store(DU + base2 + k * L + ai[None, :], tl.where(ev, acc, 0.0), mask=m2a)
            tl.debug_barrier()

    @triton.jit
    def _bwd_store_dphi(PHI, WGT, DPHI, DTAB, dphi, dw_acc, c3, c64, cmask, m3, a3, b3, k, n, L, s_pc, s_pa, s_pb,
                        s_wc, s_wk, trunc, KIND: tl.constexpr):
        """Hand one tile's ``dphi_k(a, c)`` to the form's tensors: the table itself (dense), or
        ``w * dphi`` into the shared table and ``Σ dphi * t`` into the weight (weight x table), or
        ``-Σ dphi * min(|a - c|, T)`` into the weight (truncated linear). Returns ``dw_acc``."""
        if KIND == 0:
            tl.store(
                DPHI + c3 * ((n - 1) * L * L) + k * (L * L) + a3 * L + b3, dphi, mask=m3
            )
        elif KIND == 1:
            w = _edge_weight(WGT, c64, cmask, k, s_wc, s_wk)
            pt = DTAB + c3 * (L * L) + a3 * L + b3
            tl.store(
                pt, tl.load(pt, mask=m3, other=0.0) + w[:, None, None] * dphi, mask=m3
            )
            # phi = w * t, so dw = Σ dphi * t = Σ dphi * phi / w; take t directly
            t = tl.load(PHI + c3 * s_pc + a3 * s_pa + b3 * s_pb, mask=m3, other=0.0)
            dw_acc += tl.sum(tl.sum(dphi * t.to(tl.float32), axis=2), axis=1)
        else:
            d = tl.minimum(tl.abs(a3 - b3).to(tl.float32), trunc)
            dw_acc -= tl.sum(tl.sum(dphi * d, axis=2), axis=1)
        return dw_acc

    @triton.jit
    def _bwd_finish(DU, GS, base2, cmask, n, L, BLOCK_J: tl.constexpr):
        """``d unary = dx + G`` (``G`` already holds ``dM' + dy``), into ``DU``."""
        lab_j = tl.arange(0, BLOCK_J)
        for k in range(0, n):
            for j0 in range(0, L, BLOCK_J):
                lj, _, m2 = _tile(j0, lab_j, L, cmask)
                ptr = base2 + k * L + lj[None, :]
                tot = tl.load(DU + ptr, mask=m2, other=0.0) + tl.load(GS + ptr, mask=m2, other=0.0)
                tl.store(DU + ptr, tot, mask=m2)

    @triton.jit
    def _bwd_tile_kernel(
        U, PHI, WGT, LEN, F, G, RF, RG, DM, DU, GS, DPHI, DTAB, DW, C, n, L, s_pc, s_pk, s_pa, s_pb, s_wc, s_wk,
        gamma, inv_gamma, trunc, KIND: tl.constexpr, IS_MAX: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_I:
        tl.constexpr, BLOCK_J: tl.constexpr
    ):
        """Backward of the tiled forward: the two adjoint passes of the module docs, then ``d unary``.

        ``DU`` holds ``dx`` (the adjoint flowing out of the left-to-right messages) until the end;
        ``GS`` holds ``G``."""
        cmask, length, c64 = _program_chains(LEN, C, BLOCK_C)
        base2 = (c64 * n * L)[:, None]
        c3 = c64[:, None, None]
        cm3 = cmask[:, None, None]
        lab_i = tl.arange(0, BLOCK_I)
        lab_j = tl.arange(0, BLOCK_J)
        _bwd_init(DM, DU, GS, base2, cmask, n, L, BLOCK_C, BLOCK_J)
        tl.debug_barrier()
        _bwd_dx_pass(U, PHI, WGT, F, RF, DM, DU, base2, c3, cm3, cmask, length, n, L, s_pc, s_pk, s_pa, s_pb,
                     s_wc, s_wk, inv_gamma, trunc, KIND, IS_MAX, BLOCK_C, BLOCK_I, BLOCK_J)
        # -- pass 2: k = 0 .. n-2, G_{k+1} = dM_{k+1} + Σ_a G_k(a) w_g(a, ·); dphi_k
        for k in range(0, n - 1):
            ev = k < length - 1
            ev2 = ev[:, None]
            ev3 = ev[:, None, None]
            dw_acc = tl.zeros([BLOCK_C], tl.float32)
            for j0 in range(0, L, BLOCK_J):
                cj, cjm, m2c = _tile(j0, lab_j, L, cmask)
                pc = base2 + (k + 1) * L + cj[None, :]
                dm1 = tl.load(DM + pc, mask=m2c, other=0.0)
                fa = dm1 + tl.load(DU + pc, mask=m2c, other=0.0)
                if IS_MAX:
                    rf = tl.load(RF + pc, mask=m2c, other=-1)
                else:
                    f1 = tl.load(F + pc, mask=m2c, other=0.0)
                    y = tl.load(U + pc, mask=m2c, other=0.0).to(tl.float32)
                    y += tl.load(G + pc, mask=m2c, other=0.0)
                dy = tl.zeros([BLOCK_C, BLOCK_J], tl.float32)
                for i0 in range(0, L, BLOCK_I):
                    ai, aim, m2a = _tile(i0, lab_i, L, cmask)
                    pa = base2 + k * L + ai[None, :]
                    ga = tl.load(GS + pa, mask=m2a, other=0.0)
                    m3 = cm3 & aim[None, :, None] & cjm[None, None, :]
                    a3 = ai[None, :, None]
                    b3 = cj[None, None, :]
                    if IS_MAX:
                        rg = tl.load(RG + pa, mask=m2a, other=-1)
                        wf = tl.where(rf[:, None, :] == a3, 1.0, 0.0)
                        wg = tl.where(rg[:, :, None] == b3, 1.0, 0.0)
                    else:
                        x = tl.load(U + pa, mask=m2a, other=0.0).to(tl.float32)
                        x += tl.load(F + pa, mask=m2a, other=0.0)
                        gk = tl.load(G + pa, mask=m2a, other=0.0)
                        p = _phi_tile(PHI, WGT, c3, cm3, k, a3, b3, m3,
                                      s_pc, s_pk, s_pa, s_pb, s_wc, s_wk, trunc, KIND)
                        wf = tl.exp(
                            tl.minimum((x[:, :, None] + p - f1[:, None, :]) * inv_gamma, 0.0)
                        )
                        wg = tl.exp(
                            tl.minimum((p + y[:, None, :] - gk[:, :, None]) * inv_gamma, 0.0)
                        )
                    keep = m3 & ev3
                    tg = tl.where(keep, ga[:, :, None] * wg, 0.0)
                    dphi = tl.where(keep, wf * fa[:, None, :], 0.0) + tg
                    dy += tl.sum(tg, axis=1)
                    dw_acc = _bwd_store_dphi(PHI, WGT, DPHI, DTAB, dphi, dw_acc, c3, c64, cmask, m3, a3, b3, k, n, L,
                                             s_pc, s_pa, s_pb, s_wc, s_wk, trunc, KIND)
                tl.store(GS + pc, tl.where(ev2, dm1 + dy, 0.0), mask=m2c)
            if KIND != 0:
                tl.store(DW + c64 * (n - 1) + k, tl.where(ev, dw_acc, 0.0), mask=cmask)
            tl.debug_barrier()
        _bwd_finish(DU, GS, base2, cmask, n, L, BLOCK_J)

    # ---------------------------------------------------------------------------------------
    # backward, Potts closed form (gamma > 0), O(L)
    # ---------------------------------------------------------------------------------------
    @triton.jit
    def _bwd_potts_kernel(
        U, WGT, LEN, F, G, DM, DU, DW, C, n, L, s_wc, s_wk, inv_gamma, wscale, BLOCK_C: tl.constexpr, BLOCK_L:
        tl.constexpr
    ):
        cmask, length, c64, base2, lab, lm, m2 = _linear_program(LEN, C, n, L, BLOCK_C, BLOCK_L)
        # pass 1 (right to left): dx_k = Σ_c w_f(·, c) F_{k+1}(c), F_{k+1} = dM_{k+1} + dx_{k+1}
        dx = tl.zeros([BLOCK_C, BLOCK_L], tl.float32)
        tl.store(DU + base2 + (n - 1) * L + lab[None, :], dx, mask=m2)
        for i in range(0, n - 1):
            k = n - 2 - i
            ev = k < length - 1
            pk = base2 + k * L + lab[None, :]
            pk1 = base2 + (k + 1) * L + lab[None, :]
            fa = tl.load(DM + pk1, mask=m2, other=0.0) + dx
            x = tl.load(U + pk, mask=m2, other=0.0).to(tl.float32) + tl.load(
                F + pk, mask=m2, other=0.0
            )
            f1 = tl.load(F + pk1, mask=m2, other=0.0)
            w = _edge_weight(WGT, c64, cmask, k, s_wc, s_wk) * wscale
            out, diag = _potts_adj(x, f1, fa, w, inv_gamma, lm)
            dx = tl.where(ev[:, None], out, 0.0)
            tl.store(DU + pk, dx, mask=m2)
            dwf = -tl.sum(tl.where(lm, fa * (1.0 - diag), 0.0), axis=1) * wscale
            tl.store(DW + c64 * (n - 1) + k, tl.where(ev, dwf, 0.0), mask=cmask)
        tl.debug_barrier()
        # pass 2 (left to right): G_{k+1} = dM_{k+1} + Σ_a G_k(a) w_g(a, ·)
        ga = tl.load(DM + base2 + lab[None, :], mask=m2, other=0.0)
        for k in range(0, n - 1):
            ev = k < length - 1
            pk = base2 + k * L + lab[None, :]
            pk1 = base2 + (k + 1) * L + lab[None, :]
            y = tl.load(U + pk1, mask=m2, other=0.0).to(tl.float32) + tl.load(
                G + pk1, mask=m2, other=0.0
            )
            gk = tl.load(G + pk, mask=m2, other=0.0)
            w = _edge_weight(WGT, c64, cmask, k, s_wc, s_wk) * wscale
            # dy(c) = Σ_a exp((y(c) - w [a != c] - g_k(a)) / gamma) G_k(a): the same closed form
            out, diag = _potts_adj(y, gk, ga, w, inv_gamma, lm)
            dwg = -tl.sum(tl.where(lm, ga * (1.0 - diag), 0.0), axis=1) * wscale
            pw = DW + c64 * (n - 1) + k
            tl.store(pw, tl.load(pw, mask=cmask, other=0.0) + tl.where(ev, dwg, 0.0), mask=cmask)
            tl.store(DU + pk, tl.load(DU + pk, mask=m2, other=0.0) + ga, mask=m2)
            ga = tl.where(ev[:, None], tl.load(DM + pk1, mask=m2, other=0.0) + out, 0.0)
        pl = base2 + (n - 1) * L + lab[None, :]
        tl.store(DU + pl, tl.load(DU + pl, mask=m2, other=0.0) + ga, mask=m2)


# -------------------------------------------------------------------------------------------
# launchers
# -------------------------------------------------------------------------------------------
def _pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def _num_warps(elems: int) -> int:
    """Warps per program from the elements of its working tile (a guess made without a GPU;
    ``benchmarks/bench_gpu.py --tune`` measures the alternatives). One warp for small label
    vectors keeps every reduction of the O(L) paths inside a warp (no shared memory)."""
    if elems >= 4096:
        return 8
    if elems >= 1024:
        return 4
    return 2 if elems >= 256 else 1


def plan(pw: ChainPairwise, gamma: float, L: int, allow_sync: bool = True) -> str:
    """Which kernel family runs: ``"tile"``, ``"dt"`` (distance transform) or ``"potts"``.

    The form names its fast path (:meth:`ChainPairwise.fast_path`); here, in addition, a
    truncation ``>= L - 1`` makes the distance transform exact for weights of any sign."""
    path = _PATHS.get(pw.fast_path(gamma, allow_sync))
    if path is None and gamma == 0.0 and pw.kind == "truncated_linear" and pw.truncation >= L - 1:
        path = "dt"
    return path or "tile"


#: a form's fast-path name -> this backend's kernel family
_PATHS = {DISTANCE_TRANSFORM: "dt", POTTS_CLOSED_FORM: "potts"}


def _blocks(path: str, C: int, L: int, config: dict | None) -> dict:
    cfg = dict(config or {})
    BL = _pow2(L)
    if path == "tile":
        cap = 64 if not INTERPRET else 8
        BI = cfg.get("BLOCK_I", min(BL, cap))
        BJ = cfg.get("BLOCK_J", min(BL, cap))
        budget = 4096
        elems = BI * BJ
    else:
        BI = BJ = cfg.get("BLOCK_L", BL)
        budget = 2048
        elems = BI
    if INTERPRET:  # few programs: the interpreter costs per program
        bc_default = min(_pow2(C), max(1, budget // elems), 16)
    else:  # aim at several programs per SM (132 on an H100)
        bc_default = max(1, min(budget // elems, _pow2(max(1, C // 512))))
    BC = cfg.get("BLOCK_C", bc_default)
    warps = cfg.get("num_warps", _num_warps(BC * elems))
    return {"BLOCK_C": BC, "BLOCK_I": BI, "BLOCK_J": BJ, "num_warps": warps}


def _phi_args(pw: ChainPairwise, dummy: torch.Tensor) -> tuple:
    """The form's tensors and strides as the tile kernels read them:
    ``(PHI, WGT, s_pc, s_pk, s_pa, s_pb, s_wc, s_wk)``; a per-chain table ``[C, L, L]`` gets
    ``s_pk = 0``, absent tensors a valid dummy pointer and zero strides."""
    tables, weight = pw.tensors()
    if tables is None:
        s_p = (0, 0, 0, 0)
    elif tables.dim() == 4:
        s_p = tuple(tables.stride())
    else:
        s_pc, s_pa, s_pb = tables.stride()
        s_p = (s_pc, 0, s_pa, s_pb)
    s_w = tuple(weight.stride()) if weight is not None else (0, 0)
    phi = tables if tables is not None else dummy
    wgt = weight if weight is not None else dummy
    return (phi, wgt, *s_p, *s_w)


def chain_forward(unary: torch.Tensor, pw: ChainPairwise, lengths: torch.Tensor, gamma: float, config=None,
                  allow_sync: bool = True):
    """Launch the forward kernels (inputs already validated).

    Returns ``marginals [C, n, L]`` (float32), ``value [C]`` (float32), the saved messages
    ``f, g [C, n, L]`` (float32), the arg-max indices ``rf, rg [C, n, L]`` (int32; empty when
    ``gamma > 0``) and the path taken (``"tile" | "dt" | "potts"``).
    """
    C, n, L = unary.shape
    dev = unary.device
    u = unary.contiguous()
    lens = lengths.to(device=dev, dtype=torch.int32).contiguous()
    is_max = gamma == 0.0
    inv_gamma = 0.0 if is_max else 1.0 / gamma
    path = plan(pw, gamma, L, allow_sync)
    f = torch.empty((C, n, L), device=dev, dtype=torch.float32)
    g = torch.empty((C, n, L), device=dev, dtype=torch.float32)
    if is_max:
        rf = torch.zeros((C, n, L), device=dev, dtype=torch.int32)
        rg = torch.zeros((C, n, L), device=dev, dtype=torch.int32)
    else:
        rf = rg = torch.empty(0, device=dev, dtype=torch.int32)
    marg = torch.empty((C, n, L), device=dev, dtype=torch.float32)
    value = torch.empty((C,), device=dev, dtype=torch.float32)
    if C == 0:
        return marg, value, f, g, rf, rg, path
    # unused pointer arguments get a valid (non-empty) tensor, never a null pointer
    rf_arg, rg_arg = (rf, rg) if is_max else (f, g)
    blk = _blocks(path, C, L, config)
    grid = (triton.cdiv(C, blk["BLOCK_C"]),)
    trunc = pw.truncation if pw.truncation is not None else 0.0
    scalars = (float(gamma), inv_gamma, trunc)
    if path == "tile":
        phi, wgt, *strides = _phi_args(pw, u)
        _fwd_tile_kernel[grid](
            u, phi, wgt, lens, f, g, rf_arg, rg_arg, C, n, L, *strides, *scalars,
            KIND=_KIND_CODE[pw.kind], IS_MAX=is_max, BLOCK_C=blk["BLOCK_C"], BLOCK_I=blk["BLOCK_I"],
            BLOCK_J=blk["BLOCK_J"], num_warps=blk["num_warps"],
        )
    else:
        w = pw.weight
        wscale = min(trunc, 1.0) if path == "potts" else 1.0
        _fwd_linear_kernel[grid](
            u, w, lens, f, g, rf_arg, rg_arg, C, n, L, *w.stride(), *scalars, wscale,
            IS_MAX=is_max, BLOCK_C=blk["BLOCK_C"], BLOCK_L=blk["BLOCK_I"], num_warps=blk["num_warps"],
        )
    mblk = _blocks("linear", C, L, None)
    _marginals_kernel[(triton.cdiv(C, mblk["BLOCK_C"]),)](
        u, f, g, lens, marg, value, C, n, L, float(gamma), inv_gamma,
        IS_MAX=is_max, BLOCK_C=mblk["BLOCK_C"], BLOCK_L=mblk["BLOCK_I"], num_warps=mblk["num_warps"],
    )
    return marg, value, f, g, rf, rg, path


def _upstream(u, g, lens, gamma, d_marg, d_value):
    """``dM'``: the marginals' upstream gradient (masked) with the value's folded into position 0."""
    C, n, L = u.shape
    valid = torch.arange(n, device=u.device)[None, :] < lens[:, None]  # [C, n]
    if d_marg is None:
        dm = torch.zeros((C, n, L), device=u.device, dtype=torch.float32)
    else:
        dm = torch.where(valid[:, :, None], d_marg.float(), 0.0)
    if d_value is not None:
        m0 = u[:, 0].float() + g[:, 0]
        dm[:, 0] += d_value.float()[:, None] * smax_weights(m0, smax(m0, gamma, dim=1), gamma, dim=1)
    return dm.contiguous()


def _grad_buffers(pw: ChainPairwise, C: int, n: int, L: int, dev):
    """``(d_tables, d_weight)``: dense tables' gradient in their dtype ``[C, n-1, L, L]``, a
    per-chain table's ``[C, L, L]`` float32, a weight's ``[C, n-1]`` float32; ``None`` if absent."""
    tables, weight = pw.tensors()
    d_tables = None
    if tables is not None:
        dense = tables.dim() == 4
        d_tables = torch.zeros(tables.shape if dense else (C, L, L), device=dev,
                               dtype=tables.dtype if dense else torch.float32)
    d_weight = None if weight is None else torch.zeros((C, max(n - 1, 0)), device=dev, dtype=torch.float32)
    return d_tables, d_weight


def chain_backward(unary, pw: ChainPairwise, lengths, gamma, f, g, rf, rg, d_marg, d_value, config=None, path=None):
    """Launch the backward kernels from the saved messages ``f, g`` (and arg-max indices
    ``rf, rg`` when ``gamma == 0``). Returns ``(d_unary [C, n, L]`` float32, ``d_tables``
    (``[C, n-1, L, L]`` in the tables' dtype for dense, ``[C, L, L]`` float32 for a per-chain
    table, else ``None``), ``d_weight [C, n-1]`` float32 or ``None)``."""
    C, n, L = unary.shape
    # gamma == 0 always takes the tile backward from the indices (no table read for the
    # distance-transform path); gamma > 0 takes the Potts closed form where the forward did.
    path = "potts" if (path or plan(pw, gamma, L)) == "potts" else "tile"
    dev = unary.device
    u = unary.contiguous()
    lens = lengths.to(device=dev, dtype=torch.int32).contiguous()
    is_max = gamma == 0.0
    inv_gamma = 0.0 if is_max else 1.0 / gamma
    dm = _upstream(u, g, lens, gamma, d_marg, d_value)
    du = torch.empty((C, n, L), device=dev, dtype=torch.float32)
    d_tables, d_weight = _grad_buffers(pw, C, n, L, dev)
    if C == 0:
        return du, d_tables, d_weight
    blk = _blocks(path if path == "tile" else "linear", C, L, config)
    grid = (triton.cdiv(C, blk["BLOCK_C"]),)
    trunc = pw.truncation if pw.truncation is not None else 0.0
    dw_arg = d_weight if d_weight is not None and d_weight.numel() else du
    if path == "potts":
        w = pw.weight
        _bwd_potts_kernel[grid](
            u, w, lens, f, g, dm, du, dw_arg, C, n, L, *w.stride(), inv_gamma, min(trunc, 1.0),
            BLOCK_C=blk["BLOCK_C"], BLOCK_L=blk["BLOCK_I"], num_warps=blk["num_warps"],
        )
        return du, None, d_weight
    dense = pw.tables is not None and pw.tables.dim() == 4
    phi, wgt, *strides = _phi_args(pw, du)
    _bwd_tile_kernel[grid](
        u, phi, wgt, lens, f, g, rf if is_max else du, rg if is_max else du, dm, du,
        torch.empty((C, n, L), device=dev, dtype=torch.float32),
        d_tables if dense and d_tables.numel() else du,
        d_tables if pw.tables is not None and not dense else du,
        dw_arg, C, n, L, *strides, float(gamma), inv_gamma, trunc,
        KIND=_KIND_CODE[pw.kind], IS_MAX=is_max, BLOCK_C=blk["BLOCK_C"], BLOCK_I=blk["BLOCK_I"],
        BLOCK_J=blk["BLOCK_J"], num_warps=blk["num_warps"],
    )
    return du, d_tables, d_weight


# -------------------------------------------------------------------------------------------
# autograd and the public function
# -------------------------------------------------------------------------------------------
class _ChainTriton(torch.autograd.Function):
    @staticmethod
    def forward(ctx, unary, tables, weight, lengths, gamma, pw, config, allow_sync):
        pw = pw.replace(tables, weight)
        marg, value, f, g, rf, rg, path = chain_forward(unary, pw, lengths, gamma, config, allow_sync)
        ctx.save_for_backward(unary, tables, weight, lengths, f, g, rf, rg)
        ctx.gamma, ctx.pw, ctx.config, ctx.path = gamma, pw, config, path
        return marg.to(unary.dtype), value.to(unary.dtype)

    @staticmethod
    def backward(ctx, d_marg, d_value):
        unary, tables, weight, lengths, f, g, rf, rg = ctx.saved_tensors
        pw = ctx.pw.replace(tables, weight)
        du, dt, dw = chain_backward(
            unary, pw, lengths, ctx.gamma, f, g, rf, rg, d_marg, d_value, ctx.config, ctx.path
        )
        d_unary = du.to(unary.dtype) if ctx.needs_input_grad[0] else None
        d_tables = dt.to(tables.dtype) if (dt is not None and ctx.needs_input_grad[1]) else None
        d_weight = dw.to(weight.dtype) if (dw is not None and ctx.needs_input_grad[2]) else None
        return d_unary, d_tables, d_weight, None, None, None, None, None


def as_kernel_form(pairwise: ChainPairwise, num_labels: int) -> ChainPairwise:
    """``pairwise`` itself when these kernels know its kind (dense, weighted, truncated linear),
    else its dense tables as a dense form: a new chain form runs here without a kernel of its own
    (autograd carries the tables' gradient back to the form's tensors)."""
    if pairwise.kind in _KIND_CODE:
        return pairwise
    return DenseChainPairwise(tables=pairwise.dense(num_labels))


def validate_chain_inputs(unary, pairwise, lengths, gamma) -> float:
    """The shared input checks without the host read of ``lengths`` (no device sync, and
    traceable by ``torch.compile``)."""
    return check_chain_inputs(unary, pairwise, lengths, gamma, check_lengths=False)


def chain_marginals_triton(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    gamma: float,
    *,
    config: dict | None = None,
    allow_sync: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of right-padded chains, with Triton kernels.

    Args:
        unary: ``[C, n, L]`` node scores (float32, float16 or bfloat16; accumulation is float32).
        pairwise: a :class:`~crfkit.decomposition.ChainPairwise` form over the same chains:
            dense ``tables [C, n-1, L, L]``, weighted ``weight [C, n-1]`` x ``tables [C, L, L]``
            (any strides, e.g. an expanded view), or truncated linear ``weight [C, n-1]``.
        lengths: ``[C]`` integer, valid positions per chain (``1 <= lengths <= n``).
        gamma: ``0`` for max, ``> 0`` for ``gamma * logsumexp(· / gamma)``.
        config: optional block sizes for benchmarks (``BLOCK_C``, ``BLOCK_I``, ``BLOCK_J``,
            ``BLOCK_L``, ``num_warps``).
        allow_sync: may read the weights' sign on the host to pick a fast path.

    Returns:
        ``marginals [C, n, L]`` (zero on padding) and ``value [C]``, in ``unary``'s dtype;
        differentiable with respect to ``unary``, ``pairwise.tables`` and ``pairwise.weight``
        (``gamma == 0``: the arg-max subgradient).
    """
    if not AVAILABLE:
        raise RuntimeError(
            "the Triton chain kernels need triton (pip install 'crfkit[gpu]') and a CUDA device "
            "(or TRITON_INTERPRET=1 set before importing crfkit.ops.chain.triton)"
        )
    gamma = validate_chain_inputs(unary, pairwise, lengths, gamma)
    if not unary.is_cuda and not INTERPRET:
        raise CRFValueError(f"expected CUDA tensors for the Triton kernels, got {unary.device}")
    pairwise = as_kernel_form(pairwise, unary.shape[-1])
    tables, weight = pairwise.tensors()
    return _ChainTriton.apply(unary, tables, weight, lengths, gamma, pairwise, config, allow_sync)
