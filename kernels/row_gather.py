"""Rows of a matrix gathered by index into a new matrix: out[r] = x[rows[r]] (rows[r] < 0: out[r] untouched).

Layer0's A operand is the token rows in the Plan's shared-row order. The grouped GEMM can gather them itself
(cp.async by token id) or, with GemmOptions(pregather=True) (kernels/options.py), read them in place
through TMA after this copy. A plain row copy with 16-byte accesses runs at the memory's bandwidth, where
torch.index_select fell well short of it for these shapes (measured: results/grouped_gemm/README.md,
Pregather).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.jit import jit

_BLOCK_R = 16


@jit(specialise=("x_ptr", "out_ptr", "D", "stride_x", "stride_out"))
def _gather_rows_kernel(x_ptr, rows_ptr, out_ptr, n_rows, D, stride_x, stride_out,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    src = tl.load(rows_ptr + r, mask=r < n_rows, other=-1)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (src >= 0)[:, None] & (d < D)[None, :]
    v = tl.load(x_ptr + src.to(tl.int64)[:, None] * stride_x + d[None, :], mask=mask)
    tl.store(out_ptr + r.to(tl.int64)[:, None] * stride_out + d[None, :], v, mask=mask)


def gather_rows(x: torch.Tensor, rows: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """out[r] = x[rows[r]] for rows[r] >= 0; rows[r] < 0 (padding) leaves out[r] as it was (uninitialised if
    out is allocated here). x: (M, D) with unit column stride; rows: 1-D int64 on x's device, every
    non-negative entry < M (not checked on the device: it would sync). Returns out, (len(rows), D)."""
    if x.dim() != 2 or x.stride(1) != 1:
        raise ValueError(f"x must be 2-D with contiguous rows; got shape {tuple(x.shape)}, strides {x.stride()}")
    if rows.dim() != 1 or rows.dtype != torch.int64 or rows.device != x.device:
        raise ValueError(f"rows must be a 1-D int64 tensor on {x.device}; got {tuple(rows.shape)} {rows.dtype} "
                         f"on {rows.device}")
    R, D = rows.numel(), x.shape[1]
    if out is None:
        out = torch.empty(R, D, device=x.device, dtype=x.dtype)
    elif out.shape != (R, D) or out.dtype != x.dtype or out.device != x.device or out.stride(1) != 1:
        raise ValueError(f"out must be ({R}, {D}) {x.dtype} on {x.device} with contiguous rows; got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if R == 0 or D == 0:
        return out
    block_d = min(triton.next_power_of_2(D), 2048 // x.element_size())  # up to 2 KB of each row per program
    grid = (triton.cdiv(R, _BLOCK_R), triton.cdiv(D, block_d))
    _gather_rows_kernel[grid](x, rows, out, R, D, x.stride(0), out.stride(0), BLOCK_R=_BLOCK_R, BLOCK_D=block_d,
                              num_warps=4)
    return out
