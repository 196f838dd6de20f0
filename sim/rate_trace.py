"""The rate log of sim.independent_ports: `RateTrace`, the port rates a run sets, as flat arrays of changes, and
`RateLog`, the (time_us, ports, GB/s) entries LinkNetwork.rate_log holds, derived from it when read.

    >>> trace = RateTrace(2)
    >>> trace.add(0.0, 1, 5e3); trace.add(1.5, 0, 2e3); trace.add(1.5, 0, 0.0); trace.add(2.0, 1, 0.0)
    >>> [(t, ports.tolist(), gbps.tolist()) for t, ports, gbps in trace.rate_log()]  # nothing at 1.5: 0 again
    [(0.0, [0, 1], [0.0, 5.0]), (2.0, [1], [0.0])]
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence

import numpy as np

from sim.hardware_model import GBPS, INF


class RateLog(Sequence):
    """The rate log as a sequence of (time_us, ports, GB/s) entries, LinkNetwork.rate_log's form, held as flat
    arrays: an entry's two arrays are made when it is read (millions of entries at 256 GPUs, seconds to build,
    and most results are never asked for them)."""

    def __init__(self, times, counts, ports, rates):
        self.times = list(times)
        self.ends = np.cumsum(np.asarray(counts, dtype=np.int64)).tolist()
        self.ports = np.asarray(ports, dtype=np.int64)
        self.rates = np.asarray(rates, dtype=np.float64)

    def __len__(self) -> int:
        return len(self.times)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError("rate log index out of range")
        start = self.ends[i - 1] if i else 0
        end = self.ends[i]
        return self.times[i], self.ports[start:end], self.rates[start:end]

    def __iter__(self):
        p_all, v_all, start = self.ports, self.rates, 0
        for t, end in zip(self.times, self.ends, strict=True):
            yield t, p_all[start:end], v_all[start:end]
            start = end


class RateTrace:
    """The rates the network gives its ports, in order: per instant, (port, bytes/us) pairs, a pair only where
    the rate differs from the port's last pair (three of four touches leave a port's rate as it was). Writing
    the log's entry at every instant (which ports changed, in port order) cost a few microseconds per event;
    here a change is two appends, and `rate_log()` derives the entries in numpy."""

    __slots__ = ("times", "starts", "ports", "rates", "last", "t", "P")

    def __init__(self, P: int):
        self.P = P
        self.times, self.starts = array("d"), array("q")  # each instant with a pair, and its first pair's index
        self.ports, self.rates = array("q"), array("d")
        self.last = [0.0] * P  # each port's rate in its last pair (at rest before any)
        self.t = -INF  # the last instant with a pair

    def rate_log(self) -> RateLog:
        """The entries LinkNetwork's log would hold: the first at time 0 with every port (its rate at the end of
        that instant), then per instant the ports whose rate at its end differs from their previous one, in
        port order."""
        P, n = self.P, len(self.ports)
        ports, gbps = np.array(self.ports, dtype=np.int64), np.array(self.rates, dtype=np.float64) / GBPS
        times, starts = np.array(self.times, dtype=np.float64), np.array(self.starts, dtype=np.int64)
        instant = np.repeat(np.arange(times.size), np.diff(np.append(starts, n)))
        # the last pair of each (instant, port), in (instant, port) order
        order = np.argsort(instant * P + ports, kind="stable")
        ports, gbps, instant = ports[order], gbps[order], instant[order]
        last = np.ones(n, dtype=bool)
        last[:-1] = (instant[1:] != instant[:-1]) | (ports[1:] != ports[:-1])
        ports, gbps, instant = ports[last], gbps[last], instant[last]
        first = np.zeros(P)
        if times.size and times[0] == 0.0:  # pairs at time 0 belong to the first entry
            k = int(np.searchsorted(instant, 1))
            first[ports[:k]] = gbps[:k]
            ports, gbps, instant = ports[k:], gbps[k:], instant[k:]
        # a pair is logged when its rate differs from the port's previous one (the first entry's before any)
        by_port = np.argsort(ports, kind="stable")
        p_sorted, v_sorted = ports[by_port], gbps[by_port]
        previous = np.empty_like(v_sorted)
        previous[1:] = v_sorted[:-1]
        first_of_port = np.ones(p_sorted.size, dtype=bool)
        first_of_port[1:] = p_sorted[1:] != p_sorted[:-1]
        previous[first_of_port] = first[p_sorted[first_of_port]]
        changed = np.empty(p_sorted.size, dtype=bool)
        changed[by_port] = v_sorted != previous
        counts = np.bincount(instant[changed], minlength=times.size)
        kept = counts > 0
        return RateLog([0.0, *times[kept].tolist()], np.concatenate([[P], counts[kept]]),
                       np.concatenate([np.arange(P), ports[changed]]), np.concatenate([first, gbps[changed]]))

    def add(self, now: float, p: int, rate: float) -> None:
        """Port p's rate is `rate` (bytes/us) from `now` on."""
        if rate != self.last[p]:
            self.last[p] = rate
            if now != self.t:
                self.t = now
                self.times.append(now)
                self.starts.append(len(self.ports))
            self.ports.append(p)
            self.rates.append(rate)


__all__ = ["RateLog", "RateTrace"]
