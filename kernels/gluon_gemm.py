"""Hopper (sm_90) grouped GEMM in Gluon over the Plan's tile table: the K loops of a program's tiles run as
one software pipeline, and a tile's activation runs while the next tile's wgmmas execute.

One kernel, hence one module over 500 lines: its stages (loads, wgmma pipeline, staged epilogue, split-tail
join) share the buffers, barriers and layouts a Gluon kernel passes between helpers by hand. Its host side
(which calls it takes, pipeline depth, split schedule and workspace) is kernels/gluon_host.py.

Why a second kernel. kernels/grouped_gemm.py (Triton's tl) refills its pipeline after every tile and puts
the activation between two tiles' K loops; layer0's K loop is short (hidden size N = 2048-4096), so that
fixed cost per tile matters. Gluon exposes the Hopper pieces (TMA copies, mbarriers, asynchronous wgmma),
and this kernel schedules them by hand. A program walks its tiles t = pid, pid + num_programs, ... in the
Plan's order:

    step s of its flat (tile, k) sequence: wait for slot s's operands -> wgmma (async) -> [one slice of
    the previous tile's activation] -> wait until at most one wgmma is in flight -> refill slot s-1 (its
    wgmma is done) with step s + NUM_BUFFERS - 1, which may belong to the next tile.
    end of a tile's K loop: store the previous tile (TMA for whole tiles, masked stores for a tile its
    expert's end cuts short), drain this tile's wgmma, write it to shared memory as bf16/fp16; the
    activation then acts there in 8-row slices during the next K loop (one slice per step).

Gelu so acts on the rounded GEMM result (what an unfused PyTorch layer computes: a bf16 matmul, then
gelu); the tl kernel applies it to the fp32 accumulator. Both meet the bf16 tolerance
(results/grouped_gemm/README.md). Results are bitwise reproducible; without a split tail they are also
independent of the program count (each tile's reduction order is fixed).

Split tail (GemmOptions.split_tail; by default for tiles of >= 64 K steps): a persistent kernel whose last
wave holds few tiles leaves most SMs idle for a whole tile's time (e.g. 400 tiles on 132 SMs: 4 waves for
3.03 waves of work). Where the last wave is at most half full, each of its tiles is split into up to 4 K
chunks run by otherwise idle programs (`kernels.gluon_host.split_schedule`); chunk j of every tail tile runs
at the same K steps, so the tail tiles still share their B columns (A rows) in L2 as a wave of whole tiles
does. The chunk that finishes last sums the others' fp32 partials from a workspace in chunk order and
finishes the tile (`_join_split_tile`: no program waits for another). Spreading the tail's K steps evenly
over all programs instead (stream-K) loses that L2 reuse and ran slower (dev/LOG.md).

A: through TMA where its rows are in place (layer1; layer0 with rows already in shared-row order), or
gathered by token id (layer0's default) with 16-byte cp.async copies. A gathered A is loaded by default by a
warp-specialised loader partition (LOADER_WARPS > 0: 4 extra warps gather A and load B, each
slot's `ready` mbarrier counting every loader thread's copies and B's bytes, an `empty` mbarrier handing the
slot back), so the multiplying warps never wait for copies they issued themselves; the benchmark variant
GemmOptions(ws_gather=False) keeps the copies in the multiplying warps (one commit group per step, a CTA
barrier before the wgmma). B (the (E * D_IN, D_OUT') view of the weights) and C through TMA; rows must be
16-byte aligned. bf16/fp16, BLOCK_M = 16 * num_warps (64 or 128), BLOCK_N <= 256, BLOCK_K 64, no
autotuning. Activation none, gelu, or swiglu (gate and up column blocks of one output block per tile, two
accumulators, so BLOCK_N <= 128; silu(gate) * up in registers at the tile's end, on the fp32 accumulators).
gelu is A&S's erf form, or with fast_gelu (the default for bf16) kernels/activations.py's fitted tanh form:
one tanh.approx, |error| <= 2.6e-5 + 2^-12 |x|, well inside bf16's rounding; "packed" computes that form on
pairs of 16-bit values. Everything else (fp32, the interpreter, other GPUs) stays with
kernels/grouped_gemm.py, whose semantics this kernel shares: rows past a tile's row_end read valid rows and
are never stored; a reduction tail past D_IN reads zeros of A. `kernels.grouped_gemm.grouped_gemm` (impl
"auto") picks this kernel where `kernels.gluon_host.supports` allows.

The GPU runs these GEMMs at its power limit, so instructions cost time however well they are overlapped:
hence the cheaper gelu forms and the separate loader. Measured against cuBLAS and torch._grouped_mm, and
why cuBLAS stays ahead (thread-block clusters with TMA multicast, which Triton 3.6 cannot express):
results/grouped_gemm/README.md.

Gluon is experimental: written against Triton 3.6 and compiled for sm_90 with 3.6 and
3.9 (renamed functions are looked up under both names). Importing this module raises ImportError where
Gluon's Hopper API is missing; `kernels.grouped_gemm.gluon_unsupported` reports that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    async_copy,
    fence_async_shared,
    mbarrier,
    tma,
    warpgroup_mma,
    warpgroup_mma_wait,
)
from triton.experimental.gluon.nvidia.hopper import TensorDescriptor

from comet.core.jit import jit
from kernels.activations import (
    ACTIVATIONS,
    FAST_GELU_K,
    FAST_GELU_X2_MAX,
    GELU_E,
    GELU_P,
    GELU_T,
    packed_gelu_asm,
)
from kernels.gluon_host import MAX_PARTS, SPLIT_MIN_K_STEPS, num_buffers_for, split_workspace
from kernels.options import GemmOptions

# Triton 3.6 names the copies async_copy_global_to_shared / async_copy_shared_to_global and the CTA barrier
# thread_barrier; later versions async_load / async_store / barrier (and raise on the old names)
_tma_load = getattr(tma, "async_load", None) or tma.async_copy_global_to_shared
_tma_store = getattr(tma, "async_store", None) or tma.async_copy_shared_to_global
_cp_async = getattr(async_copy, "async_load", None) or async_copy.async_copy_global_to_shared
_cta_barrier = getattr(gl, "thread_barrier", None) or gl.barrier  # (renamed after 3.6)
# the gather's loader partition: one warpgroup; 48 registers hold its 8 row offsets and copies without spills
# (ptxas, Triton 3.6), and leave the multiplying warps 224
_LOADER_WARPS, _LOADER_REGS = 4, 48
_MAX_PARTS = gl.constexpr(MAX_PARTS)  # split tail: K chunks per tail tile
# gelu: Abramowitz & Stegun 7.1.26 with kernels/activations.py's folded constants (the tl twin is there)
_P = gl.constexpr(GELU_P)
_T0, _T1, _T2, _T3, _T4 = (gl.constexpr(c) for c in GELU_T)
_E = gl.constexpr(GELU_E)
_LOG2E = gl.constexpr(1.4426950408889634)
_K1, _K3, _K5 = (gl.constexpr(c) for c in FAST_GELU_K)
_X2_MAX = gl.constexpr(FAST_GELU_X2_MAX)


# fast_gelu="packed": kernels/activations.py's fast form on pairs of 16-bit values (FAST_GELU = 2)
_PACKED_GELU_BF16 = gl.constexpr(packed_gelu_asm("bfloat16"))
_PACKED_GELU_F16 = gl.constexpr(packed_gelu_asm("float16"))


@gluon.jit
def _f32_asm(x, ASM: gl.constexpr):
    """One PTX instruction per fp32 element, e.g. "rcp.approx.ftz.f32 $0, $1;" (Gluon has no fast-math ops)."""
    return gl.inline_asm_elementwise(ASM, "=r,r", [x], dtype=gl.float32, is_pure=True, pack=1)


@gluon.jit
def _gelu_erf(x):
    t = _f32_asm(1.0 + _P * gl.abs(x), "rcp.approx.ftz.f32 $0, $1;")
    half_e = t * (_T0 + t * (_T1 + t * (_T2 + t * (_T3 + t * _T4)))) * gl.exp2(x * x * _E)
    return x * gl.where(x >= 0, 1.0 - half_e, half_e)


@gluon.jit
def _fast_gelu(x):
    """kernels/activations.py's fast form: one MUFU op (tanh.approx) and ~7 instructions, instead of two and ~12."""
    x2 = gl.minimum(x * x, _X2_MAX)
    half = 0.5 * x
    return half + half * _f32_asm(x * (_K1 + x2 * (_K3 + x2 * _K5)), "tanh.approx.f32 $0, $1;")


@gluon.constexpr_function
def _slice_layout(block_n, num_warps):
    tpw_n = min(32, block_n // 8)
    return gl.BlockedLayout([1, 8], [32 // tpw_n, tpw_n], [num_warps, 1], [1, 0])


@gluon.jit
def _activate_slice(c_smem, j: gl.constexpr, SLICE_ROWS: gl.constexpr, layout: gl.constexpr,
                    ACTIVATION: gl.constexpr, FAST_GELU: gl.constexpr):
    """Rows [j * SLICE_ROWS, (j + 1) * SLICE_ROWS) of the staged tile: act(value) in place, in fp32 (FAST_GELU
    = 2, only ever called for gelu: in the tile's 16-bit type, two values per instruction)."""
    sl = c_smem.slice(j * SLICE_ROWS, SLICE_ROWS, dim=0)
    if FAST_GELU == 2:  # the fast form on pairs of 16-bit values (bf16x2 / f16x2 instructions), no fp32
        asm: gl.constexpr = _PACKED_GELU_BF16 if c_smem.dtype == gl.bfloat16 else _PACKED_GELU_F16
        sl.store(gl.inline_asm_elementwise(asm, "=r,r", [sl.load(layout)], dtype=c_smem.dtype, is_pure=True,
                                           pack=2))
    else:
        v = sl.load(layout).to(gl.float32)
        if ACTIVATION == 1:
            if FAST_GELU:
                v = _fast_gelu(v)
            else:
                v = _gelu_erf(v)
        sl.store(v.to(c_smem.dtype))


@gluon.jit
def _store_tile(c_desc, c_smem, c_ptr, row0, row_end, col0, D_OUT, stride_cm, count_ptr, SLICES: gl.constexpr,
                SLICE_ROWS: gl.constexpr, layout: gl.constexpr, COUNT_COLS: gl.constexpr):
    """The staged tile to out[row0:row_end, col0:col0 + BLOCK_N]: a whole tile through TMA (it clips columns
    past D_OUT); a tile cut short by its expert's end shares rows with the next tile: masked stores.
    COUNT_COLS: every tile by masked stores, then count[column block] += 1 (release, GPU scope) for the
    programs that wait on whole column blocks (kernels/fused_layer1_gluon.py). Triton 3.6's TMA store wait
    only waits until shared memory is read, not until the writes are visible, so a counted tile does not go
    through TMA."""
    BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
    if COUNT_COLS:
        _store_rows(c_smem, c_ptr, row0, row_end, col0, D_OUT, stride_cm, SLICES, SLICE_ROWS, layout)
        _cta_barrier()  # every thread's stores issued, then one release
        gl.atomic_add(count_ptr + col0 // BLOCK_N, 1, sem="release", scope="gpu")
    elif row_end - row0 >= BLOCK_M:
        fence_async_shared()
        _tma_store(c_desc, [row0, col0], c_smem)
    else:
        _store_rows(c_smem, c_ptr, row0, row_end, col0, D_OUT, stride_cm, SLICES, SLICE_ROWS, layout)


@gluon.jit
def _store_rows(c_smem, c_ptr, row0, row_end, col0, D_OUT, stride_cm, SLICES: gl.constexpr, SLICE_ROWS: gl.constexpr,
                layout: gl.constexpr):
    """The staged tile's rows below row_end and columns below D_OUT by masked stores, one 8-row slice at a time."""
    BLOCK_N: gl.constexpr = c_smem.type.shape[1]
    offs_n = col0 + gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    for j in gl.static_range(SLICES):
        offs_m = row0 + j * SLICE_ROWS + gl.arange(0, SLICE_ROWS, layout=gl.SliceLayout(1, layout))
        v = c_smem.slice(j * SLICE_ROWS, SLICE_ROWS, dim=0).load(layout)
        ptrs = c_ptr + offs_m[:, None] * stride_cm + offs_n[None, :]
        gl.store(ptrs, v, mask=(offs_m < row_end)[:, None] & (offs_n < D_OUT)[None, :])


@gluon.jit
def _store_previous_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr, k_steps,
                         SLICES: gl.constexpr, SLICE_ROWS: gl.constexpr, layout: gl.constexpr,
                         SLICED_ACT: gl.constexpr, FAST_GELU: gl.constexpr, COUNT_COLS: gl.constexpr):
    """At the end of a tile's K loop: the activation's slices that loop was too short for, then the previous
    tile (staged in c_smem) to memory; c_smem is free again when this returns."""
    if SLICED_ACT != 0:
        for j in gl.static_range(SLICES):
            if j >= k_steps:
                _activate_slice(c_smem, j, SLICE_ROWS, layout, SLICED_ACT, FAST_GELU)
    _store_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr, SLICES, SLICE_ROWS,
                layout, COUNT_COLS)
    tma.store_wait(pendings=0)  # the copy engine has read c_smem


@gluon.jit
def _store_last_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr,
                     SLICES: gl.constexpr, SLICE_ROWS: gl.constexpr, layout: gl.constexpr, SLICED_ACT: gl.constexpr,
                     FAST_GELU: gl.constexpr, COUNT_COLS: gl.constexpr):
    """A program's last tile: nothing left to overlap its activation with."""
    if SLICED_ACT != 0:
        for j in gl.static_range(SLICES):
            _activate_slice(c_smem, j, SLICE_ROWS, layout, SLICED_ACT, FAST_GELU)
    _store_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr, SLICES, SLICE_ROWS,
                layout, COUNT_COLS)


@gluon.jit
def _tile_part(num_tiles_ptr, max_tiles, part_num, part_den, part_head, part_tail, TILE_PART: gl.constexpr):
    """The tiles of this launch as (first, count): all of them (TILE_PART 0); or of the table's T tiles the
    last `tail` go to a second launch (TILE_PART 2: tiles [T - tail, T)) and the rest stay here (TILE_PART 1:
    tiles [0, T - tail)): tail = T * part_num // part_den, plus the head's last few tiles where the tail's
    part_tail programs take them without another wave (comet.core.tile_split.tail_tiles, the same arithmetic;
    part_head: the head launch's programs). Computed from the device's tile count in both launches, so neither
    needs the host to know it."""
    T = gl.minimum(gl.load(num_tiles_ptr).to(gl.int32), max_tiles)
    first = 0 * T
    if TILE_PART != 0:
        tail = ((T.to(gl.int64) * part_num) // part_den).to(gl.int32)
        if (part_head > 0) & (part_tail > 0):
            extra = (T - tail) % gl.maximum(part_head, 1)
            waves = (tail + part_tail - 1) // gl.maximum(part_tail, 1)
            if (extra > 0) & (extra <= part_tail) & ((tail + extra + part_tail - 1) // gl.maximum(part_tail, 1)
                                                      == waves):
                tail = tail + extra
        if TILE_PART == 1:
            T = T - tail
        else:
            first = T - tail
            T = tail
    return first, T


@gluon.jit
def _schedule(T, k_steps, SPLIT_TAIL: gl.constexpr):
    """This program's work items over T tiles (kernels.gluon_host.split_schedule, the same arithmetic on the
    host; G here is the program count): whole tiles t = pid, pid + G, ... below n_dp, then with SPLIT_TAIL at
    most one K chunk of a tail tile. Returns (items, n_dp, my_dp, parts): the last T - n_dp tiles are each
    split into `parts` K chunks (parts = 1: no split)."""
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    n_dp = T
    parts = 1 + 0 * T
    if SPLIT_TAIL:
        tail = T % G
        if tail > 0:
            parts = gl.minimum(gl.minimum(G // tail, k_steps), _MAX_PARTS)
            if parts > 1:
                n_dp = T - tail
    my_dp = gl.maximum(n_dp - pid + G - 1, 0) // G
    my_part = ((parts > 1) & (pid < (T - n_dp) * parts)).to(gl.int32)
    return my_dp + my_part, n_dp, my_dp, parts


@gluon.jit
def _work_item(i, n_dp, my_dp, parts, k_steps):
    """Item i of this program: (tile, first K step, end K step). Program q's chunk is chunk q % parts of tail
    tile q // parts: chunk j of every tail tile starts at the same time, so tiles that share B columns (or A
    rows) read them at the same K steps, as whole tiles of one wave do (L2 reuse)."""
    pid = gl.program_id(0)
    if i < my_dp:
        t = pid + i * gl.num_programs(0)
        k0 = 0 * i
        k1 = k_steps + 0 * i
    else:
        t = n_dp + pid // parts
        j = pid % parts
        k0 = j * k_steps // parts
        k1 = (j + 1) * k_steps // parts
    return t, k0, k1


@gluon.jit
def _partial_ptrs(ws_ptr, slot, BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, layout: gl.constexpr):
    """Workspace slot `slot` (one BLOCK_M x BLOCK_N fp32 accumulator), addressed in the accumulator's layout."""
    offs_m = gl.arange(0, BLOCK_M, layout=gl.SliceLayout(1, layout))
    offs_n = gl.arange(0, BLOCK_N, layout=gl.SliceLayout(0, layout))
    return ws_ptr + slot * (BLOCK_M * BLOCK_N) + offs_m[:, None] * BLOCK_N + offs_n[None, :]


@gluon.jit
def _join_split_tile(acc, acc_up, r, parts, ws_ptr, cnt_ptr, N_B: gl.constexpr, layout: gl.constexpr):
    """Tail tile r is split into `parts` K chunks, run by programs r * parts + j. Each part stores its
    accumulators in its workspace slot and counts on cnt[r]; the part that counts last sums all slots in
    chunk order (so the result does not depend on which part came last: bitwise reproducible), finishes
    the tile (returns finish = 1; the others 0) and resets cnt[r] for the next launch. Nothing waits for
    another program, so nothing can hang here."""
    BLOCK_M: gl.constexpr = acc.type.shape[0]
    BLOCK_N: gl.constexpr = acc.type.shape[1]
    first = r * parts * N_B
    mine = first + (gl.program_id(0) % parts) * N_B
    gl.store(_partial_ptrs(ws_ptr, mine, BLOCK_M, BLOCK_N, layout), acc)
    if N_B == 2:
        gl.store(_partial_ptrs(ws_ptr, mine + 1, BLOCK_M, BLOCK_N, layout), acc_up)
    _cta_barrier()  # every thread's stores, then one release at GPU scope (and the last part's acquire)
    finish = (gl.atomic_add(cnt_ptr + r, 1, sem="acq_rel", scope="gpu") == parts - 1).to(gl.int32)
    if finish != 0:
        acc = gl.load(_partial_ptrs(ws_ptr, first, BLOCK_M, BLOCK_N, layout), cache_modifier=".cg")
        for j in range(1, parts):
            acc += gl.load(_partial_ptrs(ws_ptr, first + j * N_B, BLOCK_M, BLOCK_N, layout), cache_modifier=".cg")
        if N_B == 2:
            acc_up = gl.load(_partial_ptrs(ws_ptr, first + 1, BLOCK_M, BLOCK_N, layout), cache_modifier=".cg")
            for j in range(1, parts):
                acc_up += gl.load(_partial_ptrs(ws_ptr, first + j * N_B + 1, BLOCK_M, BLOCK_N, layout),
                                  cache_modifier=".cg")
        gl.atomic_xchg(cnt_ptr + r, 0, sem="relaxed", scope="gpu")
    return acc, acc_up, finish


@gluon.jit
def _tile_coords(t, tile_expert_ptr, tile_row_start_ptr, tile_col_ptr, D_IN, BLOCK_N: gl.constexpr):
    """TMA coordinates of tile t: A's first row, B's first row (expert * D_IN), the first output column."""
    row0 = gl.load(tile_row_start_ptr + t).to(gl.int32)
    b_row0 = gl.load(tile_expert_ptr + t).to(gl.int32) * D_IN
    col0 = gl.load(tile_col_ptr + t).to(gl.int32) * BLOCK_N
    return row0, b_row0, col0


@gluon.jit
def _gather_offsets(t, a_row_ptr, tile_row_start_ptr, tile_row_end_ptr, stride_am, BLOCK_M: gl.constexpr,
                    layout: gl.constexpr):
    """Element offsets of tile t's A rows (row_token_R of its shared rows); rows past its end read row 0."""
    rows = gl.load(tile_row_start_ptr + t) + gl.arange(0, BLOCK_M, layout=layout)
    tok = gl.load(a_row_ptr + rows, mask=rows < gl.load(tile_row_end_ptr + t), other=0)
    return tok * stride_am


@gluon.jit
def _advance_loader(l_k, l_tile, l_row0, l_brow0, l_col0, l_offs, k_steps, pid, G, max_tiles, tile_expert_ptr,
                    tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, a_row_ptr, D_IN, stride_am,
                    BLOCK_M: gl.constexpr, BLOCK_N: gl.constexpr, GATHER: gl.constexpr, row_layout: gl.constexpr):
    """The loader's next K step, and at a tile's end its next tile's coordinates (and gathered rows). The table
    index is clamped so that the look-ahead past the program's last tile reads valid (unused) entries."""
    l_k += 1
    if l_k == k_steps:
        l_k = 0
        l_tile += 1
        t = gl.minimum(pid + l_tile * G, max_tiles - 1)
        l_row0, l_brow0, l_col0 = _tile_coords(t, tile_expert_ptr, tile_row_start_ptr, tile_col_ptr, D_IN, BLOCK_N)
        if GATHER:
            l_offs = _gather_offsets(t, a_row_ptr, tile_row_start_ptr, tile_row_end_ptr, stride_am, BLOCK_M,
                                     row_layout)
    return l_k, l_tile, l_row0, l_brow0, l_col0, l_offs


@gluon.jit
def _issue_load(a_desc, b_desc, a_bufs, b_bufs, bars, step, k, row0, b_row0, col0, up_col, a_ptr, a_offs, D_IN,
                NUM_BUFFERS: gl.constexpr, BLOCK_K: gl.constexpr, GATHER: gl.constexpr, N_B: gl.constexpr,
                gather_layout: gl.constexpr, pred):
    """Step `step`'s operands into its slot: A (TMA, or gathered rows), B (and swiglu's up columns, slot
    NUM_BUFFERS + slot of b_bufs) through TMA, all completing on the slot's mbarrier."""
    slot = step % NUM_BUFFERS
    bar = bars.index(slot)
    if GATHER:
        # A rows by token id: 16-byte cp.async per thread (one commit group per step, empty when pred is
        # False, so the consumer's group count stays exact); columns past D_IN are zero-filled
        offs_k = k * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, gather_layout))
        _cp_async(a_bufs.index(slot), a_ptr + a_offs[:, None] + offs_k[None, :],
                  mask=((offs_k < D_IN) & pred)[None, :])
        async_copy.commit_group()
        mbarrier.expect(bar, N_B * b_desc.block_type.nbytes, pred=pred)
    else:
        mbarrier.expect(bar, a_desc.block_type.nbytes + N_B * b_desc.block_type.nbytes, pred=pred)
        _tma_load(a_desc, [row0, k * BLOCK_K], bar, a_bufs.index(slot), pred)
    _tma_load(b_desc, [b_row0 + k * BLOCK_K, col0], bar, b_bufs.index(slot), pred)
    if N_B == 2:
        _tma_load(b_desc, [b_row0 + k * BLOCK_K, col0 + up_col], bar, b_bufs.index(NUM_BUFFERS + slot), pred)


@gluon.jit
def _prime_loads(a_desc, b_desc, a_bufs, b_bufs, bars, a_ptr, a_row_ptr, tile_expert_ptr, tile_row_start_ptr,
                 tile_row_end_ptr, tile_col_ptr, my_tiles, max_tiles, D_IN, up_col, stride_am, GATHER: gl.constexpr,
                 num_warps: gl.constexpr):
    """Inline loads: the first NUM_BUFFERS - 1 steps' operands in flight; returns the loader's state (the
    tile, l_tile-th of this program, and K step of the next load, its coordinates and gathered rows)."""
    NUM_BUFFERS: gl.constexpr = a_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = a_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = b_bufs.type.shape[2]
    N_B: gl.constexpr = b_bufs.type.shape[0] // NUM_BUFFERS
    # gathered A tiles: 8 contiguous elements (16 bytes) per thread and copy
    gather_layout: gl.constexpr = _slice_layout(BLOCK_K, num_warps)
    row_layout: gl.constexpr = gl.SliceLayout(1, gather_layout)
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    k_steps = gl.cdiv(D_IN, BLOCK_K)
    total = my_tiles * k_steps
    l_offs = 0  # (gathered A: the load tile's row offsets)
    l_tile = 0
    l_k = 0
    l_row0, l_brow0, l_col0 = _tile_coords(pid, tile_expert_ptr, tile_row_start_ptr, tile_col_ptr, D_IN, BLOCK_N)
    if GATHER:
        l_offs = _gather_offsets(pid, a_row_ptr, tile_row_start_ptr, tile_row_end_ptr, stride_am, BLOCK_M, row_layout)
    for i in gl.static_range(NUM_BUFFERS - 1):
        _issue_load(a_desc, b_desc, a_bufs, b_bufs, bars, i, l_k, l_row0, l_brow0, l_col0, up_col, a_ptr, l_offs,
                    D_IN, NUM_BUFFERS, BLOCK_K, GATHER, N_B, gather_layout, i < total)
        l_k, l_tile, l_row0, l_brow0, l_col0, l_offs = _advance_loader(
            l_k, l_tile, l_row0, l_brow0, l_col0, l_offs, k_steps, pid, G, max_tiles, tile_expert_ptr,
            tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, a_row_ptr, D_IN, stride_am, BLOCK_M, BLOCK_N, GATHER,
            row_layout)
    return l_k, l_tile, l_row0, l_brow0, l_col0, l_offs


# ----------------------------------------------------------------------------- waits on other kernels
# (layer0's Gluon form, kernels/fused_layer0_gluon.py: the loader waits until the source ranks of a tile's rows
# have arrived; kernels/signals.py's wait_flag in Gluon, with the same status record on a timeout)
_WAIT_L0_ARRIVAL = gl.constexpr(1)  # kernels.signals.WAIT_L0_ARRIVAL


@gluon.jit
def _wait_at_least(flag_ptr, target, max_spin, status_ptr, wait_id: gl.constexpr, index, rank):
    """Spin until *flag_ptr >= target, at most max_spin polls (volatile loads), then one acquire; on a timeout
    the first waiter writes the status record (kernels/signals.py) and every later wait gives up at once."""
    bad = gl.load(status_ptr, volatile=True)
    seen = gl.load(flag_ptr, volatile=True)
    it = 0
    while ((seen - target) < 0) & (it < max_spin) & (bad == 0):
        seen = gl.load(flag_ptr, volatile=True)
        it += 1
        if (it & 1023) == 0:
            bad = gl.load(status_ptr, volatile=True)
    seen = gl.atomic_add(flag_ptr, 0, sem="acquire", scope="gpu")  # (used: an unused atomic is removed)
    if ((seen - target) < 0) & (bad == 0):
        if gl.atomic_cas(status_ptr, 0, 1, sem="acq_rel", scope="gpu") == 0:
            gl.store(status_ptr + 1, wait_id)
            gl.store(status_ptr + 2, index)
            gl.store(status_ptr + 3, rank)
            gl.store(status_ptr + 4, seen.to(gl.int32))
            gl.store(status_ptr + 5, target.to(gl.int32))
            gl.store(status_ptr + 6, gl.program_id(0))
            gl.store(status_ptr + 7, it)


@gluon.jit
def _fence_generic_to_async(WARPS: gl.constexpr):
    """fence.proxy.async.global: rows another SM wrote by plain stores (generic proxy), seen through an
    acquire, are then read by this thread's TMA loads (async proxy); the fence orders the two proxies."""
    one = gl.full([1], 0, gl.int32, layout=gl.BlockedLayout([1], [32], [WARPS], [0]))
    gl.inline_asm_elementwise("fence.proxy.async.global; mov.b32 $0, $1;", "=r,r", [one], dtype=gl.int32,
                              is_pure=False, pack=1)


@gluon.jit
def _wait_tile_sources(t, ready, tile_src_ptr, flag_ptr, flag_target_ptr, world, max_spin, status_ptr, rank,
                       GATHER: gl.constexpr, WARPS: gl.constexpr):
    """Tile t's rows come from the ranks in its source mask: wait for each one not yet known complete
    (flag[s] >= flag_target[s]); returns the sources known complete. Without GATHER, A is then read by TMA
    (rows pulled into shared-row order), which needs a proxy fence after the waits."""
    need = gl.load(tile_src_ptr + t) & ~ready
    if need != 0:
        for s in range(0, world):
            if ((need >> s) & 1) != 0:
                _wait_at_least(flag_ptr + s, gl.load(flag_target_ptr + s), max_spin, status_ptr, _WAIT_L0_ARRIVAL,
                               s, rank)
        ready = ready | need
        if not GATHER:
            _fence_generic_to_async(WARPS)
    return ready


@gluon.jit
def _finish_and_reset(done_ptr, done_total, flag_ptr, world):
    """Count this program as finished (its waits are all done); the last of done_total programs of both
    kernels resets the flags and the counter for the next call."""
    _cta_barrier()
    if gl.atomic_add(done_ptr, 1, sem="acq_rel", scope="gpu") == done_total - 1:
        for s in range(0, world):
            gl.atomic_xchg(flag_ptr + s, 0, sem="relaxed", scope="gpu")
        gl.atomic_xchg(done_ptr, 0, sem="relaxed", scope="gpu")


# ----------------------------------------------------------------------------- loader partition
# A and B loaded by a loader partition: LOADER_WARPS extra warps gather A rows by cp.async (each thread's
# copies arrive on the slot's `ready` mbarrier when they land: cp.async.mbarrier.arrive.noinc), or load an A
# in place by TMA (ws_tma), and load B by TMA, running ahead of the consumer by up to NUM_BUFFERS steps; the
# default partition (the kernel's num_warps) only waits, multiplies and runs the epilogue, releasing each slot
# on its `empty` mbarrier. With a gather, no CTA-wide barrier per K step (the inline loads, LOADER_WARPS = 0,
# need one to see every thread's copies).
@gluon.jit
def _ws_loader(a_bufs, b_bufs, ready, empty, a_desc, b_desc, a_ptr, a_row_ptr, tile_expert_ptr, tile_row_start_ptr,
               tile_row_end_ptr, tile_col_ptr, items, n_dp, my_dp, parts, D_IN, up_col, stride_am, tile_src_ptr,
               flag_ptr, flag_target_ptr, status_ptr, rank, world, max_spin,
               GATHER: gl.constexpr, LOADER_WARPS: gl.constexpr, WAIT_SOURCES: gl.constexpr):
    """The loader partition: every (tile, K step) of this program's work items, in the consumer's order, into
    the slot the consumer has released."""
    NUM_BUFFERS: gl.constexpr = a_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = a_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = b_bufs.type.shape[2]
    N_B: gl.constexpr = b_bufs.type.shape[0] // NUM_BUFFERS
    gather_layout: gl.constexpr = _slice_layout(BLOCK_K, LOADER_WARPS)
    row_layout: gl.constexpr = gl.SliceLayout(1, gather_layout)
    k_steps = gl.cdiv(D_IN, BLOCK_K)
    s = 0
    known = (rank * 0 + 1).to(gl.int64) << rank  # WAIT_SOURCES: source ranks known complete (own rows in place)
    for it in range(items):
        t, k0, k1 = _work_item(it, n_dp, my_dp, parts, k_steps)
        if WAIT_SOURCES:
            known = _wait_tile_sources(t, known, tile_src_ptr, flag_ptr, flag_target_ptr, world, max_spin, status_ptr,
                                       rank, GATHER, LOADER_WARPS)
        row0, b_row0, col0 = _tile_coords(t, tile_expert_ptr, tile_row_start_ptr, tile_col_ptr, D_IN, BLOCK_N)
        if GATHER:
            offs = _gather_offsets(t, a_row_ptr, tile_row_start_ptr, tile_row_end_ptr, stride_am, BLOCK_M,
                                   row_layout)
        for kk in range(k0, k1):
            slot = s % NUM_BUFFERS
            bar = ready.index(slot)
            # barriers start as if their phase 1 had completed: the first round passes at once
            mbarrier.wait(empty.index(slot), ((s // NUM_BUFFERS) & 1) ^ 1)
            if GATHER:
                offs_k = kk * BLOCK_K + gl.arange(0, BLOCK_K, layout=gl.SliceLayout(0, gather_layout))
                _cp_async(a_bufs.index(slot), a_ptr + offs[:, None] + offs_k[None, :],
                          mask=(offs_k < D_IN)[None, :])
                async_copy.mbarrier_arrive(bar, increment_count=False)
                mbarrier.expect(bar, N_B * b_desc.block_type.nbytes)
            else:
                mbarrier.expect(bar, a_desc.block_type.nbytes + N_B * b_desc.block_type.nbytes)
                _tma_load(a_desc, [row0, kk * BLOCK_K], bar, a_bufs.index(slot))
            _tma_load(b_desc, [b_row0 + kk * BLOCK_K, col0], bar, b_bufs.index(slot))
            if N_B == 2:
                _tma_load(b_desc, [b_row0 + kk * BLOCK_K, col0 + up_col], bar, b_bufs.index(NUM_BUFFERS + slot))
            s += 1


@gluon.jit
def _consume(a_bufs, b_bufs, c_smem, ready, empty, c_desc, c_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr,
             items, n_dp, my_dp, parts, ws_ptr, cnt_ptr, max_tiles, D_IN, D_OUT, stride_cm, count_ptr, a_desc,
             b_desc, a_ptr, a_row_ptr, tile_expert_ptr, up_col, stride_am, l_k, l_tile, l_row0, l_brow0, l_col0,
             l_offs, ACTIVATION: gl.constexpr, FAST_GELU: gl.constexpr, GATHER: gl.constexpr,
             INLINE_LOADS: gl.constexpr, SPLIT_TAIL: gl.constexpr, COUNT_COLS: gl.constexpr,
             WAIT_SOURCES: gl.constexpr, done_ptr, done_total, flag_ptr, world, num_warps: gl.constexpr):
    """The multiplying warps: this program's work items (`_schedule`), one K loop each. INLINE_LOADS: they
    also issue the loads (NUM_BUFFERS - 1 steps ahead, from the loader state l_* the prologue left; `ready` is
    the slots' one barrier set; whole tiles only); else a loader partition does and the slots go back to it
    on `empty`. SPLIT_TAIL: an item that is part of a split tail tile joins the other part
    (`_join_split_tile`) and only the part that finishes the tile stages and stores it.

    A nested K loop keeps the in-flight accumulator out of any branch (a branch that merges it makes ptxas
    wait for every wgmma: the pipeline would serialise). A tile's result goes to c_smem as bf16/fp16 at its
    end; its activation then runs there slice by slice while the next tile's first wgmmas execute (the warps
    are idle between issuing a wgmma and waiting for it), and the tile is stored once the next one's K loop is
    done. No tensor-core idle time waits on the activation (at the card's power limit its instructions still
    cost time: see the module docstring)."""
    NUM_BUFFERS: gl.constexpr = a_bufs.type.shape[0]
    BLOCK_M: gl.constexpr = a_bufs.type.shape[1]
    BLOCK_K: gl.constexpr = a_bufs.type.shape[2]
    BLOCK_N: gl.constexpr = b_bufs.type.shape[2]
    dtype: gl.constexpr = c_smem.dtype
    # one warpgroup per 64 rows; each warp's wgmma fragment is 16 rows x BLOCK_N
    acc_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[num_warps, 1],
                                                         instr_shape=[16, BLOCK_N, 16])
    # the activation's slices of c_smem: 8 rows (one swizzle atom), 8 contiguous elements per thread
    SLICE_ROWS: gl.constexpr = 8
    SLICES: gl.constexpr = BLOCK_M // SLICE_ROWS
    slice_layout: gl.constexpr = _slice_layout(BLOCK_N, num_warps)
    gather_layout: gl.constexpr = _slice_layout(BLOCK_K, num_warps)
    row_layout: gl.constexpr = gl.SliceLayout(1, gather_layout)
    # swiglu: gate and up columns of the same output block, two accumulators, the activation in registers at
    # the tile's end; gelu: in c_smem slices during the next tile's K loop
    SWIGLU: gl.constexpr = ACTIVATION == 2
    N_B: gl.constexpr = 2 if SWIGLU else 1
    SLICED_ACT: gl.constexpr = 0 if SWIGLU else ACTIVATION
    pid = gl.program_id(0)
    G = gl.num_programs(0)
    k_steps = gl.cdiv(D_IN, BLOCK_K)
    total = items * k_steps
    s = 0
    staged = 0  # whether c_smem holds a tile (p_*) waiting for its activation and store
    p_row0 = 0
    p_row_end = 0
    p_col0 = 0
    for it in range(items):
        t, k0, k1 = _work_item(it, n_dp, my_dp, parts, k_steps)
        c_row0 = gl.load(tile_row_start_ptr + t).to(gl.int32)
        c_row_end = gl.load(tile_row_end_ptr + t).to(gl.int32)
        c_col0 = gl.load(tile_col_ptr + t).to(gl.int32) * BLOCK_N
        # fresh zeros (ignored: use_acc=False at k=0) end the previous tile's values' live range
        acc = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, acc_layout)
        if SWIGLU:
            acc_up = gl.zeros([BLOCK_M, BLOCK_N], gl.float32, acc_layout)
        for kk in range(k0, k1):
            slot = s % NUM_BUFFERS
            if INLINE_LOADS:
                if GATHER:  # this thread's copies of step s are done (NUM_BUFFERS - 2 newer groups may fly),
                    async_copy.wait_group(NUM_BUFFERS - 2)
                    _cta_barrier()  # and every thread's; then made visible to the wgmma's async proxy
                    fence_async_shared()
                mbarrier.wait(ready.index(slot), (s // NUM_BUFFERS) & 1)
            else:
                mbarrier.wait(ready.index(slot), (s // NUM_BUFFERS) & 1)
                if GATHER:
                    fence_async_shared()  # the loader's cp.async writes (generic proxy), seen by the wgmma
            acc = warpgroup_mma(a_bufs.index(slot), b_bufs.index(slot), acc, use_acc=kk > k0, is_async=True)
            if SWIGLU:
                acc_up = warpgroup_mma(a_bufs.index(slot), b_bufs.index(NUM_BUFFERS + slot), acc_up,
                                       use_acc=kk > k0, is_async=True)
            if SLICED_ACT != 0:
                if staged != 0:
                    for j in gl.static_range(SLICES):
                        if kk - k0 == j:
                            _activate_slice(c_smem, j, SLICE_ROWS, slice_layout, SLICED_ACT, FAST_GELU)
            if SWIGLU:
                acc, acc_up = warpgroup_mma_wait(2, (acc, acc_up))
            else:
                acc = warpgroup_mma_wait(1, (acc,))
            # step s-1's wgmma is complete: its slot takes step s + NUM_BUFFERS - 1 (maybe the next tile's),
            # here or in the loader partition
            if INLINE_LOADS:
                ls = s + NUM_BUFFERS - 1
                _issue_load(a_desc, b_desc, a_bufs, b_bufs, ready, ls, l_k, l_row0, l_brow0, l_col0, up_col, a_ptr,
                            l_offs, D_IN, NUM_BUFFERS, BLOCK_K, GATHER, N_B, gather_layout, ls < total)
                l_k, l_tile, l_row0, l_brow0, l_col0, l_offs = _advance_loader(
                    l_k, l_tile, l_row0, l_brow0, l_col0, l_offs, k_steps, pid, G, max_tiles, tile_expert_ptr,
                    tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, a_row_ptr, D_IN, stride_am, BLOCK_M,
                    BLOCK_N, GATHER, row_layout)
            else:
                mbarrier.arrive(empty.index((s + NUM_BUFFERS - 1) % NUM_BUFFERS), pred=s > 0)
            s += 1
        if staged != 0:
            _store_previous_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr,
                                 k1 - k0, SLICES, SLICE_ROWS, slice_layout, SLICED_ACT, FAST_GELU, COUNT_COLS)
        if SWIGLU:
            acc, acc_up = warpgroup_mma_wait(0, (acc, acc_up))
        else:
            acc = warpgroup_mma_wait(0, (acc,))
        staged = 1 + 0 * it
        if SPLIT_TAIL:
            if k1 - k0 < k_steps:
                if SWIGLU:
                    acc, acc_up, staged = _join_split_tile(acc, acc_up, t - n_dp, parts, ws_ptr, cnt_ptr, N_B,
                                                           acc_layout)
                else:
                    acc, _, staged = _join_split_tile(acc, acc, t - n_dp, parts, ws_ptr, cnt_ptr, N_B, acc_layout)
        if staged != 0:
            if SWIGLU:
                acc = acc / (1.0 + gl.exp2(-_LOG2E * acc)) * acc_up  # silu(gate) * up
            c_smem.store(acc.to(dtype))
            p_row0 = c_row0
            p_row_end = c_row_end
            p_col0 = c_col0
    if staged != 0:
        _store_last_tile(c_desc, c_smem, c_ptr, p_row0, p_row_end, p_col0, D_OUT, stride_cm, count_ptr, SLICES,
                         SLICE_ROWS, slice_layout, SLICED_ACT, FAST_GELU, COUNT_COLS)
    tma.store_wait(pendings=0)
    if WAIT_SOURCES:  # (the loader's waits came before the loads this partition consumed)
        _finish_and_reset(done_ptr, done_total, flag_ptr, world)


@jit(specialise=("c_ptr", "a_ptr", "ws_ptr", "D_IN", "D_OUT", "up_col", "stride_am", "stride_cm"), decorator=gluon.jit)
def _grouped_gemm_hopper_kernel(
    a_desc, b_desc, c_desc, c_ptr, a_ptr, a_row_ptr,
    tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, num_tiles_ptr, ws_ptr, cnt_ptr, count_ptr,
    tile_src_ptr, flag_ptr, flag_target_ptr, status_ptr, done_ptr,
    max_tiles, D_IN, D_OUT, up_col, stride_am, stride_cm, rank, world, max_spin, done_total, part_num, part_den,
    part_head, part_tail,
    ACTIVATION: gl.constexpr, GATHER: gl.constexpr, NUM_BUFFERS: gl.constexpr, FAST_GELU: gl.constexpr,
    LOADER_WARPS: gl.constexpr, LOADER_REGS: gl.constexpr, SPLIT_TAIL: gl.constexpr, COUNT_COLS: gl.constexpr,
    WAIT_SOURCES: gl.constexpr, TILE_PART: gl.constexpr, num_warps: gl.constexpr,
):
    """LOADER_WARPS = 0: the multiplying warps issue the loads themselves; else a loader partition of that
    many warps (LOADER_REGS registers each) does. SPLIT_TAIL (with a loader partition only): each tile of a
    last wave that is at most half full is split into K chunks run by idle programs (gluon_host.split_schedule);
    ws_ptr / cnt_ptr are its workspace (fp32 partial accumulators, int32 counters that start at zero and are
    left at zero). COUNT_COLS: each finished tile adds 1 to count_ptr[its column block] once its rows are
    stored (release), for a kernel beside this one that waits on whole column blocks. WAIT_SOURCES (with a
    loader partition): before a tile's loads the loader waits until flag[s] >= flag_target[s] for every source
    rank s in tile_src[t] (rows pulled by a kernel beside this one); the last of done_total programs of both
    kernels to finish resets flag[0:world] and *done_ptr. TILE_PART (`_tile_part`): this launch runs the head
    (1) or the tail (2) of the tile table, split at a point both compute from the tile count; the table
    pointers are moved to the part's first tile, so all below indexes the part alone."""
    BLOCK_M: gl.constexpr = c_desc.block_type.shape[0]
    BLOCK_N: gl.constexpr = c_desc.block_type.shape[1]
    BLOCK_K: gl.constexpr = a_desc.block_type.shape[1]
    dtype: gl.constexpr = a_desc.dtype
    N_B: gl.constexpr = 2 if ACTIVATION == 2 else 1  # swiglu: gate and up columns
    first, T = _tile_part(num_tiles_ptr, max_tiles, part_num, part_den, part_head, part_tail, TILE_PART)
    if TILE_PART != 0:
        tile_expert_ptr += first
        tile_row_start_ptr += first
        tile_row_end_ptr += first
        tile_col_ptr += first
        if WAIT_SOURCES:
            tile_src_ptr += first
        max_tiles -= first
    items, n_dp, my_dp, parts = _schedule(T, gl.cdiv(D_IN, BLOCK_K), SPLIT_TAIL)
    a_bufs = gl.allocate_shared_memory(dtype, [NUM_BUFFERS, BLOCK_M, BLOCK_K], a_desc.layout)
    b_bufs = gl.allocate_shared_memory(dtype, [N_B * NUM_BUFFERS, BLOCK_K, BLOCK_N], b_desc.layout)
    c_smem = gl.allocate_shared_memory(dtype, [BLOCK_M, BLOCK_N], c_desc.layout)
    ready = gl.allocate_shared_memory(gl.int64, [NUM_BUFFERS, 1], mbarrier.MBarrierLayout())
    if LOADER_WARPS == 0:
        for i in gl.static_range(NUM_BUFFERS):
            mbarrier.init(ready.index(i), count=1)
        l_k, l_tile, l_row0, l_brow0, l_col0, l_offs = _prime_loads(
            a_desc, b_desc, a_bufs, b_bufs, ready, a_ptr, a_row_ptr, tile_expert_ptr, tile_row_start_ptr,
            tile_row_end_ptr, tile_col_ptr, items, max_tiles, D_IN, up_col, stride_am, GATHER, num_warps)
        _consume(a_bufs, b_bufs, c_smem, ready, ready, c_desc, c_ptr, tile_row_start_ptr, tile_row_end_ptr,
                 tile_col_ptr, items, n_dp, my_dp, parts, ws_ptr, cnt_ptr, max_tiles, D_IN, D_OUT,
                 stride_cm, count_ptr, a_desc, b_desc, a_ptr, a_row_ptr, tile_expert_ptr, up_col, stride_am, l_k,
                 l_tile, l_row0, l_brow0, l_col0, l_offs, ACTIVATION, FAST_GELU, GATHER, True, False, COUNT_COLS,
                 False, done_ptr, done_total, flag_ptr, world, num_warps)
        for i in gl.static_range(NUM_BUFFERS):
            mbarrier.invalidate(ready.index(i))
    else:
        empty = gl.allocate_shared_memory(gl.int64, [NUM_BUFFERS, 1], mbarrier.MBarrierLayout())
        for i in gl.static_range(NUM_BUFFERS):
            # the expect of the TMA bytes, and with a gather every loader thread's copies (noinc arrivals)
            mbarrier.init(ready.index(i), count=LOADER_WARPS * 32 * GATHER + 1)
            mbarrier.init(empty.index(i), count=1)
        gl.warp_specialize([  # (the consumer's loader state l_* is unused: zeros)
            (_consume, (a_bufs, b_bufs, c_smem, ready, empty, c_desc, c_ptr, tile_row_start_ptr, tile_row_end_ptr,
                        tile_col_ptr, items, n_dp, my_dp, parts, ws_ptr, cnt_ptr, max_tiles, D_IN,
                        D_OUT, stride_cm, count_ptr, a_desc, b_desc, a_ptr, a_row_ptr, tile_expert_ptr, up_col,
                        stride_am, 0, 0, 0, 0, 0, 0, ACTIVATION, FAST_GELU, GATHER, False, SPLIT_TAIL, COUNT_COLS,
                        WAIT_SOURCES, done_ptr, done_total, flag_ptr, world, num_warps)),
            (_ws_loader, (a_bufs, b_bufs, ready, empty, a_desc, b_desc, a_ptr, a_row_ptr, tile_expert_ptr,
                          tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, items, n_dp, my_dp, parts,
                          D_IN, up_col, stride_am, tile_src_ptr, flag_ptr, flag_target_ptr, status_ptr, rank, world,
                          max_spin, GATHER, LOADER_WARPS, WAIT_SOURCES)),
        ], [LOADER_WARPS], [LOADER_REGS])


def grouped_gemm_hopper(a, b_EIO, tiles: dict[str, torch.Tensor], out, *, block_m: int, block_n: int,
                        activation: str, num_programs: int, a_rows_R=None, options: GemmOptions,
                        block_k: int = 64, col_counts=None, wait_sources=None,
                        tile_part: tuple[int, ...] = (0, 0, 1)) -> torch.Tensor:
    """Launch the kernel; the caller (kernels.grouped_gemm.grouped_gemm) has checked the operands and
    `kernels.gluon_host.supports`. out[r] = act(a[row(r)] @ b_EIO[e(r)]) for the tiles' rows, row(r) =
    a_rows_R[r] if given (gathered by cp.async) else r (TMA); swiglu reads gate columns [0, D_OUT) and up
    columns [D_OUT, 2 D_OUT) of b_EIO. options: fast_gelu, ws_gather, ws_tma and split_tail as
    kernels.options.GemmOptions describes them. A split needs the loader partition, which it turns on for an
    A in place (with ws_gather=False a gathered A runs unsplit). col_counts: an int32 tensor of a count per
    output column block: each finished tile adds 1 to its column block's count once its rows are stored
    (release at GPU scope; stored by plain stores, not TMA: see `_store_tile`). wait_sources: a `SourceWaits`:
    each tile's loads wait until the source ranks of its rows have arrived (needs the loader partition: a
    gathered A with ws_gather, or an A in place with ws_tma or a split). tile_part (part, num, den[, head,
    tail]): part 0 runs every tile; of T tiles, part 1 runs the first T - tail and part 2 the last tail =
    T * num // den, plus the head's last few where the tail's `tail` programs take them without another wave
    when head and tail (the two launches' program counts) are given (two launches that share one tile table:
    `_tile_part`). Returns out."""
    part, part_num, part_den, part_head, part_tail = (*tile_part, 0, 0) if len(tile_part) == 3 else tile_part
    if part not in (0, 1, 2) or not 0 <= part_num <= part_den or part_den < 1 or min(part_head, part_tail) < 0:
        raise ValueError(f"tile_part={tile_part!r}: use (0, 0, 1) for all tiles, or (1 or 2, num, den[, head, "
                         f"tail]) with 0 <= num <= den for the head or the tail num/den of them")
    E, D_IN, D_OUT_B = b_EIO.shape
    D_OUT = out.shape[1]
    gdt = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16}[a.dtype]
    a_desc = _nvmma_descriptor(a, [block_m, block_k], gdt)
    b_desc = _nvmma_descriptor(b_EIO.view(E * D_IN, D_OUT_B), [block_k, block_n], gdt)
    c_desc = _nvmma_descriptor(out, [block_m, block_n], gdt)
    n_b = 2 if activation == "swiglu" else 1
    nb = num_buffers_for(block_m, block_n, block_k, a.element_size(), n_b)
    gather = a_rows_R is not None
    fast_gelu = a.dtype == torch.bfloat16 if options.fast_gelu is None else options.fast_gelu
    want_split = (options.split_tail if options.split_tail is not None
                  else triton.cdiv(D_IN, block_k) >= SPLIT_MIN_K_STEPS)
    loader = (gather and options.ws_gather) or (not gather and (options.ws_tma or want_split))
    split = want_split and loader
    if part and split:  # two launches at once would share one split workspace
        raise ValueError("tile_part needs split_tail=False: GemmOptions(split_tail=False)")
    if wait_sources is not None and not loader:
        raise ValueError("wait_sources needs the loader partition: use ws_gather=True (gathered A) or ws_tma=True")
    w = wait_sources
    ws, cnt = split_workspace(a.device, num_programs, block_m, block_n, n_b) if split else (out, tiles["num"])
    warps = block_m // 16 + (_LOADER_WARPS if loader else 0)
    # a loader partition: registers per thread at launch sized so that every warp fits (setmaxnreg moves them)
    launch = {"maxnreg": min(256, 65536 // (32 * warps) // 8 * 8)} if loader else {}
    _grouped_gemm_hopper_kernel[(num_programs,)](
        a_desc, b_desc, c_desc, out, a, a_rows_R if gather else tiles["row_start"],
        tiles["expert"], tiles["row_start"], tiles["row_end"], tiles["col"], tiles["num"], ws, cnt,
        cnt if col_counts is None else col_counts,
        *((cnt,) * 5 if w is None else (w.tile_src, w.flags, w.targets, w.status, w.done)),
        tiles["expert"].numel(), D_IN, D_OUT, D_OUT if n_b == 2 else 0, a.stride(0), out.stride(0),
        *((0, 0, 0, 0) if w is None else (w.rank, w.world, w.max_spin, w.done_total)), part_num, part_den,
        part_head, part_tail, ACTIVATION=ACTIVATIONS[activation], GATHER=gather, NUM_BUFFERS=nb,
        FAST_GELU=2 if fast_gelu == "packed" else int(fast_gelu),
        LOADER_WARPS=_LOADER_WARPS if loader else 0, LOADER_REGS=_LOADER_REGS, SPLIT_TAIL=split,
        COUNT_COLS=col_counts is not None, WAIT_SOURCES=w is not None, TILE_PART=part, num_warps=block_m // 16,
        **launch)
    return out


@dataclass(frozen=True)
class SourceWaits:
    """What grouped_gemm_hopper's wait_sources needs: per tile a bit mask of the source ranks of its rows
    (tile_src, int64), per source the flag (flags: int32, world of them) and the value it reaches when the
    source has arrived (targets, int64), the status record for a timeout (kernels/signals.py), and the done
    counter that the last of done_total programs (this kernel's and the producer kernel's) resets with the
    flags."""

    tile_src: torch.Tensor
    flags: torch.Tensor
    targets: torch.Tensor
    status: torch.Tensor
    done: torch.Tensor
    rank: int
    world: int
    max_spin: int
    done_total: int


def _nvmma_descriptor(t, block_shape, gdt):
    layout = gl.NVMMASharedLayout.get_default_for(block_shape, gdt)
    return TensorDescriptor.from_tensor(t, block_shape, layout)
