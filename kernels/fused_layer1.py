"""Fused layer1 of one rank: grouped GEMM (K/TP -> N) + top-k weighted reduction + combine (remote stores
into the owners' combine buffers), and the owner's final reduction of its tokens' partial sums.

Shape legend (as comet/plan.py): M tokens, N hidden, K = K/TP rows of the layer1 weight, E local experts,
R rows of the rank's shared tensor, T tiles, S sends (token, owner), C send chunks, W ranks,
N1 layer1 column blocks (BLOCK_N = Policy.block_n1 columns each), SL combine slots per token.

Thread-block specialisation (PAPER.md mechanism 3), one launch, grid = G + nc programs:
    programs [0, G)       GEMM: the Plan's column-block-major tiles t = pid, pid + G, ... of
                          y_RN = h_RK @ w1_EKN[expert]; after each tile, count[col] += 1 (release).
    programs [G, G + nc)  communication: work item i = (column block i // C, send chunk i % C), in
                          column-block-major order, belongs to program i % nc. It waits until count[col] ==
                          l1_tiles_per_col, then for each send of the chunk sums its rows
                          rows_by_send_R[send_row_start_S:send_row_end_S] weighted by row_weight_R in fp32
                          and stores the sum into slot send_slot_S of the owner's combine buffer (a remote
                          store through the peer table), then adds the chunk's send count to the owner's
                          combine flag [this rank, col] (release, system scope). By default
                          (CommConfig.pipelined) the same work runs as a software pipeline over (item, step)
                          units (`_comm_pipelined`), bitwise equal.
GEMM programs have the low ids so that Triton's interpreter (programs in id order) finishes them before the
communication programs wait. The last program to finish resets the column counts.
INSTRUMENT (constexpr, off unless `timeline=` is given; GPU only): every program records each tile and work item
it ran (SM, %globaltimer start / ready / end) into the launch's buffer (kernels/timeline.py).

The owner's reduce (`combine_reduce`, a separate small launch after every rank's layer1 was launched):
program (token block, column block) waits until combine flag [s, col] == expected[s] for every source s
(expected: the number of the owner's tokens that s sends to, the Plan's `combine_expected_W`), then sums slots
0 .. token_num_slots_M[t] - 1 of each token in slot order (fp32) and stores out[t]. The last program of a
column block subtracts the expected counts from its flags (back to 0 for the next call).

Determinism: every partial sum is computed by exactly one program in a fixed row order, and the owner sums
slots in a fixed order, with no floating-point atomics: results are bitwise reproducible run to run for a
given routing, policy and config, whatever nc_layer1 or the number of GEMM programs (they decide who
computes, not how). They are not bitwise equal to comet.reference (different summation order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.ownership import owned_range
from comet.core.policy import check_kernel_tile
from kernels.fused_layer0 import tile_matmul
from kernels.grouped_gemm import sm_count
from kernels.options import CommConfig, TileConfig, default_comm, default_tile
from kernels.signals import finish_program, signal_add, wait_flag
from kernels.timeline import REC_GEMM1, REC_REDUCE_SEND, global_timer_ns, require_gpu_kernel, sm_id, trace_write
from kernels.tma import descriptor

_WAIT_L1_COLUMN = tl.constexpr(3)  # kernels.signals.WAIT_L1_COLUMN
_WAIT_COMBINE = tl.constexpr(4)  # kernels.signals.WAIT_COMBINE
_REC_GEMM1 = tl.constexpr(REC_GEMM1)  # kernels/timeline.py record kinds
_REC_REDUCE_SEND = tl.constexpr(REC_REDUCE_SEND)
# tokens per program of the owner's reduce
GPU_REDUCE_TOKENS, SMALL_REDUCE_TOKENS = 32, 16


# ------------------------------------------------------------------------------------------- kernels
@triton.jit
def first_owned_token(s, M, W):
    """The first global token rank s owns: comet.core.ownership.owned_range(M, W, s)[0] in the kernels' language
    (tests/test_ownership.py checks the two agree)."""
    return (s * M + W - 1) // W


@triton.jit(do_not_specialize=["max_spin", "trace_slots"])
def _fused_layer1_kernel(
    # pointers
    a_ptr, a_desc, b_ptr, b_desc, y_ptr, comb_ptr, flags_ptr, status_ptr, comb_peers_ptr, sflag_peers_ptr,
    tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, num_tiles_ptr, tiles_per_col_ptr,
    send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr,
    row_weight_ptr, chunk_start_ptr, chunk_end_ptr, num_chunks_ptr,
    # sizes
    rank, world, M, max_tiles, max_chunks, num_gemm, num_comm, D_IN, D_OUT, col_blocks, slots, col_max,
    max_spin, l1_col_off, done_off, comb_flag_off, steps,
    # timeline records (kernels/timeline.py; None unless INSTRUMENT)
    trace_ptr, trace_count_ptr, trace_slots,
    # strides
    stride_am, stride_be, stride_bk, stride_bn, stride_ym,
    # meta
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    A_TMA: tl.constexpr, B_TMA: tl.constexpr, TOPK_LOCAL: tl.constexpr, SEND_BLOCK: tl.constexpr,
    INSTRUMENT: tl.constexpr = False, PIPELINED: tl.constexpr = False,
):
    pid = tl.program_id(0)
    arange_n = tl.arange(0, BLOCK_N)
    if INSTRUMENT:
        sm = sm_id()
    else:
        sm = pid  # unused
    if pid < num_gemm:
        # --- GEMM program: column-block-major tiles into the intermediate y_RN, counted per column block
        if INSTRUMENT:
            n_rec = 0  # this program's items so far: its next record's slot
        num_tiles = tl.minimum(tl.load(num_tiles_ptr), max_tiles)
        arange_m = tl.arange(0, BLOCK_M)
        offs_k = tl.arange(0, BLOCK_K)
        for t in range(pid, num_tiles, num_gemm):
            if INSTRUMENT:
                t_begin = global_timer_ns()
            expert = tl.load(tile_expert_ptr + t)
            row_start = tl.load(tile_row_start_ptr + t)
            row_end = tl.load(tile_row_end_ptr + t)
            col = tl.load(tile_col_ptr + t)
            offs_m = row_start + arange_m
            mask_m = offs_m < row_end
            rows = tl.where(mask_m, offs_m, row_start)
            a_ptrs = a_ptr + (rows[:, None] * stride_am + offs_k[None, :])
            offs_n = col * BLOCK_N + arange_n
            offs_bn = tl.where(offs_n < D_OUT, offs_n, 0)
            offs_bn = tl.max_contiguous(tl.multiple_of(offs_bn, BLOCK_N), BLOCK_N)
            b_ptrs = b_ptr + expert * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)
            acc = tile_matmul(a_ptrs, 1, a_desc, row_start.to(tl.int32), b_ptrs, stride_bk, stride_bn, b_desc,
                              expert.to(tl.int32) * D_IN, (col * BLOCK_N).to(tl.int32), 0, D_IN,
                              0, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, A_TMA, B_TMA, "")
            y_ptrs = y_ptr + (offs_m[:, None] * stride_ym + offs_n[None, :])
            tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=mask_m[:, None] & (offs_n < D_OUT)[None, :])
            signal_add(flags_ptr + l1_col_off + col, 1, "gpu")
            if INSTRUMENT:
                t_end = global_timer_ns()
                # the tile's rows come from the Plan at decoding: keeping row_end live here made ptxas spill
                trace_write(trace_ptr, trace_slots, pid, n_rec, t_begin, t_begin, t_end, sm, _REC_GEMM1, t, -1, 0,
                            col)
                n_rec += 1
        if INSTRUMENT:
            tl.store(trace_count_ptr + pid, n_rec)
    else:
        # --- communication program: (column block, send chunk) items; top-k reduce, remote store, signal
        cp = pid - num_gemm
        if INSTRUMENT:
            n_rec = 0
        num_chunks = tl.minimum(tl.load(num_chunks_ptr), max_chunks)
        tiles_per_col = tl.load(tiles_per_col_ptr)
        if PIPELINED:
            n_pipe = _comm_pipelined(
                cp, pid, sm, num_comm, num_chunks, col_blocks, steps, tiles_per_col, rank, world, M, D_OUT, slots,
                col_max, max_spin, l1_col_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr, comb_peers_ptr,
                sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr,
                rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr, trace_ptr, trace_slots, stride_ym,
                BLOCK_N, TOPK_LOCAL, SEND_BLOCK, INSTRUMENT)
            if INSTRUMENT:
                n_rec = n_pipe
        else:
            arange_s = tl.arange(0, SEND_BLOCK)
            comb_elem = comb_ptr.dtype.element_ty
            ready_cols = tl.full((), 0, tl.int64)  # column blocks [0, ready_cols) known complete (column order)
            for i in range(cp, num_chunks * col_blocks, num_comm):
                if INSTRUMENT:
                    t_begin = global_timer_ns()
                col = i // num_chunks
                ch = i % num_chunks
                if col >= ready_cols:
                    wait_flag(flags_ptr + l1_col_off + col, tiles_per_col, max_spin, status_ptr, _WAIT_L1_COLUMN,
                              col, rank, False, "gpu")
                    ready_cols = (col + 1).to(tl.int64)
                if INSTRUMENT:
                    t_ready = global_timer_ns()
                start = tl.load(chunk_start_ptr + ch)
                end = tl.load(chunk_end_ptr + ch)
                dest = tl.load(send_dest_ptr + start)  # one destination per chunk
                first_tok = first_owned_token(dest, M, world)
                # peers' buffers are 16-byte aligned (workspace allocations): say so, or the stores go out scalar
                comb_base = tl.multiple_of(tl.load(comb_peers_ptr + dest).to(tl.pointer_type(comb_elem)), 16)
                offs_n = col * BLOCK_N + arange_n
                mask_n = offs_n < D_OUT
                for s0 in range(start, end, SEND_BLOCK):
                    offs_s = s0 + arange_s
                    mask_s = offs_s < end
                    r0 = tl.load(send_row_start_ptr + offs_s, mask=mask_s, other=0)
                    r1 = tl.load(send_row_end_ptr + offs_s, mask=mask_s, other=0)
                    acc = tl.zeros((SEND_BLOCK, BLOCK_N), dtype=tl.float32)
                    for j in tl.static_range(TOPK_LOCAL):  # a send's rows, in the Plan's (slot) order
                        valid = mask_s & (r0 + j < r1)
                        row = tl.load(rows_by_send_ptr + r0 + j, mask=valid, other=0)
                        w = tl.load(row_weight_ptr + row, mask=valid, other=0.0)
                        # invalid entries read row 0 and are dropped by the where: a row mask on this gather
                        # crashes Triton 3.6's layout pass on sm_90 when stride_ym is specialised as a multiple
                        # of 16
                        y = tl.load(y_ptr + row[:, None] * stride_ym + offs_n[None, :],
                                    mask=mask_n[None, :], other=0.0, cache_modifier=".cg")
                        acc += tl.where(valid[:, None], w[:, None] * y.to(tl.float32), 0.0)
                    tok = tl.load(send_token_ptr + offs_s, mask=mask_s, other=0)
                    slot = tl.load(send_slot_ptr + offs_s, mask=mask_s, other=0)
                    dst = comb_base + ((tok - first_tok) * slots + slot)[:, None] * D_OUT + offs_n[None, :]
                    tl.store(dst, acc.to(comb_elem), mask=mask_s[:, None] & mask_n[None, :])
                peer_flags = tl.load(sflag_peers_ptr + dest).to(tl.pointer_type(tl.int32))
                signal_add(peer_flags + comb_flag_off + rank * col_max + col, (end - start).to(tl.int32), "sys")
                if INSTRUMENT:
                    t_end = global_timer_ns()
                    trace_write(trace_ptr, trace_slots, pid, n_rec, t_begin, t_ready, t_end, sm, _REC_REDUCE_SEND, i,
                                dest, end - start, col)
                    n_rec += 1
        if INSTRUMENT:
            tl.store(trace_count_ptr + pid, n_rec)

    # --- the last program to finish resets the column counts for the next call
    if finish_program(flags_ptr + done_off, num_gemm + num_comm):
        for c in range(0, col_blocks):
            tl.atomic_xchg(flags_ptr + l1_col_off + c, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


@triton.jit
def _zero(ptr):
    """A new scalar 0 of the pointer's element type."""
    return tl.full((), 0, ptr.dtype.element_ty)


@triton.jit
def _zeros(ptr, N: tl.constexpr):
    return tl.zeros((N,), ptr.dtype.element_ty)


@triton.jit
def _comm_pipelined(
    cp, pid, sm, num_comm, num_chunks, col_blocks, steps, tiles_per_col, rank, world, M, D_OUT, slots, col_max,
    max_spin, l1_col_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr, comb_peers_ptr, sflag_peers_ptr,
    send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr,
    row_weight_ptr, chunk_start_ptr, chunk_end_ptr, trace_ptr, trace_slots, stride_ym,
    BLOCK_N: tl.constexpr, TOPK_LOCAL: tl.constexpr, SEND_BLOCK: tl.constexpr, INSTRUMENT: tl.constexpr,
):
    """The communication program's work as a software pipeline over units (item, step) (CommConfig.pipelined).

    Unit w of this program: item cp + (w // steps) * num_comm, step w % steps (sends start + step * SEND_BLOCK
    .. of the item's chunk; steps = cdiv(comm_rows, SEND_BLOCK) bounds every chunk, so trailing units of a
    short chunk are empty and masked). Iteration v runs five stages, one unit each, so the dependent loads of
    one unit's chain are issued an iteration apart and overlap other units' loads:
        S4 unit v:     chunk start / end
        S3 unit v - 1: destination, send_row_start / end, token, slot
        S2 unit v - 2: rows_by_send (all TOPK_LOCAL rows), the owner's buffer and flags pointers
        S1 unit v - 3: wait for the column block (when new), row weights and y rows (prefetched one iteration)
        S0 unit v - 4: fp32 weighted sum (same rows, order and ops as the item-by-item loop: bitwise equal),
                       remote store; after the item's last step, signal the owner with the item's send count.
    INSTRUMENT: one record per item, begin = ready = its first unit's S0, end = after its last unit's S0.
    Machine code (Triton 3.6, sm_90): ptxas copies the loop-carried registers at the loop's back edge, so
    each iteration waits for the loads it issued: a unit costs about one memory latency (all its stages'
    loads in flight together) where the item-by-item loop pays ~3 dependent latencies per step and ~3 more per item; a
    larger SEND_BLOCK now moves more data per latency.
    """
    arange_s = tl.arange(0, SEND_BLOCK)
    arange_n = tl.arange(0, BLOCK_N)
    comb_elem = comb_ptr.dtype.element_ty
    nch = tl.maximum(num_chunks, 1).to(tl.int32)
    n_units = ((num_chunks * col_blocks - cp + num_comm - 1) // num_comm * steps).to(tl.int32)
    n_rec = 0
    zero_i = tl.full((), 0, tl.int32)
    # loop-carried state, named by the stage that consumes it next. Every initial value is a distinct zero:
    # the compiler keeps a variable loop-carried only if its value object changes in the body, which a
    # shift `a = b` of two variables bound to one shared zero would not do (they would fold to the constant).
    # Per-send vectors are carried compactly: a send's row count nv (int32; its rows' validity is j < nv,
    # as r0 + j < r1) and its combine row (tok - first_tok) * slots + slot (int32), each computed one stage
    # after its loads arrived.
    ready_cols = tl.full((), 0, tl.int32)
    # a unit's step, column block and item, decoded once (S4) and passed down with it
    k3 = tl.full((), 0, tl.int32)
    k2 = tl.full((), 0, tl.int32)
    k1 = tl.full((), 0, tl.int32)
    k0 = tl.full((), 0, tl.int32)
    col1 = tl.full((), 0, tl.int32)
    col0 = tl.full((), 0, tl.int32)
    col2 = tl.full((), 0, tl.int32)
    col3 = tl.full((), 0, tl.int32)
    item3 = tl.full((), 0, tl.int32)
    item2 = tl.full((), 0, tl.int32)
    item1 = tl.full((), 0, tl.int32)
    item0 = tl.full((), 0, tl.int32)
    st3 = _zero(chunk_start_ptr)
    en3 = _zero(chunk_start_ptr)
    st2 = _zero(chunk_start_ptr)
    en2 = _zero(chunk_start_ptr)
    d2 = _zero(send_dest_ptr)
    r0_2 = _zeros(send_row_start_ptr, SEND_BLOCK)
    r1_2 = _zeros(send_row_end_ptr, SEND_BLOCK)
    tok2 = _zeros(send_token_ptr, SEND_BLOCK)
    slot2 = _zeros(send_slot_ptr, SEND_BLOCK)
    en1 = _zero(chunk_start_ptr)
    st1 = _zero(chunk_start_ptr)
    d1 = _zero(send_dest_ptr)
    cb1 = _zero(comb_peers_ptr)
    pf1 = _zero(sflag_peers_ptr)
    nv1 = tl.zeros((SEND_BLOCK,), tl.int32)
    crow1 = tl.zeros((SEND_BLOCK,), tl.int32)
    rows1 = ()
    for _j in tl.static_range(TOPK_LOCAL):
        rows1 = rows1 + (_zeros(rows_by_send_ptr, SEND_BLOCK),)
    en0 = _zero(chunk_start_ptr)
    st0 = _zero(chunk_start_ptr)
    d0 = _zero(send_dest_ptr)
    cb0 = _zero(comb_peers_ptr)
    pf0 = _zero(sflag_peers_ptr)
    nv0 = tl.zeros((SEND_BLOCK,), tl.int32)
    crow0 = tl.zeros((SEND_BLOCK,), tl.int32)
    w0 = ()
    y0 = ()
    for _j in tl.static_range(TOPK_LOCAL):
        w0 = w0 + (_zeros(row_weight_ptr, SEND_BLOCK),)
        y0 = y0 + (tl.zeros((SEND_BLOCK, BLOCK_N), y_ptr.dtype.element_ty),)
    t_item = tl.full((), 0, tl.int64)
    for v_ in range(0, n_units + 4):
        v = zero_i + v_  # a tensor (the interpreter's loop index is a Python int)
        # ---- S4 (unit v): the item's chunk bounds
        ok4 = v < n_units
        q4 = tl.minimum(v, n_units) // steps
        k4n = tl.minimum(v, n_units) - q4 * steps
        item4n = cp + q4 * num_comm
        col4n = item4n // nch
        ch4 = item4n - col4n * nch
        st4n = tl.load(chunk_start_ptr + ch4, mask=ok4, other=0)
        en4n = tl.load(chunk_end_ptr + ch4, mask=ok4, other=0)
        # ---- S3 (unit v - 1): destination, the step's sends' row ranges, tokens and slots
        w3 = v - 1
        ok3 = (w3 >= 0) & (w3 < n_units)
        offs_s3 = st3 + k3 * SEND_BLOCK + arange_s
        mask_s3 = offs_s3 < tl.where(ok3, en3, -1)  # offs_s3 >= 0
        d3n = tl.load(send_dest_ptr + st3, mask=ok3, other=0)  # one destination per chunk
        r0_3n = tl.load(send_row_start_ptr + offs_s3, mask=mask_s3, other=0)
        r1_3n = tl.load(send_row_end_ptr + offs_s3, mask=mask_s3, other=0)
        tok3n = tl.load(send_token_ptr + offs_s3, mask=mask_s3, other=0)
        slot3n = tl.load(send_slot_ptr + offs_s3, mask=mask_s3, other=0)
        # ---- S2 (unit v - 2): the sends' rows (all issued before any is used), the owner's pointers
        w2 = v - 2
        ok2 = (w2 >= 0) & (w2 < n_units)
        offs_s2 = st2 + k2 * SEND_BLOCK + arange_s
        mask_s2 = offs_s2 < tl.where(ok2, en2, -1)
        nv2n = tl.where(mask_s2, r1_2 - r0_2, 0).to(tl.int32)
        rows2n = ()
        for j in tl.static_range(TOPK_LOCAL):
            rows2n = rows2n + (tl.load(rows_by_send_ptr + r0_2 + j, mask=j < nv2n, other=0),)
        cb2n = tl.load(comb_peers_ptr + d2, mask=ok2, other=0)
        pf2n = tl.load(sflag_peers_ptr + d2, mask=ok2, other=0)
        first_tok2 = first_owned_token(d2, M, world)
        crow2n = ((tok2 - first_tok2) * slots + slot2).to(tl.int32)  # < tokens per owner * slots
        # ---- S1 (unit v - 3): the column block's GEMM tiles are done; weights and y rows (used next iteration)
        w1 = v - 3
        ok1 = (w1 >= 0) & (w1 < n_units)
        if ok1 & (col1 >= ready_cols):
            wait_flag(flags_ptr + l1_col_off + col1, tiles_per_col, max_spin, status_ptr, _WAIT_L1_COLUMN,
                      col1, rank, False, "gpu")
            ready_cols = col1 + 1
        offs_n1 = col1 * BLOCK_N + arange_n
        mask_n1 = offs_n1 < D_OUT
        w1n = ()
        y1n = ()
        for j in tl.static_range(TOPK_LOCAL):
            w1n = w1n + (tl.load(row_weight_ptr + rows1[j], mask=j < nv1, other=0.0),)
            # as item by item: no row mask on the gather (invalid entries read row 0; dropped in S0)
            y1n = y1n + (tl.load(y_ptr + rows1[j][:, None] * stride_ym + offs_n1[None, :],
                                 mask=mask_n1[None, :], other=0.0, cache_modifier=".cg"),)
        # ---- S0 (unit v - 4): weighted sum, remote store, signal
        w0u = v - 4
        ok0 = w0u >= 0
        if INSTRUMENT:
            if ok0 & (k0 == 0):
                t_item = global_timer_ns()
        offs_s0 = st0 + k0 * SEND_BLOCK + arange_s
        mask_s0 = offs_s0 < tl.where(ok0, en0, -1)
        offs_n0 = col0 * BLOCK_N + arange_n
        mask_n0 = offs_n0 < D_OUT
        acc = tl.zeros((SEND_BLOCK, BLOCK_N), dtype=tl.float32)
        for j in tl.static_range(TOPK_LOCAL):  # a send's rows, in the Plan's (slot) order
            acc += tl.where((j < nv0)[:, None], w0[j][:, None] * y0[j].to(tl.float32), 0.0)
        # peers' buffers are 16-byte aligned (workspace allocations): say so, or the stores go out scalar
        comb_base = tl.multiple_of(cb0.to(tl.pointer_type(comb_elem)), 16)
        dst = comb_base + crow0.to(tl.int64)[:, None] * D_OUT + offs_n0[None, :]
        tl.store(dst, acc.to(comb_elem), mask=mask_s0[:, None] & mask_n0[None, :])
        if ok0 & (k0 == steps - 1):  # the item's last unit
            sent = en0 - st0
            peer_flags = pf0.to(tl.pointer_type(tl.int32))
            signal_add(peer_flags + comb_flag_off + rank * col_max + col0, sent.to(tl.int32), "sys")
            if INSTRUMENT:
                trace_write(trace_ptr, trace_slots, pid, n_rec, t_item, t_item, global_timer_ns(), sm,
                            _REC_REDUCE_SEND, item0, d0, en0 - st0, col0)
                n_rec += 1
        # ---- advance the pipeline
        k0 = k1
        col0 = col1
        item0 = item1
        k1 = k2
        col1 = col2
        item1 = item2
        k2 = k3
        col2 = col3
        item2 = item3
        k3 = k4n
        col3 = col4n
        item3 = item4n
        st0 = st1
        en0 = en1
        d0 = d1
        cb0 = cb1
        pf0 = pf1
        nv0 = nv1
        crow0 = crow1
        w0 = w1n
        y0 = y1n
        st1 = st2
        en1 = en2
        d1 = d2
        cb1 = cb2n
        pf1 = pf2n
        nv1 = nv2n
        crow1 = crow2n
        rows1 = rows2n
        st2 = st3
        en2 = en3
        d2 = d3n
        r0_2 = r0_3n
        r1_2 = r1_3n
        tok2 = tok3n
        slot2 = slot3n
        st3 = st4n
        en3 = en4n
    return n_rec


@triton.jit(do_not_specialize=["max_spin"])
def _combine_reduce_kernel(
    comb_ptr, sflags_ptr, flags_ptr, status_ptr, out_ptr, num_slots_ptr, expected_ptr,
    rank, world, first_tok, n_own, D_OUT, slots, col_max, max_spin, comb_flag_off, red_done_off,
    stride_om,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, MAX_SLOTS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    col = tl.program_id(1)
    # --- wait for every source's partial sums of this column block
    for s in range(0, world):
        e = tl.load(expected_ptr + s)
        if e > 0:
            wait_flag(sflags_ptr + comb_flag_off + s * col_max + col, e, max_spin, status_ptr, _WAIT_COMBINE,
                      s * col_max + col, rank, False, "sys")
    # --- out[t] = sum of slots 0 .. n_slots(t) - 1, in slot order (fp32)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_own
    offs_n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < D_OUT
    n_slots = tl.load(num_slots_ptr + first_tok + offs_t, mask=mask_t, other=0)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for j in tl.static_range(MAX_SLOTS):
        valid = mask_t & (j < n_slots)
        v = tl.load(comb_ptr + (offs_t * slots + j)[:, None] * D_OUT + offs_n[None, :],
                    mask=valid[:, None] & mask_n[None, :], other=0.0, cache_modifier=".cv")
        acc += v.to(tl.float32)
    tl.store(out_ptr + offs_t[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_n[None, :])
    # --- the column block's last program returns its flags to 0
    if finish_program(flags_ptr + red_done_off + col, tl.num_programs(0)):
        for s in range(0, world):
            e = tl.load(expected_ptr + s)
            if e != 0:
                tl.atomic_add(sflags_ptr + comb_flag_off + s * col_max + col, (-e).to(tl.int32), sem="relaxed",
                              scope="sys")
        tl.atomic_xchg(flags_ptr + red_done_off + col, 0, sem="relaxed", scope="gpu")


# ------------------------------------------------------------------------------------------ wrappers
def fused_layer1(ws, plan, rank: int, w1_EKN: torch.Tensor, *, h_RK: torch.Tensor | None = None,
                 num_programs: int | None = None, tile: TileConfig | None = None, comm: CommConfig | None = None,
                 a_tma: bool | None = None, b_tma: bool | None = None, max_spin: int | None = None,
                 timeline=None) -> torch.Tensor:
    """Layer1 of `rank`: GEMM over the Plan's l1 tiles, top-k reduce, partial sums into the owners' combine
    buffers (slot send_slot_S), signalled per (this rank, column block) on the owner.

    w1_EKN: (E_local, K/TP, N) this rank's shard. h_RK: layer0's output (default ws.buffers(rank).h_RK).
    tile / comm: the GEMM programs' tile loop and the communication programs' reduce step and loop form
    (kernels.options.TileConfig / CommConfig: send_block, pipelined; default: kernels.options.default_tile /
    default_comm of the device). a_tma / b_tma: A / B through TMA (default: on a GPU where the rows are
    16-byte aligned).
    num_programs: GEMM programs (default SMs - nc_layer1). Returns the intermediate y_RN (R_max, N), for
    tests. The owners' `combine_reduce` must run after every rank's layer1 was launched. No host sync.
    timeline: a kernels.timeline.TimelineRecorder: run the instrumented build and record every tile and
    (column block, send chunk) item (GPU only).
    """
    pol = plan.policy
    if pol.nc_layer1 < 1:
        raise ValueError(f"nc_layer1={pol.nc_layer1}: the fused layer1 needs at least one communication "
                         f"program (the top-k reduce and combine run there); use a Policy with nc_layer1 >= 1")
    ws.check_plan(plan)
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    dev = buf.recv_MN.device
    N, K = plan.model.hidden_N, plan.ffn_local
    E_loc = plan.experts_per_rank
    R_max = rp.row_token_R.numel()
    h = buf.h_RK[:R_max] if h_RK is None else h_RK
    if h.shape != (R_max, K) or h.dtype != ws.dtype or h.device != dev or not h.is_contiguous():
        raise ValueError(f"h_RK must be a contiguous ({R_max}, {K}) {ws.dtype} tensor on {dev}")
    if w1_EKN.shape != (E_loc, K, N) or w1_EKN.dtype != ws.dtype or w1_EKN.device != dev \
            or not w1_EKN.is_contiguous():
        raise ValueError(f"w1_EKN must be a contiguous (E_local={E_loc}, K={K}, N={N}) {ws.dtype} tensor on {dev}; "
                         f"got {tuple(w1_EKN.shape)} {w1_EKN.dtype} on {w1_EKN.device}")
    check_kernel_tile("policy block_m", pol.block_m)
    check_kernel_tile("policy block_n1", pol.block_n1)
    tile = default_tile(dev) if tile is None else tile
    comm = default_comm(dev) if comm is None else comm
    sms = sm_count(dev)
    nc = pol.nc_layer1
    if num_programs is None:
        num_programs = max(1, sms - nc)
    if num_programs < 1:
        raise ValueError(f"num_programs must be >= 1, got {num_programs}")
    if dev.type == "cuda" and nc + num_programs > sms:
        raise ValueError(f"{num_programs} GEMM + {nc} communication programs exceed the {sms} SMs: programs wait "
                         f"on each other and must all be resident; lower num_programs or nc_layer1")
    y = buf.y_RN[:R_max]
    cuda = dev.type == "cuda"
    if a_tma is None:
        a_tma = cuda and (K * h.element_size()) % 16 == 0 and h.data_ptr() % 16 == 0
    if b_tma is None:
        b_tma = cuda and (N * w1_EKN.element_size()) % 16 == 0
    a_desc = descriptor(h, [pol.block_m, tile.block_k]) if a_tma else h
    b_desc = descriptor(w1_EKN.view(E_loc * K, N), [tile.block_k, pol.block_n1]) if b_tma else w1_EKN
    lay = ws.layout
    col_blocks = plan.l1_col_blocks
    topk_local = min(plan.model.topk, E_loc)
    send_block = comm.send_block_for(dev)
    trace = (None, None, None)
    if timeline is not None:
        require_gpu_kernel(_fused_layer1_kernel, dev)
        lt = timeline.new_launch(
            rank=rank, layer=1, variant="blocks", num_comm=nc, num_gemm=num_programs, comm_first=False,
            max_gemm_items=rp.l1_tile_expert_T.numel(), max_comm_items=rp.l1_chunk_start_C.numel() * col_blocks,
            device=dev, row_bytes=N * buf.combine_MSN.element_size(), hidden_N=N, block_n=pol.block_n1,
            combine_elem_bytes=buf.combine_MSN.element_size(),
            tile_rows=rp.l1_tile_row_end_T - rp.l1_tile_row_start_T)
        trace = (lt.records, lt.counts, lt.slots)
    _fused_layer1_kernel[(num_programs + nc,)](
        h, a_desc, w1_EKN, b_desc, y, buf.combine_MSN, buf.flags_F, buf.status, buf.combine_ptrs_W,
        buf.sflag_ptrs_W,
        rp.l1_tile_expert_T, rp.l1_tile_row_start_T, rp.l1_tile_row_end_T, rp.l1_tile_col_T, rp.num_l1_tiles,
        rp.l1_tiles_per_col,
        rp.send_token_S, rp.send_dest_S, rp.send_slot_S, rp.send_row_start_S, rp.send_row_end_S,
        rp.rows_by_send_R, rp.row_weight_R, rp.l1_chunk_start_C, rp.l1_chunk_end_C, rp.num_l1_chunks,
        rank, plan.world_size, plan.num_tokens, rp.l1_tile_expert_T.numel(), rp.l1_chunk_start_C.numel(),
        num_programs, nc, K, N, col_blocks, ws.sizes.slots, lay.col_max,
        ws.max_spin if max_spin is None else max_spin, lay.l1_col, lay.done_l1, lay.combine,
        triton.cdiv(pol.comm_rows, send_block), *trace,
        h.stride(0), w1_EKN.stride(0), w1_EKN.stride(1), w1_EKN.stride(2), y.stride(0),
        BLOCK_M=pol.block_m, BLOCK_N=pol.block_n1, BLOCK_K=tile.block_k, EVEN_K=K % tile.block_k == 0,
        A_TMA=a_tma, B_TMA=b_tma, TOPK_LOCAL=topk_local, SEND_BLOCK=send_block, INSTRUMENT=timeline is not None,
        PIPELINED=comm.pipelined, num_warps=tile.num_warps, num_stages=tile.num_stages)
    return y


def combine_reduce(ws, plan, rank: int, expected_W: torch.Tensor, *, out_MN: torch.Tensor | None = None,
                   max_spin: int | None = None, block_tokens: int | None = None) -> torch.Tensor:
    """The owner `rank` sums its tokens' partial sums: out[t] = sum_j combine[t, j] over j < num_slots(t).

    expected_W: int64 (W,) partial sums this owner receives from each rank (the Plan's combine_expected_W).
    out_MN: (M_own, N) output rows of this rank's tokens (default: a new tensor in the workspace dtype).
    Waits (bounded) on the combine flags; raise on timeout with ws.check(). No host sync.
    """
    ws.check_plan(plan)
    M, W, N = plan.num_tokens, plan.world_size, plan.model.hidden_N
    buf = ws.buffers(rank)
    dev = buf.recv_MN.device
    lo, hi = owned_range(M, W, rank)
    n_own = hi - lo
    if out_MN is None:
        out_MN = torch.empty(n_own, N, dtype=ws.dtype, device=dev)
    if out_MN.shape != (n_own, N) or out_MN.device != dev or out_MN.stride(1) != 1:
        raise ValueError(f"out_MN must be ({n_own}, N={N}) rows with unit column stride on {dev}; got "
                         f"{tuple(out_MN.shape)}")
    if expected_W.shape != (W,) or expected_W.dtype != torch.int64 or expected_W.device != dev:
        raise ValueError(f"expected_W must be an int64 ({W},) tensor on {dev}")
    if n_own == 0:
        return out_MN
    bt = block_tokens or (GPU_REDUCE_TOKENS if dev.type == "cuda" else SMALL_REDUCE_TOKENS)
    bn = plan.policy.block_n1
    lay = ws.layout
    grid = (triton.cdiv(n_own, bt), plan.l1_col_blocks)
    _combine_reduce_kernel[grid](
        buf.combine_MSN, buf.sflags_F, buf.flags_F, buf.status, out_MN, plan.token_num_slots_M, expected_W,
        rank, W, lo, n_own, N, ws.sizes.slots, lay.col_max, ws.max_spin if max_spin is None else max_spin,
        lay.combine, lay.red_done, out_MN.stride(0),
        BLOCK_T=bt, BLOCK_N=bn, MAX_SLOTS=ws.sizes.slots, num_warps=4)
    return out_MN
