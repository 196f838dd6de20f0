"""kernels/timeline.py: decoding the instrumented kernels' records into the simulator's event format, the
overflow count, the Chrome trace, the refusal to instrument under Triton's interpreter, and (on a GPU) a
small instrumented emulated layer0 + layer1 whose records cover the Plan exactly once.

CPU tests decode hand-made buffers (inline PTX does not run in the interpreter). sim/ is imported only inside
the tests that need it: the GPU machines have no simpy, and the `gpu` tests must run there.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import imbalanced, uniform
from comet.core.weights import random_tokens, random_weights, shard_weights
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.moe import moe_forward_fused, stage_tokens
from kernels.timeline import (
    CATEGORIES,
    EVENT_COLUMNS,
    KIND_NAMES,
    REC_GEMM0,
    REC_GEMM0_DIRECT,
    REC_GEMM1,
    REC_PULL,
    REC_REDUCE_SEND,
    RECORD_WORDS,
    LaunchTrace,
    TimelineOverflowError,
    TimelineRecorder,
    end_to_end,
    tile_remote_rows,
)
from kernels.workspace import EmulatedWorld

HW = HardwareProfile.from_name("h200")
US = 1000  # ns


def _launch(rank, layer, num_comm, num_gemm, comm_first, recs, counts, slots, *, tile_rows=None, hidden_N=40,
            block_n=16, row_bytes=64, combine_elem_bytes=2) -> LaunchTrace:
    """A LaunchTrace over a hand-made buffer. recs: {(program, n): (begin, ready, end, sm, kind, item, peer,
    rows, col)} with times in ns."""
    buf = np.zeros((num_comm + num_gemm, slots, RECORD_WORDS), dtype=np.int64)
    for (p, n), r in recs.items():
        buf[p, n, :10] = (*r, p)
    return LaunchTrace(rank=rank, layer=layer, variant="blocks", num_comm=num_comm, num_gemm=num_gemm,
                       comm_first=comm_first, slots=slots, row_bytes=row_bytes, hidden_N=hidden_N, block_n=block_n,
                       combine_elem_bytes=combine_elem_bytes, records=torch.from_numpy(buf),
                       counts=torch.tensor(counts, dtype=torch.int32), tile_rows=tile_rows)


def _recorder() -> TimelineRecorder:
    """Rank 1: layer0 (1 comm program, 2 GEMM programs) then layer1 (1 GEMM, 1 comm program)."""
    l0 = _launch(1, 0, 1, 2, True, {
        (0, 0): (100 * US, 100 * US, 104 * US, 131, REC_PULL, 0, 0, 5, 0),
        (0, 1): (104 * US, 104 * US, 106 * US, 131, REC_PULL, 1, 2, 3, 0),
        (1, 0): (101 * US, 101 * US, 111 * US, 3, REC_GEMM0, 0, -1, 0, 0),
        (1, 1): (111 * US, 115 * US, 120 * US, 3, REC_GEMM0, 2, -1, 0, 1),
        (2, 0): (102 * US, 103 * US, 112 * US, 7, REC_GEMM0, 1, -1, 0, 0),
    }, counts=[2, 2, 1], slots=2, tile_rows=torch.tensor([16, 16, 7]))
    l1 = _launch(1, 1, 1, 1, False, {
        (0, 0): (200 * US, 200 * US, 210 * US, 5, REC_GEMM1, 0, -1, 0, 2),
        (1, 0): (201 * US, 210 * US, 212 * US, 9, REC_REDUCE_SEND, 5, 1, 4, 2),
        (1, 1): (212 * US, 212 * US, 215 * US, 9, REC_REDUCE_SEND, 6, 0, 3, 0),
    }, counts=[1, 2], slots=2, tile_rows=torch.tensor([9]))
    return TimelineRecorder(launches=[l0, l1])


# ------------------------------------------------------------------------------------------ decoding
def test_kinds_are_the_simulators():
    pytest.importorskip("simpy")  # sim/ imports it
    from comet.core.events import KINDS

    sim = dict(KINDS)
    assert set(KIND_NAMES.values()) | {"reduce_local"} == set(CATEGORIES)
    assert all(sim[k] == c for k, c in CATEGORIES.items())


def test_decode_gives_exact_events():
    ev = _recorder().events()
    assert list(ev.columns) == EVENT_COLUMNS
    assert ev.attrs["origin_ns"] == 100 * US
    want = [  # rank, track, kind, category, layer, start, end, bytes, peer, program, block, sm, item, col, rows, wait
        (1, "SM 131", "pull", "comm", 0, 0, 4, 5 * 64, 0, 0, 2, 131, 0, 0, 5, 0),
        (1, "SM 131", "pull", "comm", 0, 4, 6, 3 * 64, 2, 0, 2, 131, 1, 0, 3, 0),
        (1, "SM 003", "gemm0", "compute", 0, 1, 11, 0, -1, 1, 0, 3, 0, 0, 16, 0),
        (1, "SM 003", "gemm0", "compute", 0, 15, 20, 0, -1, 1, 0, 3, 2, 1, 7, 4),
        (1, "SM 007", "gemm0", "compute", 0, 3, 12, 0, -1, 2, 1, 7, 1, 0, 16, 1),
        (1, "SM 005", "gemm1", "compute", 1, 100, 110, 0, -1, 0, 0, 5, 0, 2, 9, 0),
        # column block 2 of N=40 in 16-wide blocks is 8 wide; 2-byte partial sums; to this rank: reduce_local
        (1, "SM 009", "reduce_local", "compute", 1, 110, 112, 4 * 8 * 2, 1, 1, 1, 9, 5, 2, 4, 9),
        (1, "SM 009", "reduce_send", "comm", 1, 112, 115, 3 * 16 * 2, 0, 1, 1, 9, 6, 0, 3, 0),
    ]
    cols = ["rank", "track", "kind", "category", "layer", "start_us", "end_us", "bytes", "peer", "program", "block",
            "sm", "item", "col", "rows", "wait_us"]
    got = [tuple(row) for row in ev[cols].itertuples(index=False)]
    assert got == [tuple(w) for w in want]
    assert (ev["cause"] == -1).all() and np.allclose(ev["dur_us"], ev["end_us"] - ev["start_us"])
    assert ev["launch"].tolist() == [0] * 5 + [1] * 3


def test_direct_tiles_take_their_remote_rows_from_the_plan():
    # rows 0..5 owned by ranks [1, 1, 0, 2, 1, 0]; for rank 1, tiles [0, 3) and [3, 6) read 1 and 2 remote rows
    remote = tile_remote_rows(torch.tensor([1, 1, 0, 2, 1, 0]), torch.tensor([0, 3, 0]), torch.tensor([3, 6, 0]), 1)
    assert remote.tolist() == [1, 2, 0]
    lt = _launch(1, 0, 0, 1, True, {(0, 0): (0, 0, US, 4, REC_GEMM0_DIRECT, 1, -1, 0, 0)}, counts=[1], slots=1,
                 tile_rows=torch.tensor([3, 3, 0]))
    lt.tile_remote_rows = remote
    ev = TimelineRecorder(launches=[lt]).events()
    assert ev[["kind", "bytes", "rows", "block"]].values.tolist() == [["gemm0_direct", 2 * 64, 3, 0]]


def test_overflow_is_counted_and_never_decoded_past_the_slots():
    rec = _recorder()
    rec.launches[0].counts[:] = torch.tensor([5, 2, 1], dtype=torch.int32)  # program 0 had 5 items, 2 slots
    assert rec.overflow() == 3
    with pytest.raises(TimelineOverflowError, match="3 work items were not recorded"):
        rec.events()
    ev = rec.events(strict=False)
    assert len(ev) == 8 and (ev["program"] == 0).sum() == 3  # layer0's program 0: the 2 kept; layer1's: 1
    assert TimelineRecorder(slots=4).new_launch(
        rank=0, layer=0, variant="blocks", num_comm=2, num_gemm=3, comm_first=True, max_gemm_items=100,
        max_comm_items=100, device="cpu", row_bytes=1, hidden_N=1, block_n=1, combine_elem_bytes=1).slots == 4


def test_slots_default_to_the_most_items_a_program_can_have():
    lt = TimelineRecorder().new_launch(rank=0, layer=1, variant="blocks", num_comm=3, num_gemm=4, comm_first=False,
                                       max_gemm_items=9, max_comm_items=10, device="cpu", row_bytes=1, hidden_N=1,
                                       block_n=1, combine_elem_bytes=1)
    assert lt.slots == 4 and lt.records.shape == (7, 4, RECORD_WORDS) and lt.counts.shape == (7,)


def test_end_to_end_lays_each_ranks_launches_one_after_another():
    ev = _recorder().events()
    lay = end_to_end(ev, gap_us=5.0)
    l0, l1 = lay[lay["launch"] == 0], lay[lay["launch"] == 1]
    assert l0["begin_us"].min() == pytest.approx(5.0)  # the first t_begin after one gap
    assert l1["begin_us"].min() == pytest.approx(l0["end_us"].max() + 5.0)
    assert np.allclose(lay["end_us"] - lay["start_us"], ev["dur_us"])
    assert np.allclose(lay["start_us"] - lay["begin_us"], ev["wait_us"])


def test_chrome_trace_fields(tmp_path):
    pytest.importorskip("simpy")
    from kernels.timeline import chrome_trace, write_chrome_trace

    ev = _recorder().events()
    tr = chrome_trace(ev, label="H200", other={"model": "toy"})
    names = {e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "process_name"}
    assert names == {"H200 rank 1"}
    threads = {e["tid"]: e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "thread_name"}
    assert threads == {131: "SM 131", 3: "SM 003", 7: "SM 007", 5: "SM 005", 9: "SM 009"}
    slices = [e for e in tr["traceEvents"] if e["ph"] == "X"]
    assert [s["name"] for s in slices] == ev["kind"].tolist()
    s = slices[3]  # the tile that waited 4 us for its rows
    assert (s["cat"], s["pid"], s["tid"], s["ts"], s["dur"]) == ("compute", 1, 3, 15.0, 5.0)
    assert s["args"] == {"layer": 0, "event": 3, "cause": -1, "program": 1, "item": 2, "col": 1, "rows": 7,
                         "wait_us": 4.0}
    assert slices[0]["args"]["bytes"] == 320.0 and slices[0]["args"]["peer"] == 0
    assert tr["otherData"] == {"system": "H200", "model": "toy"}
    path = write_chrome_trace(ev, tmp_path / "t.json")
    assert json.loads(path.read_text())["traceEvents"]


# ------------------------------------------------------------------------------ refusal without a GPU
def test_instrumenting_without_a_gpu_raises_clearly():
    """CPU tensors (and, without CUDA, the interpreter): the instrumented build cannot run; nothing launches."""
    model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    par = ParallelConfig(ep=2)
    world = EmulatedWorld(model, par, capacity_tokens=32, dtype=torch.float32, device="cpu")
    pol = Policy(block_m=16, block_n0=16, block_n1=16, nc_layer0=2, nc_layer1=2, comm_rows=8)
    routing = uniform(24, 4, 2, seed=1)
    plan = make_plan(routing, model, par, HW, pol)
    w = random_weights(model)
    rec = TimelineRecorder()
    msg = "timeline recording needs a CUDA GPU.*inline PTX.*TRITON_INTERPRET"
    with pytest.raises(RuntimeError, match=msg):
        fused_layer0(world, plan, 0, shard_weights(w, par, 0).w0_ENK, timeline=rec)
    with pytest.raises(RuntimeError, match=msg):
        fused_layer1(world, plan, 0, shard_weights(w, par, 0).w1_EKN, timeline=rec)
    with pytest.raises(RuntimeError, match=msg):
        moe_forward_fused(world, random_tokens(24, 32), routing, w, model, par, pol, timeline=rec)
    assert rec.launches == []


def test_the_experiment_needs_a_gpu_or_a_recorded_run(tmp_path):
    from experiments import timeline_compare

    if not torch.cuda.is_available():
        with pytest.raises(SystemExit, match="needs a CUDA GPU"):
            timeline_compare.main(["--out", str(tmp_path)])
    with pytest.raises(SystemExit, match="run the GPU step first"):  # a --real folder without a recording
        timeline_compare.main(["--sim-only", "--out", str(tmp_path), "--real", str(tmp_path / "none")])


# ------------------------------------------------------------------------ the CPU step on a fake recording
def _fake_recording(plan, sms: int) -> TimelineRecorder:
    """What the kernels would record for `plan` (programs walk their items round-robin, as the kernels do),
    with made-up times: every item 3 us, programs starting together, layer1 after layer0."""
    rec = TimelineRecorder()
    pol = plan.policy
    for layer in (0, 1):
        nc = pol.nc_layer0 if layer == 0 else pol.nc_layer1
        num_gemm = sms - nc
        for rp in plan.ranks:
            if layer == 0:
                n_tiles, n_comm = int(rp.num_l0_tiles), int(rp.num_l0_chunks)
                src = rp.l0_chunk_src_C.tolist()
                rows = (rp.l0_chunk_end_C - rp.l0_chunk_start_C).tolist()
                tiles, cols = rp.l0_tile_row_end_T - rp.l0_tile_row_start_T, rp.l0_tile_col_T.tolist()
            else:
                n_chunks = int(rp.num_l1_chunks)
                n_tiles, n_comm = int(rp.num_l1_tiles), n_chunks * plan.l1_col_blocks
                starts, ends = rp.l1_chunk_start_C.tolist(), rp.l1_chunk_end_C.tolist()
                dest = rp.send_dest_S.tolist()
                tiles, cols = rp.l1_tile_row_end_T - rp.l1_tile_row_start_T, rp.l1_tile_col_T.tolist()
            lt = rec.new_launch(rank=rp.rank, layer=layer, variant="blocks", num_comm=nc, num_gemm=num_gemm,
                                comm_first=layer == 0, max_gemm_items=n_tiles, max_comm_items=max(n_comm, 1),
                                device="cpu", row_bytes=plan.model.hidden_N * 2, hidden_N=plan.model.hidden_N,
                                block_n=pol.block_n0 if layer == 0 else pol.block_n1, combine_elem_bytes=2,
                                tile_rows=tiles)
            t0 = (layer * plan.world_size + rp.rank) * 10_000 * US
            for i in range(n_comm + n_tiles):
                comm = i < n_comm
                j = i if comm else i - n_comm
                prog = j % (nc if comm else num_gemm)
                pid = (prog if layer == 0 else num_gemm + prog) if comm else (nc + prog if layer == 0 else prog)
                n = j // (nc if comm else num_gemm)
                b = t0 + n * 3 * US
                if comm and layer == 0:
                    r = (REC_PULL, j, src[j], rows[j], 0)
                elif comm:
                    c, ch = divmod(j, n_chunks)
                    r = (REC_REDUCE_SEND, j, dest[starts[ch]], ends[ch] - starts[ch], c)
                else:
                    r = (REC_GEMM0 if layer == 0 else REC_GEMM1, j, -1, 0, cols[j])
                lt.records[pid, n, :10] = torch.tensor((b, b, b + 3 * US, pid % sms, *r, pid))
                lt.counts[pid] += 1
    return rec


@pytest.mark.slow
def test_sim_only_step_draws_a_fake_recording(tmp_path):
    """The CPU step of experiments.timeline_compare on a small Mixtral case recorded by a fake GPU."""
    pytest.importorskip("simpy")
    from experiments import timeline_compare as tc
    from kernels.timeline import write_chrome_trace  # noqa: F401  (the step writes the trace)

    a = tc.parse_args(["--tokens", "512", "--ep", "4", "--out", str(tmp_path)])
    case = tc.case_of(a)
    plan, routing, _, _ = tc.build(case, HW.emulated_world(latency_us=tc.DRAM_LATENCY_US))
    events = _fake_recording(plan, HW.sms).events()
    events.to_csv(tmp_path / tc.REAL_CSV, index=False)
    (tmp_path / tc.CASE_JSON).write_text(json.dumps({
        "case": case, "sms": HW.sms, "device": "fake H200", "date": "2000-01-01",
        "routing_sha1": tc.routing_sha1(routing), "plan": tc.plan_fingerprint(plan)}))
    tc.main(["--sim-only", "--out", str(tmp_path)])
    summary = __import__("pandas").read_csv(tmp_path / tc.SUMMARY_CSV)
    real = summary[summary["source"] == "real"].set_index(["layer", "kind"])["count"]
    sim = summary[summary["source"] == "sim"].set_index(["layer", "kind"])["count"]
    assert real[(0, "gemm0")] == sim[(0, "gemm0")] == int(plan.rank(0).num_l0_tiles)
    assert real[(1, "gemm1")] == sim[(1, "gemm1")] == int(plan.rank(0).num_l1_tiles)
    trace = json.loads((tmp_path / tc.TRACE_JSON).read_text())
    assert sum(e["ph"] == "X" for e in trace["traceEvents"]) == len(events)
    assert (tmp_path / tc.FIGURE).stat().st_size > 20_000


# ------------------------------------------------------------------------------------------------ GPU
GPU_POLICY = Policy(block_m=128, block_n0=128, block_n1=128, nc_layer0=16, nc_layer1=28, comm_rows=64)
_TL = {"layer0_kwargs": {"impl": "triton"}, "layer1_kwargs": {"impl": "triton"}}  # the kernels a timeline records


def _gpu_case(variant):
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    routing = imbalanced(M=1000, E=8, topk=2, std=0.03, seed=2).to("cuda")
    world = EmulatedWorld(model, par, 1000, dtype=torch.bfloat16, device="cuda")
    w = random_weights(model, dtype=torch.bfloat16, device="cuda")
    x = random_tokens(1000, 512, seed=1, dtype=torch.bfloat16, device="cuda")
    return model, par, routing, world, w, x, GPU_POLICY.replace(layer0_comm=variant)


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["blocks", "direct", "copy-engine"])
def test_gpu_every_item_recorded_once(variant):
    model, par, routing, world, w, x, pol = _gpu_case(variant)
    # the instrumented build is the one-launch tl kernels': the plain build of the same kernels to compare with
    plain, plan = moe_forward_fused(world, x, routing, w, model, par, pol, checked=True, return_plan=True, **_TL)
    rec = TimelineRecorder()
    got = moe_forward_fused(world, x, routing, w, model, par, pol, checked=True, plan=plan, timeline=rec)
    assert torch.equal(got, plain), "instrumented outputs differ from the plain build's"
    assert rec.overflow() == 0
    ev = rec.events()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    assert (ev["sm"] >= 0).all() and (ev["sm"] < sms).all()
    assert (ev["wait_us"] >= 0).all() and (ev["end_us"] >= ev["start_us"]).all()
    gemm0 = "gemm0_direct" if variant == "direct" else "gemm0"
    for rp in plan.ranks:
        r = ev[ev["rank"] == rp.rank]
        items = {k: sorted(g["item"].tolist()) for k, g in r.groupby(["layer", "kind"])}
        assert items.pop((0, gemm0)) == list(range(int(rp.num_l0_tiles)))
        assert items.pop((1, "gemm1")) == list(range(int(rp.num_l1_tiles)))
        if variant == "blocks":
            assert items.pop((0, "pull")) == list(range(int(rp.num_l0_chunks)))
        comm1 = sorted(items.pop((1, "reduce_send"), []) + items.pop((1, "reduce_local"), []))
        assert comm1 == list(range(int(rp.num_l1_chunks) * plan.l1_col_blocks))
        assert not items, f"unexpected records {list(items)}"
        tiles = r[r["kind"].isin([gemm0, "gemm1"])]
        assert (tiles["rows"] > 0).all() and (tiles["rows"] <= pol.block_m).all()
    # one program's GEMM tiles follow each other: a tile begins after the previous one ended
    tiles = ev[ev["kind"].isin([gemm0, "gemm1"])]
    for _, g in tiles.groupby(["launch", "program"]):
        g = g.sort_values("item")
        assert (g["begin_us"].to_numpy()[1:] >= g["end_us"].to_numpy()[:-1]).all()
        assert (g["begin_us"] <= g["start_us"]).all()


@pytest.mark.gpu
def test_gpu_overflow_is_counted_not_written_past():
    model, par, routing, world, w, x, pol = _gpu_case("blocks")
    plain = moe_forward_fused(world, x, routing, w, model, par, pol, checked=True, **_TL)
    rec = TimelineRecorder(slots=1)
    got = moe_forward_fused(world, x, routing, w, model, par, pol, checked=True, timeline=rec)
    assert torch.equal(got, plain)
    assert rec.overflow() > 0
    with pytest.raises(TimelineOverflowError):
        rec.events()
    ev = rec.events(strict=False)
    assert ev.groupby(["launch", "program"]).size().max() == 1
    assert all(lt.records.shape[1] == 1 for lt in rec.launches)


@pytest.mark.gpu
def test_gpu_layer_by_layer_records_the_launches_given():
    """fused_layer0 / fused_layer1 called directly, for one rank only: two launches, that rank's items."""
    model, par, routing, world, w, x, pol = _gpu_case("blocks")
    plan = make_plan(routing, model, par, HW, pol)
    stage_tokens(world, x, 1000)
    rec = TimelineRecorder()
    fused_layer0(world, plan, 2, shard_weights(w, par, 2).w0_ENK, timeline=rec)
    fused_layer1(world, plan, 2, shard_weights(w, par, 2).w1_EKN, timeline=rec)
    ev = rec.events()
    assert set(ev["rank"]) == {2} and ev.groupby("launch")["layer"].unique().map(list).tolist() == [[0], [1]]
    world.reset()  # the other ranks' combine flags were never consumed
