"""Expert weights in the layout every part of the project shares, their TP x EP shards, and seeded test data.

Layout: w0_ENK (E, N, K') layer0 (N -> K'), K' = K for gelu, 2K for swiglu ([..., :K] gate, [..., K:] up);
w1_EKN (E, K, N) layer1. Rank r holds experts [ep_rank * E/EP, (ep_rank + 1) * E/EP), each cut to columns
[tp_rank * K/TP, (tp_rank + 1) * K/TP) of w0 (for swiglu the same slice of gate and of up, stored
[gate_shard | up_shard]) and the same rows of w1. Suffix letters: docs/SHAPES.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch

from comet.core.config import ACTIVATIONS, ModelConfig, ParallelConfig

__all__ = ["ExpertWeights", "random_weights", "random_tokens", "shard_weights", "as_dtype", "check_activation"]


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    d = getattr(torch, str(dtype), None)
    if not isinstance(d, torch.dtype) or not d.is_floating_point:
        raise ValueError(f"unknown float dtype {dtype!r}; use e.g. torch.float64 or 'float32'")
    return d


def check_activation(activation: str) -> None:
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} not supported; use one of {ACTIVATIONS}")



@dataclass(frozen=True)
class ExpertWeights:
    """Weights of E experts (all of a model's, or one rank's shard).

    w0_ENK: (E, N, K') layer0 (N -> K'), K' = K for gelu, 2K for swiglu with [..., :K] = gate, [..., K:] = up.
    w1_EKN: (E, K, N) layer1 (K -> N). One dtype and device for both. Lifetime: immutable; shards are copies.
    The activation is implied by the shapes (K' = 2K means swiglu).
    """

    w0_ENK: torch.Tensor
    w1_EKN: torch.Tensor

    def __post_init__(self):
        w0, w1 = self.w0_ENK, self.w1_EKN
        if w0.dim() != 3 or w1.dim() != 3:
            raise ValueError(f"w0_ENK {tuple(w0.shape)} and w1_EKN {tuple(w1.shape)} must both be 3-D: "
                             f"(E, N, K') and (E, K, N)")
        E, N, K1 = w0.shape
        E1, K, N1 = w1.shape
        if E1 != E or N1 != N:
            raise ValueError(f"w0_ENK {tuple(w0.shape)} and w1_EKN {tuple(w1.shape)} disagree on E or N; "
                             f"expected w1_EKN of shape ({E}, K, {N})")
        if K1 not in (K, 2 * K):
            raise ValueError(f"w0_ENK has K'={K1} columns but w1_EKN has K={K} rows; K' must be K (gelu) "
                             f"or 2K (swiglu: gate | up)")
        if w0.dtype != w1.dtype or w0.device != w1.device:
            raise ValueError(f"w0_ENK ({w0.dtype}, {w0.device}) and w1_EKN ({w1.dtype}, {w1.device}) must "
                             f"share dtype and device")
        if not w0.dtype.is_floating_point:
            raise ValueError(f"expert weights must be floating point, got {w0.dtype}")

    @property
    def num_experts(self) -> int:
        return self.w0_ENK.shape[0]

    @property
    def hidden_N(self) -> int:
        return self.w0_ENK.shape[1]

    @property
    def ffn_K(self) -> int:
        """K of these weights (K/TP for a TP shard)."""
        return self.w1_EKN.shape[1]

    @property
    def activation(self) -> str:
        return "swiglu" if self.w0_ENK.shape[2] == 2 * self.ffn_K else "gelu"

    @property
    def dtype(self) -> torch.dtype:
        return self.w0_ENK.dtype

    @property
    def device(self) -> torch.device:
        return self.w0_ENK.device

    def to(self, dtype: torch.dtype | str | None = None, device=None) -> ExpertWeights:
        """A copy in another dtype and/or on another device (e.g. `.to(torch.float64)` for a reference)."""
        d = None if dtype is None else as_dtype(dtype)
        return ExpertWeights(self.w0_ENK.to(device=device, dtype=d), self.w1_EKN.to(device=device, dtype=d))


def _shapes_of(model_or_shapes: ModelConfig | Mapping) -> tuple[int, int, int, str]:
    if isinstance(model_or_shapes, ModelConfig):
        m = model_or_shapes
        return m.experts_E, m.hidden_N, m.ffn_K, m.activation
    need = ("experts_E", "hidden_N", "ffn_K")
    missing = [k for k in need if k not in model_or_shapes]
    if missing:
        raise ValueError(f"shapes mapping lacks {missing}; give experts_E, hidden_N, ffn_K (and activation)")
    act = model_or_shapes.get("activation", "gelu")
    check_activation(act)
    E, N, K = (int(model_or_shapes[k]) for k in need)
    if min(E, N, K) < 1:
        raise ValueError(f"experts_E, hidden_N and ffn_K must be >= 1, got {E}, {N}, {K}")
    return E, N, K, act


def random_weights(model_or_shapes: ModelConfig | Mapping, seed: int = 0,
                   dtype: torch.dtype | str = torch.float32, device=None) -> ExpertWeights:
    """Seeded Gaussian expert weights, scaled 1/sqrt(fan_in) so that outputs are O(1) for O(1) inputs.

    model_or_shapes: a ModelConfig, or a mapping with experts_E, hidden_N, ffn_K and optional activation.
    Drawn in float32 on the CPU from torch.Generator(seed), then cast and moved: the same seed gives the
    same weights (up to the cast) on every device and dtype.
    """
    E, N, K, act = _shapes_of(model_or_shapes)
    gen = torch.Generator().manual_seed(seed)
    k0 = 2 * K if act == "swiglu" else K
    w0 = torch.randn(E, N, k0, generator=gen) / math.sqrt(N)
    w1 = torch.randn(E, K, N, generator=gen) / math.sqrt(K)
    return ExpertWeights(w0, w1).to(as_dtype(dtype), device)


def random_tokens(M: int, N: int, seed: int = 0, dtype: torch.dtype | str = torch.float32,
                  device=None) -> torch.Tensor:
    """x_MN: seeded standard-normal token rows (drawn in float32 on the CPU, then cast and moved)."""
    x = torch.randn(M, N, generator=torch.Generator().manual_seed(seed))
    return x.to(device=device, dtype=as_dtype(dtype))


def _check_parallel(E: int, K: int, parallel: ParallelConfig) -> None:
    if E % parallel.ep:
        raise ValueError(f"E={E} experts are not divisible by ep={parallel.ep}; choose ep among the "
                         f"divisors of {E}")
    if K % parallel.tp:
        raise ValueError(f"ffn_K={K} is not divisible by tp={parallel.tp}; choose tp among the divisors "
                         f"of {K}")


def _check_rank(rank: int, parallel: ParallelConfig) -> None:
    if not 0 <= rank < parallel.world_size:
        raise ValueError(f"rank {rank} out of range for world size ep*tp = {parallel.world_size}")


def shard_weights(weights: ExpertWeights, parallel: ParallelConfig, rank: int) -> ExpertWeights:
    """Rank `rank`'s weights: its E/EP experts, each cut to its K/TP slice (copies, contiguous).

    Experts [ep_rank * E/EP, (ep_rank + 1) * E/EP); columns [tp_rank * K/TP, (tp_rank + 1) * K/TP) of w0
    (swiglu: that slice of gate and of up, stored [gate_shard | up_shard]) and the same rows of w1.
    Returns w0_ENK (E/EP, N, K'/TP) and w1_EKN (E/EP, K/TP, N).
    """
    E, K = weights.num_experts, weights.ffn_K
    _check_parallel(E, K, parallel)
    _check_rank(rank, parallel)
    e_loc, k_loc = E // parallel.ep, K // parallel.tp
    e0 = parallel.ep_rank(rank) * e_loc
    k0 = parallel.tp_rank(rank) * k_loc
    w0 = weights.w0_ENK[e0:e0 + e_loc]
    if weights.activation == "swiglu":
        w0 = torch.cat([w0[..., k0:k0 + k_loc], w0[..., K + k0:K + k0 + k_loc]], dim=-1)
    else:
        w0 = w0[..., k0:k0 + k_loc]
    w1 = weights.w1_EKN[e0:e0 + e_loc, k0:k0 + k_loc]
    return ExpertWeights(w0.contiguous().clone(), w1.contiguous().clone())

