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

from comet.core.events import TRACK_NCCL, K
from comet.core.plan import Plan
from sim.engine import SystemSim, grouped_gemm_tiles
from sim.hardware_model import INF
from sim.options import SimOptions
from sim.workload import chunk_work


class _Collective:
    """One NCCL-style collective over all ranks: `pair_bytes[s][d]` bytes from rank s to rank d."""

    def __init__(self, sim: StagedSim, kind: str, layer: int, pair_bytes: list[list[float]]):
        self.sim, self.kind, self.layer, self.pair = sim, kind, layer, pair_bytes
        W = sim.W
        env = sim.env
        self.joined = [None] * W  # (time, cause) when each rank joins
        self.n_joined = 0
        self.done = [env.event() for _ in range(W)]

    def join(self, r: int, cause: int):
        """Rank r joins; returns the event that fires (value: record index) when its part is done."""
        self.joined[r] = (self.sim.env.now, cause)
        self.n_joined += 1
        if self.n_joined == self.sim.W:
            self.sim.env.process(self._run())
        return self.done[r]

    def _run(self):
        sim = self.sim
        env, net, W = sim.env, sim.net, sim.W
        t0 = env.now
        last = max(range(W), key=lambda q: (self.joined[q][0], q))
        last_cause = self.joined[last][1]
        fixed = []
        for r in range(W):
            tj, c = self.joined[r]
            if tj < t0:
                c = sim.record(r, TRACK_NCCL, K["sync_wait"], self.layer, tj, t0, cause=last_cause)
            fixed.append(c)
        yield env.timeout(sim.hw.collective_overhead_us)
        t1 = env.now
        fixed = [sim.record(r, TRACK_NCCL, K["collective_fixed"], self.layer, t0, t1, cause=fixed[r])
                 for r in range(W)]
        pending = [0] * W
        lat = [0.0] * W
        sent = [0.0] * W
        flows = []
        for s in range(W):
            for d in range(W):
                b = self.pair[s][d]
                if s != d and b > 0:
                    flows.append((s, d, net.transfer(s, d, b, INF)))
                    pending[s] += 1
                    pending[d] += 1
                    sent[s] += b
                    for q in (s, d):
                        lat[q] = max(lat[q], net.latency_us(s, d))
        for r in range(W):
            if pending[r] == 0:
                self._finish(r, t1, fixed[r], sent[r])
        for s, d, ev in flows:
            if ev.callbacks is not None:
                yield ev
            for q in (s, d):
                pending[q] -= 1
                if pending[q] == 0:
                    env.process(self._land(q, t1, lat[q], fixed[q], sent[q]))

    def _land(self, r, t1, lat, cause, sent):
        yield self.sim.env.timeout(lat)
        self._finish(r, t1, cause, sent)

    def _finish(self, r, t1, cause, sent):
        idx = self.sim.record(r, TRACK_NCCL, K[self.kind], self.layer, t1, self.sim.env.now, sent, cause=cause)
        self.done[r].succeed(idx)


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
        self.dispatch = [_Collective(self, "dispatch", 0, [[self.chunks[d][q].recv_bytes_W[s] for d in range(W)]
                                                           for s in range(W)]) for q in range(Q)]
        self.combine = [_Collective(self, "combine", 1, [[self.chunks[s][q].send_bytes_W[d] for d in range(W)]
                                                         for s in range(W)]) for q in range(Q)]
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
