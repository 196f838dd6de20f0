"""The real transformers MoE blocks of each family this project loads, built from a small (or a real-sized)
config and seeded random weights: the oracle of tests/test_hf_blocks.py and tests/test_hf_files.py.

`hf_block(family, size)` returns (block, config, model-level config dict as config.json would hold it, prefix
the hub checkpoints use). Sizes: "tiny" (N = K = 32, a few experts: the CPU, Triton's interpreter) and "real"
(the released models' N and K with fewer experts: the GPU).
"""

from __future__ import annotations

import math

import torch
import transformers
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3MoE
from transformers.models.gpt_oss.modeling_gpt_oss import GptOssMLP
from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
from transformers.models.phimoe.modeling_phimoe import PhimoeSparseMoeBlock
from transformers.models.qwen2_moe.modeling_qwen2_moe import Qwen2MoeSparseMoeBlock
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

FAMILIES = ("mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "deepseek_v3")

# (config class, block class, config fields) per family and size; real: the checkpoints' N, K (K_s) and topk
# (mixtral-8x7b, Phi-3.5-MoE, Qwen1.5-MoE-A2.7B, Qwen3-30B-A3B, DeepSeek-V3; comet.core.config.MODEL_SOURCES)
# with 8-32 experts, so that one GPU holds them (DeepSeek-V3: 8 groups of 4, 4 groups kept, 8 of their 16 chosen).
_SPECS = {
    "mixtral": (transformers.MixtralConfig, MixtralSparseMoeBlock, {
        "tiny": dict(hidden_size=32, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2),
        "real": dict(hidden_size=4096, intermediate_size=14336, num_local_experts=8, num_experts_per_tok=2)}),
    "phimoe": (transformers.PhimoeConfig, PhimoeSparseMoeBlock, {
        "tiny": dict(hidden_size=32, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2,
                     router_jitter_noise=0.01, input_jitter_noise=0.0),
        "real": dict(hidden_size=4096, intermediate_size=6400, num_local_experts=16, num_experts_per_tok=2,
                     router_jitter_noise=0.01, input_jitter_noise=0.0)}),
    "qwen2_moe": (transformers.Qwen2MoeConfig, Qwen2MoeSparseMoeBlock, {
        "tiny": dict(hidden_size=32, moe_intermediate_size=32, shared_expert_intermediate_size=48, num_experts=4,
                     num_experts_per_tok=2, norm_topk_prob=False),
        "real": dict(hidden_size=2048, moe_intermediate_size=1408, shared_expert_intermediate_size=5632,
                     num_experts=16, num_experts_per_tok=4, norm_topk_prob=False)}),
    "qwen3_moe": (transformers.Qwen3MoeConfig, Qwen3MoeSparseMoeBlock, {
        "tiny": dict(hidden_size=32, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=3,
                     norm_topk_prob=True),
        "real": dict(hidden_size=2048, moe_intermediate_size=768, num_experts=16, num_experts_per_tok=8,
                     norm_topk_prob=True)}),
    "deepseek_v3": (transformers.DeepseekV3Config, DeepseekV3MoE, {
        "tiny": dict(hidden_size=32, moe_intermediate_size=32, n_routed_experts=8, num_experts_per_tok=3,
                     n_group=4, topk_group=2, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                     first_k_dense_replace=1, num_hidden_layers=4),
        "real": dict(hidden_size=7168, moe_intermediate_size=2048, n_routed_experts=32, num_experts_per_tok=8,
                     n_group=8, topk_group=4, n_shared_experts=1, routed_scaling_factor=2.5, norm_topk_prob=True,
                     first_k_dense_replace=3, num_hidden_layers=61)}),
}
PREFIX = {"mixtral": "model.layers.{}.block_sparse_moe.", "phimoe": "model.layers.{}.block_sparse_moe."}


def hf_config(family: str, size: str = "tiny"):
    cfg_cls, _, sizes = _SPECS[family]
    return cfg_cls(**sizes[size])


def hf_block(family: str, size: str = "tiny", seed: int = 0, dtype: torch.dtype = torch.float32,
             device: str = "cpu"):
    """(block in eval mode with seeded weights, its transformers config, the config.json dict, key prefix
    format). Every weight ~ N(0, 1/fan_in); DeepSeek-V3's correction bias ~ N(0, 0.1^2): large enough to change
    choices (a sigmoid score differs by ~0.1 between neighbours), as the trained model's does."""
    cfg = hf_config(family, size)
    block = _SPECS[family][1](cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in block.named_parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
        for name, b in block.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.1 * torch.randn(b.shape, generator=g))
    block = block.to(device=device, dtype=dtype)
    if family == "deepseek_v3":  # transformers keeps the router in float32
        block.gate.to(torch.float32)
    return block, cfg, {"model_type": family, **_SPECS[family][2][size]}, PREFIX.get(family, "model.layers.{}.mlp.")


def gpt_oss_block(seed: int = 0):
    cfg = transformers.GptOssConfig(hidden_size=32, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)
    block = GptOssMLP(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p.shape[-1]))
    return block, cfg


def block_forward(block, x_MN: torch.Tensor) -> torch.Tensor:
    """The block's own forward on (M, N) tokens (as one batch of one sequence); gpt-oss also returns scores."""
    with torch.no_grad():
        out = block(x_MN[None])
    return (out[0] if isinstance(out, tuple) else out).reshape(x_MN.shape)


def hub_layout(state_dict: dict[str, torch.Tensor], family: str, prefix: str) -> dict[str, torch.Tensor]:
    """The block's transformers-5 (fused) state dict in the per-expert layout of the checkpoints on the hub,
    keys under `prefix`: experts.{e}.<gate>/<up>/<down>.weight, Phi-3.5-MoE's router as gate.weight."""
    names = ("w1", "w3", "w2") if family in ("mixtral", "phimoe") else ("gate_proj", "up_proj", "down_proj")
    out = {}
    for k, v in state_dict.items():
        if k == "experts.gate_up_proj":
            K = v.shape[1] // 2
            for e in range(v.shape[0]):
                out[f"{prefix}experts.{e}.{names[0]}.weight"] = v[e, :K].clone()
                out[f"{prefix}experts.{e}.{names[1]}.weight"] = v[e, K:].clone()
        elif k == "experts.down_proj":
            for e in range(v.shape[0]):
                out[f"{prefix}experts.{e}.{names[2]}.weight"] = v[e].clone()
        else:
            out[prefix + ("gate.weight" if k == "router.weight" else k)] = v.clone()
    return out
