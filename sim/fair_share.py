"""Max-min fair rates of transfer classes sharing ports (progressive filling).

A class is a set of transfers with the same two ports and the same rate cap: max-min fairness gives them
one rate. The functions set each class's `rate` (bytes/us) and touch nothing else. Progressive filling raises every
unfrozen rate together; a class freezes at its cap, or at the level where one of its ports is full.
"""

from __future__ import annotations

import math

INF = math.inf
REL = 1e-12  # relative slack when comparing fair-share levels


def _port_state(classes, port_cap: list[float]) -> tuple[dict, dict]:
    """Capacity left and unfrozen transfers per port of `classes`."""
    left, cnt = {}, {}
    for c in classes:
        for p in (c.pa, c.pb):
            if p in cnt:
                cnt[p] += c.n
            else:
                cnt[p], left[p] = c.n, port_cap[p]
    return left, cnt


def fill_one_cap(classes, at_port: list[list], left: dict, cnt: dict, cap: float, stamp: int, member: int) -> None:
    """Progressive filling when every class has the same cap: freeze the classes of the port(s) with the
    lowest share, update their other ports, repeat until the lowest share reaches the cap. `classes` are
    those with `c.member == member`; `left` / `cnt` hold, for each of their ports, the capacity they may use
    and their transfers; `at_port[p]` lists every class on port p (others are skipped); `stamp` marks
    frozen classes."""
    ports = list(cnt)
    while ports:
        level = INF
        for p in ports:
            x = left[p] / cnt[p]
            if x < level:
                level = x
        bound = level * (1 + REL)
        if cap <= bound:
            break
        for p in [p for p in ports if left[p] / cnt[p] <= bound]:
            for c in at_port[p]:
                if c.stamp == stamp or c.member != member:
                    continue
                c.stamp = stamp
                c.rate = level
                n, x = c.n, c.n * level
                left[c.pa] -= x
                left[c.pb] -= x
                cnt[c.pa] -= n
                cnt[c.pb] -= n
        ports = [p for p in ports if cnt[p] > 0]
    for c in classes:
        if c.stamp != stamp:
            c.rate = cap


def fill_general(classes, port_cap: list[float]) -> None:
    """Progressive filling with mixed caps."""
    left, cnt = _port_state(classes, port_cap)
    live = sorted(classes, key=lambda c: c.key)  # caps come in order (the key starts with the cap)
    ports = list(cnt)
    while live:
        level = min(left[p] / cnt[p] for p in ports)
        bound = level * (1 + REL)
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
