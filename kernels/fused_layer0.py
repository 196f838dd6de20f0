"""Fused layer0 of one rank: dispatch (token rows from their owners) + grouped GEMM (N -> K/TP) + activation.

Shapes (docs/SHAPES.md): M tokens, N hidden, K' = K/TP (gelu) or 2K/TP (swiglu: gate | up) weight columns,
E local experts, R rows of the rank's shared tensor, T tiles, C communication chunks, U received token rows,
W ranks.

Three variants (`Policy.layer0_comm`), one kernel (`MODE`):
    "blocks"       (MODE 0) programs [0, num_comm) are communication programs (num_comm =
                   Policy.nc_layer0): chunk i of the Plan (one source rank, rows recv_token_U[start:end])
                   belongs to program i % num_comm, which pulls those rows from the source's receive buffer
                   (peer pointer) into this rank's receive buffer (same token-id rows), CommConfig.pull_rows
                   x pull_cols elements a step, and then adds 1 to flag[source] (release). The next num_gemm
                   programs run the Plan's layer0 tiles; a tile first waits until flag[s] == l0_chunks_per_src_W[s] for
                   every source s in l0_tile_src_mask_T (a bit mask of the ranks owning its rows), then
                   gathers its A rows from the local receive buffer. The last program to finish resets the
                   flags to 0, so the next call needs no host-side clearing.
    "direct"       (MODE 1) no communication programs: each tile gathers its A rows straight from the
                   owners' receive buffers through the peer-pointer table (row_src_R picks the peer).
    "copy-engine"  (MODE 2) as the released Comet code (docs/PAPER_NOTES.md): a side stream copies each
                   source rank's whole shard (the rows it owns, all of them) with `copy_` and then writes
                   flag[s] = epoch; tiles wait for flag[s] == epoch (epoch-valued: never reset). The GEMM
                   programs do not fill the GPU (SMs - Policy.copy_engine_reserved_sms) so that a copy or
                   flag write that needs an SM can run.
Program order is chosen so that Triton's interpreter, which runs programs one after another in id order,
completes every producer before its consumers: communication programs have the low ids.

INSTRUMENT (constexpr, off unless `timeline=` is given; GPU only): every program records each chunk and tile
it ran (SM, %globaltimer start / ready / end) into the launch's buffer (kernels/timeline.py).

Every program of a launch must be resident at once on the GPU (programs wait on each other): the grid is
at most the SM count. Waits are bounded (kernels/signals.py); a timeout is recorded in the rank's status
buffer and raised by `Workspace.check()`.
"""

from __future__ import annotations

import contextlib

import torch
import triton.language as tl

from comet.core.jit import jit
from comet.core.ownership import owned_range
from comet.core.policy import check_kernel_tile
from kernels import fused_layer0_gluon
from kernels.activations import ACTIVATIONS
from kernels.fused_layer0_comm import pull_chunks
from kernels.grouped_gemm import gluon_unsupported, sm_count
from kernels.options import IMPLS, CommConfig, TileConfig, default_comm, default_tile
from kernels.signals import finish_program, wait_flag
from kernels.tile_matmul import b_tile_ptrs, tile_at, tile_matmul
from kernels.timeline import (
    REC_GEMM0,
    REC_GEMM0_DIRECT,
    global_timer_ns,
    require_gpu_kernel,
    sm_id,
    tile_remote_rows,
    trace_write,
)
from kernels.tma import descriptor

VARIANTS = {"blocks": 0, "direct": 1, "copy-engine": 2}

_WAIT_L0_ARRIVAL = tl.constexpr(1)  # kernels.signals.WAIT_L0_ARRIVAL
_WAIT_L0_COPY = tl.constexpr(2)  # kernels.signals.WAIT_L0_COPY
_REC_GEMM0 = tl.constexpr(REC_GEMM0)  # kernels/timeline.py record kinds
_REC_GEMM0_DIRECT = tl.constexpr(REC_GEMM0_DIRECT)


# ------------------------------------------------------------------------------------------- kernels
@jit(specialise=("recv_ptr", "b_ptr", "c_ptr", "D_IN", "D_OUT", "up_col", "stride_rm", "stride_be", "stride_bk",
                  "stride_bn", "stride_cm"))
def _fused_layer0_kernel(
    # pointers: this rank's receive buffer, the peer table of receive buffers, weights, output, flags
    recv_ptr, recv_peers_ptr, b_ptr, b_desc, c_ptr, flags_ptr, status_ptr,
    row_token_ptr, row_src_ptr,
    tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, tile_mask_ptr, num_tiles_ptr,
    recv_token_ptr, chunk_src_ptr, chunk_start_ptr, chunk_end_ptr, num_chunks_ptr, chunks_per_src_ptr,
    # sizes
    rank, world, max_tiles, max_chunks, num_comm, num_gemm, D_IN, D_OUT, up_col, epoch, max_spin,
    arrive_off, copy_off, done_off,
    # timeline records (kernels/timeline.py; None unless INSTRUMENT)
    trace_ptr, trace_count_ptr, trace_slots,
    # strides
    stride_rm, stride_be, stride_bk, stride_bn, stride_cm,
    # meta
    MODE: tl.constexpr, ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, B_TMA: tl.constexpr,
    COMM_ROWS: tl.constexpr, COMM_COLS: tl.constexpr, INSTRUMENT: tl.constexpr = False,
):
    pid = tl.program_id(0)
    elem = recv_ptr.dtype.element_ty
    if INSTRUMENT:
        sm = sm_id()
    else:
        sm = pid  # unused
    if pid < num_comm:  # num_comm is 0 unless MODE 0
        # --- communication program: pull whole chunks (one source each) into this rank's buffer
        n_rec = pull_chunks(pid, num_comm, recv_ptr, recv_peers_ptr, flags_ptr, recv_token_ptr, chunk_src_ptr,
                            chunk_start_ptr, chunk_end_ptr, num_chunks_ptr, max_chunks, D_IN, arrive_off, trace_ptr,
                            trace_slots, sm, stride_rm, COMM_ROWS, COMM_COLS, INSTRUMENT)
        if INSTRUMENT:
            tl.store(trace_count_ptr + pid, n_rec)
    else:
        # --- GEMM program: the Plan's layer0 tiles t = g, g + num_gemm, ...
        g = pid - num_comm
        if INSTRUMENT:
            n_rec = 0
        num_tiles = tl.minimum(tl.load(num_tiles_ptr), max_tiles)
        arange_m = tl.arange(0, BLOCK_M)
        arange_n = tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        ready = tl.full((), 1, tl.int64) << rank  # sources known complete; own rows are in place
        for t in range(g, num_tiles, num_gemm):
            if INSTRUMENT:
                t_begin = global_timer_ns()
            expert, row_start, row_end, col, offs_m, mask_m = tile_at(t, tile_expert_ptr, tile_row_start_ptr,
                                                                      tile_row_end_ptr, tile_col_ptr, arange_m)
            # rows past row_end read the tile's first row (valid), their results are never stored
            rows = tl.where(mask_m, offs_m, row_start)
            tok = tl.load(row_token_ptr + rows)

            # --- the tile waits for the flags of the source ranks its rows come from
            if MODE != 1:
                need = tl.load(tile_mask_ptr + t) & ~ready
                if need != 0:
                    for s in range(0, world):
                        if ((need >> s) & 1) != 0:
                            if MODE == 0:
                                wait_flag(flags_ptr + arrive_off + s, tl.load(chunks_per_src_ptr + s), max_spin,
                                          status_ptr, _WAIT_L0_ARRIVAL, s, rank, False, "gpu")
                            else:
                                wait_flag(flags_ptr + copy_off + s, epoch, max_spin, status_ptr, _WAIT_L0_COPY,
                                          s, rank, True, "gpu")
                    ready = ready | need
            if INSTRUMENT:
                t_ready = global_timer_ns()

            # --- A rows: the local receive buffer (blocks, copy-engine) or the owners' (direct)
            if MODE == 1:
                src = tl.load(row_src_ptr + rows)
                base = tl.multiple_of(tl.load(recv_peers_ptr + src).to(tl.pointer_type(elem)), 16)
                a_ptrs = base[:, None] + (tok[:, None] * stride_rm + offs_k[None, :])
            else:
                a_ptrs = recv_ptr + (tok[:, None] * stride_rm + offs_k[None, :])

            offs_n, b_ptrs = b_tile_ptrs(b_ptr, expert, col, offs_k, arange_n, D_OUT, stride_be, stride_bk,
                                         stride_bn, BLOCK_N)
            acc = tile_matmul(a_ptrs, 1, b_desc, 0, b_ptrs, stride_bk, stride_bn, b_desc,
                              expert.to(tl.int32) * D_IN, (col * BLOCK_N).to(tl.int32), up_col, D_IN,
                              tl.cdiv(D_IN, BLOCK_K), ACTIVATION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, False, B_TMA,
                              ".cg")
            c_ptrs = c_ptr + (offs_m[:, None] * stride_cm + offs_n[None, :])
            mask_c = mask_m[:, None] & (offs_n < D_OUT)[None, :]
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)
            if INSTRUMENT:
                tl.debug_barrier()  # every thread's stores issued: the tile is done
                t_end = global_timer_ns()
                # the tile's rows come from the Plan at decoding (fewer values live across the K loop)
                trace_write(trace_ptr, trace_slots, pid, n_rec, t_begin, t_ready, t_end, sm,
                            _REC_GEMM0_DIRECT if MODE == 1 else _REC_GEMM0, t, -1, 0, col)
                n_rec += 1
        if INSTRUMENT:
            tl.store(trace_count_ptr + pid, n_rec)

    # --- blocks: the last program to finish resets the arrival flags for the next call
    if MODE == 0:
        if finish_program(flags_ptr + done_off, num_comm + num_gemm):
            for s in range(0, world):
                tl.atomic_xchg(flags_ptr + arrive_off + s, 0, sem="relaxed", scope="gpu")
            tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


# ------------------------------------------------------------------------------------------ wrappers
def write_flag(flags_F: torch.Tensor, index: int, value: int) -> None:
    """flags_F[index] = value on the current stream, without an SM where the driver allows it
    (cuStreamWriteValue32 through torch's _SymmetricMemory.stream_write_value32; fill_ otherwise)."""
    if flags_F.is_cuda and not torch.cuda.is_current_stream_capturing():
        try:
            from torch._C._distributed_c10d import _SymmetricMemory

            _SymmetricMemory.stream_write_value32(flags_F.view(torch.uint32), index, value)
            return
        except (ImportError, AttributeError, RuntimeError, TypeError):
            pass
    flags_F[index].fill_(value)


def fused_layer0(ws, plan, rank: int, w0_ENK: torch.Tensor, *, variant: str | None = None,
                 activation: str | None = None, num_programs: int | None = None, tile: TileConfig | None = None,
                 comm: CommConfig | None = None, b_tma: bool | None = None, max_spin: int | None = None,
                 out_RK: torch.Tensor | None = None, timeline=None, impl: str = "auto") -> torch.Tensor:
    """Layer0 of `rank` in workspace `ws`: out_RK[r] = act(x[row_token_R[r]] @ w0_ENK[expert(r)]).

    The token rows must already be in the owners' receive buffers (`ws.buffers(s).recv_MN`, rows indexed by
    global token id; `kernels.moe.stage_tokens` puts them there) and, on several GPUs, a barrier must have
    been passed since. w0_ENK: (E_local, N, K') this rank's weight shard, K' = K/TP (gelu) or 2K/TP
    (swiglu). variant: "blocks" | "direct" | "copy-engine" (default plan.policy.layer0_comm). Returns
    ws.buffers(rank).h_RK[:R_max] (or out_RK), (R_max, K/TP) in the tokens' dtype; rows past the plan's
    num_rows are not written. num_programs: GEMM programs (default: SMs - nc for blocks, SMs for direct,
    SMs - Policy.copy_engine_reserved_sms for copy-engine). tile / comm: the GEMM programs' tile loop and the
    communication programs' pull step (kernels.options; default: kernels.options.default_tile / default_comm
    of the device: fixed, no autotuning, since the kernel's flag and peer side effects would repeat with
    every trial launch of an autotuner).
    No host sync; the call is asynchronous on the current stream (copy-engine: plus the rank's side stream).
    timeline: a kernels.timeline.TimelineRecorder: run the instrumented build and record every chunk and tile
    (GPU only; the copy-engine variant's side-stream copies are not kernels and are not recorded).
    impl: "triton", the one-launch tl kernel of this module; "gluon" ("blocks" only), the pull programs and the
    Gluon GEMM as two launches side by side (kernels/fused_layer0_gluon.py; Hopper, bf16/fp16), or a
    ValueError that says why it cannot run the call; "auto", "gluon" where it can run and none of the tl
    kernel's own options (tile, b_tma, timeline) is given, else "triton".
    """
    pol = plan.policy
    variant = variant or pol.layer0_comm
    if variant not in VARIANTS:
        raise ValueError(f"unknown layer0 variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    act = activation or plan.model.activation
    if act not in ("gelu", "swiglu", "none"):
        raise ValueError(f"activation {act!r} not supported; use gelu, swiglu or none")
    ws.check_plan(plan)
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    recv = buf.recv_MN
    dev = recv.device
    N, W = plan.model.hidden_N, plan.world_size
    k_out = plan.ffn_local
    k_cols = k_out * (2 if act == "swiglu" else 1)
    E_loc = plan.experts_per_rank
    if w0_ENK.shape != (E_loc, N, k_cols) or w0_ENK.dtype != recv.dtype or w0_ENK.device != dev \
            or not w0_ENK.is_contiguous():
        raise ValueError(f"w0_ENK must be a contiguous (E_local={E_loc}, N={N}, K'={k_cols}) {recv.dtype} tensor "
                         f"on {dev} for {act}; got {tuple(w0_ENK.shape)} {w0_ENK.dtype} on {w0_ENK.device}")
    check_kernel_tile("policy block_m", pol.block_m)
    check_kernel_tile("policy block_n0", pol.block_n0)
    R_max = rp.row_token_R.numel()
    if out_RK is None:
        out_RK = buf.h_RK[:R_max]
    if out_RK.shape != (R_max, k_out) or out_RK.dtype != recv.dtype or not out_RK.is_contiguous():
        raise ValueError(f"out_RK must be a contiguous ({R_max}, {k_out}) {recv.dtype} tensor")
    why = _gluon_unsupported(recv, w0_ENK, out_RK, act, pol, variant, tile, b_tma, timeline, impl)
    if impl == "gluon" and why is not None:
        raise ValueError(f"fused_layer0 impl='gluon' cannot run this call: {why}; use impl='auto' or 'triton'")
    if comm is not None and why is not None:  # the Gluon form's own options, asked for where it cannot run
        for on, asked, instead in ((comm.pull_to_rows, "pull_to_rows=True", "pull_to_rows=False"),
                                   (comm.l0_tail_pct, f"l0_tail_pct={comm.l0_tail_pct}", "l0_tail_pct=0 or None")):
            if on:
                raise ValueError(f"CommConfig {asked} runs in layer0's Gluon form only, which cannot run this call: "
                                 f"{why}; use {instead}")
    tile = default_tile(dev) if tile is None else tile
    comm = default_comm(dev) if comm is None else comm
    sms = sm_count(dev)
    nc = pol.nc_layer0 if variant == "blocks" else 0
    if variant == "blocks" and nc < 1:
        raise ValueError("layer0_comm='blocks' needs nc_layer0 >= 1 communication programs; use a Policy with "
                         "nc_layer0 >= 1, or layer0_comm='direct' / 'copy-engine'")
    if num_programs is None:
        reserve = {"blocks": nc, "direct": 0, "copy-engine": pol.copy_engine_reserved_sms}[variant]
        num_programs = max(1, sms - reserve)
    if num_programs < 1:
        raise ValueError(f"num_programs must be >= 1, got {num_programs}")
    if dev.type == "cuda" and nc + num_programs > sms:
        raise ValueError(f"{nc} communication + {num_programs} GEMM programs exceed the {sms} SMs: programs wait "
                         f"on each other and must all be resident; lower num_programs or nc_layer0")
    spin = ws.max_spin if max_spin is None else max_spin
    if why is None:
        fused_layer0_gluon.launch(ws, plan, rank, w0_ENK, out_RK, activation=act, num_programs=num_programs,
                                  comm=comm, max_spin=spin)
        return out_RK
    if b_tma is None:
        b_tma = dev.type == "cuda" and (k_cols * w0_ENK.element_size()) % 16 == 0
    b_desc = w0_ENK
    if b_tma:
        b_desc = descriptor(w0_ENK.view(E_loc * N, k_cols), [tile.block_k, pol.block_n0])
    epoch = ws.next_copy_epoch(rank) if variant == "copy-engine" else 0
    lay = ws.layout

    trace = (None, None, None)
    if timeline is not None:
        require_gpu_kernel(_fused_layer0_kernel, dev)
        lt = timeline.new_launch(
            rank=rank, layer=0, variant=variant, num_comm=nc, num_gemm=num_programs, comm_first=True,
            max_gemm_items=rp.l0_tile_expert_T.numel(), max_comm_items=rp.l0_chunk_src_C.numel(), device=dev,
            row_bytes=N * recv.element_size(), hidden_N=N, block_n=pol.block_n0, combine_elem_bytes=0,
            tile_rows=rp.l0_tile_row_end_T - rp.l0_tile_row_start_T,
            tile_remote_rows=tile_remote_rows(rp.row_src_R, rp.l0_tile_row_start_T, rp.l0_tile_row_end_T, rank)
            if variant == "direct" else None)
        trace = (lt.records, lt.counts, lt.slots)

    if variant == "copy-engine":
        _copy_engine_dispatch(ws, plan, rank, epoch)

    args = (recv, buf.recv_ptrs_W, w0_ENK, b_desc, out_RK, buf.flags_F, buf.status,
            rp.row_token_R, rp.row_src_R,
            rp.l0_tile_expert_T, rp.l0_tile_row_start_T, rp.l0_tile_row_end_T, rp.l0_tile_col_T,
            rp.l0_tile_src_mask_T, rp.num_l0_tiles,
            rp.recv_token_U, rp.l0_chunk_src_C, rp.l0_chunk_start_C, rp.l0_chunk_end_C, rp.num_l0_chunks,
            rp.l0_chunks_per_src_W,
            rank, W, rp.l0_tile_expert_T.numel(), rp.l0_chunk_src_C.numel(), nc, num_programs, N, k_out,
            k_out if act == "swiglu" else 0, epoch, spin,
            lay.arrive, lay.copy, lay.done_l0, *trace,
            recv.stride(0), w0_ENK.stride(0), w0_ENK.stride(1), w0_ENK.stride(2), out_RK.stride(0))
    _fused_layer0_kernel[(nc + num_programs,)](
        *args, MODE=VARIANTS[variant], ACTIVATION=ACTIVATIONS[act], BLOCK_M=pol.block_m, BLOCK_N=pol.block_n0,
        BLOCK_K=tile.block_k, EVEN_K=N % tile.block_k == 0, B_TMA=b_tma, COMM_ROWS=comm.pull_rows,
        COMM_COLS=comm.pull_cols, INSTRUMENT=timeline is not None, num_warps=tile.num_warps,
        num_stages=tile.num_stages)
    if variant == "copy-engine" and dev.type == "cuda":
        torch.cuda.current_stream(dev).wait_stream(ws.side_stream(rank))
    return out_RK


def _gluon_unsupported(recv, w0_ENK, out_RK, act: str, pol, variant: str, tile, b_tma, timeline,
                       impl: str) -> str | None:
    """Why fused_layer0 runs the one-launch tl kernel (None: it runs kernels/fused_layer0_gluon.py)."""
    if impl not in IMPLS:
        raise ValueError(f"fused_layer0 impl={impl!r}: use one of {', '.join(IMPLS)}")
    if impl == "triton":
        return "impl='triton'"
    if variant != "blocks":
        return f"the {variant!r} mechanism has no Gluon form (only 'blocks')"
    given = [name for name, v in (("tile", tile), ("b_tma", b_tma), ("timeline", timeline)) if v is not None]
    if given:
        return f"{', '.join(given)} {'is an option' if len(given) == 1 else 'are options'} of the tl kernel"
    return gluon_unsupported(recv, w0_ENK, out_RK, act, True, pol.block_m, pol.block_n0)


def _copy_engine_dispatch(ws, plan, rank: int, epoch: int) -> None:
    """Side-stream copies of each source rank's whole shard (arrival order), each followed by its flag."""
    W, M = plan.world_size, plan.num_tokens
    buf = ws.buffers(rank)
    dev = buf.recv_MN.device
    side = ws.side_stream(rank) if dev.type == "cuda" else None
    if side is not None:
        side.wait_stream(torch.cuda.current_stream(dev))
    ctx = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
    with ctx:
        for pos in range(1, W):
            s = (rank + pos) % W
            lo, hi = owned_range(M, W, s)
            if hi > lo:
                buf.recv_MN[lo:hi].copy_(ws.peer_recv(rank, s)[lo:hi])
            write_flag(buf.flags_F, ws.layout.copy + s, epoch)
