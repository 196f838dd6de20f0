"""Single MoE layer on real GPUs: comet (the fused kernels) against the sequential and chunked baselines
(comet/layer/gpu_baselines.py), same routing, same weights, and the floor max(GEMM-only, communication-only)
measured in the same run.

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
        torchrun --nproc-per-node=4 -m experiments.layer_bench                  (the full grid, 4 GPUs)
    python -m experiments.layer_bench --emulated --quick                         (one GPU, smoke test)

Grid (defaults): the three paper models (gelu, as the paper runs them), EP x TP in {W x 1, W/2 x 2} with EP in
{2, 4} (W = the torchrun world size), M in {2048, 4096, 8192, 16384, 32768} tokens of the whole group, routing
balanced and imbalanced (load-share std 0.032, the paper's production figure). Per configuration:
    comet           moe_forward_fused with a prebuilt Plan, layer0 "blocks", n_c of layer1 the best of --nc1
    comet+plan      the same with the Plan built inside the call (what CometMoE.forward does, less the gate)
    plan            make_plan alone
    sequential      all-to-all dispatch, grouped GEMM, activation, grouped GEMM, top-k reduce, all-to-all combine
    chunked[Q]      Q token chunks, communication on a side stream overlapping the previous chunk's GEMMs;
                    chunked_best is the best Q of --chunks (CSV column chunked_best_C)
    gemm_only       both grouped GEMMs alone on rows already received (the baselines' GEMMs)
    comm_only       the sequential baseline's dispatch and combine collectives alone (NCCL; its ~50-80 us fixed
                    cost per collective is part of it, docs/GPU_FACTS.md)
    floor           max(gemm_only, comm_only)
Times are medians over --runs timed replays (CUDA graphs; events around each replay) after --warmup replays,
per rank, then the maximum over ranks. The baselines' metadata (split sizes: one host sync) is prepared
before timing, as is comet's Plan in the `comet` column, so no column pays a host sync. A column whose CUDA-
graph capture fails is timed eagerly with events and says so in `note`.
Outputs of the three systems are compared with comet's (max relative norm difference, bf16).

--emulated runs all ranks in this process on one GPU (kernels.workspace.EmulatedWorld): every "link" is a
local copy and the ranks' work runs one after another, so the numbers check the harness, not the paper's
claims. CSV: results/layer_bench/<gpu>-{w<W>|emulated}_<date>.csv, and a _summary.txt next to it.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import math
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import benchmark_policy
from comet.core.routing import make_routing

REPO = Path(__file__).resolve().parents[1]
MODELS = ("mixtral-8x7b", "phi-3.5-moe", "qwen2-moe-2.7b")
TOKENS = (2048, 4096, 8192, 16384, 32768)
ROUTINGS = ("balanced", "imbalanced")
COLUMNS = ["gpu", "world_size", "emulated", "model", "activation", "tokens_M", "ep", "tp", "routing", "std",
           "dispatch", "runs", "comet_us", "comet_nc1", "comet_plan_incl_us", "plan_us", "sequential_us",
           "chunked_best_us", "chunked_best_C", "chunked_us_by_C", "gemm_only_us", "comm_only_us", "floor_us",
           "speedup_vs_sequential", "speedup_vs_chunked", "comet_over_floor", "max_rel_diff_vs_comet", "note", "seed"]
NVLS_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m experiments.layer_bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--emulated", action="store_true", help="all ranks in this process on one GPU (no torchrun)")
    ap.add_argument("--parallel", nargs="+", metavar="EPxTP",
                    help="e.g. 4x1 2x2 (default: EP in {2, 4} with EP*TP = world size; emulated: 2x1)")
    ap.add_argument("--models", nargs="+", default=list(MODELS), help=f"default {' '.join(MODELS)}")
    ap.add_argument("--activation", choices=("gelu", "swiglu"), help="override the models' activation (gelu)")
    ap.add_argument("--tokens", nargs="+", type=int, default=list(TOKENS), help="M, tokens of the whole group")
    ap.add_argument("--routing", nargs="+", default=list(ROUTINGS), choices=ROUTINGS)
    ap.add_argument("--std", type=float, default=0.032, help="load-share std of the imbalanced routing")
    ap.add_argument("--chunks", nargs="+", type=int, default=[2, 4, 8], help="Q values of the chunked baseline")
    ap.add_argument("--nc1", nargs="+", type=int, default=[16, 28], help="comet's layer1 n_c candidates")
    ap.add_argument("--dispatch", default="all-to-all", choices=("all-to-all", "all-gather"),
                    help="dispatch/combine form of the baselines (comet's Plan uses all-to-all)")
    ap.add_argument("--runs", type=int, default=50, help="timed replays per measurement (>= 50 for results)")
    ap.add_argument("--warmup", type=int, default=10, help="untimed replays before timing")
    ap.add_argument("--timing", default="graph", choices=("graph", "events"),
                    help="graph: CUDA-graph replays; events: eager calls")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(REPO / "results" / "layer_bench"), help="output directory")
    ap.add_argument("--quick", action="store_true",
                    help="smoke grid: mixtral, M=2048, balanced, chunks 2 4, n_c 28 (2x1 when emulated)")
    a = ap.parse_args(argv)
    if a.quick:
        a.models, a.tokens, a.routing, a.chunks, a.nc1 = ["mixtral-8x7b"], [2048], ["balanced"], [2, 4], [28]
    if a.runs < 1 or a.warmup < 0:
        ap.error("--runs must be >= 1 and --warmup >= 0")
    return a


def _fail(msg: str) -> None:
    print(f"layer_bench: {msg}", file=sys.stderr)
    sys.exit(2)


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """Medians of CUDA-graph replays (or eager calls), per rank, maximum over ranks."""

    def __init__(self, runs: int, warmup: int, mode: str, group_sync):
        self.runs, self.warmup, self.mode, self.group_sync = runs, warmup, mode, group_sync
        self.notes: list[str] = []

    def __call__(self, name: str, fn) -> float:
        fn()  # compile / autotune outside any capture
        torch.cuda.synchronize()
        self.group_sync()
        step, graph = fn, None
        if self.mode == "graph":
            try:
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph):
                    fn()
                step = graph.replay
            except Exception as e:  # any capture failure falls back to eager timing, noted in the CSV
                torch.cuda.synchronize()
                self.notes.append(f"{name}: eager ({type(e).__name__})")
                graph, step = None, fn
        for _ in range(self.warmup):
            step()
        torch.cuda.synchronize()
        self.group_sync()
        ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.runs)]
        for start, end in ev:
            start.record()
            step()
            end.record()
        torch.cuda.synchronize()
        med_us = statistics.median(s.elapsed_time(e) for s, e in ev) * 1e3
        del graph
        return self.group_sync(med_us)


def _group_sync_fn(dist_on: bool):
    if not dist_on:
        return lambda v=None: v

    import torch.distributed as dist

    def sync(v=None):
        if v is None:
            dist.barrier()
            return None
        t = torch.tensor([v], dtype=torch.float64, device="cuda")
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)

    return sync


# --------------------------------------------------------------------------------------------- the run
def _parallels(a, W: int) -> list[ParallelConfig]:
    if a.parallel:
        out = []
        for s in a.parallel:
            try:
                ep, tp = (int(v) for v in s.lower().split("x"))
            except ValueError:
                _fail(f"--parallel {s!r}: write EPxTP, e.g. 4x1 or 2x2")
            out.append(ParallelConfig(ep=ep, tp=tp))
    elif a.emulated:
        out = [ParallelConfig(ep=2)]
    else:
        out = [ParallelConfig(ep=ep, tp=W // ep) for ep in (4, 2) if W % ep == 0 and W // ep <= 2]
    if not a.emulated:
        bad = [f"{p.ep}x{p.tp}" for p in out if p.world_size != W]
        if bad:
            _fail(f"--parallel {bad}: EP*TP must equal the torchrun world size {W}")
    if not out:
        _fail(f"no EP x TP with EP in {{2, 4}} fits {W} ranks; pass --parallel")
    return out


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    diff = torch.linalg.vector_norm(a.float() - b.float())
    return float(diff / torch.linalg.vector_norm(b.float()).clamp(min=1e-30))


def run_config(layer, model, par, M, routing_kind, a, timer, owned) -> dict:
    """All measurements of one (model, EP x TP, M, routing) on an existing CometMoE (its weights, workspace,
    collectives). timer(name, fn) -> microseconds; a: the parsed arguments."""
    from comet.layer.gpu_baselines import prepare
    from kernels.moe import moe_forward_fused

    W, dev = par.world_size, layer.device
    routing = make_routing(routing_kind, M, model.experts_E, model.topk, seed=a.seed, std=a.std).to(dev)
    g = torch.Generator(device=dev).manual_seed(a.seed + 1)
    x_all = torch.randn(M, model.hidden_N, device=dev, generator=g).to(layer.dtype)
    x = x_all if layer.emulated else x_all[slice(*owned(M, W, layer.ranks[0]))].contiguous()
    shards = layer.rank_shards()
    ws, runner, ranks = layer.workspace, layer.runner, layer.ranks
    base = layer.policy
    outs = {}

    # --- comet: prebuilt plan, best n_c of layer1
    comet_us, best_nc = math.inf, None
    for nc in a.nc1:
        pol = base.replace(nc_layer1=nc)
        plan = make_plan(routing, model, par, layer.hardware, pol, ranks=list(ranks))
        out = torch.empty_like(x)
        us = timer(f"comet nc={nc}", lambda pol=pol, plan=plan, out=out: moe_forward_fused(
            ws, x, routing, shards, model, par, pol, plan=plan, out_MN=out))
        outs[f"comet{nc}"] = out
        if us < comet_us:
            comet_us, best_nc = us, nc
    pol = base.replace(nc_layer1=best_nc)
    out = torch.empty_like(x)
    plan_incl_us = timer("comet+plan", lambda: moe_forward_fused(ws, x, routing, shards, model, par, pol, out_MN=out))
    plan_us = timer("plan", lambda: make_plan(routing, model, par, layer.hardware, pol, ranks=list(ranks)))

    # --- baselines (metadata prepared outside the timing: one host sync each)
    seq_metas = prepare(routing, model, par, ranks, chunks=1, form=a.dispatch, policy=pol, hardware=layer.hardware)
    out_seq = torch.empty_like(x)
    seq_us = timer("sequential", lambda: runner.forward(seq_metas, x, shards, out=out_seq))
    outs["sequential"] = out_seq
    chunked = {}
    for Q in a.chunks:
        metas = prepare(routing, model, par, ranks, chunks=Q, form=a.dispatch, policy=pol, hardware=layer.hardware)
        out_c = torch.empty_like(x)
        chunked[Q] = timer(f"chunked Q={Q}", lambda metas=metas, out_c=out_c: runner.forward(
            metas, x, shards, overlap=True, out=out_c))
        outs[f"chunked{Q}"] = out_c
    best_Q = min(chunked, key=chunked.get) if chunked else None

    # --- the floor: GEMMs alone on received rows; the collectives alone on ready partial sums
    meta = seq_metas[0]
    x_own = {r: x_all[slice(*owned(M, W, r))] for r in ranks}
    recv = runner.dispatch(meta, x_own)
    partial = runner.compute(meta, recv, shards)
    gemm_us = timer("gemm_only", lambda: runner.compute(meta, recv, shards, reduce=False))
    out_comm = {r: torch.empty(owned(M, W, r)[1] - owned(M, W, r)[0], model.hidden_N, dtype=x.dtype, device=dev)
                for r in ranks}

    def comm_only():
        runner.dispatch(meta, x_own)
        runner.combine(meta, partial, out_comm)

    comm_us = timer("comm_only", comm_only)
    floor_us = max(gemm_us, comm_us)

    ref = outs.pop(f"comet{best_nc}")
    rel = max((_rel(o, ref) for o in outs.values()), default=0.0)
    return {
        "model": model.name, "activation": model.activation, "tokens_M": M, "ep": par.ep, "tp": par.tp,
        "routing": routing_kind, "std": a.std if routing_kind == "imbalanced" else 0.0, "seed": a.seed,
        "dispatch": a.dispatch,
        "runs": a.runs, "comet_us": f"{comet_us:.1f}", "comet_nc1": best_nc,
        "comet_plan_incl_us": f"{plan_incl_us:.1f}", "plan_us": f"{plan_us:.1f}", "sequential_us": f"{seq_us:.1f}",
        "chunked_best_us": f"{chunked[best_Q]:.1f}" if chunked else "", "chunked_best_C": best_Q or "",
        "chunked_us_by_C": ";".join(f"{Q}:{t:.1f}" for Q, t in chunked.items()),
        "gemm_only_us": f"{gemm_us:.1f}", "comm_only_us": f"{comm_us:.1f}", "floor_us": f"{floor_us:.1f}",
        "speedup_vs_sequential": f"{seq_us / comet_us:.3f}",
        "speedup_vs_chunked": f"{chunked[best_Q] / comet_us:.3f}" if chunked else "",
        "comet_over_floor": f"{comet_us / floor_us:.3f}", "max_rel_diff_vs_comet": f"{rel:.2e}",
    }


def summary(rows: list[dict], device_line: str, command: str) -> str:
    """Geometric-mean speedups, share of configurations beating the best chunked, distance to the floor."""
    if not rows:
        return "no rows"
    sp_seq = [float(r["speedup_vs_sequential"]) for r in rows]
    sp_ch = [float(r["speedup_vs_chunked"]) for r in rows if r["speedup_vs_chunked"]]
    over = [float(r["comet_over_floor"]) for r in rows]
    gm = math.exp(statistics.fmean(math.log(v) for v in sp_seq))
    lines = [f"device: {device_line}", f"command: {command}", f"configurations: {len(rows)}",
             f"comet vs sequential: geometric mean speedup {gm:.3f} (goal >= 1.3), min {min(sp_seq):.3f}, "
             f"max {max(sp_seq):.3f}"]
    if sp_ch:
        lines.append(f"comet faster than the best chunked setting in {sum(v > 1 for v in sp_ch)}/{len(sp_ch)} "
                     f"configurations ({100 * sum(v > 1 for v in sp_ch) / len(sp_ch):.0f}%, goal 90%); geometric "
                     f"mean speedup {math.exp(statistics.fmean(math.log(v) for v in sp_ch)):.3f}")
    lines.append(f"comet / floor: median {statistics.median(over):.3f}, max {max(over):.3f} (goal <= 1.15); within "
                 f"1.15 in {sum(v <= 1.15 for v in over)}/{len(over)}")
    lines.append("")
    lines.append(f"{'model':15s} {'M':>6s} {'EPxTP':>5s} {'routing':10s} {'comet':>9s} {'seq':>9s} {'chunked':>9s} "
                 f"{'floor':>9s} {'x seq':>6s} {'x chk':>6s} {'/floor':>6s}")
    for r in rows:
        lines.append(f"{r['model']:15s} {r['tokens_M']:>6} {r['ep']}x{r['tp']:<3} {r['routing']:10s} "
                     f"{r['comet_us']:>9s} {r['sequential_us']:>9s} {r['chunked_best_us']:>9s} {r['floor_us']:>9s} "
                     f"{r['speedup_vs_sequential']:>6s} {r['speedup_vs_chunked']:>6s} {r['comet_over_floor']:>6s}")
    return "\n".join(lines)


def main(argv=None) -> None:
    a = parse_args(argv)
    if not torch.cuda.is_available():
        _fail("needs CUDA GPUs and found none (this is a CPU-only machine?): run it on the GPU machine with "
              "torchrun --nproc-per-node=N, or with --emulated on one GPU; the CPU tests are tests/test_layer*.py")
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if a.emulated and world_env > 1:
        _fail("--emulated runs every rank in one process: launch it with python, not torchrun")
    if not a.emulated and world_env < 2:
        _fail("launch with torchrun --nproc-per-node=N (N >= 2 GPUs), or pass --emulated for one GPU")
    from tqdm import tqdm

    from comet.core.ownership import owned_range
    from comet.layer.comet_moe import CometMoE

    dist_on = not a.emulated
    rank = 0
    if dist_on:
        import torch.distributed as dist

        missing = {k: v for k, v in NVLS_ENV.items() if os.environ.get(k) != v}
        if missing:
            _fail(f"export {' '.join(f'{k}={v}' for k, v in NVLS_ENV.items())} before torchrun (NVLS/multicast "
                  f"must stay off: docs/GPU_FACTS.md)")
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
        rank = dist.get_rank()
    W = world_env  # processes (1 when emulated: a configuration's ranks are par.world_size)
    timer = Timer(a.runs, a.warmup, a.timing, _group_sync_fn(dist_on))
    p = torch.cuda.get_device_properties(torch.cuda.current_device())
    gpu = p.name.replace("NVIDIA ", "").replace(" ", "-")
    device_line = (f"{p.name} x{W}{' (one GPU, emulated ranks)' if a.emulated else ''} ({p.multi_processor_count} "
                   f"SMs), torch {torch.__version__}, triton {__import__('triton').__version__}, CUDA "
                   f"{torch.version.cuda}, python {platform.python_version()}")
    command = "python -m experiments.layer_bench " + " ".join(sys.argv[1:] if argv is None else argv)
    parallels = _parallels(a, W)
    grid = [(name, par, M, rk) for name in a.models for par in parallels for M in a.tokens for rk in a.routing]
    rows = []
    out = Path(a.out)
    stem = f"{gpu.lower()}-{'emulated' if a.emulated else f'w{W}'}_{datetime.date.today().isoformat()}"
    partial = None  # rank 0 writes each row as it comes (a run cut short keeps what it measured)
    if rank == 0:
        out.mkdir(parents=True, exist_ok=True)
        partial = open(out / f"{stem}_partial.csv", "w", newline="")
        partial_w = csv.DictWriter(partial, fieldnames=COLUMNS)
        partial_w.writeheader()
    bar = tqdm(total=len(grid), disable=rank != 0, desc="layer_bench")
    for name in a.models:
        model = ModelConfig.from_name(name, **({"activation": a.activation} if a.activation else {}))
        for par in parallels:
            if model.experts_E % par.ep or model.ffn_K % par.tp:
                bar.update(len(a.tokens) * len(a.routing))
                continue
            policy = benchmark_policy(model.activation, nc_layer1=a.nc1[0])
            layer = CometMoE(model, par, world="emulated" if a.emulated else "process-group",
                             capacity_tokens=max(a.tokens), dtype=torch.bfloat16, policy=policy)
            for M in a.tokens:
                if M % par.world_size:
                    _fail(f"M={M} is not divisible by the {par.world_size} ranks (every rank holds M / W tokens)")
                for rk in a.routing:
                    timer.notes.clear()
                    row = run_config(layer, model, par, M, rk, a, timer, owned_range)
                    row.update(gpu=gpu, world_size=par.world_size, emulated=a.emulated, note="; ".join(timer.notes))
                    rows.append(row)
                    if partial is not None:
                        partial_w.writerow(row)
                        partial.flush()
                    bar.update(1)
                    bar.set_postfix_str(f"{name} M={M} {par.ep}x{par.tp} {rk}: x{row['speedup_vs_sequential']} "
                                        f"vs seq")
                    torch.cuda.empty_cache()
            layer.check()
            del layer
            torch.cuda.empty_cache()
    bar.close()
    if rank == 0:
        partial.close()
        (out / f"{stem}_partial.csv").unlink()
        with open(out / f"{stem}.csv", "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=COLUMNS)
            w.writeheader()
            w.writerows(rows)
        text = summary(rows, device_line, command)
        (out / f"{stem}_summary.txt").write_text(text + "\n")
        print(text)
        print(f"wrote {out / stem}.csv and {stem}_summary.txt")
    if dist_on:
        import torch.distributed as dist

        dist.destroy_process_group()


if __name__ == "__main__":
    main()
