"""Fused layer1 of one rank on a Hopper GPU as two launches that run side by side: the Gluon grouped GEMM
(kernels/gluon_gemm.py) over the Plan's l1 tiles on SMs - n_c programs, counting finished tiles per column
block, and a communication kernel of n_c programs on a side stream that waits per column block, reduces the
top-k partial sums in fp32 and stores them into the owners' combine buffers (the same communication code as
the one-launch tl kernel: kernels/fused_layer1_comm.py's `comm_program`).

Why two launches, not one launch with roles by program id (kernels/fused_layer1.py, the paper's form): a
Gluon kernel cannot call tl code, and the communication programs are tl code that the CPU interpreter tests;
a launch of their own also gives them their own warps and registers instead of the GEMM's. Both kernels keep
every program resident: the GEMM programs wait on nothing (they only count), each fills an SM (its shared
memory and registers), and its grid leaves n_c SMs to the communication kernel, whose programs wait only on
the GEMM's counts (bounded waits: kernels/signals.py). Whichever kernel the GPU starts first, neither can take
the SMs the other needs to finish.

Items are claimed, not dealt: each communication program takes the next (column block, send chunk) item from
a counter (column-block-major order) until none is left. With Policy.l1_tail (the default) the same kernel is
launched a second time on the caller's stream right after the GEMM, CommConfig.tail_per_sm programs per GEMM
SM, of a shape of their own (smaller steps and fewer warps, so that two fit on an SM): the tail. Its
programs take whatever the n_c programs have not reached when the GEMM ends, so the work left then is spread
over every SM instead of n_c of them, and n_c can stay small (n_c 4 was the best measured for Mixtral and
Phi-3.5 on one H200, against 8-28 without the tail: results/fused_layers/README.md). Why a launch of its own,
not the GEMM's programs turning to communication: the GEMM is a Gluon kernel (it cannot call this tl code).
A tail program never waits on an unfinished column block (the GEMM before it on the stream has ended), so its
residency does not matter; the last of all programs of both communication launches does the reset below.

Ordering: a counted tile's rows go out by plain stores, then the GEMM program's threads meet at a barrier and
one release adds 1 to the column block's count (kernels/gluon_gemm.py `_store_tile`); a communication program
acquires the count (`wait_flag`) before it reads the rows. The last communication program to finish waits
until every column block is complete (so that no GEMM program still adds to a count) and resets the counts and
the claim counter for the next call. The communication kernel runs on the rank's side stream
(Workspace.side_stream), which forks from the caller's stream before the GEMM and joins it again after, so the
call is one step of the caller's stream and CUDA-graph capture records both kernels as parallel branches. The
GEMM is launched first: a first call compiles each kernel as it is launched, and communication programs already
spinning would count that compile time against their bounded waits (a first call timed out so on the H200). Launched
the other way round, the replays ran at the same speed (results/fused_layers/README.md).

Results are bitwise reproducible run to run and whatever n_c or the program count: the GEMM runs without its
split tail, so each tile's reduction order is fixed by its own K loop, and the communication code is the
one-launch kernel's. The intermediate y comes from another GEMM kernel than the one-launch kernel's, so the
two paths agree to the 16-bit rounding of y, not bitwise; given the same y, this communication kernel writes
bitwise the same combine buffers (tests/test_fused_kernels.py).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.jit import jit
from kernels.fused_layer1_comm import comm_program
from kernels.grouped_gemm import _tiles
from kernels.options import CommConfig, GemmOptions
from kernels.signals import finish_program, wait_flag

_WAIT_L1_COLUMN = tl.constexpr(3)  # kernels.signals.WAIT_L1_COLUMN


@jit(specialise=("y_ptr", "comb_ptr", "D_OUT", "stride_ym"))
def _layer1_comm_kernel(
    y_ptr, comb_ptr, flags_ptr, status_ptr, comb_peers_ptr, sflag_peers_ptr, tiles_per_col_ptr,
    send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr,
    row_weight_ptr, chunk_start_ptr, chunk_end_ptr, num_chunks_ptr,
    rank, world, M, max_chunks, num_total, D_OUT, col_blocks, slots, col_max, max_spin, l1_col_off, claim_off,
    done_off, comb_flag_off, steps, stride_ym,
    BLOCK_N: tl.constexpr, TOPK_LOCAL: tl.constexpr, SEND_BLOCK: tl.constexpr, PIPELINED: tl.constexpr,
    SIGNAL_SCOPE: tl.constexpr,
):
    """Communication programs of layer1 (module docstring): the n_c beside the GEMM or the tail's after it;
    num_total counts the programs of both launches."""
    pid = tl.program_id(0)
    comm_program(
        pid, pid, num_chunks_ptr, max_chunks, tiles_per_col_ptr, col_blocks, steps, rank, world, M,
        D_OUT, slots, col_max, max_spin, l1_col_off, claim_off, comb_flag_off, flags_ptr, status_ptr, y_ptr, comb_ptr,
        comb_peers_ptr, sflag_peers_ptr, send_token_ptr, send_dest_ptr, send_slot_ptr, send_row_start_ptr,
        send_row_end_ptr, rows_by_send_ptr, row_weight_ptr, chunk_start_ptr, chunk_end_ptr, None, None, stride_ym,
        BLOCK_N, TOPK_LOCAL, SEND_BLOCK, False, PIPELINED, SIGNAL_SCOPE)
    if finish_program(flags_ptr + done_off, num_total):
        # the GEMM kernel may still be counting column blocks no item waited on: wait for all, then reset
        tiles_per_col = tl.load(tiles_per_col_ptr)
        for c in range(0, col_blocks):
            wait_flag(flags_ptr + l1_col_off + c, tiles_per_col, max_spin, status_ptr, _WAIT_L1_COLUMN, c, rank,
                      False, "gpu")
            tl.atomic_xchg(flags_ptr + l1_col_off + c, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + claim_off, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


def launch(ws, plan, rank: int, h: torch.Tensor, w1_EKN: torch.Tensor, y: torch.Tensor, *, num_programs: int,
           comm: CommConfig, max_spin: int) -> None:
    """Both kernels of the module docstring for `rank` (kernels.fused_layer1.fused_layer1 has checked the
    operands and that the Gluon kernel supports them), and with Policy.l1_tail the tail: comm.tail_per_sm
    programs per GEMM program. The GEMM runs without its split tail, so that y does not depend on the program
    count (bitwise reproducible whatever n_c), and with its loader partition (as the GEMM alone runs where it
    splits: ws_tma)."""
    from kernels.gluon_gemm import grouped_gemm_hopper  # Gluon's Hopper API: only where supported

    pol = plan.policy
    lay = ws.layout
    here = torch.cuda.current_stream(h.device)
    side = ws.side_stream(rank)
    fork = torch.cuda.Event()
    fork.record(here)
    counts = ws.buffers(rank).flags_F[lay.l1_col: lay.l1_col + plan.l1_col_blocks]
    tiles = _tiles(plan.rank(rank), "l1")
    max_tiles = tiles["expert"].numel()
    # the GEMM first: a first call compiles each kernel at its launch, and communication programs already
    # spinning would count that time against their bounded waits
    if max_tiles:  # (none: no rows, nothing counted, and the communication programs have no items)
        grouped_gemm_hopper(h, w1_EKN, tiles, y, block_m=pol.block_m, block_n=pol.block_n1, activation="none",
                            num_programs=min(num_programs, max_tiles),
                            options=GemmOptions(impl="gluon", split_tail=False, ws_tma=True), col_counts=counts)
    nc = pol.nc_layer1
    tail_programs = num_programs * comm.tail_per_sm if pol.l1_tail else 0
    total = nc + tail_programs
    # the tail: once the GEMM has ended (stream order), its programs take every item still unclaimed; they
    # have a shape of their own (CommConfig.tail_*), which changes no sum
    if tail_programs:
        launch_comm(ws, plan, rank, y, programs=tail_programs, total_programs=total,
                    comm=comm.replace(num_warps=comm.tail_num_warps),
                    send_block=comm.tail_send_block_for(y.device), max_spin=max_spin)
    side.wait_event(fork)  # (not on the GEMM: the two run side by side)
    with torch.cuda.stream(side):
        launch_comm(ws, plan, rank, y, programs=nc, total_programs=total, comm=comm,
                    send_block=comm.send_block_for(y.device, own_launch=True), max_spin=max_spin)
    here.wait_stream(side)


def launch_comm(ws, plan, rank: int, y: torch.Tensor, *, programs: int, total_programs: int, comm: CommConfig,
                send_block: int, max_spin: int, signal_scope: str = "sys") -> None:
    """One communication kernel of `programs` programs on the current stream, one of the launches that
    together have `total_programs` (the last of them resets the counts): it waits until every tile of a
    column block of y is counted in the rank's l1 column counts (the Gluon GEMM's, or set by a test or a
    benchmark). signal_scope: of the release onto the owners' flags; "sys" (peers on other GPUs) in every
    layer; "gpu" only where every owner is on this GPU (benchmarks.l1_comm measures what the fence costs)."""
    if signal_scope not in ("sys", "gpu"):
        raise ValueError(f"signal_scope={signal_scope!r}: use 'sys' (owners on other GPUs) or 'gpu' (all on this one)")
    pol = plan.policy
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    lay = ws.layout
    _layer1_comm_kernel[(programs,)](
        y, buf.combine_MLN, buf.flags_F, buf.status, buf.combine_ptrs_W, buf.sflag_ptrs_W, rp.l1_tiles_per_col,
        rp.send_token_S, rp.send_dest_S, rp.send_slot_S, rp.send_row_start_S, rp.send_row_end_S,
        rp.rows_by_send_R, rp.row_weight_R, rp.l1_chunk_start_C, rp.l1_chunk_end_C, rp.num_l1_chunks,
        rank, plan.world_size, plan.num_tokens, rp.l1_chunk_start_C.numel(), total_programs, plan.model.hidden_N,
        plan.l1_col_blocks, ws.sizes.slots, lay.col_max, max_spin, lay.l1_col, lay.l1_claim, lay.done_l1,
        lay.combine,
        triton.cdiv(pol.l1_chunk_rows, send_block), y.stride(0),
        BLOCK_N=pol.block_n1, TOPK_LOCAL=min(plan.model.topk, plan.experts_per_rank), SEND_BLOCK=send_block,
        PIPELINED=comm.pipelined, SIGNAL_SCOPE=signal_scope, num_warps=comm.num_warps)
