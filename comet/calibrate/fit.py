"""The arithmetic behind comet.calibrate's numbers, pure (no GPU): the whole-wave tile problems part a times,
per-tile time and efficiency, the fit of HardwareProfile's GEMM efficiency formula to them, the fixed and
per-byte cost of a layer1 communication item, and the bytes of the busiest communication program.

Efficiency of a BM x BN tile over a K-long reduction, as HardwareProfile.gemm_efficiency_of computes it:
    gemm_efficiency * BM*BN / (BM*BN + tile_area_half) * K / (K + gemm_k_half)
measured against the per-SM datasheet peak (peak_tflops / sms).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from comet.calibrate.measurements import Measurement, parse_params
from comet.calibrate.settings import TILE_COL_BLOCKS, TILE_TARGET_FLOPS


# ------------------------------------------------------------------------------------- tile problems
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


# ------------------------------------------------------------------------------------- efficiency fit
def efficiency_model(bm, bn, k, gemm_efficiency: float, gemm_k_half: float, tile_area_half: float):
    """HardwareProfile.gemm_efficiency_of's formula, on numbers or numpy arrays."""
    area = bm * bn
    return gemm_efficiency * area / (area + tile_area_half) * k / (k + gemm_k_half)


@dataclass(frozen=True)
class TilePoint:
    """One measured tile shape: its efficiency (fraction of the per-SM peak)."""

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
    """Least squares (relative errors) of efficiency_model to measured tile efficiencies, from p0 =
    (gemm_efficiency, gemm_k_half, tile_area_half). Needs >= 3 points over >= 2 tile areas and >= 2 K."""
    from scipy.optimize import curve_fit  # deferred: scipy is slow to import and only the fit needs it

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


# ------------------------------------------------------------------------------------- communication
def item_cost_fit(t_short: float, b_short: float, t_long: float, b_long: float) -> tuple[float, float]:
    """(fixed us, marginal GB/s) of item time = fixed + bytes / rate, through two (time us, bytes) points;
    the fixed cost is clipped at 0 and the rate is inf when the longer item costs no more."""
    per_byte = (t_long - t_short) / (b_long - b_short)
    return max(t_short - per_byte * b_short, 0.0), (1e-3 / per_byte if per_byte > 0 else math.inf)


def busiest_program_bytes(chunk_rows: Sequence[int], nc: int, row_bytes: int) -> int:
    """Bytes of the communication program with the most rows (chunk i belongs to program i % nc)."""
    return max(sum(chunk_rows[j::nc]) for j in range(nc)) * row_bytes
