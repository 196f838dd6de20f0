"""The routers of the MoE blocks this project loads: logits (M, E) -> (topk_ids_MJ int64, topk_weights_MJ
float32). Each is plain torch in float32, its own reference twin.

    softmax       softmax over the logits, the top-k experts, weights renormalised to sum 1 when asked
                  (Mixtral renormalises, Qwen2-MoE by default not)
    sparsemixer   Phi-3.5-MoE's top-2 router in its inference form
"""

from __future__ import annotations

import torch

ROUTERS = ("softmax", "sparsemixer")


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
