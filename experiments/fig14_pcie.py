"""Fig. 14 (right): one MoE layer on 8 x L20 over PCIe (the `l20` profile): E=8, topk=4, M=8192, per (EP, TP).

Paper: Comet 1.19-1.46x faster than the baselines on PCIe.
CSV: model, ep, tp, tokens, topk, then one row per system (experiments.common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

from experiments import common

NAME = "fig14_pcie"
DEFAULT_HW = "l20"
COLUMNS = ["model", "ep", "tp", "tokens", "topk", *common.SYSTEM_COLUMNS]
PARALLEL = ((8, 1), (4, 2), (2, 4), (1, 8))
QUICK_PARALLEL = ((8, 1), (2, 4))


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": ep, "tp": tp, "tokens": 1024 if quick else 8192, "topk": 4}
            for ep, tp in (QUICK_PARALLEL if quick else PARALLEL)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    return common.compare_case(case, hw, quick, topk=case["topk"])


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
