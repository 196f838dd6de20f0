"""The kernels' options as frozen dataclasses; `.replace(**changes)` returns a changed copy, and a bad value
raises ValueError in one line that says what is wrong and what to use instead.

    TileConfig   the tl kernels' tile loop (kernels/grouped_gemm.py, fused_layer0.py, fused_layer1.py):
                 BLOCK_K, warps and pipeline stages of one program
    CommConfig   the fused kernels' communication programs: layer0's pull step, layer1's reduce step and
                 loop form
    GemmOptions  how `kernels.grouped_gemm.grouped_gemm` runs a tile table: which kernel, TMA, the Gluon
                 kernel's choices, and the variants that only the benchmarks compare

None of them changes what a kernel computes, except where a field says so (fast_gelu, split_tail).

    >>> GPU_COMM.replace(pipelined=False).send_block_for("cuda")
    16
    >>> TileConfig(block_k=48)
    Traceback (most recent call last):
    ...
    ValueError: TileConfig block_k=48: tl.dot needs a power of two >= 16; use 16, 32, 64 or 128
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

IMPLS = ("auto", "triton", "gluon")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_tristate(owner: str, name: str, value, meaning: str) -> None:
    if not (value is None or isinstance(value, bool)):
        raise ValueError(f"{owner} {name}={value!r}: use None ({meaning}), True or False")


@dataclass(frozen=True)
class TileConfig:
    """One tl-kernel program's tile loop. block_k: reduction elements per K step (a tl.dot operand side: a
    power of two >= 16); num_warps: warps per program; num_stages: K steps whose loads are in flight at once
    (shared memory grows with it). The defaults are the fused kernels' GPU choice for Hopper bf16 tiles of
    128 x 128 / 128 x 256 (`GPU_TILE`); `SMALL_TILE` is the interpreter's."""

    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 3

    def __post_init__(self):
        if not _is_int(self.block_k) or self.block_k < 16 or self.block_k & (self.block_k - 1):
            raise ValueError(f"TileConfig block_k={self.block_k!r}: tl.dot needs a power of two >= 16; use 16, 32, "
                             f"64 or 128")
        if not _is_int(self.num_warps) or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"TileConfig num_warps={self.num_warps!r}: Triton takes a power of two up to 16; "
                             f"use 4 or 8")
        if not _is_int(self.num_stages) or self.num_stages < 1:
            raise ValueError(f"TileConfig num_stages={self.num_stages!r}: needs an int >= 1; use 1 (no "
                             f"prefetch) to 4")

    def replace(self, **changes) -> TileConfig:
        return dataclasses.replace(self, **changes)


GPU_TILE = TileConfig()
# the interpreter and tiny tests: BLOCK_K 16 exercises the reduction tail on small sizes
SMALL_TILE = TileConfig(block_k=16, num_warps=4, num_stages=1)


# CommConfig.l0_tail_pct's default in layer0's Gluon form (results/fused_layers/README.md)
L0_TAIL_PCT = 50


@dataclass(frozen=True)
class CommConfig:
    """The fused kernels' communication programs.

    pull_rows x pull_cols: the block one layer0 communication program copies per step (token rows x
    columns of a chunk; kernels/fused_layer0.py). send_block: sends (token, owner partial sums) one layer1
    communication program reduces per step; None on a GPU: 64 pipelined in a launch of their own (the Gluon
    form's n_c programs: benchmarks.l1_comm at 4 programs), 32 pipelined in the one-launch tl kernel, 16 item
    by item (each loop's measured best); 16 in the interpreter. pipelined: layer1's communication programs run
    as a software pipeline over (item, step) units (kernels/fused_layer1_comm.py's `comm_pipelined`); False:
    the item-by-item loop, bitwise the same result, kept as a benchmark variant (comet.calibrate measures both;
    measured: results/fused_layers/README.md). num_warps: warps of a layer1 communication program where they have a
    launch of their own (kernels/fused_layer1_gluon.py); in the one-launch tl kernel they have the GEMM
    programs' TileConfig.num_warps. pull_to_rows: layer0's Gluon form (kernels/fused_layer0_gluon.py) pulls each
    token into its rows of the shared tensor (the Plan's shared-row order) instead of into the receive buffer by
    token id, so that the GEMM reads A in place through TMA instead of gathering it by cp.async; the same
    products, so the same result. None: where layer0's weights have >= `kernels.grouped_gemm.PREGATHER_MIN_COLS`
    columns (Mixtral and Phi-3.5 yes, Qwen2 no: measured, results/fused_layers/README.md); True runs in the
    Gluon form only. l0_tail_pct: in layer0's Gluon form the n_c communication programs' SMs, once the pulls
    are done, run the last tiles of the GEMM: this percent of an even per-SM share of the tiles (a second
    GEMM launch on the communication stream over the tail of the same tile table); 0: none, the SMs idle
    after the pulls; None: `L0_TAIL_PCT` in the Gluon form, none elsewhere; a share > 0 runs in the Gluon form
    only. Each tile is computed as without it, so the result is the same. tail_per_sm, tail_num_warps,
    tail_send_block: layer1's tail launch (Policy.l1_tail; kernels/fused_layer1_gluon.py) has programs of its own
    shape: tail_per_sm programs per GEMM SM of tail_num_warps warps, each reducing tail_send_block sends a step
    (None: 32). Its programs never wait, so what bounds them is the loads each SM has in flight: two small
    programs per SM moved the most (benchmarks.l1_comm, results/l1_comm/README.md); the n_c programs beside the
    GEMM, few and long, move the most with larger steps. The items and their sums are the same whatever the
    shapes, so the result is too.
    """

    pull_rows: int = 32
    pull_cols: int = 256
    send_block: int | None = None
    pipelined: bool = True
    num_warps: int = 8
    pull_to_rows: bool | None = None
    l0_tail_pct: int | None = None
    tail_per_sm: int = 2
    tail_num_warps: int = 4
    tail_send_block: int | None = None

    def __post_init__(self):
        for name in ("pull_rows", "pull_cols"):
            v = getattr(self, name)
            if not _is_int(v) or v < 1 or v & (v - 1):
                raise ValueError(f"CommConfig {name}={v!r}: a tl.arange size, so a power of two >= 1; use 16, 32, "
                                 f"64, 128 or 256")
        for name in ("send_block", "tail_send_block"):
            sb = getattr(self, name)
            if sb is not None and (not _is_int(sb) or sb < 1 or sb & (sb - 1)):
                raise ValueError(f"CommConfig {name}={sb!r}: a tl.arange size, so a power of two >= 1 (32 or 64 "
                                 f"measured best), or None for the device's default")
        for name in ("num_warps", "tail_num_warps"):
            v = getattr(self, name)
            if not _is_int(v) or v not in (1, 2, 4, 8, 16):
                raise ValueError(f"CommConfig {name}={v!r}: Triton takes a power of two up to 16; use 4, 8 or 16")
        _check_tristate("CommConfig", "pull_to_rows", self.pull_to_rows, "where layer0's weights are wide")
        t = self.l0_tail_pct
        if t is not None and (not _is_int(t) or not 0 <= t <= 100):
            raise ValueError(f"CommConfig l0_tail_pct={t!r}: a percent of an even share of layer0's tiles, an int "
                             f"from 0 (none) to 100, or None for the default")
        if not _is_int(self.tail_per_sm) or not 1 <= self.tail_per_sm <= 8:
            raise ValueError(f"CommConfig tail_per_sm={self.tail_per_sm!r}: programs per SM of layer1's tail, an int "
                             f"from 1 to 8")
        if not isinstance(self.pipelined, bool):
            raise ValueError(f"CommConfig pipelined={self.pipelined!r}: use True (the software pipeline) or False "
                             f"(item by item)")

    def send_block_for(self, device, own_launch: bool = False) -> int:
        """send_block, or its default on `device` (see the class docstring; own_launch: for programs with a
        launch of their own, not beside a GEMM in one kernel)."""
        if self.send_block is not None:
            return self.send_block
        if torch.device(device).type != "cuda":
            return 16
        if not self.pipelined:
            return 16
        return 64 if own_launch else 32

    def tail_send_block_for(self, device) -> int:
        """tail_send_block, or its default on `device` (32; 16 in the interpreter)."""
        if self.tail_send_block is not None:
            return self.tail_send_block
        return 32 if torch.device(device).type == "cuda" else 16

    def replace(self, **changes) -> CommConfig:
        return dataclasses.replace(self, **changes)


GPU_COMM = CommConfig()
SMALL_COMM = CommConfig(pull_rows=16, pull_cols=16, send_block=16)


def default_tile(device) -> TileConfig:
    """The fused kernels' tile loop on `device`: GPU_TILE on a GPU, SMALL_TILE in the interpreter."""
    return GPU_TILE if torch.device(device).type == "cuda" else SMALL_TILE


def default_comm(device) -> CommConfig:
    """The fused kernels' communication programs on `device`: GPU_COMM on a GPU, SMALL_COMM in the
    interpreter."""
    return GPU_COMM if torch.device(device).type == "cuda" else SMALL_COMM


@dataclass(frozen=True)
class GemmOptions:
    """How `kernels.grouped_gemm.grouped_gemm` (and its layer wrappers) runs a tile table.

    impl: "auto" runs the Gluon Hopper kernel (kernels/gluon_gemm.py) where it can
    (`kernels.grouped_gemm.gluon_unsupported`) and no option of the tl kernel alone is set (tile, flatten,
    warp_specialize), else the tl kernel (kernels/grouped_gemm.py); "triton" always the tl kernel; "gluon" the
    Gluon kernel, or a ValueError that says why it cannot run the call.

    The tl kernel: tile, a fixed tile loop (None: autotuned over kernels.grouped_gemm's configs); a_tma / b_tma,
    A / B read through TMA descriptors (None: where `kernels.tma.tma_ok` allows, for A only when its rows are
    in place, not gathered; the Gluon kernel always reads B, and A in place, through TMA).

    The Gluon kernel: fast_gelu, gelu by kernels/activations.py's fitted tanh form (error <= 2.6e-5 +
    2.5e-4 |x|, below bf16's rounding); None: for bfloat16 only (fp16's rounding is finer); "packed": that form
    on pairs of 16-bit values, every step rounded to the 16-bit type (errors up to ~|x| 2^-7.6 where gelu(x) is
    small, x < -1), opt-in. The tl kernel always computes the accurate erf form. split_tail: split each tile of
    a last wave that is at most half full into up to 4 K chunks run by otherwise idle programs
    (`kernels.gluon_host.split_schedule`); None: where a tile has >= 64 K steps; True: wherever the last wave
    is short. A split tile's fp32 partial sums are added in chunk order: the result is bitwise reproducible
    for a given program count but then depends on it. pregather: copy the gathered rows of A into shared-row
    order first (kernels/row_gather.py) and read them in place; the same products, so the same result. None:
    on the Gluon kernel where the weights have >= `kernels.grouped_gemm.PREGATHER_MIN_COLS` columns.

    Benchmark variants (benchmarks/grouped_gemm.py and benchmarks/activation_power.py compare them with the
    defaults; measured: results/grouped_gemm/README.md; the defaults are the faster choice or a tie):
    c_tma, whole output tiles of the tl kernel stored through TMA; flatten, the tl kernel's tile loop
    flattened (tl.range(flatten=True)); warp_specialize, its tile loop warp-specialised by Triton
    (tl.range(warp_specialize=True); Triton 3.6 compiles it to the same sm_90 code as without);
    ws_gather=False, the Gluon kernel's gathered A copied by the multiplying warps instead of a loader
    partition; ws_tma, an A in place loaded by that partition too.
    """

    impl: str = "auto"
    tile: TileConfig | None = None
    a_tma: bool | None = None
    b_tma: bool | None = None
    fast_gelu: bool | str | None = None
    split_tail: bool | None = None
    pregather: bool | None = None
    # benchmark variants
    c_tma: bool = False
    flatten: bool = False
    warp_specialize: bool = False
    ws_gather: bool = True
    ws_tma: bool = False

    def __post_init__(self):
        if self.impl not in IMPLS:
            raise ValueError(f"GemmOptions impl={self.impl!r}: use one of {', '.join(IMPLS)}")
        if not (self.tile is None or isinstance(self.tile, TileConfig)):
            raise ValueError(f"GemmOptions tile={self.tile!r}: use a kernels.options.TileConfig, or None to "
                             f"autotune")
        _check_tristate("GemmOptions", "a_tma", self.a_tma, "where tma_ok allows")
        _check_tristate("GemmOptions", "b_tma", self.b_tma, "where tma_ok allows")
        if not (self.fast_gelu is None or isinstance(self.fast_gelu, bool) or self.fast_gelu == "packed"):
            raise ValueError(f"GemmOptions fast_gelu={self.fast_gelu!r}: use None (fast for bfloat16), True, False "
                             f"or 'packed'")
        _check_tristate("GemmOptions", "split_tail", self.split_tail, "where tiles are long")
        _check_tristate("GemmOptions", "pregather", self.pregather, "for wide weights on the Gluon kernel")
        for name in ("c_tma", "flatten", "warp_specialize", "ws_gather", "ws_tma"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GemmOptions {name}={getattr(self, name)!r}: use True or False")
        if self.impl == "gluon" and self.tl_only():
            raise ValueError("GemmOptions impl='gluon' with tile / flatten / warp_specialize: those are options of "
                             "the tl kernel (kernels/grouped_gemm.py); drop them or use impl='triton'")

    def tl_only(self) -> bool:
        """Whether an option of the tl kernel alone is set (then impl="auto" runs the tl kernel)."""
        return self.tile is not None or self.flatten or self.warp_specialize

    def replace(self, **changes) -> GemmOptions:
        return dataclasses.replace(self, **changes)
