"""comet.core.tile_split: the split of one tile table between layer0's GEMM and its tail launch."""

from hypothesis import given
from hypothesis import strategies as st

from comet.core.tile_split import tail_tiles


def _waves(tiles: int, programs: int) -> int:
    return -(-tiles // programs)


def test_the_heads_last_tile_goes_to_the_tail_when_it_fits_its_waves():
    # Mixtral M=4096, EP=4, rank 0, n_c 8: 896 tiles; the plain 50 % share (27) left 869 on 124 programs, one
    # tile over 7 waves; 28 on the 8 tail programs is still 4 waves
    assert 896 * 50 * 8 // (100 * 132) == 27
    assert tail_tiles(896, 50, 124, 8) == 28
    assert _waves(896 - 28, 124) == 7 and _waves(28, 8) == _waves(27, 8)


@given(st.integers(0, 5000), st.integers(0, 100), st.integers(0, 132), st.integers(0, 64))
def test_never_more_waves_on_either_side(T, pct, P, Q):
    plain = T * pct * Q // (100 * (P + Q)) if pct and Q and P + Q else 0
    tail = tail_tiles(T, pct, P, Q)
    assert plain <= tail <= T
    if tail != plain:  # moved: the head saves a wave, the tail keeps its waves
        assert _waves(T - tail, P) == _waves(T - plain, P) - 1
        assert _waves(tail, Q) == _waves(plain, Q)


def test_no_tail_without_a_share_or_programs():
    assert tail_tiles(100, 0, 124, 8) == 0 and tail_tiles(100, 50, 124, 0) == 0
