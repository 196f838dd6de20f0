"""comet.calibrate's parts that measure one GPU alone (CUDA; each takes a Context and records rows into it).

  a. tiles   this project's grouped GEMM (kernels/grouped_gemm.py, autotuned, A and B through TMA, no gather,
             no activation) on one expert, uniform 128-row-aligned problems whose tile count is a whole
             number of waves of SMs programs, for tile shapes (BM, BN) and reductions K. Per-tile time =
             time * SMs / tiles; efficiency = per-SM FLOP rate / (peak_tflops / SMs). gemm_efficiency,
             gemm_k_half and tile_area_half are fitted to the profile's formula (comet/calibrate/fit.py);
             residuals are rows of the CSV. peak_tflops stays the datasheet value; the torch.matmul 8192^3
             ceiling is recorded beside it. gemm0_slowdown: the same tiles as layer0 runs them (gathered A rows,
             gelu epilogue) over the plain ones.
  b. hbm     device-to-device `copy_` of a large tensor: (read + written bytes) / time -> hbm_gbps.
  c. launch  launch_overhead_us = per-kernel time of back-to-back tiny PyTorch kernels launched eagerly minus
             the same kernels replayed from a CUDA graph: the host's cost per launch that the GPU waits for
             whenever kernels are shorter than it (an eager empty Triton kernel is recorded beside it).
Times are device time in microseconds (CUDA-graph replays, kernels.timing.graph_us) unless a name says eager.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import torch

from comet.calibrate.fit import (
    TileProblem,
    fit_gemm_model,
    fit_rows,
    per_tile_us,
    tile_efficiency,
    tile_points,
    tile_problem,
)
from comet.calibrate.measurements import Context, progress
from comet.calibrate.settings import (
    GEMM0_KS,
    GEMM0_SHAPES,
    QUICK_TILE_KS,
    QUICK_TILE_SHAPES,
    QUICK_TILE_TARGET_FLOPS,
    TILE_KS,
    TILE_SHAPES,
    TILE_TARGET_FLOPS,
)
from kernels import grouped_gemm as gg
from kernels.options import GemmOptions
from kernels.probes import empty_kernel
from kernels.timing import graph_us


# ------------------------------------------------------------------------------------- part a: tiles
def matmul_ceiling_tflops(warm_s: float) -> float:
    """torch.matmul bf16 8192^3 after `warm_s` seconds of matmuls (clocks ramped up), device time."""
    n = 8192
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    end = time.time() + warm_s
    while time.time() < end:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
    return 2.0 * n ** 3 / graph_us(lambda: a @ b, rep_ms=50) / 1e6


def time_tile_problem(prob: TileProblem, layer0: bool = False) -> tuple[float, str]:
    """Device time (us) of the grouped GEMM over `prob` on prob.sms programs (autotuned; A, B through TMA),
    and the autotuner's pick. Tiles run row block by row block, all column blocks of one together.
    layer0: as layer0 runs it instead: A rows gathered through a random permutation (so A cannot use TMA)
    and the gelu epilogue."""
    a = torch.randn(prob.rows, prob.k, device="cuda", dtype=torch.bfloat16)
    b = (torch.randn(1, prob.k, prob.d_out, device="cuda") / math.sqrt(prob.k)).to(torch.bfloat16)
    out = torch.empty(prob.rows, prob.d_out, device="cuda", dtype=torch.bfloat16)
    t = torch.arange(prob.tiles, device="cuda")
    row_start = (t // prob.col_blocks) * prob.bm
    tiles = {"expert": torch.zeros_like(t), "row_start": row_start, "row_end": row_start + prob.bm,
             "col": t % prob.col_blocks, "num": torch.tensor(prob.tiles, device="cuda")}
    gather = dict(a_rows_R=torch.randperm(prob.rows, device="cuda"), activation="gelu") if layer0 else {}
    # impl "triton": the tl kernel, whose tile code the fused kernels share (the simulator models those); A and B
    # through TMA where allowed (a gathered A cannot)
    options = GemmOptions(impl="triton")
    us = graph_us(lambda: gg.grouped_gemm(a, b, tiles, block_m=prob.bm, block_n=prob.bn, out=out,
                                          num_programs=prob.sms, options=options, **gather),
                  rep_ms=40)
    best = getattr(gg._kernel_tuned, "best_config", None)
    cfg = f"BK{best.kwargs.get('BLOCK_K')}_w{best.num_warps}_s{best.num_stages}" if best else "?"
    return us, cfg


def measure_tiles(ctx: Context) -> None:
    """Part a: per-tile time and efficiency of the grouped GEMM per (BM, BN, K), then the fit, then layer0's."""
    rec, sms, peak = ctx.rec, ctx.sms, ctx.base.peak_tflops
    ceiling = matmul_ceiling_tflops(0.3 if ctx.quick else 1.5)
    rec.add("matmul_ceiling_tflops", ceiling, "TFLOP/s", shape="8192x8192x8192", dtype="bfloat16", when="start")
    shapes, ks = (QUICK_TILE_SHAPES, QUICK_TILE_KS) if ctx.quick else (TILE_SHAPES, TILE_KS)
    target = QUICK_TILE_TARGET_FLOPS if ctx.quick else TILE_TARGET_FLOPS
    cases = [(bm, bn, k) for bm, bn in shapes for k in ks]
    for bm, bn, k in progress(cases, "a. tile rate", ctx.main_rank):
        prob = tile_problem(bm, bn, k, sms, target_flops=target)
        us, cfg = time_tile_problem(prob)
        tile_us = per_tile_us(us, sms, prob.tiles)
        how = dict(bm=bm, bn=bn, k=k, tiles=prob.tiles, waves=prob.waves, programs=sms, config=cfg)
        rec.add("tile_time_us", tile_us, "us", **how)
        rec.add("tile_efficiency", tile_efficiency(bm, bn, k, tile_us, peak, sms), "fraction_of_peak_per_sm", **how)
        rec.add("tile_gemm_tflops", prob.flops / us / 1e6, "TFLOP/s", **how)
    rec.add("matmul_ceiling_tflops", matmul_ceiling_tflops(0.0), "TFLOP/s", shape="8192x8192x8192", dtype="bfloat16",
            when="end")
    points = tile_points(rec.rows)
    fit = fit_gemm_model(points, (ctx.base.gemm_efficiency, ctx.base.gemm_k_half, ctx.base.tile_area_half))
    for name, value, unit, params in fit_rows(fit, points):
        rec.add(name, value, unit, **params)
    measure_gemm0_slowdown(ctx, target)


def measure_gemm0_slowdown(ctx: Context, target: float) -> None:
    """Part a, layer0: the same tiles with gathered A rows and the gelu epilogue, over the plain ones, at the
    paper models' layer0 reductions (N = 2048, 4096); gemm0_slowdown = the median ratio."""
    rec, ratios = ctx.rec, []
    cases = [(bm, bn, k) for bm, bn in GEMM0_SHAPES for k in GEMM0_KS]
    for bm, bn, k in progress(cases, "a. layer0 tiles (gather + gelu)", ctx.main_rank):
        prob = tile_problem(bm, bn, k, ctx.sms, target_flops=target)
        plain, _ = time_tile_problem(prob)
        gathered, cfg = time_tile_problem(prob, layer0=True)
        how = dict(bm=bm, bn=bn, k=k, tiles=prob.tiles, programs=ctx.sms, config=cfg)
        rec.add("tile_time_us_layer0", per_tile_us(gathered, ctx.sms, prob.tiles), "us", **how)
        ratios.append(gathered / plain)
        rec.add("gemm0_slowdown_point", ratios[-1], "ratio", **how)
    rec.add("gemm0_slowdown", statistics.median(ratios), "ratio", method="median", points=len(ratios))


# ------------------------------------------------------------------------------------- part b: hbm
def measure_hbm(ctx: Context) -> None:
    """Part b: device-to-device copy_ of a large tensor (1 GiB, 256 MiB with --quick); (read + written bytes) /
    device time."""
    nbytes = (256 if ctx.quick else 1024) << 20
    src = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    us = graph_us(lambda: dst.copy_(src), rep_ms=50)
    ctx.rec.add("hbm_gbps", 2 * nbytes / us / 1e3, "GB/s", method="copy_", bytes=nbytes, counted="read+write")


# ------------------------------------------------------------------------------------- part c: launch
def _per_launch_us(launch: Callable[[], None], n: int, graph: bool, reps: int = 5) -> float:
    """Median over `reps` of (time of n back-to-back launches) / n: eager, or replayed from a CUDA graph."""
    g = None
    if graph:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                launch()
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(n):
                launch()
    times = []
    for _ in range(reps + 1):  # the first round warms up
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        if g is not None:
            g.replay()
        else:
            for _ in range(n):
                launch()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) * 1e3 / n)
    return statistics.median(times[1:])


def measure_launch(ctx: Context) -> None:
    """Part c: what an eager launch costs over the same kernel replayed from a CUDA graph."""
    x = torch.zeros(1, device="cuda")
    n = 200
    torch_eager = _per_launch_us(lambda: x.add_(1.0), n, graph=False)
    torch_graph = _per_launch_us(lambda: x.add_(1.0), n, graph=True)
    triton_eager = _per_launch_us(lambda: empty_kernel[(1,)](x), n, graph=False)
    how = dict(kernel="x.add_(1)_on_1_element", launches=n)
    ctx.rec.add("launch_eager_torch_us", torch_eager, "us", **how)
    ctx.rec.add("launch_graph_torch_us", torch_graph, "us", **how)
    ctx.rec.add("launch_eager_triton_empty_us", triton_eager, "us", kernel="empty_triton_kernel", launches=n)
    ctx.rec.add("launch_overhead_us", torch_eager - torch_graph, "us",
                method="eager_minus_graph_per_kernel", kernel="x.add_(1)_on_1_element", launches=n)
