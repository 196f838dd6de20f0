"""A Hugging Face MoE block's state dict read into CometMoE's layout, without depending on transformers
(`CometMoE.from_hf_state_dict` builds the layer from these pieces): Mixtral
(MixtralSparseMoeBlock), Phi-3.5-MoE (PhimoeSparseMoeBlock) and Qwen2-MoE (Qwen2MoeSparseMoeBlock).

Keys, relative to the block (pass `prefix`, e.g. "model.layers.3.block_sparse_moe." or "model.layers.3.mlp."):
    gate.weight                              (E, N)    router
  per-expert layout (transformers 4.x):
    mixtral, phimoe:  experts.{e}.w1.weight  (K, N)    gate projection
                      experts.{e}.w3.weight  (K, N)    up projection
                      experts.{e}.w2.weight  (N, K)    down projection
    qwen2_moe:        experts.{e}.gate_proj.weight / up_proj.weight (K, N), down_proj.weight (N, K)
  fused layout (transformers 5):
    experts.gate_up_proj                     (E, 2K, N)  rows [:K] gate, [K:] up
    experts.down_proj                        (E, N, K)
  qwen2_moe only:
    shared_expert.gate_proj.weight / up_proj.weight (K_s, N), shared_expert.down_proj.weight (N, K_s),
    shared_expert_gate.weight (1, N): a dense shared expert, out += sigmoid(x @ gate.T) * shared(x); CometMoE
    runs it on each rank's own tokens with the whole weights.
Every expert is swiglu: act = silu(x @ gate.T) * (x @ up.T), then @ down.T. In comet.core.reference's layout:
w0_ENK[e] = [gate.T | up.T] (N, 2K), w1_EKN[e] = down.T (K, N); a TP shard takes the same K slice of gate, up
and down.

Routers: Mixtral and Qwen2-MoE use softmax top-k (Mixtral renormalises the top-k weights; Qwen2-MoE does when
its config's norm_topk_prob is true, false by default and in Qwen1.5-MoE-A2.7B); Phi-3.5-MoE uses sparsemixer
(comet.layer.sparsemixer_gate, top-2, jitter eps = the config's router_jitter_noise, 0.01). Hugging Face
rounds the routing weights to the model dtype before use; CometMoE keeps them in float32.

Each rank reads only its own experts and K slice, so a lazily loaded state dict (e.g. safetensors' safe_open
behind a mapping) is read once per rank; a missing key raises KeyError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from comet.core.config import ParallelConfig
from comet.core.weights import ExpertWeights

__all__ = ["HF_ARCHS", "HFArch", "HFBlockShapes", "hf_arch", "hf_block_shapes", "hf_rank_shard", "hf_shared_expert"]


@dataclass(frozen=True)
class HFArch:
    """One Hugging Face block family: per-expert weight names (gate, up, down), router, defaults."""

    name: str
    gate: str
    up: str
    down: str
    router: str
    normalize_topk: bool
    shared_expert: bool


HF_ARCHS: dict[str, HFArch] = {
    a.name: a for a in (
        HFArch("mixtral", "w1", "w3", "w2", "softmax", True, False),
        HFArch("phimoe", "w1", "w3", "w2", "sparsemixer", True, False),
        HFArch("qwen2_moe", "gate_proj", "up_proj", "down_proj", "softmax", False, True),
    )
}
_ALIASES = {"phi-3.5-moe": "phimoe", "phi3.5-moe": "phimoe", "qwen2-moe": "qwen2_moe", "qwen2moe": "qwen2_moe"}


def hf_arch(arch: str) -> HFArch:
    """The block family by its transformers name (or an alias such as \"phi-3.5-moe\")."""
    a = _ALIASES.get(arch.lower(), arch.lower())
    if a not in HF_ARCHS:
        raise ValueError(f"unknown Hugging Face MoE architecture {arch!r}; known: {', '.join(HF_ARCHS)}")
    return HF_ARCHS[a]


def _get(sd: Mapping[str, torch.Tensor], key: str, why: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"state dict has no {key!r} ({why})")
    return sd[key]


def _check_shape(t: torch.Tensor, key: str, shape: tuple[int, ...]) -> torch.Tensor:
    if tuple(t.shape) != tuple(shape):
        raise ValueError(f"{key!r} has shape {tuple(t.shape)}, expected {tuple(shape)}")
    return t


@dataclass(frozen=True)
class HFBlockShapes:
    """experts_E, hidden_N, ffn_K of the block; shared_ffn_K (None without a shared expert); fused: the
    transformers-5 layout (experts.gate_up_proj / experts.down_proj)."""

    experts_E: int
    hidden_N: int
    ffn_K: int
    shared_ffn_K: int | None
    fused: bool


def hf_block_shapes(state_dict: Mapping[str, torch.Tensor], arch: str, prefix: str = "") -> HFBlockShapes:
    """Read E, N, K (and K_s) from the router and the first present expert's (or the fused) gate projection."""
    a = hf_arch(arch)
    E, N = _get(state_dict, prefix + "gate.weight", f"the {a.name} router").shape
    fused = prefix + "experts.gate_up_proj" in state_dict
    if fused:
        gu = state_dict[prefix + "experts.gate_up_proj"]
        if gu.dim() != 3 or gu.shape[0] != E or gu.shape[2] != N or gu.shape[1] % 2:
            raise ValueError(f"{prefix + 'experts.gate_up_proj'!r} has shape {tuple(gu.shape)}, expected "
                             f"(E={E}, 2K, N={N}) (gate rows, then up rows)")
        K = gu.shape[1] // 2
    else:  # the first expert present (a rank's partial state dict may start at any expert)
        keys = [f"{prefix}experts.{e}.{a.gate}.weight" for e in range(E)]
        key = next((k for k in keys if k in state_dict), keys[0])
        K = _get(state_dict, key, f"{a.name} expert 0's gate projection, or any expert's").shape[0]
    shared = None
    if a.shared_expert and prefix + "shared_expert.gate_proj.weight" in state_dict:
        shared = state_dict[prefix + "shared_expert.gate_proj.weight"].shape[0]
    return HFBlockShapes(int(E), int(N), int(K), None if shared is None else int(shared), fused)


def hf_rank_shard(state_dict: Mapping[str, torch.Tensor], arch: str, parallel: ParallelConfig, rank: int, *,
                  prefix: str = "", dtype: torch.dtype | None = None, device=None) -> ExpertWeights:
    """Rank `rank`'s shard in comet.core.reference's layout: its E/EP experts, each cut to its K/TP slice.
    w0_ENK (E/EP, N, 2K/TP) = [gate slice.T | up slice.T], w1_EKN (E/EP, K/TP, N) = down slice.T."""
    a = hf_arch(arch)
    s = hf_block_shapes(state_dict, arch, prefix)
    E, N, K = s.experts_E, s.hidden_N, s.ffn_K
    if E % parallel.ep or K % parallel.tp:
        raise ValueError(f"E={E} experts and K={K} must be divisible by EP={parallel.ep} and TP={parallel.tp}")
    if not 0 <= rank < parallel.world_size:
        raise ValueError(f"rank {rank} out of range for EP x TP = {parallel.world_size}")
    e_loc, k_loc = E // parallel.ep, K // parallel.tp
    e0, k0 = parallel.ep_rank(rank) * e_loc, parallel.tp_rank(rank) * k_loc
    w0s, w1s = [], []
    for e in range(e0, e0 + e_loc):
        why = f"{a.name} expert {e}, needed by rank {rank}"
        if s.fused:
            gu = _get(state_dict, prefix + "experts.gate_up_proj", why)[e]
            gate, up = gu[k0:k0 + k_loc], gu[K + k0:K + k0 + k_loc]
            down_key = prefix + "experts.down_proj"
            down = _check_shape(_get(state_dict, down_key, why), down_key, (E, N, K))[e]
        else:
            keys = [f"{prefix}experts.{e}.{n}.weight" for n in (a.gate, a.up, a.down)]
            gate, up, down = (_check_shape(_get(state_dict, k, why), k, shape)
                              for k, shape in zip(keys, ((K, N), (K, N), (N, K)), strict=True))
            gate, up = gate[k0:k0 + k_loc], up[k0:k0 + k_loc]
        w0s.append(torch.cat([gate.T, up.T], dim=1))
        w1s.append(down[:, k0:k0 + k_loc].T)
    dtype = dtype or w0s[0].dtype
    return ExpertWeights(torch.stack(w0s).to(device=device, dtype=dtype).contiguous(),
                         torch.stack(w1s).to(device=device, dtype=dtype).contiguous())


def hf_shared_expert(state_dict: Mapping[str, torch.Tensor], prefix: str = "", dtype: torch.dtype | None = None,
                     device=None) -> dict[str, torch.Tensor]:
    """Qwen2-MoE's shared expert in CometMoE's layout: {"w0": (N, 2 K_s) [gate | up], "w1": (K_s, N),
    "gate_weight": (1, N)}."""
    why = "Qwen2-MoE's shared expert"
    gate = _get(state_dict, prefix + "shared_expert.gate_proj.weight", why)
    Ks, N = gate.shape
    up = _check_shape(_get(state_dict, prefix + "shared_expert.up_proj.weight", why),
                      prefix + "shared_expert.up_proj.weight", (Ks, N))
    down = _check_shape(_get(state_dict, prefix + "shared_expert.down_proj.weight", why),
                        prefix + "shared_expert.down_proj.weight", (N, Ks))
    sg = _check_shape(_get(state_dict, prefix + "shared_expert_gate.weight", why), prefix + "shared_expert_gate.weight",
                      (1, N))
    dtype = dtype or gate.dtype
    return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in
            (("w0", torch.cat([gate.T, up.T], dim=1)), ("w1", down.T), ("gate_weight", sg))}
