"""A link model whose events are local: every port a processor-sharing server of its own.

`IndependentPortsNetwork` has the ports, caps, latencies, counters and records of
sim.hardware_model.LinkNetwork (the max-min model) and one different rule. Each port serves the transfers
through it as a processor-sharing queue: its capacity is water-filled over them (each gets the same level,
a transfer capped below the level gets its cap), whatever the transfer's other port does; a transfer is
through when both of its ports (egress and ingress, or NIC out and NIC in) have served its bytes, and it
leaves each port as soon as that port has served it. So the two ports of a transfer are coupled only by its
end, as if the switch buffered what one side is ahead of the other.

Against max-min: a transfer held back by one port takes, here, its full share of the other port for a
shorter time instead of part of it for longer (the same bytes on that port, moved earlier), so the other
transfers through that port are ahead earlier; where every busy port's transfers are held by that port
(symmetric all-to-alls, one saturated port), the two models agree. What it buys: a transfer that starts
or ends changes the rate of its two ports only, one level per port and cap value, so an event costs a
few heap operations however many transfers share a port (the max-min model refills every port of a NIC
group at every event: dev/LOG.md, 2026-12-03). Choose it with `SimOptions(link_model="independent-ports")`.

Per (port, cap) group: every member moves at one rate, so a group keeps one clock of bytes served per member
(`served`, as of `t`) and its members' targets in order; one heap of due times over the groups (stale
entries skipped by a version) wakes the network. Deterministic: every order is by transfer id, group
creation or a sequence number.

Speed (256 GPUs: ~3 M transfers, each a join and two leaves): an event's cost is mostly cache misses on
what the transfer touched at its join, so a transfer's state is one ticket that its two member entries
hold, a group's targets are C doubles in a sorted array (not a heap of tuples), a transfer through at an
instant where SimPy's queue holds nothing else is processed at once (`fire_now`, no queue entry), and the
rate log is a trace of changes turned into entries afterwards (sim.rate_trace). Each of these keeps every event,
its order and every float as they were (results/sim_speed/README.md, 2026-12-04c).

    >>> import simpy
    >>> from comet.core.config import HardwareProfile, ParallelConfig
    >>> env = simpy.Environment()
    >>> net = IndependentPortsNetwork(env, ParallelConfig(ep=2), HardwareProfile.from_name("h800"))
    >>> a, b = net.transfer(0, 1, 160e3), net.transfer(0, 1, 320e3)  # share egress(0): 80 GB/s each
    >>> env.run()
    >>> (a.value, b.value)  # a at 2 us, then b alone at 160 GB/s
    (2.0, 3.0)
"""

from __future__ import annotations

import heapq
import math
from array import array
from bisect import bisect_right

import simpy

from comet.core.config import HardwareProfile, ParallelConfig
from sim.hardware_model import _DONE_BYTES, GBPS, INF, LinkNetwork
from sim.rate_trace import RateTrace

NORMAL, PENDING, Event = simpy.events.NORMAL, simpy.events.PENDING, simpy.events.Event
NAN = math.nan


def fire_now(ev, value) -> None:
    """`ev.succeed(value)` and the event's processing at once, which is what the run would do next when SimPy's
    queue holds nothing else at this instant (the caller checks): a SimPy Event, or anything with `fire`
    (sim.engine.Stepper); anything else is succeeded onto the queue."""
    fire = getattr(ev, "fire", None)
    if fire is not None:
        fire(value)
    elif type(ev) is Event:
        if ev._value is not PENDING:
            raise RuntimeError(f"{ev} has already been triggered")
        ev._ok, ev._value = True, value
        callbacks, ev.callbacks = ev.callbacks, None
        for callback in callbacks:
            callback(ev)
    else:
        ev.succeed(value)


class _Group:
    """The transfers through one port with one cap: one rate. `served` is the bytes each member has moved
    here since the group was created, as of time `t`; a member that joined at x with b bytes is done at x + b.

    The members are two parallel lists in target order (`targets` ascending, `tickets`: what a leave needs of
    each, IndependentPortsNetwork.transfer): a join is a bisection and an insert, a leave takes the first.
    Measured against a heap of (target, id) tuples: a heap's pop walks a root-to-leaf path of tuples allocated
    at their joins, scattered in memory, a cache miss a level (~2 us a pop at 128 GPUs, ~130 members a port);
    the lists touch a few contiguous pointers. Members of equal targets leave at once whatever their order."""

    __slots__ = ("port", "cap", "n", "rate", "served", "t", "targets", "tickets", "version", "front")

    def __init__(self, port: int, cap: float):
        self.port, self.cap = port, cap
        self.n, self.rate, self.served, self.t, self.version = 0, 0.0, 0.0, 0.0, 0
        self.targets = array("d")  # C doubles: contiguous, so a bisection reads no scattered float objects
        self.tickets: list[list] = []
        self.front = None  # the target a valid due entry of this version is for (None: none)

    def settle(self, now: float) -> None:
        self.served += self.rate * (now - self.t)
        self.t = now

    def add(self, nbytes: float, ticket: list) -> None:
        """A member with `nbytes` to move joins (served is up to date)."""
        target = self.served + nbytes
        i = bisect_right(self.targets, target)
        self.targets.insert(i, target)
        self.tickets.insert(i, ticket)


class _Wake:
    """A wake-up of the network on SimPy's queue: what the run loop reads of a Timeout (callbacks, `_ok`), and
    `_value`, the wake-up's number (a later one supersedes it)."""

    __slots__ = ("callbacks", "_value")
    _ok = True

    def __init__(self, callbacks: list, value: int):
        self.callbacks, self._value = callbacks, value


def _by_transfer_then_port(item: tuple) -> tuple:
    g, ticket = item
    return ticket[3], g.port


class IndependentPortsNetwork(LinkNetwork):
    """The ports of LinkNetwork as independent processor-sharing servers (module docstring); same interface
    and counters."""

    def __init__(self, env: simpy.Environment, parallel: ParallelConfig, hw: HardwareProfile,
                 record_rates: bool = False):
        super().__init__(env, parallel, hw, record_rates)
        P = self.P
        self._groups: list[dict[float, _Group]] = [{} for _ in range(P)]  # per port: cap -> group, by cap
        self._rate_p = [0.0] * P  # bytes/us through each port now
        self._t_p = [0.0] * P  # when the port's bytes and busy time were last brought up to date
        self._sole: list[_Group | None] = [None] * P  # a port's group while it has only one (the usual case)
        self._queue, self._eid = env._queue, env._eid  # the wake-ups go straight onto SimPy's queue
        self._wake_cbs = [self._on_wake]
        # Set by a run loop that drives the wake-ups itself (sim.engine.run_until_empty): the next one is then
        # `wake_key`, kept beside SimPy's queue instead of an entry in it (a plain env.run() needs the entries).
        self.wake_beside_queue = False
        self.wake_key: tuple | None = None
        self._due: list[tuple] = []  # (due time, sequence, group, version)
        self._seq = 0
        self._wake_at = INF
        self._wake_id = 0

    @property
    def rate_log(self):
        """(time_us, ports, GB/s) as LinkNetwork's, over the flat lists the run appends to (RateLog)."""
        trace = self._trace
        if trace is None:
            return None
        if self._log_built is None or self._log_built[0] != len(trace.ports):
            self._log_built = (len(trace.ports), trace.rate_log())
        return self._log_built[1]

    @rate_log.setter
    def rate_log(self, value):  # LinkNetwork.__init__ sets [] (record) or None
        self._trace = None if value is None else RateTrace(self.P)
        self._log_built = None

    # ------------------------------------------------------------------------------------ events
    def transfer(self, src: int, dst: int, nbytes: float, cap_gbps: float = INF, event=None) -> simpy.Event:
        """Move `nbytes` from rank src to rank dst (src != dst) at most at `cap_gbps`. Returns `event` (default: a
        new SimPy event), succeeded with the time when the last byte is through (anything with SimPy's
        `succeed(value)` will do: sim.engine.Stepper)."""
        now = self.env._now
        ev = self.env.event() if event is None else event
        flows = self.flows
        fid = len(flows)
        nbytes = float(nbytes)
        flow = [fid, src, dst, nbytes, now, NAN]
        flows.append(flow)
        if nbytes <= 0:
            flow[5] = now
            ev.succeed(now)
            return ev
        cap = cap_gbps * GBPS
        # what a leave needs of the transfer, in one place that both ports' member entries hold (three lists
        # indexed by transfer id cost three cache misses a leave at 256 GPUs): ports still serving it, its
        # event, its flow record, its id
        ticket = [2, ev, flow, fid]
        self._n_in_flight += 1
        W = self.W
        pa, pb = (src, W + dst) if self._node[src] == self._node[dst] else (2 * W + src, 3 * W + dst)  # ports()
        sole = self._sole
        for p in (pa, pb):
            g = sole[p]
            if g is not None and g.cap == cap:
                self._join_sole(g, p, now, nbytes, ticket)
            else:
                self._join(p, cap, now, nbytes, ticket)
        trace = self._trace
        if trace is not None:
            rate_p = self._rate_p
            trace.add(now, pa, rate_p[pa])
            trace.add(now, pb, rate_p[pb])
        self._arm(now)
        return ev

    def _join(self, p: int, cap: float, now: float, nbytes: float, ticket: list) -> None:
        """A transfer joins port p's group of cap `cap` (created if new), then the port's new levels."""
        g = self._group(p, cap)
        g.settle(now)
        g.add(nbytes, ticket)
        g.n += 1
        self._n_port[p] += 1
        self._level(p, now)

    def _join_sole(self, g: _Group, p: int, now: float, nbytes: float, ticket: list) -> None:
        """_join where g is the port's only group: g settled to now, the transfer added, then _relevel_sole
        (whose elapsed-time terms are exactly 0.0 once g is settled, so the floats are _level's)."""
        g.served = g.served + g.rate * (now - g.t)
        g.t = now
        g.add(nbytes, ticket)
        n = g.n = g.n + 1
        self._n_port[p] += 1
        self._relevel_sole(g, p, now, n)

    def _settle_port(self, p: int, now: float) -> None:
        """Port p's bytes and busy time brought up to now at its rate so far."""
        dt = now - self._t_p[p]
        if dt > 0:
            rate = self._rate_p[p]
            self._port_bytes[p] += rate * dt
            if rate > 0:
                self._port_busy[p] += dt
        self._t_p[p] = now

    def _group(self, p: int, cap: float) -> _Group:
        """Port p's group of cap `cap` (created on first use; a port's groups are kept in cap order)."""
        groups = self._groups[p]
        g = groups.get(cap)
        if g is None:
            g = groups[cap] = _Group(p, cap)
            self._groups[p] = dict(sorted(groups.items()))
            self._sole[p] = g if len(groups) == 1 else None
        return g

    def _level(self, p: int, now: float) -> None:
        """Water-fill port p's capacity over its groups (caps ascending), then new rates and due times."""
        g = self._sole[p]
        if g is not None and g.n:  # one cap through the port (the usual case): keep what has not changed
            self._relevel_sole(g, p, now, g.n)
            return
        self.updates += 1
        self._settle_port(p, now)
        if g is None:
            self._level_groups(p, now)
        else:
            g.settle(now)
            g.rate, g.front = 0.0, None
            g.version += 1
            self._rate_p[p] = 0.0

    def _level_groups(self, p: int, now: float) -> None:
        """_level for a port with groups of several caps: the water-filling over them."""
        left, count, total = self.port_cap[p], self._n_port[p], 0.0
        due = self._due
        for g in self._groups[p].values():
            g.settle(now)
            g.version += 1
            g.front = None
            if not g.n:
                g.rate = 0.0
                continue
            share = left / count
            rate = g.rate = g.cap if g.cap <= share else share
            left -= rate * g.n
            count -= g.n
            total += rate * g.n
            self._seq += 1
            g.front = g.targets[0]
            heapq.heappush(due, (now + max(g.front - g.served, 0.0) / rate, self._seq, g, g.version))
        self._rate_p[p] = total if self._n_port[p] else 0.0

    def _arm(self, now: float) -> None:
        """One wake-up at the earliest valid due time (stale heap entries dropped)."""
        due = self._due
        while due and due[0][3] != due[0][2].version:
            heapq.heappop(due)
        if due and due[0][0] < self._wake_at:
            self._wake_at = t = due[0][0]
            # the queue key env.timeout(max(t - now, 0.0)) would get (time, priority, sequence number)
            delay = t - now
            key = (now + (0.0 if delay < 0.0 else delay), NORMAL, next(self._eid))
            if self.wake_beside_queue:  # the run loop compares it with the queue's front (and drops a superseded one)
                self.wake_key = key
            else:
                self._wake_id += 1
                heapq.heappush(self._queue, (*key, _Wake(self._wake_cbs, self._wake_id)))

    def _on_wake(self, event) -> None:
        """A wake-up from SimPy's queue: `wake` unless a later one superseded it."""
        if event._value == self._wake_id:
            self.wake()

    def wake(self) -> None:
        """Groups are due: every member a port has served leaves it; a transfer both ports have served is done."""
        now = self.env._now
        self._wake_at = INF
        due, out = self._due, []
        limit = now + 1e-9
        while due and due[0][0] <= limit:
            _, _, g, version = heapq.heappop(due)
            if version != g.version:
                continue
            rate = g.rate
            served = g.served + rate * (now - g.t)
            targets, tol, found = g.targets, _DONE_BYTES + rate * 1e-9, False
            while targets and targets[0] - served <= tol:
                del targets[0]
                ticket = g.tickets.pop(0)
                out.append((g, ticket))
                found = True
            g.version += 1
            g.front = None
            if not found:  # float residue kept the front just short of done
                self._seq += 1
                g.front = targets[0]
                heapq.heappush(due, (now + (targets[0] - served) / rate, self._seq, g, g.version))
        if len(out) == 1:  # the usual case: one transfer leaves one port
            g, ticket = out[0]
            through = self._leave_one(now, g, ticket)
        else:
            out.sort(key=_by_transfer_then_port)  # deterministic
            self._leave(now, out)
            through = None
        self._arm(now)
        if through is not None:
            queue = self._queue
            if queue and queue[0][0] <= now:  # something else is due at this instant first: queue it behind
                through.succeed(now)
            else:  # its queue entry would be the next event: process it now (one queue entry less a transfer)
                fire_now(through, now)

    def _leave_one(self, now: float, g: _Group, ticket: list):
        """_leave for one transfer: the same steps in the same order, without the batch's dict and lists; returns
        the transfer's event if it is through (not yet succeeded: the caller does it), else None."""
        p = g.port
        n = g.n = g.n - 1
        self._n_port[p] -= 1
        if n and self._sole[p] is g:
            self._relevel_sole(g, p, now, n)
        else:
            self._level(p, now)
        trace = self._trace
        if trace is not None:
            trace.add(now, p, self._rate_p[p])
        left = ticket[0] = ticket[0] - 1
        if left:
            return None
        self._n_in_flight -= 1
        ticket[2][5] = now
        ev = ticket[1]
        ticket[1] = None
        return ev

    def _relevel_sole(self, g: _Group, p: int, now: float, n: int) -> None:
        """_level for a port whose only group g has n > 0 members (the same steps, inline)."""
        self.updates += 1
        dt = now - self._t_p[p]  # _settle_port, inline
        if dt > 0:
            port_rate = self._rate_p[p]
            self._port_bytes[p] += port_rate * dt
            if port_rate > 0:
                self._port_busy[p] += dt
        self._t_p[p] = now
        share = self.port_cap[p] / n
        rate = g.cap if g.cap <= share else share
        if rate != g.rate:
            g.served += g.rate * (now - g.t)
            g.t = now
            g.rate, g.front = rate, None
            g.version += 1
        front = g.targets[0]
        if front != g.front:
            g.front = front
            self._seq += 1
            left = front - g.served - rate * (now - g.t)
            left = 0.0 if left < 0.0 else left  # max(left, 0.0) without the call (same value, -0.0 and nan too)
            heapq.heappush(self._due, (now + left / rate, self._seq, g, g.version))
        self._rate_p[p] = rate * n

    def _leave(self, now: float, out: list) -> None:
        """The transfers in `out` (group, ticket) leave their groups' ports: new levels there, and the
        transfers both ports have served are through (their events succeed, by transfer id)."""
        touched: dict[int, None] = {}
        done = []
        n_port = self._n_port
        for g, ticket in out:
            g.n -= 1
            n_port[g.port] -= 1
            touched[g.port] = None
            left = ticket[0] = ticket[0] - 1
            if not left:
                done.append(ticket)
        for p in touched:
            self._level(p, now)
        trace = self._trace
        if trace is not None:
            for p in touched:
                trace.add(now, p, self._rate_p[p])
        self._n_in_flight -= len(done)
        for ticket in done:
            ticket[2][5] = now
            ev = ticket[1]
            ticket[1] = None
            ev.succeed(now)


__all__ = ["IndependentPortsNetwork"]
