"""comet.calibrate's communication parts (CUDA; each takes a Context and records rows into it).

  d. comm    the fused kernels' communication programs alone in an emulated world on ONE GPU (the Plan's GEMM
             tiles cut to zero). Layer0 (kernels/fused_layer0.py, "blocks"): rows pulled per second by the
             busiest of n_c programs. Layer1 (kernels/fused_layer1.py): partial sums reduced and stored per
             second by the busiest program, per (PIPELINE, SEND_BLOCK), and the fixed cost of one item
             (l1_item_overhead_us) from two chunk sizes. Local memory, not NVLink: an upper bound for one
             program, recorded as `comm_program_local_gbps` and never written into a link field.
  e. link    only under torchrun with world size >= 2 (symmetric memory as kernels/symm.py; kernels/probes.py):
             one program's peer store / load rate (per_block_link_gbps = the slower), all programs to one peer
             and to all peers (link_gbps = the faster of store and load to all peers), a one-way flag
             ping-pong latency between ranks 0 and 1 (link_latency_us), and a small NCCL all_to_all_single
             (collective_overhead_us). Every rank runs it.
Times in microseconds, rates in GB/s (1e9 bytes/s).
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable

import torch
import torch.distributed as dist

from comet.calibrate.fit import busiest_program_bytes, item_cost_fit
from comet.calibrate.measurements import Context, progress
from comet.calibrate.settings import (
    COMM_NCS,
    L1_COMM_CONFIGS,
    L1_DEFAULT_CONFIG,
    L1_ITEM_ROWS_SHORT,
    LINK_PROGRAMS,
    QUICK_COMM_NCS,
    QUICK_LINK_PROGRAMS,
)
from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.moe import stage_tokens
from kernels.options import GPU_COMM
from kernels.probes import peer_copy, ping_pong
from kernels.timing import graph_us
from kernels.workspace import EmulatedWorld


# ------------------------------------------------------------------------------------- plans cut to communication
def comm_only_plan(plan, rank: int, nc: int):
    """`plan` cut to `rank` with no layer0 tiles and `nc` communication programs: the fused layer0 kernel then
    runs its communication programs alone (its GEMM programs find no tile and finish at once)."""
    rp = plan.rank(rank)
    idle = dataclasses.replace(rp, num_l0_tiles=torch.zeros_like(rp.num_l0_tiles))
    return dataclasses.replace(plan, policy=plan.policy.replace(nc_layer0=nc), ranks=(idle,))


def l1_comm_only_plan(plan, rank: int, nc: int):
    """`plan` cut to `rank` with no layer1 tiles, a column threshold of 0 and `nc` communication programs: the
    fused layer1 kernel then runs its communication programs alone, every (column block, chunk) item ready."""
    rp = plan.rank(rank)
    idle = dataclasses.replace(rp, num_l1_tiles=torch.zeros_like(rp.num_l1_tiles),
                               l1_tiles_per_col=torch.zeros_like(rp.l1_tiles_per_col))
    return dataclasses.replace(plan, policy=plan.policy.replace(nc_layer1=nc), ranks=(idle,))


# ------------------------------------------------------------------------------------- part d: comm
def measure_comm_programs(ctx: Context) -> None:
    """Part d: layer0's communication programs alone (no GEMM tiles) in an emulated world on one GPU.

    Rank 0 of EP=4 pulls its remote token rows (N = 4096, bf16) from the other emulated ranks' receive buffers,
    all in this GPU's memory. Rate of one program = bytes of the busiest program / kernel time."""
    rec = ctx.rec
    model = ModelConfig("calibrate-comm", hidden_N=4096, ffn_K=256, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    M = 16384 if ctx.quick else 65536
    row_bytes = model.hidden_N * 2
    routing = make_routing("balanced", M, model.experts_E, model.topk, seed=0).to("cuda")
    plan = make_plan(routing, model, par, ctx.base, Policy(block_m=128, block_n0=128), ranks=[0])
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda")
    x = torch.randn(M, model.hidden_N, device="cuda", dtype=torch.bfloat16)
    stage_tokens(world, x, M)
    w0 = torch.zeros(plan.experts_per_rank, model.hidden_N, plan.ffn_local, device="cuda", dtype=torch.bfloat16)
    t = plan.rank(0).trimmed()
    chunk_rows = (t["l0_chunk_end_C"] - t["l0_chunk_start_C"]).tolist()
    need = t["recv_token_U"].cuda()
    total = sum(chunk_rows) * row_bytes
    ncs = QUICK_COMM_NCS if ctx.quick else COMM_NCS
    for i, nc in enumerate(progress(ncs, "d. comm programs (local)", ctx.main_rank)):
        p = comm_only_plan(plan, 0, nc)
        fn = lambda p=p: fused_layer0(world, p, 0, w0, variant="blocks", num_programs=1)
        fn()
        world.check()
        if i == 0 and not torch.equal(world.buffers(0).recv_MN[need], x[need]):
            raise RuntimeError("communication programs moved the wrong rows: the measurement would be meaningless")
        us = graph_us(fn, rep_ms=40)
        busiest = busiest_program_bytes(chunk_rows, nc, row_bytes)
        how = dict(nc=nc, bytes=total, busiest_program_bytes=busiest, chunks=len(chunk_rows),
                   rows_per_chunk=plan.policy.comm_rows, world="emulated_ep4_one_gpu", memory="local_hbm_not_nvlink")
        rec.add("comm_program_local_gbps", busiest / us / 1e3, "GB/s", **how)
        rec.add("comm_programs_local_total_gbps", total / us / 1e3, "GB/s", **how)
    world.check()


def measure_l1_comm_programs(ctx: Context) -> None:
    """Part d (layer1): the fused layer1 kernel's communication programs alone, in an emulated world on one GPU.

    No GEMM tiles and a column threshold of 0, so every (column block, send chunk) item is ready at once: each
    program reduces its items' top-k rows of y and stores the partial sums into the owners' combine buffers
    (local memory here). Rate of one program = partial-sum bytes stored by the busiest program / kernel time,
    per SEND_BLOCK (sends per reduce step). The simulator caps a layer1 item's store at per_block_link_gbps."""
    rec = ctx.rec
    model = ModelConfig("calibrate-comm-l1", hidden_N=4096, ffn_K=256, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    M = 16384 if ctx.quick else 65536
    routing = make_routing("balanced", M, model.experts_E, model.topk, seed=0).to("cuda")
    plan = make_plan(routing, model, par, ctx.base, Policy(block_m=128, block_n1=128), ranks=[0])
    # the same sends in chunks of L1_ITEM_ROWS_SHORT: 4x the items, for the fixed cost of one item
    short = make_plan(routing, model, par, ctx.base, Policy(block_m=128, block_n1=128, comm_rows=L1_ITEM_ROWS_SHORT),
                      ranks=[0])
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda")
    world.buffers(0).y_RN.normal_()
    w1 = torch.zeros(plan.experts_per_rank, plan.ffn_local, model.hidden_N, device="cuda", dtype=torch.bfloat16)
    t = plan.rank(0).trimmed()
    sends_per_chunk = (t["l1_chunk_end_C"] - t["l1_chunk_start_C"]).tolist()
    col_bytes = plan.policy.block_n1 * 2
    # item i = (column block i // chunks, chunk i % chunks); programs claim items in order from a counter, so at
    # equal speed program j takes items j, j + nc, ...: the busiest share below is that estimate
    item_bytes = [n * col_bytes for _ in range(plan.l1_col_blocks) for n in sends_per_chunk]
    total = sum(item_bytes)
    short_items = int(short.rank(0).num_l1_chunks) * short.l1_col_blocks

    def time_us(p, cfg) -> float:
        fn = lambda: fused_layer1(world, p, 0, w1, num_programs=1, comm=cfg)
        fn()
        world.check()
        return graph_us(fn, rep_ms=40)

    ncs = QUICK_COMM_NCS if ctx.quick else COMM_NCS
    for pipeline, send_block in L1_COMM_CONFIGS:
        cfg = GPU_COMM.replace(pipelined=bool(pipeline), send_block=send_block)
        us_by_nc = {}
        for nc in progress(ncs, f"d. layer1 comm programs (local), PIPELINE={pipeline} SEND_BLOCK={send_block}",
                           ctx.main_rank):
            us = us_by_nc[nc] = time_us(l1_comm_only_plan(plan, 0, nc), cfg)
            busiest = max(sum(item_bytes[j::nc]) for j in range(nc))
            how = dict(nc=nc, send_block=send_block, pipeline=pipeline, bytes=total, busiest_program_bytes=busiest,
                       items=len(item_bytes), sends_per_chunk=plan.policy.l1_chunk_rows, topk_local=2,
                       world="emulated_ep4_one_gpu", memory="local_hbm_not_nvlink")
            rec.add("l1_comm_program_local_gbps", busiest / us / 1e3, "GB/s", **how)
            rec.add("l1_comm_programs_local_total_gbps", total / us / 1e3, "GB/s", **how)
        # fixed and per-byte cost of one item, from one program: the sweep's n_c = 1 and the short chunks
        one_program_us = us_by_nc[1] if 1 in us_by_nc else time_us(l1_comm_only_plan(plan, 0, 1), cfg)
        per_item = {plan.policy.l1_chunk_rows: (one_program_us, len(item_bytes)),
                    L1_ITEM_ROWS_SHORT: (time_us(l1_comm_only_plan(short, 0, 1), cfg), short_items)}
        for rows, (us, items) in per_item.items():
            rec.add("l1_comm_item_us", us / items, "us", send_block=send_block, pipeline=pipeline,
                    sends_per_chunk=rows, items=items, item_bytes=round(total / items), nc=1)
        (us_s, n_s), (us_l, n_l) = per_item[L1_ITEM_ROWS_SHORT], per_item[plan.policy.l1_chunk_rows]
        fixed, gbps = item_cost_fit(us_s / n_s, total / n_s, us_l / n_l, total / n_l)
        how = dict(send_block=send_block, pipeline=pipeline, method="two_chunk_sizes",
                   sends_per_chunk=f"{L1_ITEM_ROWS_SHORT}_and_{plan.policy.l1_chunk_rows}")
        rec.add("l1_item_fixed_us", fixed, "us", **how)
        rec.add("l1_item_marginal_gbps", gbps, "GB/s", **how)
        if (pipeline, send_block) == L1_DEFAULT_CONFIG:  # the kernel's default: the profile's figure
            rec.add("l1_item_overhead_us", fixed, "us", **how)
    world.reset()


def measure_comm(ctx: Context) -> None:
    """Part d: layer0's communication programs, then layer1's."""
    measure_comm_programs(ctx)
    measure_l1_comm_programs(ctx)


# ------------------------------------------------------------------------------------- part e: link
def _timed_all_ranks_us(launch: Callable[[], None], reps: int) -> float:
    """Per-call time of `reps` launches on every rank after a barrier; the slowest rank's (all_reduce MAX)."""
    launch()
    torch.cuda.synchronize()
    dist.barrier()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        launch()
    end.record()
    torch.cuda.synchronize()
    t = torch.tensor([start.elapsed_time(end) * 1e3 / reps], device="cuda")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def measure_link(ctx: Context) -> None:
    """Part e (torchrun, world size >= 2; every rank calls it): peer store/load rates, ping-pong latency, NCCL.

    Peer copies move bf16 through one symmetric buffer of world slots (64 MiB each, 16 MiB with --quick): one
    peer at each program count of LINK_PROGRAMS and the SM count, then SM-count programs spread over all peers."""
    import torch.distributed._symmetric_memory as symm_mem  # deferred: private torch module, needed only here

    rec, sms = ctx.rec, ctx.sms
    rank, world = dist.get_rank(), dist.get_world_size()
    slot_bytes = (16 if ctx.quick else 64) << 20
    slot = slot_bytes // 2
    block = 8192
    buf = symm_mem.empty(world * slot, dtype=torch.bfloat16, device=ctx.device)
    hdl = symm_mem.rendezvous(buf, dist.group.WORLD)
    ptrs = torch.tensor([int(p) for p in hdl.buffer_ptrs], dtype=torch.int64, device=ctx.device)
    buf.fill_(1.0)
    local = torch.randn(slot, device=ctx.device).to(torch.bfloat16)
    torch.cuda.synchronize()
    dist.barrier()

    def rate(programs: int, n_peers: int, store: bool) -> tuple[float, int]:
        nbytes = min(slot_bytes, programs * (8 << 20))  # ~1 ms per call at one program's rate
        epp = nbytes // 2 // programs // block * block
        us = _timed_all_ranks_us(lambda: peer_copy(local, ptrs, rank, world, programs=programs, n_peers=n_peers,
                                                   elems_per_prog=epp, slot_elems=slot, store=store, block=block),
                                 reps=5)
        moved = programs * epp * 2
        return moved / us / 1e3, moved

    progs = sorted({*(QUICK_LINK_PROGRAMS if ctx.quick else LINK_PROGRAMS), sms})
    one = {}
    cases = [(p, s) for p in progs for s in (True, False)]
    for p, store in progress(cases, "e. link, one peer", ctx.main_rank):
        one[p, store], moved = rate(p, 1, store)
        rec.add(f"link_{'store' if store else 'load'}_one_peer_gbps", one[p, store], "GB/s", programs=p,
                bytes=moved, ranks=world, all_ranks_at_once=1)
    every = {}
    for store in (True, False):
        every[store], moved = rate(sms, world - 1, store)
        rec.add(f"link_{'store' if store else 'load'}_all_peers_gbps", every[store], "GB/s", programs=sms,
                peers=world - 1, bytes=moved, ranks=world)
    rec.add("per_block_link_gbps", min(one[1, True], one[1, False]), "GB/s", programs=1,
            store=f"{one[1, True]:.3g}", load=f"{one[1, False]:.3g}", taken="slower_of_store_and_load")
    rec.add("link_gbps", max(every.values()), "GB/s", programs=sms, peers=world - 1,
            store=f"{every[True]:.4g}", load=f"{every[False]:.4g}", taken="faster_of_store_and_load_to_all_peers")

    # --- one-way latency: a flag ping-pong between ranks 0 and 1 (others wait at the barrier)
    flags = symm_mem.empty(16, dtype=torch.int32, device=ctx.device)
    fhdl = symm_mem.rendezvous(flags, dist.group.WORLD)
    fptrs = torch.tensor([int(p) for p in fhdl.buffer_ptrs], dtype=torch.int64, device=ctx.device)
    flags.zero_()
    out = torch.zeros(2, dtype=torch.int64, device=ctx.device)
    warm, iters = 100, 2000 if not ctx.quick else 500
    one_way = []
    for rnd in range(3):
        torch.cuda.synchronize()
        dist.barrier()
        if rank < 2:
            ping_pong(flags, fptrs, 1 - rank, base=rnd * (warm + iters), warm=warm, iters=iters, max_spin=1 << 22,
                      out=out, first=rank == 0)
        torch.cuda.synchronize()
        ns, ok = (int(v) for v in out.tolist())
        if rank == 0:
            if not ok:
                raise RuntimeError("flag ping-pong timed out: rank 1 never answered")
            one_way.append(ns / 1e3 / (2 * iters))
    dist.barrier()
    if rank == 0:
        rec.add("link_latency_us", statistics.median(one_way), "us", method="flag_ping_pong_rank0_rank1",
                rounds=iters, counted="round_trip/2", scope="sys")

    # --- NCCL's fixed cost: a small all_to_all_single, back to back
    inp = torch.ones(world * 256, device=ctx.device, dtype=torch.bfloat16)
    outp = torch.empty_like(inp)
    us = _timed_all_ranks_us(lambda: dist.all_to_all_single(outp, inp), reps=50)
    rec.add("collective_overhead_us", us, "us", method="nccl_all_to_all_single", bytes_per_peer=512, ranks=world)
    del buf, flags
    dist.barrier()
