"""The fused kernel at small per-head depths (issue 26): every depth chunk size and odd lane
counts, forward and every gradient against the TensorFlow-op path."""

import numpy as np
import pytest

from test_fused_attention import _inputs, _output_and_gradients

# (dkh, dvh): each chunk size of the kernel's depth loops alone (1 to 5), one full chunk and a
# remainder (8 = 6 + 2, 13 = 6 + 6 + 1), and the AA-WRN-28-10's heads (dkh 20, dvh 2 / 8).
DEPTHS = [(1, 1), (2, 2), (3, 3), (4, 4), (5, 5), (8, 8), (13, 13), (20, 2), (3, 8)]
# (height, width): 35 positions (not a multiple of the kernel's 16 or 8 lanes), a grid wider than
# 16, and 90 positions: more than one block of the backward pass (64 rows at most), the last one
# of 26 rows, which ends in 2 (not kRows = 4); 15 and 21 positions end in 3 and 1 rows (with the
# 8-row groups of keys deeper than 6: in a group of 4 and then 3 or 1 rows); 16 and 8 wide, each
# vector of keys is one grid row (with 16 and 8 lanes: AVX-512 and AVX2 builds).
GRIDS = [(5, 7), (3, 18), (9, 10), (3, 5), (3, 7), (2, 16), (3, 8)]


def _check(depths, grid, relative):
    inputs = _inputs(2, 2, *grid, *depths, scale=1.0, seed=sum(depths) + sum(grid))
    fused = _output_and_gradients(relative, True, *inputs)
    expected = _output_and_gradients(relative, False, *inputs)
    assert len(fused) == len(expected) == (6 if relative else 4)
    for name, actual, wanted in zip(["out", "d_q", "d_k", "d_v", "d_rel_height", "d_rel_width"], fused, expected):
        wanted = wanted.numpy()
        assert np.abs(wanted).max() > 0, name  # the comparison is not trivial
        tolerance = 1e-5 * np.abs(wanted).max() + 1e-6
        assert np.abs(actual.numpy() - wanted).max() < tolerance, name


@pytest.mark.parametrize("relative", [True, False], ids=["relative", "none"])
@pytest.mark.parametrize("grid", GRIDS, ids=lambda grid: "x".join(map(str, grid)))
@pytest.mark.parametrize("depths", DEPTHS, ids=lambda depths: "dk{}_dv{}".format(*depths))
def test_kernel_matches_tensorflow_ops_at_small_depths(depths, grid, relative):
    _check(depths, grid, relative)


def test_kernel_matches_tensorflow_ops_at_the_wrn_32x32_grid():
    # 1024 positions: the row pitch gets one more vector (a multiple of 512 floats is avoided).
    _check((20, 2), (32, 32), True)
