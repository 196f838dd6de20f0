"""Random transfer sets and a runner, shared by the tests of both link models (tests/test_link_model.py,
tests/test_independent_ports.py)."""

from __future__ import annotations

import random

import simpy

from comet.core.config import ParallelConfig


def random_transfers(rng: random.Random, W: int, caps: list[float]) -> list[dict]:
    """5-60 transfers between W ranks: random pairs, sizes and caps, started together or at random instants."""
    out = []
    for _ in range(rng.randint(5, 60)):
        s = rng.randrange(W)
        d = rng.choice([q for q in range(W) if q != s])
        start = rng.choice([0.0, 0.0, round(rng.uniform(0, 500), 1), round(rng.uniform(0, 2000), 3)])
        out.append(dict(src=s, dst=d, bytes=rng.choice([64.0, 100.0, rng.uniform(1, 2000)]), start=start,
                        cap_gbps=rng.choice(caps)))
    return out


def run_transfers(network, W: int, hw, transfers: list[dict], record: bool = False):
    """Start each transfer at its instant on a fresh `network`; returns (network, finish times in order)."""
    env = simpy.Environment()
    net = network(env, ParallelConfig(ep=W), hw, record_rates=record)
    got = [None] * len(transfers)

    def start(i, t):
        yield env.timeout(t["start"])
        got[i] = yield net.transfer(t["src"], t["dst"], t["bytes"], t["cap_gbps"])

    for i, t in enumerate(transfers):
        env.process(start(i, t))
    env.run()
    return net, got
