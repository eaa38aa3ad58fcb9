"""Checkpoints: written atomically (temp file in the same folder, then ``os.replace``) and
read with ``torch.load(..., weights_only=True)``."""

from __future__ import annotations

import os

import torch

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write_bytes", "atomic_write_text"]


from ..io.atomic import atomic_write as _atomic  # noqa: E402
from ..io.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402,F401  (re-exported)


def save_checkpoint(path: str, state: dict) -> None:
    """``torch.save(state)`` atomically: a reader never sees a half-written file."""
    _atomic(path, lambda fh: torch.save(state, fh))


def load_checkpoint(path: str, map_location="cpu") -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path}")
    return torch.load(path, map_location=map_location, weights_only=True)
