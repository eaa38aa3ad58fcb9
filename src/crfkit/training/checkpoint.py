"""Checkpoints: written atomically (temp file in the same folder, then ``os.replace``) and
read with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os
import tempfile

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_write_text"]


def _atomic(path: str, write) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str, data: bytes) -> None:
    _atomic(path, lambda fh: fh.write(data))


def atomic_write_text(path: str, text: str) -> None:
    _atomic(path, lambda fh: fh.write(text.encode("utf-8")))


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save(state)`` atomically: a reader never sees a half-written file."""
    _atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
