"""The GPU benchmarks run end to end on a small case (they have no CPU path): a kernel API change that a
benchmark was not updated for fails here instead of in a long measurement run."""

import csv

import pytest


@pytest.mark.gpu
def test_gpu_fused_layers_benchmark_runs(tmp_path):
    from benchmarks import fused_layers
    fused_layers.main(["--cases", "qwen2-moe-2.7b:1024:2", "--routing", "balanced", "imbalanced", "--out",
                       str(tmp_path), "--tag", "smoke", "--l1-configs", "default;l1_comm_rows=16",
                       "--l1-sweep-nc", "4"])
    with open(tmp_path / "smoke.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    impls = {(r["layer"], r["impl"]) for r in rows}
    assert {("l0", "gemm_alone"), ("l0", "sequential"), ("l0", "fused_blocks"), ("l0", "fused_direct"),
            ("l1", "gemm_alone"), ("l1", "fused"), ("l1", "owner_reduce")} <= impls, impls
    assert {r["routing"] for r in rows} == {"balanced", "imbalanced"}
    errs = [float(r["rel_err"]) for r in rows if r["rel_err"]]
    assert errs and max(errs) < 1e-2
    assert any(r["note"] == "l1_comm_rows=16" and r["rel_err"] for r in rows)  # a Policy field swept, and checked
    sampled = [r for r in rows if int(r["clock_samples"]) > 0]  # nvidia-smi's SM clock beside the times
    assert sampled and all(300 < float(r["sm_clock_mhz"]) < 3000 and float(r["power_w"]) > 0 for r in sampled)


@pytest.mark.gpu
def test_gpu_l1_comm_benchmark_runs(tmp_path):
    from benchmarks import l1_comm
    l1_comm.main(["--cases", "qwen2-moe-2.7b:1024:2", "--routing", "balanced", "--vary", "send_block,scope",
                  "--out", str(tmp_path), "--tag", "smoke"])
    with open(tmp_path / "smoke.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert [r["varied"] for r in rows] == ["base", "send_block", "send_block", "scope"], rows
    assert all(r["bitwise_equal"] == "1" and float(r["time_us"]) > 0 for r in rows), rows


@pytest.mark.gpu
def test_gpu_kernel_spans_benchmark_runs(tmp_path):
    from benchmarks import kernel_spans
    kernel_spans.main(["--cases", "qwen2-moe-2.7b:1024:2", "--nc0", "8", "--nc1", "4", "--l1-comm-rows", "0,16",
                       "--out", str(tmp_path), "--tag", "smoke", "--replay-times"])
    with open(tmp_path / "smoke.csv") as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert {(r["layer"], r["impl"]) for r in rows} == {("l0", "gemm_alone"), ("l0", "gluon"), ("l1", "gemm_alone"),
                                                       ("l1", "gluon")}
    fused1 = [r for r in rows if r["layer"] == "l1" and r["impl"] == "gluon" and r["call"] == "0"]
    # the GEMM beside the communication kernel (the tail may come on a stream of its own in a graph)
    assert len({r["stream"] for r in fused1}) >= 2, fused1
    assert all(float(r["dur_us"]) > 0 and float(r["start_us"]) >= 0 for r in rows)
    assert list((tmp_path / "traces").glob("*.json"))
    with open(tmp_path / "smoke_replays.csv") as f:
        replays = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert {r["calls_per_replay"] for r in replays} == {str(n) for n in kernel_spans.REPLAY_BATCHES}
    assert all(float(r["per_call_us"]) > 0 for r in replays)
    assert all(r["clock_samples"].isdigit() for r in replays)
