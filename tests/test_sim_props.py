"""Properties that hold on any case (random small cases from helpers.sim_cases.random_case), the errors the
simulator raises instead of hanging, and its outputs (DataFrame, critical path, Chrome trace)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from helpers.sim_cases import random_case, toy_plan

from comet.core.planner import make_plan
from sim.options import BOUNDS, SYSTEMS, SimOptions
from sim.pipelined_moe import PIPELINED_SYSTEMS
from sim.run import make_case, simulate, with_policy

SEEDS = range(12)
EPS = 1e-9


def _systems(plan):
    """The systems that run `plan` (FasterMoE and Tutel: TP = 1 only)."""
    return [s for s in SYSTEMS if plan.parallel.tp == 1 or s not in PIPELINED_SYSTEMS]


def _results(seed, options=None):
    plan = random_case(seed)
    opts = options or SimOptions(chunks=3)
    return plan, {s: simulate(plan, system=s, options=opts) for s in _systems(plan)}


@pytest.mark.parametrize("seed", SEEDS)
def test_bounds(seed):
    _, results = _results(seed)
    for s, r in results.items():
        assert max(r.compute_us, r.comm_us) <= r.latency_us + EPS, s
        assert r.latency_us <= r.compute_us + r.comm_us + r.overhead_us + EPS, s
        assert r.layer0_us + r.layer1_us == pytest.approx(r.latency_us)
        assert r.latency_us == pytest.approx(max(r.rank_end_us))
        h = r.hidden_comm_fraction
        assert np.isnan(h) or 0.0 <= h <= 1.0 + EPS
    assert results["sequential"].hidden_comm_fraction in (0.0,) or np.isnan(results["sequential"].hidden_comm_fraction)


@pytest.mark.parametrize("seed", SEEDS)
def test_more_bandwidth_or_sms_never_slower(seed):
    plan = random_case(seed)
    hw = plan.hardware
    faster_links = dataclasses.replace(plan, hardware=hw.replace(
        link_gbps=2 * hw.link_gbps, nic_gbps=2 * hw.nic_gbps, per_block_link_gbps=2 * hw.per_block_link_gbps,
        hbm_gbps=2 * hw.hbm_gbps))
    more_sms = dataclasses.replace(plan, hardware=hw.replace(  # same per-SM figures, twice the SMs
        sms=2 * hw.sms, peak_tflops=2 * hw.peak_tflops, hbm_gbps=2 * hw.hbm_gbps))
    opts = SimOptions(chunks=2, record=False)
    for s in _systems(plan):
        base = simulate(plan, system=s, options=opts).latency_us
        assert simulate(faster_links, system=s, options=opts).latency_us <= base + EPS, s
        assert simulate(more_sms, system=s, options=opts).latency_us <= base + EPS, s


@pytest.mark.parametrize("seed", SEEDS)
def test_bytes_conserved(seed):
    plan, results = _results(seed)
    W = plan.world_size
    from sim.workload import plan_work

    works = plan_work(plan)
    expected = np.zeros((W, W))  # bytes s -> d: dispatch rows, then partial sums
    for d, w in enumerate(works):
        expected[:, d] += w.recv_bytes_W
    for s, w in enumerate(works):
        expected[s, :] += w.send_bytes_W
    np.fill_diagonal(expected, 0.0)
    for name, r in results.items():
        if name not in ("comet", *BOUNDS):  # the paper's baselines move their own bytes (test_paper_baselines)
            continue
        sent = np.zeros((W, W))
        for _, src, dst, nbytes, start, end in r.flows:
            assert end >= start, name  # every transfer finished
            sent[src, dst] += nbytes
        np.testing.assert_allclose(sent, expected, rtol=1e-12, err_msg=name)
        egress, ingress = r.link_bytes[0] + r.link_bytes[2], r.link_bytes[1] + r.link_bytes[3]
        np.testing.assert_allclose(egress, sent.sum(1), rtol=1e-9, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(ingress, sent.sum(0), rtol=1e-9, atol=1e-6, err_msg=name)
        assert egress.sum() == pytest.approx(ingress.sum())


@pytest.mark.parametrize("system", SYSTEMS)
def test_deterministic(system):
    seed = 5 if system in PIPELINED_SYSTEMS else 3  # FasterMoE and Tutel need TP = 1 (seed 3 has TP = 2)
    plan = random_case(seed)
    a = simulate(plan, system=system)
    b = simulate(plan, system=system)
    assert a._records == b._records
    assert a.events.equals(b.events)
    c = simulate(random_case(seed), system=system)  # a fresh plan from the same seed
    assert c._records == a._records


def test_static_and_actual_tiles_run():
    plan = random_case(5)
    padded = simulate(plan, options=SimOptions(tile_schedule="static")).latency_us
    actual = simulate(plan, options=SimOptions(tile_schedule="static", tile_rows="actual")).latency_us
    assert 0 < actual <= padded + EPS  # a ragged tile costs at most a full one


# ------------------------------------------------------------------------------------ errors
def test_layer1_without_comm_blocks_is_rejected():
    with pytest.raises(ValueError, match="nc_layer1"):
        simulate(toy_plan(nc_layer1=0), system="comet")
    with pytest.raises(ValueError, match="nc_layer1"):
        simulate(toy_plan(nc_layer1=0), system="comet", options=SimOptions(layers="layer1"))
    # layer0 alone does not need them
    assert simulate(toy_plan(nc_layer1=0), system="comet", options=SimOptions(layers="layer0")).latency_us > 0


def test_layer0_without_comm_blocks_is_rejected():
    with pytest.raises(ValueError, match="nc_layer0"):
        simulate(toy_plan(nc_layer0=0), system="comet")
    assert simulate(toy_plan(nc_layer0=0, layer0_comm="copy-engine"), system="comet").latency_us > 0


def test_too_many_comm_blocks_is_rejected():
    with pytest.raises(ValueError, match="no compute block"):
        simulate(toy_plan(nc_layer1=4), system="comet")


def test_partial_plan_is_rejected():
    plan = toy_plan()
    part = make_plan(_routing_of(plan), plan.model, plan.parallel, plan.hardware, plan.policy, ranks=[0])
    with pytest.raises(ValueError, match="every rank"):
        simulate(part, system="comet")


def _routing_of(plan):
    import torch

    from comet.core.routing import Routing

    return Routing(torch.tensor([[0], [1], [0], [1]]), torch.ones(4, 1), 2)


def test_with_policy_refuses_table_changes():
    with pytest.raises(ValueError, match="make_plan"):
        with_policy(toy_plan(), block_m=2)
    assert with_policy(toy_plan(), nc_layer1=2).policy.nc_layer1 == 2


def test_simulate_from_names_and_errors():
    r = simulate(system="sequential", model="phi-3.5-moe", ep=2, tokens=128)
    assert r.config["model"] == "phi-3.5-moe" and r.latency_us > 0
    with pytest.raises(ValueError, match="unknown system"):
        simulate(toy_plan(), system="deepspeed")
    with pytest.raises(TypeError):
        simulate(toy_plan(), tokens=4)


# ------------------------------------------------------------------------------------ outputs
def test_events_critical_path_and_busy():
    r = simulate(random_case(7))
    ev = r.events
    assert list(ev.columns) == ["rank", "track", "kind", "category", "layer", "start_us", "end_us", "bytes", "peer",
                                "cause", "dur_us"]
    assert (ev["dur_us"] >= 0).all()
    cp = r.critical_path
    assert cp["end_us"].iloc[-1] == pytest.approx(r.latency_us)
    assert (cp["start_us"].to_numpy()[1:] >= cp["end_us"].to_numpy()[:-1] - 1e-9).all()
    assert sum(r.critical_path_breakdown().values()) <= r.latency_us + EPS
    busy = r.busy
    assert set(busy["resource"]) >= {"sm", "egress", "ingress", "nic_out", "nic_in", "copy_engine", "nccl"}
    assert ((busy["utilization"] >= 0) & (busy["utilization"] <= 1 + EPS)).all()


def test_chrome_trace_is_valid_json(tmp_path):
    r = simulate(random_case(2), system="chunked")
    path = r.write_chrome_trace(tmp_path / "t.json")
    data = json.loads(path.read_text())
    evs = data["traceEvents"]
    slices = [e for e in evs if e["ph"] == "X"]
    assert len(slices) == len(r.events)
    assert all(e["dur"] >= 0 and isinstance(e["pid"], int) and isinstance(e["tid"], int) for e in slices)
    named = {(e["pid"], e["tid"]) for e in evs if e["ph"] == "M" and e["name"] == "thread_name"}
    assert {(e["pid"], e["tid"]) for e in slices} <= named
    assert any(e["ph"] == "C" for e in evs) or not r.flows


def test_summary_and_json():
    r = simulate(make_case("mixtral-8x7b", ep=2, tokens=256))
    s = json.loads(r.to_json())
    for key in ("system", "latency_us", "layer0_us", "layer1_us", "hidden_comm_fraction"):
        assert key in s


def test_direct_reads_in_an_emulated_world_cost_only_the_tiles():
    """layer0 "direct": with the rows in local memory (emulated world, direct_read_gbps = inf) a tile moves
    nothing over the link and takes its compute time; priced at a slow read rate the same plan is slower."""
    plan = make_case("mixtral-8x7b", ep=4, tokens=2048, hw="h200")
    local = plan.hardware.emulated_world(20.0, 1500.0)
    opts = SimOptions(layers="layer0")

    def run(hw):
        res = simulate(with_policy(dataclasses.replace(plan, hardware=hw), layer0_comm="direct"), "comet", opts)
        ev = res.events[(res.events["rank"] == 0) & (res.events["kind"] == "gemm0_direct")]
        return ev, float(ev["end_us"].max() - ev["start_us"].min())

    ev, span = run(local)
    assert (ev["bytes"] == 0).all()
    slow_ev, slow_span = run(local.replace(direct_read_gbps=1.0))
    assert (slow_ev["bytes"] > 0).any() and slow_span > 1.5 * span
