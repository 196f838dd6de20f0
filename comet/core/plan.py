"""The Plan: what every rank executes in one MoE layer, shared by sim/ and kernels/ (comet/core/planner.py
builds it). Tables are torch tensors on the routing's device; docs/SHAPES.md is the legend of the suffixes.

Every table is sized by an upper bound that depends on shapes only (`plan_bounds`), and its valid length is
carried as a 0-d int64 tensor (`num_*`): building or reading a plan on GPU tensors never syncs with the host.
Padding entries hold -1 (indices) or 0.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.policy import Policy
from comet.core.routing import describe_routing_error


@dataclass(frozen=True)
class BufferSizes:
    """Bytes per rank, sized by upper bounds (shapes only), so one workspace serves every routing."""

    symm_recv_bytes: int  # M x N receive buffer for token rows (symmetric)
    layer0_out_bytes: int  # R_max x K/TP activation (layer0 output, layer1 input)
    layer1_out_bytes: int  # R_max x N layer1 GEMM output before the top-k reduction
    combine_bytes: int  # M_own_max x slots x N partial sums arriving at the owner (symmetric)
    flag_bytes: int

    @property
    def symmetric_bytes(self) -> int:
        return self.symm_recv_bytes + self.combine_bytes + self.flag_bytes

    @property
    def total_bytes(self) -> int:
        return sum(dataclasses.astuple(self))


@dataclass(frozen=True)
class RankPlan:
    """What one rank executes. See the module docstring for the letters and conventions."""

    rank: int
    ep_rank: int
    tp_rank: int
    # --- shared tensor (rows = (token, slot) pairs routed to this rank's experts), expert-major
    row_token_R: torch.Tensor  # int64 global token id, -1 past num_rows
    row_slot_R: torch.Tensor  # int64 top-k slot j of the pair
    row_src_R: torch.Tensor  # int64 owner rank of the token
    row_weight_R: torch.Tensor  # float32 gate weight of the pair
    expert_offsets_E1: torch.Tensor  # int64 (E_local + 1,) first row of each local expert
    num_rows: torch.Tensor
    # --- layer0 tiles, in execution order
    l0_tile_expert_T: torch.Tensor  # int64 local expert
    l0_tile_row_start_T: torch.Tensor  # int64 [start, end) rows of the shared tensor
    l0_tile_row_end_T: torch.Tensor
    l0_tile_col_T: torch.Tensor  # int64 column block of the K/TP layer0 output
    l0_tile_src_mask_T: torch.Tensor  # int64 bit s set iff a row of the tile is owned by rank s
    num_l0_tiles: torch.Tensor
    # --- layer0 communication: token rows to receive, by source in arrival order
    recv_token_U: torch.Tensor  # int64 global token ids (-1 padding)
    num_recv: torch.Tensor
    l0_chunk_src_C: torch.Tensor  # int64 source rank of the chunk
    l0_chunk_start_C: torch.Tensor  # int64 [start, end) into recv_token_U
    l0_chunk_end_C: torch.Tensor
    num_l0_chunks: torch.Tensor
    l0_chunks_per_src_W: torch.Tensor  # int64 the value flag[s] reaches when source s is complete
    # --- layer1 tiles, column-block-major
    l1_tile_expert_T: torch.Tensor
    l1_tile_row_start_T: torch.Tensor
    l1_tile_row_end_T: torch.Tensor
    l1_tile_col_T: torch.Tensor  # int64 column block of N
    num_l1_tiles: torch.Tensor
    l1_tiles_per_col: torch.Tensor  # 0-d: tiles a column block counts before its reduction may start
    # --- layer1 communication: top-k reduction and send to the owner
    send_token_S: torch.Tensor  # int64 global token id (-1 padding)
    send_dest_S: torch.Tensor  # int64 owner rank
    send_slot_S: torch.Tensor  # int64 slot of the owner's combine buffer this partial sum goes to
    send_row_start_S: torch.Tensor  # int64 [start, end) into rows_by_send_R
    send_row_end_S: torch.Tensor
    rows_by_send_R: torch.Tensor  # int64 shared-tensor rows grouped by send entry
    num_sends: torch.Tensor
    l1_chunk_start_C: torch.Tensor  # int64 [start, end) into the S tables; one destination per chunk
    l1_chunk_end_C: torch.Tensor
    num_l1_chunks: torch.Tensor
    # --- combine: what this rank, as an owner, receives
    combine_expected_W: torch.Tensor  # int64 partial sums arriving from each rank (its flags' targets)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if isinstance(getattr(self, f.name), torch.Tensor)}

    def to(self, device) -> RankPlan:
        return dataclasses.replace(self, **{k: v.to(device) for k, v in self.tensors().items()})

    def trimmed(self) -> dict[str, torch.Tensor]:
        """CPU tables cut to their valid length (host sync: for the simulator, tests and summaries)."""
        n = {"R": int(self.num_rows), "l0_tile": int(self.num_l0_tiles), "l1_tile": int(self.num_l1_tiles),
             "S": int(self.num_sends), "l0_chunk": int(self.num_l0_chunks), "l1_chunk": int(self.num_l1_chunks),
             "U": int(self.num_recv)}
        out = {}
        for k, v in self.tensors().items():
            v = v.cpu()
            for prefix in ("l0_tile", "l1_tile", "l0_chunk", "l1_chunk"):
                if k.startswith(prefix + "_"):
                    v = v[: n[prefix]]
            if k.endswith("_R") and k.startswith(("row_", "rows_")):
                v = v[: n["R"]]
            elif k.endswith("_S"):
                v = v[: n["S"]]
            elif k.endswith("_U"):
                v = v[: n["U"]]
            out[k] = v
        return out


@dataclass(frozen=True)
class Plan:
    """The schedule of one MoE layer on every rank (or the ranks asked for), shared by sim/ and kernels/."""

    model: ModelConfig
    parallel: ParallelConfig
    hardware: HardwareProfile
    policy: Policy
    num_tokens: int
    token_owner_M: torch.Tensor  # int64 owner rank of each token
    token_num_slots_M: torch.Tensor  # int64 partial sums the owner receives for the token
    ranks: tuple[RankPlan, ...]
    buffers: BufferSizes
    # int64 (2,): [problem bits of the first bad token, that token] (comet.core.routing.routing_error; the
    # bits: OUT_OF_RANGE, REPEATED, BAD_WEIGHT); [0, 0] for a valid routing. Bad entries are dropped from the
    # tables (routing_problems_MJ); `check()` raises. None: not recorded (a Plan built by hand).
    routing_error: torch.Tensor | None = None

    @property
    def world_size(self) -> int:
        return self.parallel.world_size

    @property
    def experts_per_rank(self) -> int:
        return self.model.experts_E // self.parallel.ep

    @property
    def ffn_local(self) -> int:
        """K/TP: the columns of the layer0 output (activation) on each rank."""
        return self.model.ffn_K // self.parallel.tp

    @property
    def l0_col_blocks(self) -> int:
        return math.ceil(self.ffn_local / self.policy.block_n0)

    @property
    def l1_col_blocks(self) -> int:
        return math.ceil(self.model.hidden_N / self.policy.block_n1)

    def check(self) -> None:
        """Raise ValueError naming the first bad token of the routing and what to change, if the planner
        found one (host sync; on the CPU path make_plan has raised already)."""
        if self.routing_error is None:
            return
        bits, token = self.routing_error.tolist()
        if bits:
            raise ValueError(describe_routing_error(bits, token, self.model.experts_E, dropped=True))

    def rank(self, r: int) -> RankPlan:
        for rp in self.ranks:
            if rp.rank == r:
                return rp
        raise KeyError(f"rank {r} is not in this plan (it holds ranks {[p.rank for p in self.ranks]})")

    def summary(self) -> dict:
        """Per-rank counts and bytes, as plain Python numbers (host sync)."""
        N, eb = self.model.hidden_N, self.model.dtype_bytes
        ranks = []
        for rp in self.ranks:
            t = rp.trimmed()
            rows_per_src = torch.bincount(t["row_src_R"], minlength=self.world_size).tolist()
            recv = t["recv_token_U"]
            ranks.append({
                "rank": rp.rank, "ep_rank": rp.ep_rank, "tp_rank": rp.tp_rank,
                "rows": int(rp.num_rows), "rows_per_source_rank": rows_per_src,
                "layer0_tiles": int(rp.num_l0_tiles), "layer1_tiles": int(rp.num_l1_tiles),
                "layer0_chunks": int(rp.num_l0_chunks), "layer1_send_chunks": int(rp.num_l1_chunks),
                "dispatch_recv_bytes": int(recv.numel()) * N * eb,
                "combine_send_bytes": sum(int(d != rp.rank) for d in t["send_dest_S"].tolist()) * N * eb,
            })
        return {
            "model": self.model.name, "tokens": self.num_tokens, "ep": self.parallel.ep, "tp": self.parallel.tp,
            "hardware": self.hardware.name, "policy": dataclasses.asdict(self.policy),
            "buffers_bytes": dataclasses.asdict(self.buffers), "ranks": ranks,
        }


def plan_bounds(M: int, model: ModelConfig, par: ParallelConfig, pol: Policy) -> dict[str, int]:
    """Upper bounds of every table, from shapes only."""
    W, E_loc = par.world_size, model.experts_E // par.ep
    R = M * min(model.topk, E_loc)
    B = max(1, (R + E_loc * (pol.block_m - 1)) // pol.block_m)
    U = M  # all-gather receives every token (own rows excluded, but keep the bound simple)
    S = min(M, R)
    return {"R": max(R, 1), "B": B, "U": U, "S": max(S, 1),
            "C0": max(1, math.ceil(U / pol.comm_rows) + W), "C1": max(1, math.ceil(S / pol.l1_chunk_rows) + W)}


def plan_table_bytes(M: int, model: ModelConfig, par: ParallelConfig, pol: Policy, ranks: int | None = None) -> int:
    """Bytes of the Plan's tables for `ranks` ranks (default all W), from the bounds: what a plan of M tokens
    holds in memory (building it takes about twice that at its peak)."""
    b = plan_bounds(M, model, par, pol)
    col0 = math.ceil((model.ffn_K // par.tp) / pol.block_n0)
    col1 = math.ceil(model.hidden_N / pol.block_n1)
    per_rank = 8 * (6 * b["R"] + 5 * b["B"] * col0 + 4 * b["B"] * col1 + b["U"] + 5 * b["S"] + 3 * b["C0"]
                    + 2 * b["C1"] + 2 * par.world_size)
    return per_rank * (par.world_size if ranks is None else ranks) + 16 * M


def buffer_sizes(M: int, model: ModelConfig, par: ParallelConfig, pol: Policy, bounds: dict | None = None
                 ) -> BufferSizes:
    """The symmetric and local buffers' bytes; bounds: plan_bounds(M, model, par, pol) when the caller has it."""
    b = bounds or plan_bounds(M, model, par, pol)
    eb, N = model.dtype_bytes, model.hidden_N
    W = par.world_size
    slots = min(model.topk, par.ep) * par.tp
    m_own = math.ceil(M / W)
    col1 = math.ceil(N / pol.block_n1)
    return BufferSizes(
        symm_recv_bytes=M * N * eb,
        layer0_out_bytes=b["R"] * (model.ffn_K // par.tp) * eb,
        layer1_out_bytes=b["R"] * N * eb,
        combine_bytes=m_own * slots * N * eb,
        flag_bytes=4 * (W + col1 + W * col1),
    )



def format_summary(s: dict) -> str:
    mib = 1 << 20
    lines = [f"{s['model']}  M={s['tokens']}  EP={s['ep']} TP={s['tp']}  hw={s['hardware']}  "
             f"order={s['policy']['order']}  dispatch={s['policy']['dispatch']}",
             "buffers per rank: " + ", ".join(f"{k[:-6]} {v / mib:.1f} MiB" for k, v in s["buffers_bytes"].items()),
             f"{'rank':>4} {'rows':>7} {'l0 tiles':>8} {'l1 tiles':>8} {'l0 chunks':>9} {'l1 chunks':>9} "
             f"{'recv MiB':>8} {'send MiB':>8}  rows per source rank"]
    for r in s["ranks"]:
        lines.append(f"{r['rank']:>4} {r['rows']:>7} {r['layer0_tiles']:>8} {r['layer1_tiles']:>8} "
                     f"{r['layer0_chunks']:>9} {r['layer1_send_chunks']:>9} {r['dispatch_recv_bytes'] / mib:>8.1f} "
                     f"{r['combine_send_bytes'] / mib:>8.1f}  {r['rows_per_source_rank']}")
    return "\n".join(lines)

