"""The two baselines of the single-layer comparison, in the same harness as the fused kernels: same routing,
same weight shards, the same Plan tile tables for the grouped GEMMs (kernels/grouped_gemm.py).

    sequential  dispatch, grouped GEMM (N -> K/TP) + activation, grouped GEMM (K/TP -> N), top-k weighted
                reduction, combine: one stage after the other, the non-overlapped schedule of Megatron-LM.
                Dispatch and combine are either an all-to-all (each token row goes once to every rank that
                holds one of its experts; the partial sums come back the same way and the owner adds them)
                or an all-gather of every row plus a reduce-scatter of (M, N) partial sums (the released
                Comet code's collectives).
    chunked     every rank's own tokens cut into C chunks; on a GPU the dispatch of chunk i + 1 and the
                combine of chunk i run on a communication stream while chunk i + 1's GEMMs wait only for its
                own dispatch, on the compute stream (Tutel / FasterMoE style). On the CPU the chunks run one
                after another (no streams), which checks the chunking, not the overlap.

Two worlds, one code path. `EmulatedCollectives`: all W ranks in this process, collectives are tensor copies
(CPU tests, one GPU). `DistCollectives`: this process's rank of a torch.distributed group (NCCL on GPUs, gloo
on CPUs). Collectives take and return {rank: tensor} for the ranks this process runs.

Token ownership as comet.plan.token_owner: rank s owns the global tokens `owned_range(M, W, s)`; on a process
group every rank holds the same number m of tokens (M = W m). The chunk c of rank s is its own rows
[c n_s // C, (c + 1) n_s // C); a chunk's tokens are numbered owner by owner (ascending global id), so the
chunk's Plan (make_plan on the chunk's routing) gives the grouped GEMMs' tile tables.

Shape legend: M tokens (M_c in a chunk), N hidden, K FFN size (K/TP on a rank), E experts, W ranks, R rows of a
rank's shared tensor (one per (token, slot) routed to a local expert, the Plan's order), U token rows a rank
receives in dispatch, S token rows a rank sends in dispatch, C chunks.

`prepare` (the metadata: plans, split sizes, exact row counts) costs one host sync per call, as Megatron's
all-to-all dispatcher does for its split sizes; `forward` with prepared metadata has none (CPU and GPU).
The top-k reduction and the owner's sum accumulate in float32; rows travel in the tokens' dtype.

    >>> import torch
    >>> from comet.config import ModelConfig, ParallelConfig
    >>> from comet.reference import moe_forward, random_tokens, random_weights, shard_weights
    >>> from comet.routing import uniform
    >>> from comet.plan import Policy
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

import torch

from comet.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.plan import DISPATCHES, Plan, Policy, make_plan
from comet.reference import ExpertWeights
from comet.routing import Routing

SYSTEMS = ("comet", "sequential", "chunked")
FORMS = DISPATCHES  # ("all-to-all", "all-gather")

__all__ = ["SYSTEMS", "FORMS", "EmulatedCollectives", "DistCollectives", "ChunkMeta", "prepare", "BaselineRunner",
           "owned_range", "own_rows"]


def owned_range(M: int, W: int, s: int) -> tuple[int, int]:
    """[lo, hi) global token ids owned by rank s (comet.plan.token_owner: owner(t) = t * W // M)."""
    return (s * M + W - 1) // W, ((s + 1) * M + W - 1) // W


def own_rows(t_MN: torch.Tensor, M: int, W: int, r: int, emulated: bool) -> torch.Tensor:
    """Rank r's own rows of a token tensor: t_MN[lo:hi] in an emulated world (all M rows), t itself on a group."""
    if not emulated:
        return t_MN
    lo, hi = owned_range(M, W, r)
    return t_MN[lo:hi]


# ------------------------------------------------------------------------------------------- collectives
class EmulatedCollectives:
    """Collectives among W ranks that all live in this process (tensors on one device): plain copies."""

    emulated = True

    def __init__(self, world_size: int, device):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.ranks = tuple(range(world_size))
        self.device = torch.device(device)

    def all_to_all(self, send: Mapping[int, torch.Tensor], send_splits: Mapping[int, Sequence[int]],
                   recv_splits: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Rank s's send rows are grouped by destination (send_splits[s][d] rows for d); rank d receives the
        groups addressed to it in source order (recv_splits[d][s] rows from s)."""
        pieces = {s: send[s].split(list(send_splits[s])) for s in self.ranks}
        out = {}
        for d in self.ranks:
            got = [pieces[s][d] for s in self.ranks]
            if [g.shape[0] for g in got] != list(recv_splits[d]):
                raise ValueError(f"rank {d} expects {list(recv_splits[d])} rows from each source, the sources send "
                                 f"{[g.shape[0] for g in got]}")
            out[d] = torch.cat(got)
        return out

    def all_gather(self, parts: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Every rank gets the concatenation of all parts in rank order (one shared copy: the emulated ranks
        only read it)."""
        full = torch.cat([parts[s] for s in self.ranks])
        return {d: full for d in self.ranks}

    def reduce_scatter(self, full: Mapping[int, torch.Tensor], splits: Sequence[int]) -> dict[int, torch.Tensor]:
        """Rank s gets rows [sum(splits[:s]), sum(splits[:s + 1])) of the sum over ranks (summed in float32)."""
        ref = full[self.ranks[0]]
        acc = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        for r in self.ranks:
            acc += full[r]
        return {s: piece.to(ref.dtype) for s, piece in zip(self.ranks, acc.split(list(splits)), strict=True)}


class DistCollectives:
    """Collectives of this process's rank in a torch.distributed group (NCCL on GPUs, gloo on CPUs)."""

    emulated = False

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first (torchrun), "
                               "or use the emulated world")
        self._dist = dist
        self.group = group or dist.group.WORLD
        self.world_size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self.ranks = (self.rank,)

    def _gather(self, out, inp):
        fn = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        fn(out, inp, group=self.group)

    def all_to_all(self, send, send_splits, recv_splits) -> dict[int, torch.Tensor]:
        r = self.rank
        inp = send[r].contiguous()
        out = inp.new_empty(sum(recv_splits[r]), *inp.shape[1:])
        self._dist.all_to_all_single(out, inp, list(recv_splits[r]), list(send_splits[r]), group=self.group)
        return {r: out}

    def all_gather(self, parts) -> dict[int, torch.Tensor]:
        inp = parts[self.rank].contiguous()
        out = inp.new_empty(self.world_size * inp.shape[0], *inp.shape[1:])
        self._gather(out, inp)
        return {self.rank: out}

    def reduce_scatter(self, full, splits) -> dict[int, torch.Tensor]:
        if len(set(splits)) > 1:
            raise ValueError(f"reduce-scatter on a process group needs equal pieces per rank, got {list(splits)}")
        inp = full[self.rank].contiguous()
        out = inp.new_empty(splits[self.rank], *inp.shape[1:])
        fn = getattr(self._dist, "reduce_scatter_single", None) or self._dist.reduce_scatter_tensor
        fn(out, inp, group=self.group)
        return {self.rank: out}

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' (m, ...) tensors stacked in rank order: (W m, ...) (the routing of every token)."""
        out = t.new_empty(self.world_size * t.shape[0], *t.shape[1:])
        self._gather(out, t.contiguous())
        return out


# ---------------------------------------------------------------------------------------------- metadata
@dataclass(frozen=True)
class ChunkMeta:
    """What a chunk's dispatch tells its compute and combine; one per chunk, for the ranks this process runs.

    form: "all-to-all" or "all-gather"; plan: the chunk's Plan (tokens in chunk order; its tile tables and
    row weights drive the grouped GEMMs and the top-k reduction); tokens: M_c;
    rows: rank -> (a, b), the rank's own rows [a, b) this chunk covers (0 = the rank's first own token);
    sizes_W: tokens each rank contributes to the chunk (b - a), every rank;
    send_idx_S: rank -> int64 (S,) rows to send, as offsets into the chunk's own rows, by destination then token;
    send_splits / recv_splits: rank -> W row counts sent to / received from every rank (all-to-all);
    recv_rows: rank -> U (all-gather: M_c); num_rows: rank -> R, the Plan's valid shared-tensor rows;
    a_rows_R: rank -> int64 (R_max,) receive-buffer row of each shared-tensor row (the GEMM's gather index).
    """

    form: str
    plan: Plan
    tokens: int
    rows: dict[int, tuple[int, int]]
    sizes_W: tuple[int, ...]
    send_idx_S: dict[int, torch.Tensor]
    send_splits: dict[int, list[int]]
    recv_splits: dict[int, list[int]]
    recv_rows: dict[int, int]
    num_rows: dict[int, int]
    a_rows_R: dict[int, torch.Tensor]


def prepare(routing: Routing, model: ModelConfig, parallel: ParallelConfig, ranks: Sequence[int], *,
            chunks: int = 1, form: str = "all-to-all", policy: Policy | None = None,
            hardware: HardwareProfile | None = None) -> tuple[ChunkMeta, ...]:
    """Metadata of every chunk for the ranks `ranks` (one host sync for all chunks).

    routing: global (all M tokens), on the device the layer runs on. chunks: C >= 1 (empty chunks, when a
    rank has fewer than C tokens, are dropped). form: "all-to-all" or "all-gather".
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
    hardware = hardware or HardwareProfile.from_name("h200")
    M, W = routing.num_tokens, parallel.world_size
    ids_MK, w_MK = routing.topk_ids_MK, routing.topk_weights_MK
    dev = ids_MK.device
    E_loc = model.experts_E // parallel.ep
    group_W = torch.tensor([parallel.ep_rank(d) for d in range(W)], device=dev)
    ranges = [owned_range(M, W, s) for s in range(W)]

    # --- pass 1, on the device: each chunk's tokens, plan, who needs which token, row counts
    staged = []
    for c in range(chunks):
        rows = {s: ((hi - lo) * c // chunks, (hi - lo) * (c + 1) // chunks) for s, (lo, hi) in enumerate(ranges)}
        sizes = tuple(b - a for a, b in rows.values())
        M_c = sum(sizes)
        if M_c == 0:
            continue
        tok_M = torch.cat([torch.arange(ranges[s][0] + a, ranges[s][0] + b, device=dev) for s, (a, b) in rows.items()])
        sub = Routing(ids_MK[tok_M], w_MK[tok_M], model.experts_E)
        plan = make_plan(sub, model, parallel, hardware, policy, ranks=list(ranks))
        if form == "all-gather":
            need_MW = torch.ones(M_c, W, dtype=torch.bool, device=dev)
        else:
            need_MW = ((sub.topk_ids_MK // E_loc)[:, :, None] == group_W[None, None, :]).any(1)
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
                # as a source: (destination, own token) pairs in that order, the first S after sorting
                n_r = sizes[r]
                need_WU = need_MW[offs[r]:offs[r] + n_r].T  # (W, n_r)
                key = torch.arange(W * n_r, device=dev)
                key = torch.where(need_WU.reshape(-1), key, key + W * n_r)
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
                               send_idx_S=send_idx, send_splits=send_splits, recv_splits=recv_splits,
                               recv_rows=recv_rows, num_rows=num_rows, a_rows_R=a_rows))
    return tuple(metas)


# ------------------------------------------------------------------------------------------------ runner
class BaselineRunner:
    """Runs the baselines' stages for one collectives object (one per layer or per world; holds the side
    stream of the chunked schedule). config: the grouped GEMMs' fixed {"BLOCK_K", "num_warps",
    "num_stages"} (default: kernels.grouped_gemm.SMALL_CONFIG on the CPU, autotuning on a GPU)."""

    def __init__(self, coll, model: ModelConfig, parallel: ParallelConfig, *, config: dict | None = None):
        if coll.world_size != parallel.world_size:
            raise ValueError(f"the collectives span {coll.world_size} ranks but ep*tp = {parallel.world_size}")
        parallel.validate(model)
        self.coll, self.model, self.parallel = coll, model, parallel
        self.ranks = coll.ranks
        self.config = config
        self._comm_stream: torch.cuda.Stream | None = None

    def _gemm_config(self, device) -> dict | None:
        from kernels import grouped_gemm as gg

        return self.config if self.config is not None or device.type == "cuda" else gg.SMALL_CONFIG

    # --- the three stages of one chunk ----------------------------------------------------------------
    def dispatch(self, meta: ChunkMeta, x_own: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """x_own: rank -> its own token rows (all of them). Returns rank -> receive buffer (U, N)."""
        chunk = {r: x_own[r][meta.rows[r][0]:meta.rows[r][1]] for r in self.ranks}
        if meta.form == "all-gather":
            return self.coll.all_gather(chunk)
        send = {r: chunk[r].index_select(0, meta.send_idx_S[r]) for r in self.ranks}
        return self.coll.all_to_all(send, meta.send_splits, meta.recv_splits)

    def compute(self, meta: ChunkMeta, recv: Mapping[int, torch.Tensor], shards: Mapping[int, ExpertWeights], *,
                reduce: bool = True) -> dict[int, torch.Tensor]:
        """Both grouped GEMMs of every rank (rows gathered from its receive buffer), then the top-k weighted
        sum of each received token's rows (float32). Returns rank -> partial sums (U, N) in the tokens' dtype;
        reduce=False stops after the GEMMs (the GEMM-only time) and returns rank -> y (R_max, N)."""
        from kernels import grouped_gemm as gg

        plan, act = meta.plan, self.model.activation
        out = {}
        for r in self.ranks:
            rp, sh, a = plan.rank(r), shards[r], recv[r]
            if meta.num_rows[r] == 0:  # nothing routed here (and maybe nothing received): no launches
                rows = meta.recv_rows[r] if reduce else 0
                out[r] = torch.zeros(rows, self.model.hidden_N, dtype=a.dtype, device=a.device)
                continue
            cfg = self._gemm_config(a.device)
            h_RK = gg.grouped_gemm(a, sh.w0_ENK, gg._tiles(rp, "l0"), block_m=plan.policy.block_m,
                                   block_n=plan.policy.block_n0, a_rows_R=meta.a_rows_R[r],
                                   n_rows_out=rp.row_token_R.numel(), activation=act, config=cfg,
                                   b_tma=gg.tma_ok(sh.w0_ENK))
            y_RN = gg.grouped_gemm_layer1(plan, r, h_RK, sh.w1_EKN, config=cfg)
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
            acc.index_add_(0, meta.send_idx_S[r], back[r].float())
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

