"""CometMoE against the real transformers MoE blocks: each family (Mixtral, Phi-3.5-MoE, Qwen2-MoE, Qwen3-MoE,
DeepSeek-V3) built from a tiny config with seeded weights, its state dict loaded with
CometMoE.from_hf_state_dict (the transformers-5 fused layout and the hub's per-expert layout) and compared with
the block's own forward: on the CPU in float32 under Triton's interpreter (emulated world, EP and EP x TP), on a
GPU (`gpu`) in bfloat16 at the checkpoints' hidden sizes. The routers against transformers' routers and their
reference twin; gpt-oss refused by name; the config's options and dense layers.
"""

from __future__ import annotations

import os

import pytest
import torch
from helpers.hf_blocks import FAMILIES, block_forward, gpt_oss_block, hf_block, hf_config, hub_layout
from transformers.models.deepseek_v3.modeling_deepseek_v3 import DeepseekV3TopkRouter
from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeTopKRouter

from comet.core.config import ParallelConfig
from comet.core.reference import grouped_sigmoid_gate_loop
from comet.core.tolerances import assert_close
from comet.core.weights import random_tokens
from comet.layer.comet_moe import CPU_POLICY, CometMoE
from comet.layer.hf import hf_config_options
from comet.layer.routers import grouped_sigmoid_gate, topk_softmax_gate

CPU = os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available()
ROUTER = {"mixtral": "softmax", "phimoe": "sparsemixer", "qwen2_moe": "softmax", "qwen3_moe": "softmax",
          "deepseek_v3": "sigmoid-group"}


def _load(sd, config, prefix, par, device, **kw):
    return CometMoE.from_hf_state_dict(sd, config=config, prefix=prefix, parallel=par, capacity_tokens=256,
                                       device=device, **kw)


# ------------------------------------------------------------------------------------ the CPU, float32
@pytest.mark.skipif(not CPU, reason="the CPU comparison runs under Triton's interpreter")
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ep,tp,layout", [(2, 1, "fused"), (2, 2, "hub")])
def test_block_matches_transformers(family, ep, tp, layout):
    block, _, config, prefix = hf_block(family, seed=ep + tp)
    sd = block.state_dict()
    prefix = prefix.format(3) if layout == "hub" else ""
    if layout == "hub":
        sd = hub_layout(sd, family, prefix)
    layer = _load(sd, config, prefix, ParallelConfig(ep=ep, tp=tp), "cpu", policy=CPU_POLICY)
    assert layer.router == ROUTER[family]
    assert (layer.shared_ffn_K is not None) == (family in ("qwen2_moe", "deepseek_v3"))
    x = random_tokens(24, 32, seed=5)
    with torch.no_grad():
        out = layer(x)
    want = block_forward(block.double(), x.double())
    assert_close(out, want, torch.float32, f"CometMoE vs transformers' {family} block, EP={ep} TP={tp} {layout}")


@pytest.mark.skipif(not CPU, reason="the CPU comparison runs under Triton's interpreter")
def test_deepseek_bias_and_scaling_matter():
    """The comparison above can fail: without the correction bias (choice) or with scaling 1 (weights) the
    DeepSeek-V3 layer no longer matches the block."""
    block, _, config, _ = hf_block("deepseek_v3", seed=1)
    sd = block.state_dict()
    x = random_tokens(24, 32, seed=5)
    want = block_forward(block.double(), x.double())
    no_bias = dict(sd, **{"gate.e_score_correction_bias": torch.zeros(8)})
    for what, state, kw in (("no bias", no_bias, {}), ("scaling 1", sd, {"routed_scaling_factor": 1.0})):
        layer = _load(state, config, "", ParallelConfig(ep=2), "cpu", policy=CPU_POLICY, **kw)
        with torch.no_grad():
            out = layer(x)
        with pytest.raises(AssertionError, match="not close"):
            assert_close(out, want, torch.float32, what)


@pytest.mark.skipif(not CPU, reason="the CPU comparison runs under Triton's interpreter")
def test_deepseek_float16_block_keeps_its_router_float32():
    """The layer takes the experts' dtype (float16) and keeps DeepSeek-V3's router in float32, as transformers
    does: the comparison at float16 tolerance holds with the same routing."""
    block, _, config, _ = hf_block("deepseek_v3", seed=2, dtype=torch.float16)
    layer = _load(block.state_dict(), config, "", ParallelConfig(ep=2), "cpu", policy=CPU_POLICY)
    assert (layer.dtype, layer.gate_weight.dtype, layer.gate_bias.dtype) == (torch.float16, torch.float32,
                                                                             torch.float32)
    x = random_tokens(24, 32, seed=6, dtype=torch.float16)
    with torch.no_grad():
        out = layer(x)
    assert_close(out, block_forward(block.double(), x.double()), torch.float16, "DeepSeek-V3 block in float16")


# ------------------------------------------------------------------------------------------ routers
@pytest.mark.parametrize("n_group,topk_group,topk,normalize,scaling", [
    (1, 1, 4, True, 1.0), (4, 2, 3, True, 2.5), (8, 3, 5, False, 1.0), (4, 4, 8, True, 0.5)])
def test_grouped_sigmoid_gate_matches_transformers_and_twin(n_group, topk_group, topk, normalize, scaling):
    E, N, M = 16, 24, 40
    cfg = hf_config("deepseek_v3")
    for k, v in dict(hidden_size=N, n_routed_experts=E, num_experts_per_tok=topk, n_group=n_group,
                     topk_group=topk_group, norm_topk_prob=normalize, routed_scaling_factor=scaling).items():
        setattr(cfg, k, v)
    router = DeepseekV3TopkRouter(cfg)
    g = torch.Generator().manual_seed(n_group + topk)
    with torch.no_grad():
        router.weight.copy_(torch.randn(E, N, generator=g) / N ** 0.5)
        router.e_score_correction_bias.copy_(0.1 * torch.randn(E, generator=g))
    x = torch.randn(M, N, generator=g)
    _, want_w, want_ids = router(x)
    logits = x @ router.weight.T
    ids, w = grouped_sigmoid_gate(logits, topk, router.e_score_correction_bias, n_group, topk_group, normalize, scaling)
    twin_ids, twin_w = grouped_sigmoid_gate_loop(logits, topk, router.e_score_correction_bias, n_group, topk_group,
                                                 normalize, scaling)
    order, want_order = ids.argsort(dim=1), want_ids.argsort(dim=1)
    assert torch.equal(ids.gather(1, order), want_ids.gather(1, want_order))
    assert torch.equal(ids.gather(1, order), twin_ids)
    torch.testing.assert_close(w.gather(1, order), want_w.gather(1, want_order), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(w.gather(1, order).double(), twin_w, rtol=1e-6, atol=1e-7)
    if normalize:
        torch.testing.assert_close(w.sum(dim=1), torch.full((M,), scaling), rtol=1e-6, atol=1e-6)


def test_grouped_sigmoid_gate_errors():
    logits, bias = torch.zeros(2, 8), torch.zeros(8)
    with pytest.raises(ValueError, match="n_group=3 must divide E=8"):
        grouped_sigmoid_gate(logits, 2, bias, 3, 1)
    with pytest.raises(ValueError, match=r"topk_group=5 must lie in \[1, n_group=4\]"):
        grouped_sigmoid_gate(logits, 2, bias, 4, 5)
    with pytest.raises(ValueError, match=r"topk=5 must lie in \[1, topk_group x E/n_group = 4\]"):
        grouped_sigmoid_gate(logits, 5, bias, 4, 2)
    with pytest.raises(ValueError, match="E/n_group = 1 must be >= 2"):
        grouped_sigmoid_gate(logits, 2, bias, 8, 4)
    with pytest.raises(ValueError, match=r"correction_bias_E must have shape \(8,\)"):
        grouped_sigmoid_gate(logits, 2, torch.zeros(4), 4, 2)
    with pytest.raises(ValueError, match="n_group=3 must divide E=4"):  # CometMoE checks at construction
        from comet.core.config import ModelConfig

        CometMoE(ModelConfig("t", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1), capacity_tokens=8,
                 dtype=torch.float32, device="cpu", router="sigmoid-group", n_group=3)


def test_topk_softmax_gate_matches_gpt_oss_router():
    block, cfg = gpt_oss_block()
    x = random_tokens(30, 32, seed=2)
    _, want_w, want_ids = block.router(x)
    ids, w = topk_softmax_gate(torch.nn.functional.linear(x, block.router.weight, block.router.bias), 2)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(w, want_w)


def test_softmax_router_matches_qwen3_router():
    cfg = hf_config("qwen3_moe")
    router = Qwen3MoeTopKRouter(cfg)
    with torch.no_grad():
        router.weight.copy_(torch.randn(router.weight.shape, generator=torch.Generator().manual_seed(0)))
    block, _, config, _ = hf_block("qwen3_moe")
    layer = _load({"gate.weight": router.weight.detach(), **{k: v for k, v in block.state_dict().items()
                                                             if k != "gate.weight"}},
                  config, "", ParallelConfig(), "cpu", policy=CPU_POLICY)
    x = random_tokens(30, 32, seed=3)
    ids, w = layer.route(x)
    _, want_w, want_ids = router(x)
    assert torch.equal(ids, want_ids)
    torch.testing.assert_close(w, want_w)


# ------------------------------------------------------------------- configs, refusals, dense layers
def test_config_options_from_transformers_configs_and_dicts():
    for family in FAMILIES:
        _, cfg, config_json, _ = hf_block(family)
        assert hf_config_options(cfg) == hf_config_options(config_json), family
    ds = hf_config_options(hf_config("deepseek_v3"))
    assert ds == {"arch": "deepseek_v3", "topk": 3, "normalize_topk": True, "n_group": 4, "topk_group": 2,
                  "routed_scaling_factor": 2.5}
    assert hf_config_options(hf_config("phimoe"))["router_jitter_eps"] == 0.01
    assert hf_config_options({"model_type": "qwen3_moe", "num_experts_per_tok": 8})["normalize_topk"] is False
    assert hf_config_options({"model_type": "kimi_k2", "num_experts_per_tok": 8})["arch"] == "deepseek_v3"


def test_dense_layers_and_bad_configs_are_refused():
    block, cfg, _, _ = hf_block("deepseek_v3")
    sd = block.state_dict()
    with pytest.raises(ValueError, match="layer 0 is not a MoE block: DeepSeek-V3's first first_k_dense_replace=1"):
        _load(sd, cfg, "", ParallelConfig(), "cpu", layer=0)
    _load(sd, cfg, "", ParallelConfig(), "cpu", layer=1, policy=CPU_POLICY)
    with pytest.raises(ValueError, match=r"layer 4 is outside the model's 4 layers \(0..3\)"):
        _load(sd, cfg, "", ParallelConfig(), "cpu", layer=4)
    dense = {"model.layers.0.mlp.gate_proj.weight": torch.zeros(64, 32)}
    with pytest.raises(ValueError, match="'model.layers.0.mlp.' are a dense MLP .* not a MoE block"):
        CometMoE.from_hf_state_dict(dense, "deepseek_v3", topk=2, prefix="model.layers.0.mlp.", capacity_tokens=8)
    q = {"model_type": "qwen3_moe", "num_experts_per_tok": 3, "mlp_only_layers": [2], "num_hidden_layers": 4}
    with pytest.raises(ValueError, match="layer 2 is not a MoE block: mlp_only_layers"):
        hf_config_options(q, layer=2)
    with pytest.raises(ValueError, match="layer 0 is not a MoE block: .*decoder_sparse_step=2"):
        hf_config_options({**q, "mlp_only_layers": [], "decoder_sparse_step": 2}, layer=0)
    with pytest.raises(ValueError, match="the config has no model_type"):
        hf_config_options({"num_experts_per_tok": 2})
    with pytest.raises(ValueError, match="scoring_func='softmax'"):
        hf_config_options({"model_type": "deepseek_v3", "num_experts_per_tok": 2, "scoring_func": "softmax"})
    with pytest.raises(ValueError, match="arch 'mixtral' disagrees with the config's model_type \\('deepseek_v3'\\)"):
        CometMoE.from_hf_state_dict(sd, "mixtral", config=cfg, capacity_tokens=8)
    with pytest.raises(ValueError, match="needs the block's arch"):
        CometMoE.from_hf_state_dict(sd, topk=2, capacity_tokens=8)
    no_bias = {k: v for k, v in sd.items() if k != "gate.e_score_correction_bias"}
    with pytest.raises(KeyError, match="'gate.e_score_correction_bias'"):
        _load(no_bias, cfg, "", ParallelConfig(), "cpu")
    no_shared = {k: v for k, v in sd.items() if not k.startswith("shared_experts.")}
    with pytest.raises(KeyError, match="'shared_experts.gate_proj.weight' \\(deepseek_v3's shared expert\\)"):
        _load(no_shared, cfg, "", ParallelConfig(), "cpu")
    fp8 = dict(sd, **{"experts.gate_up_proj": sd["experts.gate_up_proj"].to(torch.float8_e4m3fn)})
    with pytest.raises(ValueError, match="'experts.gate_up_proj' is torch.float8_e4m3fn .* dequantise"):
        _load(fp8, cfg, "", ParallelConfig(), "cpu")


def test_gpt_oss_is_refused_naming_what_is_missing():
    block, cfg = gpt_oss_block()
    with pytest.raises(ValueError, match=r"^gpt_oss blocks cannot run yet: .* no expert biases .* no clamped swiglu"):
        CometMoE.from_hf_state_dict(block.state_dict(), config=cfg, capacity_tokens=8)
    with pytest.raises(ValueError, match="gpt_oss blocks cannot run yet"):
        CometMoE.from_hf_state_dict(block.state_dict(), "gpt-oss", topk=2, capacity_tokens=8)


# ---------------------------------------------------------------------------------- GPU, bfloat16
@pytest.mark.gpu
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("ep,tp", [(4, 1), (2, 2)])
def test_gpu_block_matches_transformers_bf16(family, ep, tp):
    """The checkpoints' N and K (fewer experts), bf16 on both sides, one GPU holding all EP x TP ranks."""
    block, _, config, _ = hf_block(family, "real", seed=ep + tp, dtype=torch.bfloat16, device="cuda")
    layer = _load(block.state_dict(), config, "", ParallelConfig(ep=ep, tp=tp), "cuda")
    assert layer.dtype == torch.bfloat16
    x = random_tokens(256, layer.model.hidden_N, seed=5, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        out = layer(x)
    want = block_forward(block, x)
    assert_close(out, want.double(), torch.bfloat16, f"CometMoE vs transformers' {family} block (bf16) EP={ep} TP={tp}")


def test_registered_shapes_agree_with_transformers_defaults():
    """transformers' default configs are the released models' (its docs name them): an independent check of the
    figures copied from config.json into comet.core.config.MODELS."""
    import transformers

    from comet.core.config import ModelConfig

    ds, oss, q3 = transformers.DeepseekV3Config(), transformers.GptOssConfig(), transformers.Qwen3MoeConfig()
    m = ModelConfig.from_name("deepseek-v3")
    assert (m.hidden_N, m.ffn_K, m.experts_E, m.topk, m.layers, m.shared_ffn_K) == (
        ds.hidden_size, ds.moe_intermediate_size, ds.n_routed_experts, ds.num_experts_per_tok,
        ds.num_hidden_layers - ds.first_k_dense_replace, ds.n_shared_experts * ds.moe_intermediate_size)
    m = ModelConfig.from_name("gpt-oss-120b")
    assert (m.hidden_N, m.ffn_K, m.experts_E, m.topk, m.layers) == (
        oss.hidden_size, oss.intermediate_size, oss.num_local_experts, oss.num_experts_per_tok, oss.num_hidden_layers)
    m = ModelConfig.from_name("qwen3-30b-a3b")  # transformers' default has fewer layers than the release
    assert (m.hidden_N, m.ffn_K, m.experts_E, m.topk) == (q3.hidden_size, q3.moe_intermediate_size, q3.num_experts,
                                                         q3.num_experts_per_tok)
