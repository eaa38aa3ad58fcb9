"""Layer 3, chain kernels: (smoothed) max-marginals of a batch of chains.

One operation, one signature for every implementation::

    marginals [C, n, L], value [C] = chain_marginals(unary [C, n, L], pairwise, lengths [C], gamma)

- ``reference``: plain loops, dense tables, autograd (obviously correct, slow);
- ``torch``: vectorised over chains and labels, hand-written backward (CPU and any device);
- ``triton``: GPU kernels (CUDA tensors, Triton installed);
- ``numba``: compiled CPU kernels (:mod:`.numba`), the default on CPU tensors when numba is
  importable (float32/float64; the max, and the smoothed max of Potts forms; the rest, where
  torch is as fast or faster, goes to ``torch``: see ``_numba_covers``).

Backends are entries of :data:`BACKENDS` (name -> :class:`Backend`): a function with the
signature above (plus ``allow_sync``), whether it can run now, and on which tensors it is the
default. Adding one is one module plus one :func:`register_backend` call below.
``CRFKIT_CHAIN_IMPL=<name>`` forces one (``CRFKIT_CHAIN_IMPL=torch``: the torch path on the CPU
too); by default the first registered backend that is available and prefers the tensors wins,
else ``"torch"``. Where numba is missing the CPU default is ``torch``, with one warning.

:func:`chain_values` (the value only, no marginals) and :func:`chain_viterbi` (a maximising
labelling) dispatch the same way; a backend without them uses the torch path's.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch.compiler import is_compiling as _is_compiling

from ..._validation import CRFValueError
from ...decomposition.chains import ChainPairwise
from .checks import check_chain_inputs
from .reference import chain_marginals_reference, smooth_max

__all__ = [
    "chain_marginals",
    "chain_values",
    "chain_viterbi",
    "chain_marginals_reference",
    "smooth_max",
    "IMPLEMENTATIONS",
    "BACKENDS",
    "Backend",
    "register_backend",
    "choose_implementation",
]


@dataclass(frozen=True)
class Backend:
    """A chain implementation.

    ``load()`` returns ``fn(unary, pairwise, lengths, gamma, *, allow_sync) -> (marginals, value)``
    (imported lazily); ``available()`` says whether it can run here; ``prefers(unary)`` whether it
    is the default for these tensors (checked in registration order). ``load_values()`` /
    ``load_viterbi()`` (optional) return ``fn(unary, pairwise, lengths, gamma, *, allow_sync) ->
    value [C]`` and ``fn(unary, pairwise, lengths, *, allow_sync) -> labels [C, n]``; ``None``:
    the torch path's."""

    name: str
    load: Callable[[], Callable]
    available: Callable[[], bool] = lambda: True
    prefers: Callable[[torch.Tensor], bool] = lambda unary: False
    load_values: Callable[[], Callable] | None = None
    load_viterbi: Callable[[], Callable] | None = None


BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> None:
    """Add (or replace) a chain implementation under ``backend.name``."""
    BACKENDS[backend.name] = backend


def _reference(unary, pairwise, lengths, gamma, *, allow_sync=True):
    return chain_marginals_reference(unary, pairwise, lengths, gamma)


def _load_torch():
    from .torch import chain_marginals_torch

    return chain_marginals_torch


def _load_triton():
    from .triton import chain_marginals_triton

    def run(unary, pairwise, lengths, gamma, *, allow_sync=True):
        if _is_compiling():
            # under torch.compile: the registered custom op, opaque to the compiler (no graph break)
            from .custom_op import REGISTERED, chain_marginals_op

            if REGISTERED:
                return chain_marginals_op(unary, pairwise, lengths, gamma)
        return chain_marginals_triton(unary, pairwise, lengths, gamma, allow_sync=allow_sync)

    return run


def _triton_available() -> bool:
    try:
        from . import triton as _t

        return _t.AVAILABLE
    except Exception:  # pragma: no cover - depends on the machine
        return False


def _load_torch_values():
    from .torch import chain_values_torch

    return chain_values_torch


def _load_torch_viterbi():
    from .torch import chain_viterbi_torch

    return chain_viterbi_torch


_NUMBA_WARNED = [False]
# (``torch`` itself is not read at run time in this module: importing the ``.torch`` submodule
# rebinds the package attribute of that name)
_NUMBA_DTYPES = (torch.float32, torch.float64)


def _numba_available() -> bool:
    """Whether the compiled CPU kernels can run; the first ``False`` warns (once per process)."""
    try:
        from . import numba as _nb

        ok = _nb.AVAILABLE
    except Exception:  # pragma: no cover - depends on the environment
        ok = False
    if not ok and not _NUMBA_WARNED[0]:
        _NUMBA_WARNED[0] = True
        warnings.warn(
            "crfkit: numba is not importable, the chain kernels on the CPU use the (slower) torch path; "
            "install numba for the compiled kernels",
            RuntimeWarning,
            stacklevel=3,
        )
    return ok


def _numba_covers(unary: torch.Tensor, pairwise: ChainPairwise, gamma: float = 0.0, allow_sync: bool = True) -> bool:
    """The cases the compiled kernels run (forward and backward); the rest go to the torch path:
    other dtypes or devices, forms they do not know, torch.compile tracing, numba missing, and
    the smoothed max (``gamma > 0``) over ``L x L`` tables, where the compiled loop is exp-bound and
    slower than torch's vectorised exp (``benchmarks/README.md``: 0.4-0.8x); the smoothed max of
    a Potts form (closed form, ``O(L)``) stays compiled."""
    if not (
        unary.device.type == "cpu"
        and unary.dtype in _NUMBA_DTYPES
        and getattr(pairwise, "kind", None) in ("dense", "weighted", "truncated_linear")
        and not _is_compiling()
        and _numba_available()
    ):
        return False
    return gamma == 0.0 or pairwise.fast_path(gamma, allow_sync) is not None


def _load_numba():
    from . import numba as nb
    from .torch import chain_marginals_torch

    def run(unary, pairwise, lengths, gamma, *, allow_sync=True, out=None):
        if not _numba_covers(unary, pairwise, gamma, allow_sync):
            return chain_marginals_torch(unary, pairwise, lengths, gamma, allow_sync=allow_sync)
        return nb.chain_marginals_numba(unary, pairwise, lengths, gamma, allow_sync=allow_sync, out=out)

    return run


def _load_numba_values():
    from . import numba as nb
    from .torch import chain_values_torch

    def run(unary, pairwise, lengths, gamma, *, allow_sync=True):
        if not _numba_covers(unary, pairwise, gamma, allow_sync):
            return chain_values_torch(unary, pairwise, lengths, gamma, allow_sync=allow_sync)
        return nb.chain_values_numba(unary, pairwise, lengths, gamma, allow_sync=allow_sync)

    return run


def _load_numba_viterbi():
    from . import numba as nb
    from .torch import chain_viterbi_torch

    def run(unary, pairwise, lengths, *, allow_sync=True):
        if not _numba_covers(unary, pairwise):
            return chain_viterbi_torch(unary, pairwise, lengths, allow_sync=allow_sync)
        return nb.chain_viterbi_numba(unary, pairwise, lengths, allow_sync=allow_sync)

    return run


register_backend(Backend("reference", lambda: _reference))
register_backend(Backend("torch", _load_torch, load_values=_load_torch_values, load_viterbi=_load_torch_viterbi))
register_backend(
    Backend("triton", _load_triton, _triton_available, lambda unary: unary.is_cuda and _triton_available())
)
register_backend(
    Backend("numba", _load_numba, _numba_available, lambda unary: unary.device.type == "cpu",
            load_values=_load_numba_values, load_viterbi=_load_numba_viterbi)
)

#: names of the registered implementations (kept for callers that list them)
IMPLEMENTATIONS = tuple(BACKENDS)


def choose_implementation(unary: torch.Tensor, implementation: str | None = None) -> str:
    """The backend to run: ``implementation``, else ``CRFKIT_CHAIN_IMPL``, else the first
    available backend that prefers ``unary``'s tensors, else ``"torch"``."""
    impl = implementation or os.environ.get("CRFKIT_CHAIN_IMPL") or None
    if impl is not None:
        if impl not in BACKENDS:
            raise CRFValueError(f"expected a chain implementation in {tuple(BACKENDS)}, got {impl!r}")
        return impl
    for name, backend in BACKENDS.items():
        if backend.prefers(unary) and backend.available():
            return name
    return "torch"


def _checked(unary, pairwise, lengths, gamma, validate_args) -> tuple[float, bool]:
    """The inputs' checks shared by the entry points: ``(gamma, allow_sync)``. The host read of
    ``lengths`` is skipped with ``validate_args=False`` and while torch.compile traces (no graph
    break there)."""
    allow_sync = bool(validate_args) and not _is_compiling()
    return check_chain_inputs(unary, pairwise, lengths, gamma, check_lengths=allow_sync), allow_sync


def chain_marginals(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    gamma: float,
    *,
    implementation: str | None = None,
    validate_args: bool = True,
    out: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(Smoothed) max-marginals of a batch of right-padded chains.

    Args:
        unary: ``[C, n, L]`` node scores along each chain (padding ignored).
        pairwise: a :class:`~crfkit.decomposition.ChainPairwise` form over the same chains.
        lengths: ``[C]`` long, number of valid positions of each chain (``1 <= lengths <= n``).
        gamma: ``0`` for max, ``> 0`` for the smoothed max ``gamma * logsumexp(· / gamma)``.
        implementation: force a backend by name (``"reference"``, ``"torch"``, ``"triton"``, ...).
        validate_args: also run the checks that read tensors on the host (``lengths`` range; the
            weights' sign for a fast path when the form does not know it). ``False``: no device
            sync; a form of unknown sign takes the exact table path.
        out: a contiguous ``[C, n, L]`` tensor of ``unary``'s dtype the marginals may be written
            into (the numba backend does when no gradient is needed; the others ignore it):
            use the returned tensor, which is ``out`` only then.

    Returns:
        ``marginals [C, n, L]`` (zero on padding) and ``value [C]``, the (smoothed) max of
        each chain's score; differentiable with respect to ``unary`` and the pairwise tensors.
    """
    gamma, allow_sync = _checked(unary, pairwise, lengths, gamma, validate_args)
    impl = choose_implementation(unary, implementation)
    fn = BACKENDS[impl].load()
    if out is not None and impl == "numba":
        return fn(unary, pairwise, lengths, gamma, allow_sync=allow_sync, out=out)
    return fn(unary, pairwise, lengths, gamma, allow_sync=allow_sync)


def chain_values(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    gamma: float,
    *,
    implementation: str | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    """Only the (smoothed) max of each chain, ``value [C]`` (one pass of messages, no grad);
    arguments as :func:`chain_marginals`."""
    gamma, allow_sync = _checked(unary, pairwise, lengths, gamma, validate_args)
    load = BACKENDS[choose_implementation(unary, implementation)].load_values or _load_torch_values
    return load()(unary, pairwise, lengths, gamma, allow_sync=allow_sync)  # no grad: the loaders' own


def chain_viterbi(
    unary: torch.Tensor,
    pairwise: ChainPairwise,
    lengths: torch.Tensor,
    *,
    implementation: str | None = None,
    validate_args: bool = True,
) -> torch.Tensor:
    """A maximising labelling of each chain, ``labels [C, n]`` long (``0`` on padding); arguments
    as :func:`chain_marginals`."""
    _, allow_sync = _checked(unary, pairwise, lengths, 0.0, validate_args)
    load = BACKENDS[choose_implementation(unary, implementation)].load_viterbi or _load_torch_viterbi
    return load()(unary, pairwise, lengths, allow_sync=allow_sync)
