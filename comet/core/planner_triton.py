"""The planner's triton backend: six kernels per rank build the tables that comet/core/planner.py's
`_plan_rank` builds with ~250 torch ops, bit for bit (same order, same -1 / 0 padding, same 0-d counts).
No host sync, no atomics (every output is written by one program, so the tables are deterministic), sizes
from `plan_bounds` only (CUDA-graph capturable); on the CPU the kernels run under TRITON_INTERPRET=1.

Rank r's rows sort by (local expert, arrival pos of the owner, token, slot). Owners hold contiguous token
ranges, so (pos, token) is the token's rotated index u = (t - lo_r) mod M, lo_r the first token rank r owns:
the kernels walk tokens in u order, in blocks of BT tokens (BT x KP pairs, KP = topk rounded up to a power of
two), and a counting sort places each pair:

  1 `_count`     per token block: pairs per local expert, local pairs, sends, received tokens, the own tokens'
                 EP groups, the block's first bad token; the Plan-wide token_owner / token_num_slots (first
                 rank built only)
  2 `_scan`      exclusive scans of those counts over the blocks (one program per BE experts, one for the
                 rest): tokens per expert, num_rows, num_sends, num_recv, combine_expected_W, routing_error
  3 `_experts`   expert offsets, row blocks per expert and their scan, num_l0/l1 tiles (one program)
  4 `_scatter`   per token block: each pair's row (offset + block prefix + rank among the block's pairs of its
                 expert), rows_by_send, the sends, the received tokens, and the padding of those tables
  5 `_blocks`    row blocks' sources (mask, count, max arrival pos); layer1 tiles; layer0 and layer1 chunks
                 (per-source counts by binary search over the received tokens and the sends)
  6 `_l0_tiles`  each row block's place in the Policy's order (a rank by comparison with every row block),
                 the group_m swizzle within its readiness class, its tiles, and the padding

Bad routing entries (comet.core.routing.routing_problems_MJ: an id outside [0, E), an in-range id equal to an
earlier slot's id of the token, a negative or non-finite weight) are dropped exactly as the torch backend
drops them: they are no row, no send and count for no EP group; every index comes from counts of the kept
entries, which form a valid routing, so no read or write leaves the tables. Plan.routing_error holds
[problem bits of the first bad token, that token] and Plan.check() raises.
"""

from __future__ import annotations

import math

import torch

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.plan import RankPlan
from comet.core.planner_kernels import SCALARS, _blocks, _count, _experts, _l0_tiles, _scan, _scatter
from comet.core.policy import Policy
from comet.core.routing import Routing

ORDER_CODE = {"comet": 0, "arrival-order": 1, "expert-major": 2}
SCRATCH = ("scalars", "hist", "hgrp", "errt", "errb", "blk", "cnt", "cumnb", "rb")
PAIRS = 128  # (token, slot) pairs per token block


# ------------------------------------------------------------------------------------------------ host
def _workspace(n: int, dtype: torch.dtype, device) -> torch.Tensor:
    """One flat buffer per rank and dtype; every table is a slice of it (tests wrap it in sentinels)."""
    return torch.empty(n, dtype=dtype, device=device)


def _launch(kernel, grid, *args, **meta):
    """Every launch of this backend goes through here (tests count them)."""
    kernel[grid](*args, **meta)


def _carve(buf: torch.Tensor, sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Consecutive views of buf, one per entry of sizes (one split call: slicing one by one costs a few us each)."""
    return dict(zip(sizes, buf.split(list(sizes.values())), strict=True))


# plain integer helpers: triton.cdiv / next_power_of_2 go through Triton's constexpr machinery on every call
def _p2(n: int) -> int:
    return 1 << (max(int(n), 1) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan_ranks(routing: Routing, model: ModelConfig, par: ParallelConfig, pol: Policy, ranks: list[int],
               bounds: dict):
    """(token_owner_M, token_num_slots_M, routing_error, rank plans), as planner._plan_torch returns them;
    six launches per rank, the Plan-wide tensors written by the first rank's."""
    ids, w = routing.topk_ids_MJ, routing.topk_weights_MJ
    dev = ids.device
    M, J = ids.shape
    E, W, TP = model.experts_E, par.world_size, par.tp
    E_loc = E // par.ep
    KP = _p2(J)
    BT = max(1, PAIRS // KP)
    P = _cdiv(M, BT)
    BE, GB, WB, EB = min(_p2(E_loc), 64), _p2(par.ep), _p2(W), _p2(E_loc)
    n_eb = _cdiv(E_loc, BE)
    C0 = math.ceil((model.ffn_K // TP) / pol.block_n0)
    C1 = math.ceil(model.hidden_N / pol.block_n1)
    R, B, U, S, CC0, CC1 = (bounds[k] for k in ("R", "B", "U", "S", "C0", "C1"))
    shared = _carve(_workspace(2 * M + 2, torch.int64, dev), {"owner": M, "slots": M, "error": 2})
    strides = (ids.stride(0), ids.stride(1), w.stride(0), w.stride(1))
    all_gather = pol.dispatch == "all-gather"
    BMP = _p2(pol.block_m)
    BB = max(1, 2048 // BMP)
    BC, BL = 64, 256
    e_steps, u_steps = int(E_loc).bit_length() + 1, int(M).bit_length() + 1
    sizes = {  # the same for every rank: bounds from shapes only
        "row_token_R": R, "row_slot_R": R, "row_src_R": R, "rows_by_send_R": R, "expert_offsets_E1": E_loc + 1,
        "l0_tile_expert_T": B * C0, "l0_tile_row_start_T": B * C0, "l0_tile_row_end_T": B * C0,
        "l0_tile_col_T": B * C0, "l0_tile_src_mask_T": B * C0, "recv_token_U": U, "l0_chunk_src_C": CC0,
        "l0_chunk_start_C": CC0, "l0_chunk_end_C": CC0, "l0_chunks_per_src_W": W,
        "l1_tile_expert_T": B * C1, "l1_tile_row_start_T": B * C1, "l1_tile_row_end_T": B * C1,
        "l1_tile_col_T": B * C1, "send_token_S": S, "send_dest_S": S, "send_slot_S": S,
        "send_row_start_S": S, "send_row_end_S": S, "l1_chunk_start_C": CC1, "l1_chunk_end_C": CC1,
        "combine_expected_W": W, "scalars": len(SCALARS),
        # scratch
        "hist": P * E_loc, "hgrp": P * GB, "errt": P, "errb": P, "blk": 4 * (P + 1), "cnt": E_loc,
        "cumnb": E_loc, "rb": 6 * B}
    total = sum(sizes.values())
    plans = []
    for n_rank, r in enumerate(ranks):
        g, tp_rank = par.ep_rank(r), par.tp_rank(r)
        lo_r, hi_r = (r * M + W - 1) // W, ((r + 1) * M + W - 1) // W
        t = {"row_weight_R": _workspace(R, torch.float32, dev)}
        t |= _carve(_workspace(total, torch.int64, dev), sizes)
        common = (ids, w, *strides)
        first = n_rank == 0
        _launch(_count, (P,), *common, t["hist"], t["blk"], t["hgrp"], t["errt"], t["errb"], shared["owner"],
                shared["slots"], M, J, E, E_loc, g, r, W, TP, lo_r, hi_r - lo_r,
                SHARED=first, ALL_GATHER=all_gather, BT=BT, KP=KP, BE=BE, GB=GB)
        _launch(_scan, (n_eb + 1,), t["hist"], t["blk"], t["hgrp"], t["errt"], t["errb"], t["cnt"], t["scalars"],
                t["combine_expected_W"], shared["error"], P, E_loc, M, W, TP, n_eb,
                SHARED=first, BP=64, BE=BE, GB=GB, WB=WB)
        _launch(_experts, (1,), t["cnt"], t["expert_offsets_E1"], t["cumnb"], t["scalars"], E_loc, pol.block_m,
                C0, C1, EB=EB)
        _launch(_scatter, (P,), *common, t["hist"], t["blk"], t["expert_offsets_E1"], t["scalars"],
                t["row_token_R"], t["row_slot_R"], t["row_src_R"], t["row_weight_R"], t["rows_by_send_R"],
                t["send_token_S"], t["send_dest_S"], t["send_slot_S"], t["send_row_start_S"], t["send_row_end_S"],
                t["recv_token_U"], M, J, E, E_loc, g, r, W, TP, tp_rank, lo_r, R, S, U,
                ALL_GATHER=all_gather, BT=BT, KP=KP)
        n_stat, n_l1 = _cdiv(B, BB), _cdiv(B * C1, BL)
        _launch(_blocks, (n_stat + n_l1 + _cdiv(CC0, BC) + _cdiv(CC1, BC),),
                t["cumnb"], t["expert_offsets_E1"], t["scalars"], t["row_src_R"], t["rb"], B,
                t["l1_tile_expert_T"], t["l1_tile_row_start_T"], t["l1_tile_row_end_T"], t["l1_tile_col_T"], C1,
                t["recv_token_U"], t["l0_chunk_src_C"], t["l0_chunk_start_C"], t["l0_chunk_end_C"],
                t["l0_chunks_per_src_W"], CC0, t["send_dest_S"], t["l1_chunk_start_C"], t["l1_chunk_end_C"], CC1,
                E_loc, pol.block_m, r, M, W, pol.comm_rows, pol.l1_chunk_rows, n_stat, n_l1, e_steps, u_steps,
                BB=BB, BMP=BMP, BL=BL, BC=BC, WB=WB)
        _launch(_l0_tiles, (_cdiv(B, 32),), t["rb"], t["scalars"], B, t["l0_tile_expert_T"],
                t["l0_tile_row_start_T"], t["l0_tile_row_end_T"], t["l0_tile_col_T"], t["l0_tile_src_mask_T"],
                C0, W, pol.group_m, ORDER=ORDER_CODE[pol.order], BB=32, BJ=64, BCOL=min(_p2(C0), 128),
                BPAD=256)
        sc = dict(zip(SCALARS, t["scalars"].unbind(), strict=True))
        tables = {k: v for k, v in t.items() if k not in SCRATCH}
        plans.append(RankPlan(rank=r, ep_rank=g, tp_rank=tp_rank, **tables, **sc))
    return shared["owner"], shared["slots"], shared["error"], tuple(plans)
