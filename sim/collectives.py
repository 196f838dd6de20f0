"""NCCL collectives over a group of ranks, as the paper's baselines run them (sim/megatron.py,
sim/pipelined_moe.py).

A collective is one NCCL kernel per member rank. Rank r's kernel starts when r joins (`join`) and holds
`HardwareProfile.nccl_sms` SMs of r from then until r's part is done: NCCL's CTAs spin while they wait for the
peers, and a GEMM running beside them cannot use those SMs (`NcclSMs`). Once every member has joined (the wait
is recorded as `sync_wait`), the collective pays `collective_overhead_us` (`collective_fixed`: launch, protocol
handshakes; measured on H200, see the profile's sources), then moves every (source, destination) pair's bytes at
once through the shared links at the full link rate (NCCL drives the links with all its channels). So the time
of a collective of b bytes per rank is the latency/bandwidth curve fixed + b / link_gbps, measured on H200 to
within 15% from 1 to 256 MiB (docs/GPU_FACTS.md). A rank's part ends when its own sends and receives are
through, plus one link latency.

Pair bytes are a dict {(src, dst): bytes}; all-gather, reduce-scatter and all-to-all differ only in them
(a ring moves the same bytes per rank as the direct pairs).
"""

from __future__ import annotations

import simpy

from comet.core.events import TRACK_NCCL, K
from sim.hardware_model import INF


class NcclSMs:
    """Per rank: how many NCCL kernels run now, and an event that fires when the last one ends. GEMM blocks on
    the top `nccl_sms` SMs take no new tile while one runs (`wait_free`)."""

    def __init__(self, env: simpy.Environment, world: int, nccl_sms: int, sms: int):
        self.env = env
        self.first_gated = sms - nccl_sms  # blocks from this index share their SM with NCCL's CTAs
        self.active = [0] * world
        self.free = [env.event() for _ in range(world)]

    def acquire(self, r: int) -> None:
        self.active[r] += 1

    def release(self, r: int) -> None:
        self.active[r] -= 1
        if self.active[r] == 0:
            ev, self.free[r] = self.free[r], self.env.event()
            ev.succeed()

    def gated(self, b: int) -> bool:
        return b >= self.first_gated


class GroupCollective:
    """One NCCL collective over `members`; `pair_bytes[(s, d)]` bytes go from s to d. `kind` names the
    transfer phase's record ("dispatch", "combine" or "metadata")."""

    def __init__(self, sim, kind: str, layer: int, members: list[int], pair_bytes: dict[tuple[int, int], float],
                 nccl: NcclSMs | None = None):
        bad = [(s, d) for s, d in pair_bytes if s not in members or d not in members]
        if bad:
            raise ValueError(f"collective over ranks {members}: pairs {bad[:3]} leave the group")
        self.sim, self.kind, self.layer, self.members = sim, kind, layer, list(members)
        self.pair = {sd: float(b) for sd, b in sorted(pair_bytes.items()) if b > 0 and sd[0] != sd[1]}
        self.nccl = nccl
        self.joined: dict[int, tuple[float, int]] = {}
        self.done = {r: sim.env.event() for r in self.members}

    def join(self, r: int, cause: int) -> simpy.Event:
        """Rank r launches its part; the event fires (value: r's record index) when r's part is done."""
        if r in self.joined:
            raise RuntimeError(f"rank {r} joined the same {self.kind} collective twice (a simulator bug)")
        self.joined[r] = (self.sim.env.now, cause)
        if self.nccl is not None:
            self.nccl.acquire(r)
        if len(self.joined) == len(self.members):
            self.sim.env.process(self._run())
        return self.done[r]

    def _run(self):
        sim = self.sim
        env, net = sim.env, sim.net
        t0 = env.now
        last = max(self.members, key=lambda q: (self.joined[q][0], q))
        last_cause = self.joined[last][1]
        fixed = {}
        for r in self.members:
            tj, c = self.joined[r]
            if tj < t0:
                c = sim.record(r, TRACK_NCCL, K["sync_wait"], self.layer, tj, t0, cause=last_cause)
            fixed[r] = c
        yield env.timeout(sim.hw.collective_overhead_us)
        t1 = env.now
        fixed = {r: sim.record(r, TRACK_NCCL, K["collective_fixed"], self.layer, t0, t1, cause=fixed[r])
                 for r in self.members}
        pending = dict.fromkeys(self.members, 0)
        lat = dict.fromkeys(self.members, 0.0)
        sent = dict.fromkeys(self.members, 0.0)
        flows = []
        for (s, d), b in self.pair.items():
            flows.append((s, d, net.transfer(s, d, b, INF)))
            pending[s] += 1
            pending[d] += 1
            sent[s] += b
            for q in (s, d):
                lat[q] = max(lat[q], net.latency_us(s, d))
        for r in self.members:
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
        if self.nccl is not None:
            self.nccl.release(r)
        self.done[r].succeed(idx)


def all_gather_pairs(members: list[int], bytes_of: dict[int, float]) -> dict[tuple[int, int], float]:
    """All-gather: every member's `bytes_of[s]` go to every other member."""
    return {(s, d): bytes_of[s] for s in members for d in members if s != d}


def reduce_scatter_pairs(members: list[int], bytes_of: dict[int, float]) -> dict[tuple[int, int], float]:
    """Reduce-scatter: every member sends member d its partial sums of d's part (`bytes_of[d]`)."""
    return {(s, d): bytes_of[d] for s in members for d in members if s != d}


__all__ = ["GroupCollective", "NcclSMs", "all_gather_pairs", "reduce_scatter_pairs"]
