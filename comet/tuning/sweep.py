"""Choosing n_c the way Comet does: try the candidates, keep the fastest (the paper's mechanism 4,
docs/PAPER_NOTES.md).

Comet profiles pre-compiled variants offline and picks n_c at run time from stored results; here the
"profiling" is a simulation of the layer alone (layer1 for nc_layer1, layer0 for nc_layer0), which is
cheap because the Plan's tables do not depend on n_c (`sim.run.with_policy`).

    >>> from sim import make_case
    >>> plan = make_case("mixtral-8x7b", ep=2, tokens=256)
    >>> best_nc(plan, layer=1, candidates=(4, 16))[0] in (4, 16)
    True
"""

from __future__ import annotations

import sim.run  # best_nc calls sim.run.simulate by attribute: tests count its calls
from comet.core.plan import Plan
from sim.options import SimOptions
from sim.run import with_policy

# The one candidate list: the best n_c on the paper's shapes lies in 8..64 (results/nc_auto), a ~1.4x ladder
# that keeps the Policy defaults (16, 28). A cache miss of `comet.tuning.auto_nc` costs 2 x 7 layer simulations.
NC_CANDIDATES = (8, 12, 16, 24, 28, 40, 64)
QUICK_NC_CANDIDATES = (16, 28)  # --quick runs: the Policy defaults alone


def best_nc(plan: Plan, layer: int, candidates=NC_CANDIDATES, options: SimOptions | None = None,
            progress: bool = False) -> tuple[int, dict[int, float]]:
    """(best n_c, {n_c: latency_us}) for `layer` (0 or 1) of the comet system; ties go to fewer blocks.
    progress: show a tqdm bar (a sweep at large M takes seconds)."""
    opts = (options or SimOptions()).replace(layers=f"layer{layer}", record=False)
    field = "nc_layer0" if layer == 0 else "nc_layer1"
    times = {}
    ncs = sorted(set(candidates))
    if progress:
        from tqdm import tqdm

        ncs = tqdm(ncs, desc=f"n_c sweep, layer{layer}", unit="n_c", leave=False)
    for nc in ncs:
        if not 1 <= nc < plan.hardware.sms:
            continue
        times[nc] = sim.run.simulate(with_policy(plan, **{field: nc}), system="comet", options=opts).latency_us
    if not times:
        raise ValueError(f"no usable n_c among {candidates}: n_c must lie in [1, {plan.hardware.sms})")
    best = min(times, key=lambda n: (times[n], n))
    return best, times


def tune_policy(plan: Plan, candidates=NC_CANDIDATES, options: SimOptions | None = None, layer0: bool = True,
                layer1: bool = True) -> Plan:
    """The plan with nc_layer0 (when layer0_comm is "blocks") and nc_layer1 set to their best values."""
    if layer1:
        plan = with_policy(plan, nc_layer1=best_nc(plan, 1, candidates, options)[0])
    if layer0 and plan.policy.layer0_comm == "blocks":
        plan = with_policy(plan, nc_layer0=best_nc(plan, 0, candidates, options)[0])
    return plan
