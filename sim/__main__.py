"""Command line: simulate one MoE layer under comet and the baselines, on one routing, and compare.

    python -m sim --model mixtral-8x7b --ep 8 --tokens 16384 --hw h800
    python -m sim --model qwen2-moe-2.7b --ep 8 --tokens 8192 --nc auto --trace /tmp/qwen.json
    python -m sim --policy order=expert-major,comm_rows=32 --systems comet --json

Prints latency per layer and in total (us), comet's speedup over each system, and the hidden
communication fraction (PAPER.md Fig. 11). --json prints a list with one summary per system instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from comet.core import defaults
from comet.core.config import HARDWARE, MODELS
from comet.core.policy import Policy
from comet.core.routing import ROUTINGS
from comet.tuning.sweep import NC_CANDIDATES, best_nc
from sim.options import LAYERS, SYSTEMS, TILE_ROWS, TILE_SCHEDULES, SimOptions
from sim.run import make_case, simulate, with_policy


def _policy_overrides(text: str) -> dict:
    """"key=value,key=value" -> Policy field overrides, typed like the field's default."""
    fields = {f.name: f for f in dataclasses.fields(Policy)}
    out = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise SystemExit(f"--policy: expected key=value, got {item!r}")
        key, value = (s.strip() for s in item.split("=", 1))
        if key not in fields:
            raise SystemExit(f"--policy: unknown field {key!r}; Policy fields: {', '.join(fields)}")
        default = fields[key].default
        try:
            out[key] = type(default)(value) if not isinstance(default, str) else value
        except ValueError as e:
            raise SystemExit(f"--policy {key}: {e}") from e
    return out


def _nc(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected an integer or 'auto', got {text!r}") from e


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m sim", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    g = ap.add_argument_group("case")
    g.add_argument("--model", default="mixtral-8x7b", help=f"one of {', '.join(MODELS)}")
    g.add_argument("--ep", type=int, default=8, help="expert-parallel degree")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel degree (ranks = ep x tp)")
    g.add_argument("--tokens", type=int, default=16384, help="M, tokens in the layer over the whole group")
    g.add_argument("--topk", type=int, help="override the model's topk")
    g.add_argument("--experts", type=int, help="override the model's expert count E")
    g.add_argument("--routing", default="balanced", choices=ROUTINGS)
    g.add_argument("--std", type=float, default=0.032, help="expert load-share std for --routing imbalanced")
    g.add_argument("--seed", type=int, default=0, help="routing seed")
    g.add_argument("--hw", default=defaults.SIM_HARDWARE,
                   help=f"hardware profile: one of {', '.join(HARDWARE)} or a .json file")
    g.add_argument("--ranks-per-node", type=int, help="GPUs per node (default: the profile's); more ranks "
                                                      "than this talk over the NIC")
    g = ap.add_argument_group("schedule")
    g.add_argument("--nc", type=_nc, help="communication blocks of layer1 (Policy.nc_layer1), or 'auto': the "
                                          "fastest of a sweep of layer1 alone, as Comet picks it")
    g.add_argument("--nc0", type=_nc, help="communication blocks of layer0 (Policy.nc_layer0), or 'auto'")
    g.add_argument("--policy", default="", help="Policy overrides key=value[,key=value], e.g. "
                                                "order=expert-major,layer0_comm=copy-engine,comm_rows=32")
    g.add_argument("--chunks", type=int, default=SimOptions.chunks, help="token chunks of the chunked baseline")
    g.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated subset of " + ",".join(SYSTEMS))
    g.add_argument("--layers", default="both", choices=LAYERS, help="the whole layer, or layer0/layer1 alone")
    g.add_argument("--tile-schedule", default="dynamic", choices=TILE_SCHEDULES,
                   help="compute blocks take tiles from an atomic counter (dynamic) or round-robin (static)")
    g.add_argument("--tile-rows", default="padded", choices=TILE_ROWS,
                   help="cost ragged tiles as full BM-row tiles (padded) or by their rows (actual)")
    g.add_argument("--activation-kernel", default="auto", choices=("auto", "fused", "separate"),
                   help="auto: fused into comet's GEMM epilogue, a separate kernel for the baselines")
    g.add_argument("--copy-engine-gbps", type=float, help="copy-engine bandwidth for layer0_comm=copy-engine "
                                                          "(default min(link, 112 GB/s))")
    g = ap.add_argument_group("output")
    g.add_argument("--trace", metavar="FILE", help="write a Chrome trace JSON (Perfetto); with several systems, "
                                                   "one file each: FILE's stem + '.<system>'")
    g.add_argument("--json", action="store_true", help="print a machine-readable summary (a list, one per system)")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _trace_path(base: str, system: str, several: bool) -> Path:
    p = Path(base)
    return p.with_name(f"{p.stem}.{system}{p.suffix or '.json'}") if several else p


def format_table(rows: list[dict], header: str) -> str:
    comet = next((r for r in rows if r["system"] == "comet"), None)
    lines = [header, f"{'system':<11} {'total us':>9} {'layer0 us':>10} {'layer1 us':>10} {'comet speedup':>14} "
                     f"{'hidden comm':>12}"]
    for r in rows:
        speed = f"{r['latency_us'] / comet['latency_us']:.2f}x" if comet else "-"
        hidden = r["hidden_comm_fraction"]
        hidden_s = "-" if hidden != hidden else f"{100 * hidden:.1f}%"
        lines.append(f"{r['system']:<11} {r['latency_us']:>9.1f} {r['layer0_us']:>10.1f} {r['layer1_us']:>10.1f} "
                     f"{speed:>14} {hidden_s:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    bad = [s for s in systems if s not in SYSTEMS]
    if bad:
        raise SystemExit(f"--systems: unknown {bad}; choose from {', '.join(SYSTEMS)}")
    if a.chunks < 1:
        raise SystemExit("--chunks must be >= 1")
    pol = _policy_overrides(a.policy)
    for key, value in (("nc_layer1", a.nc), ("nc_layer0", a.nc0)):
        if isinstance(value, int):
            pol[key] = value
    fuse = {"auto": None, "fused": True, "separate": False}[a.activation_kernel]
    options = SimOptions(layers=a.layers, chunks=a.chunks, tile_schedule=a.tile_schedule, tile_rows=a.tile_rows,
                         fuse_activation=fuse, copy_engine_gbps=a.copy_engine_gbps)
    try:
        plan = make_case(a.model, ep=a.ep, tp=a.tp, tokens=a.tokens, hw=a.hw, routing=a.routing, seed=a.seed,
                         std=a.std, topk=a.topk, experts=a.experts, policy=Policy(**pol),
                         ranks_per_node=a.ranks_per_node)
        progress = not a.no_progress and sys.stderr.isatty()
        if a.nc == "auto":
            plan = with_policy(plan, nc_layer1=best_nc(plan, 1, NC_CANDIDATES, options, progress)[0])
        if a.nc0 == "auto" and plan.policy.layer0_comm == "blocks":
            plan = with_policy(plan, nc_layer0=best_nc(plan, 0, NC_CANDIDATES, options, progress)[0])
        it = systems
        if progress:
            from tqdm import tqdm

            it = tqdm(systems, desc="simulating", unit="system", leave=False)
        results = {}
        for s in it:
            results[s] = simulate(plan, system=s, options=options)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    if a.trace:
        for s, res in results.items():
            path = res.write_chrome_trace(_trace_path(a.trace, s, len(results) > 1))
            print(f"wrote {path} ({s}; open it in https://ui.perfetto.dev)", file=sys.stderr)
    rows = [results[s].summary() for s in systems]
    pol_ = plan.policy
    if a.json:
        comet = results.get("comet")
        for row in rows:
            row["comet_speedup"] = row["latency_us"] / comet.latency_us if comet else None
            row["critical_path_us"] = results[row["system"]].critical_path_breakdown()
        print(json.dumps({"config": {"model": plan.model.name, "tokens": plan.num_tokens, "ep": a.ep, "tp": a.tp,
                                     "hardware": plan.hardware.name, "routing": a.routing, "seed": a.seed,
                                     "policy": dataclasses.asdict(pol_), "options": dataclasses.asdict(options)},
                          "systems": rows}, indent=2))
    else:
        header = (f"{plan.model.name}  M={plan.num_tokens}  EP={a.ep} TP={a.tp}  hw={plan.hardware.name}  "
                  f"routing={a.routing}  n_c layer0={pol_.nc_layer0} ({pol_.layer0_comm}) layer1={pol_.nc_layer1}  "
                  f"chunks={options.chunks}  layers={options.layers}")
        print(format_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
