"""NCCL collectives over a group of ranks, as the paper's baselines run them (sim/megatron.py,
sim/pipelined_moe.py).

A collective is one NCCL kernel per member rank. Rank r's kernel starts when r joins (`join`) and holds
`HardwareProfile.nccl_sms` SMs of r from then until r's part is done: NCCL's CTAs spin while they wait for the
peers, and a GEMM running beside them cannot use those SMs (`NcclSMs`). Once every member has joined (the wait
is recorded as `sync_wait`), the collective pays its fixed cost, then moves every (source, destination) pair's
bytes at once through the shared links at the full link rate (NCCL drives the links with all its channels).

The fixed cost has two parts (HardwareProfile): NCCL's device-side latency `nccl_device_us` (handshakes and
protocol inside the kernel; nccl-tests time it at ~11 us for an all-to-all of 8 Hopper GPUs), recorded as part
of the communication event, since a profiler shows it as NCCL kernel time; and, for a collective issued through
torch.distributed by a framework whose stream waits on the host (`host_path=True`: Megatron-core after its host
sync), the rest of `collective_overhead_us` (the host's call path, measured back to back on H200), recorded as
`collective_fixed` (overhead) before it. Tutel and FasterMoE issue NCCL from C++ on a side stream ahead of the
GPU, and the bounds are ideal: `host_path=False`, the device latency only. So the time of a collective of b
bytes per rank is fixed + b / link_gbps; with the whole 55 us this is within 15% of torch's all_to_all_single
on H200 from 1 to 256 MiB (docs/GPU_FACTS.md). A rank's part ends when its own sends and receives are through,
plus one link latency.

Pair bytes are a dict {(src, dst): bytes}; all-gather, reduce-scatter and all-to-all differ only in them
(a ring moves the same bytes per rank as the direct pairs).
"""

from __future__ import annotations

import simpy

from comet.core.events import TRACK_NCCL, K
from sim.hardware_model import INF


class NcclSMs:
    """Per rank: how many NCCL kernels run now, and an event that fires when the last one ends. GEMM blocks on
    the top `nccl_sms` SMs take no new tile while one runs (`wait_free`).

    When a collective may start on a rank (`priority`): a GEMM kernel's tiles are its CTAs, and the GPU hands out
    the CTAs of kernels on streams of equal priority in launch order, so an NCCL kernel launched while a GEMM still
    has tiles to hand out gets SMs only once that GEMM has handed out its last tile (it then runs in the GEMM's
    last wave, on the SMs the wave leaves free; NVIDIA/nccl issue 1431 reports the delay). Tutel's NCCL stream
    (torch's getStreamFromPool, tutel/custom/custom_kernel.cpp), FasterMoE's (cudaStreamCreateWithFlags,
    fastmoe cuda/stream_manager.cpp) and torch.distributed's are of default priority. priority=True: a
    high-priority NCCL stream, whose CTAs take SMs as the GEMM's running tiles end (a what-if)."""

    def __init__(self, env: simpy.Environment, world: int, nccl_sms: int, sms: int, priority: bool = False):
        self.env = env
        self.first_gated = sms - nccl_sms  # blocks from this index share their SM with NCCL's CTAs
        self.active = [0] * world
        self.free = [env.event() for _ in range(world)]
        self.priority = priority
        self.queued = [0] * world  # GEMM kernels of the rank with tiles not yet handed out
        self.drained = [env.event() for _ in range(world)]

    def feed(self, r: int, dur_T: list[float]) -> list[float]:
        """The tile durations of a GEMM kernel about to run on rank r, as a list that tells this rank when its last
        tile has been handed out (a block reads a tile's duration once, when it takes the tile)."""
        if self.priority or not dur_T:
            return dur_T
        self.queued[r] += 1
        return _TileFeed(dur_T, self, r)

    def _handed_out(self, r: int) -> None:
        self.queued[r] -= 1
        if self.queued[r] == 0:
            ev, self.drained[r] = self.drained[r], self.env.event()
            ev.succeed()

    def sm_ready(self, r: int):
        """An event that fires once an NCCL kernel launched now on rank r gets its SMs (None: at once)."""
        return self.drained[r] if self.queued[r] else None

    def acquire(self, r: int) -> None:
        self.active[r] += 1

    def release(self, r: int) -> None:
        self.active[r] -= 1
        if self.active[r] == 0:
            ev, self.free[r] = self.free[r], self.env.event()
            ev.succeed()

    def gated(self, b: int) -> bool:
        return b >= self.first_gated


class _TileFeed(list):
    """A GEMM's tile durations that call NcclSMs._handed_out once every tile has been read (taken by a block)."""

    def __init__(self, dur_T: list[float], nccl: NcclSMs, r: int):
        super().__init__(dur_T)
        self._left, self._nccl, self._r = len(dur_T), nccl, r

    def __getitem__(self, t):
        v = list.__getitem__(self, t)
        self._left -= 1
        if self._left == 0:
            self._nccl._handed_out(self._r)
        return v


class GroupCollective:
    """One NCCL collective over `members`; `pair_bytes[(s, d)]` bytes go from s to d. `kind` names the
    transfer phase's record ("dispatch", "combine" or "metadata"). host_path: the issuing framework's host call
    path is exposed (collective_overhead_us in all), else NCCL's device latency only (module docstring)."""

    def __init__(self, sim, kind: str, layer: int, members: list[int], pair_bytes: dict[tuple[int, int], float],
                 nccl: NcclSMs | None = None, host_path: bool = True):
        bad = [(s, d) for s, d in pair_bytes if s not in members or d not in members]
        if bad:
            raise ValueError(f"collective over ranks {members}: pairs {bad[:3]} leave the group")
        self.sim, self.kind, self.layer, self.members = sim, kind, layer, list(members)
        self.pair = {sd: float(b) for sd, b in sorted(pair_bytes.items()) if b > 0 and sd[0] != sd[1]}
        self.nccl = nccl
        hw = sim.hw
        self.device_us = hw.nccl_device_us
        self.host_us = hw.collective_overhead_us - self.device_us if host_path else 0.0
        self.joined: dict[int, tuple[float, int]] = {}
        self.done = {r: sim.env.event() for r in self.members}

    def join(self, r: int, cause: int) -> simpy.Event:
        """Rank r launches its part; the event fires (value: r's record index) when r's part is done. The kernel
        starts once it gets its SMs (NcclSMs.sm_ready: after the last tile of a GEMM running beside it)."""
        if r in self.joined:
            raise RuntimeError(f"rank {r} joined the same {self.kind} collective twice (a simulator bug)")
        self.joined[r] = None
        ready = self.nccl.sm_ready(r) if self.nccl is not None else None
        if ready is None:
            self._start(r, cause)
        else:
            ready.callbacks.append(lambda _ev: self._start(r, cause))
        return self.done[r]

    def _start(self, r: int, cause: int) -> None:
        self.joined[r] = (self.sim.env.now, cause)
        if self.nccl is not None:
            self.nccl.acquire(r)
        if all(v is not None for v in self.joined.values()) and len(self.joined) == len(self.members):
            self.sim.env.process(self._run())

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
        if self.host_us > 0:
            yield env.timeout(self.host_us)
            fixed = {r: sim.record(r, TRACK_NCCL, K["collective_fixed"], self.layer, t0, env.now, cause=fixed[r])
                     for r in self.members}
        t1 = env.now  # the communication record starts here: NCCL's device latency, then the bytes
        yield env.timeout(self.device_us)
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
