"""Fig. 13: one MoE layer's time vs expert count E and topk, M=16384, EP=8 (Mixtral-8x7B's N and K).

Paper (8 x H800): Comet 1.16-1.83x faster than the baselines over E in {8, 16, 32, 64} and topk 2-5.
CSV: model, ep, tp, tokens, experts, topk, then one row per system (experiments.common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

from experiments import common

NAME = "fig13_experts_topk"
COLUMNS = ["model", "ep", "tp", "tokens", "experts", "topk", *common.SYSTEM_COLUMNS]
EXPERTS = (8, 16, 32, 64)
TOPK = (2, 3, 4, 5)
QUICK_EXPERTS = (8, 16)
QUICK_TOPK = (2, 4)


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": 8, "tp": 1, "tokens": 1024 if quick else 16384, "experts": e, "topk": k}
            for e in (QUICK_EXPERTS if quick else EXPERTS) for k in (QUICK_TOPK if quick else TOPK)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    return common.compare_case(case, hw, quick, experts=case["experts"], topk=case["topk"])


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
