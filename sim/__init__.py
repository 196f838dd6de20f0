"""Tile-level discrete-event simulator of the MoE layer (SimPy): executes a comet.core.plan.Plan the way the
fused kernels run it, next to the paper's baselines (Megatron-Cutlass, Megatron-TE, FasterMoE, Tutel) and two
bounds (sequential, chunked), on one routing and one hardware profile. Time unit: microseconds.

    from sim import simulate, make_case
    res = simulate(make_case("mixtral-8x7b", ep=8, tokens=16384, hw="h800"), system="comet")
    res.latency_us, res.hidden_comm_fraction, res.events, res.write_chrome_trace("comet.json")

Command line: `python -m sim --help`. Modules: options (SimOptions), hardware_model (links, memory),
workload (the Plan's tables as the simulator reads them), engine (shared machinery), comet_system,
baselines (the bounds), collectives (NCCL), framework, megatron, pipelined_moe (the paper's baselines),
result (SimResult), run (simulate, make_case).
"""

from sim.options import SYSTEMS, SimOptions
from sim.result import SimResult
from sim.run import make_case, simulate, simulate_all, with_policy

__all__ = ["SYSTEMS", "SimOptions", "SimResult", "make_case", "simulate", "simulate_all", "with_policy"]
