"""Fig. 10: one MoE layer's time vs tokens M, EP=8, Mixtral-8x7B's shape: Comet vs the baselines.

Paper (8 x H800): Comet 1.28-2.37x faster than the baselines on average, most at small M.
CSV: model, ep, tp, tokens, then one row per system (experiments.common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

from experiments import common

NAME = "fig10_tokens"
COLUMNS = ["model", "ep", "tp", "tokens", *common.SYSTEM_COLUMNS]
TOKENS = (2048, 4096, 8192, 16384, 32768)
QUICK_TOKENS = (512, 2048)


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": 8, "tp": 1, "tokens": m} for m in (QUICK_TOKENS if quick else TOKENS)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    return common.compare_case(case, hw, quick)


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
