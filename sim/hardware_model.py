"""The hardware as the simulator sees it: links as ports shared fairly, memory bandwidth as shares.

Time is in microseconds everywhere; 1 GB/s = 1e3 bytes/us.

Ports. Every rank r has an NVLink (or PCIe, for `l20`) egress port and ingress port of `link_gbps` each;
the switch between them is non-blocking, so a transfer s -> d occupies only egress(s) and ingress(d).
Ranks on different nodes (`HardwareProfile.ranks_per_node`) talk through their NICs instead: nic_out(s)
and nic_in(d), `nic_gbps` each, with `nic_latency_us`.

Fair sharing (`LinkNetwork`). Transfers in flight form a fluid model: each has a rate cap (what the
communication block, copy engine or NCCL channel driving it can push; `inf` for none) and the ports
share their capacity max-min fairly (progressive filling: every unfrozen transfer's rate rises together
until it meets its cap or one of its ports saturates). Rates are recomputed whenever the set of
transfers changes, once per distinct simulated time (arrivals at one instant are batched), and every
transfer finishes exactly when its bytes are through. Everything is deterministic: no randomness, ties
resolved by transfer id.

This exact model costs a progressive filling over every port of a group at every event, which grows with
W^2 once NICs are saturated; across nodes the simulator runs sim.independent_ports instead (SimOptions.link_model
"auto"), whose events touch two ports only.

Latency is not part of a transfer here: callers add it where the real operation pays it (a pull waits
for its first bytes, a push lands `latency` after its last byte leaves).

    >>> import simpy
    >>> from comet.core.config import HardwareProfile, ParallelConfig
from sim.options import COPY_ENGINE_MEASURED_GBPS
    >>> env = simpy.Environment()
    >>> net = LinkNetwork(env, ParallelConfig(ep=2), HardwareProfile.from_name("h800"))
    >>> a, b = net.transfer(0, 1, 160e3), net.transfer(0, 1, 320e3)  # share egress(0): 80 GB/s each
    >>> env.run()
    >>> (a.value, b.value)  # finish times: a at 2 us, then b alone at 160 GB/s
    (2.0, 3.0)
"""

from __future__ import annotations

import bisect
import heapq
import math

import numpy as np
import simpy

from comet.core.config import HardwareProfile, ParallelConfig
from sim.options import COPY_ENGINE_MEASURED_GBPS

GBPS = 1e3  # bytes per microsecond in one GB/s
INF = math.inf
_REL = 1e-12  # relative slack when comparing fair-share levels
_DONE_BYTES = 1e-6  # a transfer with fewer bytes left than this is complete (float residue)

PORT_KINDS = ("egress", "ingress", "nic_out", "nic_in")


class _Class:
    """Transfers in flight with the same ports and cap: max-min fairness gives them one rate, so they are
    kept together. `served` is the bytes each of them has moved since the class was created (as of
    `LinkNetwork._t_rate`); a transfer that joined when it was x and carries b bytes is done when it
    reaches x + b (a heap of targets). `due` is when the heap's front finishes at the current rate."""

    __slots__ = ("key", "pa", "pb", "cap", "n", "rate", "served", "heap", "due", "stamp")

    def __init__(self, key, pa, pb, cap):
        self.key, self.pa, self.pb, self.cap = key, pa, pb, cap
        self.n, self.rate, self.served, self.heap, self.due, self.stamp = 0, 0.0, 0.0, [], INF, 0


def _class_key(c: _Class) -> tuple:
    return c.key


class _Late(simpy.events.Event):
    """An event processed after every ordinary event of the same instant (priority 2 > NORMAL): the rate
    recomputation runs once all processes woken at this instant have started their transfers."""

    def __init__(self, env: simpy.Environment, callback):
        super().__init__(env)
        self._ok, self._value = True, None
        self.callbacks.append(callback)
        env.schedule(self, 2)


class LinkNetwork:
    """Every rank's egress/ingress link ports and NIC ports; transfers share them max-min fairly.

    `transfer(src, dst, nbytes, cap_gbps)` returns a SimPy event that succeeds, with the simulated time,
    when the last byte is through. Counters, per port (index `kind * W + rank`, kinds in `PORT_KINDS`):
    `port_bytes` moved, `port_busy_us` time with a transfer in flight. `flows` logs every transfer as
    [id, src, dst, bytes, start_us, end_us]. With `record_rates`, `rate_log` keeps (time_us, ports, their
    rates in GB/s) at every recompute where some port's rate changed, only the ports that changed (every
    port in the first entry), for the Chrome trace's counter tracks and `sim.plots.link_rates`.

    Speed (the network is most of the comet system's simulation time): transfers with the same (ports,
    cap) always share one rate, so fair shares are computed over these classes (at most 4 W^2 per cap
    value) in plain Python, and a transfer's progress is its class's served bytes (no per-transfer
    update). Per-port transfer counts are kept incrementally. Rates are recomputed at most once per
    simulated instant, after every process woken at that instant has started its next transfers.
    """

    def __init__(self, env: simpy.Environment, parallel: ParallelConfig, hw: HardwareProfile,
                 record_rates: bool = False):
        self.env = env
        self.parallel = parallel
        self.W = W = parallel.world_size
        self.P = 4 * W
        self.port_cap = [hw.link_gbps * GBPS] * (2 * W) + [hw.nic_gbps * GBPS] * (2 * W)
        self.link_latency_us = hw.link_latency_us
        self.nic_latency_us = hw.nic_latency_us
        self._node = [hw.node_of(r) for r in range(W)]
        self._classes: dict[tuple, _Class] = {}
        self._active: list[_Class] = []  # classes with transfers in flight, sorted by key (cap first)
        self._at_port: list[list[_Class]] = [[] for _ in range(self.P)]  # active classes touching each port
        self._n_port = [0] * self.P  # transfers in flight per port
        self._caps: dict[float, int] = {}  # active classes per cap value
        self._port_rate: list[tuple[int, float]] = []  # (port, bytes/us) of ports in use
        self._new: list[tuple] = []
        self._t_rate = 0.0  # when rates and served bytes were last brought up to date
        self._recompute_pending = False
        self._version = 0
        self._n_in_flight = 0
        self._port_bytes = [0.0] * self.P
        self._port_busy = [0.0] * self.P
        self.flows: list[list] = []
        self.rate_log: list[tuple[float, np.ndarray, np.ndarray]] | None = [] if record_rates else None
        self._logged = [math.nan] * self.P  # each port's last logged rate (GB/s)
        self._logged_busy: list[int] = []  # ports in use at the last log
        self.updates = 0
        self._has_empty = False  # some active class has no transfer left (dropped at the next recompute)
        self._stamp = 0  # frozen marker of the current fair-share computation

    # ------------------------------------------------------------------------------------ topology
    def same_node(self, src: int, dst: int) -> bool:
        return self._node[src] == self._node[dst]

    def latency_us(self, src: int, dst: int) -> float:
        return self.link_latency_us if self._node[src] == self._node[dst] else self.nic_latency_us

    def ports(self, src: int, dst: int) -> tuple[int, int]:
        W = self.W
        return (src, W + dst) if self._node[src] == self._node[dst] else (2 * W + src, 3 * W + dst)

    @property
    def port_bytes(self) -> np.ndarray:
        return np.array(self._port_bytes)

    @property
    def port_busy_us(self) -> np.ndarray:
        return np.array(self._port_busy)

    def in_flight(self) -> int:
        return self._n_in_flight + len(self._new)

    def port_name(self, p: int) -> tuple[int, str]:
        return p % self.W, PORT_KINDS[p // self.W]

    # ------------------------------------------------------------------------------------ transfers
    def transfer(self, src: int, dst: int, nbytes: float, cap_gbps: float = INF, event=None) -> simpy.Event:
        """Move `nbytes` from rank src to rank dst (src != dst) at most at `cap_gbps`. Returns `event` (default: a
        new SimPy event), succeeded with the time when the last byte is through (anything with SimPy's
        `succeed(value)` will do: sim.engine.Stepper)."""
        env = self.env
        ev = env.event() if event is None else event
        fid = len(self.flows)
        self.flows.append([fid, src, dst, float(nbytes), env.now, math.nan])
        if nbytes <= 0:
            self.flows[fid][5] = env.now
            ev.succeed(env.now)
            return ev
        self._new.append((src, dst, float(nbytes), cap_gbps * GBPS, fid, ev))
        self._request_recompute()
        return ev

    def _request_recompute(self) -> None:
        if not self._recompute_pending:
            self._recompute_pending = True
            _Late(self.env, self._recompute)

    def _on_wake(self, event) -> None:
        """A class's front transfer is due: retire every transfer that is through."""
        if event.value != self._version:  # stale: rates changed since this wake-up was set
            return
        self.updates += 1
        now = self.env.now
        dt = now - self._t_rate
        retired = []
        for c in self._active:
            if c.due <= now + 1e-9:
                served = c.served + c.rate * dt
                h, tol = c.heap, _DONE_BYTES + c.rate * 1e-9
                while h and h[0][0] - served <= tol:
                    _, fid, ev = heapq.heappop(h)
                    retired.append((fid, ev, c))
        if not retired:  # float residue kept the front just short of done: re-arm the wake-up
            self._request_recompute()
            return
        retired.sort(key=lambda x: x[0])  # deterministic: by transfer id
        n_port, flows = self._n_port, self.flows
        self._has_empty = True
        for fid, ev, c in retired:
            c.n -= 1
            n_port[c.pa] -= 1
            n_port[c.pb] -= 1
            flows[fid][5] = now
            ev.succeed(now)
        self._n_in_flight -= len(retired)
        self._request_recompute()

    def _recompute(self, _event) -> None:
        """Bring served bytes up to now, drop empty classes, admit new transfers, recompute fair rates."""
        self._recompute_pending = False
        self.updates += 1
        env = self.env
        now = env.now
        dt = now - self._t_rate
        if dt > 0:
            for c in self._active:
                c.served += c.rate * dt
            pb, busy = self._port_bytes, self._port_busy
            for p, rate in self._port_rate:
                pb[p] += rate * dt
                busy[p] += dt
        self._t_rate = now
        if self._has_empty:
            self._has_empty = False
            for c in self._active:
                if c.n == 0:
                    self._at_port[c.pa].remove(c)
                    self._at_port[c.pb].remove(c)
                    self._caps[c.cap] -= 1
                    if not self._caps[c.cap]:
                        del self._caps[c.cap]
            self._active = [c for c in self._active if c.n]
        if self._new:
            classes, n_port = self._classes, self._n_port
            for src, dst, nbytes, cap, fid, ev in self._new:
                pa, pb = self.ports(src, dst)
                key = (cap, pa, pb)
                c = classes.get(key)
                if c is None:
                    c = classes[key] = _Class(key, pa, pb, cap)
                if c.n == 0:  # (re)activated: empty classes were dropped above
                    bisect.insort(self._active, c, key=_class_key)
                    self._at_port[pa].append(c)
                    self._at_port[pb].append(c)
                    self._caps[cap] = self._caps.get(cap, 0) + 1
                heapq.heappush(c.heap, (c.served + nbytes, fid, ev))
                c.n += 1
                n_port[pa] += 1
                n_port[pb] += 1
            self._n_in_flight += len(self._new)
            self._new = []
        self._fair_rates()
        if self.rate_log is not None:
            self._log_rates(now)
        self._version += 1
        if self._active:
            first = INF
            for c in self._active:
                c.due = now + (c.heap[0][0] - c.served) / c.rate
                if c.due < first:
                    first = c.due
            env.timeout(max(first - now, 0.0), value=self._version).callbacks.append(self._on_wake)

    def _log_rates(self, now: float) -> None:
        """Append (now, ports, GB/s) for the ports whose rate differs from the last logged one (every port at
        the first call): a dense row of 4 W rates per recompute would need ~57 GB at 256 GPUs."""
        logged, moved = self._logged, {}
        for p in self._logged_busy:
            moved[p] = 0.0  # in use at the last log; 0 unless in use now
        for p, rate in self._port_rate:
            moved[p] = rate / GBPS
        self._logged_busy = [p for p, _ in self._port_rate]
        if not self.rate_log:
            moved = {p: moved.get(p, 0.0) for p in range(self.P)}
        ports = sorted(p for p, v in moved.items() if logged[p] != v)
        if ports:
            for p in ports:
                logged[p] = moved[p]
            self.rate_log.append((now, np.array(ports, dtype=np.int64), np.array([moved[p] for p in ports])))

    def _fair_rates(self) -> None:
        """Max-min fair rates (bytes/us) of the active classes under their caps and the port capacities
        (progressive filling: raise every unfrozen rate together; freeze a class at its cap, or when one
        of its ports is saturated)."""
        act, cap_p, n_port = self._active, self.port_cap, self._n_port
        if not act:
            self._port_rate = []
            return
        ports = [p for p in range(self.P) if n_port[p]]
        if len(self._caps) == 1:
            cap = act[0].cap
            if all(n_port[p] * cap <= cap_p[p] * (1 + _REL) for p in ports):
                for c in act:  # no port oversubscribed: every transfer runs at its cap
                    c.rate = cap
                self._port_rate = [(p, n_port[p] * cap) for p in ports]
                return
            self._fill_one_cap(cap, ports)
        else:
            self._fill_general(ports)
        rate_p = [0.0] * self.P
        for c in act:
            x = c.n * c.rate
            rate_p[c.pa] += x
            rate_p[c.pb] += x
        self._port_rate = [(p, rate_p[p]) for p in ports]

    def _fill_one_cap(self, cap: float, ports: list[int]) -> None:
        """Progressive filling when every class has the same cap: freeze the classes of the port(s) with
        the lowest share, update their other ports, repeat until the lowest share reaches the cap."""
        left = list(self.port_cap)
        cnt = list(self._n_port)
        at_port = self._at_port
        self._stamp += 1
        stamp = self._stamp
        while ports:
            level = INF
            for p in ports:
                x = left[p] / cnt[p]
                if x < level:
                    level = x
            bound = level * (1 + _REL)
            if cap <= bound:
                break
            for p in [p for p in ports if left[p] / cnt[p] <= bound]:
                for c in at_port[p]:
                    if c.stamp == stamp:
                        continue
                    c.stamp = stamp
                    c.rate = level
                    n, x = c.n, c.n * level
                    left[c.pa] -= x
                    left[c.pb] -= x
                    cnt[c.pa] -= n
                    cnt[c.pb] -= n
            ports = [p for p in ports if cnt[p] > 0]
        for c in self._active:
            if c.stamp != stamp:
                c.rate = cap

    def _fill_general(self, ports: list[int]) -> None:
        """Progressive filling with mixed caps (classes sorted by cap: caps come in order)."""
        left = list(self.port_cap)
        cnt = list(self._n_port)
        live = self._active
        while live:
            level = min(left[p] / cnt[p] for p in ports)
            bound = level * (1 + _REL)
            if live[0].cap <= bound:  # freeze every class capped below the lowest port share
                k = 0
                while k < len(live) and live[k].cap <= bound:
                    c = live[k]
                    c.rate = c.cap
                    n, x = c.n, c.n * c.cap
                    left[c.pa] -= x
                    left[c.pb] -= x
                    cnt[c.pa] -= n
                    cnt[c.pb] -= n
                    k += 1
                live = live[k:]
            else:  # freeze every class on a port saturated at this level
                sat = {p for p in ports if left[p] / cnt[p] <= bound}
                keep = []
                for c in live:
                    if c.pa in sat or c.pb in sat:
                        c.rate = level
                        n, x = c.n, c.n * level
                        left[c.pa] -= x
                        left[c.pb] -= x
                        cnt[c.pa] -= n
                        cnt[c.pb] -= n
                    else:
                        keep.append(c)
                live = keep
            ports = [p for p in ports if cnt[p] > 0]


# ---------------------------------------------------------------------------------------- memory
def hbm_us(nbytes: float, hw: HardwareProfile, sms: int | None = None) -> float:
    """Time for `sms` SMs (default: all) to stream `nbytes` through device memory: a memory-bound
    kernel on the whole GPU gets `hbm_gbps`, a group of blocks gets its SMs' share of it."""
    share = hw.hbm_gbps if sms is None else hw.hbm_gbps * sms / hw.sms
    return nbytes / (share * GBPS)


def copy_engine_gbps(hw: HardwareProfile, override: float | None = None) -> float:
    """One copy engine's bandwidth: `override`, else min(link_gbps, 112 GB/s measured: docs/GPU_FACTS.md)."""
    return override if override is not None else min(hw.link_gbps, COPY_ENGINE_MEASURED_GBPS)
