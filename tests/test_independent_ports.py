"""IndependentPortsNetwork (sim/independent_ports.py) against a plain reference of independent
processor-sharing ports (tests/helpers/port_queues.py), and against the max-min model where the two agree."""

from __future__ import annotations

import math
import random

import pytest
from helpers.link_cases import random_transfers, run_transfers
from helpers.max_min import fluid_finish_times
from helpers.port_queues import port_queue_finish_times
from helpers.sim_cases import toy_hardware

from sim.hardware_model import GBPS
from sim.independent_ports import IndependentPortsNetwork
from sim.options import SimOptions
from sim.rate_trace import RateTrace
from sim.run import make_case, simulate


@pytest.mark.parametrize("seed", range(12))
def test_independent_ports_match_the_plain_reference(seed):
    """Random transfers (intra- and inter-node, capped and uncapped, started at random instants, some together):
    the network's finish times equal the plain per-side reference; every port's bytes are its transfers' bytes."""
    rng = random.Random(seed)
    W = rng.choice([2, 3, 4, 6, 8])
    hw = toy_hardware(link_gbps=1.0, nic_gbps=rng.choice([0.25, 0.6, 1.0]), ranks_per_node=rng.choice([2, 4, 8]))
    transfers = random_transfers(rng, W, [math.inf, 0.5, 0.2, 0.35] if seed % 3 else [0.3])
    net, got = run_transfers(IndependentPortsNetwork, W, hw, transfers)
    ref = port_queue_finish_times([dict(ports=net.ports(t["src"], t["dst"]), bytes=t["bytes"], start=t["start"],
                                        cap=t["cap_gbps"] * GBPS) for t in transfers], dict(enumerate(net.port_cap)))
    assert got == pytest.approx(ref, rel=1e-9)
    assert sorted(f[5] for f in net.flows) == sorted(got)  # the flow log holds the same finish times
    per_port = [0.0] * net.P
    for t in transfers:
        for p in net.ports(t["src"], t["dst"]):
            per_port[p] += t["bytes"]
    assert net.port_bytes.tolist() == pytest.approx(per_port, rel=1e-9, abs=1e-6)
    assert net.in_flight() == 0


@pytest.mark.parametrize("seed", range(6))
def test_agrees_with_max_min_when_one_port_holds_everything(seed):
    """Transfers that all leave one rank (egress(0) shared, every ingress its own): both models are the same
    processor-sharing queue, so the finish times agree."""
    rng = random.Random(100 + seed)
    W = 6
    hw = toy_hardware(link_gbps=1.0)
    transfers = [dict(src=0, dst=1 + k % (W - 1), bytes=rng.uniform(10, 900), start=round(rng.uniform(0, 300), 1),
                      cap_gbps=rng.choice([math.inf, 0.4])) for k in range(5)]  # distinct ingresses: only egress(0)
    _, a = run_transfers(IndependentPortsNetwork, W, hw, transfers)
    ref = fluid_finish_times([dict(ports=(0, W + t["dst"]), bytes=t["bytes"], start=t["start"],
                                   cap=t["cap_gbps"] * 1e3) for t in transfers], {p: 1e3 for p in range(4 * W)})
    assert a == pytest.approx(ref, rel=1e-9)


def test_never_slower_to_finish_than_its_bytes_at_its_caps_and_never_over_a_port():
    """Each transfer takes at least bytes / min(cap, port capacities); no logged port rate exceeds the port."""
    rng = random.Random(7)
    W = 8
    hw = toy_hardware(link_gbps=1.0, nic_gbps=0.4, ranks_per_node=4)
    transfers = random_transfers(rng, W, [math.inf, 0.5, 0.2])
    net, got = run_transfers(IndependentPortsNetwork, W, hw, transfers, record=True)
    for t, end in zip(transfers, got, strict=True):
        fastest = min([t["cap_gbps"] * GBPS] + [net.port_cap[p] for p in net.ports(t["src"], t["dst"])])
        assert end - t["start"] >= t["bytes"] / fastest * (1 - 1e-12)
    for _, ports, rates in net.rate_log:
        for p, v in zip(ports.tolist(), rates.tolist(), strict=True):
            assert v * GBPS <= net.port_cap[p] * (1 + 1e-9)


def test_rate_log_integrates_to_the_port_bytes():
    """As the max-min model's log: every port in the first entry, then only ports that changed; forward-filled,
    the rates integrate to each port's bytes."""
    rng = random.Random(3)
    hw = toy_hardware(link_gbps=1.0, nic_gbps=0.5, ranks_per_node=2)
    net, _ = run_transfers(IndependentPortsNetwork, 4, hw, random_transfers(rng, 4, [math.inf, 0.4]), record=True)
    log = net.rate_log
    assert log[0][1].tolist() == list(range(net.P))
    last = dict(zip(log[0][1].tolist(), log[0][2].tolist(), strict=True))
    moved, t_prev = [0.0] * net.P, log[0][0]
    for t, ports, rates in log[1:]:
        assert t > t_prev  # one entry per instant
        for p in range(net.P):
            moved[p] += last[p] * (t - t_prev)
        assert all(last[p] != v for p, v in zip(ports.tolist(), rates.tolist(), strict=True))
        last.update(zip(ports.tolist(), rates.tolist(), strict=True))
        t_prev = t
    assert all(v == 0.0 for v in last.values())
    assert [m * GBPS for m in moved] == pytest.approx(net.port_bytes.tolist(), rel=1e-9, abs=1e-6)


@pytest.mark.parametrize("system", ["comet", "sequential", "chunked"])
@pytest.mark.parametrize("ranks_per_node", [8, 2])
def test_a_layer_within_a_percent_of_max_min(system, ranks_per_node):
    """Mixtral, EP=8, one node or four: the two link models give the same layer latency within 1 %, and the
    independent-ports run is deterministic."""
    plan = make_case("mixtral-8x7b", ep=8, tokens=2048, hw="h800", ranks_per_node=ranks_per_node)
    exact = simulate(plan, system=system, options=SimOptions(link_model="max-min"))
    fast = simulate(plan, system=system, options=SimOptions(link_model="independent-ports"))
    again = simulate(plan, system=system, options=SimOptions(link_model="independent-ports"))
    assert fast.latency_us == pytest.approx(exact.latency_us, rel=0.01)
    assert fast.flows == again.flows and fast.latency_us == again.latency_us
    assert fast.link_bytes.sum() == pytest.approx(exact.link_bytes.sum(), rel=1e-9)


def test_unknown_link_model_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown link_model 'fair'; choose one of"):
        SimOptions(link_model="fair")


def _log_written_per_instant(P: int, touches: list[tuple[float, int, float]]) -> list[tuple]:
    """The rate log as the network used to write it during the run: at each new instant, an entry for the last one
    with the touched ports whose rate (bytes/us) differs from the last logged one, in port order (every port in
    the first entry, at time 0)."""
    logged, rate, pending, log = [math.nan] * P, [0.0] * P, {}, []
    t_log = 0.0

    def flush():
        if not pending and log:
            return
        entry = [(p, rate[p] / GBPS) for p in (sorted(pending) if log else range(P)) if logged[p] != rate[p] / GBPS]
        for p, v in entry:
            logged[p] = v
        pending.clear()
        if entry:
            log.append((t_log, [p for p, _ in entry], [v for _, v in entry]))

    for t, p, v in touches:
        if t != t_log:
            flush()
            t_log = t
        rate[p] = v
        pending[p] = None
    flush()
    return log


@pytest.mark.parametrize("seed", range(20))
def test_rate_trace_gives_the_log_written_per_instant(seed):
    """RateTrace keeps only the touches that change a port's rate and derives the entries afterwards: the same
    entries as writing them at every instant (rates set and set back within an instant, repeated values, several
    touches of one port, a first instant at time 0 or later)."""
    rng = random.Random(seed)
    P = rng.choice([1, 3, 8])
    values = [0.0, 1e3, 2.5e3, 4e3]
    t = 0.0 if seed % 2 else rng.uniform(0.1, 2.0)
    touches = []
    for _ in range(rng.randint(0, 80)):
        if rng.random() < 0.6:
            t += rng.choice([0.5, 1.0, 1e-3])
        touches.append((t, rng.randrange(P), rng.choice(values)))
    trace = RateTrace(P)
    for now, p, v in touches:
        trace.add(now, p, v)
    got = [(t, ports.tolist(), rates.tolist()) for t, ports, rates in trace.rate_log()]
    assert got == _log_written_per_instant(P, touches)
