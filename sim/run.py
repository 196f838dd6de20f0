"""Entry points: `make_case` builds a Plan from names, `simulate` runs one system on a Plan.

    >>> from sim.run import make_case, simulate
    >>> plan = make_case("mixtral-8x7b", ep=2, tokens=512, hw="h800")
    >>> res = simulate(plan, system="comet")
    >>> res.latency_us > res.layer0_us > 0
    True
    >>> simulate(system="sequential", model="mixtral-8x7b", ep=2, tokens=512).system
    'sequential'

`with_policy(plan, nc_layer1=8)` changes the Policy fields that do not change the Plan's tables
(n_c and the layer0 communication mechanism) without re-planning: cheap for n_c sweeps.
"""

from __future__ import annotations

import dataclasses
import time

from comet.core import defaults
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.plan import Plan, plan_bounds, plan_table_bytes
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing, make_routing
from sim.baselines import StagedSim
from sim.comet_system import CometSim
from sim.megatron import MEGATRON_SYSTEMS, MegatronSim
from sim.options import SYSTEMS, SimOptions
from sim.pipelined_moe import PIPELINED_SYSTEMS, PipelinedSim
from sim.result import SimResult, build_result, config_of

# What a simulation costs, per recorded event and per transfer (this project's 2-core CPU: results/sim_speed;
# a Python tuple of 9 fields plus its floats, a flow record), and how fast the comet system runs (events / s).
EVENT_BYTES, FLOW_BYTES, EVENTS_PER_S = 300, 250, 50_000
RATE_ENTRY_BYTES = 300  # a rate-log entry: a tuple and two small numpy arrays

# Policy fields the Plan's tables do not depend on (the simulator reads them at run time).
RUNTIME_POLICY_FIELDS = ("nc_layer0", "nc_layer1", "layer0_comm", "l1_tail")


def available_memory_bytes() -> int | None:
    """MemAvailable of this machine (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def estimate_cost(model: ModelConfig, parallel: ParallelConfig, tokens: int, policy: Policy | None = None,
                  record: bool = True) -> tuple[float, float]:
    """(bytes, seconds) a plan of `tokens` tokens and one simulation of it need, estimated from the Plan's
    bounds: the tables at their building peak (twice their size), the event records, one flow per transfer
    and, when recording, the link rates logged at every change (the ports that changed)."""
    pol = policy or Policy()
    b = plan_bounds(tokens, model, parallel, pol)
    W = parallel.world_size
    col0 = -(-(model.ffn_K // parallel.tp) // pol.block_n0)
    col1 = -(-model.hidden_N // pol.block_n1)
    transfers = W * (b["C0"] + b["C1"] * col1)
    events = W * b["B"] * (col0 + col1) + transfers
    nbytes = 2 * plan_table_bytes(tokens, model, parallel, pol) + EVENT_BYTES * events + FLOW_BYTES * transfers
    if record:  # the rate log: about one entry per transfer, holding the ports whose rate changed (measured
        # 0.3-0.8 W of them per transfer at 8-32 GPUs: W counted here), 16 bytes each, ~300 bytes of entry
        nbytes += (16 * W + RATE_ENTRY_BYTES) * transfers
    return float(nbytes), events / EVENTS_PER_S


def check_size(model: ModelConfig, parallel: ParallelConfig, tokens: int, policy: Policy | None = None,
               record: bool = True) -> float:
    """Raise ValueError, with the estimate and the knobs to turn, when a plan and its simulation would not fit
    this machine's free memory; returns the estimated seconds of one simulation."""
    nbytes, seconds = estimate_cost(model, parallel, tokens, policy, record)
    free = available_memory_bytes()
    if free is not None and nbytes > 0.8 * free:
        raise ValueError(f"{model.name} at M={tokens} tokens on EP x TP = {parallel.ep} x {parallel.tp} needs about "
                         f"{nbytes / 1e9:.1f} GB to plan and simulate, and this machine has {free / 1e9:.1f} GB free: "
                         f"lower the tokens or the world size" + (" (or turn event recording off)" if record else ""))
    return seconds


def make_case(model: str | ModelConfig = "mixtral-8x7b", ep: int = 8, tp: int = 1, tokens: int = 16384,
              hw: str | HardwareProfile = defaults.SIM_HARDWARE, routing: str | Routing = "balanced", seed: int = 0,
              std: float = 0.032, topk: int | None = None, experts: int | None = None,
              policy: Policy | None = None, ranks_per_node: int | None = None) -> Plan:
    """A Plan from names: a registered model (with optional topk / experts overrides), EP x TP, M tokens,
    a hardware profile (name or .json) and a routing kind ("balanced", "uniform", "imbalanced" with
    `std`) or a Routing. ranks_per_node: GPUs per node, replacing the hardware profile's (a what-if)."""
    overrides = {k: v for k, v in (("topk", topk), ("experts_E", experts)) if v is not None}
    m = model if isinstance(model, ModelConfig) else ModelConfig.from_name(model, **overrides)
    if isinstance(model, ModelConfig) and overrides:
        m = dataclasses.replace(m, **overrides)
    h = hw if isinstance(hw, HardwareProfile) else HardwareProfile.from_name(hw)
    par = ParallelConfig(ep=ep, tp=tp)
    check_size(m, par, routing.num_tokens if isinstance(routing, Routing) else tokens, policy, record=False)
    if ranks_per_node is not None and ranks_per_node != h.ranks_per_node:
        h = h.replace(ranks_per_node=ranks_per_node)
    r = routing if isinstance(routing, Routing) else make_routing(routing, tokens, m.experts_E, m.topk, seed=seed,
                                                                   std=std)
    return make_plan(r, m, par, h, policy or Policy())


def with_policy(plan: Plan, **changes) -> Plan:
    """The same Plan with run-time Policy fields changed (nc_layer0, nc_layer1, layer0_comm, l1_tail)."""
    bad = [k for k in changes if k not in RUNTIME_POLICY_FIELDS]
    if bad:
        raise ValueError(f"{bad} change the Plan's tables: build a new plan with make_plan (or make_case); "
                         f"with_policy only changes {RUNTIME_POLICY_FIELDS}")
    return dataclasses.replace(plan, policy=plan.policy.replace(**changes))


def simulate(plan: Plan | None = None, system: str = "comet", options: SimOptions | None = None,
             **case) -> SimResult:
    """Simulate one MoE layer of `plan` (or of `make_case(**case)`) under `system`:
    "comet" (the fused schedule), "sequential" or "chunked" (the bounds; chunks in options.chunks), or the
    paper's baselines "megatron-cutlass", "megatron-te" (options.dispatcher), "fastermoe", "tutel"
    (its pipeline degree in options.chunks).

    Raises ValueError for a schedule that cannot run (e.g. comet with Policy.nc_layer1 = 0)."""
    if plan is None:
        plan = make_case(**case)
    elif not isinstance(plan, Plan):
        raise TypeError(f"plan must be a comet.core.plan.Plan (make_case or make_plan builds one), got "
                        f"{type(plan).__name__}; or pass make_case's arguments instead")
    elif case:
        raise TypeError(f"give either a plan or make_case arguments, not both (got {sorted(case)})")
    options = options or SimOptions()
    if system not in SYSTEMS:
        raise ValueError(f"unknown system {system!r}; choose one of {', '.join(SYSTEMS)}")
    t0 = time.perf_counter()
    sim = _system_sim(plan, options, system)
    sim.run()
    return build_result(sim, time.perf_counter() - t0, config_of(plan, options))


def runnable_systems(tp: int, layers: str = "both") -> list[str]:
    """The systems that simulate a case of this TP degree and `layers`: the paper's baselines run the whole
    layer only, FasterMoE and Tutel TP = 1 only."""
    return [s for s in SYSTEMS if s not in MEGATRON_SYSTEMS and s not in PIPELINED_SYSTEMS
            or (layers == "both" and (tp == 1 or s in MEGATRON_SYSTEMS))]


def _system_sim(plan: Plan, options: SimOptions, system: str):
    if system == "comet":
        return CometSim(plan, options)
    if system in MEGATRON_SYSTEMS:
        return MegatronSim(plan, options, system)
    if system in PIPELINED_SYSTEMS:
        return PipelinedSim(plan, options, system)
    return StagedSim(plan, options, system)


def simulate_all(plan: Plan, options: SimOptions | None = None, systems=SYSTEMS, progress: bool = False
                 ) -> dict[str, SimResult]:
    """Every system on the same Plan (same routing, same hardware)."""
    it = systems
    if progress:
        from tqdm import tqdm

        it = tqdm(systems, desc="simulating", unit="system", leave=False)
    return {s: simulate(plan, system=s, options=options) for s in it}
