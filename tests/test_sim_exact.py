"""Exact traces of hand-checkable cases (tests/helpers/sim_cases.py's toy hardware and plan).

Toy figures: tile 1 x 128 x 128 takes TAU = 2*128*128 / (1e6 * 0.25) = 0.131072 us; a 256-byte row
moves at 500 bytes/us on one communication block (0.512 us) or 1000 bytes/us uncapped (0.256 us);
memory streams at 1000 bytes/us per SM, 4000 bytes/us for the whole GPU; latency 1 us; launch 1 us;
collective 3 us. Without the GEMM memory floor (SimOptions.memory_floor, tested on its own below).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import simpy
from helpers.sim_cases import toy_hardware, toy_plan

from comet.core.config import ParallelConfig
from sim.hardware_model import LinkNetwork
from sim.options import SimOptions
from sim.run import simulate

TAU = 0.131072
TAU64 = 0.098304  # a 1 x 64 x 128 tile: efficiency 64 / (64 + 128) * 128 / (128 + 128) = 1/6
# the toy's 4 GB/s of HBM would make every tile weight-bound: these traces check the schedule, not the tile
# model; and layer0's tail (tested on its own below) is off: the toy's two tiles give it none, only a launch
TOY = SimOptions(memory_floor=False, l0_tail_pct=0)


def trace(res, rank):
    ev = res.events
    ev = ev[ev["rank"] == rank]
    return [(t, str(k), round(s, 6), round(e, 6)) for t, k, s, e in
            zip(ev["track"], ev["kind"], ev["start_us"], ev["end_us"], strict=True)]


def test_toy_tile_time():
    assert toy_hardware().tile_time_us(1, 128, 128) == pytest.approx(TAU, abs=1e-12)


def test_gemm0_slowdown_scales_layer0_tiles_only():

    from sim.workload import tile_us

    plan = toy_plan()
    slow = dataclasses.replace(plan, hardware=plan.hardware.replace(gemm0_slowdown=1.25))
    rows, cols = np.array([1, 1]), np.array([128, 128])
    for padded in (True, False):
        assert tile_us(slow, 0, rows, cols, padded) == pytest.approx(1.25 * tile_us(plan, 0, rows, cols, padded))
        assert tile_us(slow, 1, rows, cols, padded) == pytest.approx(tile_us(plan, 1, rows, cols, padded))
    assert simulate(slow, system="comet", options=TOY).layer0_us > simulate(plan, system="comet", options=TOY).layer0_us


def test_l1_item_overhead_delays_each_layer1_item():

    plan = toy_plan()
    slow = dataclasses.replace(plan, hardware=plan.hardware.replace(l1_item_overhead_us=0.25))
    ev, ev_slow = (simulate(p, system="comet", options=TOY).events for p in (plan, slow))
    for kind in ("reduce_local", "reduce_send"):
        d = (ev[ev.kind == kind].end_us - ev[ev.kind == kind].start_us).to_numpy()
        d_slow = (ev_slow[ev_slow.kind == kind].end_us - ev_slow[ev_slow.kind == kind].start_us).to_numpy()
        assert d_slow == pytest.approx(d + 0.25)
    pulls = ev[ev.kind == "pull"]
    assert (ev_slow[ev_slow.kind == "pull"].end_us.to_numpy() == pulls.end_us.to_numpy()).all()  # layer0 as is
    with pytest.raises(ValueError, match="l1_item_overhead_us must be >= 0"):
        plan.hardware.replace(l1_item_overhead_us=-1.0)


def test_comet_exact_trace():
    res = simulate(toy_plan(), system="comet", options=TOY)
    pull_end = 1 + 1 + 0.512  # launch, link latency, 256 B at the block's 500 B/us
    l1 = pull_end + TAU + 1  # layer0 ends with the remote tile; layer1's launch
    red = l1 + TAU  # both layer1 tiles run at once on SMs 0 and 1
    expected = [
        ("stream", "launch", 0, 1),
        ("SM 000", "gemm0", 1, 1 + TAU),  # local row: no wait
        ("SM 003", "pull", 1, pull_end),  # the one communication block (nc_layer0 = 1)
        ("SM 001", "gemm0", pull_end, pull_end + TAU),  # waited on flag[1]
        ("stream", "launch", pull_end + TAU, l1),
        ("SM 000", "gemm1", l1, red),
        ("SM 001", "gemm1", l1, red),
        ("SM 003", "reduce_local", red, red + 0.512),  # (256 read + 256 written) at 1000 B/us
        ("stream", "launch", red, red + 1),  # the tail (Policy.l1_tail): it finds no item left
        ("SM 003", "reduce_send", red + 0.512, red + 1.024),  # 256 B at 500 B/us
        ("stream", "launch", red + 1.024, red + 2.024),  # the combine launch; rank 1's push lands meanwhile
        ("stream", "combine_reduce", red + 2.024, red + 2.024 + 0.256),  # 2 slots + 2 rows, 4000 B/us
    ]
    expected = [(t, k, round(s, 6), round(e, 6)) for t, k, s, e in expected]
    assert trace(res, 0) == expected
    assert trace(res, 1) == expected  # the case is symmetric
    assert res.latency_us == pytest.approx(red + 2.280)
    assert res.layer0_us == pytest.approx(pull_end + TAU)


def test_comet_layer0_tail_runs_the_last_tiles_on_the_pull_sms():
    """SimOptions.l0_tail_pct: with 64-column tiles each rank has 4 layer0 tiles (local row: 0, 1; remote row:
    2, 3) on 3 compute blocks and one pull block; at 100 % the tail's one block takes 4 * 100 * 1 // (100 * 4)
    = 1 tile, the last, on the pull SM after the pull kernel has ended and a launch; at 50 % none (the empty
    tail GEMM still costs its launch); at 0 nothing is launched."""
    plan = toy_plan(block_n0=64)
    pull_end = 1 + 1 + 0.512
    layer0 = {}
    for pct in (0, 50, 100):
        res = simulate(plan, system="comet", options=TOY.replace(l0_tail_pct=pct))
        ev = res.events
        ev = ev[(ev["rank"] == 0) & (ev["layer"] == 0)]
        layer0[pct] = sorted((t, str(k), round(s, 6), round(e, 6)) for t, k, s, e in
                             zip(ev["track"], ev["kind"], ev["start_us"], ev["end_us"], strict=True))
        assert res.layer0_us == pytest.approx({0: pull_end + TAU64, 50: pull_end + 1,
                                               100: pull_end + 1 + TAU64}[pct])
    def rounded(rows):
        return sorted((t, k, round(s, 6), round(e, 6)) for t, k, s, e in rows)

    common = [("stream", "launch", 0, 1), ("SM 000", "gemm0", 1, 1 + TAU64), ("SM 001", "gemm0", 1, 1 + TAU64),
              ("SM 003", "pull", 1, pull_end), ("SM 002", "gemm0", pull_end, pull_end + TAU64)]  # tile 2: remote
    tail_launch = ("stream", "launch", pull_end, pull_end + 1)
    assert layer0[0] == rounded(common + [("SM 000", "gemm0", pull_end, pull_end + TAU64)])  # tile 3 on SM 0
    assert layer0[50] == rounded(common + [("SM 000", "gemm0", pull_end, pull_end + TAU64), tail_launch])
    assert layer0[100] == rounded(common + [tail_launch, ("SM 003", "gemm0", pull_end + 1, pull_end + 1 + TAU64)])
    with pytest.raises(ValueError, match="l0_tail_pct=101: a percent"):
        SimOptions(l0_tail_pct=101)


def test_comet_tail_takes_the_items_left_after_the_gemm():
    """Policy.l1_tail: once layer1's GEMM has ended (and a launch later), its SMs claim the items the one
    communication block has not claimed yet, so the items run side by side; without it the one block runs
    them all in turn."""
    plan = toy_plan()
    slow = plan.hardware.replace(l1_item_overhead_us=4.0)  # an item outlasts the tail's 1 us launch
    tail = dataclasses.replace(plan, hardware=slow)
    no_tail = dataclasses.replace(tail, policy=tail.policy.replace(l1_tail=False))
    res, res_no = (simulate(p, system="comet", options=TOY) for p in (tail, no_tail))
    for r in (0, 1):
        items = [(t, s) for t, k, s, _ in trace(res, r) if k in ("reduce_local", "reduce_send")]
        items_no = [(t, s) for t, k, s, _ in trace(res_no, r) if k in ("reduce_local", "reduce_send")]
        assert [t for t, _ in items_no] == ["SM 003", "SM 003"]
        assert items[0][0] == "SM 003" and items[1][0] != "SM 003", items  # the second one on a GEMM SM
        assert items[1][1] == pytest.approx(items[0][1] + 1.0)  # claimed as the tail started
    assert res.latency_us < res_no.latency_us - 3.0


def test_comet_combine_waits_for_the_last_push():
    # a slower link latency (3 us) outlasts the combine's launch (1 us): the owner waits 2 us
    res = simulate(toy_plan(toy_hardware(link_latency_us=3.0)), system="comet", options=TOY)
    tr = trace(res, 0)
    kinds = [k for _, k, _, _ in tr]
    assert kinds[-3:] == ["launch", "arrival_wait", "combine_reduce"]
    (_, _, _, e0), (_, _, s1, e1) = tr[-3], tr[-2]
    assert e0 == s1 and e1 - s1 == pytest.approx(2.0)


def test_sequential_exact_trace():
    res = simulate(toy_plan(), system="sequential", options=TOY)
    g0 = 1 + 0.128 + 3 + 0.256 + 1 + 1  # launch, permute 512 B, collective, 256 B uncapped, latency, launch
    a = g0 + TAU + 1
    g1 = a + 0.256 + 1
    r = g1 + TAU + 1
    c = r + 0.256 + 3
    expected = [
        ("stream", "launch", 0, 1),
        ("stream", "permute", 1, 1.128),
        ("nccl stream", "dispatch", 1.128, 5.384),  # NCCL's device latency (the toy's 3 us) is communication
        ("stream", "launch", 5.384, g0),
        ("SM 000", "gemm0", g0, g0 + TAU),
        ("SM 001", "gemm0", g0, g0 + TAU),
        ("stream", "launch", g0 + TAU, a),
        ("stream", "activation", a, a + 0.256),  # 2 rows x (128 + 128) x 2 B
        ("stream", "launch", a + 0.256, g1),
        ("SM 000", "gemm1", g1, g1 + TAU),
        ("SM 001", "gemm1", g1, g1 + TAU),
        ("stream", "launch", g1 + TAU, r),
        ("stream", "topk_reduce", r, r + 0.256),  # 2 rows read + 2 sums written
        ("nccl stream", "combine", r + 0.256, c + 1.256),
        ("stream", "launch", c + 1.256, c + 2.256),
        ("stream", "combine_reduce", c + 2.256, c + 2.512),
    ]
    expected = [(t, k, round(s, 6), round(e, 6)) for t, k, s, e in expected]
    assert sorted(trace(res, 0), key=lambda x: (x[2], x[3], x[0])) == sorted(expected, key=lambda x: (x[2], x[3], x[0]))
    assert res.hidden_comm_fraction == 0.0


def test_chunked_with_one_chunk_is_sequential():
    a = simulate(toy_plan(), system="sequential", options=TOY)
    b = simulate(toy_plan(), system="chunked", options=TOY.replace(chunks=1))
    assert trace(a, 0) == trace(b, 0) and a.latency_us == b.latency_us


def test_copy_engine_exact():
    # one copy of the source's whole shard (2 rows, 512 B) at min(link, 112 GB/s) = 1 GB/s: 0.512 us after
    # 1 us latency; no SM reserved here, so the waiting tile runs on SM 1
    res = simulate(toy_plan(layer0_comm="copy-engine", copy_engine_reserved_sms=0), system="comet", options=TOY)
    tr = trace(res, 0)
    assert ("copy engine", "copy", 1.0, 2.512) in tr
    assert ("SM 001", "gemm0", 2.512, round(2.512 + TAU, 6)) in tr
    # with the kernels' 8 reserved SMs (of 4 here), one compute block is left: both tiles on SM 0
    tr = trace(simulate(toy_plan(layer0_comm="copy-engine"), system="comet", options=TOY), 0)
    assert [(t, k) for t, k, _, _ in tr if k == "gemm0"] == [("SM 000", "gemm0")] * 2


def test_direct_exact():
    # the remote tile reads its row itself: max(TAU, transfer 0.512 + latency 1)
    res = simulate(toy_plan(layer0_comm="direct"), system="comet", options=TOY)
    tr = trace(res, 0)
    assert ("SM 001", "gemm0_direct", 1.0, 2.512) in tr
    assert ("SM 000", "gemm0_direct", 1.0, round(1 + TAU, 6)) in tr


def test_nic_between_nodes():
    # one rank per node: the row crosses the NIC (0.25 GB/s, 4 us latency) instead of the link
    plan = toy_plan(toy_hardware(ranks_per_node=1))
    res = simulate(plan, system="comet", options=TOY)
    assert ("SM 003", "pull", 1.0, 1 + 4 + 256 / 250) in trace(res, 0)
    assert res.link_bytes[2].sum() == pytest.approx(4 * 256)  # nic_out: 2 rows pulled, 2 sums pushed
    assert res.link_bytes[3].sum() == pytest.approx(4 * 256)  # nic_in
    assert res.link_bytes[0].sum() == 0


# ------------------------------------------------------------------------------------ link sharing
def _net(link_gbps=0.1, W=3):
    env = simpy.Environment()
    return env, LinkNetwork(env, ParallelConfig(ep=W), toy_hardware(link_gbps=link_gbps))


def test_fair_share_one_port():
    env, net = _net()
    a = net.transfer(0, 1, 100.0)  # both leave egress(0): 50 B/us each
    b = net.transfer(0, 2, 300.0)
    env.run()
    assert (a.value, b.value) == (2.0, 4.0)  # then b alone at 100 B/us: 200 B more in 2 us


def test_max_min_with_cap_and_two_ports():
    # f1: 0 -> 1 capped at 30 B/us; f2: 0 -> 2; f3: 2 -> 1. Ports of 100 B/us. Max-min: f1 30, f2 70, f3 70.
    env, net = _net()
    f1 = net.transfer(0, 1, 300.0, cap_gbps=0.03)
    f2 = net.transfer(0, 2, 700.0)
    f3 = net.transfer(2, 1, 1400.0)
    env.run()
    assert f1.value == pytest.approx(10.0)
    assert f2.value == pytest.approx(10.0)
    assert f3.value == pytest.approx(17.0)  # 700 B by t=10, then alone at 100 B/us
    assert net.port_bytes[:3].tolist() == pytest.approx([1000.0, 0.0, 1400.0])  # egress 0, 1, 2
    assert net.port_bytes[3:6].tolist() == pytest.approx([0.0, 1700.0, 700.0])  # ingress 0, 1, 2
    assert net.port_busy_us[0] == pytest.approx(10.0)


def test_late_arrival_reshares():
    env, net = _net()
    a = net.transfer(0, 1, 300.0)
    done = {}

    def later():
        yield env.timeout(1.0)  # a has 200 B left; then both at 50 B/us
        done["b"] = yield net.transfer(0, 2, 100.0)

    env.process(later())
    env.run()
    assert done["b"] == pytest.approx(3.0)
    assert a.value == pytest.approx(4.0)  # 100 B left at t=3, alone: 1 us


def test_memory_floor_on_the_toy():
    # a layer1 tile of the toy: its expert has 2 rows (2 row blocks of 1), one 128-column block, K = 128:
    # weights 128 x 128 shared by 2 tiles, 1 row of A, 1 row of output: 16896 bytes, 2 tiles share 4000 B/us
    from sim.engine import grouped_gemm_tiles

    plan = toy_plan()
    floor_us = (128 * 128 / 2 + 128 + 128) * 2 / (4000 / 2)
    assert grouped_gemm_tiles(plan, 1, np.array([2]), True) == pytest.approx([floor_us, floor_us])
    assert grouped_gemm_tiles(plan, 1, np.array([2]), True, memory_floor=False) == pytest.approx([TAU, TAU])
    assert simulate(plan, system="comet").latency_us > simulate(plan, system="comet", options=TOY).latency_us


def test_memory_floor_is_the_weights_at_hbm_rate_for_one_row_block():
    # Mixtral layer0 (gelu), one expert of 128 rows: 112 tiles (K / 128) read the 4096 x 14336 weights once; the
    # kernel cannot beat (weights + A + output) / hbm_gbps = 40.7 us, more than a tile's compute (27.4 us); with
    # 4096 rows the tiles stay compute-bound
    from sim.engine import grouped_gemm_tiles
    from sim.run import make_case

    plan = make_case("mixtral-8x7b", ep=8, tokens=512, hw="h800")
    N, K, hbm = 4096, 14336, plan.hardware.hbm_gbps * 1e3
    small = grouped_gemm_tiles(plan, 0, np.array([128]), True)
    assert len(small) == 112
    assert max(small) == pytest.approx((N * K + 128 * N + 128 * K) * 2 / hbm, rel=1e-12)
    assert max(small) > 1.4 * grouped_gemm_tiles(plan, 0, np.array([128]), True, memory_floor=False)[0]
    big = grouped_gemm_tiles(plan, 0, np.array([4096]), True)
    assert big == pytest.approx(grouped_gemm_tiles(plan, 0, np.array([4096]), True, memory_floor=False))
