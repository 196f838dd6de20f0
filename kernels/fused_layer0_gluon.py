"""Fused layer0 of one rank on a Hopper GPU, "blocks" mechanism, as two launches that run side by side: a
communication kernel of n_c programs that pulls the Plan's chunks of token rows from their owners into this
rank's receive buffer and counts each source's chunks on its arrival flag (the one-launch kernel's code:
kernels/fused_layer0_comm.py's `pull_chunks`), and the Gluon grouped GEMM (kernels/gluon_gemm.py) on SMs - n_c
programs, whose loader partition waits, before a tile's first loads, until every source rank of the tile's
rows has arrived, then gathers the rows by token id (cp.async) while the multiplying warps never spin.

Why two launches, not one launch with roles by program id (kernels/fused_layer0.py, the paper's form): a
Gluon kernel cannot call tl code, and the pull programs are tl code that the CPU interpreter tests; a launch
of their own gives them their own warps. Every waiting program stays resident: the communication programs
wait on nothing, and the GEMM grid leaves them n_c SMs (a GEMM program fills an SM). The communication
kernel is launched first, so that a first call's compile of the GEMM (at its launch) happens while the rows
are already moving, and no waiting program exists before its producer was launched.

Where layer0's weights are wide (CommConfig.pull_to_rows; by default >= 4096 columns: Mixtral, Phi-3.5), the
tokens go straight into the shared tensor instead, in the Plan's shared-row order (the layer1 GEMM's output
buffer y_RN, free until layer1): this rank's own tokens by one full-GPU row copy on the caller's stream first,
then the pull programs (`pull_sends`, over the Plan's (token, owner) send chunks) write each other token into
every row of it. The GEMM then reads A in place through TMA (a proxy fence after the loader's waits, since
the rows were written by plain stores) where the gathered form pays 4-9 % for its cp.async copies; narrow
GEMMs (Qwen2-MoE) lost more to the extra copies than they gained (results/fused_layers/README.md).

The Plan orders each tile's rows local rows first and the chunks by source in arrival order; a tile waits
only for the sources in its mask that it has not yet seen complete. The arrival flags and the done counter
are the one-launch kernel's (kernels/workspace.py); the last program of either kernel to finish resets them,
so no host-side clearing is needed. The communication kernel runs on the rank's side stream, forked from
the caller's stream and joined again after the GEMM (one step of the caller's stream; CUDA-graph capture
records two parallel branches).

With CommConfig.l0_tail_pct the pull programs' SMs do not idle once the rows are in: a second launch of the
GEMM follows the pulls on the side stream, n_c programs over the last tiles of the same tile table (the
GEMM beside it stops short of them; both compute the split from the tile count on the device). Its tiles'
rows have all arrived when it starts, so it waits on nothing; the GEMM beside it has SMs - n_c programs as
before. The share is static (a percent of an even per-SM share), so too large a share makes the tail end
last; results/fused_layers/README.md has the sweep.

Results: the Gluon GEMM of the grouped GEMM alone on the same rows, without its split tail, so bitwise
independent of the program count and of n_c; equal to the unfused path's GEMM (kernels.grouped_gemm with the
Gluon kernel) wherever that one does not split its tail either.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.jit import jit
from kernels.fused_layer0_comm import pull_chunks, pull_sends
from kernels.grouped_gemm import PREGATHER_MIN_COLS, _tiles
from kernels.options import L0_TAIL_PCT, CommConfig, GemmOptions
from kernels.signals import finish_program


@jit(specialise=("recv_ptr", "D_IN", "stride_rm"))
def _layer0_pull_kernel(
    recv_ptr, recv_peers_ptr, flags_ptr, recv_token_ptr, chunk_src_ptr, chunk_start_ptr, chunk_end_ptr,
    num_chunks_ptr, max_chunks, num_comm, D_IN, arrive_off, done_off, done_total, world, stride_rm,
    COMM_ROWS: tl.constexpr, COMM_COLS: tl.constexpr,
):
    """n_c pull programs of layer0 (module docstring); the last of done_total programs of this kernel and the
    GEMM beside it resets the arrival flags."""
    pid = tl.program_id(0)
    pull_chunks(pid, num_comm, recv_ptr, recv_peers_ptr, flags_ptr, recv_token_ptr, chunk_src_ptr, chunk_start_ptr,
                chunk_end_ptr, num_chunks_ptr, max_chunks, D_IN, arrive_off, None, None, pid, stride_rm, COMM_ROWS,
                COMM_COLS, False)
    if finish_program(flags_ptr + done_off, done_total):
        for s in range(0, world):
            tl.atomic_xchg(flags_ptr + arrive_off + s, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


@jit(specialise=("y_ptr", "D_IN", "stride_ym", "stride_rm"))
def _layer0_pull_rows_kernel(
    y_ptr, recv_peers_ptr, flags_ptr, send_token_ptr, send_dest_ptr, send_row_start_ptr, send_row_end_ptr,
    rows_by_send_ptr, chunk_start_ptr, chunk_end_ptr, num_chunks_ptr, max_chunks, num_comm, D_IN, arrive_off,
    done_off, done_total, world, rank, stride_ym, stride_rm,
    COMM_ROWS: tl.constexpr, COMM_COLS: tl.constexpr, TOPK_LOCAL: tl.constexpr,
):
    """n_c pull programs of layer0 into shared-row order (CommConfig.pull_to_rows; module docstring); the last
    of done_total programs of this kernel and the GEMM beside it resets the arrival flags."""
    pid = tl.program_id(0)
    pull_sends(pid, num_comm, y_ptr, stride_ym, recv_peers_ptr, stride_rm, flags_ptr, arrive_off, rank, send_token_ptr,
               send_dest_ptr, send_row_start_ptr, send_row_end_ptr, rows_by_send_ptr, chunk_start_ptr, chunk_end_ptr,
               num_chunks_ptr, max_chunks, D_IN, COMM_ROWS, COMM_COLS, TOPK_LOCAL)
    if finish_program(flags_ptr + done_off, done_total):
        for s in range(0, world):
            tl.atomic_xchg(flags_ptr + arrive_off + s, 0, sem="relaxed", scope="gpu")
        tl.atomic_xchg(flags_ptr + done_off, 0, sem="relaxed", scope="gpu")


_OWN_BLOCK_R = 16


@jit(specialise=("x_ptr", "out_ptr", "D", "stride_x", "stride_out"))
def _own_rows_kernel(x_ptr, out_ptr, row_token_ptr, row_src_ptr, n_rows, D, stride_x, stride_out, rank, world,
                     chunk_start_ptr, num_chunks_ptr, max_chunks, send_dest_ptr, n_sends, targets_ptr,
                     BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_C: tl.constexpr, W_POW2: tl.constexpr):
    """pull_to_rows's start (`_rows_in_place`): out[r] = x[row_token[r]] for the rows whose token this rank
    owns (row_src[r] == rank); and, in program (0, 0), targets[s] = the send chunks whose owner s is another
    rank (live chunks: the first num_chunks), the value flag[s] reaches once s's rows have all been pulled."""
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    live = r < n_rows
    tok = tl.load(row_token_ptr + r, mask=live, other=0)
    own = tl.load(row_src_ptr + r, mask=live, other=-1) == rank
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = own[:, None] & (d < D)[None, :]
    v = tl.load(x_ptr + tok.to(tl.int64)[:, None] * stride_x + d[None, :], mask=mask)
    tl.store(out_ptr + r.to(tl.int64)[:, None] * stride_out + d[None, :], v, mask=mask)
    if (tl.program_id(0) == 0) & (tl.program_id(1) == 0):
        num = tl.minimum(tl.load(num_chunks_ptr), max_chunks)
        w = tl.arange(0, W_POW2)
        count = tl.zeros([W_POW2], dtype=tl.int64)
        for c0 in range(0, num, BLOCK_C):
            c = c0 + tl.arange(0, BLOCK_C)
            cm = c < num  # (no sends: no live chunks either)
            start = tl.load(chunk_start_ptr + c, mask=cm, other=0)
            start = tl.minimum(tl.maximum(start, 0), tl.maximum(n_sends - 1, 0))
            dest = tl.load(send_dest_ptr + start, mask=cm, other=-1)
            hit = (dest[:, None] == w[None, :]) & (cm & (dest != rank))[:, None]
            count += tl.sum(hit.to(tl.int64), axis=0)
        tl.store(targets_ptr + w, count, mask=w < world)


def gemm_programs(plan, rank: int, num_programs: int) -> int:
    """The GEMM programs the Gluon form launches (none without tiles: then the pull programs count alone)."""
    return min(num_programs, plan.rank(rank).l0_tile_expert_T.numel())


def launch(ws, plan, rank: int, w0_ENK: torch.Tensor, out_RK: torch.Tensor, *, activation: str,
           num_programs: int, comm: CommConfig, max_spin: int) -> None:
    """Both kernels of the module docstring for `rank` (kernels.fused_layer0.fused_layer0 has checked the
    operands and that the Gluon kernel supports them)."""
    from kernels.gluon_gemm import SourceWaits, grouped_gemm_hopper  # Gluon's Hopper API: only where supported

    pol = plan.policy
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    lay = ws.layout
    programs = gemm_programs(plan, rank, num_programs)
    tail_pct = L0_TAIL_PCT if comm.l0_tail_pct is None else comm.l0_tail_pct
    tail_programs = min(pol.nc_layer0, programs) if tail_pct else 0
    done_total = pol.nc_layer0 + programs + tail_programs
    here = torch.cuda.current_stream(buf.recv_MN.device)
    to_rows = comm.pull_to_rows if comm.pull_to_rows is not None else w0_ENK.shape[2] >= PREGATHER_MIN_COLS
    if to_rows:
        a, a_rows, targets = _rows_in_place(buf, rp, rank, plan.world_size)
    else:
        a, a_rows, targets = buf.recv_MN, rp.row_token_R, rp.l0_chunks_per_src_W
    waits = SourceWaits(tile_src=rp.l0_tile_src_mask_T, flags=buf.flags_F[lay.arrive:], targets=targets,
                        status=buf.status, done=buf.flags_F[lay.done_l0:], rank=rank, world=plan.world_size,
                        max_spin=max_spin, done_total=done_total)

    def gemm(n_programs, part):
        grouped_gemm_hopper(a, w0_ENK, _tiles(rp, "l0"), out_RK, block_m=pol.block_m, block_n=pol.block_n0,
                            activation=activation, num_programs=n_programs, a_rows_R=a_rows,
                            options=GemmOptions(impl="gluon", split_tail=False, ws_tma=to_rows),
                            wait_sources=waits, tile_part=part)

    # the tail's share of the tiles: l0_tail_pct of tail_programs' even share among all GEMM programs, and the
    # head's last few tiles where they fit the tail's waves (comet.core.tile_split.tail_tiles)
    share = (tail_pct * tail_programs, 100 * (programs + tail_programs), programs, tail_programs)
    side = ws.side_stream(rank)
    side.wait_stream(here)
    with torch.cuda.stream(side):
        if to_rows:
            launch_pull_rows(ws, plan, rank, a, comm=comm, done_total=done_total)
        else:
            launch_pull(ws, plan, rank, comm=comm, done_total=done_total)
        if tail_programs:  # after the pulls, on their SMs: every row has arrived, so its waits pass at once
            gemm(tail_programs, (2, *share))
    if programs:
        gemm(programs, (1, *share) if tail_programs else (0, 0, 1))
    here.wait_stream(side)


def _rows_in_place(buf, rp, rank: int, world: int):
    """CommConfig.pull_to_rows: A is the shared tensor in shared-row order, in the layer1 GEMM's output buffer
    y_RN (free until layer1 runs, after this layer on the same stream); this rank's own tokens are copied into
    their rows here, on the caller's stream (a full-GPU copy at memory speed, before the pulls begin). Returns
    A, no gather table, and what each source's arrival flag reaches: its send chunks (0 for this rank). One
    launch (`_own_rows_kernel`): in a graph every small launch costs a node's latency."""
    R_max, D = rp.row_token_R.numel(), buf.recv_MN.shape[1]
    a = buf.y_RN[:R_max]
    targets = buf.l0_targets_W
    block_d = min(triton.next_power_of_2(D), 2048 // a.element_size())  # up to 2 KB of each row per program
    grid = (max(triton.cdiv(R_max, _OWN_BLOCK_R), 1), triton.cdiv(D, block_d))
    _own_rows_kernel[grid](
        buf.recv_MN, a, rp.row_token_R, rp.row_src_R, R_max, D, buf.recv_MN.stride(0), a.stride(0), rank, world,
        rp.l1_chunk_start_C, rp.num_l1_chunks, rp.l1_chunk_start_C.numel(), rp.send_dest_S, rp.send_dest_S.numel(),
        targets, BLOCK_R=_OWN_BLOCK_R, BLOCK_D=block_d, BLOCK_C=128, W_POW2=triton.next_power_of_2(world),
        num_warps=4)
    return a, None, targets


def launch_pull(ws, plan, rank: int, *, comm: CommConfig, done_total: int) -> None:
    """The pull kernel alone, on the current stream (done_total: programs of both kernels that count as
    finished before the flags are reset)."""
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    lay = ws.layout
    recv = buf.recv_MN
    _layer0_pull_kernel[(plan.policy.nc_layer0,)](
        recv, buf.recv_ptrs_W, buf.flags_F, rp.recv_token_U, rp.l0_chunk_src_C, rp.l0_chunk_start_C,
        rp.l0_chunk_end_C, rp.num_l0_chunks, rp.l0_chunk_src_C.numel(), plan.policy.nc_layer0, plan.model.hidden_N,
        lay.arrive, lay.done_l0, done_total, plan.world_size, recv.stride(0),
        COMM_ROWS=comm.pull_rows, COMM_COLS=comm.pull_cols, num_warps=comm.num_warps)


def launch_pull_rows(ws, plan, rank: int, a_RN: torch.Tensor, *, comm: CommConfig, done_total: int) -> None:
    """The pull kernel into shared-row order (CommConfig.pull_to_rows) alone, on the current stream: other
    ranks' tokens into their rows of a_RN."""
    rp = plan.rank(rank)
    buf = ws.buffers(rank)
    lay = ws.layout
    _layer0_pull_rows_kernel[(plan.policy.nc_layer0,)](
        a_RN, buf.recv_ptrs_W, buf.flags_F, rp.send_token_S, rp.send_dest_S, rp.send_row_start_S, rp.send_row_end_S,
        rp.rows_by_send_R, rp.l1_chunk_start_C, rp.l1_chunk_end_C, rp.num_l1_chunks, rp.l1_chunk_start_C.numel(),
        plan.policy.nc_layer0, plan.model.hidden_N, lay.arrive, lay.done_l0, done_total, plan.world_size, rank,
        a_RN.stride(0), buf.recv_MN.stride(0), COMM_ROWS=comm.pull_rows, COMM_COLS=comm.pull_cols,
        TOPK_LOCAL=min(plan.model.topk, plan.experts_per_rank), num_warps=comm.num_warps)
