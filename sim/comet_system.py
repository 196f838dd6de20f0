"""The `comet` system: the Plan's fused, fine-grained schedule, one SimPy process per thread block.

Per rank, per layer, one persistent kernel of `sms` blocks (the paper's mechanism 3, docs/PAPER_NOTES.md):

layer0 (dispatch + grouped GEMM + activation in the epilogue), by `Policy.layer0_comm`:
  "blocks"      SMs [0, sms - nc_layer0) are compute blocks, the rest communication blocks. Communication
                block j pulls chunks j, j + nc, ... (the Plan's arrival order): a link latency, then the
                chunk's rows read at the source's egress and written at this rank's ingress, capped at
                `per_block_link_gbps`; then flag[source] += 1. When flag[s] reaches the Plan's
                `l0_chunks_per_src_W[s]`, the flag's event fires.
  "copy-engine" as the released Comet code and kernels/fused_layer0.py: a side stream copies each source
                rank's whole shard (every row it owns), in arrival order, one copy at a time at the copy
                engine's bandwidth (taking no SM), and fires flag[s] after it; the GEMM leaves
                `Policy.copy_engine_reserved_sms` SMs free.
  "direct"      all SMs compute; a tile loads its remote rows itself: its time is max(compute, link
                latency + the transfer of its remote rows at HardwareProfile.direct_read_gbps, by default the
                block's link cap; inf: the rows are local memory and cost only the compute). No flags.
  A compute block takes the next tile (atomic counter, or round-robin), waits on the flag events of the
  remote sources in its `l0_tile_src_mask_T` (rows of this rank are in place from the start), then holds
  its SM for the tile's time. With SimOptions.l0_tail_pct ("blocks"), the last tiles of the order go to a
  second GEMM launched once the pull kernel has ended, on the pull blocks' SMs (kernels/fused_layer0_gluon.py).

layer1 (grouped GEMM + top-k reduce + combine):
  compute blocks (sms - nc_layer1) walk the column-block-major tiles; each finished tile counts towards
  its column block, whose event fires at the Plan's `l1_tiles_per_col`. Communication blocks claim items
  one at a time, in column-block-major order (item = column block x send chunk), from a claim counter
  shared with the tail (Policy.l1_tail: once the GEMM has ended, a launch later, its sms - nc_layer1 SMs
  claim the items still left, as kernels/fused_layer1_gluon.py's tail kernel; the kernel runs two smaller
  programs per SM there, priced here as one block per SM at the profile's rates). Each waits for the column
  block, then reduces the chunk's rows (reading them at the block's share of `hbm_gbps`) and stores the partial sums to
  the owner: over the link at `per_block_link_gbps` (reads and the remote store overlap: the item takes
  max of the two), or into local memory when this rank owns the tokens, each item after a fixed
  `l1_item_overhead_us` (its chain of index loads). A push lands a link latency after its last byte.
combine (kernels/fused_layer1.py's combine_reduce, launched after the rank's layer1 kernel): the owner sums
  its tokens' partial-sum slots column block by column block, each column block once every partial sum of
  it has landed (memory-bound, whole GPU).

Every kernel pays `launch_overhead_us` before it starts. The layers follow each other per rank, with no
barrier across ranks (none is needed: each rank's layer1 reads only its own layer0 output).
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from comet.core.events import TRACK_COPY, TRACK_STREAM, K
from comet.core.plan import Plan
from comet.core.tile_split import tail_tiles
from sim.engine import Stepper, SystemSim, block_hbm_bytes_per_us
from sim.hardware_model import GBPS, copy_engine_gbps
from sim.options import SimOptions
from sim.workload import RankWork, plan_work, tile_memory_floor_us, tile_us

_K_GEMM0, _K_GEMM1, _K_PULL = K["gemm0"], K["gemm1"], K["pull"]
_K_SEND, _K_LOCAL, _K_DIRECT = K["reduce_send"], K["reduce_local"], K["gemm0_direct"]


class _Rank:
    """Mutable state of one rank during a simulation (flags, counters, arrivals at this owner)."""

    __slots__ = ("r", "w", "dur0", "dur1", "flag_ev", "flag_cnt", "l0_next", "l0_tail_next", "col_ev", "col_cnt",
                 "l1_next", "l1_item_next", "pending_in", "arrived_ev", "last_arrival", "last_arrival_idx", "_lists")

    def __init__(self, r: int, w: RankWork):
        self.r, self.w = r, w
        self.l0_next = 0
        self.l0_tail_next = 0  # layer0's tail GEMM's tile counter (SimOptions.l0_tail_pct)
        self.l1_next = 0
        self.l1_item_next = 0  # layer1's claim counter: items are claimed in column-block-major order
        ncol = w.incoming_items_WN1.shape[1]
        # per column block of this owner: partial sums still to land, and the last landing (time, record)
        self.pending_in = w.incoming_items_WN1.sum(0).tolist()
        self.arrived_ev = [None] * ncol
        self.last_arrival = [-math.inf] * ncol
        self.last_arrival_idx = [-1] * ncol
        self._lists: dict[str, list] = {}

    def listed(self, name: str) -> list:
        """RankWork's array `name` as a Python list, converted once per rank (every block walks it)."""
        v = self._lists.get(name)
        if v is None:
            v = self._lists[name] = getattr(self.w, name).tolist()
        return v


class CometSim(SystemSim):
    name = "comet"

    def __init__(self, plan: Plan, options: SimOptions, works: list[RankWork] | None = None):
        super().__init__(plan, options)
        pol, hw = plan.policy, self.hw
        self.works = works if works is not None else plan_work(plan)
        self.mode = pol.layer0_comm
        self.nc0 = pol.nc_layer0 if self.mode == "blocks" else 0
        self.nc1 = pol.nc_layer1
        self.l1_tail = pol.l1_tail
        self.dynamic = options.tile_schedule == "dynamic"
        self.block_cap_gbps = hw.per_block_link_gbps
        self.direct_cap_gbps = hw.direct_read_gbps or hw.per_block_link_gbps
        self.block_hbm = block_hbm_bytes_per_us(plan)
        self.ce_gbps = copy_engine_gbps(hw, options.copy_engine_gbps)
        self._check_blocks()
        self._latency_from: dict[int, list[float]] = {}
        padded = options.tile_rows == "padded"
        env = self.env
        self.ranks = []
        for r, w in enumerate(self.works):
            st = _Rank(r, w)
            st.dur0 = self._tile_times(0, w.l0_tile_rows_T, w.l0_tile_cols_T, w.l0_tile_expert_rows_T, padded)
            st.dur1 = self._tile_times(1, w.l1_tile_rows_T, w.l1_tile_cols_T, w.l1_tile_expert_rows_T, padded)
            st.flag_ev = [env.event() for _ in range(self.W)]
            st.flag_cnt = [0] * self.W
            for s in range(self.W):  # own rows are in place; sources with nothing to send are complete
                if s == r or (self.mode == "blocks" and w.l0_chunks_per_src_W[s] == 0) or (
                        self.mode == "copy-engine" and w.shard_bytes_W[s] == 0):
                    st.flag_ev[s].succeed(-1)
            ncol = plan.l1_col_blocks
            st.col_ev = [env.event() for _ in range(ncol)]
            st.col_cnt = [0] * ncol
            if w.l1_tiles_per_col == 0:
                for ev in st.col_ev:
                    ev.succeed(-1)
            st.arrived_ev = [env.event() for _ in range(ncol)]
            for c in range(ncol):
                if st.pending_in[c] == 0:
                    st.arrived_ev[c].succeed()
            self.ranks.append(st)
        N, bn = plan.model.hidden_N, pol.block_n1
        # the owner's combine bytes per column block (slots read + one row written, over the block's width)
        self.combine_col_bytes = [
            [(w.combine_read_bytes + w.combine_write_bytes) * min(bn, N - c * bn) / N for c in range(ncol)]
            for w in self.works]

    def _tile_times(self, layer: int, rows_T, cols_T, expert_rows_T, padded: bool) -> list[float]:
        """Compute time of each tile, no less than its share of the kernel's HBM traffic (SimOptions.memory_floor;
        the compute blocks of the layer, or every tile if fewer, share the bandwidth the communication blocks
        leave: each of them moves up to per_block_link_gbps through this GPU's memory)."""
        dur = tile_us(self.plan, layer, rows_T, cols_T, padded)
        if self.options.memory_floor and rows_T.size:
            nc = self.nc0 if layer == 0 else self.nc1
            comm_gbps = nc * self.block_cap_gbps if layer == 1 or self.mode == "blocks" else self.hw.link_gbps
            dur = np.maximum(dur, tile_memory_floor_us(self.plan, layer, rows_T, cols_T, expert_rows_T,
                                                       min(self.sms - nc, rows_T.size), comm_gbps))
        return dur.tolist()

    def _check_blocks(self) -> None:
        sms, pol = self.sms, self.plan.policy
        if self.do_l1:
            if self.nc1 < 1 and any(w.l1_item_dest_I.size for w in self.works):
                raise ValueError(
                    "comet layer1 needs at least one communication block: its top-k reduction and the sends "
                    "to the token owners run only on communication blocks, so with Policy.nc_layer1=0 the "
                    "layer can never finish; set nc_layer1 >= 1 (Comet's default is 28)")
            if self.nc1 >= sms:
                raise ValueError(f"Policy.nc_layer1={self.nc1} leaves no compute block of the {sms} SMs; "
                                 f"use nc_layer1 < {sms}")
        if self.do_l0 and self.mode == "blocks":
            if self.nc0 < 1 and any(w.l0_chunk_src_C.size for w in self.works):
                raise ValueError(
                    "comet layer0 with layer0_comm='blocks' needs at least one communication block to fetch "
                    "remote token rows; with Policy.nc_layer0=0 the tiles that need them wait forever; set "
                    "nc_layer0 >= 1 or use layer0_comm='copy-engine' or 'direct'")
            if self.nc0 >= sms:
                raise ValueError(f"Policy.nc_layer0={self.nc0} leaves no compute block of the {sms} SMs; "
                                 f"use nc_layer0 < {sms}")
        del pol

    # ------------------------------------------------------------------------------------ rank
    def rank_process(self, r: int):
        env, st = self.env, self.ranks[r]
        cause = -1
        if self.do_l0:
            cause = yield from self.launch(r, 0, cause)
            n_comp = self.sms - self.nc0
            if self.mode == "copy-engine":
                n_comp = max(1, self.sms - self.plan.policy.copy_engine_reserved_sms)
            n_tiles = len(st.dur0)
            tail_blocks, tail_tiles = self._l0_tail_split(n_tiles, n_comp)
            if self.mode == "direct":
                procs = [env.process(self._l0_direct_block(st, b, n_comp, cause)) for b in range(n_comp)]
            else:
                procs = [env.process(self._l0_compute_block(st, b, n_comp, cause, 0, n_tiles - tail_tiles))
                         for b in range(n_comp)]
            if self.mode == "blocks":
                comm = [env.process(self._l0_comm_block(st, j, cause)) for j in range(self.nc0)]
                if tail_blocks:
                    procs.append(env.process(self._l0_tail(st, comm, tail_blocks, n_tiles - tail_tiles, cause)))
                else:
                    procs += comm
            elif self.mode == "copy-engine":
                procs.append(env.process(self._l0_copy_stream(st, cause)))
            vals = yield env.all_of(procs)
            cause = self.last_of(vals.values(), cause)
            self.tile_events += len(st.dur0)
            if not self.fused_act:
                cause = yield from self.launch(r, 0, cause)
                cause = yield from self.memory_kernel(r, "activation", 0, st.w.rows * self.act_row_bytes, cause)
            self.l0_end[r] = env.now
        if self.do_l1:
            cause = yield from self.launch(r, 1, cause)
            n_comp = self.sms - self.nc1
            procs = [env.process(self._l1_compute_block(st, b, n_comp, cause)) for b in range(n_comp)]
            comm = [self._l1_comm_block(st, n_comp + j, cause) for j in range(self.nc1)]
            if self.l1_tail:  # once the GEMM has ended, its SMs take the items still unclaimed
                vals = yield env.all_of(procs)
                gemm_end = self.last_of(vals.values(), cause)
                gemm_end = yield from self.launch(r, 1, gemm_end)
                procs = [self._l1_comm_block(st, b, gemm_end) for b in range(n_comp)]
            vals = yield env.all_of(procs + comm)
            cause = self.last_of(vals.values(), cause)
            self.tile_events += len(st.dur1)
            cause = yield from self.launch(r, 1, cause)
            for c, nbytes in enumerate(self.combine_col_bytes[r]):
                ev = st.arrived_ev[c]
                if ev.callbacks is not None:
                    yield ev
                if st.last_arrival[c] > env.now:  # its last partial sum is still crossing the link
                    start = env.now
                    yield env.timeout(st.last_arrival[c] - env.now)
                    cause = self.record(r, TRACK_STREAM, K["arrival_wait"], 1, start, env.now,
                                        cause=st.last_arrival_idx[c])
                elif st.last_arrival_idx[c] >= 0 and st.last_arrival[c] > self.records[cause][5]:
                    cause = st.last_arrival_idx[c]
                cause = yield from self.memory_kernel(r, "combine_reduce", 1, nbytes, cause)
        self.end[r] = env.now

    # ------------------------------------------------------------------------------------ layer0
    def _l0_tail_split(self, n_tiles: int, n_comp: int) -> tuple[int, int]:
        """(blocks, tiles) of layer0's tail (SimOptions.l0_tail_pct, "blocks" only): min(nc_layer0, n_comp) blocks
        on the communication SMs, once every pull has ended, run the last tiles: pct of an even per-SM share,
        and the head's last few where they fit the tail's waves (comet.core.tile_split.tail_tiles, the kernel's
        arithmetic: kernels/fused_layer0_gluon.py)."""
        pct = self.options.l0_tail_pct
        if self.mode != "blocks" or not pct or self.nc0 < 1:
            return 0, 0
        blocks = min(self.nc0, n_comp)
        return blocks, tail_tiles(n_tiles, pct, n_comp, blocks)

    def _l0_tail(self, st: _Rank, comm: list, blocks: int, first: int, cause: int):
        """Layer0's tail: a GEMM launched on the communication stream after the pull kernel (all its blocks)
        has ended, its `blocks` blocks on the communication SMs taking tiles [first, T)."""
        vals = yield self.env.all_of(comm)
        cause = self.last_of(vals.values(), cause)
        cause = yield from self.launch(st.r, 0, cause)
        st.l0_tail_next = first
        procs = [self.env.process(self._l0_compute_block(st, j, blocks, cause, first, len(st.dur0), tail=True,
                                                         track=self.sms - self.nc0 + j)) for j in range(blocks)]
        vals = yield self.env.all_of(procs)
        return self.last_of(vals.values(), cause)

    def _l0_compute_block(self, st: _Rank, b: int, blocks: int, cause: int, first: int, n: int, tail: bool = False,
                          track: int | None = None):
        """Compute block b of `blocks` on SM `track` (default b): tiles [first, n) of the Plan's order, by the
        rank's counter (the main GEMM's, or the tail's) or round-robin."""
        env, rec = self.env, self.records
        timeout, append = env.timeout, rec.append
        srcs, dur, flags, r = st.w.l0_tile_srcs, st.dur0, st.flag_ev, st.r
        dynamic = self.dynamic
        sm = b if track is None else track
        t = first + b
        while True:
            if dynamic:
                if tail:
                    t = st.l0_tail_next
                    st.l0_tail_next = t + 1
                else:
                    t = st.l0_next
                    st.l0_next = t + 1
            if t >= n:
                return cause
            for s in srcs[t]:
                ev = flags[s]
                if ev.callbacks is not None:  # not yet processed: the rows are not all here
                    yield ev
                    cause = ev.value
            start = env.now
            yield timeout(dur[t])
            idx = len(rec)
            append((r, sm, _K_GEMM0, 0, start, env.now, 0.0, -1, cause))
            cause = idx
            if not dynamic:
                t += blocks

    def _l0_comm_block(self, st: _Rank, j: int, cause: int):
        env, net, rec = self.env, self.net, self.records
        w, r = st.w, st.r
        src, nbytes, per_src = st.listed("l0_chunk_src_C"), st.listed("l0_chunk_bytes_C"), w.l0_chunks_per_src_W
        track = self.sms - self.nc0 + j
        for i in range(j, len(src), self.nc0):
            s = src[i]
            start = env.now
            yield env.timeout(net.latency_us(s, r))
            yield net.transfer(s, r, nbytes[i], self.block_cap_gbps)
            idx = len(rec)
            rec.append((r, track, _K_PULL, 0, start, env.now, nbytes[i], s, cause))
            cause = idx
            st.flag_cnt[s] += 1
            if st.flag_cnt[s] == per_src[s]:
                st.flag_ev[s].succeed(idx)
        return cause

    def _l0_copy_stream(self, st: _Rank, cause: int):
        env, net, r, W = self.env, self.net, st.r, self.W
        for p in range(1, W):
            s = (r + p) % W
            nbytes = float(st.w.shard_bytes_W[s])
            if nbytes <= 0:
                continue
            start = env.now
            yield env.timeout(net.latency_us(s, r))
            yield net.transfer(s, r, nbytes, self.ce_gbps)
            cause = self.record(r, TRACK_COPY, K["copy"], 0, start, env.now, nbytes, s, cause)
            st.flag_ev[s].succeed(cause)
        return cause

    def _l0_direct_block(self, st: _Rank, b: int, blocks: int, cause: int):
        env, net, rec = self.env, self.net, self.records
        w, r, dur = st.w, st.r, st.dur0
        srcs, blk, src_rows = w.l0_tile_srcs, st.listed("l0_tile_block_T"), w.l0_block_src_rows
        n, dynamic, row_bytes = len(dur), self.dynamic, self.row_bytes
        t = b
        while True:
            if dynamic:
                t = st.l0_next
                st.l0_next = t + 1
            if t >= n:
                return cause
            start = env.now
            remote = srcs[t] if self.direct_cap_gbps != math.inf else ()  # inf: rows already local memory
            nbytes = 0.0
            if remote:
                cap = self.direct_cap_gbps / len(remote)
                evs = []
                for s in remote:
                    sb = float(src_rows[blk[t], s]) * row_bytes
                    nbytes += sb
                    evs.append(net.transfer(s, r, sb, cap))
                for ev in evs:
                    if ev.callbacks is not None:
                        yield ev
                lat = max(net.latency_us(s, r) for s in remote)
                end = max(start + dur[t], env.now + lat)
            else:
                end = start + dur[t]
            if end > env.now:
                yield env.timeout(end - env.now)
            idx = len(rec)
            rec.append((r, b, _K_DIRECT, 0, start, env.now, nbytes, -1, cause))
            cause = idx
            if not dynamic:
                t += blocks

    # ------------------------------------------------------------------------------------ layer1
    def _l1_compute_block(self, st: _Rank, b: int, blocks: int, cause: int):
        env, rec = self.env, self.records
        timeout, append = env.timeout, rec.append
        dur, col = st.dur1, st.listed("l1_tile_col_T")
        col_cnt, col_ev, per_col, r = st.col_cnt, st.col_ev, st.w.l1_tiles_per_col, st.r
        n, dynamic = len(dur), self.dynamic
        t = b
        while True:
            if dynamic:
                t = st.l1_next
                st.l1_next = t + 1
            if t >= n:
                return cause
            start = env.now
            yield timeout(dur[t])
            idx = len(rec)
            append((r, b, _K_GEMM1, 1, start, env.now, 0.0, -1, cause))
            cause = idx
            c = col[t]
            col_cnt[c] += 1
            if col_cnt[c] == per_col:
                col_ev[c].succeed(idx)
            if not dynamic:
                t += blocks

    def latency_from(self, r: int) -> list[float]:
        """The link latency from rank r to every rank (us), computed once per rank."""
        lat = self._latency_from.get(r)
        if lat is None:
            lat = self._latency_from[r] = [self.net.latency_us(r, d) for d in range(self.W)]
        return lat

    def _l1_comm_block(self, st: _Rank, track: int, cause: int) -> simpy.Event:
        """A communication block on SM `track`: it claims the rank's next unclaimed item until none is left.
        Returns the event that succeeds, with the block's last record, when it ends (as a process would)."""
        return _L1CommBlock(self, st, track, cause).done


class _L1CommBlock(Stepper):
    """One layer1 communication block (the module docstring's items), as callbacks: every wait is the wait a
    generator process would make at the same point (the same queue entries in the same order), without the
    generator, its Process and a Timeout per wait. Waits: the item's column block, its overhead, a local
    reduce, or the push over the link and then the rest of the read. What every item reads of the simulation
    is kept on the block (millions of items at 256 GPUs: a chain of attribute loads each is measurable)."""

    __slots__ = ("sim", "st", "track", "cause", "done", "i", "start_us", "arrival", "_claim", "_move", "_local_done",
                 "_read_done", "col", "dest", "rd", "wr", "transfer", "cap_gbps", "hbm", "overhead", "latency",
                 "records", "ranks")

    def __init__(self, sim: CometSim, st: _Rank, track: int, cause: int):
        super().__init__(sim.env, self._sent)
        self.sim, self.st, self.track, self.cause = sim, st, track, cause
        self.done = sim.env.event()
        self.col, self.dest = st.listed("l1_item_col_I"), st.listed("l1_item_dest_I")
        self.rd, self.wr = st.listed("l1_item_read_bytes_I"), st.listed("l1_item_write_bytes_I")
        self.transfer, self.cap_gbps, self.hbm = sim.net.transfer, sim.block_cap_gbps, sim.block_hbm
        self.overhead, self.latency = sim.hw.l1_item_overhead_us, sim.latency_from(st.r)
        self.records, self.ranks = sim.records, sim.ranks
        self._claim, self._move = [self._claim_next], [self._move_bytes]
        self._local_done, self._read_done = [self._reduced_locally], [self._read_through]
        self.start(self._claim)

    def _claim_next(self, _event=None) -> None:
        """Claim the next item; wait for its column block if the GEMM has not finished it."""
        st = self.st
        i = st.l1_item_next
        if i >= len(self.col):
            self.done.succeed(self.cause)
            return
        st.l1_item_next = i + 1
        self.i = i
        ev = st.col_ev[self.col[i]]
        if ev.callbacks is not None:  # not yet processed: the column block's tiles are not all done
            ev.callbacks.append(self._column_ready)
        else:
            self._begin()

    def _column_ready(self, ev) -> None:
        self.cause = ev._value
        self._begin()

    def _begin(self) -> None:
        self.start_us = self.env._now
        if self.overhead:  # the item's dependent index loads and signal, before its bytes move
            self.wait(self.overhead, self._move)
        else:
            self._move_bytes()

    def _move_bytes(self, _event=None) -> None:
        i, r = self.i, self.st.r
        d = self.dest[i]
        if d == r:
            self.wait((self.rd[i] + self.wr[i]) / self.hbm, self._local_done)
        else:
            self.transfer(r, d, self.wr[i], self.cap_gbps, self)  # then _sent

    def _reduced_locally(self, _event) -> None:
        r = self.st.r
        rec = self.records
        idx = len(rec)
        rec.append((r, self.track, _K_LOCAL, 1, self.start_us, self.env._now, self.wr[self.i], r, self.cause))
        self.cause = idx
        self._claim_next()

    def _sent(self, _event) -> None:
        """The push's last byte has left: it lands a link latency later; the block is done once its read is."""
        now = self.env._now
        i = self.i
        self.arrival = now + self.latency[self.dest[i]]
        t_read = self.start_us + self.rd[i] / self.hbm
        if t_read > now:
            self.wait(t_read - now, self._read_done)
        else:
            self._read_through()

    def _read_through(self, _event=None) -> None:
        i = self.i
        d = self.dest[i]
        rec = self.records
        idx = len(rec)
        rec.append((self.st.r, self.track, _K_SEND, 1, self.start_us, self.env._now, self.wr[i], d, self.cause))
        o, c, arrival = self.ranks[d], self.col[i], self.arrival
        if arrival > o.last_arrival[c]:
            o.last_arrival[c], o.last_arrival_idx[c] = arrival, idx
        o.pending_in[c] -= 1
        if o.pending_in[c] == 0:
            o.arrived_ev[c].succeed()
        self.cause = idx
        self._claim_next()


__all__ = ["CometSim", "GBPS"]
