"""Fig. 14 (left): one MoE layer's time vs routing imbalance: E=8, topk=2, M=8192, EP=8.

Imbalance is the standard deviation of the experts' share of all (token, slot) assignments, from 0
(balanced) to 0.05 (paper: production routings sit near 0.032). std_actual is the routing's measured std.
CSV: model, ep, tp, tokens, std_target, std_actual, then one row per system (common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

from comet.core.config import ModelConfig
from comet.core.routing import make_routing
from experiments import common

NAME = "fig14_imbalance"
COLUMNS = ["model", "ep", "tp", "tokens", "std_target", "std_actual", *common.SYSTEM_COLUMNS]
STDS = (0.0, 0.01, 0.02, 0.03, 0.04, 0.05)
QUICK_STDS = (0.0, 0.05)
SEED = 0


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": 8, "tp": 1, "tokens": 1024 if quick else 8192, "std_target": s}
            for s in (QUICK_STDS if quick else STDS)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    m = ModelConfig.from_name(case["model"])
    routing = make_routing("imbalanced", case["tokens"], m.experts_E, m.topk, seed=SEED, std=case["std_target"])
    std = routing.load_share_std()
    return [{**row, "std_actual": std} for row in common.compare_case(case, hw, quick, routing=routing)]


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
