"""Does layer0's activation cost tensor-core time or power? SM clock and board power while a kernel runs.

For one layer0 case (default Mixtral-8x7B, M=16384, balanced, rank 0 of EP=4), each implementation is
replayed from a CUDA graph for `--seconds` while nvidia-smi samples the SM clock and power every 50 ms:
    gluon_gelu / gluon_none    kernels/gluon_gemm.py with and without the (deferred, overlapped) gelu
    gluon_gelu_fast            the same with fast_gelu=True (kernels/activations.py's fitted form)
    gluon_gelu_packed          the fitted form on bf16 pairs (fast_gelu="packed")
    triton_gelu / triton_none  kernels/grouped_gemm.py (gelu in the register epilogue)
    cublas_loop                torch.mm per expert on pre-gathered rows (no activation)
    cublas_gelu_loop           cuBLASLt with its gelu epilogue per expert (torch._addmm_activation)
If the GEMM runs at the board's power limit, the activation's extra instructions lower the clock and
no overlap can win that time back. Writes <out>/<tag>_<date>.csv (one row per implementation).

    python -m benchmarks.activation_power --out results/grouped_gemm
"""

from __future__ import annotations

import argparse
import csv
import datetime
import subprocess
import time
from pathlib import Path

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from kernels import grouped_gemm as gg
from kernels.options import GemmOptions
from kernels.reference_gemm import expert_rows
from kernels.timing import device_line


def _graph(fn, reps: int):
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    return g


def _sampled_run(fn, seconds: float, reps: int = 20) -> dict:
    """Replay fn's graph for `seconds` under nvidia-smi sampling; the mean over the second half (clocks
    settled) and the kernel's time from CUDA events over the same replays."""
    g = _graph(fn, reps)
    smi = subprocess.Popen(["nvidia-smi", "--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits",
                            "-lms", "50"], stdout=subprocess.PIPE, text=True)
    t_end = time.time() + seconds
    times = []
    while time.time() < t_end:
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b) * 1e3 / reps)
    smi.terminate()
    rows = [line.split(",") for line in smi.communicate()[0].strip().splitlines() if "," in line]
    half = rows[len(rows) // 2:]
    clock = sum(float(r[0]) for r in half) / max(1, len(half))
    power = sum(float(r[1]) for r in half) / max(1, len(half))
    t = sorted(times[len(times) // 2:])
    return {"time_us": t[len(t) // 2], "sm_clock_mhz": clock, "power_w": power, "samples": len(half)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.activation_power", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mixtral-8x7b")
    ap.add_argument("--tokens", type=int, default=16384)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--out", default="results/grouped_gemm")
    ap.add_argument("--tag", default="h200_activation_power")
    a = ap.parse_args(argv)
    model = ModelConfig.from_name(a.model)
    routing = make_routing("balanced", a.tokens, model.experts_E, model.topk, seed=0).to("cuda")
    plan = make_plan(routing, model, ParallelConfig(ep=4), HardwareProfile.from_name("h200"),
                     Policy(block_m=128, block_n0=256, block_n1=256), ranks=[0])
    rp = plan.rank(0)
    R, E, N, K = int(rp.num_rows), plan.experts_per_rank, model.hidden_N, plan.ffn_local
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(a.tokens, N, device="cuda", dtype=torch.bfloat16, generator=g)
    w0 = (torch.randn(E, N, K, device="cuda", generator=g) / N ** 0.5).to(torch.bfloat16)
    x_RN = x[rp.row_token_R.clamp(min=0)].contiguous()
    out = torch.empty(R, K, device="cuda", dtype=torch.bfloat16)
    rows = expert_rows(plan, 0)
    zero_bias = torch.zeros(K, device="cuda", dtype=torch.bfloat16)
    impls = {
        "gluon_gelu": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True,
                                                     options=GemmOptions(impl="gluon", fast_gelu=False)),
        "gluon_gelu_fast": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True,
                                                          options=GemmOptions(impl="gluon", fast_gelu=True)),
        "gluon_gelu_packed": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True,
                                                            options=GemmOptions(impl="gluon", fast_gelu="packed")),
        "gluon_none": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True, activation="none",
                                                     options=GemmOptions(impl="gluon")),
        "triton_gelu": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True,
                                                      options=GemmOptions(impl="triton", c_tma=True)),
        "triton_none": lambda: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True, activation="none",
                                                      options=GemmOptions(impl="triton", c_tma=True)),
        "cublas_loop": lambda: [torch.mm(x_RN[s:e], w0[i], out=out[s:e]) for i, (s, e) in enumerate(rows) if e > s],
        "cublas_gelu_loop": lambda: [torch._addmm_activation(zero_bias, x_RN[s:e], w0[i], use_gelu=True)
                                     for i, (s, e) in enumerate(rows) if e > s],
    }
    flops = 2.0 * R * N * K
    date = datetime.date.today().isoformat()
    Path(a.out).mkdir(parents=True, exist_ok=True)
    path = Path(a.out) / f"{a.tag}_{date}.csv"
    with open(path, "w", newline="") as f:
        f.write(f"# {device_line()}\n# {a.model} M={a.tokens} balanced, rank 0 of EP=4, layer0 rows {R}\n")
        w = csv.DictWriter(f, fieldnames=["impl", "time_us", "tflops", "sm_clock_mhz", "power_w", "samples"])
        w.writeheader()
        for name, fn in impls.items():
            r = _sampled_run(fn, a.seconds)
            r = {"impl": name, **r, "tflops": flops / r["time_us"] / 1e6}
            w.writerow({k: (f"{v:.1f}" if isinstance(v, float) else v) for k, v in r.items()})
            f.flush()
            print(f"{name:18s} {r['time_us']:8.1f} us {r['tflops']:6.1f} TFLOP/s  SM {r['sm_clock_mhz']:6.0f} MHz  "
                  f"{r['power_w']:5.0f} W  ({r['samples']} samples)", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
