"""The host side of the Gluon Hopper grouped GEMM (kernels/gluon_gemm.py): which calls it takes (`supports`),
its pipeline depth (`num_buffers_for`), its split-tail schedule (`split_schedule`, the kernel's `_schedule` /
`_work_item` on the host) and the split's workspace. No Gluon import: these run (and are tested) where
Triton has no Gluon Hopper API.
"""

from __future__ import annotations

import torch

from kernels.activations import ACTIVATIONS

SMEM_BYTES = 227 * 1024  # sm_90's opt-in shared memory per block
# split tail: at most 4 K chunks per tail tile (the chunk that finishes last reads every chunk's partial sums)
MAX_PARTS = 4
# GemmOptions.split_tail=None splits only tiles of at least this many K steps (D_IN >= 4096 with BLOCK_K 64): shorter
# tiles lost (a short last wave runs at a higher clock under the power limit, so it costs less than wave
# arithmetic says, and the join's fixed cost needs long chunks to pay). Measured: results/grouped_gemm/README.md
# (Split tail).
SPLIT_MIN_K_STEPS = 64


def split_schedule(num_tiles: int, programs: int, k_steps: int, split_tail: bool = True) -> list[list[tuple]]:
    """Each program's work items (tile, first K step, end K step), in order: the kernel's `_schedule` and
    `_work_item` on the host (for tests and for reading a schedule).

    Whole tiles go round-robin (t = pid, pid + programs, ...). The tail, the `tail` = num_tiles mod programs
    tiles of a last wave that would leave programs idle, is split instead where tail <= programs / 2: each
    tail tile into parts = min(programs // tail, MAX_PARTS, k_steps) equal K chunks, chunk j of tail tile i
    run by program i * parts + j after its whole tiles. The last wave so takes about 1 / parts of a tile's
    time; chunk j of every tail tile runs at the same time (L2 reuse of shared B columns and A rows, as in a
    wave of whole tiles)."""
    tail = num_tiles % programs
    parts = min(programs // tail, MAX_PARTS, k_steps) if split_tail and tail else 1
    n_dp = num_tiles - tail if parts > 1 else num_tiles  # tiles run whole
    out = []
    for p in range(programs):
        items = [(t, 0, k_steps) for t in range(p, n_dp, programs)]
        if parts > 1 and p < tail * parts:
            j = p % parts
            items.append((n_dp + p // parts, j * k_steps // parts, (j + 1) * k_steps // parts))
        out.append(items)
    return out


_workspaces: dict = {}


def split_workspace(device, programs: int, block_m: int, block_n: int, n_b: int):
    """fp32 partials (one per program, n_b accumulators each) and int32 counters (one per tail tile; zero,
    and left at zero by every launch), one set per device, grown on demand. Launches in one stream run
    in order and share it; two split launches running at once on different streams would share counters
    (not per stream: a CUDA graph captures on a stream of its own, and would then allocate and zero a fresh
    set inside the graph)."""
    key = torch.device(device)
    need = programs * n_b * block_m * block_n
    ws = _workspaces.get(key)
    if ws is None or ws[0].numel() < need or ws[1].numel() < programs:
        ws = (torch.empty(need, device=device, dtype=torch.float32),
              torch.zeros(programs, device=device, dtype=torch.int32))
        _workspaces[key] = ws
    return ws


def num_buffers_for(block_m: int, block_n: int, block_k: int, elem: int, n_b: int = 1) -> int:
    """Pipeline depth that fits shared memory beside the output staging tile (at most 4); n_b: B tiles per
    step (2 for swiglu's gate and up)."""
    stage = (block_m * block_k + n_b * block_k * block_n) * elem
    return max(2, min(4, (SMEM_BYTES - block_m * block_n * elem - 1024) // stage))


def supports(a, b_EIO, out, activation: str, gather: bool, block_m: int, block_n: int) -> str | None:
    """Why this kernel cannot run the call (None if it can)."""
    if activation not in ACTIVATIONS:
        return f"activation {activation!r} (this kernel has {', '.join(ACTIVATIONS)})"
    if not a.is_cuda or torch.cuda.get_device_capability(a.device)[0] != 9:
        return "not an sm_90 (Hopper) GPU"
    if a.dtype not in (torch.bfloat16, torch.float16):
        return f"dtype {a.dtype} (bf16 or fp16 only)"
    if block_m not in (64, 128) or block_n > 256:
        return f"tile {block_m}x{block_n} (BLOCK_M 64 or 128, BLOCK_N <= 256)"
    if activation == "swiglu" and block_n > 128:
        return f"swiglu with BLOCK_N={block_n} (its two accumulators need BLOCK_N <= 128 to fit the registers)"
    for name, t in (("a", a), ("b", b_EIO), ("out", out)):
        if t.data_ptr() % 16 or (t.shape[-1] * t.element_size()) % 16:
            return f"{name}'s rows are not 16-byte aligned (TMA{' and 16-byte copies of gathered rows' * gather})"
    return None
