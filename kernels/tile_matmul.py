"""One output tile of the grouped GEMM in Triton's tl language: where it is (`tile_at`), its weights' pointers
(`b_tile_ptrs`), the K loop and the activation epilogue (`tile_matmul`), shared by the standalone tl grouped
GEMM (kernels/grouped_gemm.py) and the fused layer0 / layer1 kernels' compute programs (kernels/fused_layer0.py,
fused_layer1.py). One source, so the three multiply the same way and the CPU interpreter tests of one cover the
others' arithmetic."""

from __future__ import annotations

import triton
import triton.language as tl

from kernels.activations import apply_activation


@triton.jit
def tile_at(t, tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, arange_m):
    """Tile t of a Plan's tile table: (local expert, first row, end row, column block, the tile's BLOCK_M row
    indices from the first row, which of them are < the end row)."""
    expert = tl.load(tile_expert_ptr + t)
    row_start = tl.load(tile_row_start_ptr + t)
    row_end = tl.load(tile_row_end_ptr + t)
    col = tl.load(tile_col_ptr + t)
    offs_m = row_start + arange_m
    return expert, row_start, row_end, col, offs_m, offs_m < row_end


@triton.jit
def b_tile_ptrs(b_ptr, expert, col, offs_k, arange_n, D_OUT, stride_be, stride_bk, stride_bn,
                BLOCK_N: tl.constexpr):
    """(output columns, B pointers of the first K step) of column block col of expert's weights. Columns past
    D_OUT read column 0 instead; the hints keep B loads vectorised (16-byte groups are wholly in or out of range
    when D_OUT is a multiple of 8, the only case Triton vectorises)."""
    offs_n = col * BLOCK_N + arange_n
    offs_bn = tl.where(offs_n < D_OUT, offs_n, 0)
    offs_bn = tl.max_contiguous(tl.multiple_of(offs_bn, BLOCK_N), BLOCK_N)
    return offs_n, b_ptr + expert * stride_be + (offs_k[:, None] * stride_bk + offs_bn[None, :] * stride_bn)


@triton.jit
def tile_matmul(a_ptrs, stride_ak, a_desc, a_row0, b_ptrs, stride_bk, stride_bn, b_desc, b_row, b_col, up_col,
                D_IN, k_steps, ACTIVATION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr, A_TMA: tl.constexpr, B_TMA: tl.constexpr,
                A_CACHE: tl.constexpr):
    """One output tile: act(sum_k A[rows, k] B[k, cols]) in fp32 (the grouped GEMM's K loop and epilogue).

    a_ptrs (BLOCK_M, BLOCK_K) / b_ptrs (BLOCK_K, BLOCK_N): first K step's pointers (unused with TMA);
    k_steps = cdiv(D_IN, BLOCK_K), an argument so that a persistent kernel computes it once, outside its tile loop;
    A_TMA / B_TMA: load through tensor descriptors at (a_row0, k) / (b_row + k, b_col). swiglu
    (ACTIVATION 2): a second accumulator over the up columns (b_col + up_col). A_CACHE: cache modifier of
    the A loads (".cg" when A was written by other programs of this launch).
    """
    offs_k = tl.arange(0, BLOCK_K)
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if ACTIVATION == 2:
        b_up_ptrs = b_ptrs + up_col * stride_bn
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for ks in range(k_steps):
        mask_k = offs_k < D_IN - ks * BLOCK_K
        if A_TMA:
            a = a_desc.load([a_row0, ks * BLOCK_K])
        elif EVEN_K:
            a = tl.load(a_ptrs, cache_modifier=A_CACHE)
        else:
            a = tl.load(a_ptrs, mask=mask_k[None, :], other=0.0, cache_modifier=A_CACHE)
        if B_TMA:
            b = b_desc.load([b_row + ks * BLOCK_K, b_col])
        elif EVEN_K:
            b = tl.load(b_ptrs)
        else:
            b = tl.load(b_ptrs, mask=mask_k[:, None], other=0.0)
        acc = tl.dot(a, b, acc)
        if ACTIVATION == 2:
            if B_TMA:
                b_up = b_desc.load([b_row + ks * BLOCK_K, b_col + up_col])
            elif EVEN_K:
                b_up = tl.load(b_up_ptrs)
            else:
                b_up = tl.load(b_up_ptrs, mask=mask_k[:, None], other=0.0)
            acc_up = tl.dot(a, b_up, acc_up)
            b_up_ptrs += BLOCK_K * stride_bk
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk
    if ACTIVATION == 2:
        acc = apply_activation(acc, acc_up, ACTIVATION)
    else:
        acc = apply_activation(acc, acc, ACTIVATION)
    return acc
