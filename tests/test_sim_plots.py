"""sim.plots: the rows, rates and tables behind the pictures, on the toy case of tests/test_sim_exact.py and
a small two-node case; the figures themselves are checked for one polygon per event."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
from helpers.sim_cases import toy_hardware, toy_plan

from comet.core.events import KINDS
from sim.hardware_model import PORT_KINDS
from sim.options import SimOptions
from sim.plots import KIND_COLORS, compare, gantt_rows, latency_table, link_rates, sm_count, timeline
from sim.run import make_case, simulate

matplotlib.use("Agg")


@pytest.fixture(scope="module")
def toy():
    return {s: simulate(toy_plan(), system=s) for s in ("comet", "sequential")}


def test_every_kind_has_a_colour():
    assert set(KIND_COLORS) == {k for k, _ in KINDS}


def test_gantt_rows_place_sms_then_streams(toy):
    res = toy["comet"]
    assert sm_count(res) == 4  # toy hardware: SMs 0-3, the communication block on SM 3
    rows = gantt_rows(res, rank=0)
    by_kind = rows.groupby("kind", observed=True)["row"].apply(set).to_dict()
    assert by_kind["pull"] == {3} and by_kind["gemm0"] == {0, 1}
    assert by_kind["launch"] == {4} and by_kind["combine_reduce"] == {4}  # the stream: first row after the SMs
    grouped = gantt_rows(res, rank=0, sm_group=2)
    assert grouped.groupby("kind", observed=True)["row"].apply(set).to_dict()["pull"] == {1}
    assert set(grouped["row"][grouped["kind"] == "launch"]) == {2}
    seq = gantt_rows(toy["sequential"], rank=1)
    assert set(seq["row"][seq["kind"] == "dispatch"]) == {5}  # nccl stream after the compute stream


@pytest.mark.parametrize("ranks_per_node", [8, 1])
def test_link_rates_integrate_to_the_bytes_moved(ranks_per_node):
    plan = make_case("mixtral-8x7b", ep=4, tokens=256, ranks_per_node=ranks_per_node)
    for system in ("comet", "chunked"):
        res = simulate(plan, system=system)
        for rank in range(4):
            df = link_rates(res, rank)
            dt = np.diff(df["time_us"].to_numpy())
            for k, kind in enumerate(PORT_KINDS):
                moved = float(np.sum(df[kind].to_numpy()[:-1] * dt)) * 1e3 if kind in df else 0.0
                assert moved == pytest.approx(res.link_bytes[k, rank], rel=1e-6, abs=1e-3), (system, rank, kind)
        kinds = set(link_rates(res, 0).columns) - {"time_us"}
        assert kinds == ({"egress", "ingress"} if ranks_per_node == 8 else {"nic_out", "nic_in"})


def test_timeline_draws_one_polygon_per_event(toy):
    for res in toy.values():
        fig = timeline(res, rank=0)
        n = sum(len(c.get_paths()) for c in fig.axes[0].collections)
        assert n == int((res.events["rank"] == 0).sum())
        matplotlib.pyplot.close(fig)
    fig = compare(toy, rank=1)
    assert len(fig.axes) == 4
    matplotlib.pyplot.close(fig)


def test_latency_table_is_relative_to_the_first(toy):
    t = latency_table(toy)
    assert list(t.index) == ["comet", "sequential"]
    assert t.loc["comet", "latency_vs_first"] == 1.0
    assert t.loc["sequential", "latency_vs_first"] == pytest.approx(
        toy["sequential"].latency_us / toy["comet"].latency_us)


def test_results_without_events_say_how_to_get_them():
    res = simulate(toy_plan(), system="comet", options=SimOptions(record=False))
    with pytest.raises(ValueError, match="record=True"):
        timeline(res)
    with pytest.raises(ValueError, match="record=True"):
        link_rates(res)
    with pytest.raises(ValueError, match="rank 5"):
        gantt_rows(simulate(toy_plan()), rank=5)


def test_nic_case_uses_nic_ports_only():
    plan = toy_plan(toy_hardware(ranks_per_node=1))
    df = link_rates(simulate(plan, system="comet"), rank=0)
    assert set(df.columns) == {"time_us", "nic_out", "nic_in"}
