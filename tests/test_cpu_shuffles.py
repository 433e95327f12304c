"""numbaconv/cpu/_shuffles.py: the vector shuffles between map rows and F(4x4) tile planes, each
against the loop it replaces, element for element, for every width a switch case compiles (and the
widths either side, which must be declined untouched), in float32 and float64, at offsets that are
not multiples of a vector."""

import numpy as np
import pytest
from numba import njit

from numbaconv.cpu import _shuffles

S0, D0, STEP = 3, 5, 40   # odd offsets; planes 40 elements apart


@njit
def _split_tile_row(src, dst, tw):
    return _shuffles.split_tile_row(src, S0, dst, D0, STEP, tw)


@njit
def _add_tile_row(src, dst, tw):
    return _shuffles.add_tile_row(src, S0, STEP, dst, D0, tw)


@njit
def _join_output_row(src, bias, dst, width):
    return _shuffles.join_output_row(src, S0, STEP, bias, dst, D0, width)


@njit
def _split_output_row(src, dst, width):
    return _shuffles.split_output_row(src, S0, dst, D0, STEP, width)


def _arrays(dtype, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(400).astype(dtype), rng.standard_normal(400).astype(dtype)


TILE_COLS = range(0, max(_shuffles.TILE_COLS) + 2)
WIDTHS = range(0, 4 * max(_shuffles.TILE_COLS) + 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tw", TILE_COLS)
def test_split_tile_row_is_the_stride_4_gather(dtype, tw):
    src, dst = _arrays(dtype, tw)
    want = dst.copy()
    ran = _split_tile_row(src, dst, tw)
    assert ran == (tw in _shuffles.TILE_COLS)
    if ran:
        for l in range(6):
            for j in range(tw):
                want[D0 + STEP * l + j] = src[S0 + 4 * j + l]
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tw", TILE_COLS)
def test_add_tile_row_adds_the_planes_back_onto_the_row(dtype, tw):
    src, dst = _arrays(dtype, tw)
    want = dst.copy()
    ran = _add_tile_row(src, dst, tw)
    assert ran == (tw in _shuffles.TILE_COLS)
    if ran:   # in its documented order: (row + planes 0-3) + planes 4-5
        first, last = np.zeros(4 * tw + 2, dtype), np.zeros(4 * tw + 2, dtype)
        for l in range(6):
            for j in range(tw):
                (first if l < 4 else last)[4 * j + l] = src[S0 + STEP * l + j]
        want[D0:D0 + 4 * tw + 2] = (want[D0:D0 + 4 * tw + 2] + first) + last
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
def test_join_output_row_interleaves_four_planes_and_adds_the_bias(dtype, width):
    src, dst = _arrays(dtype, width)
    want = dst.copy()
    ran = _join_output_row(src, dtype(0.25), dst, width)
    assert ran == (-(-width // 4) in _shuffles.TILE_COLS)
    if ran:
        for x in range(width):
            want[D0 + x] = src[S0 + STEP * (x % 4) + x // 4] + dtype(0.25)
    np.testing.assert_array_equal(dst, want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("width", WIDTHS)
def test_split_output_row_fills_past_the_map_with_zeros(dtype, width):
    src, dst = _arrays(dtype, width)
    want = dst.copy()
    ran = _split_output_row(src, dst, width)
    assert ran == (-(-width // 4) in _shuffles.TILE_COLS)
    if ran:
        for c in range(4):
            for j in range(-(-width // 4)):
                want[D0 + STEP * c + j] = src[S0 + 4 * j + c] if 4 * j + c < width else 0
    np.testing.assert_array_equal(dst, want)


@njit
def _split_tile_row_uint(src, dst, tw):
    # offsets as unsigned and 32-bit integers (the kernels index with np.uint64 in places)
    return _shuffles.split_tile_row(src, np.uint64(S0), dst, np.int32(D0), np.uint64(STEP), np.int32(tw))


def test_offsets_of_any_integer_type():
    src, dst = _arrays(np.float32, 1)
    want = dst.copy()
    assert _split_tile_row_uint(src, dst, 4) and _split_tile_row(src, want, 4)
    np.testing.assert_array_equal(dst, want)


def test_arrays_that_are_not_contiguous_are_declined():
    # element offsets mean nothing in a strided view: the caller's loop must run instead
    src, dst = _arrays(np.float32, 0)
    before = dst.copy()
    assert not _split_tile_row(src[::2], dst, 4)
    assert not _split_tile_row(src, dst[::2], 4)
    np.testing.assert_array_equal(dst, before)
