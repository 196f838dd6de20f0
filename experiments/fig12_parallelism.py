"""Fig. 12: one MoE layer's time vs parallelism (EP, TP) with EP x TP = 8: E=8, topk=2, M=8192.

Paper (8 x H800): Comet stays fastest across every (EP, TP).
CSV: model, ep, tp, tokens, then one row per system (experiments.common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

from experiments import common

NAME = "fig12_parallelism"
COLUMNS = ["model", "ep", "tp", "tokens", *common.SYSTEM_COLUMNS]
PARALLEL = ((8, 1), (4, 2), (2, 4), (1, 8))
QUICK_PARALLEL = ((8, 1), (2, 4))


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": ep, "tp": tp, "tokens": 1024 if quick else 8192}
            for ep, tp in (QUICK_PARALLEL if quick else PARALLEL)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    return common.compare_case(case, hw, quick)


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
