"""Slow references for the grouped GEMM kernels, one layer at a time, following comet/core/reference.py's
semantics (gelu exact erf; swiglu silu(x @ gate) * (x @ up) with w0's columns [gate | up]).

Shapes (docs/SHAPES.md): M tokens, N hidden, K FFN (K' = 2K for swiglu), E local
experts, R rows of the rank's shared tensor (only the plan's num_rows valid rows are returned).
These sync with the host (they read the plan's counts); for tests and benchmark checks only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def expert_rows(plan, rank: int) -> list[tuple[int, int]]:
    """[start, end) shared-tensor rows of each local expert of `rank` (host sync)."""
    off = plan.rank(rank).expert_offsets_E1.tolist()
    return [(off[e], off[e + 1]) for e in range(len(off) - 1)]


def activation_ref(h: torch.Tensor, activation: str) -> torch.Tensor:
    """act(h) for h = x @ w0 with all K' columns: gelu (erf form), swiglu (silu(gate) * up), or none."""
    if activation == "gelu":
        return F.gelu(h)
    if activation == "swiglu":
        k = h.shape[1] // 2
        return F.silu(h[:, :k]) * h[:, k:]
    if activation == "none":
        return h
    raise ValueError(f"unknown activation {activation!r}")


def reference_layer0(plan, rank: int, x_MN, w0_ENK, activation: str | None = None,
                     dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """out_RK (num_rows, K) = act(x_MN[row_token_R] @ w0_ENK[expert]) computed in `dtype` on x's device."""
    act = activation or plan.model.activation
    rp = plan.rank(rank)
    n = int(rp.num_rows)
    tok = rp.row_token_R[:n].to(x_MN.device)
    k_out = w0_ENK.shape[2] // (2 if act == "swiglu" else 1)
    out = torch.zeros(n, k_out, dtype=dtype, device=x_MN.device)
    for e, (s, end) in enumerate(expert_rows(plan, rank)):
        if end > s:
            out[s:end] = activation_ref(x_MN[tok[s:end]].to(dtype) @ w0_ENK[e].to(dtype), act)
    return out


def reference_layer1(plan, rank: int, h_RK, w1_EKN, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """out_RN (num_rows, N) = h_RK[r] @ w1_EKN[expert(r)] computed in `dtype` on h's device."""
    n = int(plan.rank(rank).num_rows)
    out = torch.zeros(n, w1_EKN.shape[2], dtype=dtype, device=h_RK.device)
    for e, (s, end) in enumerate(expert_rows(plan, rank)):
        if end > s:
            out[s:end] = h_RK[s:end].to(dtype) @ w1_EKN[e].to(dtype)
    return out
