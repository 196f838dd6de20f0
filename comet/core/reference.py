"""The slow, obviously correct twin that defines the MoE layer's semantics (CPU, float32/float64, loops).

Suffix letters: docs/SHAPES.md (K is the expert FFN size; w0's last axis holds K' = K or 2K for swiglu).

Semantics. With gate weights w and experts e from the routing,
    out[t] = sum_k w[t, k] * ffn_{e[t, k]}(x[t]),    ffn_e(x) = act(x @ w0_ENK[e]) @ w1_EKN[e]
    gelu:   act(h) = gelu(h), exact (erf) form, torch.nn.functional.gelu's default
    swiglu: act(h) = silu(h[:, :K]) * h[:, K:]   (w0_ENK[..., :K] = gate, w0_ENK[..., K:] = up)
The Triton kernels use the same weight layout.

Parallel layout (ParallelConfig: rank r has ep_rank = r // tp, tp_rank = r % tp). Rank r holds experts
[ep_rank * E/EP, (ep_rank + 1) * E/EP), each sharded along K: columns [tp_rank * K/TP, (tp_rank + 1) * K/TP)
of w0 (for swiglu the same slice of gate and of up, stored [gate_shard | up_shard]) and the same rows of w1.
Token t is owned by rank `comet.core.ownership.token_owner(M, W)[t]`. `emulate_ranks` runs the W ranks in one process:
    dispatch        token rows travel from their owner to the ranks whose experts they need
                    ("all-to-all": each such rank is sent the row once; "all-gather": every rank gathers
                    every row, then keeps those its experts need);
    expert_compute  each rank runs its local experts on its TP shard: (token, slot) rows, partial over K;
    topk_reduce     each rank sums the gate-weighted rows of every token it received: one partial per token;
    combine         every partial goes to the token's owner, which sums them (this also reduces TP partials).

    >>> import torch
    >>> from comet.core.config import ModelConfig, ParallelConfig
    >>> from comet.core.routing import uniform
    >>> from comet.core.tolerances import assert_close
    >>> from comet.core.weights import random_tokens, random_weights
    >>> model = ModelConfig("tiny", hidden_N=8, ffn_K=12, experts_E=4, topk=2, layers=1, activation="swiglu")
    >>> w = random_weights(model, seed=0, dtype=torch.float64)
    >>> x = random_tokens(10, 8, seed=1, dtype=torch.float64)
    >>> r = uniform(10, 4, 2, seed=2)
    >>> out = moe_forward(x, r, w, "swiglu")
    >>> emulated = emulate_ranks(x, r, w, model, ParallelConfig(ep=2, tp=2), "all-to-all")
    >>> assert_close(emulated, out, torch.float64, "emulated vs single-process")
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.ownership import token_owner
from comet.core.policy import DISPATCHES
from comet.core.routing import Routing
from comet.core.weights import ExpertWeights, check_activation, shard_weights

__all__ = ["expert_ffn", "moe_forward", "RankRecv", "DispatchMeta", "ExpertRows", "dispatch", "expert_compute",
           "topk_reduce", "combine", "emulate_ranks"]

DISPATCH_FORMS = DISPATCHES  # ("all-to-all", "all-gather"), as the planner's Policy.dispatch


# ------------------------------------------------------------------------------- single-process forward
def expert_ffn(x_RN: torch.Tensor, w0_NK: torch.Tensor, w1_KN: torch.Tensor, activation: str) -> torch.Tensor:
    """One expert on R rows: act(x_RN @ w0_NK) @ w1_KN -> (R, N), in the inputs' dtype.

    w0_NK: (N, K') with K' = K (gelu) or 2K (swiglu, [gate | up]); w1_KN: (K, N). For a TP shard the same
    formula gives the shard's partial sum (the activation is elementwise in K, so it shards cleanly).
    """
    check_activation(activation)
    h_RK = x_RN @ w0_NK
    if activation == "swiglu":
        k = w0_NK.shape[1] // 2
        h_RK = F.silu(h_RK[:, :k]) * h_RK[:, k:]
    else:
        h_RK = F.gelu(h_RK)  # exact erf form (approximate="none")
    return h_RK @ w1_KN


def _check_inputs(x_MN: torch.Tensor, routing: Routing, weights: ExpertWeights, activation: str) -> None:
    check_activation(activation)
    if x_MN.dim() != 2:
        raise ValueError(f"x_MN must be 2-D (M, N), got shape {tuple(x_MN.shape)}")
    if x_MN.shape[1] != weights.hidden_N:
        raise ValueError(f"x_MN has N={x_MN.shape[1]} columns but the expert weights have hidden_N="
                         f"{weights.hidden_N}; they must agree")
    if x_MN.dtype != weights.dtype:
        raise ValueError(f"x_MN is {x_MN.dtype} but the expert weights are {weights.dtype}; cast one "
                         f"(e.g. weights.to(x_MN.dtype))")
    if x_MN.device != weights.device:
        raise ValueError(f"x_MN is on {x_MN.device} but the expert weights are on {weights.device}")
    if routing.num_tokens != x_MN.shape[0]:
        raise ValueError(f"routing has {routing.num_tokens} tokens but x_MN has {x_MN.shape[0]} rows")
    if routing.num_experts != weights.num_experts:
        raise ValueError(f"routing has {routing.num_experts} experts but the weights hold "
                         f"{weights.num_experts}; make the routing with E={weights.num_experts}")
    if weights.activation != activation:
        raise ValueError(f"activation {activation!r} does not match the weights, which are "
                         f"{weights.activation} weights (w0_ENK has K'={weights.w0_ENK.shape[2]}, "
                         f"ffn_K={weights.ffn_K})")
    routing.check()


def moe_forward(x_MN: torch.Tensor, routing: Routing, weights: ExpertWeights,
                activation: str) -> torch.Tensor:
    """Single-process MoE layer: out[t] = sum_k w[t, k] * ffn_{e[t, k]}(x[t]), a loop over experts.

    x_MN: (M, N) float tokens; routing: M tokens over E = weights.num_experts experts; weights: all E experts,
    same dtype and device as x_MN; activation: "gelu" or "swiglu" (must match the weights' shapes).
    Returns out_MN (M, N) in x_MN's dtype; gate weights are cast to it. Use float32/float64.
    """
    _check_inputs(x_MN, routing, weights, activation)
    ids_MJ = routing.topk_ids_MJ.to(x_MN.device)
    gate_MJ = routing.topk_weights_MJ.to(device=x_MN.device, dtype=x_MN.dtype)
    out_MN = torch.zeros_like(x_MN)
    for e in range(weights.num_experts):
        tok_R, slot_R = (ids_MJ == e).nonzero(as_tuple=True)
        if tok_R.numel() == 0:
            continue
        y_RN = expert_ffn(x_MN[tok_R], weights.w0_ENK[e], weights.w1_EKN[e], activation)
        out_MN.index_add_(0, tok_R, y_RN * gate_MJ[tok_R, slot_R, None])
    return out_MN


# ------------------------------------------------------------------------------------ W-rank emulation
@dataclass(frozen=True)
class RankRecv:
    """What one rank holds after dispatch, besides the rows themselves.

    token_U: int64 (U,) global token id of each received row, ordered by (source rank, token id);
    src_U: int64 (U,) rank the row came from (the token's owner; the rank itself for its own tokens);
    topk_ids_UJ / topk_weights_UJ: (U, topk) the tokens' routing, which travels with the rows.
    """

    rank: int
    token_U: torch.Tensor
    src_U: torch.Tensor
    topk_ids_UJ: torch.Tensor
    topk_weights_UJ: torch.Tensor

    @property
    def num_rows(self) -> int:
        return self.token_U.numel()


@dataclass(frozen=True)
class DispatchMeta:
    """What `dispatch` tells `combine` (and tests): who received what, from whom.

    form: "all-to-all" or "all-gather"; num_tokens: M; experts_E: E;
    token_owner_M: int64 (M,) owner rank of each token (comet.core.ownership.token_owner);
    ranks: one RankRecv per rank, index = rank;
    sent_rows_WW: int64 (W, W) token rows rank s sent to rank d in dispatch ([s, d]); the diagonal counts a
        rank's own rows, which stay in place (no traffic). all-gather: every row goes everywhere;
    combine_rows_WW: int64 (W, W) partial sums rank r sends to owner s in combine ([r, s]), diagonal local.
    """

    form: str
    parallel: ParallelConfig
    num_tokens: int
    experts_E: int
    token_owner_M: torch.Tensor
    ranks: tuple[RankRecv, ...]
    sent_rows_WW: torch.Tensor
    combine_rows_WW: torch.Tensor

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    @property
    def experts_per_rank(self) -> int:
        return self.experts_E // self.parallel.ep

    def local_experts(self, rank: int) -> range:
        """Global ids of the experts rank `rank` holds."""
        e0 = self.parallel.ep_rank(rank) * self.experts_per_rank
        return range(e0, e0 + self.experts_per_rank)


def _owned(owner_M: torch.Tensor, s: int) -> torch.Tensor:
    """int64 global ids of the tokens rank s owns (a contiguous, possibly empty, range)."""
    return (owner_M == s).nonzero(as_tuple=True)[0]


def dispatch(x_MN: torch.Tensor, routing: Routing, model: ModelConfig, parallel: ParallelConfig,
             form: str = "all-to-all") -> tuple[tuple[torch.Tensor, ...], DispatchMeta]:
    """Move token rows from their owners to the ranks that need them, W ranks emulated in one process.

    x_MN: (M, N) the global tokens; rank s starts with only the rows it owns (token_owner) and sends from
    those. A rank needs token t if one of t's experts is local to it (all TP ranks of an EP group need the
    same tokens). "all-to-all": the owner sends the row once to each rank that needs it. "all-gather":
    every rank receives every row (into an M x N buffer), then keeps the rows it needs.
    Returns (recv_x_UN per rank, in rank order; DispatchMeta). Rows are ordered by (source rank, token id).
    """
    if form not in DISPATCH_FORMS:
        raise ValueError(f"unknown dispatch form {form!r}; choose one of {', '.join(DISPATCH_FORMS)}")
    parallel.validate(model)
    if x_MN.dim() != 2 or x_MN.shape[1] != model.hidden_N:
        raise ValueError(f"x_MN must be (M, N={model.hidden_N}) for {model.name}, got {tuple(x_MN.shape)}")
    if routing.num_tokens != x_MN.shape[0]:
        raise ValueError(f"routing has {routing.num_tokens} tokens but x_MN has {x_MN.shape[0]} rows")
    if routing.num_experts != model.experts_E:
        raise ValueError(f"routing has {routing.num_experts} experts but {model.name} has {model.experts_E}")
    if routing.topk != model.topk:
        raise ValueError(f"routing has topk={routing.topk} but {model.name} has topk={model.topk}; "
                         f"they must agree")
    routing.check()
    M, W = x_MN.shape[0], parallel.world_size
    E_loc = model.experts_E // parallel.ep
    dev = x_MN.device
    owner_M = token_owner(M, W, dev)
    ids_MJ = routing.topk_ids_MJ.to(dev)
    gate_MJ = routing.topk_weights_MJ.to(dev)
    group_MJ = ids_MJ // E_loc  # EP group (ep_rank) holding each chosen expert

    # --- each source rank s sends from its own rows only; inbox[d][s] = (token ids, rows) from s to d
    inbox = [[None] * W for _ in range(W)]
    sent = torch.zeros(W, W, dtype=torch.int64)
    for s in range(W):
        own_tok = _owned(owner_M, s)
        own_x = x_MN[own_tok]
        for d in range(W):
            if form == "all-to-all":
                keep = (group_MJ[own_tok] == parallel.ep_rank(d)).any(dim=1)
                tok, rows = own_tok[keep], own_x[keep]
            else:
                tok, rows = own_tok, own_x
            inbox[d][s] = (tok, rows)
            sent[s, d] = tok.numel()

    # --- each destination d concatenates its inbox in source order, keeps what its experts need
    recv_x, recv_meta = [], []
    combine_rows = torch.zeros(W, W, dtype=torch.int64)
    for d in range(W):
        tok_U = torch.cat([inbox[d][s][0] for s in range(W)])
        x_UN = torch.cat([inbox[d][s][1] for s in range(W)])
        src_U = torch.cat([torch.full_like(inbox[d][s][0], s) for s in range(W)])
        if form == "all-gather":
            keep = (group_MJ[tok_U] == parallel.ep_rank(d)).any(dim=1)
            tok_U, x_UN, src_U = tok_U[keep], x_UN[keep], src_U[keep]
        recv_x.append(x_UN)
        recv_meta.append(RankRecv(rank=d, token_U=tok_U, src_U=src_U, topk_ids_UJ=ids_MJ[tok_U],
                                  topk_weights_UJ=gate_MJ[tok_U]))
        combine_rows[d] = torch.bincount(src_U.cpu(), minlength=W)
    meta = DispatchMeta(form=form, parallel=parallel, num_tokens=M, experts_E=model.experts_E,
                        token_owner_M=owner_M, ranks=tuple(recv_meta), sent_rows_WW=sent,
                        combine_rows_WW=combine_rows)
    return tuple(recv_x), meta


@dataclass(frozen=True)
class ExpertRows:
    """One rank's expert outputs, one row per (received token, slot) routed to a local expert, expert-major.

    y_RN: (R, N) ffn output on this rank's TP shard (a partial sum over K when TP > 1), not yet gate-weighted;
    recv_row_R: int64 (R,) index into the rank's received rows (U); slot_R: int64 (R,) top-k slot;
    expert_R: int64 (R,) global expert id.
    """

    y_RN: torch.Tensor
    recv_row_R: torch.Tensor
    slot_R: torch.Tensor
    expert_R: torch.Tensor


def expert_compute(recv_x_UN: torch.Tensor, recv: RankRecv, shard: ExpertWeights, first_expert: int,
                   activation: str) -> ExpertRows:
    """Run a rank's local experts (global ids first_expert ..) on its received rows with its weight shard."""
    if recv_x_UN.shape != (recv.num_rows, shard.hidden_N):
        raise ValueError(f"rank {recv.rank}: recv_x_UN {tuple(recv_x_UN.shape)} does not match "
                         f"({recv.num_rows}, {shard.hidden_N})")
    if shard.activation != activation:
        raise ValueError(f"activation {activation!r} does not match the shard's {shard.activation} weights")
    ys, us, ks, es = [], [], [], []
    for j in range(shard.num_experts):
        u_R, k_R = (recv.topk_ids_UJ == first_expert + j).nonzero(as_tuple=True)
        ys.append(expert_ffn(recv_x_UN[u_R], shard.w0_ENK[j], shard.w1_EKN[j], activation))
        us.append(u_R)
        ks.append(k_R)
        es.append(torch.full_like(u_R, first_expert + j))
    return ExpertRows(torch.cat(ys), torch.cat(us), torch.cat(ks), torch.cat(es))


def topk_reduce(rows: ExpertRows, recv: RankRecv) -> torch.Tensor:
    """partial_UN (U, N): for each received token, the gate-weighted sum of its rows on this rank."""
    gate_R = recv.topk_weights_UJ[rows.recv_row_R, rows.slot_R].to(rows.y_RN.dtype)
    y_RN = rows.y_RN
    partial_UN = torch.zeros(recv.num_rows, y_RN.shape[1], dtype=y_RN.dtype, device=y_RN.device)
    return partial_UN.index_add_(0, rows.recv_row_R, rows.y_RN * gate_R[:, None])


def combine(partials_UN: Sequence[torch.Tensor], meta: DispatchMeta) -> torch.Tensor:
    """Send each rank's per-token partial sums to the tokens' owners, which sum them; assemble out_MN.

    partials_UN: one (U_r, N) tensor per rank r, rows aligned with meta.ranks[r].token_U.
    Returns out_MN (M, N): owner s's summed rows for the tokens it owns, stacked in token order.
    """
    W, M = meta.world_size, meta.num_tokens
    if len(partials_UN) != W:
        raise ValueError(f"combine needs one partial tensor per rank ({W}), got {len(partials_UN)}")
    for r, (p, rr) in enumerate(zip(partials_UN, meta.ranks, strict=True)):
        if p.dim() != 2 or p.shape[0] != rr.num_rows:
            raise ValueError(f"rank {r}: partial {tuple(p.shape)} must have one row per received token "
                             f"({rr.num_rows})")
    N = partials_UN[0].shape[1]
    ref = partials_UN[0]
    out_blocks = []
    for s in range(W):
        own_tok = _owned(meta.token_owner_M, s)
        first = int(own_tok[0]) if own_tok.numel() else 0
        # owner s's combine buffer: one row per owned token
        buf_mN = torch.zeros(own_tok.numel(), N, dtype=ref.dtype, device=ref.device)
        for r in range(W):  # arrivals summed in rank order: deterministic
            to_s = meta.ranks[r].src_U == s
            buf_mN.index_add_(0, meta.ranks[r].token_U[to_s] - first, partials_UN[r][to_s])
        out_blocks.append(buf_mN)
    out_MN = torch.cat(out_blocks)
    assert out_MN.shape == (M, N)
    return out_MN


def emulate_ranks(x_MN: torch.Tensor, routing: Routing, weights: ExpertWeights, model: ModelConfig,
                  parallel: ParallelConfig, form: str = "all-to-all") -> torch.Tensor:
    """The MoE layer on W = EP x TP emulated ranks: dispatch, expert compute on each rank's shard, top-k
    reduction, combine to the owners. Returns out_MN (M, N); equals moe_forward up to summation order.

    weights: all E experts (each rank takes its shard with shard_weights); they must match `model`'s
    E, N, K and activation, and x_MN's dtype and device.
    """
    _check_inputs(x_MN, routing, weights, model.activation)
    have = (weights.num_experts, weights.hidden_N, weights.ffn_K)
    if have != (model.experts_E, model.hidden_N, model.ffn_K):
        raise ValueError(f"weights have (E, N, K) = {have} "
                         f"but {model.name} has ({model.experts_E}, {model.hidden_N}, {model.ffn_K})")
    recv_x, meta = dispatch(x_MN, routing, model, parallel, form)
    partials = []
    for r in range(parallel.world_size):
        shard = shard_weights(weights, parallel, r)
        rows = expert_compute(recv_x[r], meta.ranks[r], shard, meta.local_experts(r).start, model.activation)
        partials.append(topk_reduce(rows, meta.ranks[r]))
    return combine(partials, meta)


def grouped_sigmoid_gate_loop(logits_ME: torch.Tensor, topk: int, correction_bias_E: torch.Tensor, n_group: int,
                              topk_group: int, normalize: bool, scaling: float) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3's group-limited router, one token at a time in Python (the twin of
    comet.layer.routers.grouped_sigmoid_gate): the groups whose two best biased scores sum highest, then the
    best biased scores among their experts; weights from the unbiased sigmoid. Returns the ids sorted
    ascending per token, with their weights (float64): compare as sets."""
    E = logits_ME.shape[1]
    per = E // n_group
    ids_rows, w_rows = [], []
    for row in logits_ME.double().tolist():
        s = [1.0 / (1.0 + math.exp(-v)) for v in row]
        c = [s[e] + float(correction_bias_E[e]) for e in range(E)]
        group_score = [sum(sorted(c[g * per:(g + 1) * per])[-2:]) for g in range(n_group)]
        groups = sorted(range(n_group), key=lambda g: -group_score[g])[:topk_group]
        allowed = [e for g in groups for e in range(g * per, (g + 1) * per)]
        chosen = sorted(sorted(allowed, key=lambda e: -c[e])[:topk])
        w = [s[e] for e in chosen]
        total = sum(w) + 1e-20 if normalize else 1.0
        ids_rows.append(chosen)
        w_rows.append([scaling * v / total for v in w])
    return torch.tensor(ids_rows, dtype=torch.int64), torch.tensor(w_rows, dtype=torch.float64)
