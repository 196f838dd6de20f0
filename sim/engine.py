"""What every simulated system shares: the SimPy environment, the link network, the event list, the
per-rank milestones, and the whole-GPU steps (a launch gap, a memory-bound kernel, a GEMM kernel whose
blocks pull tiles from a counter).

A system subclasses `SystemSim`, writes one process per rank (`rank_process`), and `run()` executes it
and checks that every rank finished: a schedule that cannot make progress raises instead of hanging.
"""

from __future__ import annotations

import gc
import heapq
import math

import numpy as np
import simpy

from comet.core.events import CATEGORY, TRACK_STREAM, K
from comet.core.plan import Plan
from sim.hardware_model import GBPS, LinkNetwork, hbm_us
from sim.independent_ports import IndependentPortsNetwork
from sim.options import SimOptions
from sim.workload import tile_memory_floor_us, tile_us

NORMAL, URGENT = simpy.events.NORMAL, simpy.events.URGENT


class Stepper:
    """A process written as callbacks instead of a generator: what is left of a SimPy process once the
    generator, its Process and one Timeout per wait are gone (a few microseconds per wait, and layer1's
    communication blocks wait millions of times at 256 GPUs).

    The object is its own queue entry: `wait(delay, then)` puts it on the environment's queue exactly as
    `env.timeout(delay)` would (same time, priority and sequence number, so the run is the same event for
    event), and the run calls `then` when it comes due. `succeed(value)` does the same at the current time
    with `then_ready`, so the object can stand for the event of a network transfer. A subclass waits for
    one thing at a time (it is on the queue at most once)."""

    __slots__ = ("env", "callbacks", "_value", "_queue", "_eid", "_ready")
    _ok = True  # what the SimPy run loop checks after the callbacks: never a failed event

    def __init__(self, env: simpy.Environment, then_ready):
        self.env, self.callbacks, self._value = env, None, None
        self._queue, self._eid = env._queue, env._eid
        self._ready = [then_ready]

    def start(self, then: list) -> None:
        """Begin at this instant, before this instant's ordinary events: as env.process(...) does."""
        self.callbacks = then
        heapq.heappush(self._queue, (self.env._now, URGENT, next(self._eid), self))

    def wait(self, delay: float, then: list) -> None:
        """Call then[0](self) `delay` from now (as `yield env.timeout(delay)`)."""
        self.callbacks = then
        heapq.heappush(self._queue, (self.env._now + delay, NORMAL, next(self._eid), self))

    def succeed(self, value=None) -> None:
        """As Event.succeed: call the `then_ready` callback once the run reaches this point of the instant."""
        self._value = value
        self.callbacks = self._ready
        heapq.heappush(self._queue, (self.env._now, NORMAL, next(self._eid), self))

    def fire(self, value=None) -> None:
        """succeed(value) and its processing at once: what the run does next when the queue has nothing
        else at this instant (sim.independent_ports.fire_now)."""
        self._value = value
        self.callbacks = None
        for callback in self._ready:
            callback(self)


def run_until_empty(env: simpy.Environment, net=None) -> None:
    """`env.run()` (no `until`): SimPy's step loop, event for event, without a method call and an exception
    handler per event (millions of events at 256 GPUs). With a network that keeps its next wake-up beside the
    queue (sim.independent_ports), that wake-up runs where its queue entry would have come."""
    queue, pop = env._queue, heapq.heappop
    beside = net is not None and getattr(net, "wake_beside_queue", None) is False
    if beside:
        net.wake_beside_queue = True
        wake = net.wake
    try:
        while True:
            if beside:
                key = net.wake_key
                if key is not None and (not queue or key < queue[0]):  # (time, priority, sequence): never a tie
                    net.wake_key = None
                    env._now = key[0]
                    wake()
                    continue
            if not queue:
                return
            env._now, _, _, event = pop(queue)
            callbacks, event.callbacks = event.callbacks, None
            for callback in callbacks:
                callback(event)
            if not event._ok and not hasattr(event, "_defused"):  # a failed event nobody handled: raise, as SimPy
                exc = type(event._value)(*event._value.args)
                exc.__cause__ = event._value
                raise exc
    finally:
        if beside:
            net.wake_beside_queue = False


class SystemSim:
    """Base of the simulated systems. Milestones per rank (us): `l0_end` (its layer0 work done),
    `end` (its whole simulated part done). `records` is the shared event list (see comet/core/events.py)."""

    name = "?"

    def __init__(self, plan: Plan, options: SimOptions):
        self.plan = plan
        self.options = options
        self.hw = plan.hardware
        self.W = plan.world_size
        self.sms = self.hw.sms
        self.env = simpy.Environment()
        self.link_model = options.link_model_for(self.hw.nodes(self.W))
        network = IndependentPortsNetwork if self.link_model == "independent-ports" else LinkNetwork
        self.net = network(self.env, plan.parallel, self.hw, record_rates=options.record)
        self.records: list[tuple] = []
        self.do_l0 = options.layers in ("both", "layer0")
        self.do_l1 = options.layers in ("both", "layer1")
        self.l0_end = [math.nan] * self.W
        self.end = [math.nan] * self.W
        self.tile_events = 0
        self.fused_act = options.fused_activation(self.name)
        model = plan.model
        self.row_bytes = model.hidden_N * model.dtype_bytes
        # bytes of one layer0-output row: GEMM output (K/TP, or 2K/TP for swiglu) read, activation written
        cols0 = model.layer0_cols // plan.parallel.tp
        self.act_row_bytes = (cols0 + plan.ffn_local) * model.dtype_bytes

    # ------------------------------------------------------------------------------------ driver
    def rank_process(self, r: int):  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self) -> None:
        for r in range(self.W):
            self.env.process(self.rank_process(r))
        # The run allocates millions of events beside millions of live records and flows; the cyclic garbage
        # collector would rescan the live ones again and again (at 256 GPUs most of the run's time). The run's
        # own garbage is freed by reference counts, what cycles it leaves by the collection after it.
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            run_until_empty(self.env, self.net)
        finally:
            if was_enabled:
                gc.enable()
        stuck = [r for r in range(self.W) if math.isnan(self.end[r])]
        if stuck:
            raise RuntimeError(f"{self.name}: ranks {stuck} never finished (simulated time "
                               f"{self.env.now:.1f} us, {self.net.in_flight()} transfers in flight): the "
                               f"schedule cannot make progress; this is a simulator bug, please report it")

    # ------------------------------------------------------------------------------------ helpers
    def record(self, r, track, kind, layer, start, end, nbytes=0.0, peer=-1, cause=-1) -> int:
        idx = len(self.records)
        self.records.append((r, track, kind, layer, start, end, nbytes, peer, cause))
        return idx

    def launch(self, r: int, layer: int, cause: int):
        """A kernel-launch gap on rank r's stream; returns (as the generator's value) its record."""
        start = self.env.now
        yield self.env.timeout(self.hw.launch_overhead_us)
        return self.record(r, TRACK_STREAM, K["launch"], layer, start, self.env.now, cause=cause)

    def memory_kernel(self, r: int, kind: str, layer: int, nbytes: float, cause: int):
        """A memory-bound kernel on all SMs: `nbytes` (read + written) at `hbm_gbps`."""
        start = self.env.now
        yield self.env.timeout(hbm_us(nbytes, self.hw))
        return self.record(r, TRACK_STREAM, K[kind], layer, start, self.env.now, nbytes, cause=cause)

    def last_of(self, procs_values, fallback: int) -> int:
        """The record (of those the blocks returned) that ends last: the kernel's end, for causes."""
        best, best_end = fallback, -1.0
        for idx in procs_values:
            if idx >= 0 and self.records[idx][5] > best_end:
                best, best_end = idx, self.records[idx][5]
        return best

    def gemm_kernel(self, r: int, layer: int, dur_T: list[float], cause: int, blocks: int | None = None,
                    nccl=None):
        """A GEMM kernel without dependencies: `blocks` (default: all SMs) blocks take the tiles in order
        (atomic counter, or round-robin with options.tile_schedule="static"). Returns the last record.
        `nccl` (sim.collectives.NcclSMs): blocks on the SMs NCCL's kernels hold take no tile while one runs."""
        blocks = self.sms if blocks is None else blocks
        counter = [0]
        kind = K["gemm0" if layer == 0 else "gemm1"]
        procs = [self.env.process(self._gemm_block(r, b, blocks, layer, kind, dur_T, counter, cause,
                                                   nccl if nccl is not None and nccl.gated(b) else None))
                 for b in range(blocks)]
        vals = yield self.env.all_of(procs)
        self.tile_events += len(dur_T)
        return self.last_of(vals.values(), cause)

    def _gemm_block(self, r, b, blocks, layer, kind, dur_T, counter, cause, nccl=None):
        env, rec = self.env, self.records
        timeout, append = env.timeout, rec.append
        n = len(dur_T)
        dynamic = self.options.tile_schedule == "dynamic"
        t = b
        while True:
            while nccl is not None and nccl.active[r] and (counter[0] if dynamic else t) < n:
                yield nccl.free[r]  # this SM is NCCL's while a collective runs on rank r
            if dynamic:
                t = counter[0]
                counter[0] = t + 1
            if t >= n:
                return cause
            start = env.now
            yield timeout(dur_T[t])
            idx = len(rec)
            append((r, b, kind, layer, start, env.now, 0.0, -1, cause))
            cause = idx
            if not dynamic:
                t += blocks

def grouped_gemm_tiles(plan: Plan, layer: int, rows_E: np.ndarray, padded: bool, memory_floor: bool = True,
                       other_hbm_gbps: float = 0.0) -> list[float]:
    """Tile times of a plain grouped GEMM (expert-major: each expert's row blocks, all column blocks)
    over `rows_E` rows per local expert; the baselines' GEMM kernels. `memory_floor`: no tile faster than
    its share of the kernel's HBM traffic (sim.workload.tile_memory_floor_us, all SMs busy or every tile),
    of what `other_hbm_gbps` (a collective running beside it) leaves."""
    pol = plan.policy
    bm = pol.block_m
    bn = pol.block_n0 if layer == 0 else pol.block_n1
    total = plan.ffn_local if layer == 0 else plan.model.hidden_N
    ncol = math.ceil(total / bn)
    rows, experts = [], []
    for n in rows_E.tolist():
        full, rest = divmod(int(n), bm)
        rows.extend([bm] * full + ([rest] if rest else []))
        experts.extend([n] * (full + (1 if rest else 0)))
    if not rows:
        return []
    rows_T = np.repeat(np.asarray(rows, dtype=np.int64), ncol)
    cols_T = np.tile(np.minimum(bn, total - np.arange(ncol) * bn), len(rows))
    dur = tile_us(plan, layer, rows_T, cols_T, padded)
    if memory_floor:
        expert_rows_T = np.repeat(np.asarray(experts, dtype=np.int64), ncol)
        dur = np.maximum(dur, tile_memory_floor_us(plan, layer, rows_T, cols_T, expert_rows_T, rows_T.size,
                                                   other_hbm_gbps))
    return dur.tolist()


def block_hbm_bytes_per_us(plan: Plan) -> float:
    """One block's share of device-memory bandwidth (bytes/us): hbm_gbps / SMs."""
    return plan.hardware.hbm_gbps / plan.hardware.sms * GBPS


__all__ = ["SystemSim", "grouped_gemm_tiles", "block_hbm_bytes_per_us", "CATEGORY"]
