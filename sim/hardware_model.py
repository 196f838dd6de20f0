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

Latency is not part of a transfer here: callers add it where the real operation pays it (a pull waits
for its first bytes, a push lands `latency` after its last byte leaves).

    >>> import simpy
    >>> from comet.core.config import HardwareProfile, ParallelConfig
    >>> env = simpy.Environment()
    >>> net = LinkNetwork(env, ParallelConfig(ep=2), HardwareProfile.from_name("h800"))
    >>> a, b = net.transfer(0, 1, 160e3), net.transfer(0, 1, 320e3)  # share egress(0): 80 GB/s each
    >>> env.run()
    >>> (a.value, b.value)  # finish times: a at 2 us, then b alone at 160 GB/s
    (2.0, 3.0)
"""

from __future__ import annotations

import heapq
import math

import numpy as np
import simpy

from comet.core.config import HardwareProfile, ParallelConfig
from sim.fair_share import REL as _REL
from sim.fair_share import fill_general, fill_one_cap
from sim.options import COPY_ENGINE_MEASURED_GBPS

GBPS = 1e3  # bytes per microsecond in one GB/s
INF = math.inf
_CHECK_REL = 1e-10  # relative slack of the bottleneck check (float sums of ~100 terms err by ~1e-14)
_DONE_BYTES = 1e-6  # a transfer with fewer bytes left than this is complete (float residue)

PORT_KINDS = ("egress", "ingress", "nic_out", "nic_in")


class _Class:
    """Transfers in flight with the same ports and cap: max-min fairness gives them one rate, so they are
    kept together. Served bytes (what each of them has moved since the class was created) are kept only
    when the rate changes: `served(now) = s0 + rate * (now - t0)`. A transfer that joined when the class had
    served x and carries b bytes is done when it reaches x + b (a heap of targets). `ver` dates the class's
    entry in the network's heap of due times."""

    __slots__ = ("key", "pa", "pb", "cap", "group", "n", "rate", "s0", "t0", "heap", "stamp", "ver", "new",
                 "active", "member")

    def __init__(self, key, pa, pb, cap, group):
        self.key, self.pa, self.pb, self.cap, self.group = key, pa, pb, cap, group
        self.n, self.rate, self.s0, self.t0, self.heap, self.stamp, self.ver = 0, 0.0, 0.0, 0.0, [], 0, 0
        self.new = False  # activated at the current instant (no rate yet)
        self.member = 0  # marker of the refill that includes it
        self.active = False  # in its group (it has transfers, or lost its last one at this instant)

    def served(self, now: float) -> float:
        return self.s0 + self.rate * (now - self.t0)

    def set_rate(self, now: float, rate: float) -> None:
        self.s0 += self.rate * (now - self.t0)
        self.t0, self.rate = now, rate


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
    [id, src, dst, bytes, start_us, end_us]. With `record_rates`, `rate_log` keeps, at every instant some
    port's rate changes, (time_us, those ports, their new rates in GB/s) (the Chrome trace's counter tracks).

    Speed (the network is most of the comet system's simulation time; see dev/LOG.md, 2026-12-03):
    - transfers with the same (ports, cap) share one rate, so fair shares are computed over these classes;
    - the ports form independent groups (each node's link ports; all NIC ports): a change refills only its
      group, and skips the fill where the answer is known without it (below);
    - a class's served bytes and a port's byte / busy counters are brought up to date only when its rate
      changes; a heap of due times finds the next transfer to finish (no per-instant pass over classes);
    - rates are recomputed at most once per simulated instant, after every process woken at that instant
      has started its next transfers.
    Shortcuts that are exact for max-min fairness with one cap in a group: a transfer leaving a class at its
    cap changes no other rate (it was nobody's bottleneck); a transfer joining a class at its cap (or a new
    class) whose two ports still have room for it at the cap runs at the cap and changes nothing else.
    Rates are then computed in a different order than a refill would, so results can differ from the
    earlier every-class-every-instant model by float rounding (~1e-16 relative): tests/test_link_model.py
    checks finish times against a per-transfer fluid reference to 1e-9.
    """

    local_min_classes = 64  # groups this small are refilled whole (cheaper than refilling around a change)

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
        self._nic_group = max(self._node) + 1
        self._classes: dict[tuple, _Class] = {}
        self._groups: list[dict[tuple, _Class]] = [{} for _ in range(self._nic_group + 1)]  # active classes
        self._group_caps: list[dict[float, int]] = [{} for _ in range(self._nic_group + 1)]  # classes per cap
        self._at_port: list[list[_Class]] = [[] for _ in range(self.P)]  # active classes touching each port
        self._n_port = [0] * self.P  # transfers in flight per port
        self._load = [0.0] * self.P  # bytes/us through each port now
        self._port_t0 = [0.0] * self.P  # when the port's counters were last brought up to date
        self._new: list[tuple] = []
        self._dirty: dict[int, list[_Class]] = {}  # group -> classes whose transfers changed this instant
        self._left_below_cap: set[int] = set()  # groups where a transfer left a class below its cap, this instant
        self._due: list[tuple] = []  # (due_us, seq, ver, class): when each class's front transfer finishes
        self._seq = 0
        self._recompute_pending = False
        self._version = 0
        self._n_in_flight = 0
        self._port_bytes = [0.0] * self.P
        self._port_busy = [0.0] * self.P
        self.flows: list[list] = []
        self.rate_log: list[tuple[float, np.ndarray, np.ndarray]] | None = [] if record_rates else None
        self.updates = 0
        self.fills = 0
        self._stamp = 0  # frozen marker of the current fair-share computation
        self._member = 0  # marker of the classes of the current refill

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
        now = self.env.now
        return np.array([b + r * (now - t) for b, r, t in zip(self._port_bytes, self._load, self._port_t0)])

    @property
    def port_busy_us(self) -> np.ndarray:
        now = self.env.now
        return np.array([b + (now - t if r > 0 else 0.0)
                         for b, r, t in zip(self._port_busy, self._load, self._port_t0)])

    def in_flight(self) -> int:
        return self._n_in_flight + len(self._new)

    def port_name(self, p: int) -> tuple[int, str]:
        return p % self.W, PORT_KINDS[p // self.W]

    # ------------------------------------------------------------------------------------ transfers
    def transfer(self, src: int, dst: int, nbytes: float, cap_gbps: float = INF) -> simpy.Event:
        """Move `nbytes` from rank src to rank dst (src != dst) at most at `cap_gbps`."""
        env = self.env
        ev = env.event()
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

    def _touch(self, c: _Class) -> None:
        d = self._dirty.get(c.group)
        if d is None:
            self._dirty[c.group] = [c]
        else:
            d.append(c)

    def _on_wake(self, event) -> None:
        """The front transfer of some class is due: retire every transfer that is through."""
        if event.value != self._version:  # stale: rates changed since this wake-up was set
            return
        self.updates += 1
        now = self.env.now
        due, retired = self._due, []
        while due and due[0][0] <= now + 1e-9:
            _, _, ver, c = heapq.heappop(due)
            if ver != c.ver:
                continue
            c.ver += 1  # its entry is used up; the recompute pushes the next one
            self._touch(c)
            served = c.served(now)
            h, tol = c.heap, _DONE_BYTES + c.rate * 1e-9
            while h and h[0][0] - served <= tol:
                _, fid, ev = heapq.heappop(h)
                retired.append((fid, ev, c))
        retired.sort(key=lambda x: x[0])  # deterministic: by transfer id
        n_port, flows = self._n_port, self.flows
        for fid, ev, c in retired:
            c.n -= 1
            n_port[c.pa] -= 1
            n_port[c.pb] -= 1
            if c.rate < c.cap:
                self._left_below_cap.add(c.group)
            flows[fid][5] = now
            ev.succeed(now)
        self._n_in_flight -= len(retired)
        self._request_recompute()  # also re-arms the wake-up where float residue kept a front short of done

    def _activate(self, c: _Class, now: float) -> None:
        self._groups[c.group][c.key] = c
        self._at_port[c.pa].append(c)
        self._at_port[c.pb].append(c)
        caps = self._group_caps[c.group]
        caps[c.cap] = caps.get(c.cap, 0) + 1
        c.set_rate(now, 0.0)
        c.new = c.active = True

    def _deactivate(self, c: _Class, now: float) -> None:
        del self._groups[c.group][c.key]
        self._at_port[c.pa].remove(c)
        self._at_port[c.pb].remove(c)
        caps = self._group_caps[c.group]
        caps[c.cap] -= 1
        if not caps[c.cap]:
            del caps[c.cap]
        c.set_rate(now, 0.0)
        c.active = False

    def _recompute(self, _event) -> None:
        """Admit new transfers, recompute the fair rates of the groups that changed, re-arm the wake-up."""
        self._recompute_pending = False
        self.updates += 1
        now = self.env.now
        if self._new:
            classes, n_port = self._classes, self._n_port
            for src, dst, nbytes, cap, fid, ev in self._new:
                pa, pb = self.ports(src, dst)
                key = (cap, pa, pb)
                c = classes.get(key)
                if c is None:
                    group = self._node[src] if pa < 2 * self.W else self._nic_group
                    c = classes[key] = _Class(key, pa, pb, cap, group)
                if not c.active:
                    self._activate(c, now)
                heapq.heappush(c.heap, (c.served(now) + nbytes, fid, ev))
                c.n += 1
                n_port[pa] += 1
                n_port[pb] += 1
                self._touch(c)
            self._n_in_flight += len(self._new)
            self._new = []
        changed_ports: dict[int, None] = {}
        touched: dict[int, _Class] = {}
        for g, cs in self._dirty.items():
            for c in cs:
                touched[id(c)] = c
            for c in cs:
                if c.n == 0 and c.active:
                    self._deactivate(c, now)
                    changed_ports[c.pa] = changed_ports[c.pb] = None
            self._rates_of_group(g, cs, now, touched, changed_ports)
        self._dirty = {}
        self._left_below_cap.clear()
        for c in touched.values():
            c.new = False
            c.ver += 1
            if c.n:
                self._seq += 1
                heapq.heappush(self._due, (now + (c.heap[0][0] - c.served(now)) / c.rate, self._seq, c.ver, c))
        self._port_loads(changed_ports, now)
        self._version += 1
        due = self._due
        while due and due[0][2] != due[0][3].ver:
            heapq.heappop(due)
        if due:
            self.env.timeout(max(due[0][0] - now, 0.0), value=self._version).callbacks.append(self._on_wake)

    def _rates_of_group(self, g: int, changed: list[_Class], now: float, touched: dict, changed_ports: dict) -> None:
        """New max-min rates of group g after the transfers of `changed` classes came or went; classes whose
        rate moves join `touched`, their ports `changed_ports`."""
        group, caps = self._groups[g], self._group_caps[g]
        for c in changed:
            changed_ports[c.pa] = changed_ports[c.pb] = None
        if not group:
            return
        if len(caps) == 1 and g not in self._left_below_cap:
            cap = next(iter(caps))
            if self._fits_at_cap(changed, cap):
                for c in changed:
                    if c.new:
                        c.set_rate(now, cap)
                return
        self.fills += 1
        if len(caps) == 1 and len(group) > self.local_min_classes:
            old = self._refill_around(group, changed, next(iter(caps)))
        elif len(caps) == 1:
            old = [(c, c.rate) for c in group.values()]
            self._member += 1
            left, cnt = {}, {}
            for c in group.values():
                c.member = self._member
                for p in (c.pa, c.pb):
                    if p in cnt:
                        cnt[p] += c.n
                    else:
                        cnt[p], left[p] = c.n, self.port_cap[p]
            self._stamp += 1
            fill_one_cap(group.values(), self._at_port, left, cnt, next(iter(caps)), self._stamp, self._member)
        else:
            old = [(c, c.rate) for c in group.values()]
            fill_general(group.values(), self.port_cap)
        for c, r in old:
            if c.rate != r:
                new, c.rate = c.rate, r
                c.set_rate(now, new)
                touched[id(c)] = c
                changed_ports[c.pa] = changed_ports[c.pb] = None

    def _refill_around(self, group: dict, changed: list[_Class], cap: float) -> list[tuple[_Class, float]]:
        """Max-min rates with one cap, refilling only around the change: the classes on a set of ports S
        (first the changed classes' ports) are filled with what the other classes leave of their ports;
        the result is kept when every class it can affect still has a bottleneck (its cap, or a full port
        where no class runs faster): with a feasible allocation that is the max-min one. Else S grows by
        the ports of the classes without one, up to the whole group. Returns (class, old rate) of every
        class refilled."""
        at_port, port_cap = self._at_port, self.port_cap
        ports = {}
        for c in changed:
            ports[c.pa] = ports[c.pb] = None
        old, hs = [], []  # hs: the classes refilled (those on `ports`), with their old rates in `old`
        self._member += 1
        member = self._member
        while True:
            for p in ports:
                for c in at_port[p]:
                    if c.member != member:
                        c.member = member
                        hs.append(c)
                        old.append((c, c.rate))
            left, cnt = {}, {}
            for c in hs:
                for p in (c.pa, c.pb):
                    if p in cnt:
                        cnt[p] += c.n
                    else:
                        cnt[p] = c.n
                        x = port_cap[p]
                        for o in at_port[p]:
                            if o.member != member:
                                x -= o.n * o.rate
                        left[p] = x
            self._stamp += 1
            fill_one_cap(hs, at_port, left, cnt, cap, self._stamp, member)
            if len(old) == len(group):
                return old
            grow = self._without_bottleneck(hs, old, changed, ports, cap)
            if grow is None:  # a float corner (cannot happen in exact arithmetic): refill the whole group
                grow = [p for c in group.values() for p in (c.pa, c.pb)]
            elif not grow:
                return old
            for p in grow:
                ports[p] = None

    def _without_bottleneck(self, hs: list[_Class], old: list[tuple[_Class, float]], changed: list[_Class],
                            ports: dict, cap: float) -> list[int] | None:
        """Ports (outside `ports`) of the classes that the refill of `hs` left without a bottleneck. Only the
        classes on a port whose load or rates moved (a refilled class changed rate, or a changed class's
        count) can have lost theirs. None where a refilled class has none but all its ports are in `ports`."""
        at_port, port_cap, tol = self._at_port, self.port_cap, _CHECK_REL
        moved = {}
        for c, r in old:
            if c.rate != r:
                moved[c.pa] = moved[c.pb] = None
        for c in changed:
            moved[c.pa] = moved[c.pb] = None
        info = {}
        grow, stuck = {}, False
        floor = cap * (1 - tol)
        seen = set()
        for q in moved:
            for c in at_port[q]:
                if id(c) in seen:
                    continue
                seen.add(id(c))
                if c.rate >= floor:
                    continue
                ok = False
                for p in (c.pa, c.pb):
                    i = info.get(p)
                    if i is None:
                        load = top = 0.0
                        for o in at_port[p]:
                            load += o.n * o.rate
                            if o.rate > top:
                                top = o.rate
                        i = info[p] = (load >= port_cap[p] * (1 - tol), top * (1 - tol))
                    if i[0] and c.rate >= i[1]:
                        ok = True
                        break
                if ok:
                    continue
                new = [p for p in (c.pa, c.pb) if p not in ports]
                if not new:
                    stuck = True
                for p in new:
                    grow[p] = None
        if stuck and not grow:
            return None
        return list(grow)

    def _fits_at_cap(self, changed: list[_Class], cap: float) -> bool:
        """Whether the classes that gained transfers all run at `cap` (or are new) and their ports have room
        for every transfer of theirs at `cap` with the other classes' rates as they are."""
        if cap == INF:
            return False
        ports = {}
        for c in changed:
            if c.n and not c.new and c.rate != cap:
                return False
            ports[c.pa] = ports[c.pb] = None
        for p in ports:
            load = 0.0
            for c in self._at_port[p]:
                load += c.n * (cap if c.new else c.rate)
            if load > self.port_cap[p] * (1 + _REL):
                return False
        return True

    def _port_loads(self, ports: dict, now: float) -> None:
        """Bring the counters of `ports` up to now and set their new loads (logging the ones that moved)."""
        load, t0, pbytes, busy, at_port = self._load, self._port_t0, self._port_bytes, self._port_busy, self._at_port
        moved = []
        for p in ports:
            x = 0.0
            for c in at_port[p]:
                x += c.n * c.rate
            dt = now - t0[p]
            if dt > 0:
                pbytes[p] += load[p] * dt
                if load[p] > 0:
                    busy[p] += dt
            t0[p] = now
            if x != load[p]:
                load[p] = x
                moved.append(p)
        if self.rate_log is not None and moved:
            moved.sort()
            self.rate_log.append((now, np.array(moved), np.array([load[p] / GBPS for p in moved])))


# ---------------------------------------------------------------------------------------- memory
def hbm_us(nbytes: float, hw: HardwareProfile, sms: int | None = None) -> float:
    """Time for `sms` SMs (default: all) to stream `nbytes` through device memory: a memory-bound
    kernel on the whole GPU gets `hbm_gbps`, a group of blocks gets its SMs' share of it."""
    share = hw.hbm_gbps if sms is None else hw.hbm_gbps * sms / hw.sms
    return nbytes / (share * GBPS)


def copy_engine_gbps(hw: HardwareProfile, override: float | None = None) -> float:
    """One copy engine's bandwidth: `override`, else min(link_gbps, 112 GB/s measured: docs/GPU_FACTS.md)."""
    return override if override is not None else min(hw.link_gbps, COPY_ENGINE_MEASURED_GBPS)
