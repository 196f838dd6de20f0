"""Timing helpers shared by the benchmarks and `comet.calibrate`: device-time and eager medians, and the
device line that every results file carries. All times in microseconds; CUDA only."""

from __future__ import annotations

import platform

import torch


def graph_us(fn, rep_ms: int = 100) -> float:
    """Median device time of one call: `rep_ms` worth of calls captured in a CUDA graph and replayed (no launch
    or Python overhead). The call runs once first (compiles and autotuning happen outside the capture)."""
    from triton.testing import do_bench_cudagraph

    fn()
    torch.cuda.synchronize()
    return do_bench_cudagraph(fn, rep=rep_ms, return_mode="median") * 1e3


def capture_graph(fn, calls: int = 1) -> torch.cuda.CUDAGraph:
    """fn captured `calls` times back to back in one CUDA graph, after one call outside it (compiles and
    autotuning happen there), and replayed once (first-replay costs stay out of what the caller measures)."""
    fn()
    torch.cuda.synchronize()
    with torch.cuda.stream(torch.cuda.Stream()):
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(calls):
                fn()
    torch.cuda.synchronize()
    g.replay()
    torch.cuda.synchronize()
    return g


def graph_replay_times_us(fn, calls_per_replay: int = 1, replays: int = 20) -> list[float]:
    """Per-call device time of each of `replays` replays of fn captured `calls_per_replay` times back to back in
    one CUDA graph (CUDA events around each replay): the spread that graph_us's median hides, e.g. a slow call
    now and then, or back-to-back calls slower than calls with gaps between them (calls_per_replay 1)."""
    g = capture_graph(fn, calls_per_replay)
    out = []
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        torch.cuda.synchronize()
        out.append(a.elapsed_time(b) * 1e3 / calls_per_replay)
    return out


def eager_us(fn) -> float:
    """Median eager time of one call: CUDA events around each call (launch and Python overhead included when
    the host is slower than the GPU; L2 flushed between calls)."""
    from triton.testing import do_bench

    fn()
    torch.cuda.synchronize()
    return do_bench(fn, warmup=25, rep=100, return_mode="median") * 1e3


def device_line(gpus: int = 1) -> str:
    """'<GPU> x<gpus> (<SMs> SMs), torch ..., triton ..., CUDA ..., python ...' for device 0 (gpus: how many
    of them the measurement used)."""
    import triton

    p = torch.cuda.get_device_properties(0)
    return (f"{p.name} x{gpus} ({p.multi_processor_count} SMs), torch {torch.__version__}, "
            f"triton {triton.__version__}, CUDA {torch.version.cuda}, python {platform.python_version()}")
