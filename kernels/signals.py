"""In-kernel signalling for the fused MoE kernels: bounded waits on flags, timeout reports, and the host
side that turns a report into a Python error.

Every wait in kernels/fused_layer0.py, kernels/fused_layer1.py and kernels/symm.py goes through
`wait_flag`: it spins on a flag in this rank's own memory (volatile loads: no read-modify-write traffic
while spinning), at most `max_spin` times, then does one acquire read-modify-write so that the data the
producer released before its signal is visible. A wait that runs out writes a record into the rank's
status buffer (int32[STATUS_LEN]) and gives up; every later wait of any program that sees a non-zero
status gives up at once (fail fast: a broken peer costs one spin budget per launch, not one per wait).

Status record (int32): [code (0 ok, 1 timeout), wait id, flag index, rank, value seen, value expected,
program id, spins]. `FlagTimeoutError` / `describe_status` decode it; `Workspace.check()` raises it.

Producers signal with `tl.debug_barrier()` (all threads' stores issued) then an atomic add (or exchange)
with release semantics: scope "gpu" for flags of this GPU, "sys" for flags on a peer GPU (that pattern
across GPUs, and its latency: docs/GPU_FACTS.md).
"""

from __future__ import annotations

import triton
import triton.language as tl

STATUS_LEN = 8
# wait ids: which flag a program waited on (the flag index is decoded per id, see `describe_wait`)
WAIT_L0_ARRIVAL = 1  # layer0 "blocks": rows of source rank s pulled by the communication programs
WAIT_L0_COPY = 2  # layer0 "copy-engine": the side-stream copy of source rank s's rows
WAIT_L1_COLUMN = 3  # layer1: tiles of column block c finished by the GEMM programs
WAIT_COMBINE = 4  # owner's reduce: partial sums of source rank s for column block c arrived
WAIT_BARRIER = 5  # device-side barrier: peer p arrived

_WAIT_NAMES = {
    WAIT_L0_ARRIVAL: "layer0 arrival flag",
    WAIT_L0_COPY: "layer0 copy-engine flag",
    WAIT_L1_COLUMN: "layer1 column-block tile count",
    WAIT_COMBINE: "combine flag",
    WAIT_BARRIER: "barrier flag",
}


class FlagTimeoutError(RuntimeError):
    """A kernel's bounded wait on a flag ran out: a producer (a peer rank, a communication program, the
    side-stream copy) never signalled. The message names the flag, the waiting rank, the value seen and
    the value expected. The workspace's flags are then inconsistent: call `workspace.reset()`."""


def describe_wait(wait_id: int, index: int, col_max: int) -> str:
    """Human name of flag `index` of kind `wait_id` (col_max: column blocks per source in combine flags)."""
    if wait_id in (WAIT_L0_ARRIVAL, WAIT_L0_COPY):
        how = "communication programs" if wait_id == WAIT_L0_ARRIVAL else "side-stream copy"
        return f"{_WAIT_NAMES[wait_id]}[{index}] (rows from source rank {index}, {how})"
    if wait_id == WAIT_L1_COLUMN:
        return f"{_WAIT_NAMES[wait_id]}[{index}] (GEMM tiles of column block {index})"
    if wait_id == WAIT_COMBINE:
        s, c = divmod(index, col_max)
        return (f"{_WAIT_NAMES[wait_id]}[source rank {s}, column block {c}] (flag index {index}: partial sums "
                f"sent by rank {s})")
    if wait_id == WAIT_BARRIER:
        return f"{_WAIT_NAMES[wait_id]}[peer rank {index}]"
    return f"unknown wait id {wait_id}, flag index {index}"


def describe_status(status: list[int], col_max: int, max_spin: int) -> str | None:
    """None if the status record says ok, else one line naming the wait that timed out."""
    code, wait_id, index, rank, seen, expected, pid, _ = (int(v) for v in status[:STATUS_LEN])
    if code == 0:
        return None
    return (f"rank {rank}: timed out waiting on {describe_wait(wait_id, index, col_max)}: saw {seen}, expected "
            f"{expected} (program {pid}, after {max_spin} spins)")


# ------------------------------------------------------------------------------------------- device
@triton.jit
def wait_flag(flag_ptr, target, max_spin, status_ptr, wait_id, index, rank,
              EQ: tl.constexpr, SCOPE: tl.constexpr):
    """Spin until *flag_ptr >= target (EQ: == target), at most max_spin polls; returns whether it holds.

    Comparison `seen - target >= 0` in the flag's width tolerates wrap-around of counters. On timeout the
    first program to fail writes the status record; later waits skip spinning once the status is set.
    """
    bad = tl.load(status_ptr, volatile=True)
    seen = tl.load(flag_ptr, volatile=True)
    if EQ:
        pending = seen != target
    else:
        pending = (seen - target) < 0
    it = 0
    while pending & (it < max_spin) & (bad == 0):
        seen = tl.load(flag_ptr, volatile=True)
        if EQ:
            pending = seen != target
        else:
            pending = (seen - target) < 0
        it += 1
        if (it & 1023) == 0:
            bad = tl.load(status_ptr, volatile=True)
    # acquire: the producer's data released before its signal is visible to this program's later loads. Its
    # value decides (an atomic whose result is unused is removed by the compiler: Triton 3.6 on sm_90 kept no
    # acquire of the earlier form, only the volatile loads)
    seen = tl.atomic_add(flag_ptr, 0, sem="acquire", scope=SCOPE)
    if EQ:
        pending = seen != target
    else:
        pending = (seen - target) < 0
    if pending & (bad == 0):
        old = tl.atomic_cas(status_ptr, 0, 1)
        if old == 0:
            tl.store(status_ptr + 1, wait_id)
            tl.store(status_ptr + 2, index)
            tl.store(status_ptr + 3, rank)
            tl.store(status_ptr + 4, seen.to(tl.int32))
            tl.store(status_ptr + 5, target.to(tl.int32))
            tl.store(status_ptr + 6, tl.program_id(0) + tl.program_id(1) * tl.num_programs(0))
            tl.store(status_ptr + 7, it)
    return pending == 0


@triton.jit
def signal_add(flag_ptr, value, SCOPE: tl.constexpr):
    """Release `value` onto a flag after this program's stores (all threads) have been issued."""
    tl.debug_barrier()
    tl.atomic_add(flag_ptr, value, sem="release", scope=SCOPE)


@triton.jit
def finish_program(done_ptr, total):
    """Count this program as finished; True for the last of `total` programs (which may then reset the
    launch's flags: every other program has finished, so nothing reads them any more)."""
    tl.debug_barrier()
    prev = tl.atomic_add(done_ptr, 1, sem="acq_rel", scope="gpu")
    return prev == total - 1
