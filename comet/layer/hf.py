"""A Hugging Face MoE block's state dict read into CometMoE's layout, without depending on transformers
(`CometMoE.from_hf_state_dict` builds the layer from these pieces). Families, by their transformers
model_type: mixtral (MixtralSparseMoeBlock), phimoe (Phi-3.5-MoE, PhimoeSparseMoeBlock), qwen2_moe
(Qwen1.5/2-MoE, Qwen2MoeSparseMoeBlock), qwen3_moe (Qwen3-30B-A3B, Qwen3-235B-A22B, Qwen3MoeSparseMoeBlock) and
deepseek_v3 (DeepSeek-V3 / R1; Kimi K2's kimi_k2 is the same block; DeepseekV3MoE). gpt_oss is refused
(`UNSUPPORTED`): its experts have biases and a clamped swiglu that the fused kernels do not compute.

Keys, relative to the block (pass `prefix`, e.g. "model.layers.3.block_sparse_moe." or "model.layers.3.mlp."):
    gate.weight                              (E, N)    router (Phi-3.5-MoE in transformers 5: router.weight)
  per-expert layout (transformers 4.x, and the checkpoints on the hub):
    mixtral, phimoe:  experts.{e}.w1.weight  (K, N)    gate projection
                      experts.{e}.w3.weight  (K, N)    up projection
                      experts.{e}.w2.weight  (N, K)    down projection
    qwen2_moe, qwen3_moe, deepseek_v3:
                      experts.{e}.gate_proj.weight / up_proj.weight (K, N), down_proj.weight (N, K)
  fused layout (transformers 5):
    experts.gate_up_proj                     (E, 2K, N)  rows [:K] gate, [K:] up
    experts.down_proj                        (E, N, K)
  qwen2_moe only: shared_expert.{gate_proj,up_proj}.weight (K_s, N), shared_expert.down_proj.weight (N, K_s),
    shared_expert_gate.weight (1, N): out += sigmoid(x @ gate.T) * shared(x).
  deepseek_v3 only: gate.e_score_correction_bias (E,) (steers the choice, not the weights);
    shared_experts.{gate_proj,up_proj}.weight (K_s, N), shared_experts.down_proj.weight (N, K_s), K_s =
    n_shared_experts x moe_intermediate_size: out += shared(x), no gate. DeepSeek-V3's first
    first_k_dense_replace layers hold a dense MLP (mlp.gate_proj ...), not a MoE block: refused by name.
CometMoE runs a shared expert on each rank's own tokens with the whole weights. Every expert is swiglu: act =
silu(x @ gate.T) * (x @ up.T), then @ down.T. In comet.core.reference's layout: w0_ENK[e] = [gate.T | up.T]
(N, 2K), w1_EKN[e] = down.T (K, N); a TP shard takes the same K slice of gate, up and down.

Routers (comet/layer/routers.py): mixtral, qwen2_moe and qwen3_moe use softmax top-k (renormalised when the
config's norm_topk_prob is true: Mixtral always, Qwen3-MoE checkpoints yes, Qwen1.5-MoE-A2.7B no; transformers'
default for the Qwen configs is false); phimoe sparsemixer (top-2, jitter eps = the config's
router_jitter_noise); deepseek_v3 "sigmoid-group" (n_group, topk_group, norm_topk_prob, routed_scaling_factor
from the config, its router in float32 as transformers keeps it). `hf_config_options` reads these from a
transformers config or its config.json dict. Hugging Face rounds the routing weights to the model dtype
before use (except DeepSeek-V3's); CometMoE keeps them in float32.

Each rank reads only its own experts and K slice. A lazily read state dict (comet.layer.hf_files.
SafetensorsStateDict) is read once per rank; from one that offers get_slice (it does), a fused tensor is read
for this rank's experts only. A missing key raises KeyError naming it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from comet.core.config import ParallelConfig
from comet.core.weights import ExpertWeights

__all__ = ["HF_ARCHS", "UNSUPPORTED", "HFArch", "HFBlockShapes", "hf_arch", "hf_block_shapes", "hf_config_options",
           "hf_expert_dtype", "hf_rank_shard", "hf_router_bias", "hf_router_weight", "hf_shared_expert"]


@dataclass(frozen=True)
class HFArch:
    """One Hugging Face block family: per-expert weight names (gate, up, down), router, its default
    renormalisation (transformers' config default), the shared expert's key prefix and gate key (None: none),
    the router's correction-bias key (None: none)."""

    name: str
    gate: str
    up: str
    down: str
    router: str
    normalize_topk: bool
    shared: str | None = None
    shared_gate: str | None = None
    router_bias: str | None = None


_PROJ = ("gate_proj", "up_proj", "down_proj")
HF_ARCHS: dict[str, HFArch] = {
    a.name: a for a in (
        HFArch("mixtral", "w1", "w3", "w2", "softmax", True),
        HFArch("phimoe", "w1", "w3", "w2", "sparsemixer", True),
        HFArch("qwen2_moe", *_PROJ, "softmax", False, "shared_expert.", "shared_expert_gate.weight"),
        HFArch("qwen3_moe", *_PROJ, "softmax", False),
        HFArch("deepseek_v3", *_PROJ, "sigmoid-group", True, "shared_experts.", None, "gate.e_score_correction_bias"),
    )
}
UNSUPPORTED = {
    "gpt_oss": "gpt_oss blocks cannot run yet: CometMoE's fused kernels have no expert biases (gate_up_proj_bias, "
               "down_proj_bias) and no clamped swiglu ((up + 1) * gate * sigmoid(1.702 gate), clamped at "
               "swiglu_limit); ModelConfig 'gpt-oss-20b' / 'gpt-oss-120b' give its shapes to the simulator and planner",
}
_ALIASES = {"phi-3.5-moe": "phimoe", "phi3.5-moe": "phimoe", "qwen2-moe": "qwen2_moe", "qwen2moe": "qwen2_moe",
            "qwen3-moe": "qwen3_moe", "qwen3moe": "qwen3_moe", "deepseek-v3": "deepseek_v3",
            "deepseekv3": "deepseek_v3", "kimi_k2": "deepseek_v3", "gpt-oss": "gpt_oss"}


def hf_arch(arch: str) -> HFArch:
    """The block family by its transformers name (or an alias such as \"phi-3.5-moe\")."""
    a = _ALIASES.get(arch.lower(), arch.lower())
    if a in UNSUPPORTED:
        raise ValueError(UNSUPPORTED[a])
    if a not in HF_ARCHS:
        raise ValueError(f"unknown Hugging Face MoE architecture {arch!r}; known: {', '.join(HF_ARCHS)}")
    return HF_ARCHS[a]


def _get(sd: Mapping[str, torch.Tensor], key: str, why: str) -> torch.Tensor:
    if key not in sd:
        raise KeyError(f"state dict has no {key!r} ({why})")
    t = sd[key]
    if t.is_floating_point() and t.element_size() == 1:
        raise ValueError(f"{key!r} is {t.dtype} (an FP8 checkpoint, e.g. DeepSeek-V3's): dequantise it with its "
                         f"weight_scale_inv blocks first, or load a bfloat16 conversion")
    return t


def _shape(sd: Mapping[str, torch.Tensor], key: str, why: str) -> tuple[int, ...]:
    """A tensor's shape without reading it where the mapping can say (get_slice)."""
    if key not in sd:
        raise KeyError(f"state dict has no {key!r} ({why})")
    if hasattr(sd, "get_slice"):
        return tuple(sd.get_slice(key).get_shape())
    return tuple(sd[key].shape)


def _expert_rows(sd: Mapping[str, torch.Tensor], key: str, e0: int, e1: int, why: str) -> torch.Tensor:
    """Experts [e0, e1) of a fused (E, ...) tensor: only those rows read where the mapping can slice."""
    if hasattr(sd, "get_slice"):
        _shape(sd, key, why)
        t = sd.get_slice(key)[e0:e1]
        if t.is_floating_point() and t.element_size() == 1:
            return _get(sd, key, why)  # raises the FP8 message
        return t
    return _get(sd, key, why)[e0:e1]


def _router_key(sd: Mapping[str, torch.Tensor], prefix: str) -> str:
    """gate.weight, or router.weight where a transformers-5 block names it so (Phi-3.5-MoE)."""
    key = prefix + "gate.weight"
    return prefix + "router.weight" if key not in sd and prefix + "router.weight" in sd else key


def hf_router_weight(state_dict: Mapping[str, torch.Tensor], arch: str, prefix: str = "") -> torch.Tensor:
    """The router's weight (E, N)."""
    return _get(state_dict, _router_key(state_dict, prefix), f"the {hf_arch(arch).name} router")


def _check_shape(shape: tuple[int, ...], key: str, want: tuple[int, ...]) -> None:
    if tuple(shape) != tuple(want):
        raise ValueError(f"{key!r} has shape {tuple(shape)}, expected {tuple(want)}")


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
    if _router_key(state_dict, prefix) not in state_dict and prefix + "gate_proj.weight" in state_dict:
        raise ValueError(f"the keys under {prefix!r} are a dense MLP (gate_proj / up_proj / down_proj), not a MoE "
                         f"block (DeepSeek-V3's first first_k_dense_replace layers are dense): pick a MoE layer")
    E, N = _shape(state_dict, _router_key(state_dict, prefix), f"the {a.name} router")
    fused = prefix + "experts.gate_up_proj" in state_dict
    if fused:
        key = prefix + "experts.gate_up_proj"
        gu = _shape(state_dict, key, "fused experts")
        if len(gu) != 3 or gu[0] != E or gu[2] != N or gu[1] % 2:
            raise ValueError(f"{key!r} has shape {gu}, expected (E={E}, 2K, N={N}) (gate rows, then up rows)")
        K = gu[1] // 2
    else:  # the first expert present (a rank's partial state dict may start at any expert)
        keys = [f"{prefix}experts.{e}.{a.gate}.weight" for e in range(E)]
        key = next((k for k in keys if k in state_dict), keys[0])
        K = _shape(state_dict, key, f"{a.name} expert 0's gate projection, or any expert's")[0]
    shared = None
    if a.shared:  # part of every such block: a missing one is an error, not a block without it
        shared = _shape(state_dict, prefix + a.shared + "gate_proj.weight", f"{a.name}'s shared expert")[0]
    return HFBlockShapes(int(E), int(N), int(K), None if shared is None else int(shared), fused)


def hf_expert_dtype(state_dict: Mapping[str, torch.Tensor], arch: str, prefix: str = "") -> torch.dtype:
    """The experts' dtype (one expert's rows read): the layer's default, where the router's may differ
    (DeepSeek-V3 keeps its router in float32)."""
    a = hf_arch(arch)
    s = hf_block_shapes(state_dict, arch, prefix)
    if s.fused:
        return _expert_rows(state_dict, prefix + "experts.gate_up_proj", 0, 1, "the experts' dtype").dtype
    key = next(k for k in (f"{prefix}experts.{e}.{a.gate}.weight" for e in range(s.experts_E)) if k in state_dict)
    return _get(state_dict, key, "the experts' dtype").dtype


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
    why = f"{a.name} experts {e0}..{e0 + e_loc - 1}, needed by rank {rank}"
    if s.fused:
        down_key = prefix + "experts.down_proj"
        _check_shape(_shape(state_dict, down_key, why), down_key, (E, N, K))
        gu = _expert_rows(state_dict, prefix + "experts.gate_up_proj", e0, e0 + e_loc, why)
        down = _expert_rows(state_dict, down_key, e0, e0 + e_loc, why)
        gates, ups, downs = list(gu[:, k0:k0 + k_loc]), list(gu[:, K + k0:K + k0 + k_loc]), list(down)
    else:
        gates, ups, downs = [], [], []
        for e in range(e0, e0 + e_loc):
            why = f"{a.name} expert {e}, needed by rank {rank}"
            for name, shape, out in ((a.gate, (K, N), gates), (a.up, (K, N), ups), (a.down, (N, K), downs)):
                key = f"{prefix}experts.{e}.{name}.weight"
                t = _get(state_dict, key, why)
                _check_shape(tuple(t.shape), key, shape)
                out.append(t[k0:k0 + k_loc] if name != a.down else t)
    w0s = [torch.cat([g.T, u.T], dim=1) for g, u in zip(gates, ups, strict=True)]
    w1s = [d[:, k0:k0 + k_loc].T for d in downs]
    dtype = dtype or w0s[0].dtype
    return ExpertWeights(torch.stack(w0s).to(device=device, dtype=dtype).contiguous(),
                         torch.stack(w1s).to(device=device, dtype=dtype).contiguous())


def hf_shared_expert(state_dict: Mapping[str, torch.Tensor], prefix: str = "", dtype: torch.dtype | None = None,
                     device=None, arch: str = "qwen2_moe") -> dict[str, torch.Tensor]:
    """The block's shared expert in CometMoE's layout: {"w0": (N, 2 K_s) [gate | up], "w1": (K_s, N)}, plus
    "gate_weight": (1, N) where the family gates it (Qwen2-MoE)."""
    a = hf_arch(arch)
    if a.shared is None:
        raise ValueError(f"{a.name} blocks have no shared expert")
    why = f"{a.name}'s shared expert"
    base = prefix + a.shared
    gate = _get(state_dict, base + "gate_proj.weight", why)
    Ks, N = gate.shape
    up, down = _get(state_dict, base + "up_proj.weight", why), _get(state_dict, base + "down_proj.weight", why)
    _check_shape(tuple(up.shape), base + "up_proj.weight", (Ks, N))
    _check_shape(tuple(down.shape), base + "down_proj.weight", (N, Ks))
    pieces = [("w0", torch.cat([gate.T, up.T], dim=1)), ("w1", down.T)]
    if a.shared_gate:
        sg = _get(state_dict, prefix + a.shared_gate, why)
        _check_shape(tuple(sg.shape), prefix + a.shared_gate, (1, N))
        pieces.append(("gate_weight", sg))
    dtype = dtype or gate.dtype
    return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in pieces}


def hf_router_bias(state_dict: Mapping[str, torch.Tensor], arch: str, prefix: str = "", device=None
                   ) -> torch.Tensor | None:
    """The router's correction bias (E,) in float32 (DeepSeek-V3's gate.e_score_correction_bias), None for
    families without one."""
    a = hf_arch(arch)
    if a.router_bias is None:
        return None
    return _get(state_dict, prefix + a.router_bias, f"the {a.name} router's correction bias").to(device, torch.float32)


# ------------------------------------------------------------------------------- the model's config
def _field(config, key: str, default: Any = None) -> Any:
    if isinstance(config, Mapping):
        return config.get(key, default)
    return getattr(config, key, default)


def hf_config_options(config, layer: int | None = None) -> dict[str, Any]:
    """CometMoE.from_hf_state_dict's options from a transformers config (or its config.json as a dict): arch
    (model_type), topk, normalize_topk and each family's router settings. With `layer`, refuse a layer that
    is not a MoE block (DeepSeek-V3's first first_k_dense_replace layers; Qwen's mlp_only_layers and the
    layers decoder_sparse_step skips) or lies outside num_hidden_layers."""
    model_type = _field(config, "model_type")
    if not model_type:
        raise ValueError("the config has no model_type; pass a transformers config or the model's config.json")
    a = hf_arch(model_type)
    topk = _field(config, "num_experts_per_tok")
    if topk is None:
        raise ValueError(f"the {model_type} config has no num_experts_per_tok")
    opts: dict[str, Any] = {"arch": a.name, "topk": int(topk),
                            "normalize_topk": bool(_field(config, "norm_topk_prob", a.normalize_topk))}
    if a.name == "phimoe":
        opts["router_jitter_eps"] = float(_field(config, "router_jitter_noise", 0.01))
    if a.name == "deepseek_v3":
        scoring = _field(config, "scoring_func", "sigmoid")
        if scoring != "sigmoid":
            raise ValueError(f"deepseek_v3 with scoring_func={scoring!r}: only 'sigmoid' (DeepSeek-V3's) is supported")
        opts.update(n_group=int(_field(config, "n_group", 1) or 1),
                    topk_group=int(_field(config, "topk_group", 1) or 1),
                    routed_scaling_factor=float(_field(config, "routed_scaling_factor", 1.0)))
    if layer is not None:
        layers = _field(config, "num_hidden_layers")
        if layers is not None and not 0 <= layer < layers:
            raise ValueError(f"layer {layer} is outside the model's {layers} layers (0..{layers - 1})")
        dense = None
        if a.name == "deepseek_v3" and layer < int(_field(config, "first_k_dense_replace", 0) or 0):
            dense = f"DeepSeek-V3's first first_k_dense_replace={_field(config, 'first_k_dense_replace')} layers are"
        if a.name in ("qwen2_moe", "qwen3_moe"):
            step = int(_field(config, "decoder_sparse_step", 1) or 1)
            if layer in (_field(config, "mlp_only_layers", None) or []) or (layer + 1) % step:
                dense = f"mlp_only_layers / decoder_sparse_step={step} make this layer"
        if dense:
            raise ValueError(f"layer {layer} is not a MoE block: {dense} a dense MLP; pick a MoE layer")
    return opts
