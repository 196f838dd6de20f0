"""benchmarks/fused_layers_summary on a hand-made CSV: best n_c, ratio to the GEMM, goal, floor, program rate."""

import pandas as pd
import pytest

from benchmarks import fused_layers_summary as fs


def _rows():
    base = {"model": "mixtral-8x7b", "tokens_M": 4096, "ep": 4, "rows": 2048, "timing": "graph", "note": None}
    r = [dict(base, layer="l1", impl="gemm_alone", nc=None, time_us=400.0, moved_bytes=0)]
    for nc, t in ((4, 800.0), (8, 420.0), (16, 500.0)):
        r.append(dict(base, layer="l1", impl="fused", nc=nc, time_us=t, moved_bytes=16e6, note="default config"))
    r.append(dict(base, layer="l1", impl="fused", nc=8, time_us=300.0, moved_bytes=16e6, note="send_block=32"))
    r.append(dict(base, layer="l1", impl="fused", nc=8, time_us=1.0, moved_bytes=16e6, timing="eager"))
    return pd.DataFrame(r)


def test_summary_of_one_case():
    res = fs.summarise(_rows(), hbm_gbps=2762.0)
    row = res.iloc[0]
    assert (row["best_nc"], row["fused_us"]) == (8, 420.0)  # default config, graph timing only
    assert row["over_gemm"] == pytest.approx(1.05) and row["goal"] == 1.10 and row["meets_goal"]
    assert row["floor_us"] == pytest.approx(400.0)  # compute-bound: the GEMM alone
    assert row["of_floor"] == pytest.approx(400 / 420, abs=1e-3)
    assert row["prog_gbps_low_nc"] == pytest.approx(16e6 / (800 * 4) / 1e3, abs=0.01)


def test_a_missing_csv_is_one_line(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        fs.main([str(tmp_path / "none.csv")])


def test_clock_columns_give_the_ratio_in_cycles():
    rows = _rows().assign(sm_clock_mhz=1980.0)
    rows.loc[(rows["impl"] == "fused") & (rows["nc"] == 8), "sm_clock_mhz"] = 1485.0  # measured in a hot spell
    row = fs.summarise(rows, hbm_gbps=2762.0).iloc[0]
    assert (row["gemm_clock_mhz"], row["fused_clock_mhz"]) == (1980.0, 1485.0)
    assert row["over_gemm"] == pytest.approx(1.05)
    assert row["over_gemm_cycles"] == pytest.approx(1.05 * 1485 / 1980, abs=1e-3)
    old = fs.summarise(_rows(), hbm_gbps=2762.0).iloc[0]  # CSVs without the clock columns
    assert pd.isna(old["over_gemm_cycles"]) and pd.isna(old["gemm_clock_mhz"])
