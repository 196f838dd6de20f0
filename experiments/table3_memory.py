"""Table 3: the symmetric (peer-addressable) buffer memory per GPU, vs M and model; EP=8, TP=1, bf16.

Paper: one M x N buffer shared by all layers, 2MN bytes in bf16 (32 MB for Mixtral at M=4096).
Ours, from comet.core.plan.buffer_sizes (shapes only, so one workspace serves every routing): the M x N token
receive buffer (= the paper's 2MN bytes) plus the owner's combine buffer for partial sums (M/W tokens x
slots x N) and the flags. total_bytes adds the non-symmetric buffers (layer0 output, layer1 output).
CSV: model, ep, tp, tokens, hidden_N, paper_2MN_bytes, symm_recv_bytes, combine_bytes, flag_bytes,
symmetric_bytes, total_bytes, symmetric_over_paper.
"""

from __future__ import annotations

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.plan import buffer_sizes
from comet.core.policy import Policy
from experiments import common

NAME = "table3_memory"
COLUMNS = ["model", "ep", "tp", "tokens", "hidden_N", "paper_2MN_bytes", "symm_recv_bytes", "combine_bytes",
           "flag_bytes", "symmetric_bytes", "total_bytes", "symmetric_over_paper"]
MODELS = ("mixtral-8x7b", "qwen2-moe-2.7b", "phi-3.5-moe")
TOKENS = (2048, 4096, 8192, 16384, 32768)
QUICK_TOKENS = (2048, 4096)


def cases(quick: bool) -> list[dict]:
    return [{"model": m, "ep": 8, "tp": 1, "tokens": t} for m in MODELS for t in (QUICK_TOKENS if quick else TOKENS)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    m = ModelConfig.from_name(case["model"])
    b = buffer_sizes(case["tokens"], m, ParallelConfig(ep=case["ep"], tp=case["tp"]), Policy())
    paper = 2 * case["tokens"] * m.hidden_N
    return [{**case, "hidden_N": m.hidden_N, "paper_2MN_bytes": paper, "symm_recv_bytes": b.symm_recv_bytes,
             "combine_bytes": b.combine_bytes, "flag_bytes": b.flag_bytes, "symmetric_bytes": b.symmetric_bytes,
             "total_bytes": b.total_bytes, "symmetric_over_paper": b.symmetric_bytes / paper}]


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
