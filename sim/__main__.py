"""Command line: simulate one MoE layer under comet and the baselines, on one routing, and compare.

    python -m sim --model mixtral-8x7b --ep 8 --tokens 16384 --hw h800
    python -m sim --model qwen2-moe-2.7b --ep 8 --tokens 8192 --nc auto --trace /tmp/qwen.json
    python -m sim --policy order=expert-major,comm_rows=32 --systems comet --json

Prints latency per layer and in total (us), comet's speedup over each system, and the hidden
communication fraction (the paper's Fig. 11). --json prints a list with one summary per system instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import threading
import time
from pathlib import Path

from comet.core.case_args import add_case_arguments, case_model, case_routing
from comet.core.config import ParallelConfig
from comet.core.policy import Policy
from comet.tuning.sweep import NC_CANDIDATES, best_nc
from sim.hardware_model import COPY_ENGINE_MEASURED_GBPS
from sim.options import LAYERS, LINK_MODELS, SYSTEMS, TILE_ROWS, TILE_SCHEDULES, SimOptions
from sim.run import check_size, make_case, runnable_systems, simulate, with_policy


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
    add_case_arguments(g, tokens=16384)
    g.add_argument("--ranks-per-node", type=int, default=argparse.SUPPRESS,
                   help="GPUs per node, >= 1 (default: the profile's, 8 for the built-in ones); ranks on other "
                        "nodes talk over the NIC")
    g = ap.add_argument_group("schedule")
    g.add_argument("--nc", type=_nc, default=argparse.SUPPRESS,
                   help=f"communication blocks (SMs) of layer1, or 'auto': the fastest of {NC_CANDIDATES} for "
                        f"layer1 alone, as Comet picks it (default: Policy.nc_layer1 = {Policy.nc_layer1})")
    g.add_argument("--nc0", type=_nc, default=argparse.SUPPRESS,
                   help=f"communication blocks (SMs) of layer0, or 'auto' (default: Policy.nc_layer0 = "
                        f"{Policy.nc_layer0})")
    g.add_argument("--policy", default=argparse.SUPPRESS,
                   help="Policy overrides key=value[,key=value], e.g. order=expert-major,layer0_comm=copy-engine,"
                        "comm_rows=32 (default: none, comet.core.policy.Policy's fields)")
    g.add_argument("--chunks", type=int, default=SimOptions.chunks, help="token chunks of the chunked baseline")
    g.add_argument("--systems", default=argparse.SUPPRESS,
                   help="comma-separated subset of " + ",".join(SYSTEMS) + " (default: every system that runs the "
                        "case: the paper's baselines need --layers both, FasterMoE and Tutel TP = 1)")
    g.add_argument("--layers", default="both", choices=LAYERS, help="the whole layer, or layer0/layer1 alone")
    g.add_argument("--tile-schedule", default="dynamic", choices=TILE_SCHEDULES,
                   help="compute blocks take tiles from an atomic counter (dynamic) or round-robin (static)")
    g.add_argument("--tile-rows", default="padded", choices=TILE_ROWS,
                   help="cost ragged tiles as full BM-row tiles (padded) or by their rows (actual)")
    g.add_argument("--activation-kernel", default="auto", choices=("auto", "fused", "separate"),
                   help="auto: fused into comet's GEMM epilogue, a separate kernel for the baselines")
    g.add_argument("--copy-engine-gbps", type=float, default=argparse.SUPPRESS,
                   help="copy-engine bandwidth in GB/s for layer0_comm=copy-engine (default: min(link, "
                        f"{COPY_ENGINE_MEASURED_GBPS:g} GB/s measured))")
    g.add_argument("--link-model", default="auto", choices=LINK_MODELS,
                   help="how transfers share ports: exact max-min, independent processor-sharing ports (fast at "
                        "many GPUs), or auto (max-min on one node, independent ports across nodes)")
    g = ap.add_argument_group("output")
    g.add_argument("--trace", metavar="FILE", default=argparse.SUPPRESS,
                   help="write a Chrome trace JSON (Perfetto); with several systems, one file each: FILE's stem + "
                        "'.<system>' (default: none)")
    g.add_argument("--json", action="store_true",
                   help='print {"config": ..., "systems": [one summary per system]} as JSON instead of the table')
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap


def _trace_path(base: str, system: str, several: bool) -> Path:
    p = Path(base)
    return p.with_name(f"{p.stem}.{system}{p.suffix or '.json'}") if several else p


@contextlib.contextmanager
def heartbeat(label: str, every_s: float = 5.0, stream=sys.stderr):
    """While the body runs, a log line every `every_s` seconds (for runs without a terminal, where no progress
    bar shows): '<label>: still running, 15 s'."""
    done = threading.Event()
    t0 = time.perf_counter()

    def beat():
        while not done.wait(every_s):
            print(f"{label}: still running, {time.perf_counter() - t0:.0f} s", file=stream, flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def format_table(rows: list[dict], header: str) -> str:
    comet = next((r for r in rows if r["system"] == "comet"), None)
    w = max([len("system")] + [len(r["system"]) for r in rows])  # the paper's names are long (megatron-cutlass)
    lines = [header, f"{'system':<{w}} {'total us':>9} {'layer0 us':>10} {'layer1 us':>10} {'comet speedup':>14} "
                     f"{'hidden comm':>12}"]
    for r in rows:
        speed = f"{r['latency_us'] / comet['latency_us']:.2f}x" if comet else "-"
        hidden = r["hidden_comm_fraction"]
        hidden_s = "-" if hidden != hidden else f"{100 * hidden:.1f}%"
        lines.append(f"{r['system']:<{w}} {r['latency_us']:>9.1f} {r['layer0_us']:>10.1f} {r['layer1_us']:>10.1f} "
                     f"{speed:>14} {hidden_s:>12}")
    return "\n".join(lines)


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    for name in ("nc", "nc0", "ranks_per_node", "copy_engine_gbps", "trace"):
        setattr(a, name, getattr(a, name, None))
    a.policy = getattr(a, "policy", "")
    if a.trace and not Path(a.trace).resolve().parent.is_dir():
        raise SystemExit(f"error: --trace {a.trace}: the folder {Path(a.trace).resolve().parent} does not exist; "
                         f"create it or write the trace elsewhere")
    systems = ([s.strip() for s in a.systems.split(",") if s.strip()] if getattr(a, "systems", "")
               else runnable_systems(a.tp, a.layers))
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
                         fuse_activation=fuse, copy_engine_gbps=a.copy_engine_gbps, link_model=a.link_model)
    try:
        model = case_model(a)
        seconds = check_size(model, ParallelConfig(ep=a.ep, tp=a.tp), a.tokens, Policy(**pol), record=bool(a.trace))
        if seconds > 60:
            print(f"note: each system's simulation will take roughly {seconds:.0f} s on one core", file=sys.stderr)
        routing = case_routing(a, model)
        plan = make_case(model, ep=a.ep, tp=a.tp, tokens=a.tokens, hw=a.hw, routing=routing, policy=Policy(**pol),
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
            # no terminal (and progress not turned off): log lines instead of a bar
            beat = contextlib.nullcontext() if progress or a.no_progress else heartbeat(f"simulating {s}")
            with beat:
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
                                     "load_share_std": routing.load_share_std(),
                                     "policy": dataclasses.asdict(pol_), "options": dataclasses.asdict(options)},
                          "systems": rows}, indent=2))
    else:
        header = (f"{plan.model.name}  M={plan.num_tokens}  EP={a.ep} TP={a.tp}  hw={plan.hardware.name}  "
                  f"routing={a.routing} (load-share std {routing.load_share_std():.4f})  "
                  f"n_c layer0={pol_.nc_layer0} ({pol_.layer0_comm}) layer1={pol_.nc_layer1}  "
                  f"chunks={options.chunks}  layers={options.layers}")
        print(format_table(rows, header))
    return 0


if __name__ == "__main__":
    sys.exit(main())
