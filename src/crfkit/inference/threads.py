"""How many CPU threads crfkit's solvers give torch: ``CRFKIT_NUM_THREADS``, default 1.

torch's default (one thread per core) was measured 17x slower than one thread on the Python API
of a busy 2-core machine, and 2 threads slower than 1 on the quick start here (6.1 s vs 3.2-5.4 s
wall). So :func:`crfkit.solve_map`, :func:`crfkit.belief_propagation` and
:func:`crfkit.learn_parameters` run with one torch thread unless told otherwise, and give the
caller's setting back when they return. Told otherwise: ``CRFKIT_NUM_THREADS=n`` (that many
threads); or a thread count the caller chose (``OMP_NUM_THREADS`` set, or
``torch.set_num_threads`` called with a value other than torch's default), which is left alone.
The compiled chain kernels read ``CRFKIT_NUM_THREADS`` too (``crfkit.ops.chain.numba``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

import torch

from .._validation import CRFValueError

__all__ = ["solver_threads", "with_solver_threads", "requested_threads"]

F = TypeVar("F", bound=Callable)

#: torch's thread count when crfkit was imported (its default unless the caller changed it before)
_TORCH_DEFAULT = torch.get_num_threads()


def requested_threads() -> int:
    """The torch threads the solvers use: ``CRFKIT_NUM_THREADS`` (a positive integer), else the
    caller's own choice (see the module notes), else 1."""
    raw = os.environ.get("CRFKIT_NUM_THREADS", "").strip()
    if not raw:
        current = torch.get_num_threads()
        chosen = os.environ.get("OMP_NUM_THREADS", "").strip() or current != _TORCH_DEFAULT
        return current if chosen else 1
    try:
        n = int(raw)
    except ValueError:
        n = 0
    if n < 1:
        raise CRFValueError(f"expected CRFKIT_NUM_THREADS to be a positive integer, got {raw!r}")
    return n


@contextmanager
def solver_threads() -> Iterator[None]:
    """Run the block with :func:`requested_threads` torch threads, then restore the caller's."""
    want, old = requested_threads(), torch.get_num_threads()
    if want == old:
        yield
        return
    torch.set_num_threads(want)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def with_solver_threads(fn: F) -> F:
    """Decorate a public solver so that it runs under :func:`solver_threads`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with solver_threads():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
