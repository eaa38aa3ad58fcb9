"""Options of :func:`crfkit.solve_map` / :func:`~crfkit.inference.dual_decomposition.solve_chain_problem`:
the step rules, the default continuation schedule in γ, and :class:`SolverOptions` (checked when built)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .._validation import CRFTypeError, CRFValueError, check_gamma, check_int, check_number
from ..decomposition.chains import ChainProblem

__all__ = [
    "STEP_RULES",
    "MAX_FIXED_STEP",
    "SolverOptions",
    "check_gamma_range",
    "check_step",
    "default_gamma_schedule",
    "gamma_range",
]

STEP_RULES = ("adaptive", "paper")


def _potential_scale(problem: ChainProblem) -> float:
    """A robust size of the potentials, to place the default γ schedule (scale-free)."""
    u = problem.unary.detach()
    spread = (u - u.mean(dim=1, keepdim=True)).abs().mean().item()
    pw_spread = 0.0
    for g in problem.groups:
        pw_spread = max(pw_spread, g.pairwise.spread(problem.num_labels))
    scale = max(spread, pw_spread)
    return scale if scale > 0 else 1.0


def default_gamma_schedule(
    problem: ChainProblem, stages: int = 10, start: float = 1.0, end: float = 1e-4
) -> list[float]:
    """Geometric γ stages from ``start · scale`` to ``end · scale`` (scale: the potentials' spread)."""
    stages = check_int(stages, "stages", 1)
    start, end = _positive(start, "gamma_start"), _positive(end, "gamma_end")
    s = _potential_scale(problem)
    if stages == 1:
        return [start * s]
    r = (end / start) ** (1.0 / (stages - 1))
    return [start * s * r**k for k in range(stages)]


#: Largest fixed ``step`` accepted. Measured with ``solve_map`` (300 iterations, random 6×7
#: grids, 4 labels, dense tables, potentials of scale 1 and 100, γ = 0 and the continuation):
#: the iterates stay finite up to step 2 in float32 and 10 in float64 and turn NaN from 3 and 50;
#: the gap after 300 iterations grows with the fixed step (0.25 best, 1 already 4-10x worse), so
#: 1 keeps a margin of 3 to the first NaN and loses nothing (the adaptive rule stops at 1 too).
MAX_FIXED_STEP = 1.0

#: Relative margin kept between γ and the dtype's limits (``x / γ`` and ``γ · log Σ`` finite);
#: 16-bit floats get ``(max / tiny) ** 0.25`` instead (about 180 for float16), so that their
#: range is not empty.
GAMMA_MARGIN = 1e6


def _positive(value, name: str) -> float:
    """``value`` as a float ``> 0`` and finite."""
    v = check_number(value, name)
    if not (0.0 < v < math.inf):
        raise CRFValueError(f"expected {name} > 0 and finite, got {value!r}")
    return v


def check_step(step, rules: tuple[str, ...]) -> str | float:
    """A step rule named in ``rules`` or a fixed number in ``(0, MAX_FIXED_STEP]``."""
    if isinstance(step, str):
        if step not in rules:
            raise CRFValueError(f"expected step in {rules} or a number in (0, {MAX_FIXED_STEP}], got {step!r}")
        return step
    v = check_number(step, "step")
    if not (0.0 < v <= MAX_FIXED_STEP):
        raise CRFValueError(f"expected step in {rules} or a number in (0, {MAX_FIXED_STEP}], got {step!r}")
    return v


def check_gamma_range(gammas, problem: ChainProblem, validate_args: bool = True) -> None:
    """Refuse a ``γ > 0`` outside :func:`gamma_range` for the problem's dtype (and, with
    ``validate_args``, the potentials' magnitude: host reads)."""
    if not any(g > 0 for g in gammas):
        return
    mag = potential_magnitude(problem) if validate_args else 1.0
    low, high = gamma_range(problem.unary.dtype, mag)
    for g in gammas:
        if g > 0 and not (low <= g <= high):
            raise CRFValueError(
                f"expected gamma 0 or in [{low:.3g}, {high:.3g}] for {problem.unary.dtype} potentials of "
                f"magnitude {mag:.3g} (else the smoothed values overflow), got {g!r}"
            )


def potential_magnitude(problem: ChainProblem) -> float:
    """An upper bound on the size of any one score of the problem (max |unary| and, per chain
    edge, the product of the pairwise tensors' max |·| times ``L``); one host read per tensor."""
    m = float(problem.unary.detach().abs().max()) if problem.unary.numel() else 0.0
    for g in problem.groups:
        pw = g.pairwise
        part = float(problem.num_labels)
        for name in pw.SHAPES:
            t = getattr(pw, name)
            part *= float(t.detach().abs().max()) if t.numel() else 0.0
        m = max(m, part)
    return m


def gamma_range(dtype: torch.dtype, magnitude: float = 1.0) -> tuple[float, float]:
    """The γ > 0 accepted for potentials of ``dtype`` whose scores are at most ``magnitude``:
    ``[max(tiny, magnitude / max) · m, max / m]`` (``torch.finfo``; ``m = GAMMA_MARGIN``, less for
    16-bit floats), so that ``x / γ`` and the smoothed values stay finite (float32: about
    ``[1.2e-32, 3.4e32]`` for scores of size 1; float16: about ``[0.011, 360]``)."""
    fi = torch.finfo(dtype)
    margin = min(GAMMA_MARGIN, (fi.max / fi.tiny) ** 0.25)
    low = max(fi.tiny, magnitude / fi.max) * margin
    return low, fi.max / margin


@dataclass
class SolverOptions:
    """The options of :func:`solve_map` / :func:`solve_chain_problem` (documented in :func:`solve_map`).

    ``gammas`` gives an explicit stage schedule (overrides ``gamma`` and the continuation);
    ``validate_args=False`` skips the checks that read tensors on the host (device syncs).

    Every field is checked when the options are built (one-line ``CRFValueError`` /
    ``CRFTypeError`` naming the field, the accepted range and the value): ``iters >= 0``,
    ``stages >= 1``, ``icm_sweeps >= 0``, ``certificate_every >= 1``, ``decode_every >= 1`` or
    ``None`` (integers, not bools); ``0 < gamma_end <= gamma_start``; ``gamma >= 0``; ``step`` a
    rule name or a number in ``(0, MAX_FIXED_STEP]`` (larger fixed steps diverge to NaN);
    ``tol >= 0``; ``momentum`` and ``validate_args`` bools; ``callback`` callable. Each γ actually
    used is checked against the problem's dtype when the solve starts (:func:`gamma_range`).
    ``tol`` (default ``1e-9``): stop when ``gap <= tol · max(1, |dual|)`` for every batch element,
    so a problem solved exactly (a tree) stops as soon as its gap is 0.
    """

    iters: int = 1000
    gamma: float | None = None
    step: str | float = "adaptive"
    stages: int = 20
    gamma_start: float = 0.3
    gamma_end: float = 1e-4
    gammas: list[float] | None = None
    decode: str = "icm"
    icm_sweeps: int = 3
    certificate_every: int = 10
    decode_every: int | None = None
    tol: float = 1e-9
    momentum: bool = True
    callback: Callable[[dict], None] | None = None
    implementation: str | None = None
    validate_args: bool = True

    def __post_init__(self):
        self.iters = check_int(self.iters, "iters", 0)
        self.stages = check_int(self.stages, "stages", 1)
        self.icm_sweeps = check_int(self.icm_sweeps, "icm_sweeps", 0)
        self.certificate_every = check_int(self.certificate_every, "certificate_every", 1)
        if self.decode_every is not None:
            self.decode_every = check_int(self.decode_every, "decode_every", 1)
        self._check_step()
        if self.gamma is not None:
            self.gamma = check_gamma(self.gamma)
        self.gamma_start = _positive(self.gamma_start, "gamma_start")
        self.gamma_end = _positive(self.gamma_end, "gamma_end")
        if self.gamma_end > self.gamma_start:
            raise CRFValueError(
                f"expected gamma_end <= gamma_start (a decreasing schedule), got gamma_start={self.gamma_start!r}, "
                f"gamma_end={self.gamma_end!r}"
            )
        if self.gammas is not None:
            self._check_gammas()
        if not isinstance(self.decode, str) or self.decode not in ("icm", "argmax"):
            raise CRFValueError(f"expected decode in ('icm', 'argmax'), got {self.decode!r}")
        tol = check_number(self.tol, "tol")
        if not (0.0 <= tol < math.inf):
            raise CRFValueError(f"expected tol >= 0 and finite, got {self.tol!r}")
        self.tol = tol
        for name in ("momentum", "validate_args"):
            if not isinstance(getattr(self, name), bool):
                raise CRFTypeError(f"expected {name} to be True or False, got {getattr(self, name)!r}")
        if self.callback is not None and not callable(self.callback):
            raise CRFTypeError(f"expected callback to be callable (or None), got {self.callback!r}")
        if self.implementation is not None and not isinstance(self.implementation, str):
            raise CRFTypeError(f"expected implementation to be a name (str) or None, got {self.implementation!r}")

    def _check_step(self) -> None:
        self.step = check_step(self.step, STEP_RULES)

    def _check_gammas(self) -> None:
        try:
            values = list(self.gammas)
        except TypeError:
            raise CRFTypeError(f"expected gammas to be a list of numbers >= 0, got {self.gammas!r}") from None
        if not values:
            raise CRFValueError("expected gammas to hold at least one value, got an empty list")
        self.gammas = [check_gamma(g, "gammas entry") for g in values]

    def stage_gammas(self, problem: ChainProblem) -> list[float]:
        """The γ of each stage: the explicit schedule, one fixed γ, or the default continuation.

        An explicit ``γ > 0`` outside :func:`gamma_range` for the problem's dtype (and, with
        ``validate_args``, the potentials' magnitude) is refused; the default continuation is
        clipped into that range (it only matters for potentials near the dtype's limits, e.g.
        float32 scores of 1e30 whose spread is 1)."""
        if self.gammas is not None:
            out = list(self.gammas)
        elif self.gamma is not None:
            out = [self.gamma]
        else:
            out = default_gamma_schedule(problem, self.stages, self.gamma_start, self.gamma_end)
            mag = potential_magnitude(problem) if self.validate_args else 1.0
            low, high = gamma_range(problem.unary.dtype, mag)
            return [min(max(g, low), high) for g in out]
        check_gamma_range(out, problem, self.validate_args)
        return out
