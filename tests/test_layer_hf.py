"""CometMoE loaded from Hugging Face MoE block state dicts (comet/layer/hf.py), without transformers: synthetic state
dicts with the real key names of Mixtral, Phi-3.5-MoE and Qwen2-MoE (per-expert layout of transformers 4.x and
the fused layout of transformers 5), compared with a forward written the way the Hugging Face blocks compute it
(per expert: silu(x W1^T) * (x W3^T) W2^T, gate-weighted and summed; Qwen2-MoE's sigmoid-gated shared
expert), on the CPU under Triton's interpreter (float32) or the GPU. Missing keys and wrong shapes are named.
The real transformers blocks are the oracle of tests/test_hf_blocks.py.
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F

from comet.core.config import ParallelConfig
from comet.core.reference import moe_forward
from comet.core.routing import Routing
from comet.core.tolerances import assert_close
from comet.core.weights import random_tokens
from comet.layer.comet_moe import CPU_POLICY, CometMoE
from comet.layer.hf import hf_block_shapes, hf_rank_shard
from comet.layer.routers import sparsemixer_gate

DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"
TOL = "tf32" if DEVICE == "cuda" else torch.float32
NAMES = {"mixtral": ("w1", "w3", "w2"), "phimoe": ("w1", "w3", "w2"),
         "qwen2_moe": ("gate_proj", "up_proj", "down_proj")}


def _state_dict(arch, E=4, N=32, K=32, Ks=None, fused=False, prefix="", seed=0):
    """Random weights under the block's key names (HF shapes: Linear weights are (out, in))."""
    g = torch.Generator().manual_seed(seed)
    gate, up = (torch.randn(E, K, N, generator=g) / math.sqrt(N) for _ in range(2))
    down = torch.randn(E, N, K, generator=g) / math.sqrt(K)
    sd = {prefix + "gate.weight": torch.randn(E, N, generator=g) / math.sqrt(N)}
    if fused:
        sd[prefix + "experts.gate_up_proj"] = torch.cat([gate, up], dim=1)
        sd[prefix + "experts.down_proj"] = down
    else:
        for e in range(E):
            for name, t in zip(NAMES[arch], (gate[e], up[e], down[e]), strict=True):
                sd[f"{prefix}experts.{e}.{name}.weight"] = t.clone()
    if Ks:
        sd[prefix + "shared_expert.gate_proj.weight"] = torch.randn(Ks, N, generator=g) / math.sqrt(N)
        sd[prefix + "shared_expert.up_proj.weight"] = torch.randn(Ks, N, generator=g) / math.sqrt(N)
        sd[prefix + "shared_expert.down_proj.weight"] = torch.randn(N, Ks, generator=g) / math.sqrt(Ks)
        sd[prefix + "shared_expert_gate.weight"] = torch.randn(1, N, generator=g) / math.sqrt(N)
    return sd, (gate, up, down)


def _hf_style_forward(sd, experts, arch, x, topk, normalize=True, jitter=0.01, prefix=""):
    """The block as Hugging Face computes it (float64): router, a loop over experts, shared expert."""
    x = x.double()
    gate, up, down = (t.double() for t in experts)
    logits = F.linear(x, sd[prefix + "gate.weight"].double())
    if arch == "phimoe":
        ids, w = sparsemixer_gate(logits, jitter)
    else:
        w, ids = torch.softmax(logits, dim=-1).topk(topk, dim=-1)
        if normalize:
            w = w / w.sum(dim=-1, keepdim=True)
    out = torch.zeros_like(x)
    for e in range(gate.shape[0]):
        tok, slot = torch.where(ids == e)
        h = F.silu(F.linear(x[tok], gate[e])) * F.linear(x[tok], up[e])
        out.index_add_(0, tok, F.linear(h, down[e]) * w[tok, slot, None].double())
    if prefix + "shared_expert_gate.weight" in sd:
        s = {k: sd[prefix + k].double() for k in ("shared_expert.gate_proj.weight", "shared_expert.up_proj.weight",
                                                  "shared_expert.down_proj.weight", "shared_expert_gate.weight")}
        h = F.silu(F.linear(x, s["shared_expert.gate_proj.weight"])) * F.linear(x, s["shared_expert.up_proj.weight"])
        out += torch.sigmoid(F.linear(x, s["shared_expert_gate.weight"])) * F.linear(
            h, s["shared_expert.down_proj.weight"])
    return out


CASES = [  # (arch, ep, tp, fused, shared K_s, normalize, system)
    ("mixtral", 2, 2, False, None, None, "comet"),
    ("mixtral", 2, 1, True, None, None, "chunked"),
    ("phimoe", 2, 1, False, None, None, "comet"),
    ("phimoe", 1, 2, True, None, None, "sequential"),
    ("qwen2_moe", 2, 2, False, 48, None, "comet"),
    ("qwen2_moe", 2, 1, True, 48, True, "sequential"),
]


@pytest.mark.parametrize("arch,ep,tp,fused,Ks,normalize,system", CASES)
def test_hf_block_matches_hf_style_forward(arch, ep, tp, fused, Ks, normalize, system):
    prefix = "model.layers.3.mlp." if arch == "qwen2_moe" else "model.layers.3.block_sparse_moe."
    sd, experts = _state_dict(arch, Ks=Ks, fused=fused, prefix=prefix, seed=ep + tp)
    layer = CometMoE.from_hf_state_dict(sd, arch, topk=2, parallel=ParallelConfig(ep=ep, tp=tp), prefix=prefix,
                                        capacity_tokens=64, device=DEVICE, policy=CPU_POLICY, system=system,
                                        normalize_topk=normalize, chunks=2)
    assert layer.router == ("sparsemixer" if arch == "phimoe" else "softmax")
    assert layer.normalize_topk == (normalize if normalize is not None else arch != "qwen2_moe")
    x = random_tokens(40, 32, seed=7)
    with torch.no_grad():
        out = layer(x.to(DEVICE))
    norm = layer.normalize_topk
    ref = _hf_style_forward(sd, experts, arch, x, 2, normalize=norm, prefix=prefix)
    assert_close(out.cpu(), ref, TOL, f"{arch} EP={ep} TP={tp} fused={fused} shared={Ks} {system}")


def test_mixtral_block_equals_comet_reference():
    """Loaded Mixtral weights in comet.core.reference's layout give comet.core.reference.moe_forward's output."""
    sd, (gate, up, down) = _state_dict("mixtral", seed=3)
    layer = CometMoE.from_hf_state_dict(sd, "mixtral", topk=2, parallel=ParallelConfig(ep=2), capacity_tokens=64,
                                        device=DEVICE, policy=CPU_POLICY)
    x = random_tokens(30, 32, seed=1)
    ids, w = layer.route(x.to(DEVICE))
    from comet.core.weights import ExpertWeights

    weights = ExpertWeights(torch.cat([gate.transpose(1, 2), up.transpose(1, 2)], dim=2), down.transpose(1, 2))
    ref = moe_forward(x.double(), Routing(ids.cpu(), w.cpu(), 4), weights.to(torch.float64), "swiglu")
    with torch.no_grad():
        assert_close(layer(x.to(DEVICE)).cpu(), ref, TOL, "mixtral vs comet.core.reference")


def test_rank_reads_only_its_keys_and_errors_name_keys():
    sd, _ = _state_dict("mixtral", E=4)
    par = ParallelConfig(ep=2)
    only_rank1 = {k: v for k, v in sd.items() if not k.startswith(("experts.0.", "experts.1."))}
    s = hf_rank_shard(only_rank1, "mixtral", par, 1)
    assert s.w0_ENK.shape == (2, 32, 64) and s.w1_EKN.shape == (2, 32, 32)
    assert torch.equal(s.w0_ENK[0, :, :32], sd["experts.2.w1.weight"].T)
    assert torch.equal(s.w0_ENK[1, :, 32:], sd["experts.3.w3.weight"].T)
    with pytest.raises(KeyError, match=r"'experts.0.w1.weight' \(mixtral expert 0, needed by rank 0\)"):
        hf_rank_shard(only_rank1, "mixtral", par, 0)
    no_w3 = {k: v for k, v in sd.items() if k != "experts.1.w3.weight"}
    with pytest.raises(KeyError, match=r"'experts.1.w3.weight' \(mixtral expert 1, needed by rank 0\)"):
        hf_rank_shard(no_w3, "mixtral", par, 0)
    bad = dict(sd, **{"experts.2.w2.weight": torch.zeros(32, 16)})
    with pytest.raises(ValueError, match=r"'experts.2.w2.weight' has shape \(32, 16\), expected \(32, 32\)"):
        hf_rank_shard(bad, "mixtral", par, 1)
    with pytest.raises(KeyError, match="'model.gate.weight'"):
        hf_block_shapes(sd, "mixtral", prefix="model.")
    no_experts = {"gate.weight": sd["gate.weight"]}
    with pytest.raises(KeyError, match=r"'experts.0.w1.weight' \(mixtral expert 0's gate projection, or any"):
        hf_block_shapes(no_experts, "mixtral")
    with pytest.raises(ValueError, match="unknown Hugging Face MoE architecture 'llama'"):
        hf_block_shapes(sd, "llama")
    q, _ = _state_dict("qwen2_moe", Ks=48)
    del q["shared_expert.up_proj.weight"]
    with pytest.raises(KeyError, match="shared_expert.up_proj.weight"):
        CometMoE.from_hf_state_dict(q, "qwen2_moe", topk=2, parallel=par, capacity_tokens=8, device=DEVICE)
    with pytest.raises(ValueError, match="E=4 experts and K=32 must be divisible by EP=3"):
        hf_rank_shard(sd, "mixtral", ParallelConfig(ep=3), 0)
