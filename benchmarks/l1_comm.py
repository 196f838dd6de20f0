"""Layer1's communication programs alone, as the tail after the GEMM finds them, on ONE GPU (emulated world).

What a communication program moves per second, without the GEMM beside it: for each case (model, M, EP;
balanced or imbalanced routing, bf16) rank 0's layer1 runs once (the intermediate y and every column block's
tile count are then real), and the communication kernel of kernels/fused_layer1_gluon.py is timed alone with
every column block counted, over variants of one knob at a time against a base shape (BASE: 32 sends a step,
8 warps, one program per SM: the only shape before 2026-12-04; knobs: CommConfig send_block, num_warps,
pipelined; the Plan's layer1 chunk size, column comm_rows: Policy.l1_comm_rows, sends per item; the release's
scope; programs from 4 to two per SM). Each variant's combine buffers are checked bitwise against the fused
layer's.

Bytes per call: y rows read (rows x N x 2) plus partial sums stored (sends x N x 2). Reported: time, GB/s in all
and per program, the fraction of the HBM copy rate measured here (a device-to-device copy of the same bytes),
and the ratio to torch's reduce of the same rows in the same process (index_add in fp32 and index_copy into the
owners: the sequential path's second half). Times: CUDA-graph replays of (set the counts, launch), less the
replays of setting the counts alone.

    python -m benchmarks.l1_comm --out results/l1_comm
"""

from __future__ import annotations

import argparse
import csv
import datetime
import itertools
import sys
import time
from pathlib import Path

import torch

from benchmarks.fused_layers import HW, _weights, torch_reduce_and_send
from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import benchmark_policy
from comet.core.routing import make_routing
from comet.core.weights import shard_weights
from kernels import fused_layer1_gluon
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.moe import stage_tokens
from kernels.options import GPU_COMM
from kernels.timing import device_line, graph_us
from kernels.workspace import EmulatedWorld

CASES = (("qwen2-moe-2.7b", 8192, 4), ("mixtral-8x7b", 4096, 4), ("phi-3.5-moe", 8192, 4))
BASE = {"programs": 132, "send_block": 32, "num_warps": 8, "pipelined": 1, "comm_rows": 64, "scope": "sys"}
SWEEP = {"programs": (4, 16, 32, 66, 264), "send_block": (16, 64), "num_warps": (4, 16), "pipelined": (0,),
         "comm_rows": (128, 256), "scope": ("gpu",)}
FIELDS = ["gpu", "model", "tokens_M", "ep", "routing", "rows", "sends", "items", *BASE, "varied", "time_us",
          "moved_bytes", "gbps", "gbps_per_program", "frac_copy", "over_torch", "bitwise_equal"]


def variants(sms: int, knobs=tuple(SWEEP)):
    """The base (BASE), then each knob of SWEEP in `knobs` changed alone (programs 132 read as this GPU's SM count)."""
    base = dict(BASE, programs=sms)
    yield "base", base
    for knob in knobs:
        for v in SWEEP[knob]:
            if knob == "programs":
                v = v * sms // 132
            yield knob, dict(base, **{knob: v})


def grid_variants(sms: int, text: str):
    """--grid 'send_block=32,64;num_warps=4,8;per_sm=1,2': every combination, the rest as BASE (per_sm: programs
    per SM, i.e. programs = per_sm x SMs; programs=N sets the count itself)."""
    axes = []
    for part in filter(None, text.split(";")):
        key, _, values = part.partition("=")
        if key not in (*BASE, "per_sm") or not values:
            raise SystemExit(f"--grid item {part!r}: use KNOB=V1,V2 with KNOB one of {', '.join((*BASE, 'per_sm'))}")
        conv = str if key == "scope" else int
        axes.append([(key, conv(v)) for v in values.split(",")])
    for combo in itertools.product(*axes):
        v = dict(BASE, programs=sms)
        for key, value in combo:
            if key == "per_sm":
                v["programs"] = value * sms
            else:
                v[key] = value
        yield "grid", v


def _copy_gbps(nbytes: int) -> float:
    src = torch.empty(nbytes // 4, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    return 2 * src.numel() / graph_us(lambda: dst.copy_(src)) / 1e3


def run_case(writer, name: str, M: int, ep: int, routing_kind: str, log, knobs=tuple(SWEEP), grid="") -> None:
    model = ModelConfig.from_name(name)
    par = ParallelConfig(ep=ep)
    W, N = par.world_size, model.hidden_N
    routing = make_routing(routing_kind, M, model.experts_E, model.topk, seed=0).to("cuda")
    policy = benchmark_policy(model.activation)
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda")
    w = _weights(model, 0)
    shards = [shard_weights(w, par, r) for r in range(W)]
    x = torch.randn(M, N, device="cuda", generator=torch.Generator(device="cuda").manual_seed(1)).bfloat16()
    stage_tokens(world, x, M)
    plans = {}

    def plan_for(comm_rows):
        if comm_rows not in plans:
            plans[comm_rows] = make_plan(routing, model, par, HW, policy.replace(l1_comm_rows=comm_rows))
        return plans[comm_rows]

    plan = plan_for(BASE["comm_rows"])
    for r in range(W):
        fused_layer0(world, plan, r, shards[r].w0_ENK, variant="direct")
    for d in range(W):  # (what rank 0 does not write stays NaN, in the reference and in every variant)
        world.buffers(d).combine_MLN.fill_(float("nan"))
    fused_layer1(world, plan, 0, shards[0].w1_EKN)  # y, and the reference combine buffers
    world.check()
    reference = [world.buffers(d).combine_MLN.clone() for d in range(W)]
    rp = plan.rank(0)
    R, S = int(rp.num_rows), int(rp.num_sends)
    y = world.buffers(0).y_RN[: rp.row_token_R.numel()]
    moved = (R + S) * N * 2
    copy_gbps = _copy_gbps(moved)

    torch_reduce, _ = torch_reduce_and_send(world, plan, 0, y)  # the sequential path after its GEMM
    torch_us = graph_us(torch_reduce)
    base = {"gpu": torch.cuda.get_device_name(0), "model": name, "tokens_M": M, "ep": ep, "routing": routing_kind,
            "rows": R, "sends": S}
    log(f"{name} M={M} {routing_kind}: {R} rows, {S} sends; torch reduce {torch_us:.1f} us; copy {copy_gbps:.0f} GB/s")
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for varied, v in grid_variants(sms, grid) if grid else variants(sms, knobs):
        try:
            row = _measure(world, plan_for(v["comm_rows"]), y, v, reference, moved, copy_gbps, torch_us)
        except Exception as e:  # one variant the kernels do not take: say so, go on with the others
            log(f"  FAILED {varied} {v}: {type(e).__name__}: {e}")
            continue
        writer.writerow({**base, **v, **row, "varied": varied})
        log(f"  {varied:10s} {v} items={row['items']}: {row['time_us']} us {row['gbps']} GB/s "
            f"({row['gbps_per_program']} per program) {'equal' if row['bitwise_equal'] else 'DIFFERS'}")
    world.reset()


def _measure(world, p, y, v, reference, moved, copy_gbps, torch_us) -> dict:
    """One variant v: launched once and checked against the reference combine buffers, then timed."""
    lay = world.layout
    flags = world.buffers(0).flags_F
    W = p.world_size
    counts = p.rank(0).l1_tiles_per_col.to(device=flags.device, dtype=torch.int32).reshape(-1)[:1]
    counts = counts.expand(p.l1_col_blocks).contiguous()
    comm = GPU_COMM.replace(send_block=v["send_block"], num_warps=v["num_warps"], pipelined=bool(v["pipelined"]))

    def set_counts(p=p, counts=counts):
        flags[lay.l1_col: lay.l1_col + p.l1_col_blocks].copy_(counts)

    def call(p=p, comm=comm, v=v, set_counts=set_counts):
        set_counts()
        fused_layer1_gluon.launch_comm(world, p, 0, y, programs=v["programs"], total_programs=v["programs"],
                                       comm=comm, send_block=v["send_block"], max_spin=world.max_spin,
                                       signal_scope=v["scope"])

    for d in range(W):
        world.buffers(d).combine_MLN.fill_(float("nan"))
    call()
    world.check()
    equal = all(torch.equal(world.buffers(d).combine_MLN.view(torch.uint8), reference[d].view(torch.uint8))
                for d in range(W))
    us = max(graph_us(call) - graph_us(set_counts), 1e-3)
    gbps = moved / us / 1e3
    return {"items": int(p.rank(0).num_l1_chunks) * p.l1_col_blocks, "time_us": f"{us:.2f}",
            "moved_bytes": moved, "gbps": f"{gbps:.1f}", "gbps_per_program": f"{gbps / v['programs']:.2f}",
            "frac_copy": f"{gbps / copy_gbps:.3f}", "over_torch": f"{us / torch_us:.3f}",
            "bitwise_equal": int(equal)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.l1_comm", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/l1_comm", help="output folder")
    ap.add_argument("--tag", default=None, help="file name stem (default h200_<date>)")
    ap.add_argument("--cases", default=None, help="comma list model:M:ep (default: "
                    + ",".join(f"{m}:{n}:{e}" for m, n, e in CASES) + ")")
    ap.add_argument("--routing", nargs="+", default=["balanced", "imbalanced"], choices=["balanced", "imbalanced"])
    ap.add_argument("--vary", default=",".join(SWEEP), help="comma list of the knobs swept (default %(default)s)")
    ap.add_argument("--grid", default="", help="instead of --vary, every combination of the values given, e.g. "
                    "'send_block=32,64;num_warps=4,8;per_sm=1,2'")
    a = ap.parse_args(argv)
    knobs = tuple(k for k in a.vary.split(",") if k)
    if not set(knobs) <= set(SWEEP):
        raise SystemExit(f"--vary {a.vary!r}: knobs are {', '.join(SWEEP)}")
    try:
        cases = CASES if a.cases is None else [(c.split(":")[0], int(c.split(":")[1]), int(c.split(":")[2]))
                                               for c in a.cases.split(",")]
    except (IndexError, ValueError):
        raise SystemExit(f"--cases {a.cases!r}: use model:M:ep items, e.g. qwen2-moe-2.7b:8192:4") from None
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks.l1_comm times GPU kernels: run it on a machine with a CUDA GPU")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{a.tag or 'h200_' + datetime.date.today().isoformat()}.csv"
    dev = device_line()
    print(dev, flush=True)
    t0 = time.time()
    with path.open("w", newline="") as f:
        f.write(f"# {dev}\n# single-GPU emulated world (peer traffic is local HBM); command: python -m "
                f"benchmarks.l1_comm {' '.join(sys.argv[1:])}\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for (name, M, ep) in cases:
            for kind in a.routing:
                try:
                    run_case(writer, name, M, ep, kind, lambda s: print(s, flush=True), knobs, a.grid)
                except Exception as e:  # keep the other cases' rows; the log says what failed
                    print(f"FAILED {name} M={M} EP={ep} {kind}: {type(e).__name__}: {e}", flush=True)
                f.flush()
                torch.cuda.empty_cache()
    print(f"wrote {path} in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
