"""A plain fluid reference of independent processor-sharing ports, to check
`sim.independent_ports.IndependentPortsNetwork`.

Every (transfer, port) side on its own: at each instant each port water-fills its capacity over the sides it
still serves (raise every side's rate together; a side freezes at its transfer's cap), then time advances to
the next start or the next side served; a transfer is through when both of its sides are.
"""

from __future__ import annotations

import math


def water_fill(caps: list[float], capacity: float) -> list[float]:
    """Rates of sides with these caps sharing one port of `capacity`."""
    rate = [0.0] * len(caps)
    left, todo = capacity, sorted(range(len(caps)), key=lambda i: caps[i])
    for k, i in enumerate(todo):
        share = left / (len(todo) - k)
        rate[i] = min(caps[i], share)
        left -= rate[i]
    return rate


def port_queue_finish_times(transfers: list[dict], port_cap: dict[int, float]) -> list[float]:
    """Finish time of each transfer {ports, bytes, start, cap} (caps and capacities in bytes/us)."""
    n = len(transfers)
    left = {(i, p): float(t["bytes"]) for i, t in enumerate(transfers) for p in t["ports"]}
    side_end: dict[tuple[int, int], float] = {}
    now = 0.0
    pending = sorted(range(n), key=lambda i: transfers[i]["start"])
    active: list[tuple[int, int]] = []
    while pending or active:
        while pending and transfers[pending[0]]["start"] <= now:
            i = pending.pop(0)
            active += [(i, p) for p in transfers[i]["ports"]]
        rates = {}
        for p in {p for _, p in active}:
            sides = [s for s in active if s[1] == p]
            rates.update(zip(sides, water_fill([transfers[i]["cap"] for i, _ in sides], port_cap[p]), strict=True))
        t_next = transfers[pending[0]]["start"] if pending else math.inf
        for s in active:
            t_next = min(t_next, now + left[s] / rates[s])
        still = []
        for s in active:
            left[s] -= rates[s] * (t_next - now)
            if left[s] <= 1e-9 * transfers[s[0]]["bytes"]:
                side_end[s] = t_next
            else:
                still.append(s)
        active = still
        now = t_next
    return [max(side_end[(i, p)] for p in t["ports"]) for i, t in enumerate(transfers)]
