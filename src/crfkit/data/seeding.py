"""Per-sample augmentation seeds shared by the segmentation data sets (a leaf module: no crfkit imports)."""

from __future__ import annotations


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of sample ``index`` in ``epoch`` (a fixed mix, independent of workers)."""
    return (int(seed) * 1_000_003 + int(epoch) * 7_919 + int(index) * 104_729 + 12345) % (2**63 - 1)
