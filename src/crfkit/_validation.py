"""Input checks shared by every public entry point.

Every check raises a subclass of ``ValueError`` or ``TypeError`` whose message
says what was expected and what came, e.g.
``expected unary of shape [B, L, H, W], got [3, 5]``.  Nothing is broadcast
silently: shapes must match exactly.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

__all__ = [
    "CRFShapeError",
    "CRFValueError",
    "CRFTypeError",
    "check_tensor",
    "check_finite",
    "check_device",
    "check_labels",
    "check_gamma",
    "check_int",
    "check_score_range",
    "check_number",
    "fmt_shape",
]


class CRFShapeError(ValueError):
    """A tensor has the wrong number of dimensions or the wrong size."""


class CRFValueError(ValueError):
    """A value is out of its allowed range (NaN, a negative gamma, a label >= L, ...)."""


class CRFTypeError(TypeError):
    """An argument has the wrong type or dtype."""


def fmt_shape(shape: Sequence[int]) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_tensor(
    x,
    name: str,
    letters: str,
    sizes: dict[str, int] | None = None,
    *,
    floating: bool | None = None,
    integer: bool | None = None,
) -> dict[str, int]:
    """Check that ``x`` is a tensor whose shape is described by ``letters``.

    ``letters`` is a space-separated list of shape letters, e.g. ``"B L H W"``.
    Sizes already known (``sizes``) must match; unknown letters are bound from
    ``x`` and returned (the updated ``sizes``), so that later checks can use them.
    """
    sizes = dict(sizes or {})
    spec = letters.split()
    pretty = "[" + ", ".join(spec) + "]"
    if not isinstance(x, torch.Tensor):
        raise CRFTypeError(f"expected {name} to be a torch.Tensor of shape {pretty}, got {type(x).__name__}")
    check_device(x, name)
    if x.dim() != len(spec):
        raise CRFShapeError(f"expected {name} of shape {pretty}, got {fmt_shape(x.shape)}")
    for letter, size in zip(spec, x.shape):
        if letter.isdigit():
            if int(letter) != size:
                raise CRFShapeError(f"expected {name} of shape {pretty}, got {fmt_shape(x.shape)}")
            continue
        if letter in sizes and sizes[letter] != size:
            known = ", ".join(f"{k}={v}" for k, v in sizes.items())
            raise CRFShapeError(
                f"expected {name} of shape {pretty} with {known}, got {fmt_shape(x.shape)}"
            )
        sizes[letter] = int(size)
    if floating and not x.is_floating_point():
        raise CRFTypeError(f"expected {name} to have a floating dtype, got {x.dtype}")
    if integer and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        raise CRFTypeError(f"expected {name} to have an integer dtype (torch.long), got {x.dtype}")
    return sizes


#: Devices whose tensors hold values (``meta`` tensors have shapes only).
DEVICE_TYPES = ("cpu", "cuda")


def check_device(x: torch.Tensor, name: str) -> None:
    """Refuse tensors on a device other than the CPU or CUDA (e.g. ``meta``: no values to compute with)."""
    if x.device.type not in DEVICE_TYPES:
        raise CRFValueError(f"expected {name} to be a CPU or CUDA tensor, got a tensor on device {x.device}")


def check_finite(x: torch.Tensor, name: str, *, allow_neg_inf: bool = False) -> None:
    """Refuse NaN and +inf (and -inf unless ``allow_neg_inf``)."""
    if allow_neg_inf:
        bad = torch.isnan(x) | (x == float("inf"))
    else:
        bad = ~torch.isfinite(x)
    if bool(bad.any()):
        count = int(bad.sum())
        kind = "NaN or +inf" if allow_neg_inf else "NaN or inf"
        raise CRFValueError(f"expected finite values in {name}, got {count} entries that are {kind}")


def check_labels(labels: torch.Tensor, name: str, num_labels: int) -> None:
    if labels.numel() == 0:
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_labels:
        raise CRFValueError(
            f"expected {name} in [0, {num_labels - 1}] (L={num_labels}), got values in [{lo}, {hi}]"
        )


def check_gamma(gamma: float, name: str = "gamma") -> float:
    """``gamma`` as a float ``>= 0`` and finite (a number, not a bool or a string)."""
    if isinstance(gamma, (bool, str, bytes)):
        raise CRFTypeError(f"expected {name} to be a number >= 0, got {gamma!r}")
    try:
        g = float(gamma)
    except (TypeError, ValueError):
        raise CRFTypeError(f"expected {name} to be a number >= 0, got {gamma!r}") from None
    if not (g >= 0.0) or g == float("inf"):
        raise CRFValueError(f"expected {name} >= 0 and finite, got {gamma!r}")
    return g


def check_int(value, name: str, low: int = 0) -> int:
    """``value`` as an int ``>= low`` (``operator.index``: floats, strings and bools refused)."""
    if isinstance(value, bool):
        raise CRFTypeError(f"expected {name} to be an integer >= {low}, got {value!r}")
    try:
        v = operator.index(value)
    except TypeError:
        raise CRFTypeError(f"expected {name} to be an integer >= {low}, got {value!r}") from None
    if v < low:
        raise CRFValueError(f"expected {name} >= {low}, got {v}")
    return v


def check_flag(value, name: str) -> bool:
    """A boolean option: ``True``/``False`` (numpy bools too), not a string or a number."""
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    raise CRFTypeError(f"expected {name} to be True or False, got {type(value).__name__} {value!r}")


def check_number(value, name: str) -> float:
    """``value`` as a float (a real number: bools, strings and complex numbers refused)."""
    if isinstance(value, (bool, str, bytes, complex)):
        raise CRFTypeError(f"expected {name} to be a real number, got {value!r}")
    try:
        return float(value)
    except (TypeError, ValueError):
        raise CRFTypeError(f"expected {name} to be a real number, got {value!r}") from None


def _abs_max(t: torch.Tensor) -> float:
    return float(t.detach().abs().max()) if t.numel() else 0.0


def term_magnitude(form, num_labels: int) -> float:
    """An upper bound on ``|score|`` of one edge under a pairwise form (duck-typed: the product of
    its tensors' max ``|·|``, a numeric ``weight``, and ``min(truncation, L - 1)``). Host reads."""
    m = 1.0
    for t in form.tensors():
        m *= _abs_max(t)
    w = getattr(form, "weight", None)
    if w is not None and not isinstance(w, torch.Tensor):
        m *= abs(float(w))
    trunc = getattr(form, "truncation", None)
    if trunc is not None:
        m *= min(float(trunc), max(num_labels - 1, 0))
    return m


def check_score_range(unary: torch.Tensor, nodes: int, terms, num_labels: int) -> None:
    """Refuse potentials whose scores may overflow their dtype: the bound
    ``nodes · max|unary| + Σ_k edges_k · |term_k|`` (``terms``: pairs ``(edges per model, form)``)
    must stay below ``torch.finfo(dtype).max`` (so that ``score``, the chains' sums and the
    certificate stay finite). Host reads: call when values are checked."""
    limit = torch.finfo(unary.dtype).max
    bound = nodes * _abs_max(unary)
    for count, form in terms:
        mag = term_magnitude(form, num_labels)
        w = getattr(form, "weight", None)
        if w is not None and not isinstance(w, torch.Tensor):  # a number weight is cast to the dtype
            mag = max(mag, abs(float(w)))
        if not mag <= limit:  # even with no edges
            raise CRFValueError(
                f"expected pairwise scores that fit {unary.dtype} (|score| <= {limit:.3g}), got {form!r} "
                f"(scores up to {mag:.3g}): rescale them or use float64"
            )
        bound += count * mag
    if not bound <= limit:
        raise CRFValueError(
            f"expected potentials whose scores fit {unary.dtype} (|score| <= {limit:.3g}), got a score bound "
            f"N·max|unary| + Σ E·max|pairwise| = {bound:.3g}: rescale them or use float64"
        )
