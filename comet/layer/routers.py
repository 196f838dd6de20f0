"""The routers of the MoE blocks this project loads: logits (M, E) -> (topk_ids_MJ int64, topk_weights_MJ
float32). Each is plain torch in float32, its own reference twin.

    softmax       softmax over the logits, the top-k experts, weights renormalised to sum 1 when asked
                  (Mixtral renormalises, Qwen2-MoE by default not)
    sparsemixer   Phi-3.5-MoE's top-2 router in its inference form
    sigmoid-group DeepSeek-V3's router: sigmoid scores, a bias that steers only the choice, group-limited
                  top-k, renormalised, scaled (comet.core.reference.grouped_sigmoid_gate_loop is its twin,
                  a per-token loop)
    topk-softmax  gpt-oss's router: the top-k logits, then a softmax over those k (CometMoE cannot run
                  gpt-oss's experts yet; the router is here, checked against transformers')
"""

from __future__ import annotations

import torch

ROUTERS = ("softmax", "sparsemixer", "sigmoid-group", "topk-softmax")


def softmax_topk_gate(logits_ME: torch.Tensor, topk: int, normalize: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(topk_ids_MJ int64, topk_weights_MJ float32): softmax over the logits in float32, the top-k experts,
    weights renormalised to sum 1 if `normalize` (comet.core.routing.topk_gate when normalize)."""
    E = logits_ME.shape[-1]
    if not 1 <= topk <= E:
        raise ValueError(f"topk={topk} must lie in [1, E={E}]")
    probs = torch.softmax(logits_ME.float(), dim=-1)
    w, ids = probs.topk(topk, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    return ids, w


def sparsemixer_gate(logits_ME: torch.Tensor, jitter_eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Phi-3.5-MoE's top-2 router ("sparsemixer"), inference form, in float32.

    For each of the two picks: the best remaining expert e* (score s*); experts whose score is further than
    2 jitter_eps below s*, relative to max(|score|, s*), are masked out; the weight is e*'s softmax probability
    among the unmasked remaining experts. The second pick excludes the first. Weights do not sum to 1.
    Returns (topk_ids_MJ int64 (M, 2), topk_weights_MJ float32 (M, 2)).
    """
    if logits_ME.shape[-1] < 2:
        raise ValueError("sparsemixer picks two distinct experts: it needs E >= 2")
    scores = logits_ME.float()

    def pick(masked):
        best, idx = masked.max(dim=-1, keepdim=True)
        far = (best - scores) / scores.abs().clamp(min=best) > 2 * jitter_eps
        probs = masked.masked_fill(far, float("-inf")).softmax(dim=-1)
        return idx, probs.gather(-1, idx)

    i1, w1 = pick(scores)
    i2, w2 = pick(scores.scatter(-1, i1, float("-inf")))
    return torch.cat([i1, i2], dim=-1), torch.cat([w1, w2], dim=-1)


def grouped_sigmoid_gate(logits_ME: torch.Tensor, topk: int, correction_bias_E: torch.Tensor, n_group: int = 1,
                         topk_group: int = 1, normalize: bool = True, scaling: float = 1.0
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's router ("noaux_tc"), in float32: scores s = sigmoid(logits); the choice ranks
    s + correction_bias_E, the weights come from s alone. The E experts form n_group groups of E/n_group; a
    group's score is the sum of its two best choice scores; only the topk_group best groups compete for the
    top-k. Weights: the chosen s, divided by their sum (+1e-20) if `normalize`, times `scaling` (the
    config's routed_scaling_factor, 2.5 in DeepSeek-V3: the weights sum to it, not to 1).
    Returns (topk_ids_MJ int64 (M, topk), topk_weights_MJ float32 (M, topk))."""
    E = logits_ME.shape[-1]
    if n_group < 1 or E % n_group:
        raise ValueError(f"n_group={n_group} must divide E={E}")
    per_group = E // n_group
    if not 1 <= topk_group <= n_group:
        raise ValueError(f"topk_group={topk_group} must lie in [1, n_group={n_group}]")
    if not 1 <= topk <= topk_group * per_group:
        raise ValueError(f"topk={topk} must lie in [1, topk_group x E/n_group = {topk_group * per_group}]")
    if per_group < 2:
        raise ValueError(f"a group's score sums its two best experts: E/n_group = {per_group} must be >= 2")
    if tuple(correction_bias_E.shape) != (E,):
        raise ValueError(f"correction_bias_E must have shape ({E},), got {tuple(correction_bias_E.shape)}")
    scores = logits_ME.float().sigmoid()
    choice = scores + correction_bias_E.float()
    group_score = choice.view(-1, n_group, per_group).topk(2, dim=-1).values.sum(dim=-1)
    groups = group_score.topk(topk_group, dim=-1, sorted=False).indices
    keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, groups, True)
    choice = choice.masked_fill(~keep.repeat_interleave(per_group, dim=1), float("-inf"))
    ids = choice.topk(topk, dim=-1, sorted=False).indices
    w = scores.gather(1, ids)
    if normalize:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids, w * scaling


def topk_softmax_gate(logits_ME: torch.Tensor, topk: int) -> tuple[torch.Tensor, torch.Tensor]:
    """gpt-oss's router, in float32: the top-k logits, then a softmax over those k only (the weights sum
    to 1). Returns (topk_ids_MJ int64, topk_weights_MJ float32)."""
    E = logits_ME.shape[-1]
    if not 1 <= topk <= E:
        raise ValueError(f"topk={topk} must lie in [1, E={E}]")
    top, ids = logits_ME.float().topk(topk, dim=-1)
    return ids, torch.softmax(top, dim=-1)
