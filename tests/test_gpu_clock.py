"""kernels.gpu_clock on the CPU: a fake sampler command stands in for nvidia-smi."""

import math
import sys
import time

from kernels.gpu_clock import ClockSampler, parse_sample

FAKE = ("import sys, time\n"
        "for i in range(40):\n"
        "    print('%d, %.1f' % (1400 + i, 600.0 + i) if i % 7 else '[N/A], [N/A]', flush=True)\n"
        "    time.sleep(0.01)\n")


def test_parse_sample_skips_what_is_not_a_sample():
    assert parse_sample(" 1980, 120.5 \n") == (1980.0, 120.5)
    for bad in ("clocks.sm [MHz], power.draw [W]", "[N/A], 12", "1, 2, 3", "nan, 1", ""):
        assert parse_sample(bad) is None, bad


def test_sampler_windows_hold_the_samples_taken_inside_them():
    t0 = time.time()
    with ClockSampler(command=[sys.executable, "-c", FAKE]) as clocks:
        deadline = time.time() + 10
        while len(clocks.samples) < 34 and time.time() < deadline:  # 40 lines, 6 of them not samples
            time.sleep(0.02)
    t1 = time.time()
    assert len(clocks.samples) == 34
    mhz = [m for _, m, _ in clocks.samples]
    assert mhz == sorted(mhz) and mhz[0] == 1401.0  # line 0 is '[N/A]'
    whole = clocks.window(t0, t1)
    assert whole["clock_samples"] == 34
    assert math.isclose(whole["sm_clock_mhz"], sum(mhz) / 34)
    assert math.isclose(whole["power_w"], sum(w for *_, w in clocks.samples) / 34)
    mid = clocks.samples[10][0]
    assert clocks.window(t0, mid)["clock_samples"] == 11
    empty = clocks.window(t1 + 1, t1 + 2)
    assert empty["clock_samples"] == 0 and math.isnan(empty["sm_clock_mhz"])


def test_sampler_without_a_command_is_empty():
    with ClockSampler(command=[]) as clocks:
        pass
    assert clocks.samples == [] and clocks.window(0, time.time())["clock_samples"] == 0
