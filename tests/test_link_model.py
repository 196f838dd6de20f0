"""LinkNetwork against a plain reference of max-min fair sharing (tests/helpers/max_min.py), transfer by
transfer, on random transfer sets."""

from __future__ import annotations

import math
import random

import pytest
import simpy
from helpers.max_min import fluid_finish_times
from helpers.sim_cases import toy_hardware

from comet.core.config import ParallelConfig
from sim.hardware_model import GBPS, LinkNetwork


@pytest.mark.parametrize("seed", range(12))
def test_link_network_matches_plain_max_min(seed):
    """Random transfers (intra- and inter-node, capped and uncapped, started at random instants, some
    together): LinkNetwork's finish times equal a plain per-transfer progressive-filling fluid model."""
    rng = random.Random(seed)
    W = rng.choice([2, 3, 4, 6, 8])
    hw = toy_hardware(link_gbps=1.0, nic_gbps=rng.choice([0.25, 0.6, 1.0]), ranks_per_node=rng.choice([2, 4, 8]))
    env = simpy.Environment()
    net = LinkNetwork(env, ParallelConfig(ep=W), hw)
    caps = [math.inf, 0.5, 0.2, 0.35] if seed % 3 else [0.3]  # mixed caps, or one cap for every transfer
    transfers = []
    for _ in range(rng.randint(5, 60)):
        s = rng.randrange(W)
        d = rng.choice([q for q in range(W) if q != s])
        start = rng.choice([0.0, 0.0, round(rng.uniform(0, 500), 1), round(rng.uniform(0, 2000), 3)])
        transfers.append(dict(src=s, dst=d, bytes=rng.choice([64.0, 100.0, rng.uniform(1, 2000)]), start=start,
                              cap_gbps=rng.choice(caps)))
    got = [None] * len(transfers)

    def start(i, t):
        yield env.timeout(t["start"])
        got[i] = yield net.transfer(t["src"], t["dst"], t["bytes"], t["cap_gbps"])

    for i, t in enumerate(transfers):
        env.process(start(i, t))
    env.run()
    port_cap = dict(enumerate(net.port_cap))
    ref = fluid_finish_times([dict(ports=net.ports(t["src"], t["dst"]), bytes=t["bytes"], start=t["start"],
                                   cap=t["cap_gbps"] * GBPS) for t in transfers], port_cap)
    assert got == pytest.approx(ref, rel=1e-9)
    assert sorted(f[5] for f in net.flows) == sorted(got)  # the flow log holds the same finish times
