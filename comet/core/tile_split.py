"""How one tile table splits between two GEMM launches that share it (layer0's tail: kernels/fused_layer0_gluon.py):
the one arithmetic that the kernel (kernels/gluon_gemm.py `_tile_part`), the host and the simulator
(sim/comet_system.py) use."""

from __future__ import annotations


def tail_tiles(num_tiles: int, pct: int, head_programs: int, tail_programs: int) -> int:
    """The tiles of the table's end that the tail launch (tail_programs programs) runs; the head launch
    (head_programs) runs the rest. pct percent of the tail programs' even share of all the tiles; then, where
    the head's last wave would hold only a few tiles (at most one more for each tail program, and no more
    tail waves for them), those go to the tail too: the head saves a wave and the tail's time is unchanged."""
    if not pct or tail_programs < 1:
        return 0
    tail = num_tiles * pct * tail_programs // (100 * (head_programs + tail_programs))
    if head_programs > 0:
        extra = (num_tiles - tail) % head_programs
        if 0 < extra <= tail_programs and -(-(tail + extra) // tail_programs) == -(-tail // tail_programs):
            tail += extra
    return tail
