"""experiments/ and paper_figures/: every experiment's quick grid through `python -m experiments.reproduce
--quick` (into a temporary directory), what the rows must satisfy, the figure scripts, the claims table of
paper_figures/README.md against the committed CSVs, and `--backend gpu` failing at once."""

from __future__ import annotations

import ast
import importlib
import math
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import pandas as pd
import pytest

from experiments import common, reproduce
from paper_figures import claims, style

REPO = Path(__file__).resolve().parents[1]
DATE = "2000-01-01"
COMPARISONS = [n for n in reproduce.EXPERIMENTS
               if set(common.SYSTEM_COLUMNS) <= set(importlib.import_module(f"experiments.{n}").COLUMNS)]


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """reproduce --quick into a temporary directory: {experiment: DataFrame}, and the directories."""
    root = tmp_path_factory.mktemp("reproduce")
    paths = reproduce.main(["--quick", "--results", str(root / "results"), "--figures", str(root / "figures"),
                            "--date", DATE])
    return {n: pd.read_csv(p) for n, p in paths.items()}, paths, root


def test_every_experiment_writes_its_declared_columns(quick):
    frames, paths, root = quick
    assert set(frames) == set(reproduce.EXPERIMENTS)
    for name, df in frames.items():
        mod = importlib.import_module(f"experiments.{name}")
        hw = getattr(mod, "DEFAULT_HW", "h800")
        assert paths[name] == root / "results" / name / f"{hw}-sim_{DATE}.csv"
        assert list(df.columns) == mod.COLUMNS, name
        assert len(df) >= len(mod.cases(True)) > 0, name
        assert not df.drop(columns=[c for c in ("chunks", "nc_layer1") if c in df]).isna().any().any(), name


def test_every_figure_is_drawn(quick):
    _, _, root = quick
    for name in reproduce.EXPERIMENTS:
        for suffix in (".png", ".pdf"):
            path = root / "figures" / f"{name}{suffix}"
            assert path.stat().st_size > 10_000, path
        h, w, _ = matplotlib.image.imread(root / "figures" / f"{name}.png").shape
        assert h > 300 and w > 600, name
    table = (root / "figures" / "claims.md").read_text()
    assert table.count("\n") == 2 + len(claims.claims(root / "results"))


def test_system_comparison_rows_are_consistent(quick):
    frames, _, _ = quick
    for name in COMPARISONS:
        df = frames[name]
        keys = [c for c in df.columns if c not in common.SYSTEM_COLUMNS]
        for key, g in df.groupby(keys):
            tp = g["tp"].iloc[0]
            expected = ["comet", "sequential", "chunked", "megatron-cutlass", "megatron-te"]
            expected += ["fastermoe", "tutel"] if tp == 1 else []  # expert parallelism only
            assert sorted(g["system"]) == sorted(expected), (name, key)
            comet = g[g["system"] == "comet"].iloc[0]
            assert comet["comet_speedup"] == 1.0 and comet["nc_layer1"] in common.QUICK_NC_SWEEP
            for r in g.itertuples():
                assert r.comet_speedup == pytest.approx(r.latency_us / comet["latency_us"], rel=1e-5)
                assert r.latency_us == pytest.approx(r.layer0_us + r.layer1_us, rel=1e-5)
                assert 0 <= r.exposed_comm_us < r.latency_us
            seq, chunked = (g[g["system"] == s].iloc[0] for s in ("sequential", "chunked"))
            assert abs(seq["hidden_comm_fraction"]) < 1e-9 and seq["chunks"] == 1  # nothing overlaps
            assert chunked["chunks"] in common.QUICK_CHUNK_SWEEP
            for s in ("megatron-cutlass", "megatron-te"):  # Megatron runs its collectives on the compute stream
                assert abs(g[g["system"] == s]["hidden_comm_fraction"].iloc[0]) < 1e-9
            if tp == 1:
                assert g[g["system"] == "tutel"]["chunks"].iloc[0] in common.QUICK_TUTEL_DEGREES


def test_every_system_runs_its_fastest_tile_choice():
    """compare_systems over a case's plans by tile choice: each system's row is its run on the plan where it was
    fastest, and `tiles` names that plan."""
    plans = common.tile_plans("mixtral-8x7b", 8, 1, 1024, "h800")
    assert list(plans) == list(common.TILE_CHOICES) and plans["64"].policy.block_n1 == 64
    both = {r["system"]: r for r in common.compare_systems(plans, quick=True)}
    alone = {label: {r["system"]: r for r in common.compare_systems(p, quick=True)} for label, p in plans.items()}
    for system, row in both.items():
        fastest = min(plans, key=lambda lb: alone[lb][system]["latency_us"])
        assert row["tiles"] == fastest, (system, row, alone)
        assert row["latency_us"] == alone[fastest][system]["latency_us"]
    assert {r["tiles"] for r in alone["128"].values()} == {""}  # one plan: no choice to name


def test_fig08_marks_the_fastest_nc(quick):
    df = quick[0]["fig08_comm_blocks"]
    for _, g in df.groupby(["tokens", "tp"]):
        fastest = g.loc[g["layer1_us"].idxmin()]
        assert fastest["is_best"] and g["is_best"].sum() == 1 and (g["best_nc"] == fastest["nc_layer1"]).all()


def test_fig09_forward_is_layers_times_layer_cost(quick):
    df = quick[0]["fig09_end_to_end"]
    # CSVs hold 6 significant digits
    assert df["forward_us"].to_numpy() == pytest.approx(
        (df["layers"] * (df["moe_layer_us"] + df["non_moe_layer_us"])).to_numpy(), rel=1e-5)
    assert (df["non_moe_layer_us"] > 0).all()
    for _, g in df.groupby(["model", "ep", "tp", "tokens"]):
        comet = g[g["system"] == "comet"]["forward_us"].iloc[0]
        assert g["comet_speedup"].to_numpy() == pytest.approx(g["forward_us"].to_numpy() / comet, rel=1e-5)


def test_fig11_breakdown_adds_up(quick):
    df = quick[0]["fig11_breakdown"]
    for r in df.itertuples():
        assert r.overlapped_us <= min(r.compute_us, r.comm_us) + 1e-6
        assert r.exposed_comm_us == pytest.approx(r.comm_us - r.overlapped_us, abs=1e-3)
        busy = r.compute_us + r.comm_us - r.overlapped_us  # per rank: compute or communication
        assert busy + r.other_us == pytest.approx(r.latency_us, rel=1e-4) and r.other_us >= -1e-6
    seq = df[df["system"] == "sequential"].iloc[0]
    assert seq["overlapped_us"] == pytest.approx(0.0, abs=1e-6)
    for system in ("chunked", "tutel"):  # one fastest pipeline degree each
        runs = df[df["system"] == system]
        assert runs["is_best"].sum() == 1
        assert runs.loc[runs["is_best"], "latency_us"].iloc[0] == runs["latency_us"].min()


def test_table3_receive_buffer_is_the_papers_2MN(quick):
    df = quick[0]["table3_memory"]
    assert (df["symm_recv_bytes"] == 2 * df["tokens"] * df["hidden_N"]).all()
    assert (df["symmetric_bytes"] == df["symm_recv_bytes"] + df["combine_bytes"] + df["flag_bytes"]).all()
    assert df["symmetric_over_paper"].to_numpy() == pytest.approx(
        (df["symmetric_bytes"] / df["paper_2MN_bytes"]).to_numpy(), rel=1e-5)


def test_fig14_imbalance_reaches_the_requested_std(quick):
    df = quick[0]["fig14_imbalance"]
    assert (df["std_actual"] - df["std_target"]).abs().max() < 2e-3


def test_what_if_quick_grid(tmp_path):
    from experiments import what_if_hardware as wi

    out = tmp_path / "what_if.csv"
    wi.main(["--quick", "--out", str(out)])
    df = pd.read_csv(out)
    assert list(df.columns) == wi.COLUMNS and set(df["sweep"]) == set(wi.QUICK)
    for sweep, (values, tokens) in wi.QUICK.items():
        g = df[df["sweep"] == sweep]
        assert sorted(g["value"].unique()) == sorted(values) and (g["tokens"] == tokens).all()
    nodes = df[df["sweep"] == "nodes"]
    assert ((nodes["ranks_per_node"] * nodes["nodes"]) == nodes["ep"]).all()
    sms = df[(df["sweep"] == "sms") & (df["system"] == "comet")]
    assert (sms["sms"] == sms["value"]).all()
    assert set(sms[sms["sms"] == 66]["nc_layer1"]) <= {8, 14}  # n_c candidates scaled with the SMs (16, 28 at 132)
    # the figure script draws the what-if CSV too
    paths = importlib.import_module("paper_figures.what_if_hardware").main(["--csv", str(out), "--out", str(tmp_path)])
    assert all(p.stat().st_size > 10_000 for p in paths)


def test_what_if_profiles():
    from experiments import what_if_hardware as wi

    hw = wi.hardware(wi.case("sms", 66, 1024))
    assert hw.sms == 66 and hw.per_sm_tflops == pytest.approx(989.0 / 132)
    pol = wi.plan_of(wi.case("sms", 33, 512)).policy
    assert (pol.nc_layer0, pol.nc_layer1) == (4, 7)
    assert wi.hardware(wi.case("link_gbps", 320, 1024)).link_gbps == 320.0
    plan = wi.plan_of(wi.case("nodes", 4, 512))
    assert plan.hardware.ranks_per_node == 4 and plan.hardware.nodes(plan.world_size) == 4
    with pytest.raises(ValueError, match="nodes must divide"):
        wi.case("nodes", 3, 512)


def test_figure_script_draws_from_a_csv_alone(quick, tmp_path):
    _, paths, _ = quick
    fig10 = importlib.import_module("paper_figures.fig10_tokens")
    out = fig10.main(["--csv", str(paths["fig10_tokens"]), "--out", str(tmp_path)])
    assert [p.name for p in out] == ["fig10_tokens.png", "fig10_tokens.pdf"]
    assert all(p.stat().st_size > 10_000 for p in out)


def test_figure_scripts_only_read_csvs():
    # paper_figures/ draws from CSVs: it never imports the simulator, the planner or the experiments
    for path in sorted((REPO / "paper_figures").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom | ast.Import):
                names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                assert not any(n.split(".")[0] in ("sim", "comet", "kernels", "experiments") for n in names), path


def test_readme_claims_table_matches_the_committed_csvs():
    readme = (REPO / "paper_figures" / "README.md").read_text()
    block = readme.split(claims.BEGIN, 1)[1].split(claims.END, 1)[0]
    assert block.strip() == claims.markdown(claims.claims(style.RESULTS)).strip(), (
        "paper_figures/README.md's claims table is stale: run python -m paper_figures.claims "
        "--readme paper_figures/README.md")


@pytest.mark.parametrize("module", ["reproduce", "fig10_tokens"])
def test_backend_gpu_fails_at_once_with_the_reason(module, tmp_path):
    t0 = time.perf_counter()
    cmd = [sys.executable, "-m", f"experiments.{module}", "--backend", "gpu"]
    if module != "reproduce":
        cmd += ["--out", str(tmp_path / "x.csv")]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert p.returncode != 0
    assert "not available yet" in p.stderr and "layer_bench" in p.stderr and "8 GPUs" in p.stderr, p.stderr
    assert not (tmp_path / "x.csv").exists()
    assert time.perf_counter() - t0 < 60


def test_experiment_command_line(tmp_path):
    out = tmp_path / "fig12.csv"
    p = subprocess.run([sys.executable, "-m", "experiments.fig12_parallelism", "--quick", "--out", str(out)],
                       cwd=REPO, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    df = pd.read_csv(out)
    assert list(df.columns) == importlib.import_module("experiments.fig12_parallelism").COLUMNS
    assert not math.isnan(df["latency_us"].sum())


def test_docstring_examples_run():
    import doctest

    from experiments import fig09_end_to_end

    result = doctest.testmod(fig09_end_to_end)
    assert result.failed == 0 and result.attempted > 0


def test_quick_runs_never_write_beside_the_full_results(tmp_path, monkeypatch):
    """--quick without --out goes under out/quick/results/: the figures, which read results/, keep the full grid."""
    from experiments import fig14_imbalance, nc_auto

    monkeypatch.setattr(common, "QUICK_RESULTS", tmp_path)
    before = {p: p.stat().st_mtime for p in (common.RESULTS / "nc_auto").glob("*.csv")}
    path = fig14_imbalance.main(["--quick"])
    assert path.is_relative_to(tmp_path) and path.exists()
    path = nc_auto.main(["--quick", "--jobs", "1"])
    assert path.is_relative_to(tmp_path) and path.exists()
    assert {p: p.stat().st_mtime for p in (common.RESULTS / "nc_auto").glob("*.csv")} == before


def test_unchanged_results_keep_their_file(tmp_path):
    """Re-running on the same data keeps the earlier dated CSV (tracked files change only when content does)."""
    df = pd.DataFrame({"a": [1, 2], "b": [0.5, 0.25]})
    first = common.write_csv(df, tmp_path / "x" / "h800-sim_2026-01-01.csv")
    assert common.write_csv(df, tmp_path / "x" / "h800-sim_2026-02-02.csv") == first
    assert sorted(p.name for p in (tmp_path / "x").iterdir()) == ["h800-sim_2026-01-01.csv"]
    assert common.written_message(first, tmp_path / "x" / "h800-sim_2026-02-02.csv", 2).startswith("kept ")
    assert common.written_message(first, first, 2).startswith("wrote ")
    changed = common.write_csv(df.assign(b=[0.5, 0.3]), tmp_path / "x" / "h800-sim_2026-03-03.csv")
    assert changed.name == "h800-sim_2026-03-03.csv" and changed.exists()
    # how long the run took is no result: a new wall clock alone keeps the file and its bytes
    timed = df.assign(b=[0.5, 0.3], sim_wall_s=[1.0, 2.0])
    first = common.write_csv(timed, tmp_path / "y" / "h800-sim_2026-01-01.csv")
    text = first.read_text()
    assert common.write_csv(timed.assign(sim_wall_s=[3.0, 4.0]), tmp_path / "y" / "h800-sim_2026-01-01.csv") == first
    assert first.read_text() == text
    assert common.write_csv(timed.assign(a=[1, 3]), tmp_path / "y" / "h800-sim_2026-04-04.csv").exists()


def test_figures_are_rewritten_only_when_they_change(tmp_path, capsys):
    from paper_figures import fig10_tokens, style

    csv = style.latest_csv("fig10_tokens")
    fig10_tokens.main(["--csv", str(csv), "--out", str(tmp_path)])
    png = tmp_path / "fig10_tokens.png"
    stamp = png.stat().st_mtime_ns
    time.sleep(0.01)
    fig10_tokens.main(["--csv", str(csv), "--out", str(tmp_path)])
    assert png.stat().st_mtime_ns == stamp
    assert "kept (unchanged)" in capsys.readouterr().out.splitlines()[-1]


def test_timeline_compare_sim_only_works_on_a_fresh_folder(tmp_path):
    """The CPU step reads the committed GPU recording when --out holds none (out of the box on a fresh clone)."""
    from experiments import timeline_compare

    timeline_compare.main(["--sim-only", "--out", str(tmp_path / "fresh")])
    assert {"sim_events.csv", "summary.csv", "sim_vs_real.png"} <= {p.name for p in (tmp_path / "fresh").iterdir()}
