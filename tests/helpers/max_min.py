"""A plain fluid reference of max-min fair link sharing, to check `sim.hardware_model.LinkNetwork`.

Every transfer on its own (no classes, no heap, no incremental state): at each instant, the rates of all
transfers in flight come from progressive filling (raise every unfrozen rate together; a transfer freezes
at its cap or when one of its two ports is full), then time advances to the next start or finish.
"""

from __future__ import annotations

import math


def max_min_rates(flows: list[tuple[tuple[int, int], float]], port_cap: dict[int, float]) -> list[float]:
    """Max-min fair rates of `flows` [(ports, cap)] over ports of capacity `port_cap`."""
    rate = [0.0] * len(flows)
    frozen = [False] * len(flows)
    left = dict(port_cap)
    while not all(frozen):
        users: dict[int, int] = {}
        for i, (ports, _) in enumerate(flows):
            if not frozen[i]:
                for p in ports:
                    users[p] = users.get(p, 0) + 1
        # the next level: the lowest cap of an unfrozen transfer or the lowest equal share of a port
        level = min(min(cap for i, (_, cap) in enumerate(flows) if not frozen[i]),
                    min(left[p] / n for p, n in users.items()))
        full = {p for p, n in users.items() if left[p] / n <= level * (1 + 1e-12)}
        for i, (ports, cap) in enumerate(flows):
            if not frozen[i] and (cap <= level * (1 + 1e-12) or full & set(ports)):
                frozen[i] = True
                rate[i] = level
                for p in ports:
                    left[p] -= level
    return rate


def fluid_finish_times(transfers: list[dict], port_cap: dict[int, float]) -> list[float]:
    """Finish time of each transfer {ports, bytes, start, cap} (caps and capacities in bytes/us)."""
    n = len(transfers)
    left = [float(t["bytes"]) for t in transfers]
    end = [math.nan] * n
    now = 0.0
    pending = sorted(range(n), key=lambda i: transfers[i]["start"])
    active: list[int] = []
    while pending or active:
        while pending and transfers[pending[0]]["start"] <= now:
            active.append(pending.pop(0))
        rates = max_min_rates([(transfers[i]["ports"], transfers[i]["cap"]) for i in active], port_cap)
        t_next = transfers[pending[0]]["start"] if pending else math.inf
        for i, r in zip(active, rates, strict=True):
            t_next = min(t_next, now + left[i] / r)
        dt = t_next - now
        still = []
        for i, r in zip(active, rates, strict=True):
            left[i] -= r * dt
            if left[i] <= 1e-9 * transfers[i]["bytes"]:
                end[i] = t_next
            else:
                still.append(i)
        active = still
        now = t_next
    return end
