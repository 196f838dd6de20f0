"""The bounds: kernel-by-kernel execution on two streams with ideal NCCL-style collectives.

`sequential` (no overlap at all) and `chunked` (an ideal token-chunk pipeline) are bounds, not the paper's
baselines (those are sim/megatron.py and sim/pipelined_moe.py): they move the Plan's bytes with the fewest
kernels, no host syncs, no metadata collectives, and NCCL taking no SM. They are one pipeline with Q token
chunks: each owner's tokens split into Q contiguous parts (`SimOptions.chunks`; sequential is Q = 1).
Both move the same data as `comet` (the Plan's receive and send tables: all-to-all or all-gather
dispatch, top-k-reduced partial sums combined at the owner), so only the schedule differs.

Per rank, a compute stream runs (every kernel after a `launch_overhead_us` gap):
    permute (gathers the rows this rank sends, memory-bound; SimOptions.permute)
    for each chunk q:  wait dispatch(q) | GEMM0(q) on all SMs | activation(q) (memory-bound, unless fused)
    for each chunk q:  GEMM1(q) on all SMs | top-k reduce(q) (reads the chunk's rows, writes its sums)
    wait every combine(q) | final combine reduce over the slots of its tokens
and a communication stream runs the collectives in order:
    dispatch(0), ..., dispatch(Q-1) (after the permute), then combine(q) once top-k reduce(q) is done.
So dispatch(q+1) overlaps GEMM0(q) and combine(q) overlaps GEMM1(q+1): the first dispatch and the last
combine are never hidden. A collective starts when every rank has joined it (waiting is `sync_wait`),
pays `collective_overhead_us`, then moves every (source, destination) pair's bytes at once through the
shared links (no per-transfer cap: NCCL drives the links at full rate); a rank's part ends when its own
sends and receives are through, plus one link latency.

A GEMM kernel is simulated tile by tile: `sms` blocks take the chunk's tiles from a counter, so a small
chunk's fewer tiles per wave (wave quantization, the tail) lower its efficiency by themselves. Not
modelled: the SMs NCCL's kernels take from a concurrent GEMM (optimistic for `chunked`).
"""

from __future__ import annotations

from comet.core.plan import Plan
from sim.collectives import GroupCollective
from sim.engine import SystemSim, grouped_gemm_tiles
from sim.options import SimOptions
from sim.workload import chunk_work


class StagedSim(SystemSim):
    """The `sequential` (chunks = 1) and `chunked` bounds."""

    def __init__(self, plan: Plan, options: SimOptions, name: str):
        self.name = name
        super().__init__(plan, options)
        Q = 1 if name == "sequential" else options.chunks
        self.Q = Q
        W = self.W
        self.chunks = [chunk_work(plan, r, Q) for r in range(W)]  # [rank][chunk]
        padded = options.tile_rows == "padded"
        floor = options.memory_floor
        self.tiles0 = [[grouped_gemm_tiles(plan, 0, cw.rows_E, padded, floor) for cw in ch] for ch in self.chunks]
        self.tiles1 = [[grouped_gemm_tiles(plan, 1, cw.rows_E, padded, floor) for cw in ch] for ch in self.chunks]
        ranks = list(range(W))  # every rank, NCCL holding no SM (a bound)
        # ideal collectives: issued ahead of the GPU, so NCCL's device latency only (no host call path)
        self.dispatch = [GroupCollective(self, "dispatch", 0, ranks, {(s, d): self.chunks[d][q].recv_bytes_W[s]
                                                                      for s in ranks for d in ranks}, host_path=False)
                         for q in range(Q)]
        self.combine = [GroupCollective(self, "combine", 1, ranks, {(s, d): self.chunks[s][q].send_bytes_W[d]
                                                                    for s in ranks for d in ranks}, host_path=False)
                        for q in range(Q)]
        owner, slots = plan.token_owner_M.numpy(), plan.token_num_slots_M.numpy()
        # the owner reads every partial-sum slot of its tokens and writes one row per token
        self.combine_bytes = [float(slots[owner == r].sum() + (owner == r).sum()) * self.row_bytes
                              for r in range(W)]
        env = self.env
        self.permuted = [env.event() for _ in range(W)]
        self.reduced = [[env.event() for _ in range(Q)] for _ in range(W)]

    def rank_process(self, r: int):
        self.env.process(self._comm_stream(r))
        return self._compute_stream(r)

    def _compute_stream(self, r: int):
        env, Q = self.env, self.Q
        ch = self.chunks[r]
        cause = -1
        if self.do_l0:
            if self.options.permute:
                sent = sum(float(self.chunks[d][q].recv_bytes_W[r]) for q in range(Q) for d in range(self.W)
                           if d != r)
                cause = yield from self.launch(r, 0, cause)
                cause = yield from self.memory_kernel(r, "permute", 0, 2 * sent, cause)
            self.permuted[r].succeed(cause)
            for q in range(Q):
                ev = self.dispatch[q].done[r]
                if ev.callbacks is not None:
                    yield ev
                    cause = ev.value
                if self.tiles0[r][q]:
                    cause = yield from self.launch(r, 0, cause)
                    cause = yield from self.gemm_kernel(r, 0, self.tiles0[r][q], cause)
                    if not self.fused_act:
                        cause = yield from self.launch(r, 0, cause)
                        cause = yield from self.memory_kernel(r, "activation", 0, ch[q].rows * self.act_row_bytes,
                                                              cause)
            self.l0_end[r] = env.now
        if self.do_l1:
            for q in range(Q):
                if self.tiles1[r][q]:
                    cause = yield from self.launch(r, 1, cause)
                    cause = yield from self.gemm_kernel(r, 1, self.tiles1[r][q], cause)
                    cause = yield from self.launch(r, 1, cause)
                    cause = yield from self.memory_kernel(r, "topk_reduce", 1,
                                                          (ch[q].rows + ch[q].sends) * self.row_bytes, cause)
                self.reduced[r][q].succeed(cause)
            for q in range(Q):
                ev = self.combine[q].done[r]
                if ev.callbacks is not None:
                    yield ev
                    cause = ev.value
            cause = yield from self.launch(r, 1, cause)
            cause = yield from self.memory_kernel(r, "combine_reduce", 1, self.combine_bytes[r], cause)
        self.end[r] = env.now

    def _comm_stream(self, r: int):
        if self.do_l0:
            ev = self.permuted[r]
            if ev.callbacks is not None:
                yield ev
            cause = ev.value
            for q in range(self.Q):
                done = self.dispatch[q].join(r, cause)
                yield done
                cause = done.value
        if self.do_l1:
            for q in range(self.Q):
                ev = self.reduced[r][q]
                if ev.callbacks is not None:
                    yield ev
                yield self.combine[q].join(r, ev.value)
