"""The fused layer0 kernel's communication programs ("blocks"): `pull_chunks`, which the one-launch kernel
(kernels/fused_layer0.py) and the pull kernel of its Gluon form (kernels/fused_layer0_gluon.py) both run, and
`pull_sends`, the Gluon form's pull into shared-row order (CommConfig.pull_to_rows)."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.signals import signal_add
from kernels.timeline import REC_PULL, global_timer_ns, trace_write

_REC_PULL = tl.constexpr(REC_PULL)  # kernels/timeline.py record kind


@triton.jit
def pull_chunks(pid, num_comm, recv_ptr, recv_peers_ptr, flags_ptr, recv_token_ptr, chunk_src_ptr, chunk_start_ptr,
                chunk_end_ptr, num_chunks_ptr, max_chunks, D_IN, arrive_off, trace_ptr, trace_slots, sm, stride_rm,
                COMM_ROWS: tl.constexpr, COMM_COLS: tl.constexpr, INSTRUMENT: tl.constexpr):
    """Communication program pid of num_comm: the Plan's chunks i = pid, pid + num_comm, ... (one source rank
    each), its rows pulled from the source's receive buffer (peer pointer) into this rank's, COMM_ROWS x
    COMM_COLS elements a step, then flag[source] += 1 (release). Returns the timeline records written
    (INSTRUMENT)."""
    n_rec = 0  # this program's items so far: its next record's slot (INSTRUMENT)
    elem = recv_ptr.dtype.element_ty
    num_chunks = tl.minimum(tl.load(num_chunks_ptr), max_chunks)
    arange_u = tl.arange(0, COMM_ROWS)
    arange_c = tl.arange(0, COMM_COLS)
    for i in range(pid, num_chunks, num_comm):
        if INSTRUMENT:
            t_begin = global_timer_ns()
        src = tl.load(chunk_src_ptr + i)
        start = tl.load(chunk_start_ptr + i)
        end = tl.load(chunk_end_ptr + i)
        # peers' buffers are 16-byte aligned (workspace allocations): say so, or the loads go out scalar
        peer = tl.multiple_of(tl.load(recv_peers_ptr + src).to(tl.pointer_type(elem)), 16)
        for u0 in range(start, end, COMM_ROWS):
            offs_u = u0 + arange_u
            mask_u = offs_u < end
            tok = tl.load(recv_token_ptr + offs_u, mask=mask_u, other=0)
            for c0 in range(0, D_IN, COMM_COLS):
                offs_c = c0 + arange_c
                mask = mask_u[:, None] & (offs_c < D_IN)[None, :]
                off = tok[:, None] * stride_rm + offs_c[None, :]
                v = tl.load(peer + off, mask=mask, cache_modifier=".cg")
                tl.store(recv_ptr + off, v, mask=mask)
        signal_add(flags_ptr + arrive_off + src, 1, "gpu")
        if INSTRUMENT:
            t_end = global_timer_ns()
            trace_write(trace_ptr, trace_slots, pid, n_rec, t_begin, t_begin, t_end, sm, _REC_PULL, i, src,
                        end - start, 0)
            n_rec += 1
    return n_rec


@triton.jit
def pull_sends(pid, num_comm, y_ptr, stride_ym, recv_peers_ptr, stride_rm, flags_ptr, arrive_off, rank,
               send_token_ptr, send_dest_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr, chunk_start_ptr,
               chunk_end_ptr, num_chunks_ptr, max_chunks, D_IN, COMM_ROWS: tl.constexpr, COMM_COLS: tl.constexpr,
               TOPK_LOCAL: tl.constexpr):
    """Communication program pid of num_comm, pulling into shared-row order: the Plan's send chunks i = pid,
    pid + num_comm, ... (layer1's (token, owner) entries, one owner per chunk) whose owner is another rank; each
    token's row is read from the owner's receive buffer and written to every shared row of the token
    (rows_by_send_R[send_row_start:send_row_end], at most TOPK_LOCAL; read again for each further row),
    COMM_ROWS tokens x COMM_COLS columns a step; then flag[owner] += 1 (release). This rank's own tokens are
    not this program's (the caller copies them before)."""
    elem = y_ptr.dtype.element_ty
    num_chunks = tl.minimum(tl.load(num_chunks_ptr), max_chunks)
    arange_u = tl.arange(0, COMM_ROWS)
    arange_c = tl.arange(0, COMM_COLS)
    for i in range(pid, num_chunks, num_comm):
        start = tl.load(chunk_start_ptr + i)
        end = tl.load(chunk_end_ptr + i)
        src = tl.load(send_dest_ptr + start)
        if src != rank:
            # peers' buffers are 16-byte aligned (workspace allocations): say so, or the loads go out scalar
            peer = tl.multiple_of(tl.load(recv_peers_ptr + src).to(tl.pointer_type(elem)), 16)
            for u0 in range(start, end, COMM_ROWS):
                offs_u = u0 + arange_u
                mask_u = offs_u < end
                tok = tl.load(send_token_ptr + offs_u, mask=mask_u, other=0)
                r0 = tl.load(send_row_start_ptr + offs_u, mask=mask_u, other=0)
                r1 = tl.load(send_row_end_ptr + offs_u, mask=mask_u, other=0)
                # the j-th row of each token: a token's first row is every token's, later ones few tokens'
                # (masked lanes move nothing)
                for j in tl.static_range(TOPK_LOCAL):
                    has = mask_u & (r0 + j < r1)
                    row = tl.load(rows_by_send_ptr + r0 + j, mask=has, other=0)
                    for c0 in range(0, D_IN, COMM_COLS):
                        offs_c = c0 + arange_c
                        mask = has[:, None] & (offs_c < D_IN)[None, :]
                        v = tl.load(peer + tok[:, None] * stride_rm + offs_c[None, :], mask=mask, cache_modifier=".cg")
                        tl.store(y_ptr + row[:, None] * stride_ym + offs_c[None, :], v, mask=mask)
            signal_add(flags_ptr + arrive_off + src, 1, "gpu")
