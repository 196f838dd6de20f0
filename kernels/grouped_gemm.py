"""Persistent grouped GEMM over a Plan's tile table (one GPU): the compute half of the fused MoE kernels.

Shapes (docs/SHAPES.md): M tokens, N hidden size, K expert FFN size (K/TP on a rank), K' = K for gelu and
2K for swiglu ([..., :K] gate, [..., K:] up), E local experts (the weights' first axis), R rows of the rank's
shared tensor (expert-major, the Plan's order), T tiles.

    layer0:  out_RK[r] = act(x_MN[row_token_R[r]] @ w0_ENK[e(r)])      (rows gathered by token id)
    layer1:  out_RN[r] = h_RK[r] @ w1_EKN[e(r)]                        (rows in shared-row order)

Inside the kernel the GEMM is written generically: `k` is the reduction index (N for layer0, K for
layer1) and `n` the output column (K for layer0, N for layer1): C[r, n] = sum_k A[row(r), k] B[e, k, n].

The kernel is persistent: num_programs programs (at most the SMs, so that SMs can be left to communication
programs) walk the tile table t = pid, pid + num_programs, ... in the Plan's execution order. The tile count
is read from the Plan's 0-d tensor inside the kernel, so launching never syncs with the host. A tile covers
rows [row_start, row_end) of one local expert (ragged: rows past row_end are masked) and one BLOCK_N column
block; BLOCK_M / BLOCK_N are the Plan's tile grid (Policy.block_m, block_n0 / block_n1); BLOCK_K, num_warps
and num_stages come from the autotuner or a kernels.options.TileConfig. Accumulation is fp32; the layer0
epilogue applies the activation (swiglu: two accumulators, gate and up columns of the same output block, in
one program).
On Hopper (sm_90) `grouped_gemm` runs the Gluon kernel of kernels/gluon_gemm.py instead (GemmOptions.impl
"auto"; same tile table and semantics; bf16/fp16; gelu, swiglu with BLOCK_N <= 128, or no activation): it
pipelines the K loops of consecutive tiles, overlaps gelu with the next tile's wgmmas, and needs no
autotuning. This module's kernel runs everything else (fp32, other GPUs, Triton's interpreter on the CPU)
and shares its tile code with the fused kernels. Both against cuBLAS and torch._grouped_mm:
results/grouped_gemm/README.md.

    >>> import torch
    >>> from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
    >>> from comet.core.policy import Policy
    >>> from comet.core.planner import make_plan
    >>> from comet.core.routing import balanced
    >>> model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=2, topk=1, layers=1)
    >>> plan = make_plan(balanced(M=16, E=2, topk=1), model, ParallelConfig(ep=1),
    ...                  HardwareProfile.from_name("h800"), Policy(block_m=16, block_n0=16, block_n1=16))
    >>> from kernels.options import SMALL_TILE, GemmOptions
    >>> x_MN, w0_ENK = torch.randn(16, 32), torch.randn(2, 32, 32)
    >>> grouped_gemm_layer0(plan, 0, x_MN, w0_ENK, options=GemmOptions(tile=SMALL_TILE)).shape  # doctest: +SKIP
    torch.Size([16, 32])
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from comet.core.jit import jit
from comet.core.policy import check_kernel_tile
from kernels import gluon_host
from kernels.activations import ACTIVATIONS
from kernels.options import GemmOptions
from kernels.row_gather import gather_rows
from kernels.tile_matmul import b_tile_ptrs, tile_at, tile_matmul
from kernels.tma import descriptor, tma_ok

_SMEM_BYTES = 220 * 1024  # H100/H200 allow 227 KB per block; keep a margin for Triton's own buffers
# GemmOptions.pregather=None copies gathered rows first (kernels/row_gather.py) on the Gluon kernel where the
# weights have at least this many columns (swiglu counts gate and up): the copy moves 4 bytes per A element
# and grows with D_IN, the GEMM with D_IN x D_OUT', so only wide weights leave it cheap beside the GEMM and
# below what the in-kernel gather costs (measured: results/grouped_gemm/README.md, Pregather).
PREGATHER_MIN_COLS = 4096
_sm_count_cache: dict[int, int] = {}


# ------------------------------------------------------------------------------------ autotune configs
def _configs():
    # Hopper bf16: BLOCK_K 64 with 3-4 stages and 8 warps is the usual sweet spot for 128x128 / 128x256
    # tiles; BLOCK_K 128 trades stages for fewer loop trips; 4 warps only for small tiles (pruned below).
    return [
        triton.Config({"BLOCK_K": bk}, num_warps=w, num_stages=s, pre_hook=_set_b_block)
        for bk, w, s in ((64, 8, 3), (64, 8, 4), (128, 8, 3), (64, 4, 3), (64, 4, 4))
    ]


def _set_b_block(nargs):
    # Descriptor boxes are one tile: A (BLOCK_M, BLOCK_K), B (BLOCK_K, BLOCK_N); BLOCK_K is the autotuner's.
    if nargs.get("A_TMA"):
        nargs["a_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_K"]]
    if nargs.get("B_TMA"):
        nargs["b_desc"].block_shape = [nargs["BLOCK_K"], nargs["BLOCK_N"]]
    if nargs.get("C_TMA"):
        nargs["c_desc"].block_shape = [nargs["BLOCK_M"], nargs["BLOCK_N"]]


def _prune_configs(configs, named_args, **kwargs):
    """Drop configs whose pipeline buffers exceed shared memory, whose fp32 accumulators would need more
    than ~128 registers per thread (they spill), or, with two programs per SM, whose registers (accumulators
    + ~96 per thread) would not fit twice in the SM's 64K; always keep at least one."""
    meta = {**named_args, **kwargs}
    bm, bn = meta["BLOCK_M"], meta["BLOCK_N"]
    n_b = 2 if meta["ACTIVATION"] == ACTIVATIONS["swiglu"] else 1
    elem = meta["a_ptr"].element_size()
    # two resident programs per SM (a grid of up to 2x the SMs) halve each one's shared memory
    per_sm = 2 if sm_count(meta["a_ptr"].device) < meta["num_programs"] <= 2 * sm_count(meta["a_ptr"].device) else 1
    kept = []
    for c in configs:
        bk, w, s = c.kwargs["BLOCK_K"], c.num_warps, c.num_stages
        smem = (s * (bm * bk + n_b * bk * bn) + (bm * bn if meta["C_TMA"] else 0)) * elem * per_sm
        acc_regs = n_b * bm * bn // (32 * w)
        regs_ok = per_sm == 1 or (acc_regs + 96) * 32 * w * per_sm <= 65536
        if smem <= _SMEM_BYTES and acc_regs <= 128 and regs_ok and bk <= max(16, triton.next_power_of_2(meta["D_IN"])):
            kept.append(c)
    if not kept:  # tiny or huge tiles: the config with the least shared memory
        kept = [min(configs, key=lambda c: c.num_stages * c.kwargs["BLOCK_K"])]
    return kept


# ------------------------------------------------------------------------------------------- kernel
@jit(specialise=("a_ptr", "b_ptr", "c_ptr", "D_IN", "D_OUT", "up_col", "stride_am", "stride_ak", "stride_be",
                  "stride_bk", "stride_bn", "stride_cm", "stride_cn"))
def _grouped_gemm_kernel(
    # pointers
    a_ptr, a_desc, a_row_ptr, b_ptr, b_desc, c_ptr, c_desc,
    tile_expert_ptr, tile_row_start_ptr, tile_row_end_ptr, tile_col_ptr, num_tiles_ptr,
    # sizes
    max_tiles, num_programs, D_IN, D_OUT, up_col,
    # strides
    stride_am, stride_ak, stride_be, stride_bk, stride_bn, stride_cm, stride_cn,
    # meta
    GATHER: tl.constexpr, ACTIVATION: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
    FLATTEN: tl.constexpr, A_TMA: tl.constexpr, B_TMA: tl.constexpr, C_TMA: tl.constexpr,
    WARP_SPECIALIZE: tl.constexpr,
):
    # num_programs: the grid size (an argument, not tl.num_programs, so the autotuner can key on it)
    pid = tl.program_id(0)
    # --- the tile count lives on the device (0-d tensor of the Plan); clamp it to the table's length
    num_tiles = tl.minimum(tl.load(num_tiles_ptr), max_tiles)
    k_steps = tl.cdiv(D_IN, BLOCK_K)
    arange_m = tl.arange(0, BLOCK_M)
    arange_n = tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)

    for t in tl.range(pid, num_tiles, num_programs, flatten=FLATTEN, warp_specialize=WARP_SPECIALIZE):
        # --- the tile: local expert, rows [row_start, row_end) of the shared tensor, output column block
        expert, row_start, row_end, col, offs_m, mask_m = tile_at(t, tile_expert_ptr, tile_row_start_ptr,
                                                                  tile_row_end_ptr, tile_col_ptr, arange_m)

        # --- which A row each tile row reads. Rows past row_end read a valid row (token 0, or the tile's
        # first row) so the K loop needs no row mask; their results are never stored.
        if GATHER:
            a_rows = tl.load(a_row_ptr + offs_m, mask=mask_m, other=0)
        else:
            a_rows = tl.where(mask_m, offs_m, row_start)

        a_ptrs = a_ptr + (a_rows[:, None] * stride_am + offs_k[None, :] * stride_ak)
        offs_n, b_ptrs = b_tile_ptrs(b_ptr, expert, col, offs_k, arange_n, D_OUT, stride_be, stride_bk, stride_bn,
                                     BLOCK_N)
        # B through the copy engine (TMA): row = expert * D_IN + k of the (E * D_IN, D_OUT') view. A tail
        # step past D_IN reads the next expert's rows (or zeros past the end): A is zero there.
        b_row = expert.to(tl.int32) * D_IN
        b_col = (col * BLOCK_N).to(tl.int32)

        # A through the copy engine (no gather): rows [row_start, row_start + BLOCK_M) of a; rows past the
        # tile's end belong to the next tile and are never stored; columns past D_IN are zero-filled.
        a_row0 = row_start.to(tl.int32)

        # --- K loop (fp32 accumulation, only the reduction tail masked) and the activation in fp32
        acc = tile_matmul(a_ptrs, stride_ak, a_desc, a_row0, b_ptrs, stride_bk, stride_bn, b_desc, b_row, b_col,
                          up_col, D_IN, k_steps, ACTIVATION, BLOCK_M, BLOCK_N, BLOCK_K, EVEN_K, A_TMA, B_TMA, "")

        # --- epilogue: one masked store in the shared-row layout
        c_ptrs = c_ptr + (offs_m[:, None] * stride_cm + offs_n[None, :] * stride_cn)
        mask_c = mask_m[:, None] & (offs_n < D_OUT)[None, :]
        if C_TMA:
            # A whole tile goes out through the copy engine (it clips columns past D_OUT); a tile that ends
            # inside its block shares rows with the next expert's tile and keeps the masked store.
            if row_end - row_start == BLOCK_M:
                c_desc.store([row_start.to(tl.int32), (col * BLOCK_N).to(tl.int32)], acc.to(c_ptr.dtype.element_ty))
            else:
                tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)
        else:
            tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=mask_c)


_kernel_fixed = triton.heuristics({"EVEN_K": lambda args: args["D_IN"] % args["BLOCK_K"] == 0})(
    _grouped_gemm_kernel)
_kernel_tuned = triton.autotune(
    configs=_configs(),
    key=["D_IN", "D_OUT", "num_programs", "BLOCK_M", "BLOCK_N", "ACTIVATION", "GATHER", "FLATTEN", "A_TMA", "B_TMA",
         "C_TMA", "WARP_SPECIALIZE"],
    prune_configs_by={"early_config_prune": _prune_configs},
)(_kernel_fixed)


# ------------------------------------------------------------------------------------------ wrappers
def sm_count(device) -> int:
    """Streaming multiprocessors of a CUDA device (cached); 4 on the CPU (interpreter)."""
    device = torch.device(device)
    if device.type != "cuda":
        return 4
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _sm_count_cache:
        _sm_count_cache[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _sm_count_cache[idx]


def _check_tiles(tiles: dict[str, torch.Tensor], n_experts: int, n_rows_out: int, col_blocks: int) -> None:
    """Content check of a tile table against the operand sizes (host sync)."""
    n = int(tiles["num"])
    T = tiles["expert"].numel()
    if not 0 <= n <= T:
        raise ValueError(f"tile count {n} outside [0, {T}] (the table's length)")
    e, s, end, c = (tiles[k][:n].cpu() for k in ("expert", "row_start", "row_end", "col"))
    checks = (
        ("expert", e, (e < 0) | (e >= n_experts), f"local experts are 0..{n_experts - 1} (the weight's dim 0)"),
        ("row_start", s, (s < 0) | (s > end), "row ranges must satisfy 0 <= row_start <= row_end"),
        ("row_end", end, end > n_rows_out, f"row_end must be <= {n_rows_out} (rows of the output)"),
        ("col", c, (c < 0) | (c >= col_blocks), f"column blocks are 0..{col_blocks - 1} for this BLOCK_N"),
    )
    for name, v, bad, what in checks:
        if bool(bad.any()):
            i = int(bad.nonzero()[0])
            raise ValueError(f"tile {i}: {name}={int(v[i])} out of bounds; {what}")


def grouped_gemm(a, b_EIO, tiles: dict[str, torch.Tensor], *, block_m: int, block_n: int,
                 a_rows_R: torch.Tensor | None = None, n_rows_out: int | None = None,
                 activation: str = "none", out=None, num_programs: int | None = None,
                 options: GemmOptions | None = None, validate: bool = False) -> torch.Tensor:
    """Run a tile table: out[r, n] = act(sum_k a[row(r), k] * b_EIO[e(r), k, n]) for the tiles' rows.

    a: (rows of A, D_IN); row(r) = a_rows_R[r] if given (gather), else r. b_EIO: (E, D_IN, D_OUT'),
    D_OUT' = D_OUT (2 * D_OUT for swiglu, gate then up). tiles: int64 tensors "expert", "row_start",
    "row_end", "col" (length T) and "num" (0-d valid count), all on a's device. Returns out, (n_rows_out,
    D_OUT) in a's dtype; rows that no tile covers are left as they were (uninitialised if allocated here).
    n_rows_out defaults to len(a_rows_R) (gather) or a.shape[0]. block_m / block_n must be the tile grid
    the table was built with. num_programs: persistent programs (default: SMs, at most T).
    options: which kernel runs and how (kernels.options.GemmOptions; default GemmOptions()).
    validate: check the table's contents (one host sync); shapes, dtypes, devices and contiguity are
    always checked.
    """
    opts = GemmOptions() if options is None else options
    if not isinstance(opts, GemmOptions):
        raise ValueError(f"options must be a kernels.options.GemmOptions, got {type(opts).__name__}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation {activation!r} not supported; use one of {tuple(ACTIVATIONS)}")
    if a.dim() != 2 or b_EIO.dim() != 3:
        raise ValueError(f"a must be 2-D (rows, D_IN) and b 3-D (E, D_IN, D_OUT'); got {tuple(a.shape)} and "
                         f"{tuple(b_EIO.shape)}")
    E, D_IN, D_OUT_B = b_EIO.shape
    if a.shape[1] != D_IN:
        raise ValueError(f"reduction sizes differ: a has {a.shape[1]} columns, b has {D_IN} rows per expert")
    if a.dtype != b_EIO.dtype or a.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"a and b must share one dtype among float16/bfloat16/float32; got {a.dtype}, "
                         f"{b_EIO.dtype}")
    if not (a.is_contiguous() and b_EIO.is_contiguous()):
        raise ValueError("a and b must be contiguous (row-major); call .contiguous() first")
    if activation == "swiglu":
        if D_OUT_B % 2:
            raise ValueError(f"swiglu needs an even number of weight columns (gate | up), got {D_OUT_B}")
        D_OUT = D_OUT_B // 2
    else:
        D_OUT = D_OUT_B
    dev = a.device
    names = ("expert", "row_start", "row_end", "col")
    missing = [k for k in (*names, "num") if k not in tiles]
    if missing:
        raise ValueError(f"tile table lacks {missing}")
    T = tiles["expert"].numel()
    for k in names:
        v = tiles[k]
        if v.dim() != 1 or v.numel() != T or v.dtype != torch.int64 or v.device != dev or not v.is_contiguous():
            raise ValueError(f"tile table '{k}' must be a contiguous 1-D int64 tensor of length {T} on {dev}; "
                             f"got shape {tuple(v.shape)}, {v.dtype} on {v.device}")
    if tiles["num"].dim() != 0 or tiles["num"].dtype != torch.int64 or tiles["num"].device != dev:
        raise ValueError(f"tile count 'num' must be a 0-d int64 tensor on {dev}")
    if a_rows_R is not None:
        if a_rows_R.dim() != 1 or a_rows_R.dtype != torch.int64 or a_rows_R.device != dev \
                or not a_rows_R.is_contiguous():
            raise ValueError(f"a_rows_R must be a contiguous 1-D int64 tensor on {dev}")
        n_rows_out = a_rows_R.numel() if n_rows_out is None else n_rows_out
        if n_rows_out > a_rows_R.numel():
            raise ValueError(f"n_rows_out={n_rows_out} > len(a_rows_R)={a_rows_R.numel()}: every output row "
                             f"needs a row index")
    else:
        n_rows_out = a.shape[0] if n_rows_out is None else n_rows_out
        if n_rows_out > a.shape[0]:
            raise ValueError(f"n_rows_out={n_rows_out} > rows of a ({a.shape[0]}) without a gather index")
    check_kernel_tile("block_m", block_m)
    check_kernel_tile("block_n", block_n)
    if out is None:
        out = torch.empty(n_rows_out, D_OUT, device=dev, dtype=a.dtype)
    elif out.shape != (n_rows_out, D_OUT) or out.dtype != a.dtype or out.device != dev or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous ({n_rows_out}, {D_OUT}) {a.dtype} tensor on {dev}; got "
                         f"{tuple(out.shape)} {out.dtype} on {out.device}")
    if validate:
        _check_tiles(tiles, E, n_rows_out, triton.cdiv(D_OUT, block_n))
        if a_rows_R is not None and int(tiles["num"]) > 0:
            rows = a_rows_R[:n_rows_out]
            used = rows[rows >= 0]
            if used.numel() and int(used.max()) >= a.shape[0]:
                raise ValueError(f"a_rows_R holds row {int(used.max())} but a has {a.shape[0]} rows")
    if num_programs is None:
        num_programs = sm_count(dev)
    if num_programs < 1:
        raise ValueError(f"num_programs must be >= 1, got {num_programs}")
    if T == 0:
        return out
    programs = max(1, min(num_programs, T))
    # TMA where tma_ok allows unless told (A only in place); decided before a pregather puts A in place
    a_tma = (a_rows_R is None and tma_ok(a)) if opts.a_tma is None else opts.a_tma
    b_tma = tma_ok(b_EIO) if opts.b_tma is None else opts.b_tma
    use_gluon = False
    if opts.impl != "triton":
        why = gluon_unsupported(a, b_EIO, out, activation, a_rows_R is not None, block_m, block_n)
        if why is None and opts.tl_only():
            why = "tile / flatten / warp_specialize are options of kernels/grouped_gemm.py's kernel"
        if why is not None and opts.impl == "gluon":
            raise ValueError(f"impl='gluon' cannot run this call: {why}; use impl='auto' or 'triton'")
        use_gluon = why is None
    pregather = opts.pregather
    if pregather is None:  # (only the Gluon kernel's TMA path was measured to gain from it)
        pregather = use_gluon and D_OUT_B >= PREGATHER_MIN_COLS
    if pregather and a_rows_R is not None:
        a, a_rows_R = gather_rows(a, a_rows_R[:n_rows_out]), None
    if use_gluon:
        fast = a.dtype == torch.bfloat16 if opts.fast_gelu is None else opts.fast_gelu
        return _gluon_module().grouped_gemm_hopper(a, b_EIO, tiles, out, block_m=block_m, block_n=block_n,
                                                   activation=activation, num_programs=programs, a_rows_R=a_rows_R,
                                                   options=opts.replace(fast_gelu=fast))
    a_desc, b_desc = a, b_EIO
    tile = opts.tile
    bk = tile.block_k if tile is not None else 64  # the autotuner's pre_hook resets the boxes
    if a_tma:
        if a_rows_R is not None:
            raise ValueError("a_tma needs A rows in place (layer1); a gathered A (layer0) cannot use TMA")
        if (D_IN * a.element_size()) % 16 or a.data_ptr() % 16:
            raise ValueError(f"a_tma needs 16-byte aligned rows: D_IN={D_IN} columns of {a.element_size()} "
                             f"bytes; use a_tma=False")
        a_desc = descriptor(a, [block_m, bk])
    if b_tma:
        if (D_OUT_B * b_EIO.element_size()) % 16 or b_EIO.data_ptr() % 16:
            raise ValueError(f"b_tma needs 16-byte aligned weight rows: D_OUT'={D_OUT_B} columns of "
                             f"{b_EIO.element_size()} bytes; use b_tma=False")
        b_desc = descriptor(b_EIO.view(E * D_IN, D_OUT_B), [bk, block_n])
    c_desc = out
    if opts.c_tma:
        if (D_OUT * out.element_size()) % 16 or out.data_ptr() % 16:
            raise ValueError(f"c_tma needs 16-byte aligned output rows: D_OUT={D_OUT} columns of "
                             f"{out.element_size()} bytes; use c_tma=False")
        c_desc = descriptor(out, [block_m, block_n])
    args = (a, a_desc, a_rows_R if a_rows_R is not None else tiles["row_start"], b_EIO, b_desc, out, c_desc,
            tiles["expert"], tiles["row_start"], tiles["row_end"], tiles["col"], tiles["num"],
            T, programs, D_IN, D_OUT, D_OUT if activation == "swiglu" else 0,
            a.stride(0), a.stride(1), b_EIO.stride(0), b_EIO.stride(1), b_EIO.stride(2),
            out.stride(0), out.stride(1))
    meta = dict(GATHER=a_rows_R is not None, ACTIVATION=ACTIVATIONS[activation], BLOCK_M=block_m,
                BLOCK_N=block_n, FLATTEN=opts.flatten, A_TMA=a_tma, B_TMA=b_tma, C_TMA=opts.c_tma,
                WARP_SPECIALIZE=opts.warp_specialize)
    grid = (programs,)
    if tile is None:
        _kernel_tuned[grid](*args, **meta)
    else:
        _kernel_fixed[grid](*args, **meta, BLOCK_K=tile.block_k, num_warps=tile.num_warps,
                            num_stages=tile.num_stages)
    return out


@functools.cache
def _gluon_module():
    """kernels.gluon_gemm, or the ImportError of a Triton without Gluon's Hopper API (tried once)."""
    try:
        from kernels import gluon_gemm  # deferred: a Triton without Gluon's Hopper API must still import this
    except ImportError as exc:
        return exc
    return gluon_gemm


def gluon_unsupported(a, b_EIO, out, activation: str, gather: bool, block_m: int, block_n: int) -> str | None:
    """Why the Gluon Hopper kernel cannot run a call (None if it can), its import included."""
    mod = _gluon_module()
    if isinstance(mod, ImportError):
        return f"Gluon's Hopper API is missing in Triton {triton.__version__} ({mod})"
    return gluon_host.supports(a, b_EIO, out, activation, gather, block_m, block_n)


def _tiles(rank_plan, layer: str) -> dict[str, torch.Tensor]:
    p = f"{layer}_tile_"
    return {"expert": getattr(rank_plan, p + "expert_T"), "row_start": getattr(rank_plan, p + "row_start_T"),
            "row_end": getattr(rank_plan, p + "row_end_T"), "col": getattr(rank_plan, p + "col_T"),
            "num": getattr(rank_plan, f"num_{layer}_tiles")}


def grouped_gemm_layer0(plan, rank: int, x_MN, w0_ENK, *, out_RK=None, activation: str | None = None,
                        rows_sorted: bool = False, num_programs: int | None = None,
                        options: GemmOptions | None = None, validate: bool = False) -> torch.Tensor:
    """Layer0 of `rank`: out_RK[r] = act(x_MN[row_token_R[r]] @ w0_ENK[expert(r)]) over the Plan's l0 tiles.

    x_MN: (M, N) token rows indexed by global token id (the receive buffer), gathered by row_token_R in the
    kernel. rows_sorted=True: x is instead x_RN (R_max, N), already in shared-row order (e.g. written there
    by the dispatch): no gather, so A may come through TMA. w0_ENK: (E_local, N, K'), K' = K/TP (gelu) or
    2K/TP (swiglu: gate | up). Returns (R_max, K/TP) in x's dtype, expert-major shared-row order; rows past
    the plan's num_rows are not written. activation defaults to the model's. num_programs, options, validate:
    as `grouped_gemm`; by default B (and A when rows_sorted) come through TMA where `tma_ok` allows, the
    faster device time on H200, at ~0.1 ms of host time per eager call (GemmOptions(b_tma=False) for tiny
    eager calls).
    """
    rp = plan.rank(rank)
    act = activation or plan.model.activation
    k_cols = plan.ffn_local * (2 if act == "swiglu" else 1)
    if w0_ENK.dim() != 3 or w0_ENK.shape != (plan.experts_per_rank, plan.model.hidden_N, k_cols):
        raise ValueError(f"w0_ENK must be (E_local={plan.experts_per_rank}, N={plan.model.hidden_N}, "
                         f"K'={k_cols}) for {act}; got {tuple(w0_ENK.shape)}")
    R_max = rp.row_token_R.numel()
    rows = R_max if rows_sorted else plan.num_tokens
    if x_MN.dim() != 2 or x_MN.shape != (rows, plan.model.hidden_N):
        what = "x_RN (rows_sorted) must be (R_max" if rows_sorted else "x_MN must be (M"
        raise ValueError(f"{what}={rows}, N={plan.model.hidden_N}); got {tuple(x_MN.shape)}")
    return grouped_gemm(x_MN, w0_ENK, _tiles(rp, "l0"), block_m=plan.policy.block_m, block_n=plan.policy.block_n0,
                        a_rows_R=None if rows_sorted else rp.row_token_R, n_rows_out=R_max, activation=act,
                        out=out_RK, num_programs=num_programs, options=options, validate=validate)


def grouped_gemm_layer1(plan, rank: int, h_RK, w1_EKN, *, out_RN=None, num_programs: int | None = None,
                        options: GemmOptions | None = None, validate: bool = False) -> torch.Tensor:
    """Layer1 of `rank`: out_RN[r] = h_RK[r] @ w1_EKN[expert(r)] over the Plan's l1 tiles (column-block-major).

    h_RK: (R_max, K/TP) activation in shared-row order (layer0's output). w1_EKN: (E_local, K/TP, N).
    Returns (R_max, N) in h's dtype; rows past num_rows are not written. num_programs, options, validate: as
    `grouped_gemm`; by default A and B come through TMA where `tma_ok` allows (see grouped_gemm_layer0).
    """
    rp = plan.rank(rank)
    R_max = rp.row_token_R.numel()
    if w1_EKN.dim() != 3 or w1_EKN.shape != (plan.experts_per_rank, plan.ffn_local, plan.model.hidden_N):
        raise ValueError(f"w1_EKN must be (E_local={plan.experts_per_rank}, K={plan.ffn_local}, "
                         f"N={plan.model.hidden_N}); got {tuple(w1_EKN.shape)}")
    if h_RK.dim() != 2 or h_RK.shape != (R_max, plan.ffn_local):
        raise ValueError(f"h_RK must be (R_max={R_max}, K={plan.ffn_local}); got {tuple(h_RK.shape)}")
    return grouped_gemm(h_RK, w1_EKN, _tiles(rp, "l1"), block_m=plan.policy.block_m,
                        block_n=plan.policy.block_n1, out=out_RN, num_programs=num_programs, options=options,
                        validate=validate)
