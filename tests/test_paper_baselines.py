"""The paper's baselines (sim/megatron.py, sim/pipelined_moe.py, sim/collectives.py): closed-form times on the
toy case, the bytes they move, what distinguishes them, and the errors they raise."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from helpers.sim_cases import toy_hardware, toy_plan

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing
from sim.options import SimOptions
from sim.run import make_case, simulate

TAU = 0.131072  # one toy 1 x 128 x 128 tile (tests/test_sim_exact.py)
TOY = SimOptions(memory_floor=False)  # the toy's 4 GB/s of HBM would make its tiles weight-bound


def _toy(**hw):
    return toy_plan(toy_hardware(**{"host_sync_us": 2.0, **hw}))


def test_megatron_allgather_closed_form():
    # toy: 2 ranks, one expert each, 2 tokens owned and 2 rows (1 local, 1 remote) per rank, rows of 256 bytes.
    # Every step in order on one stream; a collective = 3 us fixed + its bytes at 1000 bytes/us + 1 us latency.
    coll = lambda nbytes: 3.0 + nbytes / 1000.0 + 1.0  # noqa: E731
    mem = lambda nbytes: 1.0 + nbytes / 4000.0  # noqa: E731  (a launch, then HBM)
    rows, own, M, rb, act_rb = 2, 2, 4, 256, (128 + 128) * 2
    expected = (coll(own * 1 * 8) + coll(own * 1 * 4) + coll(own * rb)  # indices, probabilities, hidden states
                + mem(2 * rows * rb) + 2.0 + mem(2 * rows * rb)  # gather local rows, host sync, permute
                + (1.0 + TAU) + mem(rows * act_rb) + (1.0 + TAU)  # GEMM0 (2 tiles on 4 SMs), activation, GEMM1
                + mem(6 * rows * rb + M * rb)  # unpermute into a zeroed M x N buffer
                + coll(own * rb))  # reduce-scatter
    for system in ("megatron-cutlass", "megatron-te"):
        r = simulate(_toy(), system=system, options=TOY)
        assert r.latency_us == pytest.approx(expected, abs=1e-9), system
        assert r.hidden_comm_fraction == 0.0


def test_megatron_alltoall_closed_form():
    # alltoall dispatcher: permute, counts all-gather (1 expert x 8 bytes), host sync, all-to-all of the one
    # remote row, GEMMs, all-to-all back, unpermute (2 rows read and written, 2 tokens written)
    coll = lambda nbytes: 3.0 + nbytes / 1000.0 + 1.0  # noqa: E731
    mem = lambda nbytes: 1.0 + nbytes / 4000.0  # noqa: E731
    rb, act_rb = 256, (128 + 128) * 2
    expected = (mem(2 * 2 * rb) + coll(8) + 2.0 + coll(rb) + (1.0 + TAU) + mem(2 * act_rb) + (1.0 + TAU)
                + coll(rb) + mem(2 * 2 * rb + 2 * rb))
    r = simulate(_toy(), system="megatron-te", options=TOY.replace(dispatcher="alltoall"))
    assert r.latency_us == pytest.approx(expected, abs=1e-9)


def _two_experts_per_rank():
    # EP=2, 4 experts (2 per rank), 8 tokens, topk 1: rank r's experts get 2 rows each
    model = ModelConfig("toy4", hidden_N=128, ffn_K=128, experts_E=4, topk=1, layers=1)
    routing = Routing(torch.tensor([[e] for e in (0, 1, 2, 3, 0, 1, 2, 3)]), torch.ones(8, 1), 4)
    pol = Policy(block_m=1, block_n0=128, block_n1=128, comm_rows=1, nc_layer0=1, nc_layer1=1)
    return make_plan(routing, model, ParallelConfig(ep=2), toy_hardware(), pol)


def test_cutlass_loop_pays_a_launch_and_a_wave_per_expert():
    # two experts of 2 rows: grouped = one launch, 4 tiles in one wave on 4 SMs; loop = two launches, two waves
    plan = _two_experts_per_rank()
    te, cutlass = (simulate(plan, system=s, options=TOY) for s in ("megatron-te", "megatron-cutlass"))
    assert cutlass.latency_us - te.latency_us == pytest.approx(2 * (1.0 + TAU), abs=1e-9)
    launches = {s: int((r.events["kind"] == "launch").sum()) for s, r in (("te", te), ("cutlass", cutlass))}
    assert launches["cutlass"] == launches["te"] + 2 * 2  # one more per layer per rank


def test_allgather_moves_every_token_to_every_rank():
    plan = make_case("mixtral-8x7b", ep=8, tokens=512, hw="h800")
    W, rb = 8, plan.model.hidden_N * plan.model.dtype_bytes
    own = np.bincount(plan.token_owner_M.numpy(), minlength=W).astype(float)
    r = simulate(plan, system="megatron-te")
    sent = np.zeros((W, W))
    for _, s, d, nbytes, _, _ in r.flows:
        sent[s, d] += nbytes
    meta = np.outer(own * 2 * (8 + 4), np.ones(W))  # indices and probabilities, topk 2
    expected = np.outer(own * rb, np.ones(W)) + meta + np.outer(np.ones(W), own * rb)  # gather + reduce-scatter
    np.fill_diagonal(expected, 0.0)
    np.testing.assert_allclose(sent, expected)
    a2a = simulate(plan, system="megatron-te", options=SimOptions(dispatcher="alltoall"))
    assert sum(f[3] for f in a2a.flows) < 0.5 * sent.sum()  # topk 2 of 8 experts: about 2/8 of all-gather's


def test_pipelined_systems_overlap_and_nccl_takes_sms():
    plan = make_case("mixtral-8x7b", ep=8, tokens=8192, hw="h800")
    hw = plan.hardware
    no_nccl = dataclasses.replace(plan, hardware=hw.replace(nccl_sms=0))
    for q in (1, 2):
        # a high-priority NCCL stream takes its SMs from a running GEMM at once
        opts = SimOptions(chunks=q, record=False, nccl_priority=True)
        with_sms, without = (simulate(p, system="tutel", options=opts).latency_us for p in (plan, no_nccl))
        if q == 1:  # no collective runs beside a GEMM: the SMs NCCL holds cost nothing
            assert with_sms == pytest.approx(without)
        else:
            assert with_sms > without
    fm = simulate(plan, system="fastermoe")
    assert 0.0 < fm.hidden_comm_fraction < 1.0
    assert int((fm.events["kind"] == "host_sync").sum()) == 8  # one per rank: its buffers sized on the host


def test_tutel_hierarchical_all_to_all_keeps_the_bytes_between_nodes(monkeypatch):
    # 2 nodes of 4: Tutel's 2-D all-to-all moves the same bytes between nodes as a flat one, in 2 steps (at its
    # static capacity, dropping what exceeds it: then it moves as many rows as FasterMoE)
    import sim.pipelined_moe as pm

    plan = make_case("mixtral-8x7b", ep=8, tokens=1024, hw="h800", ranks_per_node=4)
    opts = SimOptions(chunks=2)
    dynamic = simulate(plan, system="tutel", options=opts)  # by default every row kept: the dynamic capacity
    monkeypatch.setattr(pm, "TUTEL_DROP_ROWS", True)
    tutel, fm = (simulate(plan, system=s, options=opts) for s in ("tutel", "fastermoe"))
    counts = 8 * 4 * 8 * plan.experts_per_rank  # FasterMoE's counts: 8 ranks x 4 remote peers x 8-byte counts
    np.testing.assert_allclose(tutel.link_bytes[2:].sum(), fm.link_bytes[2:].sum() - 2 * counts, rtol=1e-12)
    comm = ["dispatch", "combine", "metadata"]
    per_rank = lambda r: int((r.events["kind"].isin(comm) & (r.events["rank"] == 0)).sum())  # noqa: E731
    assert per_rank(tutel) == 2 * 2 * 2  # dispatch and combine, 2 chunks, 2 stages
    assert per_rank(dynamic) == 1 + 2 * 2 * 2  # the dynamic capacity's all-reduce first
    ev = dynamic.events
    assert ((ev["kind"] == "host_sync") & (ev["rank"] == 0)).sum() == 1  # which the host reads
    assert per_rank(fm) == 1 + 2 * 2  # the counts, then dispatch and combine of 2 chunks
    # issued from C++ ahead of the GPU: NCCL's device latency only, no host call path (collective_fixed); the
    # dynamic capacity's all-reduce is a torch.distributed call
    for res in (tutel, fm):
        assert not (res.events["kind"] == "collective_fixed").any()
    assert (dynamic.events["kind"] == "collective_fixed").any()


def test_baselines_are_slower_than_their_bound():
    # the sequential bound moves the Plan's bytes with ideal kernels; Megatron as it ran cannot beat it
    plan = make_case("phi-3.5-moe", ep=8, tokens=2048, hw="h800")
    seq = simulate(plan, system="sequential").latency_us
    for s in ("megatron-cutlass", "megatron-te"):
        assert simulate(plan, system=s).latency_us > seq, s


def test_errors():
    tp2 = make_case("mixtral-8x7b", ep=4, tp=2, tokens=256, hw="h800")
    for s in ("fastermoe", "tutel"):
        with pytest.raises(ValueError, match="TP = 1"):
            simulate(tp2, system=s)
        with pytest.raises(ValueError, match="whole MoE layer"):
            simulate(toy_plan(), system=s, options=SimOptions(layers="layer1"))
    with pytest.raises(ValueError, match="whole MoE layer"):
        simulate(toy_plan(), system="megatron-te", options=SimOptions(layers="layer0"))
    with pytest.raises(ValueError, match="dispatcher"):
        SimOptions(dispatcher="ring")


def _gemm_kernels(ev):
    """(first tile start, last tile start) of each GEMM kernel of one rank: its tiles, in time order, until the
    kind changes (the pipelines alternate gemm0 and gemm1 kernels)."""
    g = ev[ev["kind"].isin(["gemm0", "gemm1"])].sort_values("start_us", kind="stable")
    grp = (g["kind"] != g["kind"].shift()).cumsum()
    return g.groupby(grp)["start_us"].agg(["min", "max"]).to_numpy()


@pytest.mark.parametrize("system", ["tutel", "fastermoe"])
def test_nccl_kernel_waits_for_the_gemms_last_tile(system):
    # default-priority streams: an NCCL kernel launched beside a GEMM gets SMs once the GEMM has handed out its
    # last tile, so no collective of a rank starts between a GEMM kernel's first and last tile there
    plan = make_case("mixtral-8x7b", ep=8, tokens=4096, hw="h800")
    res = simulate(plan, system=system, options=SimOptions(chunks=4))
    ev = res.events
    checked = 0
    for r in range(plan.world_size):
        e = ev[ev["rank"] == r]
        kernels = _gemm_kernels(e)
        nccl = e[e["track"] == "nccl stream"]
        starts = nccl.groupby((nccl["start_us"] != nccl["end_us"].shift()).cumsum())["start_us"].min().to_numpy()
        for t in starts:
            inside = (kernels[:, 0] < t - 1e-9) & (t < kernels[:, 1] - 1e-9)
            assert not inside.any(), (r, t, kernels[inside])
            checked += 1
    assert checked >= plan.world_size * 4
    if system != "tutel":
        return
    hi = simulate(plan, system=system, options=SimOptions(chunks=4, nccl_priority=True)).events
    e = hi[hi["rank"] == 0]
    kernels, nccl = _gemm_kernels(e), e[e["track"] == "nccl stream"]["start_us"].to_numpy()
    assert any(((kernels[:, 0] < t) & (t < kernels[:, 1])).any() for t in nccl)  # priority: they start inside


def test_tutel_chunks_split_its_capacity_evenly(monkeypatch):
    # Tutel pads every (source, expert) pair to its capacity and splits the capacity dimension into equal chunks:
    # every chunk's GEMM has W x capacity / Q rows per local expert, whatever the routing's raggedness
    import sim.pipelined_moe as pm
    from sim.pipelined_moe import PipelinedSim, tutel_capacity

    plan = make_case("mixtral-8x7b", ep=8, tokens=4096, hw="h800", routing="imbalanced", std=0.03)
    monkeypatch.setattr(pm, "TUTEL_DROP_ROWS", True)  # Tutel at its static capacity, dropping what exceeds it
    for q in (1, 2, 4):
        sim = PipelinedSim(plan, SimOptions(chunks=q), "tutel")
        cap = tutel_capacity(plan, q, factor=1.0)
        assert cap % q == 0 and cap == 2 * (4096 // 8) // 8 == sim.capacity  # topk x tokens per rank / experts
        for r in range(8):
            assert (sim.rows_QE[r] == 8 * cap // q).all()
        sent = sum(b for c in sim.dispatch for step in c for b in step[0].pair.values()) if q == 1 else None
        if sent is not None:
            assert sent == pytest.approx(8 * 7 * cap * sim.row_bytes)  # every pair its capacity, padded
    # by default no row is dropped: the static capacity would drop some here, so the dynamic one (the largest pair)
    monkeypatch.setattr(pm, "TUTEL_DROP_ROWS", False)
    sim = PipelinedSim(plan, SimOptions(chunks=4), "tutel")
    most = max(int(w.max()) for w in sim.rows_WE)
    assert sim.tutel_dynamic and most > 2 * (4096 // 8) // 8
    assert most <= sim.capacity < most + 4 and sim.capacity % 4 == 0
    # a balanced routing balances each expert's rows, not each (source, expert) pair's: some pairs exceed the static
    # capacity there too
    assert PipelinedSim(make_case("mixtral-8x7b", ep=8, tokens=4096, hw="h800"), SimOptions(chunks=4),
                        "tutel").tutel_dynamic


def test_tutels_static_capacity_drops_and_the_dynamic_one_keeps_every_row():
    from sim.pipelined_moe import tutel_capacity

    plan = make_case("mixtral-8x7b", ep=8, tokens=4096, hw="h800")
    assert tutel_capacity(plan, 4, factor=1.0) == 2 * (4096 // 8) // 8
    assert tutel_capacity(plan, 4, factor=0.0, max_pair_rows=301) == 304
    assert tutel_capacity(plan, 4, factor=-1.0, max_pair_rows=301) == 128  # bounded by the static one
    with pytest.raises(ValueError, match="max_pair_rows"):
        tutel_capacity(plan, 4, factor=0.0)


def test_fastermoe_steps_exchange_with_worker_groups():
    # group-wise exchange, groups of 4 at W = 8: step 0 receives the rows of the rank's own group, step 1 the rest
    from sim.pipelined_moe import PipelinedSim, fastermoe_degree

    plan = make_case("mixtral-8x7b", ep=8, tokens=4096, hw="h800")
    sim = PipelinedSim(plan, SimOptions(), "fastermoe")
    assert sim.Q == fastermoe_degree(8) == 2
    for r in range(8):
        own = np.arange(8) // 4 == r // 4
        assert (sim.rows_QW[r][0][~own] == 0).all() and (sim.rows_QW[r][1][own] == 0).all()
        assert sim.rows_QW[r].sum() == sim.rows_WE[r].sum()
