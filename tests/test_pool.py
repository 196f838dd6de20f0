"""Sweeps in worker processes (experiments/pool.py): same rows as one after the other, in the cases' order;
progress lines where there is no terminal; one-line errors for a bad --jobs."""

from __future__ import annotations

import io
import subprocess
import sys
import time

import pandas as pd
import pytest

from experiments import common, fig12_parallelism, pool

REPO = common.REPO


def _without_wall(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["sim_wall_s"])  # wall-clock seconds: the one column that may differ


def test_workers_give_the_rows_of_one_after_the_other():
    bar = pool.LineProgress(len(fig12_parallelism.cases(True)), "fig12", stream=io.StringIO())
    one = common.run(fig12_parallelism, quick=True, jobs=1, bar=bar)
    two = common.run(fig12_parallelism, quick=True, jobs=2, bar=bar)
    bar.close()
    pd.testing.assert_frame_equal(_without_wall(one), _without_wall(two))
    cases = pd.DataFrame(fig12_parallelism.cases(True))
    firsts = two.drop_duplicates(["ep", "tp", "tokens"])[["ep", "tp", "tokens"]].reset_index(drop=True)
    pd.testing.assert_frame_equal(firsts, cases[["ep", "tp", "tokens"]], check_dtype=False)  # the cases' order


def test_line_progress_logs_a_line_per_case():
    out = io.StringIO()
    with pool.LineProgress(3, "sweep", stream=out) as bar:
        bar.set_postfix_str("ep=8 tp=2")
        bar.update(1)
        bar.set_description("other")
        bar.update(2)
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("sweep: 1/3 cases, ") and lines[0].endswith("(ep=8 tp=2)")
    assert lines[1].startswith("other: 3/3 cases, ")


def test_line_progress_says_it_is_still_running():
    out = io.StringIO()
    bar = pool.LineProgress(2, "sweep", every_s=0.05, stream=out)
    time.sleep(0.3)
    bar.close()
    assert "sweep: 0/2 cases, still running" in out.getvalue()


def test_progress_is_a_bar_on_a_terminal_and_lines_without():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    bar = pool.progress(2, "x", stream=Tty())
    assert type(bar).__name__ == "tqdm"
    bar.close()
    bar = pool.progress(2, "x", stream=io.StringIO())
    assert isinstance(bar, pool.LineProgress)
    bar.close()


def test_bad_jobs():
    with pytest.raises(ValueError, match="jobs must be >= 1"):
        pool.run_cases("experiments.fig12_parallelism", [], "h800", True, jobs=0)
    with pytest.raises(TypeError, match="jobs must be an int"):
        pool.check_jobs(2.0)
    assert pool.default_jobs() >= 1
    p = subprocess.run([sys.executable, "-m", "experiments.fig12_parallelism", "--quick", "--jobs", "0"], cwd=REPO,
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--jobs must be >= 1" in p.stderr and "Traceback" not in p.stderr
