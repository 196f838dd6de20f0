"""The fused layer1 kernel's communication programs as a software pipeline (`comm_pipelined`, the default:
kernels.options.CommConfig.pipelined), and `first_owned_token`, which both communication loops use.

The item-by-item loop inside kernels/fused_layer1.py's kernel does the same work in the plain order: for each
(column block, send chunk) item, wait for the column block, then per step of SEND_BLOCK sends load the sends'
row ranges, their rows, weights and y rows, sum, store and signal. Each of those loads depends on the one
before, so a step costs several memory latencies. Here consecutive units of work are staged an iteration
apart, so that one iteration issues the loads of five units at once. Same rows, order and operations: the
owners' combine buffers are bitwise equal to the item-by-item loop's (tests/test_fused_kernels.py).
"""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.signals import signal_add, wait_flag
from kernels.timeline import REC_REDUCE_SEND, global_timer_ns, trace_write

_WAIT_L1_COLUMN = tl.constexpr(3)  # kernels.signals.WAIT_L1_COLUMN
_REC_REDUCE_SEND = tl.constexpr(REC_REDUCE_SEND)  # kernels/timeline.py record kind


@triton.jit
def first_owned_token(s, M, W):
    """The first global token rank s owns: comet.core.ownership.owned_range(M, W, s)[0] in the kernels'
    language (a disagreement sends partial sums to wrong combine rows, which tests/test_fused_kernels.py's
    tagged-row tests name)."""
    return (s * M + W - 1) // W


@triton.jit
def comm_program(
    pid, sm, num_chunks_ptr, max_chunks, tiles_per_col_ptr, col_blocks, steps, rank, world, M, D_OUT,
    slots, col_max, max_spin, l1_col_off, claim_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr,
    comb_peers_ptr, sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr,
    rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr, trace_ptr, trace_slots, stride_ym,
    BLOCK_N: tl.constexpr, TOPK_LOCAL: tl.constexpr, SEND_BLOCK: tl.constexpr, INSTRUMENT: tl.constexpr,
    PIPELINED: tl.constexpr, SIGNAL_SCOPE: tl.constexpr,
):
    """A communication program (pid: its slot in the timeline, sm: its SM there): it claims (column block,
    send chunk) items one at a time from the launch's claim counter (flag claim_off: item i = column block
    i // chunks, chunk i % chunks, so claims run in column-block-major order) until none is left. Each item
    waits until the column block's GEMM tiles are all counted (l1 column count == tiles_per_col), sums each
    send's rows weighted in fp32, stores the sum into the owner's combine buffer and signals the owner.
    Whoever claims an item computes the same sums in the same order, so the combine buffers do not depend on
    which program, or which launch, took it. PIPELINED: as `comm_pipelined`; else item by item (the plain
    order, bitwise the same). Returns the timeline records written (INSTRUMENT)."""
    n_rec = 0
    arange_n = tl.arange(0, BLOCK_N)
    num_chunks = tl.minimum(tl.load(num_chunks_ptr), max_chunks)
    tiles_per_col = tl.load(tiles_per_col_ptr)
    if PIPELINED:
        n_pipe = comm_pipelined(
            pid, sm, num_chunks, col_blocks, steps, tiles_per_col, rank, world, M, D_OUT, slots,
            col_max, max_spin, l1_col_off, claim_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr,
            comb_peers_ptr, sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr,
            send_row_end_ptr, rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr, trace_ptr,
            trace_slots, stride_ym, BLOCK_N, TOPK_LOCAL, SEND_BLOCK, INSTRUMENT, SIGNAL_SCOPE)
        if INSTRUMENT:
            n_rec = n_pipe
    else:
        arange_s = tl.arange(0, SEND_BLOCK)
        comb_elem = comb_ptr.dtype.element_ty
        ready_cols = tl.full((), 0, tl.int64)  # column blocks [0, ready_cols) known complete (column order)
        n_items = num_chunks * col_blocks
        i = claim_item(flags_ptr + claim_off)
        while i < n_items:
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
                nv = tl.where(mask_s, r1 - r0, 0).to(tl.int32)  # the sends' row counts (0: no send)
                top = tl.max(nv, axis=0)
                row_first = tl.load(rows_by_send_ptr + r0, mask=nv > 0, other=0)
                acc = tl.zeros((SEND_BLOCK, BLOCK_N), dtype=tl.float32)
                for j in tl.static_range(TOPK_LOCAL):  # a send's rows, in the Plan's (slot) order
                    valid = j < nv
                    row = row_first if j == 0 else _row_or_first(rows_by_send_ptr + r0 + j, valid, row_first)
                    w = tl.load(row_weight_ptr + row, mask=valid, other=0.0)
                    y = tl.load(y_ptr + row[:, None] * stride_ym + offs_n[None, :],
                                mask=(offs_n < tl.where(j < top, D_OUT, 0))[None, :], other=0.0,
                                cache_modifier=".cg")
                    acc += tl.where(valid[:, None], w[:, None] * y.to(tl.float32), 0.0)
                tok = tl.load(send_token_ptr + offs_s, mask=mask_s, other=0)
                slot = tl.load(send_slot_ptr + offs_s, mask=mask_s, other=0)
                dst = comb_base + ((tok - first_tok) * slots + slot)[:, None] * D_OUT + offs_n[None, :]
                tl.store(dst, acc.to(comb_elem), mask=mask_s[:, None] & mask_n[None, :])
            peer_flags = tl.load(sflag_peers_ptr + dest).to(tl.pointer_type(tl.int32))
            signal_add(peer_flags + comb_flag_off + rank * col_max + col, (end - start).to(tl.int32), SIGNAL_SCOPE)
            if INSTRUMENT:
                t_end = global_timer_ns()
                trace_write(trace_ptr, trace_slots, pid, n_rec, t_begin, t_ready, t_end, sm, _REC_REDUCE_SEND, i,
                            dest, end - start, col)
                n_rec += 1
            i = claim_item(flags_ptr + claim_off)
    return n_rec


@triton.jit
def _row_or_first(row_ptr, valid, row_first):
    """A send's j-th row where it has one, else its first row (or row 0 for no send).

    The y gather then needs no row mask (a row mask on it crashes Triton 3.6's layout pass on sm_90 when
    stride_ym is specialised as a multiple of 16); the entries it reads for invalid rows are dropped by the
    sum's where. They read the send's own first row, already on its way, not one row shared by every program
    (row 0: its few L2 lines took half to three quarters of all gathers where sends have one row each). Rows j
    that no send of the step has are not read at all: the gather's column mask is empty for j at or past the
    step's largest row count (one bound for the whole block; as a column bound, not a scalar and-ed onto the
    mask, which Triton's interpreter rejects). Both together, measured on one H200 (results/l1_comm): Qwen2-MoE's
    items on 132 programs 124 -> 94 us, unchanged on 4-32 programs; Mixtral and Phi-3.5 1-7 % faster."""
    row = tl.load(row_ptr, mask=valid, other=0)
    return tl.where(valid, row, row_first)


@triton.jit
def claim_item(claim_ptr):
    """The next unclaimed item of the launch (one atomic; relaxed: the item's data are ordered by its column
    block's acquire, not by the claim)."""
    return tl.atomic_add(claim_ptr, 1, sem="relaxed", scope="gpu")


@triton.jit
def _zero(ptr):
    """A new scalar 0 of the pointer's element type."""
    return tl.full((), 0, ptr.dtype.element_ty)


@triton.jit
def _zeros(ptr, N: tl.constexpr):
    return tl.zeros((N,), ptr.dtype.element_ty)


@triton.jit
def comm_pipelined(
    pid, sm, num_chunks, col_blocks, steps, tiles_per_col, rank, world, M, D_OUT, slots, col_max,
    max_spin, l1_col_off, claim_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr, comb_peers_ptr,
    sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr,
    rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr, trace_ptr, trace_slots, stride_ym,
    BLOCK_N: tl.constexpr, TOPK_LOCAL: tl.constexpr, SEND_BLOCK: tl.constexpr, INSTRUMENT: tl.constexpr,
    SIGNAL_SCOPE: tl.constexpr,
):
    """The communication program's work as a software pipeline over units (item, step) (CommConfig.pipelined).

    Unit w of this program: step w % steps of the (w // steps)-th item it claimed (sends start + step *
    SEND_BLOCK .. of the item's chunk; steps = cdiv(Policy.l1_chunk_rows, SEND_BLOCK) bounds every chunk, so trailing
    units of a short chunk are empty and masked). Items are claimed one ahead (the claim's latency is not on
    the path of the item's first loads) and the loop runs until its last claimed unit has left stage 0.
    Iteration v runs five stages, one unit each, so the dependent loads of one unit's chain are issued an
    iteration apart and overlap other units' loads:
        stage 4, unit v:     the item (claimed at its first step), chunk start / end
        stage 3, unit v - 1: destination, send_row_start / end, token, slot
        stage 2, unit v - 2: rows_by_send (all TOPK_LOCAL rows), the owner's buffer and flags pointers
        stage 1, unit v - 3: wait for the column block (when new), row weights and y rows (prefetched one
                             iteration)
        stage 0, unit v - 4: fp32 weighted sum (same rows, order and ops as the item-by-item loop: bitwise
                             equal), remote store; after the item's last step, signal the owner with the
                             item's send count.
    INSTRUMENT: one record per item, begin = ready = its first unit's stage 0, end = after its last unit's.
    Machine code (Triton 3.6, sm_90): ptxas copies the loop-carried registers at the loop's back edge, so
    each iteration waits for the loads it issued: a unit costs about one memory latency (all its stages'
    loads in flight together) where the item-by-item loop pays ~3 dependent latencies per step and ~3 more
    per item; a larger SEND_BLOCK moves more data per latency.
    """
    arange_s = tl.arange(0, SEND_BLOCK)
    arange_n = tl.arange(0, BLOCK_N)
    comb_elem = comb_ptr.dtype.element_ty
    nch = tl.maximum(num_chunks, 1).to(tl.int32)
    n_items = (num_chunks * col_blocks).to(tl.int32)
    claim_ptr = flags_ptr + claim_off
    n_rec = 0
    # loop-carried state, named by the stage that consumes it next. Every initial value is a distinct zero:
    # the compiler keeps a variable loop-carried only if its value object changes in the body, which a
    # shift `a = b` of two variables bound to one shared zero would not do (they would fold to the constant).
    # Per-send vectors are carried compactly: a send's row count nv (int32; its rows' validity is j < nv,
    # as r0 + j < r1) and its combine row (tok - first_tok) * slots + slot (int32), each computed one stage
    # after its loads arrived.
    ready_cols = tl.full((), 0, tl.int32)
    nxt = claim_item(claim_ptr).to(tl.int32)  # the item this program takes next
    # whether a stage's unit is work (a claimed item's), passed down with it
    ok3 = tl.full((), 0, tl.int1)
    ok2 = tl.full((), 0, tl.int1)
    ok1 = tl.full((), 0, tl.int1)
    ok0 = tl.full((), 0, tl.int1)
    # a unit's step, column block and item, decoded once (stage 4) and passed down with it; k3 starts at the
    # last step so that the first unit is an item's first
    k3 = tl.full((), 0, tl.int32) + (steps - 1)
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
    live = tl.full((), 1, tl.int1)
    while live:
        # ---- stage 4 (unit v): its item (a new claim at an item's first step), the item's chunk bounds
        k4n = (k3 + 1) % steps
        item4n = item3
        if k4n == 0:
            item4n = nxt
            if nxt < n_items:  # once none is left, claim no more
                nxt = claim_item(claim_ptr).to(tl.int32)
        ok4 = item4n < n_items
        item4n = tl.minimum(item4n, n_items)  # (beyond the last item: masked, and no index overflows)
        col4n = item4n // nch
        ch4 = item4n - col4n * nch
        st4n = tl.load(chunk_start_ptr + ch4, mask=ok4, other=0)
        en4n = tl.load(chunk_end_ptr + ch4, mask=ok4, other=0)
        # ---- stage 3 (unit v - 1): destination, the step's sends' row ranges, tokens and slots
        offs_s3 = st3 + k3 * SEND_BLOCK + arange_s
        mask_s3 = offs_s3 < tl.where(ok3, en3, -1)  # offs_s3 >= 0
        d3n = tl.load(send_dest_ptr + st3, mask=ok3, other=0)  # one destination per chunk
        r0_3n = tl.load(send_row_start_ptr + offs_s3, mask=mask_s3, other=0)
        r1_3n = tl.load(send_row_end_ptr + offs_s3, mask=mask_s3, other=0)
        tok3n = tl.load(send_token_ptr + offs_s3, mask=mask_s3, other=0)
        slot3n = tl.load(send_slot_ptr + offs_s3, mask=mask_s3, other=0)
        # ---- stage 2 (unit v - 2): the sends' rows (all issued before any is used), the owner's pointers
        offs_s2 = st2 + k2 * SEND_BLOCK + arange_s
        mask_s2 = offs_s2 < tl.where(ok2, en2, -1)
        nv2n = tl.where(mask_s2, r1_2 - r0_2, 0).to(tl.int32)
        row_first2 = tl.load(rows_by_send_ptr + r0_2, mask=nv2n > 0, other=0)
        rows2n = (row_first2,)
        for j in tl.static_range(1, TOPK_LOCAL):
            rows2n = rows2n + (_row_or_first(rows_by_send_ptr + r0_2 + j, j < nv2n, row_first2),)
        cb2n = tl.load(comb_peers_ptr + d2, mask=ok2, other=0)
        pf2n = tl.load(sflag_peers_ptr + d2, mask=ok2, other=0)
        first_tok2 = first_owned_token(d2, M, world)
        crow2n = ((tok2 - first_tok2) * slots + slot2).to(tl.int32)  # < tokens per owner * slots
        # ---- stage 1 (unit v - 3): the column block's GEMM tiles are done; weights and y rows (used next
        # iteration)
        if ok1 & (col1 >= ready_cols):
            wait_flag(flags_ptr + l1_col_off + col1, tiles_per_col, max_spin, status_ptr, _WAIT_L1_COLUMN,
                      col1, rank, False, "gpu")
            ready_cols = col1 + 1
        offs_n1 = col1 * BLOCK_N + arange_n
        top1 = tl.max(nv1, axis=0)
        w1n = ()
        y1n = ()
        for j in tl.static_range(TOPK_LOCAL):
            w1n = w1n + (tl.load(row_weight_ptr + rows1[j], mask=j < nv1, other=0.0),)
            # as item by item: rows j past every send's count are not read; other invalid entries read the
            # send's first row (dropped in stage 0)
            y1n = y1n + (tl.load(y_ptr + rows1[j][:, None] * stride_ym + offs_n1[None, :],
                                 mask=(offs_n1 < tl.where(j < top1, D_OUT, 0))[None, :], other=0.0,
                                 cache_modifier=".cg"),)
        # ---- stage 0 (unit v - 4): weighted sum, remote store, signal
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
            signal_add(peer_flags + comb_flag_off + rank * col_max + col0, sent.to(tl.int32), SIGNAL_SCOPE)
            if INSTRUMENT:
                trace_write(trace_ptr, trace_slots, pid, n_rec, t_item, t_item, global_timer_ns(), sm,
                            _REC_REDUCE_SEND, item0, d0, en0 - st0, col0)
                n_rec += 1
        # ---- advance the pipeline
        live = ok4 | ok3 | ok2 | ok1  # the next iteration's stages 3..0 (stage 4 stays empty once ok4 is not)
        ok0 = ok1
        ok1 = ok2
        ok2 = ok3
        ok3 = ok4
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
