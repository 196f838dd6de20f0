"""experiments.validate: measured kernel times against the simulator on the same Plan (CPU only)."""

import pandas as pd
import pytest

from experiments import validate

FIELDS = ["model", "tokens_M", "ep", "rank", "layer", "impl", "nc", "time_us", "timing", "note"]


def _measured(us_by_nc):
    """A benchmarks.fused_layers-like table for Qwen2 at a small M: layer1 n_c sweep, layer0 blocks, owner reduce
    (ignored)."""
    rows = [("qwen2-moe-2.7b", 1024, 4, 0, "l1", "fused", nc, us, "graph", "default config") for nc, us in us_by_nc]
    rows += [("qwen2-moe-2.7b", 1024, 4, 0, "l1", "fused", 8, 1.0, "eager", "default config"),  # eager: ignored
             ("qwen2-moe-2.7b", 1024, 4, 0, "l1", "owner_reduce", None, 10.0, "event",
              "single-shot events, median of 7"),
             ("qwen2-moe-2.7b", 1024, 4, 0, "l0", "fused_blocks", 8, 60.0, "graph", None),
             ("qwen2-moe-2.7b", 1024, 4, 0, "l0", "gemm_alone", None, 30.0, "graph", None)]  # not compared
    return pd.DataFrame(rows, columns=FIELDS)


@pytest.fixture(scope="module")
def hw_by_layer():
    from comet.core.config import HardwareProfile

    hw = HardwareProfile.from_name("h200")
    return {"l0": hw.emulated_world(20.0, 1500.0), "l1": hw.emulated_world(3.0, 1500.0)}


def test_compare_pairs_each_measured_configuration_with_a_prediction(hw_by_layer):
    cmp = validate.compare(_measured([(4, 400.0), (16, 150.0), (64, 120.0)]), hw_by_layer, progress=False)
    assert list(cmp.columns) == validate.COLUMNS
    assert sorted(zip(cmp.layer, cmp.impl, strict=True)) == [("l0", "fused_blocks")] + [("l1", "fused")] * 3
    l1 = cmp[cmp.layer == "l1"].set_index("nc")
    assert l1.loc[4, "measured_us"] == 400.0  # the fused kernel alone: the owner's reduce is not compared
    assert (cmp.predicted_us > 0).all()
    expect = 100 * (cmp.predicted_us - cmp.measured_us) / cmp.measured_us
    assert (expect.round(2) - cmp.error_pct).abs().max() < 0.02
    # the simulated layer1 gets faster with more communication programs when they are the bottleneck
    assert l1.loc[4, "predicted_us"] > l1.loc[16, "predicted_us"]
    # deterministic: the same table again gives the same predictions
    again = validate.compare(_measured([(4, 400.0), (16, 150.0), (64, 120.0)]), hw_by_layer, progress=False)
    pd.testing.assert_frame_equal(cmp, again)


def test_kernel_span_excludes_launch_and_owner_reduce():
    ev = pd.DataFrame({"rank": [0, 0, 0, 0, 1], "kind": ["launch", "gemm1", "reduce_send", "combine_reduce", "gemm1"],
                       "start_us": [0.0, 6.0, 20.0, 40.0, 0.0], "end_us": [6.0, 30.0, 35.0, 50.0, 99.0]})
    assert validate.kernel_span_us(ev, rank=0) == 29.0


def test_summary_rank_correlation_and_nc_pick():
    cmp = pd.DataFrame({"model": "m", "tokens_M": 1, "ep": 4, "layer": "l1", "impl": "fused", "nc": [4, 8, 16, 32],
                        "measured_us": [400.0, 200.0, 150.0, 160.0], "predicted_us": [300.0, 180.0, 140.0, 100.0],
                        "error_pct": [-25.0, -10.0, -6.67, -37.5]})
    s = validate.summarize(cmp).set_index("scope")
    assert s.loc["l1 all", "mape_pct"] == pytest.approx(19.79, abs=0.01)
    sweep = s.loc["l1 fused m M=1 n_c sweep"]
    assert sweep["spearman"] == pytest.approx(0.8)  # ranks 4,3,1,2 vs 4,3,2,1
    assert (sweep["sim_nc"], sweep["best_nc"]) == (32, 16)
    assert sweep["pick_cost_pct"] == pytest.approx(100 * (160 / 150 - 1), abs=0.01)


def test_local_rates_read_from_a_calibration_table(tmp_path):
    from comet.calibrate import format_params

    rows = [("comm_program_local_gbps", format_params(nc=1), 21.0),
            ("comm_program_local_gbps", format_params(nc=8), 19.0),
            ("comm_programs_local_total_gbps", format_params(nc=8), 900.0),
            ("l1_comm_program_local_gbps", format_params(nc=1, send_block=64), 9.0),
            ("l1_comm_program_local_gbps", format_params(nc=1, send_block=16), 4.0),
            ("l1_comm_programs_local_total_gbps", format_params(nc=32, send_block=16), 120.0)]
    path = tmp_path / "cal.csv"
    pd.DataFrame(rows, columns=["measurement", "parameters", "value"]).assign(unit="GB/s").to_csv(path, index=False)
    assert validate.local_rates(path) == {"l0": (21.0, 900.0), "l1": (4.0, 120.0)}
    pd.DataFrame(rows[:3], columns=["measurement", "parameters", "value"]).to_csv(path, index=False)
    with pytest.raises(ValueError, match="l1_comm_program_local_gbps"):
        validate.local_rates(path)


def test_cli_needs_the_emulated_link_rates(tmp_path):
    path = tmp_path / "m.csv"
    _measured([(4, 400.0)]).to_csv(path, index=False)
    with pytest.raises(SystemExit):
        validate.main(["--measured", str(path), "--out", str(tmp_path)])
    validate.main(["--measured", str(path), "--per-program-gbps", "20", "--l1-per-program-gbps", "3",
                   "--local-gbps", "1500", "--out", str(tmp_path), "--tag", "t"])
    out = pd.read_csv(tmp_path / "t.csv", comment="#")
    assert len(out) == 2 and set(out.layer) == {"l0", "l1"}


def test_l1_item_cost_read_per_kernel_config(tmp_path):
    from comet.calibrate import format_params

    rows = [("l1_item_fixed_us", format_params(send_block=16, pipeline=0), 4.0),
            ("l1_item_marginal_gbps", format_params(send_block=16, pipeline=0), 20.0),
            ("l1_item_fixed_us", format_params(send_block=32, pipeline=1), 1.5),
            ("l1_item_marginal_gbps", format_params(send_block=32, pipeline=1), 30.0)]
    path = tmp_path / "cal.csv"
    pd.DataFrame(rows, columns=["measurement", "parameters", "value"]).assign(unit="x").to_csv(path, index=False)
    assert validate.l1_item_cost(path, 0, 16) == (4.0, 20.0)
    assert validate.l1_item_cost(path, 1, 32) == (1.5, 30.0)
    assert validate.l1_item_cost(path, 0, 64) is None


def test_layer_bench_rows_are_compared_per_system_and_emulated_rows_skipped():
    from comet.core.config import HardwareProfile
    from experiments.layer_bench import COLUMNS as LAYER_BENCH_COLUMNS

    base = dict.fromkeys(LAYER_BENCH_COLUMNS, "")
    row = {**base, "gpu": "H200", "world_size": 2, "emulated": False, "model": "qwen2-moe-2.7b", "activation": "swiglu",
           "tokens_M": 1024, "ep": 2, "tp": 1, "routing": "imbalanced", "std": 0.032, "seed": 0,
           "dispatch": "all-to-all", "comet_us": 300.0, "comet_nc1": 16, "sequential_us": 400.0,
           "chunked_best_us": 380.0, "chunked_best_C": 2}
    measured = pd.DataFrame([row, {**row, "emulated": True}], columns=LAYER_BENCH_COLUMNS)
    cmp = validate.compare_layer_bench(measured, HardwareProfile.from_name("h200"), progress=False)
    assert list(cmp.layer) == ["comet", "sequential", "chunked"]  # the emulated row is skipped
    assert list(cmp.measured_us) == [300.0, 400.0, 380.0] and (cmp.predicted_us > 0).all()
    summary = validate.summarize(cmp).set_index("scope")
    assert set(summary.index) == {"comet all", "sequential all", "chunked all"}


def test_a_case_keeps_its_half_and_both_halves_occur():
    halves = {validate.split_of("mixtral-8x7b", M, 4, r) for M in (2048, 4096, 8192, 16384, 32768)
              for r in ("balanced", "imbalanced")}
    assert halves == {"fit", "held-out"}
    assert validate.split_of("mixtral-8x7b", 4096, 4) == validate.split_of("mixtral-8x7b", 4096, 4, "balanced")


def test_split_summary_per_layer_and_half():
    rows = []
    for M, half, meas, pred in ((1, "fit", (400.0, 200.0, 150.0), (380.0, 210.0, 140.0)),
                                (2, "held-out", (300.0, 100.0, 120.0), (330.0, 90.0, 80.0))):
        for nc, m, p in zip((4, 8, 16), meas, pred, strict=True):
            rows.append({"model": "m", "tokens_M": M, "ep": 4, "routing": "balanced", "split": half, "layer": "l1",
                         "impl": "fused", "nc": nc, "measured_us": m, "predicted_us": p,
                         "error_pct": 100 * (p - m) / m})
    s = validate.split_summary(pd.DataFrame(rows)).set_index("split")
    assert list(s.columns) == validate.SPLIT_COLUMNS[:2] + validate.SPLIT_COLUMNS[3:]
    assert s.loc["fit", "n_configs"] == 3 and s.loc["fit", "spearman_min"] == 1.0
    assert s.loc["fit", "nc_within_3pct_frac"] == 1.0  # picks n_c 16, the best measured
    held = s.loc["held-out"]
    assert held["nc_within_3pct_frac"] == 0.0  # picks 16 (120 us) where 8 (100 us) is best: 20 % over
    assert held["max_ape_pct"] == pytest.approx(100 * 40 / 120, abs=0.01)
    assert held["mape_pct"] == pytest.approx((10 + 10 + 100 * 40 / 120) / 3, abs=0.01)


def test_the_gluon_forms_are_predicted_with_their_tails(hw_by_layer):
    """fused_blocks_gluon is layer0 with its tail launch (the one-launch fused_blocks has none), fused_gluon
    layer1 with the tail after the GEMM (fused has none): same n_c, different predictions."""
    rows = [("qwen2-moe-2.7b", 1024, 4, 0, layer, impl, 4, 100.0, "graph", "default config")
            for layer, impl in (("l0", "fused_blocks"), ("l0", "fused_blocks_gluon"), ("l1", "fused"),
                                ("l1", "fused_gluon"))]
    cmp = validate.compare(pd.DataFrame(rows, columns=FIELDS), hw_by_layer, progress=False).set_index("impl")
    assert set(cmp.index) == {"fused_blocks", "fused_blocks_gluon", "fused", "fused_gluon"}
    assert cmp.loc["fused_blocks_gluon", "predicted_us"] != cmp.loc["fused_blocks", "predicted_us"]
    # at 4 programs layer1's sends are its bottleneck: the tail's whole-GPU programs finish them sooner
    assert cmp.loc["fused_gluon", "predicted_us"] < cmp.loc["fused", "predicted_us"]


def test_tp_cases_are_simulated_at_their_tp_and_keep_ep_halves(hw_by_layer):
    """A `tp` column (benchmarks.fused_layers' model:M:EP:TP cases) gives the Plan its TP; CSVs without it are
    TP 1, and TP enters a case's half only above 1."""
    rows = [("qwen2-moe-2.7b", 1024, 2, tp, 0, "l1", "fused", nc, 100.0 + nc, "graph", "default config")
            for tp in (1, 2) for nc in (4, 8, 16)]
    cmp = validate.compare(pd.DataFrame(rows, columns=FIELDS[:3] + ["tp"] + FIELDS[3:]), hw_by_layer,
                           progress=False)
    by_tp = {tp: g.set_index("nc")["predicted_us"] for tp, g in cmp.groupby("tp")}
    assert set(by_tp) == {1, 2} and (by_tp[1] != by_tp[2]).all()  # another Plan: the TP shards' work
    untagged = validate.compare(pd.DataFrame([r[:3] + r[4:] for r in rows if r[3] == 1], columns=FIELDS),
                                hw_by_layer, progress=False)
    assert (untagged["tp"] == 1).all()
    assert list(untagged["predicted_us"]) == list(cmp[cmp.tp == 1]["predicted_us"])
    assert validate.split_of("m", 1024, 2, "balanced", tp=1) == validate.split_of("m", 1024, 2, "balanced")
    scopes = set(validate.summarize(cmp)["scope"])
    assert "l1 fused qwen2-moe-2.7b M=1024 EP=2 TP=2 n_c sweep" in scopes
    assert "l1 fused qwen2-moe-2.7b M=1024 n_c sweep" in scopes
