"""LinkNetwork against a plain reference of max-min fair sharing (tests/helpers/max_min.py), transfer by
transfer, on random transfer sets."""

from __future__ import annotations

import math
import random

import pytest
import simpy
from helpers.link_cases import random_transfers, run_transfers
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
    caps = [math.inf, 0.5, 0.2, 0.35] if seed % 3 else [0.3]  # mixed caps, or one cap for every transfer
    transfers = random_transfers(rng, W, caps)
    net, got = run_transfers(LinkNetwork, W, hw, transfers)
    port_cap = dict(enumerate(net.port_cap))
    ref = fluid_finish_times([dict(ports=net.ports(t["src"], t["dst"]), bytes=t["bytes"], start=t["start"],
                                   cap=t["cap_gbps"] * GBPS) for t in transfers], port_cap)
    assert got == pytest.approx(ref, rel=1e-9)
    assert sorted(f[5] for f in net.flows) == sorted(got)  # the flow log holds the same finish times


def test_rate_log_keeps_only_the_ports_that_changed():
    """The first entry holds every port; later ones only ports whose rate moved; forward-filled, the log's rates
    integrate to each port's bytes."""
    hw = toy_hardware(link_gbps=1.0, nic_gbps=0.5, ranks_per_node=2)
    env = simpy.Environment()
    net = LinkNetwork(env, ParallelConfig(ep=4), hw, record_rates=True)
    rng = random.Random(3)

    def start(s, d, t, nbytes):
        yield env.timeout(t)
        yield net.transfer(s, d, nbytes, rng.choice([math.inf, 0.4]))

    for _ in range(30):
        s = rng.randrange(4)
        env.process(start(s, rng.choice([q for q in range(4) if q != s]), rng.uniform(0, 300), rng.uniform(10, 500)))
    env.run()
    log = net.rate_log
    assert log[0][1].tolist() == list(range(net.P))
    last = dict(zip(log[0][1].tolist(), log[0][2].tolist(), strict=True))
    moved = [0.0] * net.P
    t_prev = log[0][0]
    for t, ports, rates in log[1:]:
        for p in range(net.P):
            moved[p] += last[p] * (t - t_prev)
        assert len(ports) > 0 and all(last[p] != v for p, v in zip(ports.tolist(), rates.tolist(), strict=True))
        last.update(zip(ports.tolist(), rates.tolist(), strict=True))
        t_prev = t
    assert all(v == 0.0 for v in last.values())  # everything is through
    assert [m * GBPS for m in moved] == pytest.approx(net.port_bytes.tolist(), rel=1e-9, abs=1e-6)
