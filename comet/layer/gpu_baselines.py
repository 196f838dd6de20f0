"""The two baselines of the single-layer comparison, in the same harness as the fused kernels: same routing,
same weight shards, the same Plan tile tables for the grouped GEMMs (kernels/grouped_gemm.py).

    sequential  dispatch, grouped GEMM (N -> K/TP) + activation, grouped GEMM (K/TP -> N), top-k weighted
                reduction, combine: one stage after the other, the non-overlapped schedule of Megatron-LM.
                Dispatch and combine are either an all-to-all (each token row goes once to every rank that
                holds one of its experts; the partial sums come back the same way and the owner adds them)
                or an all-gather of every row plus a reduce-scatter of (M, N) partial sums (the released
                Comet code's collectives).
    chunked     every rank's own tokens cut into Q chunks; on a GPU the dispatch of chunk i + 1 and the
                combine of chunk i run on a communication stream while chunk i + 1's GEMMs wait only for its
                own dispatch, on the compute stream (Tutel / FasterMoE style). On the CPU the chunks run one
                after another (no streams), which checks the chunking, not the overlap.

Both run over comet/layer/collectives.py (an emulated world in this process, or a torch.distributed group).

Token ownership and chunks follow comet/core/ownership.py's one split rule: rank s owns the global tokens
`owned_range(M, W, s)` (on a process group every rank holds the same number m of tokens, M = W m); chunk q of
rank s is its own rows `chunk_range(n_s, Q, q)`, the same chunks the simulator's baselines run
(sim/workload.py). A chunk's tokens are numbered owner by owner (ascending global id), so the chunk's Plan
(make_plan on the chunk's routing) gives the grouped GEMMs' tile tables. Which rank needs which token comes
from `token_groups`, as in the planner.

Suffix letters: docs/SHAPES.md (here M_c: the tokens of one chunk; D: the token rows a rank sends in dispatch;
Q: the chunks).

`prepare` (the metadata: plans, split sizes, exact row counts) costs one host sync per call, as Megatron's
all-to-all dispatcher does for its split sizes; `forward` with prepared metadata has none (CPU and GPU).
The top-k reduction and the owner's sum accumulate in float32; rows travel in the tokens' dtype.

    >>> import torch
    >>> from comet.core.config import ModelConfig, ParallelConfig
    >>> from comet.core.policy import Policy
    >>> from comet.core.routing import uniform
    >>> from comet.core.weights import random_tokens, random_weights, shard_weights
    >>> from comet.layer.collectives import EmulatedCollectives
    >>> model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    >>> par = ParallelConfig(ep=2)
    >>> x, w, r = random_tokens(24, 32), random_weights(model), uniform(24, 4, 2, seed=1)
    >>> coll = EmulatedCollectives(par.world_size, "cpu")
    >>> metas = prepare(r, model, par, coll.ranks, chunks=2, policy=Policy(block_m=16, block_n0=16, block_n1=16))
    >>> shards = {q: shard_weights(w, par, q) for q in coll.ranks}
    >>> out = BaselineRunner(coll, model, par).forward(metas, x, shards)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from comet.core import defaults
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import chunk_range, owned_range, token_groups
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import DISPATCHES, Policy
from comet.core.routing import Routing
from comet.core.weights import ExpertWeights
from kernels import grouped_gemm as gg
from kernels.options import SMALL_TILE, GemmOptions

if TYPE_CHECKING:
    from kernels.options import TileConfig

SYSTEMS = ("comet", "sequential", "chunked")
FORMS = DISPATCHES  # ("all-to-all", "all-gather")

__all__ = ["SYSTEMS", "FORMS", "ChunkMeta", "prepare", "BaselineRunner", "own_rows"]


def own_rows(t_MN: torch.Tensor, M: int, W: int, r: int, emulated: bool) -> torch.Tensor:
    """Rank r's own rows of a token tensor: t_MN[lo:hi] in an emulated world (all M rows), t itself on a group."""
    if not emulated:
        return t_MN
    lo, hi = owned_range(M, W, r)
    return t_MN[lo:hi]


# ---------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ChunkMeta:
    """What a chunk's dispatch tells its compute and combine; one per chunk, for the ranks this process runs.

    form: "all-to-all" or "all-gather"; plan: the chunk's Plan (tokens in chunk order; its tile tables and
    row weights drive the grouped GEMMs and the top-k reduction); tokens: M_c;
    rows: rank -> (a, b), the rank's own rows [a, b) this chunk covers (0 = the rank's first own token);
    sizes_W: tokens each rank contributes to the chunk (b - a), every rank;
    send_idx_D: rank -> int64 (D,) rows to send, as offsets into the chunk's own rows, by destination then token;
    send_splits / recv_splits: rank -> W row counts sent to / received from every rank (all-to-all);
    recv_rows: rank -> U (all-gather: M_c); num_rows: rank -> R, the Plan's valid shared-tensor rows;
    a_rows_R: rank -> int64 (R_max,) receive-buffer row of each shared-tensor row (the GEMM's gather index).
    """

    form: str
    plan: Plan
    tokens: int
    rows: dict[int, tuple[int, int]]
    sizes_W: tuple[int, ...]
    send_idx_D: dict[int, torch.Tensor]
    send_splits: dict[int, list[int]]
    recv_splits: dict[int, list[int]]
    recv_rows: dict[int, int]
    num_rows: dict[int, int]
    a_rows_R: dict[int, torch.Tensor]


def prepare(routing: Routing, model: ModelConfig, parallel: ParallelConfig, ranks: Sequence[int], *,
            chunks: int = 1, form: str = "all-to-all", policy: Policy | None = None,
            hardware: HardwareProfile | None = None) -> tuple[ChunkMeta, ...]:
    """Metadata of every chunk for the ranks `ranks` (one host sync for all chunks).

    routing: global (all M tokens), on the device the layer runs on. chunks: Q >= 1 (empty chunks, when a
    rank has fewer than Q tokens, are dropped). form: "all-to-all" or "all-gather".
    """
    if form not in FORMS:
        raise ValueError(f"unknown dispatch form {form!r}; choose one of {', '.join(FORMS)}")
    if chunks < 1:
        raise ValueError(f"chunks must be >= 1, got {chunks}")
    parallel.validate(model)
    if routing.num_experts != model.experts_E or routing.topk != model.topk:
        raise ValueError(f"routing has E={routing.num_experts}, topk={routing.topk}; {model.name} has "
                         f"E={model.experts_E}, topk={model.topk}")
    policy = policy or Policy()
    hardware = hardware or HardwareProfile.from_name(defaults.GPU_HARDWARE)
    M, W = routing.num_tokens, parallel.world_size
    ids_MJ, w_MJ = routing.topk_ids_MJ, routing.topk_weights_MJ
    dev = ids_MJ.device
    E_loc = model.experts_E // parallel.ep
    group_W = torch.tensor([parallel.ep_rank(d) for d in range(W)], device=dev)
    ranges = [owned_range(M, W, s) for s in range(W)]

    # --- pass 1, on the device: each chunk's tokens, plan, who needs which token, row counts
    staged = []
    for q in range(chunks):
        rows = {s: chunk_range(hi - lo, chunks, q) for s, (lo, hi) in enumerate(ranges)}
        sizes = tuple(b - a for a, b in rows.values())
        M_c = sum(sizes)
        if M_c == 0:
            continue
        tok_M = torch.cat([torch.arange(ranges[s][0] + a, ranges[s][0] + b, device=dev) for s, (a, b) in rows.items()])
        sub = Routing(ids_MJ[tok_M], w_MJ[tok_M], model.experts_E)
        plan = make_plan(sub, model, parallel, hardware, policy, ranks=list(ranks))
        if form == "all-gather":
            need_MW = torch.ones(M_c, W, dtype=torch.bool, device=dev)
        else:
            need_MW = token_groups(sub.topk_ids_MJ, E_loc, parallel.ep)[:, group_W]
        owner_M = torch.repeat_interleave(torch.arange(W, device=dev), torch.tensor(sizes, device=dev))
        counts_WW = torch.zeros(W, W, dtype=torch.int64, device=dev).index_add_(0, owner_M, need_MW.long())
        n_rows = torch.stack([plan.rank(r).num_rows for r in ranks])
        staged.append((rows, sizes, M_c, plan, need_MW, counts_WW, n_rows))
    if not staged:
        raise ValueError("the routing has no tokens")

    # --- the one host sync: split sizes and exact row counts of every chunk
    host = torch.cat([torch.cat([cw.reshape(-1), nr]) for *_, cw, nr in staged]).tolist()

    metas, pos = [], 0
    for rows, sizes, M_c, plan, need_MW, _, _ in staged:
        counts = [host[pos + s * W: pos + (s + 1) * W] for s in range(W)]
        pos += W * W
        num_rows = {r: int(n) for r, n in zip(ranks, host[pos:pos + len(ranks)], strict=True)}
        pos += len(ranks)
        offs = [sum(sizes[:s]) for s in range(W)]
        send_idx, send_splits, recv_splits, recv_rows, a_rows = {}, {}, {}, {}, {}
        for r in ranks:
            rp = plan.rank(r)
            tok_R = rp.row_token_R.clamp(min=0)
            if form == "all-gather":
                send_idx[r] = torch.arange(sizes[r], device=dev)
                recv_rows[r], a_rows[r] = M_c, tok_R
            else:
                # as a source: (destination, own token) pairs in that order, the first D after sorting
                n_r = sizes[r]
                need_by_dest = need_MW[offs[r]:offs[r] + n_r].T  # (W, n_r)
                key = torch.arange(W * n_r, device=dev)
                key = torch.where(need_by_dest.reshape(-1), key, key + W * n_r)
                send_idx[r] = torch.argsort(key)[:sum(counts[r])] % max(n_r, 1)
                # as a destination: the needed tokens in ascending chunk id = by owner, then token
                U = sum(counts[s][r] for s in range(W))
                t = torch.arange(M_c, device=dev)
                recv_tok = torch.argsort(torch.where(need_MW[:, r], t, t + M_c))[:U]
                pos_M = torch.zeros(M_c, dtype=torch.int64, device=dev)
                pos_M.scatter_(0, recv_tok, torch.arange(U, device=dev))
                recv_rows[r], a_rows[r] = U, pos_M[tok_R]
            send_splits[r] = counts[r]
            recv_splits[r] = [counts[s][r] for s in range(W)]
        metas.append(ChunkMeta(form=form, plan=plan, tokens=M_c, rows={r: rows[r] for r in ranks}, sizes_W=sizes,
                               send_idx_D=send_idx, send_splits=send_splits, recv_splits=recv_splits,
                               recv_rows=recv_rows, num_rows=num_rows, a_rows_R=a_rows))
    return tuple(metas)


# ------------------------------------------------------------------------------------------------ runner
class BaselineRunner:
    """Runs the baselines' stages for one collectives object (one per layer or per world; holds the side
    stream of the chunked schedule). tile: the grouped GEMMs' fixed tile loop, a kernels.options.TileConfig
    (default: kernels.options.SMALL_TILE on the CPU; on a GPU none, so kernels.grouped_gemm picks its kernel
    and autotunes)."""

    def __init__(self, coll, model: ModelConfig, parallel: ParallelConfig, *, tile: TileConfig | None = None):
        if coll.world_size != parallel.world_size:
            raise ValueError(f"the collectives span {coll.world_size} ranks but ep*tp = {parallel.world_size}")
        parallel.validate(model)
        self.coll, self.model, self.parallel = coll, model, parallel
        self.ranks = coll.ranks
        self.tile = tile
        self._comm_stream: torch.cuda.Stream | None = None

    def _gemm_options(self, device):
        return GemmOptions(tile=self.tile if self.tile is not None or device.type == "cuda" else SMALL_TILE)

    # --- the three stages of one chunk ----------------------------------------------------------------
    def dispatch(self, meta: ChunkMeta, x_own: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """x_own: rank -> its own token rows (all of them). Returns rank -> receive buffer (U, N)."""
        chunk = {r: x_own[r][meta.rows[r][0]:meta.rows[r][1]] for r in self.ranks}
        if meta.form == "all-gather":
            return self.coll.all_gather(chunk)
        send = {r: chunk[r].index_select(0, meta.send_idx_D[r]) for r in self.ranks}
        return self.coll.all_to_all(send, meta.send_splits, meta.recv_splits)

    def compute(self, meta: ChunkMeta, recv: Mapping[int, torch.Tensor], shards: Mapping[int, ExpertWeights], *,
                reduce: bool = True) -> dict[int, torch.Tensor]:
        """Both grouped GEMMs of every rank (rows gathered from its receive buffer), then the top-k weighted
        sum of each received token's rows (float32). Returns rank -> partial sums (U, N) in the tokens' dtype;
        reduce=False stops after the GEMMs (the GEMM-only time) and returns rank -> y (R_max, N)."""
        plan, act = meta.plan, self.model.activation
        out = {}
        for r in self.ranks:
            rp, sh, a = plan.rank(r), shards[r], recv[r]
            if meta.num_rows[r] == 0:  # nothing routed here (and maybe nothing received): no launches
                rows = meta.recv_rows[r] if reduce else 0
                out[r] = torch.zeros(rows, self.model.hidden_N, dtype=a.dtype, device=a.device)
                continue
            opts = self._gemm_options(a.device)  # (A and B through TMA where tma_ok allows)
            h_RK = gg.grouped_gemm(a, sh.w0_ENK, gg._tiles(rp, "l0"), block_m=plan.policy.block_m,
                                   block_n=plan.policy.block_n0, a_rows_R=meta.a_rows_R[r],
                                   n_rows_out=rp.row_token_R.numel(), activation=act, options=opts)
            y_RN = gg.grouped_gemm_layer1(plan, r, h_RK, sh.w1_EKN, options=opts)
            if not reduce:
                out[r] = y_RN
                continue
            R = meta.num_rows[r]
            acc_UN = torch.zeros(meta.recv_rows[r], self.model.hidden_N, dtype=torch.float32, device=a.device)
            acc_UN.index_add_(0, meta.a_rows_R[r][:R], y_RN[:R].float() * rp.row_weight_R[:R, None])
            out[r] = acc_UN.to(a.dtype)
        return out

    def combine(self, meta: ChunkMeta, partial: Mapping[int, torch.Tensor],
                out_own: Mapping[int, torch.Tensor]) -> None:
        """Partial sums back to the owners, which add them: out_own[r] (its own rows) gets this chunk's rows."""
        if meta.form == "all-gather":
            got = self.coll.reduce_scatter(partial, meta.sizes_W)
            for r in self.ranks:
                a, b = meta.rows[r]
                out_own[r][a:b].copy_(got[r])
            return
        back = self.coll.all_to_all(partial, meta.recv_splits, meta.send_splits)
        for r in self.ranks:
            a, b = meta.rows[r]
            acc = torch.zeros(b - a, self.model.hidden_N, dtype=torch.float32, device=back[r].device)
            acc.index_add_(0, meta.send_idx_D[r], back[r].float())
            out_own[r][a:b].copy_(acc)

    # --- the whole layer ------------------------------------------------------------------------------
    def forward(self, metas: Sequence[ChunkMeta], x: torch.Tensor, shards: Mapping[int, ExpertWeights], *,
                overlap: bool = False, out: torch.Tensor | None = None) -> torch.Tensor:
        """The layer's output for x: (M, N) all tokens (emulated world) or this rank's (m, N) rows (group).

        overlap: the chunked schedule on two CUDA streams (ignored on the CPU or with one chunk).
        Returns out (same shape as x, x's dtype). No host sync.
        """
        if not metas:
            raise ValueError("no chunk metadata: call prepare() first")
        M = sum(m.tokens for m in metas)
        W = self.parallel.world_size
        emulated = self.coll.emulated
        want = M if emulated else sum(m.rows[self.ranks[0]][1] - m.rows[self.ranks[0]][0] for m in metas)
        if x.dim() != 2 or x.shape != (want, self.model.hidden_N):
            raise ValueError(f"x must be ({want}, N={self.model.hidden_N}) here, got {tuple(x.shape)}")
        missing = [r for r in self.ranks if r not in shards]
        if missing:
            raise ValueError(f"no weight shard for ranks {missing}")
        out = torch.empty_like(x) if out is None else out
        x_own = {r: own_rows(x, M, W, r, emulated) for r in self.ranks}
        out_own = {r: own_rows(out, M, W, r, emulated) for r in self.ranks}
        if not (overlap and x.is_cuda and len(metas) > 1):
            for meta in metas:
                self.combine(meta, self.compute(meta, self.dispatch(meta, x_own), shards), out_own)
            return out
        self._overlapped(metas, x_own, shards, out_own)
        return out

    def _overlapped(self, metas, x_own, shards, out_own) -> None:
        # comm stream: d0, d1, c0, d2, c1, ...; compute stream: g_i after d_i. Chunk i + 1's GEMMs overlap chunk
        # i's combine and chunk i + 2's dispatch. Buffers stay referenced until the end; the next call's side
        # stream first waits for this call's compute stream, so no buffer is reused early.
        cur = torch.cuda.current_stream()
        if self._comm_stream is None:
            self._comm_stream = torch.cuda.Stream()
        comm = self._comm_stream
        comm.wait_stream(cur)
        recv, dispatched = [None] * len(metas), [None] * len(metas)
        keep = []

        def dispatch(i):
            with torch.cuda.stream(comm):
                recv[i] = self.dispatch(metas[i], x_own)
                dispatched[i] = torch.cuda.Event()
                dispatched[i].record(comm)

        dispatch(0)
        for i, meta in enumerate(metas):
            if i + 1 < len(metas):
                dispatch(i + 1)
            cur.wait_event(dispatched[i])
            partial = self.compute(meta, recv[i], shards)
            computed = torch.cuda.Event()
            computed.record(cur)
            with torch.cuda.stream(comm):
                comm.wait_event(computed)
                self.combine(meta, partial, out_own)
            keep.append(partial)
        cur.wait_stream(comm)
        del keep

