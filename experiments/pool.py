"""Run a sweep's cases in worker processes, results in the cases' order, with progress.

    rows = run_cases("experiments.fig12_parallelism", cases, hw="h800", quick=False, jobs=4, bar=bar)

Each case is one `module.run_case(case, hw, quick)` call in a process of its own pool (`jobs` workers; 1 runs
them here, one after the other). A case's rows depend only on the case (seeded routings, a deterministic
simulator), so the rows are the same for every `jobs`; they come back in the order of `cases` whatever order
the workers finish in. Workers are started with "spawn" (a fresh interpreter: no state copied from the parent,
no OpenMP pool forked mid-use) and run torch on one thread each (the cores are shared among the workers).

`progress(total, desc)` is a tqdm bar on a terminal; without one (a log file, CI) it writes one line per case
done instead of the bar's carriage returns, and a line every `every_s` seconds while a case runs.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import multiprocessing
import os
import sys
import threading
import time


def default_jobs() -> int:
    """Every core this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def check_jobs(jobs: int) -> int:
    if isinstance(jobs, bool) or not isinstance(jobs, int):
        raise TypeError(f"jobs must be an int (1 runs the cases one after the other), got {type(jobs).__name__}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1 (1 runs the cases one after the other), got {jobs}")
    return jobs


def _init_worker() -> None:
    import torch  # only the workers need it set: the cores are shared among them

    torch.set_num_threads(1)


def _run_case(module_name: str, case: dict, hw: str, quick: bool) -> list[dict]:
    return importlib.import_module(module_name).run_case(case, hw, quick)


def label(case: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in case.items() if k != "model")[:60]


def run_cases(module_name: str, cases: list[dict], hw: str, quick: bool, jobs: int = 1, bar=None,
              first: list[int] | None = None) -> list[list[dict]]:
    """The rows of every case (one list per case, in the order of `cases`); `bar` (tqdm-like: update,
    set_postfix_str) advances once per case done. `first`: the order in which workers take the cases (e.g.
    the longest first, so that no long case starts last); default the cases' order."""
    jobs = min(check_jobs(jobs), max(1, len(cases)))
    if jobs == 1:
        out = []
        for case in cases:
            if bar is not None:
                bar.set_postfix_str(label(case), refresh=False)
            out.append(_run_case(module_name, case, hw, quick))
            if bar is not None:
                bar.update(1)
        return out
    out: list = [None] * len(cases)
    ctx = multiprocessing.get_context("spawn")
    with cf.ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_init_worker) as ex:
        order = range(len(cases)) if first is None else first
        futures = {ex.submit(_run_case, module_name, cases[i], hw, quick): i for i in order}
        try:
            for fut in cf.as_completed(futures):
                i = futures[fut]
                out[i] = fut.result()
                if bar is not None:
                    bar.set_postfix_str(label(cases[i]), refresh=False)
                    bar.update(1)
        except BaseException:
            for fut in futures:
                fut.cancel()
            raise
    return out


class LineProgress:
    """tqdm's interface as used here (update, set_description, set_postfix_str, close, a context) for runs
    without a terminal: a line per case done, '<desc>: 3/12 cases, 41 s (ep=8 tp=2 ...)', and a line every
    `every_s` seconds while nothing finishes."""

    def __init__(self, total: int, desc: str = "", every_s: float = 30.0, stream=None):
        self.total, self.desc, self.n, self.every_s = total, desc, 0, every_s
        self.stream = stream or sys.stderr
        self.postfix = ""
        self.t0 = self._last = time.perf_counter()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._beat, daemon=True)
        self._thread.start()

    def _line(self, what: str) -> None:
        with self._lock:
            self._last = time.perf_counter()
            print(f"{self.desc}: {what}, {self._last - self.t0:.0f} s" + (f" ({self.postfix})" if self.postfix else ""),
                  file=self.stream, flush=True)

    def _beat(self) -> None:
        while not self._done.wait(self.every_s / 4):
            if time.perf_counter() - self._last >= self.every_s:
                self._line(f"{self.n}/{self.total} cases, still running")

    def update(self, n: int = 1) -> None:
        self.n += n
        self._line(f"{self.n}/{self.total} cases")

    def set_description(self, desc: str) -> None:
        self.desc = desc

    def set_postfix_str(self, s: str, refresh: bool = True) -> None:
        self.postfix = s

    def close(self) -> None:
        self._done.set()
        self._thread.join()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def progress(total: int, desc: str, stream=None):
    """A tqdm bar where `stream` (default stderr) is a terminal, else a LineProgress."""
    stream = stream or sys.stderr
    if stream.isatty():
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="case", file=stream, dynamic_ncols=True)
    return LineProgress(total, desc, stream=stream)
