"""The persistent grouped GEMM (kernels/grouped_gemm.py) against the slow per-expert reference.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before the kernels
are imported) in float32/float16 on small shapes: ragged experts, an expert with zero rows, a rank with no
rows, tile sizes that divide none of the sizes. The same logic tests run on the GPU when there is one;
`gpu` tests add bf16, Hopper-sized tiles, autotuning and the benchmark variants (TMA stores, flattened and
warp-specialised tile loops).
Tolerances come from comet.core.tolerances (one table); failures print max and mean errors.
"""

from __future__ import annotations

import os

import pytest
import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import ORDERS, Policy
from comet.core.routing import Routing, imbalanced
from comet.core.tolerances import assert_close
from kernels.grouped_gemm import grouped_gemm, grouped_gemm_layer0, grouped_gemm_layer1
from kernels.options import SMALL_TILE, GemmOptions, TileConfig
from kernels.reference_gemm import reference_layer0, reference_layer1

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
HW = HardwareProfile.from_name("h200")
SMALL_POLICY = Policy(block_m=16, block_n0=16, block_n1=16)  # divides none of N=40, K=24
SMALL = GemmOptions(tile=SMALL_TILE)  # the tl kernel with the interpreter's tile loop
GLUON = GemmOptions(impl="gluon")
GPU_TILE_4 = TileConfig(block_k=64, num_warps=8, num_stages=4)


def _tol_key(dtype: torch.dtype):
    # float32 tl.dot runs on tf32 tensor cores on the GPU; the interpreter computes it in float32.
    return "tf32" if dtype == torch.float32 and DEVICE == "cuda" else dtype


def _small_model(activation="gelu", **over) -> ModelConfig:
    return ModelConfig("small", hidden_N=over.get("N", 40), ffn_K=over.get("K", 24), experts_E=over.get("E", 4),
                       topk=over.get("topk", 2), layers=1, activation=activation)


def _weights(plan, activation, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    E, N, K = plan.experts_per_rank, plan.model.hidden_N, plan.ffn_local
    k0 = 2 * K if activation == "swiglu" else K
    w0 = (torch.randn(E, N, k0, generator=g) / N ** 0.5).to(DEVICE, dtype)
    w1 = (torch.randn(E, K, N, generator=g) / K ** 0.5).to(DEVICE, dtype)
    return w0, w1


def _tokens(M, N, dtype, seed=1):
    return torch.randn(M, N, generator=torch.Generator().manual_seed(seed)).to(DEVICE, dtype)


def _check_layers(plan, rank, dtype, activation=None, a_tma=False, num_programs=None, **opts):
    """Run layer0 then layer1 (a_tma: A through TMA, layer1 only; opts: GemmOptions fields) on poisoned
    outputs; compare valid rows with the reference, and check that rows past num_rows were left alone."""
    o = GemmOptions(**opts)
    act = activation or plan.model.activation
    w0, w1 = _weights(plan, act, dtype)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, dtype)
    rp = plan.rank(rank)
    R_max, R = rp.row_token_R.numel(), int(rp.num_rows)
    h = torch.full((R_max, plan.ffn_local), float("nan"), device=DEVICE, dtype=dtype)
    out = grouped_gemm_layer0(plan, rank, x, w0, out_RK=h, activation=act, num_programs=num_programs, options=o,
                              validate=True)
    assert out.data_ptr() == h.data_ptr()
    assert_close(h[:R], reference_layer0(plan, rank, x, w0, act), _tol_key(dtype), f"layer0 {act} rank {rank}")
    assert bool(h[R:].isnan().all()), "layer0 wrote rows past num_rows"
    y = torch.full((R_max, plan.model.hidden_N), float("nan"), device=DEVICE, dtype=dtype)
    h_in = torch.where(h.isnan(), torch.zeros_like(h), h)
    grouped_gemm_layer1(plan, rank, h_in, w1, out_RN=y, num_programs=num_programs, options=o.replace(a_tma=a_tma),
                        validate=True)
    assert_close(y[:R], reference_layer1(plan, rank, h_in, w1), _tol_key(dtype), f"layer1 rank {rank}")
    assert bool(y[R:].isnan().all()), "layer1 wrote rows past num_rows"
    return h, y


# ------------------------------------------------------------------------------- logic (CPU or GPU)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
@pytest.mark.parametrize("b_tma", [False, True])
def test_ragged_experts_match_reference(dtype, activation, b_tma):
    model = _small_model(activation)
    routing = imbalanced(M=50, E=4, topk=2, std=0.1, seed=3)
    plan = make_plan(routing, model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    counts = routing.tokens_per_expert_E.tolist()
    assert len(set(counts)) > 1, f"routing should be ragged, got {counts}"
    for rank in (0, 1):  # b_tma: the reduction tail of an expert reads the next expert's B rows (A is 0);
        # c_tma: whole tiles stored by TMA next to masked stores of the tiles an expert's end cuts short
        _check_layers(plan, rank, dtype, tile=SMALL_TILE, b_tma=b_tma, a_tma=b_tma, c_tma=b_tma)


def test_expert_with_zero_rows_and_rank_with_none():
    # tokens pick experts {0, 2} or {2, 3}: rank 0 (experts 0, 1) has an empty expert 1; with E=6, ep=3,
    # rank 2 (experts 4, 5) receives nothing and must launch cleanly and write nothing.
    M = 30
    ids = torch.tensor([[0, 2] if t % 3 else [2, 3] for t in range(M)])
    w = torch.full((M, 2), 0.5)
    model = _small_model(E=6)
    plan = make_plan(Routing(ids, w, 6), model, ParallelConfig(ep=3), HW, SMALL_POLICY)
    assert plan.rank(0).expert_offsets_E1.tolist()[1:] == [20, 20]
    assert int(plan.rank(2).num_rows) == 0 and int(plan.rank(2).num_l0_tiles) == 0
    for rank in (0, 1, 2):
        _check_layers(plan, rank, torch.float32, tile=SMALL_TILE)


@pytest.mark.parametrize("a_tma", [False, True])
def test_layer0_rows_sorted(a_tma):
    # A already in shared-row order (no gather): the same result, and A may come through TMA
    model = _small_model("swiglu")
    plan = make_plan(imbalanced(M=50, E=4, topk=2, std=0.1, seed=3), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, _ = _weights(plan, "swiglu", torch.float32)
    x = _tokens(50, 40, torch.float32)
    rp = plan.rank(1)
    x_RN = x[rp.row_token_R.clamp(min=0)]
    R = int(rp.num_rows)
    h = grouped_gemm_layer0(plan, 1, x_RN, w0, rows_sorted=True, validate=True,
                            options=GemmOptions(a_tma=a_tma, b_tma=a_tma, tile=SMALL_TILE))
    assert_close(h[:R], reference_layer0(plan, 1, x, w0), _tol_key(torch.float32), "layer0 rows_sorted")
    with pytest.raises(ValueError, match="rows_sorted"):
        grouped_gemm_layer0(plan, 1, x, w0, rows_sorted=True, options=SMALL)


@pytest.mark.parametrize("activation", ["gelu", "swiglu"])
def test_layer0_pregather_equals_the_fused_gather(activation):
    # pregather=True copies the rows into shared-row order (kernels.row_gather) and runs the GEMM on them in
    # place: the same products in the same order, so the same bits as the gather inside the kernel
    model = _small_model(activation)
    plan = make_plan(imbalanced(M=50, E=4, topk=2, std=0.1, seed=3), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, _ = _weights(plan, activation, torch.float32)
    x = _tokens(50, 40, torch.float32)
    R = int(plan.rank(1).num_rows)
    fused = grouped_gemm_layer0(plan, 1, x, w0, options=SMALL)
    pre = grouped_gemm_layer0(plan, 1, x, w0, options=SMALL.replace(pregather=True))
    assert torch.equal(pre[:R], fused[:R])
    assert_close(pre[:R], reference_layer0(plan, 1, x, w0), _tol_key(torch.float32), "layer0 pregather")


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("num_programs", [1, 3, 1000])
def test_tile_orders_and_program_counts(order, num_programs):
    model = _small_model()
    routing = imbalanced(M=40, E=4, topk=2, std=0.05, seed=7)
    plan = make_plan(routing, model, ParallelConfig(ep=4), HW, SMALL_POLICY.replace(order=order, group_m=2))
    _check_layers(plan, 3, torch.float32, tile=SMALL_TILE, num_programs=num_programs)


@pytest.mark.parametrize("policy", [Policy(block_m=32, block_n0=16, block_n1=32), Policy(block_m=16, block_n0=32,
                                                                                          block_n1=16)])
def test_tp_shard_and_other_tiles(policy):
    # TP=2: each rank computes a K/TP = 24 column slice of layer0 and a partial layer1
    model = _small_model(K=48, E=2, topk=1)
    routing = imbalanced(M=45, E=2, topk=1, std=0.1, seed=11)
    plan = make_plan(routing, model, ParallelConfig(ep=1, tp=2), HW, policy)
    assert plan.ffn_local == 24
    _check_layers(plan, 1, torch.float16, tile=TileConfig(block_k=32, num_warps=4, num_stages=1))


def test_errors_are_clear():
    model = _small_model()
    plan = make_plan(imbalanced(M=20, E=4, topk=2, std=0.0), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, w1 = _weights(plan, "gelu", torch.float32)
    x = _tokens(20, 40, torch.float32)
    with pytest.raises(ValueError, match="w0_ENK must be"):
        grouped_gemm_layer0(plan, 0, x, w0[:, :, :20], options=SMALL)
    with pytest.raises(ValueError, match="share one dtype"):
        grouped_gemm_layer0(plan, 0, x.half(), w0, options=SMALL)
    with pytest.raises(ValueError, match="contiguous"):
        grouped_gemm_layer0(plan, 0, x, w0.transpose(1, 2).contiguous().transpose(1, 2), options=SMALL)
    with pytest.raises(ValueError, match="x_MN must be"):
        grouped_gemm_layer0(plan, 0, x[:10], w0, options=SMALL)
    bad_plan = make_plan(imbalanced(M=20, E=4, topk=2, std=0.0), model, ParallelConfig(ep=2), HW,
                         Policy(block_m=24, block_n0=16, block_n1=16))
    with pytest.raises(ValueError, match="power of two"):
        grouped_gemm_layer0(bad_plan, 0, x, w0, options=SMALL)
    # tile-table bounds (validate=True): an expert past the weight's experts, a column block past D_OUT
    rp = plan.rank(0)
    tiles = {"expert": rp.l0_tile_expert_T.clone(), "row_start": rp.l0_tile_row_start_T,
             "row_end": rp.l0_tile_row_end_T, "col": rp.l0_tile_col_T, "num": rp.num_l0_tiles}
    tiles["expert"][0] = 5
    with pytest.raises(ValueError, match="tile 0: expert=5 out of bounds"):
        grouped_gemm(x, w0, tiles, block_m=16, block_n=16, a_rows_R=rp.row_token_R, options=SMALL,
                     validate=True)
    tiles["expert"] = rp.l0_tile_expert_T
    with pytest.raises(ValueError, match="col=1 out of bounds"):  # a table built for block_n=16, run with 32
        grouped_gemm(x, w0, tiles, block_m=16, block_n=32, a_rows_R=rp.row_token_R, options=SMALL,
                     validate=True)
    with pytest.raises(ValueError, match="1-D int64"):
        grouped_gemm(x, w0, {**tiles, "col": tiles["col"].int()}, block_m=16, block_n=16,
                     a_rows_R=rp.row_token_R, options=SMALL)
    with pytest.raises(ValueError, match="a gathered A"):
        grouped_gemm_layer0(plan, 0, x, w0, options=SMALL.replace(a_tma=True))
    with pytest.raises(ValueError, match="activation"):
        grouped_gemm(x, w0, tiles, block_m=16, block_n=16, activation="relu")
    with pytest.raises(ValueError, match="impl='cuda': use one of auto, triton, gluon"):
        GemmOptions(impl="cuda")
    with pytest.raises(ValueError, match="options must be a kernels.options.GemmOptions, got dict"):
        grouped_gemm(x, w0, tiles, block_m=16, block_n=16, options={"impl": "triton"})


def test_gluon_impl_says_why_it_cannot_run():
    # the Gluon Hopper kernel runs bf16/fp16 on sm_90 only: asked for anyway, it names the reason; "auto"
    # falls back to the tl kernel (the result checked against the reference)
    model = _small_model()
    plan = make_plan(imbalanced(M=20, E=4, topk=2, std=0.0), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, w1 = _weights(plan, "gelu", torch.float32)
    x = _tokens(20, 40, torch.float32)
    why = "not an sm_90" if DEVICE == "cpu" else "dtype torch.float32"
    with pytest.raises(ValueError, match=f"impl='gluon' cannot run this call: {why}"):
        grouped_gemm_layer0(plan, 0, x, w0, options=GLUON)
    h = torch.randn(plan.rank(0).row_token_R.numel(), 24, device=DEVICE)
    with pytest.raises(ValueError, match=f"impl='gluon' cannot run this call: {why}"):
        grouped_gemm_layer1(plan, 0, h, w1, options=GLUON)
    R = int(plan.rank(0).num_rows)
    y = grouped_gemm_layer1(plan, 0, h, w1, options=GemmOptions(a_tma=False, b_tma=False))
    assert_close(y[:R], reference_layer1(plan, 0, h, w1), _tol_key(torch.float32), "layer1 auto")


# ------------------------------------------------------------------------------------- GPU (bf16)
def _gpu_plan(activation, M=700, block_n0=128, order="comet", block_m=128, block_n1=128, K=320):
    # (a model's activation is gelu or swiglu; "none" is a kernel option: the model keeps gelu)
    model = ModelConfig("mid", hidden_N=512, ffn_K=K, experts_E=8, topk=2, layers=1,
                        activation="gelu" if activation == "none" else activation)
    routing = imbalanced(M=M, E=8, topk=2, std=0.05, seed=5).to("cuda")
    return make_plan(routing, model, ParallelConfig(ep=2), HW,
                     Policy(block_m=block_m, block_n0=block_n0, block_n1=block_n1, order=order), ranks=[0, 1])


@pytest.mark.gpu
@pytest.mark.parametrize("activation,block_n0", [("gelu", 128), ("gelu", 256), ("swiglu", 64), ("swiglu", 128)])
@pytest.mark.parametrize("b_tma", [False, True])
def test_gpu_bf16(activation, block_n0, b_tma):
    plan = _gpu_plan(activation, block_n0=block_n0)
    for rank in (0, 1):
        _check_layers(plan, rank, torch.bfloat16, tile=TileConfig(), b_tma=b_tma, a_tma=b_tma, c_tma=b_tma)


@pytest.mark.gpu
@pytest.mark.parametrize("activation,b_tma", [("gelu", False), ("swiglu", True)])
def test_gpu_bf16_autotuned(activation, b_tma):
    plan = _gpu_plan(activation, block_n0=128)
    for rank in (0, 1):  # (impl "triton": "auto" would take the Gluon kernel, which does not autotune)
        _check_layers(plan, rank, torch.bfloat16, b_tma=b_tma, impl="triton")


@pytest.mark.gpu
@pytest.mark.parametrize("activation,b_tma", [("gelu", True), ("swiglu", True), ("gelu", False)])
def test_gpu_warp_specialized(activation, b_tma):
    # (a benchmark variant: Triton's warp specialisation of the tile loop)
    plan = _gpu_plan(activation, block_n0=128 if activation == "gelu" else 64)
    _check_layers(plan, 0, torch.bfloat16, tile=TileConfig(), b_tma=b_tma, a_tma=b_tma, warp_specialize=True)


@pytest.mark.gpu
@pytest.mark.parametrize("flatten", [False, True])
def test_gpu_program_counts_and_flatten(flatten):
    plan = _gpu_plan("gelu", M=1500, order="expert-major")
    for num_programs in (1, 17, 132, 264, 10_000):
        _check_layers(plan, 1, torch.bfloat16, num_programs=num_programs, flatten=flatten, b_tma=flatten,
                      a_tma=flatten, tile=GPU_TILE_4)


@pytest.mark.gpu
def test_gpu_chain_matches_comet_reference():
    """layer0 then layer1 on one rank equals comet.core.reference.expert_ffn on each expert's rows."""
    from comet.core import reference as ref
    plan = _gpu_plan("swiglu", block_n0=64)
    w0, w1 = _weights(plan, "swiglu", torch.bfloat16)
    x = _tokens(plan.num_tokens, 512, torch.bfloat16)
    rp = plan.rank(1)
    h = grouped_gemm_layer0(plan, 1, x, w0)
    y = grouped_gemm_layer1(plan, 1, h, w1)
    off = rp.expert_offsets_E1.tolist()
    for e in range(plan.experts_per_rank):
        s, end = off[e], off[e + 1]
        tok = rp.row_token_R[s:end]
        expected = ref.expert_ffn(x[tok].double(), w0[e].double(), w1[e].double(), "swiglu")
        assert_close(y[s:end], expected, torch.bfloat16, f"expert {e} ffn")


# ----------------------------------------------------------------------------- Gluon Hopper kernel
def _gluon_plan(activation, block_m, block_n, K=328, M=900, order="comet"):
    # K=328: layer1's reduction ends inside a 64-wide K step (A's zero fill) and layer0's columns inside a
    # column block (the TMA store clips them); ragged experts give tiles cut short by their expert's end
    return _gpu_plan(activation, M=M, block_n0=block_n, order=order, block_m=block_m, block_n1=block_n, K=K)


def _check_gluon(plan, rank, activation, gather=False, num_programs=None, **opts):
    """layer0 (rows gathered by token id, or already in shared-row order) and layer1, both forced onto the
    Gluon kernel (opts: the other GemmOptions fields), on poisoned outputs: valid rows match the reference,
    rows past num_rows are left alone."""
    kw = {"num_programs": num_programs, "options": GemmOptions(impl="gluon", **opts)}
    dtype = torch.bfloat16
    w0, w1 = _weights(plan, activation, dtype)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, dtype)
    rp = plan.rank(rank)
    R_max, R = rp.row_token_R.numel(), int(rp.num_rows)
    x_RN = x[rp.row_token_R.clamp(min=0)].contiguous()
    h = torch.full((R_max, plan.ffn_local), float("nan"), device=DEVICE, dtype=dtype)
    grouped_gemm_layer0(plan, rank, x if gather else x_RN, w0, out_RK=h, activation=activation,
                        rows_sorted=not gather, validate=True, **kw)
    assert_close(h[:R], reference_layer0(plan, rank, x, w0, activation), dtype, f"gluon layer0 rank {rank}")
    assert bool(h[R:].isnan().all()), "layer0 wrote rows past num_rows"
    h_in = torch.where(h.isnan(), torch.zeros_like(h), h)
    y = torch.full((R_max, plan.model.hidden_N), float("nan"), device=DEVICE, dtype=dtype)
    grouped_gemm_layer1(plan, rank, h_in, w1, out_RN=y, validate=True, **kw)
    assert_close(y[:R], reference_layer1(plan, rank, h_in, w1), dtype, f"gluon layer1 rank {rank}")
    assert bool(y[R:].isnan().all()), "layer1 wrote rows past num_rows"
    return y


def _hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability()[0] == 9


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("block_m,block_n", [(128, 256), (128, 128), (64, 256)])
@pytest.mark.parametrize("activation", ["gelu", "none"])
@pytest.mark.parametrize("gather", [False, True])
def test_gpu_gluon_matches_reference(block_m, block_n, activation, gather):
    plan = _gluon_plan(activation, block_m, block_n)
    for rank in (0, 1):
        _check_gluon(plan, rank, activation, gather)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("block_m,block_n", [(128, 128), (128, 64), (64, 128)])
@pytest.mark.parametrize("gather", [False, True])
def test_gpu_gluon_swiglu_matches_reference(block_m, block_n, gather):
    # gate and up column blocks of one output block per tile, two accumulators; BLOCK_N <= 128 (registers)
    plan = _gluon_plan("swiglu", block_m, block_n)
    for rank in (0, 1):
        _check_gluon(plan, rank, "swiglu", gather)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("activation,block_m,block_n", [("gelu", 128, 256), ("none", 64, 256), ("swiglu", 128, 128),
                                                        ("swiglu", 64, 128)])
def test_gpu_gluon_loader_partition_agrees(activation, block_m, block_n):
    # A loaded by the warp-specialised loader partition (the default for a gathered A) and by the multiplying
    # warps themselves: both match the reference, and each other bit for bit (same operands, same wgmma order)
    plan = _gluon_plan(activation, block_m, block_n)
    w0, _ = _weights(plan, activation, torch.bfloat16)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, torch.bfloat16)
    R = int(plan.rank(1).num_rows)
    _check_gluon(plan, 1, activation, gather=True, ws_gather=False)
    # (split_tail=False: a split needs the loader partition, so the inline loads would run unsplit)
    run = lambda ws: grouped_gemm_layer0(plan, 1, x, w0, activation=activation,
                                         options=GLUON.replace(ws_gather=ws, split_tail=False))[:R]
    assert torch.equal(run(True), run(False))
    # A in place (TMA) through the loader partition too (ws_tma): both layers, and equal to the inline loads
    _check_gluon(plan, 1, activation, gather=False, ws_tma=True)
    x_RN = x[plan.rank(1).row_token_R.clamp(min=0)].contiguous()
    run = lambda ws: grouped_gemm_layer0(plan, 1, x_RN, w0, activation=activation, rows_sorted=True,
                                         options=GLUON.replace(ws_tma=ws, split_tail=False))[:R]
    assert torch.equal(run(True), run(False))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("activation,block_n", [("gelu", 256), ("swiglu", 128)])
def test_gpu_gluon_pregather_equals_the_fused_gather(activation, block_n):
    # rows copied first, then A through TMA: bit for bit the cp.async gather's result (also when split)
    plan = _gluon_plan(activation, 128, block_n, M=1500)
    w0, _ = _weights(plan, activation, torch.bfloat16)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, torch.bfloat16)
    R = int(plan.rank(1).num_rows)
    for programs, split in ((None, None), (9, True)):
        run = lambda pre, p=programs, st=split: grouped_gemm_layer0(
            plan, 1, x, w0, activation=activation, num_programs=p,
            options=GLUON.replace(pregather=pre, split_tail=st))[:R]
        assert torch.equal(run(True), run(False)), (programs, split)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
def test_gpu_gluon_program_counts_and_bitwise_repeat():
    # one program (every tile's K loop in one pipeline), a count that divides nothing, more than the tiles;
    # unsplit, the result does not depend on the program count (each tile's reduction order is fixed)
    plan = _gluon_plan("gelu", 128, 256, K=640, M=1500, order="expert-major")
    ys = [_check_gluon(plan, 1, "gelu", gather=True, num_programs=p, split_tail=False) for p in (1, 17, 132, 10_000)]
    for y in ys[1:]:
        assert torch.equal(y.nan_to_num(0), ys[0].nan_to_num(0))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("activation,block_m,block_n", [("gelu", 128, 256), ("none", 64, 256), ("swiglu", 128, 128)])
@pytest.mark.parametrize("gather", [False, True])
def test_gpu_gluon_split_tail(activation, block_m, block_n, gather):
    # program counts whose last wave is at most half full: its tiles are split into K chunks run by idle
    # programs (kernels.gluon_host.split_schedule), each split tile finished by whichever chunk comes last.
    # Both layers match the reference, a repeat is bitwise equal (the chunks are summed in chunk order,
    # whoever finishes), and the join counters are left at zero for the next launch.
    from kernels.gluon_host import _workspaces, split_schedule

    plan = _gluon_plan(activation, block_m, block_n, M=1500)
    rp = plan.rank(1)
    T0, T1 = int(rp.num_l0_tiles), int(rp.num_l1_tiles)
    k0_steps, k1_steps = -(-plan.model.hidden_N // 64), -(-plan.ffn_local // 64)
    splits = lambda T, n, k_steps: split_schedule(T, n, k_steps) != split_schedule(T, n, k_steps, False)
    counts = [n for n in (5, 6, 7, 9, 11, 13, T0 - 1) if splits(T0, n, k0_steps) and splits(T1, n, k1_steps)]
    assert len(counts) >= 3, (T0, T1, counts)
    for n in counts:
        y = _check_gluon(plan, 1, activation, gather, num_programs=n, split_tail=True)
        again = _check_gluon(plan, 1, activation, gather, num_programs=n, split_tail=True)
        assert torch.equal(again.nan_to_num(0), y.nan_to_num(0))
        assert _workspaces and all(int(cnt.abs().sum()) == 0 for _, cnt in _workspaces.values()), \
            "a join counter was left set"
        _check_gluon(plan, 1, activation, gather, num_programs=n, split_tail=False)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
def test_gpu_auto_picks_gluon_where_it_applies():
    # both layers under "auto" equal the forced Gluon runs bit for bit, swiglu too (BLOCK_N <= 128); swiglu
    # with 256-wide blocks is refused by the Gluon kernel with its reason
    plan = _gluon_plan("gelu", 128, 256)
    w0, w1 = _weights(plan, "gelu", torch.bfloat16)
    rp = plan.rank(0)
    R = int(rp.num_rows)  # (rows past R are not written: uninitialised)
    h = torch.randn(rp.row_token_R.numel(), plan.ffn_local, device=DEVICE, dtype=torch.bfloat16)
    assert torch.equal(grouped_gemm_layer1(plan, 0, h, w1)[:R], grouped_gemm_layer1(plan, 0, h, w1, options=GLUON)[:R])
    x = _tokens(plan.num_tokens, 512, torch.bfloat16)
    assert torch.equal(grouped_gemm_layer0(plan, 0, x, w0)[:R], grouped_gemm_layer0(plan, 0, x, w0, options=GLUON)[:R])
    sw = _gluon_plan("swiglu", 128, 128)
    w0_sw, _ = _weights(sw, "swiglu", torch.bfloat16)
    R = int(sw.rank(0).num_rows)
    assert torch.equal(grouped_gemm_layer0(sw, 0, x, w0_sw)[:R],
                       grouped_gemm_layer0(sw, 0, x, w0_sw, options=GLUON)[:R])
    wide = _gluon_plan("swiglu", 128, 256)
    with pytest.raises(ValueError, match="swiglu with BLOCK_N=256"):
        grouped_gemm_layer0(wide, 0, x, _weights(wide, "swiglu", torch.bfloat16)[0], options=GLUON)


class _FakeCudaTensor:
    """What kernels.gluon_host.supports reads of a tensor, for checking its reasons without a GPU."""

    def __init__(self, cols, dtype=torch.bfloat16, ptr=1024):
        self.is_cuda, self.device, self.dtype, self.shape, self._ptr = True, "cuda:0", dtype, (64, cols), ptr

    def data_ptr(self):
        return self._ptr

    def element_size(self):
        return torch.tensor([], dtype=self.dtype).element_size()


@pytest.mark.parametrize("capability,dtype,tile,activation,cols,ptr,why", [
    ((9, 0), torch.bfloat16, (128, 256), "gelu", 64, 1024, None),
    ((9, 0), torch.float16, (64, 128), "swiglu", 64, 1024, None),
    ((8, 0), torch.bfloat16, (128, 256), "gelu", 64, 1024, "not an sm_90"),
    ((10, 0), torch.bfloat16, (128, 256), "gelu", 64, 1024, "not an sm_90"),
    ((9, 0), torch.float32, (128, 256), "gelu", 64, 1024, "dtype torch.float32"),
    ((9, 0), torch.bfloat16, (32, 256), "gelu", 64, 1024, "tile 32x256"),
    ((9, 0), torch.bfloat16, (128, 512), "none", 64, 1024, "tile 128x512"),
    ((9, 0), torch.bfloat16, (128, 256), "swiglu", 64, 1024, "swiglu with BLOCK_N=256"),
    ((9, 0), torch.bfloat16, (128, 256), "relu", 64, 1024, "activation 'relu'"),
    ((9, 0), torch.bfloat16, (128, 256), "gelu", 60, 1024, "rows are not 16-byte aligned"),
    ((9, 0), torch.bfloat16, (128, 256), "gelu", 64, 1032, "rows are not 16-byte aligned"),
])
def test_gluon_supports_names_each_limit(monkeypatch, capability, dtype, tile, activation, cols, ptr, why):
    # the dispatcher's side of the Gluon kernel (its GPU side is tested under `gpu`): which calls it takes
    from kernels.gluon_host import supports

    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    a, b, out = _FakeCudaTensor(cols, dtype, ptr), _FakeCudaTensor(64, dtype), _FakeCudaTensor(64, dtype)
    got = supports(a, b, out, activation, False, *tile)
    assert (got is None) if why is None else (why in got), got


def _exact_gelu(z):
    return 0.5 * z.double() * (1 + torch.erf(z.double() / 2 ** 0.5))


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("gather", [False, True])
def test_gpu_gluon_fast_gelu(gather):
    # against the reference at the bf16 tolerance, and elementwise: the Gluon kernel applies gelu to the
    # bf16-rounded GEMM result, which the same kernel without activation returns bit for bit, so each output
    # must be gelu(z) within the fast form's error (fit 2.6e-5, tanh.approx 2^-12 |z|) and a rounding; the
    # default (fast_gelu=None) is the fast form for bf16
    plan = _gluon_plan("gelu", 128, 256)
    _check_gluon(plan, 0, "gelu", gather, fast_gelu=True)
    w0, _ = _weights(plan, "gelu", torch.bfloat16)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, torch.bfloat16)
    rp = plan.rank(0)
    R = int(rp.num_rows)
    if not gather:
        x = x[rp.row_token_R.clamp(min=0)].contiguous()
    run = lambda activation=None, **kw: grouped_gemm_layer0(plan, 0, x, w0, rows_sorted=not gather,
                                                             activation=activation, options=GLUON.replace(**kw))[:R]
    z, y = run(activation="none"), run(fast_gelu=True)
    exact = _exact_gelu(z)
    fit_err = 2.6e-5 + 2.0 ** -12 * z.double().abs()
    err = (y.double() - exact).abs()
    assert bool((err <= 2 * fit_err + 2.0 ** -8 * exact.abs()).all()), float((err - 2 * fit_err).max())
    accurate = run(fast_gelu=False)
    assert 0 < (y != accurate).float().mean().item() < 0.5  # a different computation, but close
    assert torch.equal(run(), y)


@pytest.mark.gpu
@pytest.mark.skipif(not _hopper(), reason="the Gluon kernel is sm_90 only")
@pytest.mark.parametrize("dtype,exact_bound,ref_bound", [(torch.bfloat16, 2.0 ** -7, 2.0 ** -6.5),
                                                         (torch.float16, 2.0 ** -8, 2.0 ** -9)])
def test_gpu_gluon_packed_gelu(dtype, exact_bound, ref_bound):
    # fast_gelu="packed" acts on the rounded GEMM result z (the kernel without activation returns it bit for
    # bit). Bounds relative to |z|, plus half the smallest subnormal step (0.5 z rounds there), against gelu(z)
    # and against kernels.activations.packed_gelu_reference(z) (an exact tanh, rounded). Measured on the H200
    # (this test's data): 2^-7.6 and 2^-7.1 in bf16 (tanh.approx.bf16x2 is off by up to ~2 ulps); fp16 matches
    # the reference within 2^-10. CPU, exact tanh: 2^-7.8 bf16, 2^-10.7 fp16.
    from kernels.activations import packed_gelu_reference

    plan = _gluon_plan("gelu", 128, 256)
    w0, _ = _weights(plan, "gelu", dtype)
    x = _tokens(plan.num_tokens, plan.model.hidden_N, dtype)
    R = int(plan.rank(0).num_rows)
    run = lambda activation=None, **kw: grouped_gemm_layer0(plan, 0, x, w0, activation=activation,
                                                             options=GLUON.replace(**kw))[:R]
    z, y = run(activation="none"), run(fast_gelu="packed")
    zabs = z.double().abs()
    floor = torch.finfo(dtype).tiny * torch.finfo(dtype).eps  # the subnormal step
    err = (y.double() - _exact_gelu(z)).abs()
    ref = packed_gelu_reference(z.cpu()).to(DEVICE)
    dev = (y.double() - ref.double()).abs()
    normal = zabs >= torch.finfo(dtype).tiny
    stats = (f"max err / |z| {(err / zabs)[normal].max().item():.2e}, max |y - ref| / |z| "
             f"{(dev / zabs)[normal].max().item():.2e}, equal to ref {(y == ref).float().mean().item():.3f}")
    assert bool((err <= exact_bound * zabs + floor).all()), stats
    assert bool((dev <= ref_bound * zabs + floor).all()), stats
    assert torch.equal(run(fast_gelu="packed"), y)


def test_fast_gelu_and_split_tail_are_allowances_the_tl_kernel_ignores():
    # the tl kernel (CPU interpreter, or impl="triton" anywhere) computes the accurate gelu either way
    model = _small_model("gelu")
    plan = make_plan(imbalanced(M=50, E=4, topk=2, std=0.1, seed=3), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, _ = _weights(plan, "gelu", torch.float32)
    x = _tokens(50, 40, torch.float32)
    R = int(plan.rank(0).num_rows)
    run = lambda **kw: grouped_gemm_layer0(plan, 0, x, w0, options=SMALL.replace(impl="triton", **kw))[:R]
    assert torch.equal(run(fast_gelu=True), run())
    with pytest.raises(ValueError, match="fast_gelu='tanh': use None"):
        run(fast_gelu="tanh")
    # so are the Gluon kernel's split_tail (the tl kernel never splits); a wrong value of either tri-state says so
    assert torch.equal(run(split_tail=True), run())
    with pytest.raises(ValueError, match="split_tail='auto': use None"):
        run(split_tail="auto")
    with pytest.raises(ValueError, match="pregather=1.0: use None"):
        run(pregather=1.0)


@pytest.mark.parametrize("K,pregather,expect_gather_in_kernel", [
    (24, None, True),      # narrow weights: the Gluon kernel gathers itself
    (4096, None, False),   # >= PREGATHER_MIN_COLS columns: rows copied first, A in place
    (4096, False, True),
    (24, True, False),
])
def test_gluon_dispatch_pregathers_wide_weights(monkeypatch, K, pregather, expect_gather_in_kernel):
    # the dispatcher's side (no GPU needed): the Gluon launch is stubbed to record what it is given
    import kernels.grouped_gemm as gg

    seen = {}

    class FakeGluon:
        @staticmethod
        def grouped_gemm_hopper(a, b, tiles, out, *, a_rows_R, **kw):
            seen.update(a=a, a_rows_R=a_rows_R)
            return out

    monkeypatch.setattr(gg, "gluon_unsupported", lambda *args: None)
    monkeypatch.setattr(gg, "_gluon_module", lambda: FakeGluon)
    model = _small_model("gelu", K=K)
    plan = make_plan(imbalanced(M=50, E=4, topk=2, std=0.1, seed=3), model, ParallelConfig(ep=2), HW, SMALL_POLICY)
    w0, _ = _weights(plan, "gelu", torch.float32)
    x = _tokens(50, 40, torch.float32)
    rp = plan.rank(1)
    grouped_gemm_layer0(plan, 1, x, w0, options=GemmOptions(b_tma=False, pregather=pregather))
    if expect_gather_in_kernel:
        assert seen["a"] is x and torch.equal(seen["a_rows_R"], rp.row_token_R)
    else:
        R = int(rp.num_rows)
        assert seen["a_rows_R"] is None and torch.equal(seen["a"][:R], x[rp.row_token_R[:R]])
