"""The GPU's SM clock and board power while a benchmark runs, sampled by nvidia-smi in the background.

Why: an H200 held busy runs at its 700 W power limit, where its SM clock falls from 1980 MHz to about
1430-1520 MHz (results/grouped_gemm/h200_activation_power_2026-11-25.csv): a 1.3-1.4x spread in kernel time
that depends on what ran just before. A benchmark row that carries the clock of its own measurement says
whether a slow row was a slow kernel or a slow clock.

    with ClockSampler() as clocks:
        t0 = time.time(); measure(); t1 = time.time()
        clocks.window(t0, t1)   # {"sm_clock_mhz": ..., "power_w": ..., "clock_samples": ...}

Without nvidia-smi (a CPU machine) the sampler holds no samples and every window is empty (NaN, 0 samples).
"""

from __future__ import annotations

import math
import shutil
import subprocess
import threading
import time

QUERY = ["--query-gpu=clocks.sm,power.draw", "--format=csv,noheader,nounits"]


def parse_sample(line: str) -> tuple[float, float] | None:
    """(SM clock MHz, power W) from one nvidia-smi line such as '1463, 690.40'; None for anything else
    ('[N/A]', a header, an empty line).

        >>> parse_sample("1463, 690.40"), parse_sample("[N/A], 690.4"), parse_sample("")
        ((1463.0, 690.4), None, None)
    """
    parts = [p.strip() for p in line.split(",")]
    if len(parts) != 2:
        return None
    try:
        mhz, watts = float(parts[0]), float(parts[1])
    except ValueError:
        return None
    return (mhz, watts) if math.isfinite(mhz) and math.isfinite(watts) else None


class ClockSampler:
    """Samples (wall time, SM clock, power) every `period_ms` from `command` (default: nvidia-smi on GPU `gpu`)
    on a reader thread, until the context exits."""

    def __init__(self, period_ms: int = 50, gpu: int = 0, command: list[str] | None = None):
        if command is None and shutil.which("nvidia-smi"):
            command = ["nvidia-smi", f"--id={gpu}", *QUERY, "-lms", str(int(period_ms))]
        self.command = command
        self.samples: list[tuple[float, float, float]] = []
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> ClockSampler:
        if self.command:
            self._proc = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            self._thread = threading.Thread(target=self._read, daemon=True)
            self._thread.start()
        return self

    def _read(self) -> None:
        for line in self._proc.stdout:
            s = parse_sample(line)
            if s is not None:
                self.samples.append((time.time(), *s))

    def __exit__(self, *exc) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            self._thread.join(timeout=5)

    def window(self, t0: float, t1: float) -> dict:
        """Mean SM clock and power of the samples taken between wall times t0 and t1 (time.time())."""
        inside = [(mhz, w) for t, mhz, w in list(self.samples) if t0 <= t <= t1]
        if not inside:
            return {"sm_clock_mhz": math.nan, "power_w": math.nan, "clock_samples": 0}
        n = len(inside)
        return {"sm_clock_mhz": sum(m for m, _ in inside) / n, "power_w": sum(w for _, w in inside) / n,
                "clock_samples": n}


__all__ = ["ClockSampler", "parse_sample"]
