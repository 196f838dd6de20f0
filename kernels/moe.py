"""The fused MoE layer: plan -> stage tokens -> layer0 (dispatch + GEMM) -> layer1 (GEMM + top-k reduce +
combine) -> owners' reduce, for every emulated rank (EmulatedWorld) or this process's rank
(SymmetricWorkspace).

Shapes (docs/SHAPES.md): M tokens of the whole group, N hidden, E experts, W ranks; weights follow
comet/core/reference.py (w0_ENK (E, N, K') with K' = K or 2K for swiglu [gate | up], w1_EKN (E, K, N)).

    >>> import torch
    >>> from comet.core.config import ModelConfig, ParallelConfig
    >>> from comet.core.policy import Policy
    >>> from comet.core.reference import moe_forward
    >>> from comet.core.weights import random_tokens, random_weights
    >>> from comet.core.routing import uniform
    >>> from kernels.workspace import EmulatedWorld
    >>> model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    >>> world = EmulatedWorld(model, ParallelConfig(ep=2), capacity_tokens=32, dtype=torch.float32)
    >>> x, w, r = random_tokens(24, 32), random_weights(model), uniform(24, 4, 2, seed=1)
    >>> out = moe_forward_fused(world, x, r, w, model, ParallelConfig(ep=2),  # doctest: +SKIP
    ...                         Policy(block_m=16, block_n0=16, block_n1=16, nc_layer0=2, nc_layer1=2))
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from comet.core import defaults
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import owned_range
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing
from comet.core.weights import ExpertWeights, shard_weights
from kernels.combine import combine_reduce
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1


def stage_tokens(ws, x_MN: torch.Tensor, M: int) -> None:
    """Copy each rank's own token rows into its receive buffer (rows by global token id). x_MN: (M, N) all
    tokens (emulated world), or (M, N) / (M_own, N) on a real process group (its own rows are taken)."""
    W = ws.world_size
    for r in ws.ranks:
        lo, hi = owned_range(M, W, r)
        if hi == lo:
            continue
        rows = x_MN[lo:hi] if x_MN.shape[0] == M else x_MN
        if rows.shape[0] != hi - lo:
            raise ValueError(f"rank {r} owns tokens [{lo}, {hi}) of M={M}; x has {x_MN.shape[0]} rows (give all M "
                             f"rows, or this rank's {hi - lo})")
        ws.buffers(r).recv_MN[lo:hi].copy_(rows)


def rank_shards(weights: ExpertWeights | Sequence[ExpertWeights] | Mapping[int, ExpertWeights], model: ModelConfig,
                parallel: ParallelConfig, ranks: Sequence[int]) -> dict[int, ExpertWeights]:
    """Each rank's weight shard: from all E experts (sharded with comet.core.weights.shard_weights, copies), from
    a sequence holding one shard per rank (index = rank), from a mapping rank -> shard holding at least `ranks`,
    or this rank's shard on a one-rank process."""
    E_loc, K_loc = model.experts_E // parallel.ep, model.ffn_K // parallel.tp
    if isinstance(weights, Mapping):
        missing = [r for r in ranks if r not in weights]
        if missing:
            raise ValueError(f"the weight mapping has no shard for ranks {missing}")
        weights = [weights.get(r) for r in range(parallel.world_size)]
    if isinstance(weights, ExpertWeights):
        if (weights.num_experts, weights.ffn_K) == (model.experts_E, model.ffn_K):
            return {r: shard_weights(weights, parallel, r) for r in ranks}
        if (weights.num_experts, weights.ffn_K) == (E_loc, K_loc) and len(ranks) == 1:
            return {ranks[0]: weights}
        raise ValueError(f"weights hold E={weights.num_experts}, K={weights.ffn_K}: expected all experts "
                         f"(E={model.experts_E}, K={model.ffn_K}) or one rank's shard (E={E_loc}, K={K_loc})")
    if len(weights) != parallel.world_size:
        raise ValueError(f"give one weight shard per rank ({parallel.world_size}), got {len(weights)}")
    out = {}
    for r in ranks:
        s = weights[r]
        if (s.num_experts, s.ffn_K) != (E_loc, K_loc):
            raise ValueError(f"rank {r}'s shard holds E={s.num_experts}, K={s.ffn_K}; expected E={E_loc}, K={K_loc}")
        out[r] = s
    return out


def moe_forward_fused(ws, x_MN: torch.Tensor, routing: Routing,
                      weights: ExpertWeights | Sequence[ExpertWeights], model: ModelConfig,
                      parallel: ParallelConfig, policy: Policy | None = None, *,
                      hardware: HardwareProfile | None = None, checked: bool = False,
                      out_MN: torch.Tensor | None = None, layer0_kwargs: dict | None = None,
                      layer1_kwargs: dict | None = None, return_plan: bool = False, plan: Plan | None = None,
                      timeline=None):
    """One MoE layer through the fused kernels.

    ws: EmulatedWorld (all W ranks in this process) or SymmetricWorkspace (this process's rank).
    x_MN: (M, N) tokens in the workspace dtype on its device (all M rows; on a process group this rank's
    own rows may be given instead). routing: global (M tokens); moved to x's device; the plan is built there
    (make_plan, no host sync on a GPU). weights: all experts or per-rank shards (see rank_shards).
    policy: tiles, n_c, layer0 variant (Policy.layer0_comm) and dispatch form.
    Returns out_MN: (M, N) for an emulated world; this rank's (M_own, N) rows on a process group.
    checked: call ws.check() after the layer (one host sync) so a timed-out wait raises here.
    plan: a Plan already built from this routing for this workspace's ranks (skips make_plan; e.g. to time the
    kernels alone); it must have been made with `policy`.
    layer0_kwargs / layer1_kwargs: keywords for every rank's kernels.fused_layer0.fused_layer0 /
    kernels.fused_layer1.fused_layer1 call (e.g. {"num_programs": 1}, {"comm": kernels.options.CommConfig(...)}).
    timeline: a kernels.timeline.TimelineRecorder: both layers' kernels run instrumented and record every
    tile and communication item into it (GPU only; `timeline.events()` decodes them).
    """
    policy = policy or Policy()
    if x_MN.dtype != ws.dtype or x_MN.device != ws.device:
        raise ValueError(f"x_MN is {x_MN.dtype} on {x_MN.device}; the workspace holds {ws.dtype} on {ws.device}")
    if x_MN.dim() != 2 or x_MN.shape[1] != model.hidden_N:
        raise ValueError(f"x_MN must be (M, N={model.hidden_N}), got {tuple(x_MN.shape)}")
    if (parallel.ep, parallel.tp) != (ws.parallel.ep, ws.parallel.tp):
        raise ValueError(f"parallel EP={parallel.ep} TP={parallel.tp} differs from the workspace's "
                         f"EP={ws.parallel.ep} TP={ws.parallel.tp}")
    M, W = routing.num_tokens, parallel.world_size
    ws.begin_call(M)
    routing = routing.to(x_MN.device)
    if plan is None:
        plan = make_plan(routing, model, parallel, hardware or HardwareProfile.from_name(defaults.GPU_HARDWARE), policy,
                         ranks=list(ws.ranks))
    elif plan.num_tokens != M or plan.policy != policy or not set(ws.ranks) <= {p.rank for p in plan.ranks}:
        raise ValueError(f"the given plan (M={plan.num_tokens}, ranks {[p.rank for p in plan.ranks]}) was not "
                         f"built for this call (M={M}, ranks {list(ws.ranks)}, this policy)")
    shards = rank_shards(weights, model, parallel, ws.ranks)
    for r, s in shards.items():
        if s.dtype != ws.dtype or s.device != ws.device:
            raise ValueError(f"rank {r}'s weights are {s.dtype} on {s.device}; expected {ws.dtype} on {ws.device}")
    l0kw, l1kw = layer0_kwargs or {}, layer1_kwargs or {}
    if timeline is not None:
        l0kw, l1kw = {**l0kw, "timeline": timeline}, {**l1kw, "timeline": timeline}

    stage_tokens(ws, x_MN, M)
    ws.barrier()  # every owner's rows are in place before any rank pulls them
    for r in ws.ranks:
        fused_layer0(ws, plan, r, shards[r].w0_ENK, **l0kw)
    for r in ws.ranks:
        fused_layer1(ws, plan, r, shards[r].w1_EKN, **l1kw)
    emulated = len(ws.ranks) == W
    if out_MN is None:
        out_MN = torch.empty(M if emulated else _n_own(M, W, ws.ranks[0]), model.hidden_N, dtype=ws.dtype,
                             device=ws.device)
    for r in ws.ranks:
        lo, hi = owned_range(M, W, r)
        rows = out_MN[lo:hi] if emulated else out_MN
        combine_reduce(ws, plan, r, plan.rank(r).combine_expected_W, out_MN=rows)
    ws.barrier()  # nobody overwrites receive or combine buffers of this call before all are done
    if checked:
        ws.check()
    return (out_MN, plan) if return_plan else out_MN


def _n_own(M: int, W: int, r: int) -> int:
    lo, hi = owned_range(M, W, r)
    return hi - lo


__all__ = ["moe_forward_fused", "stage_tokens", "rank_shards", "Plan"]
