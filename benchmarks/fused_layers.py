"""Benchmark the fused layer0 / layer1 kernels of one rank in an emulated world on ONE GPU.

Single-GPU emulation: W = EP ranks live on one GPU (kernels.workspace.EmulatedWorld); "peer" buffers are
other tensors of the same GPU, so dispatch and combine traffic is local HBM traffic, not NVLink. The
numbers say what the fusion costs or saves on the compute side (and how layer1 time moves with n_c when
communication is nearly free); they are NOT multi-GPU measurements (experiments.layer_bench under torchrun
measures those).

Per case (model, M, EP and optionally TP: --cases model:M:EP[:TP]; balanced routing, or --routing imbalanced too;
bf16) and for rank 0 (--impls and --nc0 / --nc1 narrow what is timed, e.g. to a validation grid):
  layer0  fused_blocks[nc0]     dispatch by nc0 communication programs + GEMM in one tl kernel
          fused_blocks_gluon[nc0]  the same as nc0 pull programs beside the Gluon GEMM, whose loader waits
                                for the tiles' source ranks (kernels/fused_layer0_gluon.py)
          fused_direct          GEMM tiles load remote rows through peer pointers
          fused_copy_engine     side-stream copy_ of whole source shards + flags, GEMM waits (eager only)
          sequential            index_copy of the rows from each source, then the grouped GEMM
                                (kernels/grouped_gemm.py, B through TMA)
          gemm_alone            the grouped GEMM on rows already in place
  layer1  fused[nc1]            GEMM + top-k reduce + stores into the owners' combine buffers, one tl kernel,
                                nc1 in {4, 8, 16, 28, 32, 48, 64} communication programs
          fused_gluon[nc1]      the same work as the Gluon GEMM on SMs - nc1 programs beside a communication
                                kernel of nc1 programs, and the tail after the GEMM (Policy.l1_tail; note
                                "l1_tail=False" without it) (kernels/fused_layer1_gluon.py)
          sequential            the grouped GEMM, then a torch top-k reduce (index_add in fp32) and
                                index_copy into each owner's combine buffer
          gemm_alone            the grouped GEMM alone
          owner_reduce          rank 0's final reduction of its tokens' slots (single-shot events, median)
Times: median of CUDA-graph replays (`graph`, device time) and of eager calls (`eager`, triton do_bench,
L2 flushed between calls); copy-engine only eager (its flag values change every call, which a graph
replay would freeze). TFLOP/s count real rows; the ceiling is a bf16 torch.matmul measured here. Every row also
carries the mean SM clock and board power nvidia-smi sampled while it was measured (sm_clock_mhz, power_w,
clock_samples; kernels/gpu_clock.py): at the 700 W limit the clock moves with what ran just before.

    python -m benchmarks.fused_layers --out results/fused_layers
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import itertools
import math
import sys
import time
from pathlib import Path

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import owned_range
from comet.core.planner import make_plan
from comet.core.policy import benchmark_policy
from comet.core.routing import make_routing
from comet.core.weights import ExpertWeights, shard_weights
from kernels import grouped_gemm as gg
from kernels.combine import combine_reduce
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.gpu_clock import ClockSampler
from kernels.moe import stage_tokens
from kernels.options import GPU_COMM, CommConfig
from kernels.timing import device_line as _device_line
from kernels.timing import eager_us as _eager_us
from kernels.timing import graph_us as _graph_us
from kernels.workspace import EmulatedWorld

CASES = (("mixtral-8x7b", 4096, 4), ("mixtral-8x7b", 16384, 4), ("phi-3.5-moe", 8192, 4),
         ("qwen2-moe-2.7b", 8192, 4))
NC1 = (4, 8, 16, 28, 32, 48, 64)
NC0 = (8, 16, 32)
NC1_SEND_SWEEP = (16, 28, 64)  # n_c at which --l1-configs are swept
# each layer's two forms (the fused kernels' impl): one tl launch; the Gluon GEMM beside a communication kernel
L0_IMPLS = (("fused_blocks", "triton"), ("fused_blocks_gluon", "gluon"))
L1_IMPLS = (("fused", "triton"), ("fused_gluon", "gluon"))
FIELDS = ["gpu", "model", "tokens_M", "ep", "tp", "routing", "rank", "layer", "activation", "rows", "impl", "nc",
          "block", "time_us", "timing", "tflops", "frac_ceiling", "moved_bytes", "rel_err", "note", "sm_clock_mhz",
          "power_w", "clock_samples"]
HW = HardwareProfile.from_name("h200")


def _ceiling_tflops() -> float:
    a = torch.randn(8192, 4096, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(4096, 14336, device="cuda", dtype=torch.bfloat16)
    us = _eager_us(lambda: a @ b)
    return 2 * 8192 * 4096 * 14336 / us / 1e6


def _rel_err(a, b) -> float:
    a, b = a.double(), b.double()
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp(min=1e-30))


def _weights(model: ModelConfig, seed: int) -> ExpertWeights:
    """Gaussian weights drawn on the GPU (full-size models: drawing on the CPU takes tens of seconds)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    E, N, K = model.experts_E, model.hidden_N, model.ffn_K
    k0 = model.layer0_cols
    w0 = (torch.randn(E, N, k0, device="cuda", generator=g) / math.sqrt(N)).bfloat16()
    w1 = (torch.randn(E, K, N, device="cuda", generator=g) / math.sqrt(K)).bfloat16()
    return ExpertWeights(w0, w1)


def run_case(writer, name: str, M: int, ep: int, ceiling: float, log, l1_configs=({},),
             routing_kind: str = "balanced", sweep_nc=NC1_SEND_SWEEP, l0_configs=({},), clocks=None, tp: int = 1,
             nc0s=NC0, nc1s=NC1, impls=None, with_eager: bool = True) -> None:
    """One case's rows. l1_configs: changes of the GPU's kernels.options.CommConfig (field -> value) swept at
    n_c in sweep_nc; l0_configs: the same for layer0's Gluon form at every n_c; {} is the default. clocks: a
    kernels.gpu_clock.ClockSampler; each row gets the mean SM clock and power since the row before it (its
    measurement and check). tp: tensor parallelism inside the emulated world (W = ep x tp ranks); nc0s, nc1s:
    the n_c of the fused forms; impls: the impl names to time (None: all), e.g. {"gemm_alone",
    "fused_blocks_gluon", "fused_gluon"} for a validation grid; with_eager False: graph replays only."""
    model = ModelConfig.from_name(name)
    par = ParallelConfig(ep=ep, tp=tp)
    W, N = par.world_size, model.hidden_N
    act = model.activation
    routing = make_routing(routing_kind, M, model.experts_E, model.topk, seed=0).to("cuda")
    policy = benchmark_policy(act)
    plan = make_plan(routing, model, par, HW, policy)
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda")
    w = _weights(model, 0)
    shards = [shard_weights(w, par, r) for r in range(W)]
    x = (torch.randn(M, N, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1))).bfloat16()
    stage_tokens(world, x, M)
    r0 = 0
    rp = plan.rank(r0)
    t = rp.trimmed()
    R = int(rp.num_rows)
    owner = plan.token_owner_M.cpu()
    gpu = torch.cuda.get_device_name(0)
    base = {"gpu": gpu, "model": name, "tokens_M": M, "ep": ep, "tp": tp, "routing": routing_kind, "rank": r0,
            "activation": act, "rows": R}

    since = [time.time()]
    label = f"{name:15s} M={M:6d}" + (f" EP={ep} TP={tp}" if tp > 1 else f" EP={ep}")

    def eager(fn):
        return _eager_us(fn) if with_eager else None

    def emit(layer, impl, us, timing, flops, moved=0, nc="", block="", err="", note=""):
        if us is None:  # not measured (eager timings off)
            return
        tf = flops / us / 1e6 if us > 0 else 0.0
        now = time.time()
        clock = clocks.window(since[0], now) if clocks is not None else {"clock_samples": 0}
        since[0] = now
        mhz, watts = clock.get("sm_clock_mhz", math.nan), clock.get("power_w", math.nan)
        writer.writerow({**base, "layer": layer, "impl": impl, "nc": nc, "block": block, "time_us": f"{us:.2f}",
                         "timing": timing, "tflops": f"{tf:.1f}", "frac_ceiling": f"{tf / ceiling:.3f}",
                         "moved_bytes": moved, "rel_err": err, "note": note,
                         "sm_clock_mhz": "" if math.isnan(mhz) else f"{mhz:.0f}",
                         "power_w": "" if math.isnan(watts) else f"{watts:.0f}",
                         "clock_samples": clock["clock_samples"]})
        at = "" if math.isnan(mhz) else f" {mhz:5.0f} MHz {watts:4.0f} W"
        log(f"{label} {layer} {impl:18s} nc={nc!s:>3s} {timing:5s} {us:9.1f} us {tf:6.1f} TFLOP/s{at}")

    # ---------------------------------------------------------------------------- layer0
    w0, w1 = shards[r0].w0_ENK, shards[r0].w1_EKN
    flops0 = 2 * R * N * model.layer0_cols // par.tp
    recv0 = world.buffers(r0).recv_MN
    need = t["recv_token_U"]
    by_src = [(s, need[owner[need] == s].cuda()) for s in range(W) if s != r0]
    by_src = [(s, idx) for s, idx in by_src if idx.numel()]
    moved_blocks = int(need.numel()) * N * 2
    moved_ce = sum(owned_range(M, W, s)[1] - owned_range(M, W, s)[0] for s in range(W) if s != r0) * N * 2
    h_ref = torch.empty(rp.row_token_R.numel(), plan.ffn_local, device="cuda", dtype=torch.bfloat16)

    def gemm0():
        gg.grouped_gemm_layer0(plan, r0, recv0, w0, out_RK=h_ref)  # A, B through TMA where allowed

    def seq0():
        for s, idx in by_src:
            recv0.index_copy_(0, idx, world.buffers(s).recv_MN.index_select(0, idx))
        gemm0()

    def want(impl):
        return impls is None or impl in impls

    gemm0()  # the reference rows
    for impl, fn, moved in (("gemm_alone", gemm0, 0), ("sequential", seq0, moved_blocks)):
        if want(impl):
            emit("l0", impl, _graph_us(fn), "graph", flops0, moved, block=f"128x{policy.block_n0}")
            emit("l0", impl, eager(fn), "eager", flops0, moved, block=f"128x{policy.block_n0}")
    torch.cuda.synchronize()
    href = h_ref[:R].clone()
    for nc, (impl_name, impl) in itertools.product(nc0s, L0_IMPLS):
        for cfg in (l0_configs if impl == "gluon" else ({},)) if want(impl_name) else ():
            p = dataclasses.replace(plan, policy=policy.replace(nc_layer0=nc))
            comm = GPU_COMM.replace(**cfg)
            fn = lambda p=p, impl=impl, comm=comm: fused_layer0(world, p, r0, w0, variant="blocks", impl=impl,
                                                                comm=comm)
            fn()
            err = _rel_err(world.buffers(r0).h_RK[:R], href)
            note = " ".join(f"{k}={v}" for k, v in cfg.items()) or "default config"
            emit("l0", impl_name, _graph_us(fn), "graph", flops0, moved_blocks, nc, err=f"{err:.2e}", note=note)
            emit("l0", impl_name, eager(fn), "eager", flops0, moved_blocks, nc, err=f"{err:.2e}", note=note)
    if want("fused_direct"):
        fn = lambda: fused_layer0(world, plan, r0, w0, variant="direct")
        fn()
        err = _rel_err(world.buffers(r0).h_RK[:R], href)
        emit("l0", "fused_direct", _graph_us(fn), "graph", flops0, moved_blocks, err=f"{err:.2e}")
        emit("l0", "fused_direct", eager(fn), "eager", flops0, moved_blocks, err=f"{err:.2e}")
    if want("fused_copy_engine"):
        fn = lambda: fused_layer0(world, plan, r0, w0, variant="copy-engine")
        fn()
        err = _rel_err(world.buffers(r0).h_RK[:R], href)
        emit("l0", "fused_copy_engine", eager(fn), "eager", flops0, moved_ce, err=f"{err:.2e}",
             note="whole source shards")
    world.check()

    # ---------------------------------------------------------------------------- layer1
    for r in range(W):  # every rank's layer0 output, so every rank's layer1 has real inputs
        fused_layer0(world, plan, r, shards[r].w0_ENK, variant="direct")
    h0 = world.buffers(r0).h_RK[: rp.row_token_R.numel()]
    flops1 = 2 * R * plan.ffn_local * N
    y_ref = torch.empty(rp.row_token_R.numel(), N, device="cuda", dtype=torch.bfloat16)
    reduce1, n_sent = torch_reduce_and_send(world, plan, r0, y_ref)
    moved1 = n_sent * N * 2

    def gemm1():
        gg.grouped_gemm_layer1(plan, r0, h0, w1, out_RN=y_ref)

    def seq1():
        gemm1()
        reduce1()

    gemm1()  # the reference rows
    for impl, fn, moved in (("gemm_alone", gemm1, 0), ("sequential", seq1, moved1)):
        if want(impl):
            emit("l1", impl, _graph_us(fn), "graph", flops1, moved, block="128x128")
            emit("l1", impl, eager(fn), "eager", flops1, moved, block="128x128")
    torch.cuda.synchronize()
    yref = y_ref[:R].clone()
    plans1 = {}  # Policy.l1_comm_rows -> its Plan (layer1's chunks are the Plan's)
    for nc in nc1s:
        for impl_name, impl in L1_IMPLS:
            for cfg in (l1_configs if nc in sweep_nc else ({},)) if want(impl_name) else ():
                changes = dict(cfg)
                rows1 = changes.pop("l1_comm_rows", 0)
                if rows1 not in plans1:
                    plans1[rows1] = plan if rows1 == 0 else make_plan(routing, model, par, HW,
                                                                      policy.replace(l1_comm_rows=rows1))
                p1 = plans1[rows1]
                p = dataclasses.replace(p1, policy=p1.policy.replace(nc_layer1=nc,
                                                                     l1_tail=changes.pop("l1_tail", True)))
                comm = GPU_COMM.replace(**changes)
                fn = lambda p=p, comm=comm, impl=impl: fused_layer1(world, p, r0, w1, comm=comm, impl=impl)
                fn()
                err = _rel_err(world.buffers(r0).y_RN[:R], yref)
                note = " ".join(f"{k}={v}" for k, v in cfg.items()) or "default config"
                emit("l1", impl_name, _graph_us(fn), "graph", flops1, moved1, nc, "128x128", f"{err:.2e}", note)
                emit("l1", impl_name, eager(fn), "eager", flops1, moved1, nc, "128x128", f"{err:.2e}", note)
    world.reset()

    if not want("owner_reduce"):
        return
    # --- owner's reduce: every rank's layer1 once, then rank 0's reduce timed once per round
    times = []
    for _ in range(7):
        for r in range(W):
            fused_layer1(world, plan, r, shards[r].w1_EKN)
        torch.cuda.synchronize()
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        combine_reduce(world, plan, r0, plan.rank(r0).combine_expected_W)
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b) * 1e3)
    world.check()
    n_own = owned_range(M, W, r0)[1] - owned_range(M, W, r0)[0]
    emit("l1", "owner_reduce", sorted(times)[len(times) // 2], "event", 0, n_own * world.sizes.slots * N * 2,
         note="single-shot events, median of 7")


def torch_reduce_and_send(world, plan, rank: int, y: torch.Tensor):
    """The sequential path's layer1 after its GEMM, in torch: each send's rows of y weighted and summed in fp32
    (index_add), then copied into the owners' combine buffers. Returns (the call, the sends it stores)."""
    rp = plan.rank(rank)
    t = rp.trimmed()
    M, W, N = plan.num_tokens, plan.world_size, plan.model.hidden_N
    n_send = int(rp.num_sends)
    rows_by_send = t["rows_by_send_R"].cuda()
    send_of_row = torch.repeat_interleave(torch.arange(n_send), (t["send_row_end_S"] - t["send_row_start_S"])).cuda()
    wts = rp.row_weight_R[rows_by_send]
    slots = world.sizes.slots
    dests = []
    for d in range(W):
        sel = (t["send_dest_S"] == d).nonzero().flatten()
        if sel.numel():
            lo = owned_range(M, W, d)[0]
            dst = (t["send_token_S"][sel] - lo) * slots + t["send_slot_S"][sel]
            dests.append((world.buffers(d).combine_MLN.view(-1, N), sel.cuda(), dst.cuda()))

    def call():
        part = torch.zeros(n_send, N, device="cuda", dtype=torch.float32)
        part.index_add_(0, send_of_row, y[rows_by_send].float() * wts[:, None])
        for comb, sel, dst in dests:
            comb.index_copy_(0, dst, part[sel].bfloat16())

    return call, sum(int(sel.numel()) for _, sel, _ in dests)


BOOL_FIELDS = ("pipelined", "l1_tail", "pull_to_rows")
POLICY_FIELDS = ("l1_tail", "l1_comm_rows")  # the Policy's, not CommConfig's


def parse_comm_changes(text: str) -> dict:
    """'pipelined=0,send_block=16' -> {"pipelined": False, "send_block": 16}, checked by CommConfig; 'default' -> {}.
    l1_tail=0|1 and l1_comm_rows=SENDS are the Policy's fields of those names (the tail of communication programs
    after the GEMM; sends per layer1 chunk, 0: comm_rows)."""
    fields = [f.name for f in dataclasses.fields(CommConfig)] + list(POLICY_FIELDS)
    out = {}
    if text == "default":
        return out
    for kv in text.split(","):
        key, _, value = kv.partition("=")
        if key not in fields or not value.lstrip("-").isdigit():
            raise SystemExit(f"--l1-configs item {kv!r}: use FIELD=INT with FIELD one of {', '.join(fields)}")
        out[key] = bool(int(value)) if key in BOOL_FIELDS else int(value)
    GPU_COMM.replace(**{k: v for k, v in out.items() if k not in POLICY_FIELDS})  # a bad value says what is wrong
    if out.get("l1_comm_rows", 0) < 0:
        raise SystemExit(f"--l1-configs l1_comm_rows={out['l1_comm_rows']}: use a count of sends >= 0 (0: comm_rows)")
    return out


def parse_cases(text: str) -> list[tuple[str, int, int, int]]:
    """'mixtral-8x7b:4096:4,qwen2-moe-2.7b:8192:2:2' -> [(model, M, EP, TP)], TP 1 unless given; a bad item
    raises SystemExit naming it.

        >>> parse_cases("mixtral-8x7b:4096:4,phi-3.5-moe:8192:2:2")
        [('mixtral-8x7b', 4096, 4, 1), ('phi-3.5-moe', 8192, 2, 2)]
    """
    out = []
    for item in text.split(","):
        parts = item.split(":")
        if len(parts) not in (3, 4) or not all(p.isdigit() and int(p) > 0 for p in parts[1:]):
            raise SystemExit(f"--cases item {item!r}: use model:M:EP or model:M:EP:TP with positive integers, "
                             f"e.g. mixtral-8x7b:4096:4 or mixtral-8x7b:8192:2:2")
        try:
            ModelConfig.from_name(parts[0])
        except (KeyError, ValueError) as e:
            raise SystemExit(f"--cases item {item!r}: {e}") from None
        out.append((parts[0], int(parts[1]), int(parts[2]), int(parts[3]) if len(parts) == 4 else 1))
    return out


def _int_list(flag: str, text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise SystemExit(f"{flag} {text!r}: use a comma list of ints, e.g. 4,8,16") from None
    if not values or min(values) < 1:
        raise SystemExit(f"{flag} {text!r}: every value must be >= 1")
    return values


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fused_layers", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/fused_layers", help="output folder")
    default_cases = ",".join(f"{m}:{n}:{e}" for m, n, e in CASES)
    ap.add_argument("--cases", default=None,
                    help=f"comma list model:M:EP or model:M:EP:TP (default: {default_cases})")
    ap.add_argument("--nc0", default=",".join(map(str, NC0)), help="layer0 n_c of the fused forms (%(default)s)")
    ap.add_argument("--nc1", default=",".join(map(str, NC1)), help="layer1 n_c of the fused forms (%(default)s)")
    ap.add_argument("--impls", default=None,
                    help="comma list of the impl names to time (default all), e.g. "
                         "gemm_alone,fused_blocks_gluon,fused_gluon for a validation grid")
    ap.add_argument("--no-eager", action="store_true", help="graph replays only (no eager timings)")
    ap.add_argument("--tag", default=None, help="file name stem (default h200_<date>)")
    ap.add_argument("--l1-configs", default="",
                    help=f"layer1 communication configs swept at n_c in {NC1_SEND_SWEEP}, ';'-separated, each a "
                         f"comma list of kernels.options.CommConfig fields FIELD=INT (or the Policy's l1_tail, "
                         f"l1_comm_rows), or 'default' (e.g. 'default;send_block=16;l1_comm_rows=256;l1_tail=0'); "
                         f"default: "
                         f"the default alone")
    ap.add_argument("--l0-configs", default="",
                    help="layer0 communication configs of the Gluon form (pull_rows, pull_cols, num_warps), swept at "
                         "every layer0 n_c, as --l1-configs; default: the default alone")
    ap.add_argument("--l1-sweep-nc", default=",".join(map(str, NC1_SEND_SWEEP)),
                    help="comma list of the n_c at which --l1-configs are swept (default %(default)s)")
    ap.add_argument("--routing", nargs="+", default=["balanced"], choices=["balanced", "imbalanced"],
                    help="routings of every case (imbalanced: expert load-share std 0.032, the paper's production "
                         "figure)")
    a = ap.parse_args(argv)
    l1_configs = [parse_comm_changes(c) for c in a.l1_configs.split(";") if c] or [{}]
    l0_configs = [parse_comm_changes(c) for c in a.l0_configs.split(";") if c] or [{}]
    if any(k in c for c in l0_configs for k in POLICY_FIELDS):
        raise SystemExit(f"--l0-configs: {' and '.join(POLICY_FIELDS)} are layer1 fields; give them in --l1-configs")
    sweep_nc = _int_list("--l1-sweep-nc", a.l1_sweep_nc)
    nc0s, nc1s = _int_list("--nc0", a.nc0), _int_list("--nc1", a.nc1)
    known = {"gemm_alone", "sequential", "fused_direct", "fused_copy_engine", "owner_reduce",
             *(n for n, _ in L0_IMPLS), *(n for n, _ in L1_IMPLS)}
    impls = None if a.impls is None else set(a.impls.split(","))
    if impls is not None and not impls <= known:
        raise SystemExit(f"--impls: unknown {', '.join(sorted(impls - known))}; known: {', '.join(sorted(known))}")
    cases = [(*c, 1) for c in CASES] if a.cases is None else parse_cases(a.cases)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = a.tag or f"h200_{datetime.date.today().isoformat()}"
    t0 = time.time()
    dev = _device_line()
    ceiling = _ceiling_tflops()
    lines = [dev, f"bf16 ceiling (torch.matmul 8192x4096x14336): {ceiling:.1f} TFLOP/s",
             "single-GPU emulated world: peer traffic is local HBM, not NVLink"]

    def log(s):
        print(s, flush=True)
        lines.append(s)

    for line in lines:
        print(line, flush=True)
    path = out / f"{stem}.csv"
    with path.open("w", newline="") as f:
        f.write(f"# {dev}\n# bf16 ceiling: {ceiling:.1f} TFLOP/s\n# single-GPU emulated world (peer traffic is "
                f"local HBM); command: python -m benchmarks.fused_layers {' '.join(sys.argv[1:])}\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        with ClockSampler() as clocks:
            for (name, M, ep, tp), kind in itertools.product(cases, a.routing):
                try:
                    run_case(writer, name, M, ep, ceiling, log, l1_configs, kind, sweep_nc, l0_configs, clocks, tp,
                             nc0s, nc1s, impls, not a.no_eager)
                except Exception as e:  # keep the other cases' rows; the log says what failed
                    log(f"FAILED {name} M={M} EP={ep} TP={tp} {kind}: {type(e).__name__}: {e}")
                f.flush()
                torch.cuda.empty_cache()
    log(f"wrote {path} in {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
