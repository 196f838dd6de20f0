"""Validate the simulator against the real fused kernels: measured vs predicted layer time, same Plan.

    python -m experiments.validate --measured results/fused_layers/h200_aligned_2026-11-24.csv \
        --hw profiles/h200_x1.json --out results/validation

Reads a CSV of measured kernel times and simulates every measured configuration on the same Plan (same
routing, Policy and n_c), on the CPU. Writes <out>/<tag>.csv (one row per configuration: measured_us,
predicted_us, error) and <tag>_summary.csv (per layer: MAPE, worst error; per n_c sweep: Spearman rank
correlation, the n_c the simulator picks and its measured cost against the best measured n_c), and prints
both. The targets (GOALS): MAPE <= 10% per layer, the simulator's n_c within 3% of the best measured, rank
correlation >= 0.9.

Every configuration belongs to one half, "fit" or "held-out", by a hash of its case (model, M, EP, routing; TP
above 1): a case's n_c sweeps stay together, and a case keeps its half when others are added. Calibrate on the fit half
only, report on the held-out half; <tag>_splits.csv has, per layer (or system) and half: n_configs, mape_pct,
max_ape_pct, spearman_min (over the half's n_c sweeps) and nc_within_3pct_frac (sweeps where the simulator's
n_c costs at most 3 % over the best measured).

It reads two kinds of CSV. `experiments.layer_bench` output (real multi-GPU runs under torchrun): the whole
MoE layer of comet, sequential and chunked against the simulator on the same Plans, with the profile as given
(calibrate the link on those GPUs first; measured so far: 2 x H200, results/validation/README.md).
`benchmarks.fused_layers` output: ONE GPU running an emulated world
(kernels.workspace.EmulatedWorld: every rank's buffers on the same GPU, rank 0's kernel timed alone). There
the "link" is the GPU's own memory: the simulator is given a profile whose link is local memory
(`HardwareProfile.emulated_world`: per-program rate and total bandwidth from comet.calibrate's part comm),
and every other rank's data is in place from the start, as the simulator's layer-alone runs assume. This
checks the compute model (tile rates, waves, the SMs n_c takes from the GEMM) and the communication
programs' share of the kernel, NOT NVLink: that is what the multi-GPU runs (experiments.layer_bench under
torchrun) check.

Compared configurations (CUDA-graph device times of rank 0):
    layer0  fused_blocks[n_c]  <->  comet, layer0 alone, layer0_comm="blocks", nc_layer0 = n_c
            fused_direct       <->  comet, layer0 alone, layer0_comm="direct"
            fused_blocks_gluon[n_c] <-> the same with layer0's tail (SimOptions.l0_tail_pct, the kernels'
                                    default); the one-launch fused_blocks has no tail (l0_tail_pct 0)
    layer1  fused[n_c]         <->  comet, layer1 alone, nc_layer1 = n_c, no tail (the one-launch tl kernel
                                    has none: Policy.l1_tail=False)
            fused_gluon[n_c]   <->  the same with the tail after the GEMM (Policy.l1_tail=True)
Predicted = the span of the simulated fused kernel's events on rank 0 (launch gap excluded, as in a graph
replay). The owner's separate reduce is not compared: benchmarks.fused_layers times it with single-shot
eager events, which measure launch and flag latency more than the reduce (they vary ~2x run to run;
measured: results/validation/README.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
from pathlib import Path

import pandas as pd
from scipy.stats import spearmanr
from tqdm import tqdm

from comet.calibrate import parse_params
from comet.core import defaults
from comet.core.case_args import hardware_arg
from comet.core.config import HardwareProfile
from comet.core.policy import benchmark_policy
from sim.options import SimOptions
from sim.run import make_case, simulate, with_policy

GOALS = {"mape_pct": 10.0, "nc_pick_pct": 3.0, "spearman": 0.9}
COLUMNS = ["model", "tokens_M", "ep", "tp", "routing", "split", "layer", "impl", "nc", "measured_us", "predicted_us",
           "error_pct"]
SPLITS = ("fit", "held-out")
SPLIT_COLUMNS = ["layer", "system", "split", "n_configs", "mape_pct", "max_ape_pct", "spearman_min",
                 "nc_within_3pct_frac"]


def split_of(model: str, tokens_M: int, ep: int, routing: str = "balanced", tp: int = 1) -> str:
    """The half a case belongs to: a stable hash of the case (not Python's salted hash), so a case keeps its
    half across runs and when other cases are added (TP enters the key only above 1, so the EP-only cases keep
    the halves they had before TP cases were measured)."""
    key = f"{model}|{int(tokens_M)}|{int(ep)}|{routing}" + (f"|tp={int(tp)}" if int(tp) > 1 else "")
    key = key.encode()
    return SPLITS[hashlib.sha256(key).digest()[0] & 1]


def _is_l1_config(parameters: pd.Series, pipeline: int, send_block: int) -> pd.Series:
    """Rows of comet.calibrate's `parameters` column measured in that layer1 kernel config (PIPELINE,
    SEND_BLOCK; rows without a pipeline key are from before PIPELINE existed: 0)."""
    return parameters.map(parse_params).map(
        lambda p: p.get("send_block") == str(send_block) and p.get("pipeline", "0") == str(pipeline))


def local_rates(calibration_csv: str | Path, l1_pipeline: int = 0, l1_send_block: int = 16
                ) -> dict[str, tuple[float, float]]:
    """{layer: (one program's GB/s, all programs' best GB/s)} from comet.calibrate's part d rows: layer0's
    pulls (comm_program_local_gbps) and layer1's reduce-and-store (l1_comm_program_local_gbps) in the
    kernel config the measured runs used (PIPELINE, SEND_BLOCK; rows without a pipeline key are PIPELINE=0).
    The simulator has one per-program rate; the two kinds of programs differ, so each layer gets its own."""
    cal = pd.read_csv(calibration_csv, comment="#")
    rates = {}
    for layer, name in (("l0", "comm_program_local_gbps"), ("l1", "l1_comm_program_local_gbps")):
        rows = cal[cal["measurement"] == name]
        totals = cal[cal["measurement"] == name.replace("program_", "programs_").replace("_gbps", "_total_gbps")]
        if layer == "l1":
            rows = rows[_is_l1_config(rows["parameters"], l1_pipeline, l1_send_block)]
            totals = totals[_is_l1_config(totals["parameters"], l1_pipeline, l1_send_block)]
        if rows.empty or totals.empty:
            raise ValueError(f"{calibration_csv} has no {name} rows: run `python -m comet.calibrate` on one GPU "
                             f"(part comm) to measure them")
        n_c = rows["parameters"].map(parse_params).map(lambda p: int(p["nc"]))
        rates[layer] = (float(rows["value"].astype(float)[n_c == n_c.min()].iloc[0]),
                        float(totals["value"].astype(float).max()))
    return rates


def l1_item_cost(calibration_csv: str | Path, l1_pipeline: int = 0, l1_send_block: int = 16
                 ) -> tuple[float, float] | None:
    """(fixed us per item, marginal GB/s) of layer1's communication programs in that kernel config, from
    comet.calibrate's two-chunk-size fit (l1_item_fixed_us, l1_item_marginal_gbps); None if not measured."""
    cal = pd.read_csv(calibration_csv, comment="#")
    found = {}
    for name in ("l1_item_fixed_us", "l1_item_marginal_gbps"):
        rows = cal[cal["measurement"] == name]
        rows = rows[_is_l1_config(rows["parameters"], l1_pipeline, l1_send_block)]
        if rows.empty:
            return None
        found[name] = float(rows["value"].iloc[-1])
    return found["l1_item_fixed_us"], found["l1_item_marginal_gbps"]


def _plan(model: str, tokens: int, ep: int, hw: HardwareProfile, routing: str = "balanced", tp: int = 1):
    """The Plan benchmarks.fused_layers times: its routing (balanced, or imbalanced at its default std), seed 0,
    the benchmarks' Policy."""
    from comet.core.config import ModelConfig

    policy = benchmark_policy(ModelConfig.from_name(model).activation)
    return make_case(model, ep=ep, tp=tp, tokens=tokens, hw=hw, routing=routing, seed=0, policy=policy)


# the fused kernels' own work in the simulator's events: not the launch gap, not the owner's separate reduce
KERNEL_KINDS = ("gemm0", "gemm0_direct", "pull", "copy", "gemm1", "reduce_send", "reduce_local")


def kernel_span_us(events: pd.DataFrame, rank: int) -> float:
    """From the first to the last event of the fused kernel on `rank`: what a CUDA-graph replay of that one
    kernel measures (no launch overhead)."""
    ev = events[(events["rank"] == rank) & events["kind"].isin(KERNEL_KINDS)]
    return float(ev["end_us"].max() - ev["start_us"].min())


def compare(measured: pd.DataFrame, hw_by_layer: dict[str, HardwareProfile], progress: bool = True
            ) -> pd.DataFrame:
    """One row per measured configuration of `measured` (benchmarks.fused_layers' columns); layer l is
    simulated on hw_by_layer[l] (same Plan tables: only the link figures differ)."""
    m = measured[(measured["timing"] == "graph") & (measured["rank"] == 0)]
    m = m[(m["note"].fillna("default config") == "default config") | (m["layer"] == "l0")]
    if "routing" not in m:  # CSVs from before benchmarks.fused_layers' --routing: balanced
        m = m.assign(routing="balanced")
    if "tp" not in m:  # CSVs from before its TP cases: TP 1
        m = m.assign(tp=1)
    rows = []
    cases = list(m.groupby(["model", "tokens_M", "ep", "tp", "routing"], sort=False))
    for (model, tokens, ep, tp, routing), g in tqdm(cases, desc="validate", unit="case", disable=not progress):
        # the tables do not depend on the hardware
        plan = _plan(model, int(tokens), int(ep), hw_by_layer["l0"], routing, int(tp))

        def predict(layer: str, plan=plan, l0_tail_pct: int = 0, **policy) -> float:
            hw = hw_by_layer["l0" if layer == "layer0" else "l1"]
            res = simulate(with_policy(dataclasses.replace(plan, hardware=hw), **policy), "comet",
                           SimOptions(layers=layer, l0_tail_pct=l0_tail_pct))
            return kernel_span_us(res.events, rank=0)
        for r in g.itertuples():
            if r.layer == "l0" and r.impl == "fused_blocks":  # the one-launch tl kernel: no tail
                meas, pred = r.time_us, predict("layer0", layer0_comm="blocks", nc_layer0=int(r.nc))
            elif r.layer == "l0" and r.impl == "fused_blocks_gluon":  # pulls beside the GEMM, then its tail
                meas, pred = r.time_us, predict("layer0", l0_tail_pct=SimOptions().l0_tail_pct,
                                                layer0_comm="blocks", nc_layer0=int(r.nc))
            elif r.layer == "l0" and r.impl == "fused_direct":
                meas, pred = r.time_us, predict("layer0", layer0_comm="direct")
            elif r.layer == "l1" and r.impl == "fused":
                meas, pred = r.time_us, predict("layer1", nc_layer1=int(r.nc), l1_tail=False)
            elif r.layer == "l1" and r.impl == "fused_gluon":  # the GEMM beside n_c programs, then the tail
                meas, pred = r.time_us, predict("layer1", nc_layer1=int(r.nc), l1_tail=True)
            else:
                continue
            rows.append({"model": model, "tokens_M": int(tokens), "ep": int(ep), "tp": int(tp), "routing": routing,
                         "split": split_of(model, tokens, ep, routing, tp), "layer": r.layer, "impl": r.impl,
                         "nc": "" if pd.isna(r.nc) else int(r.nc), "measured_us": round(float(meas), 2),
                         "predicted_us": round(pred, 2), "error_pct": round(100 * (pred - meas) / meas, 2)})
    return pd.DataFrame(rows, columns=COLUMNS)


LAYER_BENCH_SYSTEMS = {"comet": "comet_us", "sequential": "sequential_us", "chunked": "chunked_best_us"}


def compare_layer_bench(measured: pd.DataFrame, hw: HardwareProfile, progress: bool = True) -> pd.DataFrame:
    """One row per (configuration, system) of experiments.layer_bench's CSV (real multi-GPU runs under
    torchrun): the whole MoE layer's latency against the simulator's for comet (at the measured best n_c),
    sequential and chunked (at the measured best C), on the Plan layer_bench builds (same routing kind, std,
    seed and Policy). Emulated rows (one GPU) are skipped: their ranks run one after another."""
    from comet.core.config import ModelConfig

    real = measured[~measured["emulated"].astype(str).str.lower().isin(["true", "1"])]
    rows = []
    for r in tqdm(list(real.itertuples()), desc="validate layer_bench", unit="config", disable=not progress):
        policy = benchmark_policy(r.activation, nc_layer1=int(r.comet_nc1), dispatch=r.dispatch)
        model = ModelConfig.from_name(r.model, activation=r.activation)
        imbalance = {"std": float(r.std)} if r.routing == "imbalanced" else {}
        plan = make_case(model, ep=int(r.ep), tp=int(r.tp), tokens=int(r.tokens_M), hw=hw, routing=r.routing,
                         seed=int(getattr(r, "seed", 0) or 0), policy=policy, **imbalance)
        for system, column in LAYER_BENCH_SYSTEMS.items():
            meas = getattr(r, column)
            if pd.isna(meas) or meas == "":
                continue
            chunks = int(r.chunked_best_C) if system == "chunked" else 1
            pred = simulate(plan, system, SimOptions(chunks=chunks, record=False)).latency_us
            rows.append({"model": r.model, "tokens_M": int(r.tokens_M), "ep": int(r.ep), "tp": int(r.tp),
                         "routing": r.routing,
                         "split": split_of(r.model, r.tokens_M, r.ep, f"{r.routing} tp={int(r.tp)}"), "layer": system,
                         "impl": f"moe layer tp={int(r.tp)} {r.routing}", "nc": "",
                         "measured_us": round(float(meas), 2), "predicted_us": round(pred, 2),
                         "error_pct": round(100 * (pred - float(meas)) / float(meas), 2)})
    return pd.DataFrame(rows, columns=COLUMNS)


SWEEP_KEYS = ["model", "tokens_M", "ep", "tp", "routing", "layer", "impl"]


def _sweeps(cmp: pd.DataFrame):
    """The n_c sweeps of >= 3 points: (their key as a dict, their rows, Spearman rho of measured against
    predicted, the row the simulator picks, the best measured row)."""
    if "tp" not in cmp:  # comparisons from before TP cases
        cmp = cmp.assign(tp=1)
    for key, g in cmp[cmp["nc"] != ""].groupby(SWEEP_KEYS, sort=False):
        if len(g) >= 3:
            rho = float(spearmanr(g["measured_us"], g["predicted_us"]).statistic)
            pick, best = g.loc[g["predicted_us"].idxmin()], g.loc[g["measured_us"].idxmin()]
            yield dict(zip(SWEEP_KEYS, key, strict=True)), g, rho, pick, best


def summarize(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per layer: MAPE and worst |error|; per n_c sweep: Spearman rho, the simulator's pick and its cost."""
    if "routing" not in cmp:
        cmp = cmp.assign(routing="balanced")
    if "tp" not in cmp:
        cmp = cmp.assign(tp=1)
    out = []
    for layer, g in cmp.groupby("layer"):
        err = g["error_pct"].abs()
        out.append({"scope": f"{layer} all", "n": len(g), "mape_pct": round(err.mean(), 2),
                    "worst_pct": round(err.max(), 2)})
    for k, g, rho, pick, best in _sweeps(cmp):
        err = g["error_pct"].abs()
        scope = (f"{k['layer']} {k['impl']} {k['model']} M={k['tokens_M']}"
                 + (f" EP={k['ep']} TP={k['tp']}" if int(k["tp"]) > 1 else "")
                 + ("" if k["routing"] == "balanced" else f" {k['routing']}") + " n_c sweep")
        out.append({"scope": scope, "n": len(g),
                    "mape_pct": round(err.mean(), 2), "worst_pct": round(err.max(), 2),
                    "spearman": round(rho, 3), "sim_nc": int(pick["nc"]), "best_nc": int(best["nc"]),
                    "pick_cost_pct": round(100 * (pick["measured_us"] / best["measured_us"] - 1), 2)})
    return pd.DataFrame(out)


def split_summary(cmp: pd.DataFrame) -> pd.DataFrame:
    """Per layer (fused-kernel rows: l0, l1; system "comet") or system (layer_bench rows: layer "moe") and half:
    the columns SPLIT_COLUMNS. spearman_min and nc_within_3pct_frac cover the half's n_c sweeps of >= 3 points
    (empty when it has none)."""
    out = []
    for (layer, half), g in cmp.groupby(["layer", "split"], sort=True):
        fused = layer in ("l0", "l1")
        err = g["error_pct"].abs()
        sweeps = [(rho, pick["measured_us"] <= 1.03 * best["measured_us"]) for _, _, rho, pick, best in _sweeps(g)]
        out.append({"layer": layer if fused else "moe", "system": "comet" if fused else layer, "split": half,
                    "n_configs": len(g), "mape_pct": round(err.mean(), 2), "max_ape_pct": round(err.max(), 2),
                    "spearman_min": round(min(r for r, _ in sweeps), 3) if sweeps else "",
                    "nc_within_3pct_frac": round(sum(w for _, w in sweeps) / len(sweeps), 3) if sweeps else ""})
    return pd.DataFrame(out, columns=SPLIT_COLUMNS)


def emulated_profiles(ap: argparse.ArgumentParser, a: argparse.Namespace, hw: HardwareProfile
                      ) -> dict[str, HardwareProfile]:
    """{layer: `hw` with its link replaced by local memory at that layer's measured communication rates}:
    layer1 items cost the calibrated fixed time plus their bytes at the marginal rate where measured (unless
    --no-item-overhead), else their bytes at the average per-program rate, with no fixed time."""
    rates = local_rates(a.calibration, a.l1_pipeline, a.l1_send_block) if a.calibration else {}
    for layer, per, total in (("l0", a.per_program_gbps, a.local_gbps), ("l1", a.l1_per_program_gbps, a.local_gbps)):
        if per and total:
            rates[layer] = (per, total)
    if set(rates) != {"l0", "l1"}:
        ap.error("the emulated link's rates are needed: give --calibration (comet.calibrate CSV) or "
                 "--per-program-gbps, --l1-per-program-gbps and --local-gbps")
    (l1_per, l1_total), l1_fixed = rates["l1"], 0.0
    item = l1_item_cost(a.calibration, a.l1_pipeline, a.l1_send_block) if a.calibration else None
    if item is not None and not a.no_item_overhead:
        l1_fixed, l1_per = item
    return {"l0": hw.emulated_world(*rates["l0"]),
            "l1": hw.emulated_world(l1_per, l1_total).replace(l1_item_overhead_us=l1_fixed)}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m experiments.validate", description=__doc__.split("\n")[0])
    ap.add_argument("--measured", required=True, help="CSV of benchmarks.fused_layers (emulated world, one GPU)")
    ap.add_argument("--hw", default=defaults.GPU_HARDWARE, type=hardware_arg,
                    help="hardware profile: name or JSON (e.g. profiles/h200_x1.json)")
    ap.add_argument("--calibration", default=None,
                    help="comet.calibrate CSV with comm_program_local_gbps rows (the emulated link's rates)")
    ap.add_argument("--per-program-gbps", type=float, default=None, help="override: one layer0 program's rate")
    ap.add_argument("--l1-per-program-gbps", type=float, default=None, help="override: one layer1 program's rate")
    ap.add_argument("--local-gbps", type=float, default=None, help="override: all programs' local rate")
    ap.add_argument("--l1-pipeline", type=int, default=0,
                    help="layer1 kernel config of the measured runs: PIPELINE (0: item by item, 1: pipelined, "
                         "the kernels' default)")
    ap.add_argument("--l1-send-block", type=int, default=16, help="and SEND_BLOCK (16 item by item, 32 pipelined)")
    ap.add_argument("--no-item-overhead", action="store_true",
                    help="price layer1 items by bytes at the average per-program rate only (the model before "
                         "l1_item_overhead_us), for comparison")
    ap.add_argument("--out", default="results/validation")
    ap.add_argument("--tag", default=None, help="file stem (default <hw>-emulated_<date>)")
    a = ap.parse_args(argv)
    hw = HardwareProfile.from_name(a.hw)
    if not Path(a.measured).is_file():
        raise SystemExit(f"--measured {a.measured}: no such file; give a CSV of benchmarks.fused_layers or "
                         f"experiments.layer_bench (results/fused_layers/, results/layer_bench/)")
    try:
        measured = pd.read_csv(a.measured, comment="#")
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise SystemExit(f"--measured {a.measured}: not a CSV this script reads ({str(e).splitlines()[0]}); give "
                         f"one of benchmarks.fused_layers or experiments.layer_bench") from None
    if "comet_us" in measured.columns:  # experiments.layer_bench: real multi-GPU runs, the link as profiled
        cmp = compare_layer_bench(measured, hw)
        header, default_stem = f"# measured: {a.measured}; profile: {a.hw}\n", f"{Path(a.hw).stem}-layer_bench"
    else:
        hw_by_layer = emulated_profiles(ap, a, hw)
        cmp = compare(measured, hw_by_layer)
        header = (f"# measured: {a.measured}; profile: {a.hw} with the link replaced by local memory: "
                  + "; ".join(f"{lay} {h.per_block_link_gbps:.2f} GB/s per program, {h.link_gbps:.0f} GB/s in "
                              f"all, {h.l1_item_overhead_us:.2f} us per layer1 item" for lay, h in hw_by_layer.items())
                  + "\n")
        default_stem = f"{Path(a.hw).stem}-emulated"
    if cmp.empty:
        raise SystemExit(f"{a.measured}: no rows this script can compare (needs benchmarks.fused_layers' or "
                         f"experiments.layer_bench's CSV)")
    summary, splits = summarize(cmp), split_summary(cmp)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = a.tag or f"{default_stem}_{datetime.date.today().isoformat()}"
    for name, df in ((f"{stem}.csv", cmp), (f"{stem}_summary.csv", summary), (f"{stem}_splits.csv", splits)):
        with open(out / name, "w") as f:
            f.write(header)
            df.to_csv(f, index=False)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(cmp.to_string(index=False))
        print(summary.to_string(index=False))
        print(splits.to_string(index=False))
    print(f"goals: {GOALS}; wrote {out / (stem + '.csv')}, the summary and the splits")


if __name__ == "__main__":
    main()
