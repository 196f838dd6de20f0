"""Fused layer1 of one rank: grouped GEMM (K/TP -> N) + top-k weighted reduction + combine (remote stores
into the owners' combine buffers). The owners then sum what they received (kernels/combine.py).

Shapes (docs/SHAPES.md): M tokens, N hidden, K/TP rows of the layer1 weight, E local experts, R rows of the
rank's shared tensor, T tiles, S sends (one (token, owner) partial sum each), C send chunks, W ranks, N1
layer1 column blocks (BLOCK_N = Policy.block_n1 columns each), L combine slots per token.

Thread-block specialisation (docs/PAPER_NOTES.md, mechanism 3), one launch of num_gemm + num_comm programs
(num_comm = Policy.nc_layer1):
    GEMM programs [0, num_gemm): the Plan's column-block-major tiles t = pid, pid + num_gemm, ... of
        y_RN = h_RK @ w1_EKN[expert]; after each tile, count[col] += 1 (release).
    communication programs [num_gemm, num_gemm + num_comm): work item i = (column block i // C, send chunk
        i % C), in column-block-major order; each program claims the next unclaimed item (an atomic counter)
        until none is left. It waits until
        count[col] == l1_tiles_per_col, then for each send of the chunk sums its rows
        rows_by_send_R[send_row_start_S:send_row_end_S] weighted by row_weight_R in fp32 and stores the sum
        into slot send_slot_S of the owner's combine buffer (a remote store through the peer table), then
        adds the chunk's send count to the owner's combine flag [this rank, col] (release, system scope). By
        default (CommConfig.pipelined) the same work runs as a software pipeline over (item, step) units
        (kernels/fused_layer1_comm.py), bitwise equal; the item-by-item loop here is a benchmark variant.
GEMM programs have the low ids so that Triton's interpreter (programs in id order) finishes them before the
communication programs wait. The last program to finish resets the column counts and the claim counter.
INSTRUMENT (constexpr, off unless `timeline=` is given; GPU only): every program records each tile and work item
it ran (SM, %globaltimer start / ready / end) into the launch's buffer (kernels/timeline.py).

Determinism: every partial sum is computed by exactly one program in a fixed row order, and the owner sums
slots in a fixed order, with no floating-point atomics: results are bitwise reproducible run to run for a
given routing, policy and options, whatever nc_layer1 or the number of GEMM programs (they decide who
computes, not how). They are not bitwise equal to comet.core.reference (different summation order).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.jit import jit
from comet.core.policy import check_kernel_tile
from kernels import fused_layer1_gluon
from kernels.fused_layer1_comm import comm_program, first_owned_token  # noqa: F401 (first_owned_token: tests)
from kernels.grouped_gemm import gluon_unsupported, sm_count
from kernels.options import IMPLS, CommConfig, TileConfig, default_comm, default_tile
from kernels.signals import finish_program, signal_add
from kernels.tile_matmul import b_tile_ptrs, tile_at, tile_matmul
from kernels.timeline import REC_GEMM1, global_timer_ns, require_gpu_kernel, sm_id, trace_write
from kernels.tma import descriptor

_REC_GEMM1 = tl.constexpr(REC_GEMM1)  # kernels/timeline.py record kinds


# ------------------------------------------------------------------------------------------- kernels
@jit(specialise=("a_ptr", "b_ptr", "y_ptr", "comb_ptr", "D_IN", "D_OUT", "stride_am", "stride_be", "stride_bk",
                  "stride_bn", "stride_ym"))
def _fused_layer1_kernel(
    # pointers
    a_ptr, a_desc, b_ptr, b_desc, y_ptr, comb_ptr, flags_ptr, status_ptr, comb_peers_ptr, sflag_peers_ptr,
    tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, num_tiles_ptr, tiles_per_col_ptr,
    send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr,
    row_weight_ptr, chunk_start_ptr, chunk_end_ptr, num_chunks_ptr,
    # sizes
    rank, world, M, max_tiles, max_chunks, num_gemm, num_comm, D_IN, D_OUT, col_blocks, slots, col_max,
    max_spin, l1_col_off, claim_off, done_off, comb_flag_off, steps,
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
            expert, row_start, row_end, col, offs_m, mask_m = tile_at(t, tile_expert_ptr, tile_row_start_ptr,
                                                                      tile_row_end_ptr, tile_col_ptr, arange_m)
            rows = tl.where(mask_m, offs_m, row_start)
            a_ptrs = a_ptr + (rows[:, None] * stride_am + offs_k[None, :])
            offs_n, b_ptrs = b_tile_ptrs(b_ptr, expert, col, offs_k, arange_n, D_OUT, stride_be, stride_bk,
                                         stride_bn, BLOCK_N)
            acc = tile_matmul(a_ptrs, 1, a_desc, row_start.to(tl.int32), b_ptrs, stride_bk, stride_bn, b_desc,
                              expert.to(tl.int32) * D_IN, (col * BLOCK_N).to(tl.int32), 0, D_IN,
                              tl.cdiv(D_IN, BLOCK_K), 0, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, A_TMA, B_TMA, "")
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
        n_rec = comm_program(
            pid, sm, num_chunks_ptr, max_chunks, tiles_per_col_ptr, col_blocks, steps,
            rank, world, M, D_OUT, slots, col_max, max_spin, l1_col_off, claim_off, comb_flag_off, flags_ptr,
            status_ptr, y_ptr,
            comb_ptr, comb_peers_ptr, sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr,
            send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr,
            trace_ptr, trace_slots, stride_ym, BLOCK_N, TOPK_LOCAL, SEND_BLOCK, INSTRUMENT, PIPELINED, "sys")
        if INSTRUMENT:
            tl.store(trace_count_ptr + pid, n_rec)

    # --- the last program to finish resets the column counts and the claims for the next call
    if finish_program(flags_ptr + done_off, num_gemm + num_comm):
        for c in range(0, col_blocks):
            tl.atomic_xchg(flags_ptr + l1_col_off + c, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + claim_off, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


# ------------------------------------------------------------------------------------------ wrappers
def _gluon_unsupported(h, w1_EKN, y, pol, tile, a_tma, b_tma, timeline, impl: str) -> str | None:
    """Why fused_layer1 runs the one-launch tl kernel (None: it runs kernels/fused_layer1_gluon.py)."""
    if impl not in IMPLS:
        raise ValueError(f"fused_layer1 impl={impl!r}: use one of {', '.join(IMPLS)}")
    if impl == "triton":
        return "impl='triton'"
    given = [name for name, v in (("tile", tile), ("a_tma", a_tma), ("b_tma", b_tma), ("timeline", timeline))
             if v is not None]
    if given:
        return f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of the tl kernel"
    return gluon_unsupported(h, w1_EKN, y, "none", False, pol.block_m, pol.block_n1)


def fused_layer1(ws, plan, rank: int, w1_EKN: torch.Tensor, *, h_RK: torch.Tensor | None = None,
                 num_programs: int | None = None, tile: TileConfig | None = None, comm: CommConfig | None = None,
                 a_tma: bool | None = None, b_tma: bool | None = None, max_spin: int | None = None,
                 timeline=None, impl: str = "auto") -> torch.Tensor:
    """Layer1 of `rank`: GEMM over the Plan's l1 tiles, top-k reduce, partial sums into the owners' combine
    buffers (slot send_slot_S), signalled per (this rank, column block) on the owner.

    w1_EKN: (E_local, K/TP, N) this rank's shard. h_RK: layer0's output (default ws.buffers(rank).h_RK).
    tile / comm: the GEMM programs' tile loop and the communication programs' reduce step and loop form
    (kernels.options.TileConfig / CommConfig: send_block, pipelined; default: kernels.options.default_tile /
    default_comm of the device). a_tma / b_tma: A / B through TMA (default: on a GPU where the rows are
    16-byte aligned).
    num_programs: GEMM programs (default SMs - nc_layer1). Returns the intermediate y_RN (R_max, N), for
    tests. The owners' `kernels.combine.combine_reduce` must run after every rank's layer1 was launched. No
    host sync.
    timeline: a kernels.timeline.TimelineRecorder: run the instrumented build and record every tile and
    (column block, send chunk) item (GPU only).
    impl: "triton", the one-launch tl kernel of this module; "gluon", the Gluon GEMM and a communication
    kernel beside it (kernels/fused_layer1_gluon.py; Hopper, bf16/fp16), or a ValueError that says why it
    cannot run the call; "auto", "gluon" where it can run and none of the tl kernel's own options (tile, a_tma,
    b_tma, timeline) is given, else "triton". Both write the same combine buffers for the same y.
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
    tile_given = tile
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
    why = _gluon_unsupported(h, w1_EKN, y, pol, tile_given, a_tma, b_tma, timeline, impl)
    if impl == "gluon" and why is not None:
        raise ValueError(f"fused_layer1 impl='gluon' cannot run this call: {why}; use impl='auto' or 'triton'")
    if why is None:
        fused_layer1_gluon.launch(ws, plan, rank, h, w1_EKN, y, num_programs=num_programs, comm=comm,
                                  max_spin=ws.max_spin if max_spin is None else max_spin)
        return y
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
            device=dev, row_bytes=N * buf.combine_MLN.element_size(), hidden_N=N, block_n=pol.block_n1,
            combine_elem_bytes=buf.combine_MLN.element_size(),
            tile_rows=rp.l1_tile_row_end_T - rp.l1_tile_row_start_T)
        trace = (lt.records, lt.counts, lt.slots)
    _fused_layer1_kernel[(num_programs + nc,)](
        h, a_desc, w1_EKN, b_desc, y, buf.combine_MLN, buf.flags_F, buf.status, buf.combine_ptrs_W,
        buf.sflag_ptrs_W,
        rp.l1_tile_expert_T, rp.l1_tile_row_start_T, rp.l1_tile_row_end_T, rp.l1_tile_col_T, rp.num_l1_tiles,
        rp.l1_tiles_per_col,
        rp.send_token_S, rp.send_dest_S, rp.send_slot_S, rp.send_row_start_S, rp.send_row_end_S,
        rp.rows_by_send_R, rp.row_weight_R, rp.l1_chunk_start_C, rp.l1_chunk_end_C, rp.num_l1_chunks,
        rank, plan.world_size, plan.num_tokens, rp.l1_tile_expert_T.numel(), rp.l1_chunk_start_C.numel(),
        num_programs, nc, K, N, col_blocks, ws.sizes.slots, lay.col_max,
        ws.max_spin if max_spin is None else max_spin, lay.l1_col, lay.l1_claim, lay.done_l1, lay.combine,
        triton.cdiv(pol.l1_chunk_rows, send_block), *trace,
        h.stride(0), w1_EKN.stride(0), w1_EKN.stride(1), w1_EKN.stride(2), y.stride(0),
        BLOCK_M=pol.block_m, BLOCK_N=pol.block_n1, BLOCK_K=tile.block_k, EVEN_K=K % tile.block_k == 0,
        A_TMA=a_tma, B_TMA=b_tma, TOPK_LOCAL=topk_local, SEND_BLOCK=send_block, INSTRUMENT=timeline is not None,
        PIPELINED=comm.pipelined, num_warps=tile.num_warps, num_stages=tile.num_stages)
    return y
