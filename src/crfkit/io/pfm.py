"""PFM (Portable Float Map) files, the format of Middlebury's disparity maps.

Layout: a text header of three whitespace-separated fields, then raw float32 samples:

- ``Pf`` (one channel) or ``PF`` (three channels, interleaved);
- ``width height``;
- ``scale``: its sign gives the byte order (negative = little endian, positive = big endian),
  its magnitude a scale factor (Middlebury writes ``-1``; disparity files use it as-is);

then ``height`` rows of ``width`` samples from the **bottom** row to the top one.  Middlebury
marks unknown disparities with ``inf``, which the format stores unchanged.
"""

from __future__ import annotations

import os

import numpy as np

from .._validation import CRFShapeError, CRFTypeError, CRFValueError, fmt_shape

__all__ = ["read_pfm", "write_pfm", "atomic_write_bytes"]


from .atomic import atomic_write_bytes  # noqa: E402  (re-exported)


def write_pfm(path: str | os.PathLike, image, *, little_endian: bool = True) -> None:
    """Write ``image`` (``[H, W]`` or ``[H, W, 3]``, converted to float32) as a PFM file,
    atomically.  Rows are stored bottom to top; the scale field is ``-1`` (little endian) or
    ``1`` (big endian).  Non-finite values (Middlebury's ``inf`` for unknown) are kept."""
    if hasattr(image, "detach"):
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise CRFTypeError(
            f"expected image as a numpy array or tensor [H, W] or [H, W, 3], got "
            f"{type(image).__name__}"
        )
    if not (np.issubdtype(image.dtype, np.floating) or np.issubdtype(image.dtype, np.integer)):
        raise CRFTypeError(f"expected a numeric image, got dtype {image.dtype}")
    if image.ndim == 2:
        tag = b"Pf"
    elif image.ndim == 3 and image.shape[2] == 3:
        tag = b"PF"
    else:
        raise CRFShapeError(
            f"expected image of shape [H, W] or [H, W, 3], got {fmt_shape(image.shape)}"
        )
    H, W = image.shape[:2]
    if H == 0 or W == 0:
        raise CRFShapeError(f"expected a non-empty image, got shape {fmt_shape(image.shape)}")
    dtype = np.dtype("<f4") if little_endian else np.dtype(">f4")
    body = np.ascontiguousarray(image[::-1].astype(dtype)).tobytes()
    header = tag + b"\n" + f"{W} {H}\n".encode() + (b"-1\n" if little_endian else b"1\n")
    if os.path.isdir(path):
        raise CRFValueError(f"expected path to be a file path, got a folder: {os.fspath(path)!r}")
    parent = os.path.dirname(os.path.abspath(path))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise CRFValueError(f"expected path in a folder, got {os.fspath(path)!r}, under the file {parent!r}")
    try:
        atomic_write_bytes(path, header + body)
    except OSError as exc:  # named by the path asked for, not the temporary file beside it
        raise type(exc)(exc.errno, f"cannot write the PFM file ({exc.strerror})", os.fspath(path)) from None


def _next_token(data: bytes, pos: int) -> tuple[bytes, int]:
    n = len(data)
    while pos < n and data[pos : pos + 1].isspace():
        pos += 1
    if pos < n and data[pos : pos + 1] == b"#":  # comments are not in the format, but be lenient
        while pos < n and data[pos : pos + 1] not in (b"\n", b"\r"):
            pos += 1
        return _next_token(data, pos)
    start = pos
    while pos < n and not data[pos : pos + 1].isspace():
        pos += 1
    return data[start:pos], pos


def read_pfm(path: str | os.PathLike, *, with_scale: bool = False):
    """Read a PFM file: ``[H, W]`` (``Pf``) or ``[H, W, 3]`` (``PF``) float32, top row first.

    With ``with_scale=True`` returns ``(image, scale)`` where ``scale`` is the header's
    magnitude (the sign only gives the byte order).  Malformed files raise ``ValueError``.
    """
    if not isinstance(path, (str, bytes, os.PathLike)):
        raise CRFTypeError(f"expected path to be a file path (str or os.PathLike), got {type(path).__name__}")
    with open(path, "rb") as fh:
        data = fh.read()
    tag, pos = _next_token(data, 0)
    if tag not in (b"Pf", b"PF"):
        raise CRFValueError(
            f"expected a PFM file starting with 'Pf' or 'PF', got {tag[:16]!r} in "
            f"{os.fspath(path)!r}"
        )
    try:
        w_tok, pos = _next_token(data, pos)
        h_tok, pos = _next_token(data, pos)
        s_tok, pos = _next_token(data, pos)
        W, H, scale = int(w_tok), int(h_tok), float(s_tok)
    except ValueError:
        raise CRFValueError(
            f"expected a PFM header 'width height scale', got a malformed header in "
            f"{os.fspath(path)!r}"
        ) from None
    if W <= 0 or H <= 0 or scale == 0 or scale != scale:
        raise CRFValueError(
            f"expected positive width/height and a non-zero scale, got {W}, {H}, {scale}"
        )
    pos += 1  # exactly one whitespace character ends the header
    C = 1 if tag == b"Pf" else 3
    dtype = np.dtype("<f4") if scale < 0 else np.dtype(">f4")
    count = W * H * C
    if len(data) - pos < count * 4:
        raise CRFValueError(
            f"expected {count * 4} bytes of samples for a {W}x{H}x{C} PFM, got {len(data) - pos}"
        )
    arr = np.frombuffer(data, dtype=dtype, count=count, offset=pos).astype(np.float32)
    arr = arr.reshape((H, W) if C == 1 else (H, W, 3))[::-1]
    arr = np.ascontiguousarray(arr)
    return (arr, abs(scale)) if with_scale else arr
