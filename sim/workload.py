"""The Plan's tables as the simulator consumes them: numpy and plain Python, converted once per rank.

Suffix letters: docs/SHAPES.md (here T tiles, C communication chunks, I layer1 communication items: column
block x send chunk, column-block-major, W ranks, E local experts, N1 layer1 column blocks, Q baseline chunks).

What the Plan does not hold and is derived here (listed in the simulator's report):
- bytes of every layer0 chunk (rows x N x dtype) and per source rank;
- layer1 communication items: the Plan gives send chunks and says item i = (column block, send chunk) in
  column-block-major order; their bytes (rows reduced and sums written, over the column block's width) are
  computed from `send_row_start_S`/`send_row_end_S`;
- the remote sources of each layer0 tile as a tuple (from `l0_tile_src_mask_T`), and for the "direct"
  policy the rows each tile reads from each source;
- the owner's final combine (sum over `Plan.token_num_slots_M` partial sums of its tokens);
- for the baselines, the token chunks of the `chunked` pipeline (each owner's tokens split into Q
  contiguous parts) with their rows per local expert, dispatch bytes per source and combine bytes per
  destination.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comet.core import ownership
from comet.core.plan import Plan


@dataclass
class RankWork:
    """One rank's work, in simulator-ready form. Bytes are real bytes (ragged edges not padded)."""

    rank: int
    # --- layer0: tiles in the Plan's order, chunks in arrival order
    l0_tile_srcs: list[tuple[int, ...]]  # remote source ranks of each tile's rows (arrival order)
    l0_tile_rows_T: np.ndarray  # int64 rows of each tile (<= BM)
    l0_tile_cols_T: np.ndarray  # int64 output columns of each tile (<= BN0)
    l0_tile_block_T: np.ndarray  # int64 row-block id of each tile (index into l0_block_src_rows)
    l0_tile_expert_rows_T: np.ndarray  # int64 rows of the tile's expert (for the memory floor)
    l0_block_src_rows: np.ndarray  # int64 (blocks, W) rows of each row block owned by each rank
    l0_chunk_src_C: np.ndarray  # int64 source rank of each chunk
    l0_chunk_bytes_C: np.ndarray  # float64
    l0_chunks_per_src_W: np.ndarray  # int64
    recv_bytes_W: np.ndarray  # float64 bytes this rank receives from each source in layer0
    shard_bytes_W: np.ndarray  # float64 bytes each rank owns (its whole shard: what a copy engine copies)
    # --- layer1
    l1_tile_col_T: np.ndarray  # int64 column block of N
    l1_tile_rows_T: np.ndarray
    l1_tile_cols_T: np.ndarray
    l1_tiles_per_col: int
    l1_tile_expert_rows_T: np.ndarray  # int64 rows of the tile's expert
    l1_item_col_I: np.ndarray  # int64
    l1_item_dest_I: np.ndarray  # int64 owner rank the partial sums go to
    l1_item_read_bytes_I: np.ndarray  # float64 GEMM-output bytes the top-k reduction reads
    l1_item_write_bytes_I: np.ndarray  # float64 partial-sum bytes written to the owner
    send_bytes_W: np.ndarray  # float64 partial-sum bytes this rank sends to each owner (whole N)
    rows: int  # rows of the shared tensor
    sends: int  # (token, destination) partial sums
    # --- the owner's final combine over slots
    combine_read_bytes: float
    combine_write_bytes: float
    incoming_items_WN1: np.ndarray  # int64 (W, N1), filled by plan_work: items other ranks push here


def _tile_cols(col_T: np.ndarray, bn: int, total: int) -> np.ndarray:
    return np.minimum(bn, total - col_T * bn)


def rank_work(plan: Plan, r: int) -> RankWork:
    """Convert rank r's tables (trimmed, CPU) into a RankWork."""
    rp = plan.rank(r)
    t = {k: v.numpy() for k, v in rp.trimmed().items()}
    model, pol, W = plan.model, plan.policy, plan.world_size
    N, eb = model.hidden_N, model.dtype_bytes
    row_bytes = N * eb

    # --- layer0 tiles: remote sources from the mask, in arrival order (r+1, r+2, ...)
    masks = t["l0_tile_src_mask_T"]
    order = [(r + p) % W for p in range(1, W)]
    cache: dict[int, tuple[int, ...]] = {}
    srcs = []
    for m in masks.tolist():
        s = cache.get(m)
        if s is None:
            s = cache[m] = tuple(q for q in order if (m >> q) & 1)
        srcs.append(s)
    rs, re = t["l0_tile_row_start_T"], t["l0_tile_row_end_T"]
    # row blocks: distinct starts; rows per source from per-source prefix sums over the shared tensor
    starts, block_T = np.unique(rs, return_inverse=True)
    ends = np.zeros_like(starts)
    ends[block_T] = re
    row_src = t["row_src_R"]
    R = row_src.size
    prefix = np.zeros((W, R + 1), dtype=np.int64)
    if R:
        prefix[:, 1:] = np.cumsum(row_src[None, :] == np.arange(W)[:, None], axis=1)
    block_src_rows = (prefix[:, ends] - prefix[:, starts]).T if starts.size else np.zeros((0, W), np.int64)

    # --- layer0 chunks
    c_src = t["l0_chunk_src_C"]
    c_bytes = (t["l0_chunk_end_C"] - t["l0_chunk_start_C"]).astype(np.float64) * row_bytes
    recv_tok = t["recv_token_U"]
    owner = plan.token_owner_M.numpy()
    recv_bytes = np.bincount(owner[recv_tok], minlength=W).astype(np.float64) * row_bytes

    # --- layer1 items: (column block, send chunk), column-block-major
    N1, bn1 = plan.l1_col_blocks, pol.block_n1
    cs, ce = t["l1_chunk_start_C"], t["l1_chunk_end_C"]
    rows_per_send = t["send_row_end_S"] - t["send_row_start_S"]
    cum_rows = np.concatenate([[0], np.cumsum(rows_per_send)])
    chunk_rows = cum_rows[ce] - cum_rows[cs]
    chunk_sends = ce - cs
    chunk_dest = t["send_dest_S"][cs] if cs.size else np.zeros(0, np.int64)
    nch = cs.size
    item_col = np.repeat(np.arange(N1), nch)
    width = _tile_cols(item_col, bn1, N)
    item_chunk = np.tile(np.arange(nch), N1)
    send_dest = t["send_dest_S"]

    rows_E = np.diff(t["expert_offsets_E1"])

    # --- combine at the owner: every owned token sums its partial-sum slots
    own = owner == r
    slots = plan.token_num_slots_M.numpy()[own]
    n_own = int(own.sum())

    return RankWork(
        rank=r,
        l0_tile_srcs=srcs,
        l0_tile_rows_T=re - rs,
        l0_tile_cols_T=_tile_cols(t["l0_tile_col_T"], pol.block_n0, plan.ffn_local),
        l0_tile_block_T=block_T.astype(np.int64),
        l0_tile_expert_rows_T=rows_E[t["l0_tile_expert_T"]],
        l0_block_src_rows=block_src_rows,
        l0_chunk_src_C=c_src,
        l0_chunk_bytes_C=c_bytes,
        l0_chunks_per_src_W=t["l0_chunks_per_src_W"],
        recv_bytes_W=recv_bytes,
        shard_bytes_W=np.bincount(owner, minlength=W).astype(np.float64) * row_bytes,
        l1_tile_col_T=t["l1_tile_col_T"],
        l1_tile_rows_T=t["l1_tile_row_end_T"] - t["l1_tile_row_start_T"],
        l1_tile_cols_T=_tile_cols(t["l1_tile_col_T"], bn1, N),
        l1_tiles_per_col=int(rp.l1_tiles_per_col),
        l1_tile_expert_rows_T=rows_E[t["l1_tile_expert_T"]],
        l1_item_col_I=item_col,
        l1_item_dest_I=chunk_dest[item_chunk] if nch else np.zeros(0, np.int64),
        l1_item_read_bytes_I=(chunk_rows[item_chunk] * width * eb).astype(np.float64),
        l1_item_write_bytes_I=(chunk_sends[item_chunk] * width * eb).astype(np.float64),
        send_bytes_W=np.bincount(send_dest, minlength=W).astype(np.float64) * row_bytes,
        rows=R,
        sends=int(send_dest.size),
        combine_read_bytes=float(slots.sum()) * row_bytes,
        combine_write_bytes=float(n_own) * row_bytes,
        incoming_items_WN1=np.zeros((W, N1), dtype=np.int64),
    )


def plan_work(plan: Plan) -> list[RankWork]:
    """RankWork of every rank; the simulator needs all W ranks in the Plan."""
    have = sorted(rp.rank for rp in plan.ranks)
    if have != list(range(plan.world_size)):
        raise ValueError(f"the simulator needs every rank's plan; this plan holds ranks {have} of "
                         f"{plan.world_size}: build it with make_plan(..., ranks=None)")
    works = [rank_work(plan, r) for r in range(plan.world_size)]
    for w in works:
        remote = w.l1_item_dest_I != w.rank
        for d, c in zip(w.l1_item_dest_I[remote].tolist(), w.l1_item_col_I[remote].tolist(), strict=True):
            works[d].incoming_items_WN1[w.rank, c] += 1
    return works


# ------------------------------------------------------------------------------------ tile costs
def tile_us(plan: Plan, layer: int, rows: np.ndarray, cols: np.ndarray, padded: bool) -> np.ndarray:
    """Compute time of each tile (us) from HardwareProfile.tile_time_us.

    layer0: reduction over N, output columns of K/TP; a swiglu tile computes gate and up (2x the FLOPs);
    times HardwareProfile.gemm0_slowdown (gathered rows, activation epilogue).
    layer1: reduction over K/TP, output columns of N. `padded`: every tile costs BM x BN (the MMA runs
    on the whole tile even when rows or columns are ragged); otherwise its real rows x columns.
    """
    hw, pol, model = plan.hardware, plan.policy, plan.model
    bn = pol.block_n0 if layer == 0 else pol.block_n1
    k = model.hidden_N if layer == 0 else plan.ffn_local
    mult = 2.0 if (layer == 0 and model.activation == "swiglu") else 1.0
    if layer == 0:
        mult *= hw.gemm0_slowdown  # row gather + activation epilogue
    if padded:
        return np.full(rows.size, mult * hw.tile_time_us(pol.block_m, bn, k))
    out = np.empty(rows.size)
    cache: dict[tuple[int, int], float] = {}
    for i, key in enumerate(zip(rows.tolist(), cols.tolist(), strict=True)):
        v = cache.get(key)
        if v is None:
            v = cache[key] = mult * hw.tile_time_us(key[0], key[1], k)
        out[i] = v
    return out


def tile_memory_floor_us(plan: Plan, layer: int, rows: np.ndarray, cols: np.ndarray, expert_rows: np.ndarray,
                         active: int, other_hbm_gbps: float = 0.0) -> np.ndarray:
    """The least time (us) each tile needs to move its share of the kernel's HBM traffic: the weight panel of
    its column block read once per expert and shared by that expert's row blocks, its A rows read once and
    shared by the column blocks, its output written; `active` tiles run at once and share `hbm_gbps` evenly.
    Weight-bound when an expert has few rows (one row block reads a whole BN x K panel for one tile).
    swiglu layer0: the panel is gate and up (2 BN columns). `other_hbm_gbps`: HBM bandwidth that communication
    running beside the GEMM takes (its bytes are read from or written to this GPU's memory)."""
    hw, pol, model = plan.hardware, plan.policy, plan.model
    eb = model.dtype_bytes
    k = model.hidden_N if layer == 0 else plan.ffn_local
    total = plan.ffn_local if layer == 0 else model.hidden_N
    bn = pol.block_n0 if layer == 0 else pol.block_n1
    ncol = -(-total // bn)
    w_cols = 2.0 if (layer == 0 and model.activation == "swiglu") else 1.0
    row_blocks = np.maximum(1, -(-expert_rows // pol.block_m))
    nbytes = (w_cols * cols * k / row_blocks + rows * k / ncol + rows * cols) * eb
    share = max(hw.hbm_gbps - other_hbm_gbps, 0.1 * hw.hbm_gbps) * 1e3 / max(1, min(hw.sms, active))
    return nbytes / share


# -------------------------------------------------------------------------------- baseline chunks
@dataclass
class ChunkWork:
    """One rank's share of one token chunk of the `chunked` / `sequential` baselines."""

    rows_E: np.ndarray  # int64 rows of each local expert in this chunk
    recv_bytes_W: np.ndarray  # float64 dispatch bytes from each source
    send_bytes_W: np.ndarray  # float64 combine bytes to each owner (partial sums, whole N)
    rows: int
    sends: int


def token_chunk(plan: Plan, chunks: int) -> np.ndarray:
    """int64 (M,): chunk of each token (comet.core.ownership.token_chunk: the GPU baseline's chunks)."""
    return ownership.token_chunk(plan.num_tokens, plan.world_size, chunks).numpy()


def chunk_work(plan: Plan, r: int, chunks: int) -> list[ChunkWork]:
    """Rank r's work split by token chunk (chunks = 1: the whole layer)."""
    rp = plan.rank(r)
    t = {k: v.numpy() for k, v in rp.trimmed().items()}
    W, E = plan.world_size, plan.experts_per_rank
    row_bytes = plan.model.hidden_N * plan.model.dtype_bytes
    chunk_M = token_chunk(plan, chunks)
    owner = plan.token_owner_M.numpy()
    off = t["expert_offsets_E1"]
    row_expert = np.repeat(np.arange(E), np.diff(off))
    row_chunk = chunk_M[t["row_token_R"]]
    rows_QE = np.bincount(row_chunk * E + row_expert, minlength=chunks * E).reshape(chunks, E)
    recv = t["recv_token_U"]
    recv_QW = np.bincount(chunk_M[recv] * W + owner[recv], minlength=chunks * W).reshape(chunks, W)
    st, sd = t["send_token_S"], t["send_dest_S"]
    send_QW = np.bincount(chunk_M[st] * W + sd, minlength=chunks * W).reshape(chunks, W)
    return [ChunkWork(rows_E=rows_QE[q], recv_bytes_W=recv_QW[q] * float(row_bytes),
                      send_bytes_W=send_QW[q] * float(row_bytes), rows=int(rows_QE[q].sum()),
                      sends=int(send_QW[q].sum())) for q in range(chunks)]
