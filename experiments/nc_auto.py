"""comet.tuning.auto_nc against the fixed default n_c and the best n_c of the exact shape.

Not a figure of the paper (Comet picks n_c by offline profiling; here the simulator picks it), so not part
of experiments.reproduce. For each grid point (model, EP x TP, M, routing):
  default  the Policy's n_c (nc_layer0 = 16, nc_layer1 = 28: the released code's layer1 default);
  auto     auto_nc with a cache warmed by another batch of the same bucket: the same model and
           routing kind at WARM_FACTOR x M tokens (M rounds to the same power of two), so the n_c comes
           from a shape that is not the one evaluated, as in serving;
  exact    auto_nc on a cold cache: the per-layer best n_c of the exact shape.
Each is the simulated latency of the whole layer (both layers, comet system). plan_fixed_s, plan_miss_s and
plan_hit_s time make_plan without auto, with auto on a cold cache, with auto on the warm cache.

    python -m experiments.nc_auto [--quick] [--hw h200] [--jobs 2]   # --jobs: default every core
CSV: model, ep, tp, tokens, routing, load_ratio, {default,auto,exact}_nc{0,1}, {default,auto,exact}_us,
auto_speedup (default / auto), auto_over_exact (auto / exact), cache_hit, plan_fixed_s, plan_miss_s,
plan_hit_s. The run ends with a summary (summarise).
"""

from __future__ import annotations

import sys
import time

import pandas as pd

from comet.core import defaults
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from comet.tuning.cache import NcCache, auto_nc, load_ratio
from comet.tuning.sweep import NC_CANDIDATES, QUICK_NC_CANDIDATES
from experiments import common, pool
from sim.options import SimOptions
from sim.run import simulate, with_policy

NAME = "nc_auto"
COLUMNS = ["model", "ep", "tp", "tokens", "routing", "load_ratio",
           "default_nc0", "default_nc1", "auto_nc0", "auto_nc1", "exact_nc0", "exact_nc1",
           "default_us", "auto_us", "exact_us", "auto_speedup", "auto_over_exact", "cache_hit",
           "plan_fixed_s", "plan_miss_s", "plan_hit_s"]
MODELS = ("mixtral-8x7b", "qwen2-moe-2.7b", "phi-3.5-moe")
PARALLEL = ((8, 1), (4, 2), (2, 4))
TOKENS = (4096, 8192, 16384)
ROUTINGS = ("balanced", "imbalanced")  # imbalanced: load-share std 0.032 (the paper's production figure)
QUICK_MODELS, QUICK_PARALLEL, QUICK_TOKENS = ("mixtral-8x7b",), ((8, 1),), (1024, 2048)
WARM_FACTOR = 0.75  # the warming batch's tokens relative to M: same power-of-two bucket
SIM_OPTIONS = SimOptions(record=False)


def cases(quick: bool) -> list[dict]:
    models, parallel, tokens = (QUICK_MODELS, QUICK_PARALLEL, QUICK_TOKENS) if quick else (MODELS, PARALLEL, TOKENS)
    return [{"model": m, "ep": ep, "tp": tp, "tokens": M, "routing": r}
            for m in models for ep, tp in parallel for M in tokens for r in ROUTINGS]


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    model = ModelConfig.from_name(case["model"])
    hardware = HardwareProfile.from_name(hw)
    par = ParallelConfig(ep=case["ep"], tp=case["tp"])
    candidates = QUICK_NC_CANDIDATES if quick else NC_CANDIDATES
    M = case["tokens"]

    def routing(tokens):
        return make_routing(case["routing"], tokens, model.experts_E, model.topk, seed=0)

    def plan(r, cache: NcCache | None = None):
        p = make_plan(r, model, par, hardware, Policy())
        return p if cache is None else auto_nc(p, r, cache)

    r = routing(M)
    fixed, plan_fixed_s = _timed(lambda: plan(r))
    exact, plan_miss_s = _timed(lambda: plan(r, NcCache(candidates=candidates)))
    warm = NcCache(candidates=candidates)
    plan(routing(round(WARM_FACTOR * M)), warm)
    auto, plan_hit_s = _timed(lambda: plan(r, warm))

    latency = {}  # (nc0, nc1) -> whole-layer latency, each pair simulated once
    choice = {name: (p.policy.nc_layer0, p.policy.nc_layer1) for name, p in
              (("default", fixed), ("auto", auto), ("exact", exact))}
    for nc0, nc1 in set(choice.values()):
        latency[nc0, nc1] = simulate(with_policy(fixed, nc_layer0=nc0, nc_layer1=nc1), "comet",
                                     SIM_OPTIONS).latency_us
    row = {**case, "load_ratio": load_ratio(r, model.experts_E // par.ep, par.ep)}
    for name, (nc0, nc1) in choice.items():
        row.update({f"{name}_nc0": nc0, f"{name}_nc1": nc1, f"{name}_us": latency[nc0, nc1]})
    row.update({"auto_speedup": row["default_us"] / row["auto_us"], "auto_over_exact": row["auto_us"] / row["exact_us"],
                "cache_hit": warm.hits == 1 and warm.misses == 1, "plan_fixed_s": plan_fixed_s,
                "plan_miss_s": plan_miss_s, "plan_hit_s": plan_hit_s})
    return [row]


# ------------------------------------------------------------------------------------------ summary
def summarise(df: pd.DataFrame) -> dict:
    """How often and by how much auto beats the default, how far it is from the exact best, and the cache."""
    better = df["auto_us"] < df["default_us"] * (1 - 1e-6)
    worse = df["auto_us"] > df["default_us"] * (1 + 1e-6)
    return {
        "configs": len(df),
        "auto_beats_default": float(better.mean()), "auto_ties_default": float((~better & ~worse).mean()),
        "auto_loses_to_default": float(worse.mean()),
        "speedup_mean": float(df["auto_speedup"].mean()), "speedup_max": float(df["auto_speedup"].max()),
        "speedup_min": float(df["auto_speedup"].min()),
        "auto_equals_exact_choice": float(((df["auto_nc0"] == df["exact_nc0"]) &
                                           (df["auto_nc1"] == df["exact_nc1"])).mean()),
        "auto_over_exact_mean": float(df["auto_over_exact"].mean()),
        "auto_over_exact_max": float(df["auto_over_exact"].max()),
        "exact_beats_default": float((df["exact_us"] < df["default_us"] * (1 - 1e-6)).mean()),
        "exact_speedup_mean": float((df["default_us"] / df["exact_us"]).mean()),
        "cache_hit_rate": float(df["cache_hit"].mean()),
        "plan_fixed_s_median": float(df["plan_fixed_s"].median()),
        "plan_miss_s_median": float(df["plan_miss_s"].median()), "plan_miss_s_max": float(df["plan_miss_s"].max()),
        "plan_hit_s_median": float(df["plan_hit_s"].median()), "plan_hit_s_max": float(df["plan_hit_s"].max()),
    }


def format_summary(s: dict) -> str:
    return "\n".join([
        f"{s['configs']} configs: auto beats the default n_c in {s['auto_beats_default']:.0%}, ties "
        f"{s['auto_ties_default']:.0%}, loses {s['auto_loses_to_default']:.0%}",
        f"speedup default/auto: mean {s['speedup_mean']:.3f}x, max {s['speedup_max']:.3f}x, "
        f"min {s['speedup_min']:.3f}x",
        f"bucket cost: auto picks the exact shape's n_c in {s['auto_equals_exact_choice']:.0%}; auto/exact latency "
        f"mean {s['auto_over_exact_mean']:.4f}, max {s['auto_over_exact_max']:.4f} "
        f"(exact beats default in {s['exact_beats_default']:.0%}, mean {s['exact_speedup_mean']:.3f}x)",
        f"make_plan: fixed n_c {s['plan_fixed_s_median'] * 1e3:.0f} ms, auto miss {s['plan_miss_s_median']:.2f} s "
        f"(max {s['plan_miss_s_max']:.2f} s), auto hit {s['plan_hit_s_median'] * 1e3:.0f} ms "
        f"(max {s['plan_hit_s_max'] * 1e3:.0f} ms) (medians); cache hit rate {s['cache_hit_rate']:.0%}",
    ])


# ------------------------------------------------------------------------------------------ running
def run(quick: bool = False, hw: str = defaults.SIM_HARDWARE, jobs: int = 1) -> pd.DataFrame:
    """The grid, over `jobs` processes (each case owns its caches, so they are independent; experiments/pool.py);
    rows in grid order. The largest M go first, so that no long case starts last."""
    grid = cases(quick)
    heavy_first = sorted(range(len(grid)), key=lambda i: -grid[i]["tokens"])
    with pool.progress(len(grid), f"{NAME} {hw}") as bar:
        per_case = pool.run_cases(__spec__.name if __spec__ else __name__, grid, hw, quick, jobs=jobs, bar=bar,
                                  first=heavy_first)
    return pd.DataFrame([row for rows in per_case for row in rows])[COLUMNS]


def main(argv=None):
    ap = common.parser(sys.modules[__name__])
    a = ap.parse_args(argv)
    common.check_jobs_argument(ap, a.jobs)
    if a.backend == "gpu":
        common.gpu_backend(NAME)
    t0 = time.perf_counter()
    df = run(quick=a.quick, hw=a.hw, jobs=a.jobs)
    wanted = a.out or common.csv_path(NAME, a.hw, a.backend, a.date, quick=a.quick)
    path = common.write_csv(df, wanted)
    print(f"{common.written_message(path, wanted, len(df))} in {time.perf_counter() - t0:.0f} s")
    print(format_summary(summarise(df)))
    return path


if __name__ == "__main__":
    main()
