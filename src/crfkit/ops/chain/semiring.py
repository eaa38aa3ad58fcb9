"""The one semiring of the chain dynamic programs: max (``gamma == 0``) or smoothed max.

``smax_γ(x) = γ log Σ exp(x / γ)`` for ``γ > 0`` and ``max(x)`` for ``γ = 0`` (``docs/maths.md``,
"Smoothing and continuation"); its gradient is the soft-max ``exp((x - smax_γ(x)) / γ)``, or a
one-hot arg-max at ``γ = 0`` (a subgradient). Every torch-side chain implementation
(``reference.py``, ``torch.py``) reduces with :func:`smax` and differentiates with
:func:`smax_weights`; the Triton kernels implement the same reduction per tile
(``triton.py``, ``_online_reduce``).

Numerics: ``exp`` of arguments below the dtype's underflow floor (:func:`exp_floor`) is taken
as ``exp`` of the floor (``exp(-80)`` = 1.8e-35 in float32 stands for 0, far below the
dtype's resolution): torch's CPU ``exp`` is 12-30x slower on denormal-producing inputs.
"""

from __future__ import annotations

import torch

__all__ = ["smax", "smax_weights", "exp_floor", "floored_exp"]


def exp_floor(dtype: torch.dtype) -> float:
    """Below this argument ``exp`` underflows to (almost) 0 in ``dtype``."""
    return -80.0 if dtype in (torch.float32, torch.float16, torch.bfloat16) else -700.0


def floored_exp(z: torch.Tensor, *, inplace: bool = False) -> torch.Tensor:
    """``exp(z)`` for ``z <= 0``, with ``z`` clamped at :func:`exp_floor` first.

    ``inplace``: overwrite ``z`` (no allocation; only where autograd does not record)."""
    if inplace:
        return z.clamp_(min=exp_floor(z.dtype)).exp_()
    return z.clamp(min=exp_floor(z.dtype)).exp()


def smax(x: torch.Tensor, gamma: float, dim: int, *, inplace: bool = False) -> torch.Tensor:
    """``max`` over ``dim`` if ``gamma == 0``, else ``gamma * logsumexp(x / gamma)`` over ``dim``.

    ``inplace``: ``x`` may be overwritten (no autograd through this call)."""
    if gamma == 0.0:
        # under autograd, max's gradient goes to one arg-max (amax would split it over ties)
        return x.max(dim=dim).values if x.requires_grad else x.amax(dim=dim)
    s = x / gamma
    m = s.amax(dim=dim, keepdim=True)
    z = s.sub_(m) if inplace else s - m
    return gamma * (m.squeeze(dim) + torch.log(floored_exp(z, inplace=inplace).sum(dim=dim)))


def smax_weights(x: torch.Tensor, m: torch.Tensor, gamma: float, dim: int) -> torch.Tensor:
    """The gradient of ``m = smax(x, gamma, dim)`` with respect to ``x``: soft-max weights
    ``exp((x - m) / gamma)`` along ``dim``, or the one-hot arg-max when ``gamma == 0``."""
    if gamma == 0.0:
        idx = x.argmax(dim=dim, keepdim=True)
        return torch.zeros_like(x).scatter_(dim, idx, 1.0)
    return floored_exp((x - m.unsqueeze(dim)).div_(gamma), inplace=True)
