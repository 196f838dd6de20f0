"""Fig. 8: layer1's time vs its communication blocks n_c (of 132 SMs), for several M and TP (EP = 8 / TP).

Paper: the best n_c grows with M and as TP shrinks; Comet picks it per shape from offline profiles.
Here layer1 runs alone (every rank starts it at t = 0), Mixtral-8x7B's shape, balanced routing, in the
paper's form: the n_c communication blocks do all of layer1's communication (Policy.l1_tail=False; with the
tail, this project's default, the GEMM's SMs take the items left after it and the curve flattens at small n_c,
as results/fused_layers/README.md measured).
CSV: model, ep, tp, tokens, nc_layer1, layer1_us, best_nc (the case's fastest n_c), is_best.
"""

from __future__ import annotations

from comet.tuning.sweep import best_nc
from experiments import common
from sim.options import SimOptions
from sim.run import make_case, with_policy

NAME = "fig08_comm_blocks"
COLUMNS = ["model", "ep", "tp", "tokens", "nc_layer1", "layer1_us", "best_nc", "is_best"]
# (tokens, tp): M varied at TP=1, TP varied at M=8192
CASES = ((4096, 1), (8192, 1), (16384, 1), (8192, 2), (8192, 4), (8192, 8))
NCS = (4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 64)
QUICK_CASES = ((1024, 1), (2048, 1), (2048, 2))
QUICK_NCS = (4, 16, 32)


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": 8 // tp, "tp": tp, "tokens": m} for m, tp in
            (QUICK_CASES if quick else CASES)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    plan = with_policy(make_case(case["model"], ep=case["ep"], tp=case["tp"], tokens=case["tokens"], hw=hw),
                       l1_tail=False)
    best, times = best_nc(plan, 1, QUICK_NCS if quick else NCS, SimOptions(record=False))
    return [{**case, "nc_layer1": nc, "layer1_us": t, "best_nc": best, "is_best": nc == best}
            for nc, t in sorted(times.items())]


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
