"""Measure a GPU (and its links) and write a hardware profile the simulator loads: `python -m comet.calibrate`.

    python -m comet.calibrate --name h200_x1                                   # one GPU: parts a-d
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
        torchrun --nproc-per-node=4 -m comet.calibrate --name h200_x4          # + part e, the links
    python -m sim --hw h200_x1 ...                                             # use it (name or path)

Parts (each appends rows `measurement, parameters, value, unit` to results/calibration/<name>_<date>.csv and
lines to <name>_<date>.log; rows whose measurement is a HardwareProfile field are the profile's values):
  a. tiles   this project's grouped GEMM (kernels/grouped_gemm.py, autotuned, A and B through TMA, no gather,
             no activation) on one expert, uniform 128-row-aligned problems whose tile count is a whole
             number of waves of SMs programs, for tile shapes (BM, BN) and reductions K. Per-tile time =
             time * SMs / tiles; efficiency = per-SM FLOP rate / (peak_tflops / SMs). gemm_efficiency,
             gemm_k_half and tile_area_half are fitted to the profile's formula (scipy curve_fit, relative
             errors); residuals are rows of the CSV. peak_tflops stays the datasheet value; the torch.matmul
             8192^3 ceiling is recorded beside it.
  b. hbm     device-to-device `copy_` of a large tensor: (read + written bytes) / time -> hbm_gbps.
  c. launch  launch_overhead_us = per-kernel time of back-to-back tiny PyTorch kernels launched eagerly minus
             the same kernels replayed from a CUDA graph: the host's cost per launch that the GPU waits for
             whenever kernels are shorter than it (an eager empty Triton kernel is recorded beside it).
  d. comm    the fused layer0 kernel's communication programs (kernels/fused_layer0.py, "blocks") alone in an
             emulated world on ONE GPU (the Plan's layer0 tiles cut to zero): rows pulled per second by the
             busiest of n_c programs. Local memory, not NVLink: an upper bound for one program, recorded as
             `comm_program_local_gbps` and never written into a link field.
  e. link    only under torchrun with world size >= 2 (symmetric memory as kernels/symm.py): one program's
             peer store / load rate (per_block_link_gbps = the slower), all programs to one peer and to all
             peers (link_gbps = the faster of store and load to all peers), a one-way flag ping-pong
             latency between ranks 0 and 1 (link_latency_us), and a small NCCL all_to_all_single
             (collective_overhead_us). On one GPU it is skipped with a log line. NOT RUN YET: written when
             only one GPU was lent; checked by reading and (peer copies) in Triton's interpreter only.
Fields a run does not measure keep the base profile's value (--base, default h200) and its source, with
"(not calibrated: <why>)" appended; measured fields' sources cite the device line and the CSV.
About 2-3 minutes on one H200 (--quick: fewer points, under a minute with warm Triton caches).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime
import math
import os
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import triton
import triton.language as tl

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig

# --------------------------------------------------------------------------------------------- settings
TILE_SHAPES = ((64, 128), (128, 128), (128, 256))
TILE_KS = (512, 1024, 2048, 4096, 8192, 14336)
QUICK_TILE_SHAPES = ((64, 128), (128, 256))
QUICK_TILE_KS = (512, 2048, 8192)
TILE_COL_BLOCKS = 12  # column blocks of the uniform problem (132 = 11 x 12: whole waves at any row count)
TILE_TARGET_FLOPS = 2e11  # per problem: ~0.3 ms at 600 TFLOP/s, so the kernel's start and tail are ~1%
QUICK_TILE_TARGET_FLOPS = 5e10
COMM_NCS = (1, 2, 4, 8, 16, 32)
QUICK_COMM_NCS = (1, 8, 32)
LINK_PROGRAMS = (1, 2, 4, 8, 16, 32, 64)  # plus the SM count
QUICK_LINK_PROGRAMS = (1, 8)
# layer1 communication-program configs (PIPELINE, SEND_BLOCK): item by item as before, and pipelined
L1_COMM_CONFIGS = ((0, 16), (0, 64), (1, 32))
L1_DEFAULT_CONFIG = (1, 32)  # kernels.fused_layer1's GPU default (DEFAULT_PIPELINE, GPU_SEND_BLOCK)
L1_ITEM_ROWS_SHORT = 16  # sends per chunk of the short items of the fixed-cost fit (the Plan's default: 64)
GEMM0_SHAPES = ((128, 128), (128, 256))
GEMM0_KS = (2048, 4096)  # layer0 reduces over the hidden size N
PARTS = ("tiles", "hbm", "launch", "comm", "link")
PART_FIELDS = {
    "tiles": ("gemm_efficiency", "gemm_k_half", "tile_area_half", "gemm0_slowdown"),
    "hbm": ("hbm_gbps",),
    "launch": ("launch_overhead_us",),
    "comm": ("l1_item_overhead_us",),
    "link": ("link_gbps", "per_block_link_gbps", "link_latency_us", "collective_overhead_us"),
}
NUMERIC_FIELDS = tuple(f.name for f in dataclasses.fields(HardwareProfile) if f.name not in ("name", "link", "sources"))
INT_FIELDS = ("sms", "ranks_per_node")
# why a field is never measured here (others: "not measured in this run" unless the run says why)
NEVER_MEASURED = {
    "peak_tflops": "datasheet peak by design: gemm_efficiency is measured against it; the torch.matmul "
                   "ceiling is in the CSV",
    "nic_gbps": "one node: no traffic between nodes measured",
    "nic_latency_us": "one node: no traffic between nodes measured",
    "ranks_per_node": "a property of the node, not measured",
}
NVLS_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


# ------------------------------------------------------------------------------------ measurement rows
@dataclass(frozen=True)
class Measurement:
    """One CSV row. parameters: 'key=value key=value' (how it was measured); unit: us, GB/s, TFLOP/s, ..."""

    measurement: str
    parameters: str
    value: float
    unit: str


def format_params(**params) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())


def parse_params(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def read_measurements(path: str | Path) -> list[Measurement]:
    """The rows of a calibration CSV (comment lines starting with '#' skipped)."""
    with open(path, newline="") as f:
        rows = csv.DictReader(line for line in f if not line.startswith("#"))
        return [Measurement(r["measurement"], r["parameters"], float(r["value"]), r["unit"]) for r in rows]


class Recorder:
    """The calibration CSV and its log, written row by row (a part that crashes keeps what came before).
    With no paths (ranks other than 0 under torchrun) it records nothing and prints nothing."""

    FIELDS = ("measurement", "parameters", "value", "unit")

    def __init__(self, csv_path: Path | None = None, log_path: Path | None = None, header: Sequence[str] = ()):
        self.rows: list[Measurement] = []
        self._csv = self._log = None
        if csv_path is not None:
            csv_path.parent.mkdir(parents=True, exist_ok=True)
            self._csv = open(csv_path, "w", newline="")  # closed by close()
            self._csv.writelines(f"# {line}\n" for line in header)
            self._writer = csv.DictWriter(self._csv, fieldnames=self.FIELDS)
            self._writer.writeheader()
        if log_path is not None:
            self._log = open(log_path, "w")
            self._log.writelines(f"{line}\n" for line in header)

    def add(self, measurement: str, value: float, unit: str, **params) -> Measurement:
        m = Measurement(measurement, format_params(**params), float(value), unit)
        self.rows.append(m)
        if self._csv is not None:
            self._writer.writerow({"measurement": m.measurement, "parameters": m.parameters,
                                   "value": f"{m.value:.6g}", "unit": m.unit})
            self._csv.flush()
        self.log(f"{measurement:34s} {m.value:12.5g} {unit:10s} {m.parameters}")
        return m

    def log(self, line: str) -> None:
        if self._log is None:
            return
        _write(line)
        self._log.write(line + "\n")
        self._log.flush()

    def close(self) -> None:
        for f in (self._csv, self._log):
            if f is not None:
                f.close()


def _write(line: str) -> None:
    try:
        from tqdm import tqdm

        tqdm.write(line)
    except ImportError:
        print(line, flush=True)


def _bar(items: Iterable, desc: str, enabled: bool):
    """tqdm progress over `items` (plain iteration where tqdm is missing or on ranks other than 0)."""
    try:
        from tqdm import tqdm
    except ImportError:
        return items
    return tqdm(list(items), desc=desc, disable=not enabled, leave=False)


# ------------------------------------------------------------------------------- part a: pure helpers
@dataclass(frozen=True)
class TileProblem:
    """One expert's uniform GEMM: row_blocks x col_blocks tiles of BM x BN over a K-long reduction, a whole
    number of waves of `sms` programs (every program runs exactly `waves` tiles: no partial last wave)."""

    bm: int
    bn: int
    k: int
    sms: int
    waves: int
    col_blocks: int
    row_blocks: int

    @property
    def rows(self) -> int:
        return self.row_blocks * self.bm

    @property
    def d_out(self) -> int:
        return self.col_blocks * self.bn

    @property
    def tiles(self) -> int:
        return self.row_blocks * self.col_blocks

    @property
    def flops(self) -> float:
        return 2.0 * self.rows * self.d_out * self.k


def tile_problem(bm: int, bn: int, k: int, sms: int, *, target_flops: float = TILE_TARGET_FLOPS,
                 min_waves: int = 4, col_blocks: int = TILE_COL_BLOCKS) -> TileProblem:
    """The smallest whole-wave problem with at least `min_waves` waves and `target_flops` FLOPs."""
    waves = max(min_waves, math.ceil(target_flops / (2.0 * bm * bn * k * sms)))
    step = col_blocks // math.gcd(col_blocks, sms)  # waves * sms must split into rows of col_blocks tiles
    waves = math.ceil(waves / step) * step
    return TileProblem(bm, bn, k, sms, waves, col_blocks, waves * sms // col_blocks)


def per_tile_us(time_us: float, sms: int, tiles: int) -> float:
    """One SM's time per tile when `tiles` (a multiple of `sms`) ran on `sms` programs in `time_us`."""
    return time_us * sms / tiles


def tile_efficiency(bm: int, bn: int, k: int, tile_us: float, peak_tflops: float, sms: int) -> float:
    """Achieved per-SM FLOP rate of one tile over the per-SM peak (the profile's efficiency(BM, BN, K))."""
    return 2.0 * bm * bn * k / (tile_us * 1e6) / (peak_tflops / sms)


def efficiency_model(bm, bn, k, gemm_efficiency: float, gemm_k_half: float, tile_area_half: float):
    """HardwareProfile.gemm_efficiency_of's formula, on numbers or numpy arrays."""
    area = bm * bn
    return gemm_efficiency * area / (area + tile_area_half) * k / (k + gemm_k_half)


@dataclass(frozen=True)
class TilePoint:
    bm: int
    bn: int
    k: int
    efficiency: float


@dataclass(frozen=True)
class GemmFit:
    """Fitted efficiency parameters; rel_err[i] = model tile time / measured tile time - 1 at point i."""

    gemm_efficiency: float
    gemm_k_half: float
    tile_area_half: float
    rel_err: tuple[float, ...]

    @property
    def max_rel_err(self) -> float:
        return max(abs(e) for e in self.rel_err)

    @property
    def rms_rel_err(self) -> float:
        return math.sqrt(sum(e * e for e in self.rel_err) / len(self.rel_err))


def fit_gemm_model(points: Sequence[TilePoint], p0: tuple[float, float, float] = (0.8, 256.0, 2048.0)) -> GemmFit:
    """Least squares (relative errors) of efficiency_model to measured tile efficiencies."""
    import numpy as np
    from scipy.optimize import curve_fit

    if len(points) < 3 or len({p.bm * p.bn for p in points}) < 2 or len({p.k for p in points}) < 2:
        raise ValueError(f"the fit needs >= 3 points over >= 2 tile areas and >= 2 K; got {len(points)} points")
    area = np.array([p.bm * p.bn for p in points], dtype=float)
    k = np.array([p.k for p in points], dtype=float)
    eff = np.array([p.efficiency for p in points], dtype=float)

    def model(x, g, kh, ah):
        return efficiency_model(x[0], 1.0, x[1], g, kh, ah)

    lo, hi = (1e-3, 1e-3, 1e-3), (2.0, 1e6, 1e8)
    start = tuple(min(max(v, a * 1.01), b * 0.99) for v, a, b in zip(p0, lo, hi, strict=True))
    popt, _ = curve_fit(model, np.vstack([area, k]), eff, p0=start, sigma=eff, bounds=(lo, hi), maxfev=20000)
    rel = eff / model(np.vstack([area, k]), *popt) - 1.0
    return GemmFit(float(popt[0]), float(popt[1]), float(popt[2]), tuple(float(e) for e in rel))


def tile_points(rows: Iterable[Measurement]) -> list[TilePoint]:
    """The `tile_efficiency` rows of a measurement table as fit points."""
    out = []
    for r in rows:
        if r.measurement == "tile_efficiency":
            p = parse_params(r.parameters)
            out.append(TilePoint(int(p["bm"]), int(p["bn"]), int(p["k"]), r.value))
    return out


def fit_rows(fit: GemmFit, points: Sequence[TilePoint]) -> list[tuple[str, float, str, dict]]:
    """(measurement, value, unit, params) rows of a fit: its three profile fields, residuals per point."""
    how = dict(method="curve_fit", points=len(points), max_rel_err=f"{fit.max_rel_err:.4f}")
    out = [("gemm_efficiency", fit.gemm_efficiency, "fraction", how),
           ("gemm_k_half", fit.gemm_k_half, "K", how),
           ("tile_area_half", fit.tile_area_half, "elements", how),
           ("gemm_fit_max_rel_err", fit.max_rel_err, "fraction", dict(points=len(points))),
           ("gemm_fit_rms_rel_err", fit.rms_rel_err, "fraction", dict(points=len(points)))]
    out += [("tile_fit_rel_err", e, "fraction", dict(bm=p.bm, bn=p.bn, k=p.k))
            for p, e in zip(points, fit.rel_err, strict=True)]
    return out


# ------------------------------------------------------------------------------- profile assembly
def measured_source(citation: str, parameters: str) -> str:
    return f"measured: {citation}" + (f"; {parameters}" if parameters else "")


def not_calibrated_source(base_source: str, why: str) -> str:
    return f"{base_source} (not calibrated: {why})"


def assemble_profile(base: HardwareProfile, name: str, rows: Iterable[Measurement], citation: str,
                     reasons: dict[str, str] | None = None) -> HardwareProfile:
    """A profile named `name`: every row whose measurement is a numeric HardwareProfile field gives that
    field (the last such row wins) with a 'measured: <citation>; <parameters>' source; every other field keeps
    `base`'s value and source plus '(not calibrated: <why>)', why from `reasons`, NEVER_MEASURED or a default.
    citation: 'comet.calibrate on <device line>, results/calibration/<file>.csv'."""
    reasons = dict(reasons or {})
    measured = {r.measurement: r for r in rows if r.measurement in NUMERIC_FIELDS}
    values, sources = {}, {}
    for f in NUMERIC_FIELDS:
        r = measured.get(f)
        if r is not None and r.value > 0 and math.isfinite(r.value):
            values[f] = int(round(r.value)) if f in INT_FIELDS else r.value
            sources[f] = measured_source(citation, r.parameters)
            continue
        why = reasons.get(f) or NEVER_MEASURED.get(f) or "not measured in this run"
        if r is not None:
            why = f"measured {r.value:.4g} is not a positive number; {why}"
        values[f] = getattr(base, f)
        sources[f] = not_calibrated_source(base.sources[f], why)
    return HardwareProfile(name=name, link=base.link, sources=sources, **values)


def profile_table(profile: HardwareProfile, base: HardwareProfile) -> str:
    """A short text table: field, value, base value, measured or kept."""
    lines = [f"{'field':24s} {'value':>12s} {'base ' + base.name:>12s}  source",
             f"{'-' * 24} {'-' * 12} {'-' * 12}  {'-' * 30}"]
    for f in NUMERIC_FIELDS:
        src = profile.sources[f]
        how = "measured" if src.startswith("measured: comet.calibrate") else "kept: " + (
            src.rsplit("(not calibrated: ", 1)[-1].rstrip(")") if "(not calibrated: " in src else src)
        lines.append(f"{f:24s} {getattr(profile, f):12.5g} {getattr(base, f):12.5g}  {how[:80]}")
    return "\n".join(lines)


# ======================================================================================== GPU parts
@dataclass
class Context:
    """What every part needs: the recorder, the base profile, the device, SMs, quick mode, rank 0 or not."""

    rec: Recorder
    base: HardwareProfile
    device: torch.device
    sms: int
    quick: bool
    main_rank: bool = True


def matmul_ceiling_tflops(warm_s: float) -> float:
    """torch.matmul bf16 8192^3 after `warm_s` seconds of matmuls (clocks ramped up), device time."""
    from kernels.timing import graph_us

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
    from kernels import grouped_gemm as gg
    from kernels.timing import graph_us

    a = torch.randn(prob.rows, prob.k, device="cuda", dtype=torch.bfloat16)
    b = (torch.randn(1, prob.k, prob.d_out, device="cuda") / math.sqrt(prob.k)).to(torch.bfloat16)
    out = torch.empty(prob.rows, prob.d_out, device="cuda", dtype=torch.bfloat16)
    t = torch.arange(prob.tiles, device="cuda")
    row_start = (t // prob.col_blocks) * prob.bm
    tiles = {"expert": torch.zeros_like(t), "row_start": row_start, "row_end": row_start + prob.bm,
             "col": t % prob.col_blocks, "num": torch.tensor(prob.tiles, device="cuda")}
    a_tma, b_tma = gg.tma_ok(a) and not layer0, gg.tma_ok(b)
    gather = dict(a_rows_R=torch.randperm(prob.rows, device="cuda"), activation="gelu") if layer0 else {}
    # impl "triton": the tl kernel, whose tile code the fused kernels share (the simulator models those)
    us = graph_us(lambda: gg.grouped_gemm(a, b, tiles, block_m=prob.bm, block_n=prob.bn, out=out,
                                          num_programs=prob.sms, a_tma=a_tma, b_tma=b_tma, impl="triton", **gather),
                  rep_ms=40)
    best = getattr(gg._kernel_tuned, "best_config", None)
    cfg = f"BK{best.kwargs.get('BLOCK_K')}_w{best.num_warps}_s{best.num_stages}" if best else "?"
    return us, cfg


def measure_tiles(ctx: Context) -> None:
    """Part a: per-tile time and efficiency of the grouped GEMM per (BM, BN, K), then the fit."""
    rec, sms, peak = ctx.rec, ctx.sms, ctx.base.peak_tflops
    ceiling = matmul_ceiling_tflops(0.3 if ctx.quick else 1.5)
    rec.add("matmul_ceiling_tflops", ceiling, "TFLOP/s", shape="8192x8192x8192", dtype="bfloat16", when="start")
    shapes, ks = (QUICK_TILE_SHAPES, QUICK_TILE_KS) if ctx.quick else (TILE_SHAPES, TILE_KS)
    target = QUICK_TILE_TARGET_FLOPS if ctx.quick else TILE_TARGET_FLOPS
    cases = [(bm, bn, k) for bm, bn in shapes for k in ks]
    for bm, bn, k in _bar(cases, "a. tile rate", ctx.main_rank):
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
    for bm, bn, k in _bar(cases, "a. layer0 tiles (gather + gelu)", ctx.main_rank):
        prob = tile_problem(bm, bn, k, ctx.sms, target_flops=target)
        plain, _ = time_tile_problem(prob)
        gathered, cfg = time_tile_problem(prob, layer0=True)
        how = dict(bm=bm, bn=bn, k=k, tiles=prob.tiles, programs=ctx.sms, config=cfg)
        rec.add("tile_time_us_layer0", per_tile_us(gathered, ctx.sms, prob.tiles), "us", **how)
        ratios.append(gathered / plain)
        rec.add("gemm0_slowdown_point", ratios[-1], "ratio", **how)
    rec.add("gemm0_slowdown", statistics.median(ratios), "ratio", method="median", points=len(ratios))


def measure_hbm(ctx: Context) -> None:
    """Part b: device-to-device copy_ of a large tensor; (read + written bytes) / device time."""
    from kernels.timing import graph_us

    nbytes = (256 if ctx.quick else 1024) << 20
    src = torch.empty(nbytes // 2, device="cuda", dtype=torch.bfloat16).normal_()
    dst = torch.empty_like(src)
    us = graph_us(lambda: dst.copy_(src), rep_ms=50)
    ctx.rec.add("hbm_gbps", 2 * nbytes / us / 1e3, "GB/s", method="copy_", bytes=nbytes, counted="read+write")


@triton.jit
def _empty_kernel(x_ptr):
    pass


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
    triton_eager = _per_launch_us(lambda: _empty_kernel[(1,)](x), n, graph=False)
    how = dict(kernel="x.add_(1)_on_1_element", launches=n)
    ctx.rec.add("launch_eager_torch_us", torch_eager, "us", **how)
    ctx.rec.add("launch_graph_torch_us", torch_graph, "us", **how)
    ctx.rec.add("launch_eager_triton_empty_us", triton_eager, "us", kernel="empty_triton_kernel", launches=n)
    ctx.rec.add("launch_overhead_us", torch_eager - torch_graph, "us",
                method="eager_minus_graph_per_kernel", kernel="x.add_(1)_on_1_element", launches=n)


def l1_comm_only_plan(plan, rank: int, nc: int):
    """`plan` cut to `rank` with no layer1 tiles, a column threshold of 0 and `nc` communication programs: the
    fused layer1 kernel then runs its communication programs alone, every (column block, chunk) item ready."""
    rp = plan.rank(rank)
    idle = dataclasses.replace(rp, num_l1_tiles=torch.zeros_like(rp.num_l1_tiles),
                               l1_tiles_per_col=torch.zeros_like(rp.l1_tiles_per_col))
    return dataclasses.replace(plan, policy=plan.policy.replace(nc_layer1=nc), ranks=(idle,))


def comm_only_plan(plan, rank: int, nc: int):
    """`plan` cut to `rank` with no layer0 tiles and `nc` communication programs: the fused layer0 kernel then
    runs its communication programs alone (its GEMM programs find no tile and finish at once)."""
    rp = plan.rank(rank)
    idle = dataclasses.replace(rp, num_l0_tiles=torch.zeros_like(rp.num_l0_tiles))
    return dataclasses.replace(plan, policy=plan.policy.replace(nc_layer0=nc), ranks=(idle,))


def busiest_program_bytes(chunk_rows: Sequence[int], nc: int, row_bytes: int) -> int:
    """Bytes of the communication program with the most rows (chunk i belongs to program i % nc)."""
    return max(sum(chunk_rows[j::nc]) for j in range(nc)) * row_bytes


def measure_comm_programs(ctx: Context) -> None:
    """Part d: layer0's communication programs alone (no GEMM tiles) in an emulated world on one GPU.

    Rank 0 of EP=4 pulls its remote token rows (N = 4096, bf16) from the other emulated ranks' receive buffers,
    all in this GPU's memory. Rate of one program = bytes of the busiest program / kernel time."""
    from comet.core.planner import make_plan
    from comet.core.policy import Policy
    from comet.core.routing import make_routing
    from kernels.fused_layer0 import fused_layer0
    from kernels.moe import stage_tokens
    from kernels.timing import graph_us
    from kernels.workspace import EmulatedWorld

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
    for i, nc in enumerate(_bar(ncs, "d. comm programs (local)", ctx.main_rank)):
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
    from comet.core.planner import make_plan
    from comet.core.policy import Policy
    from comet.core.routing import make_routing
    from kernels.fused_layer1 import fused_layer1
    from kernels.timing import graph_us
    from kernels.workspace import EmulatedWorld

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
    # item i = (column block i // chunks, chunk i % chunks) belongs to program i % nc
    item_bytes = [n * col_bytes for _ in range(plan.l1_col_blocks) for n in sends_per_chunk]
    total = sum(item_bytes)
    short_items = int(short.rank(0).num_l1_chunks) * short.l1_col_blocks

    def time_us(p, cfg) -> float:
        fn = lambda: fused_layer1(world, p, 0, w1, num_programs=1, config=cfg)
        fn()
        world.check()
        return graph_us(fn, rep_ms=40)

    ncs = QUICK_COMM_NCS if ctx.quick else COMM_NCS
    for pipeline, send_block in L1_COMM_CONFIGS:
        cfg = {"SEND_BLOCK": send_block, "PIPELINE": pipeline}
        us_by_nc = {}
        for nc in _bar(ncs, f"d. layer1 comm programs (local), PIPELINE={pipeline} SEND_BLOCK={send_block}",
                       ctx.main_rank):
            us = us_by_nc[nc] = time_us(l1_comm_only_plan(plan, 0, nc), cfg)
            busiest = max(sum(item_bytes[j::nc]) for j in range(nc))
            how = dict(nc=nc, send_block=send_block, pipeline=pipeline, bytes=total, busiest_program_bytes=busiest,
                       items=len(item_bytes), sends_per_chunk=plan.policy.comm_rows, topk_local=2,
                       world="emulated_ep4_one_gpu", memory="local_hbm_not_nvlink")
            rec.add("l1_comm_program_local_gbps", busiest / us / 1e3, "GB/s", **how)
            rec.add("l1_comm_programs_local_total_gbps", total / us / 1e3, "GB/s", **how)
        # fixed and per-byte cost of one item, from one program: the sweep's n_c = 1 and the short chunks
        one_program_us = us_by_nc[1] if 1 in us_by_nc else time_us(l1_comm_only_plan(plan, 0, 1), cfg)
        per_item = {plan.policy.comm_rows: (one_program_us, len(item_bytes)),
                    L1_ITEM_ROWS_SHORT: (time_us(l1_comm_only_plan(short, 0, 1), cfg), short_items)}
        for rows, (us, items) in per_item.items():
            rec.add("l1_comm_item_us", us / items, "us", send_block=send_block, pipeline=pipeline,
                    sends_per_chunk=rows, items=items, item_bytes=round(total / items), nc=1)
        (us_s, n_s), (us_l, n_l) = per_item[L1_ITEM_ROWS_SHORT], per_item[plan.policy.comm_rows]
        fixed, gbps = item_cost_fit(us_s / n_s, total / n_s, us_l / n_l, total / n_l)
        how = dict(send_block=send_block, pipeline=pipeline, method="two_chunk_sizes",
                   sends_per_chunk=f"{L1_ITEM_ROWS_SHORT}_and_{plan.policy.comm_rows}")
        rec.add("l1_item_fixed_us", fixed, "us", **how)
        rec.add("l1_item_marginal_gbps", gbps, "GB/s", **how)
        if (pipeline, send_block) == L1_DEFAULT_CONFIG:  # the kernel's default: the profile's figure
            rec.add("l1_item_overhead_us", fixed, "us", **how)
    world.reset()


def item_cost_fit(t_short: float, b_short: float, t_long: float, b_long: float) -> tuple[float, float]:
    """(fixed us, marginal GB/s) of item time = fixed + bytes / rate, through two (time, bytes) points."""
    per_byte = (t_long - t_short) / (b_long - b_short)
    return max(t_short - per_byte * b_short, 0.0), (1e-3 / per_byte if per_byte > 0 else math.inf)


# ---------------------------------------------------------------------------- part e: link kernels
@triton.jit
def _peer_copy_kernel(local_ptr, peers_ptr, rank, world, n_peers, elems_per_prog, slot_elems, own_slot_off,
                      STORE: tl.constexpr, BLOCK: tl.constexpr):
    """Program p moves elements [p * elems_per_prog, (p + 1) * elems_per_prog) between this rank's local buffer
    and the symmetric buffer (world slots of slot_elems) of peer (rank + 1 + p % n_peers) % world.
    STORE: local -> the peer's slot `rank` (own_slot_off = rank * slot_elems); else the peer's own slot -> local."""
    pid = tl.program_id(0)
    elem = local_ptr.dtype.element_ty
    peer = (rank + 1 + pid % n_peers) % world
    # symmetric buffers are 16-byte aligned: say so, or peer accesses go out scalar (dev/LOG.md, 2026-11-24)
    base = tl.multiple_of(tl.load(peers_ptr + peer).to(tl.pointer_type(elem)), 16)
    start = pid.to(tl.int64) * elems_per_prog
    offs = tl.arange(0, BLOCK)
    for i in range(0, elems_per_prog, BLOCK):
        o = start + i + offs
        if STORE:
            tl.store(base + own_slot_off + o, tl.load(local_ptr + o))
        else:
            tl.store(local_ptr + o, tl.load(base + peer.to(tl.int64) * slot_elems + o, cache_modifier=".cg"))


def peer_copy(local: torch.Tensor, peer_ptrs: torch.Tensor, rank: int, world: int, *, programs: int, n_peers: int,
              elems_per_prog: int, slot_elems: int, store: bool, block: int = 8192) -> None:
    """Launch _peer_copy_kernel (one program per SM at most; elems_per_prog a multiple of `block`)."""
    if elems_per_prog % block or programs * elems_per_prog > min(local.numel(), slot_elems):
        raise ValueError(f"{programs} programs x {elems_per_prog} elements: need a multiple of {block} per program "
                         f"within {min(local.numel(), slot_elems)} elements")
    if not 1 <= n_peers < world:
        raise ValueError(f"n_peers={n_peers} must be in [1, world-1={world - 1}]")
    _peer_copy_kernel[(programs,)](local, peer_ptrs, rank, world, n_peers, elems_per_prog, slot_elems,
                                   rank * slot_elems, STORE=store, BLOCK=block, num_warps=8)


@triton.jit
def _wait_at_least(flag_ptr, value, max_spin):
    seen = tl.load(flag_ptr, volatile=True)
    spins = 0
    while (seen < value) & (spins < max_spin):
        seen = tl.load(flag_ptr, volatile=True)
        spins += 1
    return (seen >= value).to(tl.int32)


@triton.jit(do_not_specialize=["base", "max_spin"])
def _ping_pong_kernel(flag_ptr, peer_flags_ptr, peer, base, warm, iters, max_spin, out_ptr, FIRST: tl.constexpr):
    """Rounds i = 1..warm+iters: FIRST writes base+i into the peer's flag and waits for its own flag to reach it;
    the other side waits, then answers. out = [ns of the last `iters` rounds (globaltimer), 1 if no timeout]."""
    peer_flag = tl.load(peer_flags_ptr + peer).to(tl.pointer_type(tl.int32))
    ok = tl.full((), 1, tl.int32)
    t0 = tl.extra.cuda.globaltimer()
    for i in range(0, warm + iters):
        if i == warm:
            t0 = tl.extra.cuda.globaltimer()
        v = base + 1 + i
        if ok != 0:
            if FIRST:
                tl.atomic_xchg(peer_flag, v, sem="release", scope="sys")
                ok = _wait_at_least(flag_ptr, v, max_spin)
            else:
                ok = _wait_at_least(flag_ptr, v, max_spin)
                tl.atomic_xchg(peer_flag, v, sem="release", scope="sys")
    t1 = tl.extra.cuda.globaltimer()
    tl.store(out_ptr, t1 - t0)
    tl.store(out_ptr + 1, ok.to(tl.int64))


def _timed_all_ranks_us(launch: Callable[[], None], reps: int) -> float:
    """Per-call time of `reps` launches on every rank after a barrier; the slowest rank's (all_reduce MAX)."""
    import torch.distributed as dist

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
    Untested on hardware so far (one GPU lent when written)."""
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem

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
    for p, store in _bar(cases, "e. link, one peer", ctx.main_rank):
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
            _ping_pong_kernel[(1,)](flags, fptrs, 1 - rank, rnd * (warm + iters), warm, iters, 1 << 22, out,
                                    FIRST=rank == 0, num_warps=1)
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


# ============================================================================================= driver
def _run_part(name: str, fn: Callable[[Context], None], ctx: Context, reasons: dict[str, str],
              failed: list[str]) -> None:
    t0 = time.time()
    ctx.rec.log(f"--- part {name}")
    try:
        fn(ctx)
        ctx.rec.log(f"--- part {name} done in {time.time() - t0:.0f} s")
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others' measurements
        ctx.rec.log(f"FAILED part {name} after {time.time() - t0:.0f} s: {type(e).__name__}: {e}")
        ctx.rec.log(traceback.format_exc())
        failed.append(name)
        for f in PART_FIELDS[name]:
            reasons[f] = f"part {name} failed: {type(e).__name__}: {str(e)[:160]}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m comet.calibrate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--name", required=True, help="profile name: writes <out>/<name>.json (e.g. h200_x1)")
    ap.add_argument("--out", default="profiles", help="folder of the profile JSON")
    ap.add_argument("--results", default="results/calibration", help="folder of the CSV and the log")
    ap.add_argument("--base", default="h200", help="profile whose values and sources the unmeasured fields keep")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="fewer points (tests, smoke runs)")
    ap.add_argument("--from-csv", metavar="CSV",
                    help="measure nothing: assemble the profile from this calibration CSV on --base (no GPU), e.g. "
                         "a 2-GPU run's link fields on top of the one-GPU profile h200_x1")
    return ap


def profile_from_csv(path: str | Path, base: HardwareProfile, name: str) -> HardwareProfile:
    """`assemble_profile` over a committed calibration CSV: its measured fields, `base` for the rest (fields
    `base` measured itself keep their source, marked as taken from that profile)."""
    path = Path(path)
    with open(path) as f:
        device = f.readline().lstrip("# ").strip()
    citation = f"comet.calibrate on {device}, results/calibration/{path.name}"
    reasons = {f: f"not in {path.name}; kept from profile {base.name}" for f in NUMERIC_FIELDS}
    return assemble_profile(base, name, read_measurements(path), citation, reasons)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from {', '.join(PARTS)}")
    base = HardwareProfile.from_name(a.base)
    if a.from_csv:
        profile = profile_from_csv(a.from_csv, base, a.name)
        path = Path(a.out) / f"{a.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile.to_json() + "\n")
        print(profile_table(profile, base))
        print(f"wrote {path} from {a.from_csv} on base {base.name}")
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("comet.calibrate measures a GPU, and torch sees no CUDA device here "
                         "(torch.cuda.is_available() is False). Run it on a GPU machine: "
                         "python -m comet.calibrate --name <name> (under torchrun with >= 2 GPUs for the link part).")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        import torch.distributed as dist

        for k, v in NVLS_ENV.items():  # multicast must stay off on these machines (shared/GPU.md)
            os.environ.setdefault(k, v)
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        # a bounded timeout: a rank stuck in a collective ends the run instead of hanging it
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=5), device_id=local)
    device = torch.device("cuda", torch.cuda.current_device())
    sms = torch.cuda.get_device_properties(device).multi_processor_count

    from kernels.timing import device_line

    dev_line = device_line(world)
    stem = f"{a.name}_{datetime.date.today().isoformat()}"
    results = Path(a.results)
    csv_name = f"{stem}.csv"
    citation = f"comet.calibrate on {dev_line}, results/calibration/{csv_name}"
    header = [dev_line, f"command: python -m comet.calibrate {' '.join(sys.argv[1:] if argv is None else argv)}",
              f"base profile: {base.name}; world size {world}; columns: measurement, parameters, value, unit"]
    rec = Recorder(results / csv_name, results / f"{stem}.log", header) if rank == 0 else Recorder()
    for line in header:
        if rank == 0:
            _write(line)
    ctx = Context(rec, base, device, sms, a.quick, rank == 0)
    reasons: dict[str, str] = {}
    failed: list[str] = []
    t0 = time.time()
    rec.add("sms", sms, "count", method="torch.cuda.get_device_properties")
    for p in PARTS:
        if p not in parts:
            for f in PART_FIELDS[p]:
                reasons[f] = f"part {p} not run (--parts)"
    if "link" in parts:
        if world < 2:
            why = "one GPU: the link part needs torchrun with world size >= 2"
            rec.log(f"--- part link skipped: {why} (torchrun --nproc-per-node=N -m comet.calibrate ...)")
            for f in PART_FIELDS["link"]:
                reasons[f] = why
        else:
            _run_part("link", measure_link, ctx, reasons, failed)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:  # parts a-d measure one GPU: rank 0's
            return 0
    steps = {"tiles": measure_tiles, "hbm": measure_hbm, "launch": measure_launch,
             "comm": lambda c: (measure_comm_programs(c), measure_l1_comm_programs(c))}
    for p, fn in steps.items():
        if p in parts:
            _run_part(p, fn, ctx, reasons, failed)
    profile = assemble_profile(base, a.name, rec.rows, citation, reasons)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{a.name}.json"
    path.write_text(profile.to_json() + "\n")
    rec.log("\n" + profile_table(profile, base))
    rec.log(f"wrote {path}, {results / csv_name} and the log in {time.time() - t0:.0f} s"
            + (f"; FAILED parts: {', '.join(failed)}" if failed else ""))
    rec.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
