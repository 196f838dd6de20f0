"""The owner's reduce of the fused MoE layer: each rank sums the partial sums that the ranks' fused layer1
kernels (kernels/fused_layer1.py) stored into its combine buffer, one slot per (token, sender), into its
tokens' output rows.

One small launch per owner, after every rank's layer1 was launched. Program (token block, column block)
waits until combine flag [s, col] == expected[s] for every source rank s (expected: the number of the
owner's tokens that s sends partial sums of, the Plan's `RankPlan.combine_expected_W`), then sums slots
0 .. token_num_slots_M[t] - 1 of each token in slot order in fp32 and stores out[t]. The last program of a
column block subtracts the expected counts from its flags (back to 0 for the next call). Slot order is fixed
and no floating-point atomics are used: the output is bitwise reproducible for a given routing and policy.

Shapes (docs/SHAPES.md): M tokens (M_own of them owned here), N hidden, L combine slots per token, W ranks.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from comet.core.jit import jit
from comet.core.ownership import owned_range
from kernels.signals import finish_program, wait_flag

_WAIT_COMBINE = tl.constexpr(4)  # kernels.signals.WAIT_COMBINE
# tokens per program: 32 on a GPU, 16 in the interpreter's tests
GPU_REDUCE_TOKENS, SMALL_REDUCE_TOKENS = 32, 16


@jit(specialise=("comb_ptr", "out_ptr", "D_OUT", "stride_om"))
def _combine_reduce_kernel(
    comb_ptr, sflags_ptr, flags_ptr, status_ptr, out_ptr, num_slots_ptr, expected_ptr,
    rank, world, first_tok, n_own, D_OUT, slots, col_max, max_spin, comb_flag_off, red_done_off,
    stride_om,
    BLOCK_T: tl.constexpr, BLOCK_N: tl.constexpr, MAX_SLOTS: tl.constexpr,
):
    pid_t = tl.program_id(0)
    col = tl.program_id(1)
    # --- wait for every source's partial sums of this column block
    for s in range(0, world):
        e = tl.load(expected_ptr + s)
        if e > 0:
            wait_flag(sflags_ptr + comb_flag_off + s * col_max + col, e, max_spin, status_ptr, _WAIT_COMBINE,
                      s * col_max + col, rank, False, "sys")
    # --- out[t] = sum of slots 0 .. n_slots(t) - 1, in slot order (fp32)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    mask_t = offs_t < n_own
    offs_n = col * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_n = offs_n < D_OUT
    n_slots = tl.load(num_slots_ptr + first_tok + offs_t, mask=mask_t, other=0)
    acc = tl.zeros((BLOCK_T, BLOCK_N), dtype=tl.float32)
    for j in tl.static_range(MAX_SLOTS):
        valid = mask_t & (j < n_slots)
        v = tl.load(comb_ptr + (offs_t * slots + j)[:, None] * D_OUT + offs_n[None, :],
                    mask=valid[:, None] & mask_n[None, :], other=0.0, cache_modifier=".cv")
        acc += v.to(tl.float32)
    tl.store(out_ptr + offs_t[:, None] * stride_om + offs_n[None, :], acc.to(out_ptr.dtype.element_ty),
             mask=mask_t[:, None] & mask_n[None, :])
    # --- the column block's last program returns its flags to 0
    if finish_program(flags_ptr + red_done_off + col, tl.num_programs(0)):
        for s in range(0, world):
            e = tl.load(expected_ptr + s)
            if e != 0:
                tl.atomic_add(sflags_ptr + comb_flag_off + s * col_max + col, (-e).to(tl.int32), sem="relaxed",
                              scope="sys")
        tl.atomic_xchg(flags_ptr + red_done_off + col, 0, sem="relaxed", scope="gpu")


def combine_reduce(ws, plan, rank: int, expected_W: torch.Tensor, *, out_MN: torch.Tensor | None = None,
                   max_spin: int | None = None, block_tokens: int | None = None) -> torch.Tensor:
    """The owner `rank` sums its tokens' partial sums: out[t] = sum_j combine_MLN[t, j] over j < num_slots(t)
    (fp32 sums, stored in out's dtype).

    expected_W: int64 (W,) partial sums this owner receives from each rank (the Plan's combine_expected_W).
    out_MN: (M_own, N) output rows of this rank's tokens (default: a new tensor in the workspace dtype).
    block_tokens: tokens per program (default GPU_REDUCE_TOKENS on a GPU, SMALL_REDUCE_TOKENS elsewhere).
    Waits (bounded) on the combine flags; raise on timeout with ws.check(). No host sync.
    """
    ws.check_plan(plan)
    M, W, N = plan.num_tokens, plan.world_size, plan.model.hidden_N
    buf = ws.buffers(rank)
    dev = buf.recv_MN.device
    lo, hi = owned_range(M, W, rank)
    n_own = hi - lo
    if out_MN is None:
        out_MN = torch.empty(n_own, N, dtype=ws.dtype, device=dev)
    if out_MN.shape != (n_own, N) or out_MN.device != dev or out_MN.stride(1) != 1:
        raise ValueError(f"out_MN must be ({n_own}, N={N}) rows with unit column stride on {dev}; got "
                         f"{tuple(out_MN.shape)}")
    if expected_W.shape != (W,) or expected_W.dtype != torch.int64 or expected_W.device != dev:
        raise ValueError(f"expected_W must be an int64 ({W},) tensor on {dev}")
    if n_own == 0:
        return out_MN
    bt = block_tokens or (GPU_REDUCE_TOKENS if dev.type == "cuda" else SMALL_REDUCE_TOKENS)
    bn = plan.policy.block_n1
    lay = ws.layout
    grid = (triton.cdiv(n_own, bt), plan.l1_col_blocks)
    _combine_reduce_kernel[grid](
        buf.combine_MLN, buf.sflags_F, buf.flags_F, buf.status, out_MN, plan.token_num_slots_M, expected_W,
        rank, W, lo, n_own, N, ws.sizes.slots, lay.col_max, ws.max_spin if max_spin is None else max_spin,
        lay.combine, lay.red_done, out_MN.stride(0),
        BLOCK_T=bt, BLOCK_N=bn, MAX_SLOTS=ws.sizes.slots, num_warps=4)
    return out_MN
