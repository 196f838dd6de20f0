"""The command line `python -m sim`: table, --json, --trace, options and their errors."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from sim.__main__ import main
from sim.options import SYSTEMS

SMALL = ["--model", "mixtral-8x7b", "--ep", "2", "--tokens", "256", "--no-progress"]


def test_table(capsys):
    assert main(SMALL) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("mixtral-8x7b  M=256  EP=2 TP=1  hw=h800")
    assert [line.split()[0] for line in out[2:]] == list(SYSTEMS)
    assert out[2].split()[4] == "1.00x"


def test_json(capsys):
    main(SMALL + ["--json", "--topk", "1", "--experts", "4", "--routing", "imbalanced", "--std", "0.05"])
    data = json.loads(capsys.readouterr().out)
    assert data["config"]["tokens"] == 256
    rows = {r["system"]: r for r in data["systems"]}
    assert set(rows) == set(SYSTEMS)
    for r in rows.values():
        for key in ("latency_us", "layer0_us", "layer1_us", "hidden_comm_fraction", "comet_speedup"):
            assert key in r
    assert rows["comet"]["comet_speedup"] == 1.0


def test_options(capsys):
    main(SMALL + ["--json", "--systems", "comet", "--nc", "auto", "--nc0", "4", "--tp", "2", "--ep", "1",
                  "--policy", "order=expert-major,comm_rows=32", "--layers", "layer1", "--tile-schedule", "static",
                  "--tile-rows", "actual", "--activation-kernel", "separate", "--chunks", "2"])
    data = json.loads(capsys.readouterr().out)
    pol = data["config"]["policy"]
    assert pol["order"] == "expert-major" and pol["comm_rows"] == 32 and pol["nc_layer0"] == 4
    assert data["config"]["options"]["layers"] == "layer1"
    assert [r["system"] for r in data["systems"]] == ["comet"]


def test_trace_files(tmp_path, capsys):
    main(SMALL + ["--systems", "comet,sequential", "--trace", str(tmp_path / "run.json")])
    for s in ("comet", "sequential"):
        data = json.loads((tmp_path / f"run.{s}.json").read_text())
        assert any(e["ph"] == "X" for e in data["traceEvents"])
    main(SMALL + ["--systems", "chunked", "--trace", str(tmp_path / "one.json")])
    assert (tmp_path / "one.json").exists()


@pytest.mark.parametrize("args, message", [
    (["--policy", "order"], "key=value"),
    (["--policy", "colour=blue"], "unknown field"),
    (["--systems", "deepspeed"], "unknown"),
    (["--nc", "0"], "nc_layer1"),
])
def test_errors(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(SMALL + args)
    assert message in str(e.value)


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "sim", *SMALL, "--systems", "sequential"], capture_output=True,
                         text=True, check=True).stdout
    assert "sequential" in out


# --- user errors at the command lines: one line, exit code 1 or 2, never a traceback
@pytest.mark.parametrize("cmd", [
    ["sim", "--ep", "3"],
    ["sim", "--model", "no-such-model"],
    ["sim", "--tokens", "0"],
    ["sim", "--ranks-per-node", "0", "--ep", "2", "--tokens", "64"],
    ["sim", "--trace", "/no/such/folder/t.json", "--ep", "2", "--tokens", "64"],
    ["sim", "--model", "deepseek-v3", "--routing", "imbalanced", "--tokens", "512"],
    ["sim", "--tokens", "1000000000"],  # terabytes: refused from the estimate, before any planning
    ["comet.core.planner", "--ep", "3"],
    ["comet.core.planner", "--model", "no-such-model"],
    ["comet.core.planner", "--tokens", "0"],
    ["comet.core.planner", "--hw", "no-such-gpu"],
    ["experiments.fig10_tokens", "--hw", "no-such-gpu"],  # every --hw is checked as it is parsed
    ["experiments.validate", "--measured", "x.csv", "--hw", "no-such-gpu"],
    ["experiments.validate", "--measured", "/no/such/file.csv"],
    ["experiments.validate", "--measured", "README.md"],
    ["benchmarks.sim_speed", "--hw", "no-such-gpu"],
    ["comet.calibrate", "--name", "x", "--from-csv", "/no/such/file.csv"],
])
def test_cli_user_errors_are_one_line(cmd):
    r = subprocess.run([sys.executable, "-m", *cmd], capture_output=True, text=True, timeout=120)
    assert r.returncode in (1, 2), r
    assert "Traceback" not in r.stderr and r.stderr.strip().count("\n") == 0, r.stderr
    assert r.stderr.startswith("error:") or "usage:" not in r.stderr


def test_help_shows_real_defaults():
    for mod, needle in (("sim", "Policy.nc_layer1 = 28"), ("comet.core.planner", "(default: 8)")):
        r = subprocess.run([sys.executable, "-m", mod, "--help"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and needle in " ".join(r.stdout.split()) and "default: None" not in r.stdout


def test_size_guard_refuses_fast_with_the_estimate_and_the_knob(monkeypatch, capsys):
    import time

    import sim.run

    monkeypatch.setattr(sim.run, "available_memory_bytes", lambda: 2 * 10**9)
    t0 = time.perf_counter()
    with pytest.raises(SystemExit, match=r"needs about [\d.]+ GB .* 2\.0 GB free: lower the tokens or the world size"):
        main(["--tokens", "2000000", "--ep", "8"])
    assert time.perf_counter() - t0 < 5


def test_estimate_grows_with_tokens_and_ranks():
    from comet.core.config import ModelConfig, ParallelConfig
    from sim.run import estimate_cost

    m = ModelConfig.from_name("mixtral-8x7b")
    small, big = estimate_cost(m, ParallelConfig(ep=8), 4096), estimate_cost(m, ParallelConfig(ep=8), 65536)
    assert 10 < big[0] / small[0] < 20 and big[1] > small[1] > 0
    assert estimate_cost(m, ParallelConfig(ep=8, tp=8), 4096)[0] > small[0]


def test_heartbeat_logs_without_a_terminal():
    import io
    import time

    from sim.__main__ import heartbeat

    buf = io.StringIO()
    with heartbeat("simulating comet", every_s=0.02, stream=buf):
        time.sleep(0.1)
    assert buf.getvalue().count("simulating comet: still running") >= 2


@pytest.mark.parametrize("name", ["mixtral-8x22b", "qwen3-30b-a3b", "qwen3-235b-a22b", "deepseek-v3", "gpt-oss-20b",
                                  "gpt-oss-120b"])
def test_released_models_in_both_command_lines(name, capsys):
    """The released models' entries (comet.core.config.MODELS, each with its config.json source) run in the
    simulator's and the planner's command lines."""
    from comet.core.config import MODEL_SOURCES, MODELS
    from comet.core.planner import main as plan_main

    assert MODEL_SOURCES[name].startswith("config.json of ") and set(MODEL_SOURCES) == set(MODELS)
    assert main(["--model", name, "--ep", "4", "--tokens", "128", "--systems", "comet", "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith(f"{name}  M=128  EP=4 TP=1")
    plan_main(["--model", name, "--ep", "2", "--tp", "2", "--tokens", "64"])
    assert capsys.readouterr().out.startswith(f"{name}  M=64  EP=2 TP=2")
