"""comet.calibrate: the fit, the whole-wave tile problems, the profile assembled from a measurement table
(JSON round trip, lookup by path and by profile name, sources of measured and unmeasured fields), the
simulator loading a profile, the CLI's error without CUDA, and the peer-copy kernel of the link part in
Triton's interpreter (fake peers: tensors of this process). The `gpu` test runs `--quick` on a real GPU."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from comet.calibrate import assemble, cli, comm, fit, gpu, measurements, settings
from comet.core.config import HardwareProfile
from kernels.options import GPU_COMM
from kernels.probes import peer_copy

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
REPO = Path(__file__).resolve().parent.parent
H200 = HardwareProfile.from_name("h200")
CITATION = "comet.calibrate on FAKE GPU x1 (132 SMs), results/calibration/fake_2026-11-24.csv"


def _synthetic_points(g, kh, ah, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [fit.TilePoint(bm, bn, k, fit.efficiency_model(bm, bn, k, g, kh, ah) * (1 + noise * rng.standard_normal()))
            for bm, bn in settings.TILE_SHAPES for k in settings.TILE_KS]


# ------------------------------------------------------------------------------------------------ fit
def test_fit_recovers_known_parameters():
    g = fit.fit_gemm_model(_synthetic_points(0.72, 300.0, 3000.0, noise=0.005))
    assert g.gemm_efficiency == pytest.approx(0.72, rel=0.02)
    assert g.gemm_k_half == pytest.approx(300.0, rel=0.15)
    assert g.tile_area_half == pytest.approx(3000.0, rel=0.15)
    assert g.max_rel_err < 0.03 and len(g.rel_err) == len(settings.TILE_SHAPES) * len(settings.TILE_KS)


def test_fit_is_exact_without_noise_and_needs_enough_points():
    g = fit.fit_gemm_model(_synthetic_points(0.85, 200.0, 1500.0), p0=(0.5, 1000.0, 10000.0))
    assert (g.gemm_efficiency, g.gemm_k_half, g.tile_area_half) == pytest.approx((0.85, 200.0, 1500.0), rel=1e-4)
    assert g.max_rel_err < 1e-5
    with pytest.raises(ValueError, match="2 tile areas"):
        fit.fit_gemm_model([fit.TilePoint(128, 128, k, 0.5) for k in (512, 1024, 2048)])


def test_model_formula_is_the_profiles():
    for bm, bn, k in ((64, 128, 512), (128, 256, 14336)):
        eff = fit.efficiency_model(bm, bn, k, H200.gemm_efficiency, H200.gemm_k_half, H200.tile_area_half)
        assert eff == pytest.approx(H200.gemm_efficiency_of(bm, bn, k))
        # a tile that takes the profile's tile time has the profile's efficiency
        assert fit.tile_efficiency(bm, bn, k, H200.tile_time_us(bm, bn, k), H200.peak_tflops, H200.sms) \
            == pytest.approx(eff)


# --------------------------------------------------------------------------------- tile problems
@pytest.mark.parametrize("sms", [132, 78, 108, 7, 1])
@pytest.mark.parametrize("bm, bn, k", [(64, 128, 512), (128, 256, 14336), (128, 128, 4096)])
def test_tile_problem_is_whole_waves(sms, bm, bn, k):
    p = fit.tile_problem(bm, bn, k, sms)
    assert p.tiles == p.waves * sms and p.row_blocks * p.col_blocks == p.tiles
    assert p.waves >= 4 and p.flops >= settings.TILE_TARGET_FLOPS
    assert (p.rows, p.d_out) == (p.row_blocks * bm, p.col_blocks * bn)
    assert fit.per_tile_us(1000.0, sms, p.tiles) == pytest.approx(1000.0 / p.waves)


def test_tile_problem_memory_stays_moderate():
    worst = max((fit.tile_problem(bm, bn, k, 132) for bm, bn in settings.TILE_SHAPES for k in settings.TILE_KS),
                key=lambda p: p.rows * (p.k + p.d_out) + p.k * p.d_out)
    assert 2 * (worst.rows * (worst.k + worst.d_out) + worst.k * worst.d_out) < 2 << 30  # bf16 bytes of A, B, C


# ------------------------------------------------------------------------------ profile assembly
def _fake_rows() -> list[measurements.Measurement]:
    """A measurement table as one-GPU run writes it (no link part): raw rows, tile points, the fit."""
    rec = measurements.Recorder()
    rec.add("sms", 132, "count", method="torch")
    for p in _synthetic_points(0.7, 250.0, 2500.0, noise=0.01):
        rec.add("tile_efficiency", p.efficiency, "fraction_of_peak_per_sm", bm=p.bm, bn=p.bn, k=p.k, tiles=528)
    pts = fit.tile_points(rec.rows)
    for name, value, unit, params in fit.fit_rows(fit.fit_gemm_model(pts), pts):
        rec.add(name, value, unit, **params)
    rec.add("hbm_gbps", 4100.0, "GB/s", method="copy_", bytes=1 << 30)
    rec.add("launch_overhead_us", 3.2, "us", method="eager_minus_graph_per_kernel")
    rec.add("comm_program_local_gbps", 55.0, "GB/s", nc=1)  # never a profile field
    return rec.rows


def test_assemble_profile_measured_and_kept_fields():
    reasons = {f: "one GPU: the link part needs torchrun" for f in assemble.PART_FIELDS["link"]}
    prof = assemble.assemble_profile(H200, "fake_x1", _fake_rows(), CITATION, reasons)
    assert prof.name == "fake_x1" and prof.link == H200.link
    assert prof.sms == 132 and isinstance(prof.sms, int)
    assert prof.gemm_efficiency == pytest.approx(0.7, rel=0.05)
    assert (prof.hbm_gbps, prof.launch_overhead_us) == (4100.0, 3.2)
    for f in ("sms", "gemm_efficiency", "gemm_k_half", "tile_area_half", "hbm_gbps", "launch_overhead_us"):
        assert prof.sources[f].startswith("measured: " + CITATION), f
    assert "max_rel_err=" in prof.sources["gemm_efficiency"]
    for f in ("peak_tflops", "link_gbps", "per_block_link_gbps", "link_latency_us", "collective_overhead_us",
              "nic_gbps", "nic_latency_us", "ranks_per_node"):
        assert getattr(prof, f) == getattr(H200, f), f
        assert prof.sources[f].startswith(H200.sources[f]) and "(not calibrated: " in prof.sources[f], f
    assert "torchrun" in prof.sources["link_gbps"] and "datasheet" in prof.sources["peak_tflops"]
    # the local communication rate never lands in a link field
    assert prof.per_block_link_gbps == H200.per_block_link_gbps


def test_assemble_profile_rejects_non_positive_measurement():
    rows = [measurements.Measurement("launch_overhead_us", "method=x", -0.4, "us")]
    prof = assemble.assemble_profile(H200, "neg", rows, CITATION)
    assert prof.launch_overhead_us == H200.launch_overhead_us
    assert "not a positive number" in prof.sources["launch_overhead_us"]


def test_csv_round_trip(tmp_path):
    rec = measurements.Recorder(tmp_path / "x.csv", tmp_path / "x.log", ["FAKE GPU x1", "command: test"])
    for r in _fake_rows():
        rec.add(r.measurement, r.value, r.unit, **measurements.parse_params(r.parameters))
    rec.close()
    back = measurements.read_measurements(tmp_path / "x.csv")
    assert [(r.measurement, r.parameters) for r in back] == [(r.measurement, r.parameters) for r in rec.rows]
    assert [r.value for r in back] == pytest.approx([r.value for r in rec.rows], rel=1e-5)
    assert (tmp_path / "x.log").read_text().startswith("FAKE GPU x1\n")
    # the profile can be rebuilt from the file alone
    assert assemble.assemble_profile(H200, "x", back, CITATION).gemm_k_half == pytest.approx(
        assemble.assemble_profile(H200, "x", rec.rows, CITATION).gemm_k_half, rel=1e-4)


def test_profile_json_round_trip_by_path_and_by_name(tmp_path, monkeypatch):
    prof = assemble.assemble_profile(H200, "fake_x1", _fake_rows(), CITATION)
    (tmp_path / "profiles").mkdir()
    path = tmp_path / "profiles" / "fake_x1.json"
    path.write_text(prof.to_json())
    by_path = HardwareProfile.from_name(str(path))
    assert by_path == prof and by_path.sources == prof.sources
    monkeypatch.chdir(tmp_path)
    assert HardwareProfile.from_name("fake_x1") == prof
    assert HardwareProfile.from_name("h200") is H200  # registered names first
    with pytest.raises(ValueError, match=r"fake_x1 \(.*fake_x1.json\)"):
        HardwareProfile.from_name("no_such_profile")


def test_sim_cli_loads_a_profile_by_path_and_name(tmp_path, monkeypatch, capsys):
    pytest.importorskip("simpy")
    from sim.__main__ import main as sim_main

    (tmp_path / "profiles").mkdir()
    prof = dataclasses.replace(HardwareProfile.from_name("h800"), name="mine_x1")
    (tmp_path / "profiles" / "mine_x1.json").write_text(prof.to_json())
    args = ["--model", "mixtral-8x7b", "--ep", "2", "--tokens", "256", "--no-progress", "--systems", "comet"]
    monkeypatch.chdir(tmp_path)
    for hw in (str(tmp_path / "profiles" / "mine_x1.json"), "mine_x1"):
        assert sim_main(args + ["--hw", hw]) == 0
        assert "hw=mine_x1" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="mine_x1"):
        sim_main(args + ["--hw", "nope"])


# ------------------------------------------------------------------------------------------- CLI
def test_cli_without_cuda_exits_with_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match="no CUDA device"):
        cli.main(["--name", "x", "--out", str(tmp_path), "--results", str(tmp_path)])
    with pytest.raises(SystemExit, match="unknown"):
        cli.main(["--name", "x", "--parts", "tiles,nvlink"])
    assert not list(tmp_path.iterdir())


def test_from_csv_rebases_a_run_on_another_profile(tmp_path, monkeypatch):
    # a link-only run's CSV on top of a one-GPU profile, with no GPU: link fields from the CSV (cited), the
    # rest from the base with their own sources and a note saying where they came from
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    base = assemble.assemble_profile(H200, "fake_x1", _fake_rows(), CITATION)
    (tmp_path / "fake_x1.json").write_text(base.to_json())
    rec = measurements.Recorder(tmp_path / "fake_x2_2026-11-24.csv", None, ["FAKE GPU x2 (132 SMs)", "command: test"])
    rec.add("link_gbps", 333.0, "GB/s", programs=132)
    rec.add("link_latency_us", 1.5, "us", method="ping_pong")
    rec.close()
    out = tmp_path / "profiles"
    assert cli.main(["--name", "fake_x2", "--base", str(tmp_path / "fake_x1.json"), "--out", str(out),
                     "--from-csv", str(tmp_path / "fake_x2_2026-11-24.csv")]) == 0
    prof = HardwareProfile.from_name(str(out / "fake_x2.json"))
    assert (prof.name, prof.link_gbps, prof.link_latency_us) == ("fake_x2", 333.0, 1.5)
    assert prof.sources["link_gbps"] == ("measured: comet.calibrate on FAKE GPU x2 (132 SMs), "
                                         "results/calibration/fake_x2_2026-11-24.csv; programs=132")
    assert prof.gemm_k_half == base.gemm_k_half
    assert prof.sources["gemm_k_half"] == (base.sources["gemm_k_half"] + " (not calibrated: not in "
                                           "fake_x2_2026-11-24.csv; kept from profile fake_x1)")


def test_driver_with_fake_parts(tmp_path, monkeypatch, capsys):
    """main() on a pretend GPU whose parts are stubs: files written, a failing part's fields kept, exit 1."""

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: type("P", (), {"multi_processor_count": 132}))
    monkeypatch.setattr(cli, "device_line", lambda gpus=1: f"FAKE GPU x{gpus} (132 SMs)")
    monkeypatch.delenv("WORLD_SIZE", raising=False)

    def tiles(ctx):
        for p in _synthetic_points(0.7, 250.0, 2500.0):
            ctx.rec.add("tile_efficiency", p.efficiency, "fraction_of_peak_per_sm", bm=p.bm, bn=p.bn, k=p.k)
        pts = fit.tile_points(ctx.rec.rows)
        for name, value, unit, params in fit.fit_rows(fit.fit_gemm_model(pts), pts):
            ctx.rec.add(name, value, unit, **params)

    def hbm_fails(ctx):
        raise RuntimeError("copy went wrong")

    monkeypatch.setattr(gpu, "measure_tiles", tiles)
    monkeypatch.setattr(gpu, "measure_hbm", hbm_fails)
    monkeypatch.setattr(gpu, "measure_launch", lambda ctx: ctx.rec.add("launch_overhead_us", 2.5, "us"))
    monkeypatch.setattr(comm, "measure_comm_programs", lambda ctx: ctx.rec.add("comm_program_local_gbps", 60, "GB/s"))
    monkeypatch.setattr(comm, "measure_l1_comm_programs", lambda ctx: ctx.rec.add("l1_item_overhead_us", 0.7, "us"))
    rc = cli.main(["--name", "fake_x1", "--out", str(tmp_path / "profiles"), "--results", str(tmp_path / "cal")])
    assert rc == 1
    prof = HardwareProfile.from_name(str(tmp_path / "profiles" / "fake_x1.json"))
    assert prof.gemm_efficiency == pytest.approx(0.7, rel=1e-3) and prof.launch_overhead_us == 2.5
    assert prof.l1_item_overhead_us == 0.7
    assert "(not calibrated: part hbm failed: RuntimeError: copy went wrong)" in prof.sources["hbm_gbps"]
    assert "(not calibrated: one GPU: the link part needs torchrun" in prof.sources["link_gbps"]
    assert "results/calibration/fake_x1_" in prof.sources["sms"] and "FAKE GPU x1" in prof.sources["sms"]
    (csv_path,) = (tmp_path / "cal").glob("fake_x1_*.csv")
    assert csv_path.read_text().startswith("# FAKE GPU x1 (132 SMs)\n")
    log = csv_path.with_suffix(".log").read_text()
    assert "FAILED part hbm" in log and "part link skipped" in log and "gemm_efficiency" in log
    assert "FAILED parts: hbm\n" in capsys.readouterr().out  # only hbm: the other stubs succeeded


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU-only behaviour of the command")
def test_module_runs_and_fails_cleanly_on_cpu(tmp_path):
    r = subprocess.run([sys.executable, "-m", "comet.calibrate", "--name", "x", "--out", str(tmp_path)],
                       cwd=REPO, capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 1 and "no CUDA device" in r.stderr


# ------------------------------------------------------------------- part d: communication programs alone
@pytest.mark.skipif(not INTERPRET, reason="interpreter check (the gpu test runs the real part)")
def test_comm_only_plan_moves_rows_and_computes_nothing():
    from comet.core.config import ModelConfig, ParallelConfig
    from comet.core.planner import make_plan
    from comet.core.policy import Policy
    from comet.core.routing import make_routing
    from kernels.fused_layer0 import fused_layer0
    from kernels.moe import stage_tokens
    from kernels.workspace import EmulatedWorld

    model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    par, M = ParallelConfig(ep=2), 64
    plan = make_plan(make_routing("balanced", M, 4, 2), model, par, H200,
                     Policy(block_m=16, block_n0=16, block_n1=16, comm_rows=8))
    world = EmulatedWorld(model, par, M, dtype=torch.float32)
    x = torch.randn(M, 32)
    stage_tokens(world, x, M)
    p = comm.comm_only_plan(plan, 0, nc=3)
    assert p.policy.nc_layer0 == 3 and [r.rank for r in p.ranks] == [0] and int(p.rank(0).num_l0_tiles) == 0
    fused_layer0(world, p, 0, torch.zeros(2, 32, 32), variant="blocks", num_programs=1)
    world.check()
    t = plan.rank(0).trimmed()
    need = t["recv_token_U"]
    assert need.numel() > 0 and torch.equal(world.buffers(0).recv_MN[need], x[need])
    assert torch.isnan(world.buffers(0).h_RK).all()  # no GEMM tile ran
    rows = (t["l0_chunk_end_C"] - t["l0_chunk_start_C"]).tolist()
    assert fit.busiest_program_bytes(rows, 1, 64) == sum(rows) * 64
    assert fit.busiest_program_bytes([8, 8, 5, 8], 3, 2) == 32


# ------------------------------------------------------------------------- link part's peer copies
@pytest.mark.skipif(not INTERPRET, reason="interpreter check of the indexing (fake peers in one process)")
@pytest.mark.parametrize("store", [True, False])
def test_peer_copy_moves_each_programs_range_to_its_peer(store):
    world, slot, block, programs, epp = 3, 64, 8, 4, 16
    bufs = [torch.full((world * slot,), -1.0) for _ in range(world)]
    for r in range(world):
        bufs[r][r * slot:(r + 1) * slot] = torch.arange(slot, dtype=torch.float32) + 1000 * r  # own slot
    ptrs = torch.tensor([b.data_ptr() for b in bufs], dtype=torch.int64)
    rank = 1
    local = torch.arange(slot, dtype=torch.float32) + 0.5 if store else torch.full((slot,), -1.0)
    peer_copy(local, ptrs, rank, world, programs=programs, n_peers=2, elems_per_prog=epp, slot_elems=slot,
                  store=store, block=block)
    for p in range(programs):
        peer = (rank + 1 + p % 2) % world
        rng = slice(p * epp, (p + 1) * epp)
        if store:
            assert torch.equal(bufs[peer][rank * slot:][rng], local[rng])
        else:
            assert torch.equal(local[rng], bufs[peer][peer * slot:][rng])
    with pytest.raises(ValueError, match="multiple of"):
        peer_copy(local, ptrs, rank, world, programs=1, n_peers=1, elems_per_prog=12, slot_elems=slot,
                      store=store, block=block)


# ------------------------------------------------------------------------------------------- GPU
@pytest.mark.gpu
def test_quick_calibration_on_the_gpu(tmp_path):
    """`--quick` on this GPU: the profile loads, its measured fields are plausible for a datacenter GPU."""
    r = subprocess.run([sys.executable, "-m", "comet.calibrate", "--quick", "--name", "quick_test",
                        "--out", str(tmp_path / "profiles"), "--results", str(tmp_path / "calibration")],
                       cwd=REPO, capture_output=True, text=True, timeout=480,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    print(r.stdout[-6000:], r.stderr[-6000:])
    assert r.returncode == 0, r.stderr[-3000:]
    prof = HardwareProfile.from_name(str(tmp_path / "profiles" / "quick_test.json"))
    assert prof.sms == torch.cuda.get_device_properties(0).multi_processor_count
    assert 0.3 < prof.gemm_efficiency < 1.0
    assert 0 < prof.gemm_k_half < 20000 and 0 < prof.tile_area_half < 1e6
    assert 300 < prof.hbm_gbps < 10000
    assert 0 < prof.launch_overhead_us < 100
    for f in ("sms", "gemm_efficiency", "gemm_k_half", "tile_area_half", "hbm_gbps", "launch_overhead_us"):
        assert prof.sources[f].startswith("measured: comet.calibrate on"), f
    assert "(not calibrated: one GPU" in prof.sources["link_gbps"]
    (csv_path,) = (tmp_path / "calibration").glob("quick_test_*.csv")
    rows = measurements.read_measurements(csv_path)
    names = {r.measurement for r in rows}
    assert {"matmul_ceiling_tflops", "tile_time_us", "gemm_fit_max_rel_err", "comm_program_local_gbps",
            "launch_eager_triton_empty_us"} <= names
    assert all(r.value > 0 for r in rows if r.measurement.endswith(("_gbps", "_tflops", "_us")))
    assert json.loads((tmp_path / "profiles" / "quick_test.json").read_text())["name"] == "quick_test"


def test_item_cost_fit_and_the_kernels_default_config():
    fixed, gbps = fit.item_cost_fit(2.0 + 4096 / 7.4e3, 4096, 2.0 + 16384 / 7.4e3, 16384)
    assert fixed == pytest.approx(2.0) and gbps == pytest.approx(7.4)
    assert fit.item_cost_fit(1.0, 100, 1.0, 400) == (1.0, math.inf)  # no per-byte cost at all
    assert settings.L1_DEFAULT_CONFIG == (int(GPU_COMM.pipelined), GPU_COMM.send_block_for("cuda"))
    assert settings.L1_DEFAULT_CONFIG in settings.L1_COMM_CONFIGS
