"""Options of :func:`crfkit.solve_map` / :func:`~crfkit.inference.dual_decomposition.solve_chain_problem`:
the step rules, the default continuation schedule in γ, and :class:`SolverOptions` (checked when built)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .._validation import CRFValueError, check_gamma
from ..decomposition.chains import ChainProblem

__all__ = ["STEP_RULES", "SolverOptions", "default_gamma_schedule"]

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
    s = _potential_scale(problem)
    if stages == 1:
        return [start * s]
    r = (end / start) ** (1.0 / (stages - 1))
    return [start * s * r**k for k in range(stages)]


@dataclass
class SolverOptions:
    """The options of :func:`solve_map` / :func:`solve_chain_problem` (documented in :func:`solve_map`).

    ``gammas`` gives an explicit stage schedule (overrides ``gamma`` and the continuation);
    ``validate_args=False`` skips the checks that read tensors on the host (device syncs)."""

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
    tol: float = 0.0
    momentum: bool = True
    callback: Callable[[dict], None] | None = None
    implementation: str | None = None
    validate_args: bool = True

    def __post_init__(self):
        if isinstance(self.step, str):
            if self.step not in STEP_RULES:
                raise CRFValueError(f"expected step in {STEP_RULES} or a positive number, got {self.step!r}")
        elif not (float(self.step) > 0):
            raise CRFValueError(f"expected a positive step, got {self.step!r}")
        if self.decode not in ("icm", "argmax"):
            raise CRFValueError(f"expected decode in ('icm', 'argmax'), got {self.decode!r}")
        self.iters = int(self.iters)
        if self.iters < 0:
            raise CRFValueError(f"expected iters >= 0, got {self.iters}")

    def stage_gammas(self, problem: ChainProblem) -> list[float]:
        """The γ of each stage: the explicit schedule, one fixed γ, or the default continuation."""
        if self.gammas is not None:
            return [check_gamma(g, "gammas entry") for g in self.gammas]
        if self.gamma is not None:
            return [check_gamma(self.gamma)]
        return default_gamma_schedule(problem, self.stages, self.gamma_start, self.gamma_end)
