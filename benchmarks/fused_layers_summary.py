"""The fused kernels against their GEMM alone and against their floor, from a `benchmarks.fused_layers` CSV.

    python -m benchmarks.fused_layers_summary results/fused_layers/h200_jit_2026-12-03.csv

Per case (model, M) and layer, graph-replay times of one rank:
  gemm_us            the grouped GEMM alone on the same rows (the Gluon kernel)
  kernel             the fused kernel (`FUSED`): layer0 "fused_blocks" (one tl launch) or "fused_blocks_gluon";
                     layer1 "fused" (one tl launch) or "fused_gluon" (the Gluon GEMM beside a communication
                     kernel)
  fused_us, best_nc  the best fused time over the n_c swept (layer0: the "blocks" mechanism; direct_us: the
                     "direct" one, GEMM tiles reading peers' rows, n_c 0)
  over_gemm          fused_us / gemm_us, and the goal for it (`GOALS`)
  floor_us           max(gemm_us, HBM bytes / the measured HBM bandwidth): A rows, the local experts' weights
                     and C, plus the communication's bytes read and written once
  of_floor           floor_us / fused_us (1: at the floor)
  prog_gbps_low_nc   bytes moved / (time x n_c) at the smallest n_c swept: the per-program communication
                     rate where communication bounds the kernel (a lower bound: it assumes the programs
                     move data for the whole kernel; low_nc_over_gemm well above 1 says it is comm-bound).
                     Not a rate for layer1's Gluon form with its tail (Policy.l1_tail, the default): the
                     tail's programs after the GEMM move most of the bytes; benchmarks.l1_comm measures
                     the programs' own rate
  gemm_clock_mhz, fused_clock_mhz, over_gemm_cycles
                     where the CSV has benchmarks.fused_layers' clock columns: the mean SM clock sampled
                     while the GEMM alone (its fastest row) and the best fused row were measured, and
                     over_gemm in clock cycles (fused_us x fused clock / (gemm_us x gemm clock)): at the
                     700 W limit the clock moves by up to 1.4x with what ran before, which a time ratio of
                     rows measured apart carries and a cycle ratio does not
Writes <csv stem>_summary.csv and <csv stem>_l1_nc.png (layer1 time over its GEMM alone against n_c, the
kernel's own Fig. 8 curve on one GPU) beside the CSV.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib
import matplotlib.ticker
import pandas as pd

from comet.core.config import ModelConfig

REPO = Path(__file__).resolve().parents[1]
# the fused-over-GEMM goals of the fused-kernel work: (layer, model) -> ratio
GOALS = {("l0", "mixtral-8x7b"): 1.05, ("l0", "phi-3.5-moe"): 1.05, ("l0", "qwen2-moe-2.7b"): 1.10,
         ("l1", "mixtral-8x7b"): 1.10, ("l1", "phi-3.5-moe"): 1.10, ("l1", "qwen2-moe-2.7b"): 1.35}
# the fused kernels summarised per layer (benchmarks.fused_layers impl names): layer0's "blocks" mechanism;
# each layer's one tl launch and its Gluon form (CSVs from before the Gluon forms have only the first)
FUSED = {"l0": ("fused_blocks", "fused_blocks_gluon"), "l1": ("fused", "fused_gluon")}


def measured_hbm_gbps(profile: Path = REPO / "profiles" / "h200_x1.json") -> float:
    return float(json.loads(profile.read_text())["hbm_gbps"])


def _gemm_bytes(model: ModelConfig, ep: int, layer: str, rows: int, tp: int = 1) -> float:
    """HBM bytes of one rank's grouped GEMM read and written once: A, the local experts' weights (their 1/TP
    shard of the FFN dimension), C (bf16)."""
    N, k0, K, E_loc = model.hidden_N, model.layer0_cols // tp, model.ffn_K // tp, model.experts_E // ep
    d_in, d_w, d_out = (N, k0, k0 // (2 if model.activation == "swiglu" else 1)) if layer == "l0" else (K, N, N)
    return 2.0 * (rows * d_in + E_loc * d_in * d_w + rows * d_out)


def graph_rows(df: pd.DataFrame) -> pd.DataFrame:
    """The graph-replay rows in the kernels' default configuration (not --l1-configs' variants), with routing
    and tp columns (CSVs from before benchmarks.fused_layers' --routing: balanced; before its TP cases: 1)."""
    g = df[(df["timing"] == "graph") & (df["note"].fillna("default config") == "default config")]
    g = g if "routing" in g else g.assign(routing="balanced")
    return g if "tp" in g else g.assign(tp=1)


def summarise(df: pd.DataFrame, hbm_gbps: float) -> pd.DataFrame:
    out = []
    for (model, M, ep, tp, routing, layer), case in graph_rows(df).groupby(
            ["model", "tokens_M", "ep", "tp", "routing", "layer"], sort=False):
        gemm = case[case["impl"] == "gemm_alone"]["time_us"].min()
        for kernel in FUSED[layer]:
            row = _summary_row(case, kernel, gemm, model, M, ep, routing, layer, hbm_gbps, int(tp))
            if row is not None:
                out.append(row)
    res = pd.DataFrame(out)
    res["meets_goal"] = res["over_gemm"] <= res["goal"]
    return res


def _summary_row(case: pd.DataFrame, kernel: str, gemm: float, model, M, ep, routing, layer,
                 hbm_gbps: float, tp: int = 1) -> dict | None:
    """One case's summary for one fused kernel (None: the CSV has no rows of it)."""
    fused = case[case["impl"] == kernel].sort_values("nc")
    if fused.empty or pd.isna(gemm):
        return None
    best = fused.loc[fused["time_us"].idxmin()]
    gemm_row = case[case["impl"] == "gemm_alone"].sort_values("time_us").iloc[0]
    rows, moved = int(best["rows"]), float(best["moved_bytes"])
    floor = max(gemm, (_gemm_bytes(ModelConfig.from_name(model), int(ep), layer, rows, tp) + 2 * moved)
                / (hbm_gbps * 1e3))
    low = fused.iloc[0]
    direct = case[case["impl"] == "fused_direct"]["time_us"]
    return {"model": model, "tokens_M": M, "ep": ep, "tp": tp, "routing": routing, "layer": layer, "kernel": kernel,
            "rows": rows, "gemm_us": gemm, "fused_us": best["time_us"], "best_nc": int(best["nc"]),
            "direct_us": float(direct.min()) if len(direct) else float("nan"),
            "over_gemm": round(best["time_us"] / gemm, 3), "goal": GOALS.get((layer, model)),
            "floor_us": round(floor, 1), "of_floor": round(floor / best["time_us"], 3),
            "low_nc": int(low["nc"]), "low_nc_over_gemm": round(low["time_us"] / gemm, 3),
            "prog_gbps_low_nc": round(moved / (low["time_us"] * low["nc"]) / 1e3, 2),
            **_clocks(gemm_row, best)}


def _clocks(gemm_row: pd.Series, best: pd.Series) -> dict:
    """The clocks of the two rows over_gemm divides, and that ratio in cycles (NaN where either row has no
    clock sample: CSVs from before the clock columns, or nvidia-smi absent)."""
    g, f = (float(r.get("sm_clock_mhz", float("nan"))) for r in (gemm_row, best))
    cycles = best["time_us"] * f / (gemm_row["time_us"] * g)
    return {"gemm_clock_mhz": g, "fused_clock_mhz": f, "over_gemm_cycles": round(cycles, 3)}


def plot_l1_nc(df: pd.DataFrame, path: Path) -> None:
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    g = graph_rows(df)
    g = g[g["layer"] == "l1"]
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for (model, M, ep, tp, routing), case in g.groupby(["model", "tokens_M", "ep", "tp", "routing"], sort=False):
        gemm = case[case["impl"] == "gemm_alone"]["time_us"].min()
        color = None
        for kernel in reversed(FUSED["l1"]):  # the Gluon form first, in full colour
            f = case[case["impl"] == kernel].sort_values("nc")
            if f.empty:
                continue
            line, = ax.plot(f["nc"], f["time_us"] / gemm, marker="o" if color is None else ".",
                            ls="-" if routing == "balanced" else "--", color=color, alpha=1 if color is None else 0.4,
                            label=f"{model} M={M}" + ("" if ep == 4 else f" EP={ep}") + ("" if tp == 1 else f" TP={tp}")
                            + ("" if routing == "balanced" else f" ({routing})")
                            + (", one tl launch" if kernel == "fused" else ""))
            color = line.get_color()  # a case's other kernel in the same colour, paler
    ax.axhline(1.0, color="k", lw=0.8)
    ax.set_yscale("log")
    ax.yaxis.set_major_locator(matplotlib.ticker.FixedLocator([1, 1.25, 1.5, 2, 3, 4, 6, 8, 12, 16]))
    ax.yaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(g["nc"].dropna().unique()), [f"{int(v)}" for v in sorted(g["nc"].dropna().unique())])
    ax.set_xlabel("n_c (communication programs of layer1)")
    ax.set_ylabel("fused layer1 time / its GEMM alone")
    ax.set_title("Fused layer1 against n_c (one H200, emulated EP=4 unless named, graph replay; pale: one tl "
                 "launch)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fused_layers_summary", description=__doc__.split("\n")[0])
    ap.add_argument("csv", type=Path, help="a benchmarks.fused_layers CSV")
    ap.add_argument("--hbm-gbps", type=float, default=None,
                    help="HBM bandwidth for the floor in GB/s (default: the measured one of profiles/h200_x1.json)")
    a = ap.parse_args(argv)
    if not a.csv.exists():
        raise SystemExit(f"error: {a.csv} does not exist; give a CSV written by benchmarks.fused_layers")
    df = pd.read_csv(a.csv, comment="#")
    res = summarise(df, a.hbm_gbps or measured_hbm_gbps())
    out = a.csv.with_name(a.csv.stem + "_summary.csv")
    res.to_csv(out, index=False)
    plot_l1_nc(df, a.csv.with_name(a.csv.stem + "_l1_nc.png"))
    print(res.to_string(index=False))
    print(f"wrote {out} and {a.csv.stem}_l1_nc.png")


if __name__ == "__main__":
    main()
