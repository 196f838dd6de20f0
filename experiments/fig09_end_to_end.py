"""Fig. 9: model forward latency per model x (EP, TP) x M: MoE layers simulated, the rest a fixed cost.

forward_us = layers x (MoE layer latency + non_moe_layer_us), the non-MoE part (attention, norms, gate)
being the same for every system (`non_moe_layer_us`, derived from the model's shapes and the profile).
Paper (8 x H800): Comet 1.71x faster end to end on average; with Megatron, communication is 47% of the
forward time on average.
CSV: model, layers, ep, tp, tokens, system, moe_layer_us, non_moe_layer_us, forward_us, exposed_comm_us,
comm_share_of_forward (layers x exposed communication / forward), chunks, nc_layer1, comet_speedup
(of the forward), sim_wall_s.
"""

from __future__ import annotations

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from experiments import common

NAME = "fig09_end_to_end"
COLUMNS = ["model", "layers", "ep", "tp", "tokens", "system", "moe_layer_us", "non_moe_layer_us", "forward_us",
           "exposed_comm_us", "comm_share_of_forward", "chunks", "nc_layer1", "tiles", "comet_speedup", "sim_wall_s"]
MODELS = ("mixtral-8x7b", "qwen2-moe-2.7b", "phi-3.5-moe")
PARALLEL = ((8, 1), (4, 2), (2, 4), (1, 8))  # (EP, TP), EP x TP = 8
TOKENS = (4096, 8192, 16384)
QUICK_PARALLEL = ((8, 1), (4, 2))
QUICK_TOKENS = (1024,)
SEQ_LEN = 4096  # tokens per sequence: M = batch x SEQ_LEN (or one sequence of M tokens when M is smaller)
ELEMENTWISE_BYTES_PER_VALUE = 12  # dtype-sized reads + writes per hidden value: 2 norms, 2 residual adds, rotary


def non_moe_layer_us(model: ModelConfig, parallel: ParallelConfig, hw: HardwareProfile, tokens: int,
                     seq_len: int = SEQ_LEN) -> float:
    """Time (us) of one transformer layer's non-MoE work per GPU: identical for every MoE system.

    FLOPs per token (a multiply-add counts 2):
      the query, key, value and output projections as four N x N weights: 8 N^2 (grouped-query attention
      needs less: this is an upper bound, as the model registry holds no head counts);
      scores and the weighted sum of values over a causal context of ctx = min(M, seq_len) tokens:
      2 x 2 N ctx / 2 = 2 N ctx;
      the gate: 2 N E.
    They split evenly over the W = EP x TP GPUs (attention tensor- or data-parallel alike) and run at
    peak_tflops x gemm_efficiency. Memory-bound work (RMSNorms, residual adds, rotary) moves
    ELEMENTWISE_BYTES_PER_VALUE x N x dtype bytes per token at hbm_gbps. Not modelled: attention's own
    communication (e.g. TP all-reduce) and launch gaps, which would add the same time to every system.

        >>> m = ModelConfig.from_name("mixtral-8x7b")
        >>> round(non_moe_layer_us(m, ParallelConfig(ep=8), HardwareProfile.from_name("h800"), 8192), 1)
        256.3
    """
    N, ctx = model.hidden_N, min(tokens, seq_len)
    flops_per_token = 8 * N * N + 2 * N * ctx + 2 * N * model.experts_E
    tokens_per_gpu = tokens / parallel.world_size
    compute_us = tokens_per_gpu * flops_per_token / (hw.peak_tflops * 1e6 * hw.gemm_efficiency)
    memory_us = tokens_per_gpu * ELEMENTWISE_BYTES_PER_VALUE * N * model.dtype_bytes / (hw.hbm_gbps * 1e3)
    return compute_us + memory_us


def cases(quick: bool) -> list[dict]:
    return [{"model": m, "ep": ep, "tp": tp, "tokens": t} for m in MODELS
            for ep, tp in (QUICK_PARALLEL if quick else PARALLEL) for t in (QUICK_TOKENS if quick else TOKENS)]


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    plans = common.tile_plans(case["model"], case["ep"], case["tp"], case["tokens"], hw, quick)
    plan = next(iter(plans.values()))
    other_us = non_moe_layer_us(plan.model, plan.parallel, plan.hardware, case["tokens"])
    layers = plan.model.layers
    rows = common.compare_systems(plans, quick)
    comet_fwd = layers * (rows[0]["latency_us"] + other_us)
    out = []
    for r in rows:
        fwd = layers * (r["latency_us"] + other_us)
        out.append({**case, "layers": layers, "system": r["system"], "moe_layer_us": r["latency_us"],
                    "non_moe_layer_us": other_us, "forward_us": fwd, "exposed_comm_us": r["exposed_comm_us"],
                    "comm_share_of_forward": layers * r["exposed_comm_us"] / fwd, "chunks": r["chunks"],
                    "nc_layer1": r["nc_layer1"], "tiles": r["tiles"], "comet_speedup": fwd / comet_fwd,
                    "sim_wall_s": r["sim_wall_s"]})
    return out


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
