"""The planner: routing + shapes + parallelism + hardware -> a Plan (comet/core/plan.py) that the simulator
and the kernels execute. Torch ops only, on the routing's device (CPU or GPU), no host sync.
Suffix letters: docs/SHAPES.md. Command line: `python -m comet.core.planner --help`.

The shared tensor of rank r (layer0's A operand, layer1's rows) is expert-major: local expert 0's rows,
then expert 1's, ...; within an expert, rows are sorted by the arrival position of their owner rank,
pos(s) = (s - r) mod W, so local rows (pos 0) come first, then rank r+1's, ... in the order that the
communication blocks fetch them. Token rows live in a symmetric receive buffer indexed by global token id
(M x N per rank, the paper's Table 3; docs/PAPER_NOTES.md); the owner's own rows are there from the start.

Layer0 tile orders (`Policy.order`), applied to row blocks, then swizzled in groups of `group_m` row blocks
(all column blocks of a group before the next group, for L2 reuse; the same swizzle for every order):
    "comet":         key (max arrival pos of the block's sources, number of sources, expert, block):
                     local-only blocks first, then those waiting on the fewest, earliest ranks;
    "arrival-order": key (max arrival pos, expert, block);
    "expert-major":  key (expert, block): a plain grouped GEMM, blind to communication.
Layer1 tiles are column-block-major across all experts (the paper's mechanism 2, docs/PAPER_NOTES.md): column
block c's tiles, every expert, before column block c+1's, so the top-k reduce and send of block c start early.

Communication work: layer0 chunks (source rank, range of U) in arrival order, never spanning two sources;
chunk i belongs to communication block i % nc_layer0; flag[s] reaches `l0_chunks_per_src_W[s]` when all of
source s's rows have arrived. Layer1 work items are (column block, send chunk) in column-block-major order;
the communication blocks claim them in that order from a counter (with Policy.l1_tail, the SMs of the finished
GEMM take the items left); a send chunk covers consecutive sends to one destination. Layer0's pull into
shared-row order (kernels.options.CommConfig.pull_to_rows) reuses the send chunks of other owners: chunk i to
block i % nc_layer0. Each send (token t, destination owner) reduces its rows (weights from the routing) over the
column block and stores the partial sum into slot `send_slot_S` of the owner's combine buffer.
"""

from __future__ import annotations

import argparse
import json
import math

import torch

from comet.core.case_args import add_case_arguments, case_model, case_routing
from comet.core.config import (
    HardwareProfile,
    ModelConfig,
    ParallelConfig,
    as_hardware,
    as_model,
    as_parallel,
)
from comet.core.ownership import combine_expected, token_groups, token_owner
from comet.core.plan import Plan, RankPlan, buffer_sizes, format_summary, plan_bounds
from comet.core.policy import DISPATCHES, ORDERS, Policy
from comet.core.routing import Routing, first_problem, routing_problems_MJ


# ------------------------------------------------------------------------------------------- helpers
def _argsort(key: torch.Tensor, bound: int, stable: bool = False) -> torch.Tensor:
    """torch.argsort of integer keys in [0, bound): in int32 where they fit (a third faster on the CPU), the
    same permutation either way."""
    return torch.argsort(key.to(torch.int32) if bound <= 2**31 - 1 else key, stable=stable)


def _ceil_div(a, b):
    return (a + b - 1) // b


def _chunks(group_U: torch.Tensor, n_valid: torch.Tensor, groups: int, rows: int, n_max: int):
    """Split valid entries of group_U (sorted by group, padding last) into chunks of <= rows entries that
    never span two groups. Returns (group_C, start_C, end_C, num_chunks, chunks_per_group)."""
    dev = group_U.device
    U = group_U.numel()
    valid = torch.arange(U, device=dev) < n_valid
    counts = torch.zeros(groups + 1, dtype=torch.int64, device=dev)
    counts.scatter_add_(0, torch.where(valid, group_U, groups), torch.ones_like(group_U))
    counts = counts[:groups]
    starts = torch.cumsum(counts, 0) - counts
    per_group = _ceil_div(counts, rows)
    cum = torch.cumsum(per_group, 0)
    n_chunks = cum[-1] if groups else torch.zeros((), dtype=torch.int64, device=dev)
    c = torch.arange(n_max, device=dev)
    g = torch.searchsorted(cum, c, right=True).clamp(max=max(groups - 1, 0))
    j = c - (cum - per_group)[g]
    start = starts[g] + j * rows
    end = torch.minimum(start + rows, starts[g] + counts[g])
    ok = c < n_chunks
    neg = torch.full_like(c, -1)
    return torch.where(ok, g, neg), torch.where(ok, start, neg), torch.where(ok, end, neg), n_chunks, per_group


def _tile_table(rb_order_B, rb_class_B, rb_expert_B, rb_start_B, rb_end_B, n_rb, col_blocks: int,
                group_m: int, num_classes: int):
    """Expand ordered row blocks into tiles, swizzled: groups of <= group_m consecutive row blocks, every
    column block of a group before the next group. Groups never straddle two readiness classes (the
    class of a block: the arrival position it waits for), so a tile never precedes a tile of an
    earlier class. Padding blocks (past n_rb) form the last class."""
    dev = rb_order_B.device
    B = rb_order_B.numel()
    i = torch.arange(B, device=dev)
    cls = torch.where(i < n_rb, rb_class_B[rb_order_B], num_classes)  # sorted, so classes are contiguous
    counts = torch.zeros(num_classes + 1, dtype=torch.int64, device=dev).scatter_add_(0, cls, torch.ones_like(cls))
    class_start = (torch.cumsum(counts, 0) - counts)[cls]
    member = (i - class_start) % group_m
    group_start = i - member
    gsz = torch.minimum(class_start + counts[cls] - group_start, torch.full_like(i, group_m))
    col = torch.arange(col_blocks, device=dev)
    pos_by_block_col = group_start[:, None] * col_blocks + col[None, :] * gsz[:, None] + member[:, None]
    T = B * col_blocks
    pos = pos_by_block_col.reshape(-1)
    rb_T = torch.empty(T, dtype=torch.int64, device=dev).scatter_(0, pos, rb_order_B.repeat_interleave(col_blocks))
    col_T = torch.empty(T, dtype=torch.int64, device=dev).scatter_(0, pos, col.repeat(B))
    ok = torch.arange(T, device=dev) < n_rb * col_blocks
    neg = torch.full_like(rb_T, -1)
    return (torch.where(ok, rb_expert_B[rb_T], neg), torch.where(ok, rb_start_B[rb_T], neg),
            torch.where(ok, rb_end_B[rb_T], neg), torch.where(ok, col_T, neg), rb_T, ok)


# ------------------------------------------------------------------------------------------ planner
def _plan_rank(r: int, ids_MJ, w_MJ, owner_M, groups_MG, expected_W, model: ModelConfig, par: ParallelConfig,
               pol: Policy, bounds: dict) -> RankPlan:
    dev = ids_MJ.device
    M, topk = ids_MJ.shape
    W = par.world_size
    E_loc = model.experts_E // par.ep
    g = par.ep_rank(r)
    BM = pol.block_m
    i64 = torch.int64
    R_max, B_max = bounds["R"], bounds["B"]

    # --- shared tensor rows: (token, slot) pairs of local experts, sorted (expert, arrival pos, token, slot)
    pair = torch.arange(M * topk, device=dev)
    tok = pair // topk
    e_loc = ids_MJ.reshape(-1) - g * E_loc
    local = (e_loc >= 0) & (e_loc < E_loc)
    pos = (owner_M[tok] - r) % W
    big = E_loc * W * M * topk
    key = torch.where(local, (e_loc * W + pos) * (M * topk) + pair, big + pair)
    order = _argsort(key, big + M * topk)[:R_max]
    num_rows = local.sum()
    row_ok = torch.arange(R_max, device=dev) < num_rows
    neg_R = torch.full((R_max,), -1, dtype=i64, device=dev)
    row_token = torch.where(row_ok, tok[order], neg_R)
    row_slot = torch.where(row_ok, order % topk, neg_R)
    row_src = torch.where(row_ok, owner_M[tok[order]], neg_R)
    row_weight = torch.where(row_ok, w_MJ.reshape(-1)[order].float(), torch.zeros((), device=dev))
    row_e = torch.where(row_ok, e_loc[order], torch.full_like(neg_R, E_loc))
    counts_E = torch.zeros(E_loc + 1, dtype=i64, device=dev).scatter_add_(0, row_e, torch.ones_like(row_e))[:E_loc]
    offsets = torch.cat([torch.zeros(1, dtype=i64, device=dev), torch.cumsum(counts_E, 0)])

    # --- row blocks of BM rows within each expert
    nb_E = _ceil_div(counts_E, BM)
    cum_nb = torch.cumsum(nb_E, 0)
    n_rb = cum_nb[-1]
    b = torch.arange(B_max, device=dev)
    rb_e = torch.searchsorted(cum_nb, b, right=True).clamp(max=E_loc - 1)
    rb_j = b - (cum_nb - nb_E)[rb_e]
    rb_start = offsets[rb_e] + rb_j * BM
    rb_end = torch.minimum(rb_start + BM, offsets[rb_e + 1])
    rb_ok = b < n_rb
    # sources of each row block: count rows per (block, source rank) by scattering rows onto blocks
    row_j = torch.arange(R_max, device=dev) - offsets[row_e.clamp(max=E_loc - 1)]
    row_rb = torch.where(row_ok, (cum_nb - nb_E)[row_e.clamp(max=E_loc - 1)] + row_j // BM, B_max)
    cnt = torch.zeros((B_max + 1) * W, dtype=i64, device=dev)
    cnt.scatter_add_(0, row_rb * W + row_src.clamp(min=0), torch.ones_like(row_rb))
    has_src = cnt.view(B_max + 1, W)[:B_max] > 0  # (B, W)
    rb_mask = (has_src.to(i64) << torch.arange(W, device=dev, dtype=i64)).sum(1)
    src_pos = (torch.arange(W, device=dev) - r) % W
    rb_max_pos = torch.where(has_src, src_pos, -1).max(1).values
    rb_nsrc = has_src.sum(1)

    # --- layer0 order of row blocks
    KEY_E = B_max + 1
    if pol.order == "expert-major":
        rb_key = b
    elif pol.order == "arrival-order":
        rb_key = rb_max_pos * (E_loc * KEY_E) + b
    else:  # comet
        rb_key = (rb_max_pos * (W + 1) + rb_nsrc) * (E_loc * KEY_E) + b
    rb_key = torch.where(rb_ok, rb_key, torch.iinfo(i64).max - B_max + b)
    rb_order = torch.argsort(rb_key)
    col_blocks0 = math.ceil((model.ffn_K // par.tp) / pol.block_n0)
    rb_class = torch.zeros_like(rb_max_pos) if pol.order == "expert-major" else rb_max_pos.clamp(min=0)
    l0_e, l0_s, l0_end, l0_col, l0_rb, l0_ok = _tile_table(rb_order, rb_class, rb_e, rb_start, rb_end, n_rb,
                                                          col_blocks0, pol.group_m, W)
    l0_mask = torch.where(l0_ok, rb_mask[l0_rb], torch.zeros_like(l0_rb))

    # --- layer1 tiles: column-block-major, blocks expert-major within a column
    N1 = math.ceil(model.hidden_N / pol.block_n1)
    t1 = torch.arange(B_max * N1, device=dev)
    nrb1 = n_rb.clamp(min=1)
    t1_ok = t1 < n_rb * N1
    t1_rb = (t1 % nrb1).clamp(max=B_max - 1)
    neg_T = torch.full_like(t1, -1)
    l1_e = torch.where(t1_ok, rb_e[t1_rb], neg_T)
    l1_s = torch.where(t1_ok, rb_start[t1_rb], neg_T)
    l1_end = torch.where(t1_ok, rb_end[t1_rb], neg_T)
    l1_col = torch.where(t1_ok, t1 // nrb1, neg_T)

    # --- layer0 communication: the tokens this rank needs, by source in arrival order
    tok_M = torch.arange(M, device=dev)
    if pol.dispatch == "all-gather":
        need_M = torch.ones(M, dtype=torch.bool, device=dev)
    else:
        need_M = groups_MG[:, g]
    tok_pos = (owner_M - r) % W
    need_M = need_M & (tok_pos > 0)  # own rows are in place
    U_max = bounds["U"]
    recv_key = torch.where(need_M, tok_pos * M + tok_M, W * M + tok_M)
    recv_order = _argsort(recv_key, (W + 1) * M)[:U_max]
    n_recv = need_M.sum()
    u_ok = torch.arange(U_max, device=dev) < n_recv
    recv_token = torch.where(u_ok, recv_order, torch.full_like(recv_order, -1))
    recv_pos = torch.where(u_ok, tok_pos[recv_order], W)
    c_pos, c_start, c_end, n_c0, per_pos = _chunks(recv_pos, n_recv, W, pol.comm_rows, bounds["C0"])
    l0_chunk_src = torch.where(c_pos >= 0, (c_pos + r) % W, c_pos)
    chunks_per_src = per_pos[(torch.arange(W, device=dev) - r) % W]

    # --- layer1 sends: (token, owner) entries, by destination arrival pos then token
    S_max = bounds["S"]
    sort_key = torch.where(row_ok, ((row_src - r) % W) * M + row_token, W * M)
    by_send = _argsort(sort_key * topk + torch.where(row_ok, row_slot, 0), (W * M + 1) * topk, stable=True)
    rows_by_send = torch.where(row_ok, by_send, neg_R)
    st = sort_key[by_send]
    first = torch.ones(R_max, dtype=torch.bool, device=dev)
    first[1:] = st[1:] != st[:-1]
    first &= row_ok
    entry = torch.cumsum(first.to(i64), 0) - 1
    entry = torch.where(row_ok, entry, S_max)
    n_send = first.sum()
    ar = torch.arange(R_max, device=dev)
    s_start = torch.full((S_max + 1,), R_max, dtype=i64, device=dev)
    s_start = s_start.scatter_reduce(0, entry, ar, "amin")[:S_max]
    s_end = torch.full((S_max + 1,), -1, dtype=i64, device=dev).scatter_reduce(0, entry, ar + 1, "amax")[:S_max]
    s_ok = torch.arange(S_max, device=dev) < n_send
    neg_S = torch.full((S_max,), -1, dtype=i64, device=dev)
    s_row0 = by_send[s_start.clamp(max=R_max - 1)]
    send_token = torch.where(s_ok, row_token[s_row0], neg_S)
    send_dest = torch.where(s_ok, row_src[s_row0], neg_S)
    # slot: index of this EP group among the token's distinct EP groups, times TP, plus the TP rank
    before_M = groups_MG[:, :g].sum(1)
    send_slot = torch.where(s_ok, before_M[send_token.clamp(min=0)] * par.tp + par.tp_rank(r), neg_S)
    send_pos = torch.where(s_ok, (send_dest - r) % W, W)
    _, l1_cs, l1_ce, n_c1, _ = _chunks(send_pos, n_send, W, pol.l1_chunk_rows, bounds["C1"])

    return RankPlan(
        rank=r, ep_rank=g, tp_rank=par.tp_rank(r),
        row_token_R=row_token, row_slot_R=row_slot, row_src_R=row_src, row_weight_R=row_weight,
        expert_offsets_E1=offsets, num_rows=num_rows,
        l0_tile_expert_T=l0_e, l0_tile_row_start_T=l0_s, l0_tile_row_end_T=l0_end, l0_tile_col_T=l0_col,
        l0_tile_src_mask_T=l0_mask, num_l0_tiles=n_rb * col_blocks0,
        recv_token_U=recv_token, num_recv=n_recv,
        l0_chunk_src_C=l0_chunk_src, l0_chunk_start_C=c_start, l0_chunk_end_C=c_end,
        num_l0_chunks=n_c0, l0_chunks_per_src_W=chunks_per_src,
        l1_tile_expert_T=l1_e, l1_tile_row_start_T=l1_s, l1_tile_row_end_T=l1_end, l1_tile_col_T=l1_col,
        num_l1_tiles=n_rb * N1, l1_tiles_per_col=n_rb,
        send_token_S=send_token, send_dest_S=send_dest, send_slot_S=send_slot,
        send_row_start_S=torch.where(s_ok, s_start, neg_S), send_row_end_S=torch.where(s_ok, s_end, neg_S),
        rows_by_send_R=rows_by_send, num_sends=n_send,
        l1_chunk_start_C=l1_cs, l1_chunk_end_C=l1_ce, num_l1_chunks=n_c1,
        combine_expected_W=expected_W,
    )


def _nc_changes(nc, hardware: HardwareProfile) -> dict[str, int]:
    """Policy changes for make_plan's `nc` when it is an int or a pair; ValueError saying what is accepted."""
    accepted = ("nc must be None (the Policy's n_c), an int n_c for both layers or a pair (nc_layer0, nc_layer1); "
                "for n_c chosen by simulation use comet.tuning.auto_nc")
    values = (nc, nc) if isinstance(nc, int) and not isinstance(nc, bool) else nc
    if not (isinstance(values, (tuple, list)) and len(values) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in values)):
        raise ValueError(f"{accepted}; got {nc!r}")
    for v in values:
        if not 1 <= v < hardware.sms:
            raise ValueError(f"{accepted}; each n_c must lie in [1, {hardware.sms}) on {hardware.name}, got {nc!r}")
    return {"nc_layer0": values[0], "nc_layer1": values[1]}


BACKENDS = ("auto", "torch", "triton")


def make_plan(routing: Routing, model: ModelConfig | str, parallel: ParallelConfig, hardware: HardwareProfile | str,
              policy: Policy | None = None, ranks: list[int] | None = None, *, nc=None, backend: str = "auto") -> Plan:
    """Build the Plan for `routing` (global: all M tokens). `ranks` limits the work to some ranks (a GPU
    process builds only its own); tensors stay on the routing's device and no host sync happens. model and
    hardware may be given by name.

    nc: None keeps the Policy's nc_layer0 / nc_layer1; an int sets both, a pair (nc_layer0, nc_layer1) each.
    To choose n_c by simulation, pass the plan to comet.tuning.auto_nc (the floor above the simulator).

    backend: "torch" (this module's torch ops, ~430 small launches per rank), "triton" (six kernels per rank,
    comet/core/planner_triton.py; bit for bit the same tables, on the CPU under Triton's interpreter and on the
    H200), "auto": triton for CUDA routings, torch for CPU ones (the interpreter is slow). A bad routing
    (comet.core.routing.routing_problems_MJ: an id outside [0, E), an expert repeated within a token, a negative
    or non-finite weight) raises ValueError at once on the CPU (torch backend, one host sync); elsewhere its bad
    entries are dropped,
    `Plan.routing_error` records the first bad token and `Plan.check()` raises."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    model, parallel, hardware = as_model(model), as_parallel(parallel), as_hardware(hardware)
    if not isinstance(routing, Routing):
        raise TypeError(f"routing must be a comet.core.routing.Routing (top-k ids and weights), got "
                        f"{type(routing).__name__}; build one with Routing(ids_MJ, weights_MJ, E) or make_routing(...)")
    if policy is not None and not isinstance(policy, Policy):
        raise TypeError(f"policy must be a comet.core.policy.Policy, got {type(policy).__name__}")
    policy = policy or Policy()
    if nc is not None:
        policy = policy.replace(**_nc_changes(nc, hardware))
    parallel.validate(model)
    ids = routing.topk_ids_MJ
    M, topk = ids.shape
    if routing.num_experts != model.experts_E:
        raise ValueError(f"routing has {routing.num_experts} experts but {model.name} has {model.experts_E}; "
                         f"make the routing with E={model.experts_E} or override experts_E")
    if topk != model.topk:
        raise ValueError(f"routing has topk={topk} but {model.name} has topk={model.topk}; they must agree")
    W = parallel.world_size
    if M < 1:
        raise ValueError("a plan needs at least one token")
    rank_list = list(range(W)) if ranks is None else list(ranks)
    for r in rank_list:
        if not 0 <= r < W:
            raise ValueError(f"rank {r} out of range for world size {W}")
    if backend == "auto":
        backend = "triton" if ids.is_cuda else "torch"
    checked = backend == "torch" and not ids.is_cuda
    if checked:
        routing.check_entries()  # the CPU path: raise at once (one host sync); then nothing is dropped
    bounds = plan_bounds(M, model, parallel, policy)
    if backend == "triton" and rank_list:
        from comet.core.planner_triton import plan_ranks  # deferred: Triton is heavy and optional here

        owner, num_slots, error, rank_plans = plan_ranks(routing, model, parallel, policy, rank_list, bounds)
    else:
        owner, num_slots, error, rank_plans = _plan_torch(routing, model, parallel, policy, rank_list, bounds,
                                                          checked=checked)
    return Plan(model=model, parallel=parallel, hardware=hardware, policy=policy, num_tokens=M,
                token_owner_M=owner, token_num_slots_M=num_slots, ranks=rank_plans,
                buffers=buffer_sizes(M, model, parallel, policy, bounds), routing_error=error)


def _plan_torch(routing: Routing, model: ModelConfig, parallel: ParallelConfig, policy: Policy,
                rank_list: list[int], bounds: dict, checked: bool = False):
    """The torch planner: (token_owner_M, token_num_slots_M, routing_error, rank plans). Bad entries
    (routing_problems_MJ) are dropped: their id becomes E, which is no rank's expert and no EP group's.
    checked: the caller has checked the routing (Routing.check_entries): there is nothing to drop."""
    ids, w = routing.topk_ids_MJ, routing.topk_weights_MJ
    M, E, W = ids.shape[0], model.experts_E, parallel.world_size
    E_loc = E // parallel.ep
    if checked:
        error = torch.zeros(2, dtype=torch.int64, device=ids.device)
    else:
        bits_MJ = routing_problems_MJ(ids, w, E)  # once: the error and the dropping both read it
        error = first_problem(bits_MJ)
        ids = torch.where(bits_MJ != 0, E, ids)
    owner = token_owner(M, W, ids.device)
    # token_groups with one more column for the dropped entries (id E), cut off again
    groups_MG = token_groups(ids, E_loc, parallel.ep + 1)[:, :parallel.ep]
    expected_WW = combine_expected(groups_MG, owner, W, parallel.tp)
    rank_plans = tuple(_plan_rank(r, ids, w, owner, groups_MG, expected_WW[r], model, parallel, policy, bounds)
                       for r in rank_list)
    return owner, groups_MG.sum(1) * parallel.tp, error, rank_plans


# ------------------------------------------------------------------------------------ command line

def main(argv=None) -> None:
    """`python -m comet.core.planner`: build one Plan from names and print its per-rank summary."""
    ap = argparse.ArgumentParser(prog="python -m comet.core.planner", description="Build and summarise a Plan.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_case_arguments(ap, tokens=8192)
    ap.add_argument("--order", default="comet", choices=ORDERS, help="layer0 tile order")
    ap.add_argument("--dispatch", default="all-to-all", choices=DISPATCHES, help="how token rows reach the experts")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    try:
        model = case_model(a)
        par = ParallelConfig(ep=a.ep, tp=a.tp)
        routing = case_routing(a, model)
        plan = make_plan(routing, model, par, HardwareProfile.from_name(a.hw),
                         Policy(order=a.order, dispatch=a.dispatch))
    except ValueError as e:
        raise SystemExit(f"error: {e}") from e
    s = plan.summary()
    print(json.dumps(s, indent=2) if a.json else format_summary(s))


if __name__ == "__main__":
    main()
