"""PFM files (Middlebury's disparity format): round trips and hand-built files."""

from __future__ import annotations

import os
import struct

import numpy as np
import pytest

from crfkit.io.pfm import read_pfm, write_pfm


def _hand_pfm(
    rows_top_first: list[list[float]], *, little: bool = True, scale: str | None = None
) -> bytes:
    """A one-channel PFM written from the format's definition: header, rows bottom to top."""
    H, W = len(rows_top_first), len(rows_top_first[0])
    fmt = ("<" if little else ">") + "f" * W
    body = b"".join(struct.pack(fmt, *row) for row in reversed(rows_top_first))
    s = scale if scale is not None else ("-1.0" if little else "1.0")
    return f"Pf\n{W} {H}\n{s}\n".encode() + body


@pytest.mark.parametrize("little", [True, False])
def test_read_hand_built(tmp_path, little):
    rows = [[1.0, 2.0, 3.0], [4.5, float("inf"), -6.25]]
    p = tmp_path / "hand.pfm"
    p.write_bytes(_hand_pfm(rows, little=little))
    img, scale = read_pfm(p, with_scale=True)
    assert img.dtype == np.float32 and img.shape == (2, 3)
    np.testing.assert_array_equal(img, np.array(rows, dtype=np.float32))
    assert scale == 1.0


def test_write_matches_hand_built_bytes(tmp_path):
    rows = [[0.5, 1.5], [2.5, 3.5], [float("inf"), 7.0]]
    p = tmp_path / "w.pfm"
    write_pfm(p, np.array(rows, dtype=np.float64))
    assert p.read_bytes() == _hand_pfm(rows, little=True, scale="-1")


def test_round_trip_random(tmp_path, rng):
    for shape in [(1, 1), (5, 7), (13, 4), (6, 5, 3)]:
        a = rng.normal(size=shape).astype(np.float32) * 100
        a.flat[0] = np.inf
        for little in (True, False):
            p = tmp_path / f"r_{'x'.join(map(str, shape))}_{little}.pfm"
            write_pfm(p, a, little_endian=little)
            b = read_pfm(p)
            assert b.shape == a.shape and b.dtype == np.float32
            np.testing.assert_array_equal(a, b)


def test_three_channel_header(tmp_path, rng):
    a = rng.random((2, 3, 3)).astype(np.float32)
    p = tmp_path / "c.pfm"
    write_pfm(p, a)
    assert p.read_bytes().startswith(b"PF\n3 2\n")
    # the first stored pixel is the bottom-left one, channels interleaved
    raw = p.read_bytes()
    header_len = len(b"PF\n3 2\n-1\n")
    first = struct.unpack("<3f", raw[header_len : header_len + 12])
    np.testing.assert_array_equal(np.array(first, dtype=np.float32), a[-1, 0])


def test_atomic_write_leaves_no_temp_files(tmp_path):
    p = tmp_path / "a.pfm"
    write_pfm(p, np.zeros((3, 3), dtype=np.float32))
    write_pfm(p, np.ones((3, 3), dtype=np.float32))  # overwrite in place
    assert sorted(os.listdir(tmp_path)) == ["a.pfm"]
    np.testing.assert_array_equal(read_pfm(p), np.ones((3, 3), dtype=np.float32))


def test_bad_input(tmp_path):
    p = tmp_path / "bad.pfm"
    p.write_bytes(b"P6\n3 2\n255\n" + bytes(18))
    with pytest.raises(ValueError, match="Pf"):
        read_pfm(p)
    p.write_bytes(b"Pf\n3 x\n-1\n" + bytes(24))
    with pytest.raises(ValueError, match="header"):
        read_pfm(p)
    p.write_bytes(b"Pf\n3 2\n-1\n" + bytes(20))  # 6 samples need 24 bytes
    with pytest.raises(ValueError, match="24 bytes"):
        read_pfm(p)
    with pytest.raises(ValueError, match=r"\[H, W\]"):
        write_pfm(tmp_path / "x.pfm", np.zeros((2, 2, 2), dtype=np.float32))
    with pytest.raises(TypeError):
        write_pfm(tmp_path / "x.pfm", [[1.0]])
