"""CometMoE (comet/layer/comet_moe.py) and the baselines (comet/layer/gpu_baselines.py) in an emulated world
against comet.core.reference.

Without CUDA everything runs under Triton's interpreter (TRITON_INTERPRET=1, set before the kernels are
imported) in float32 / float16 on tiny shapes (N = K = 32, M <= 64, 16-wide tiles): the three systems (comet,
sequential, chunked) for EP=2, TP=2, EP=2 x TP=2, gelu and swiglu, both dispatch forms; tagged rows through
the baselines' dispatch; input checks and errors; the forward-only guard; the custom op under opcheck and
torch.compile (eager / aot_eager backends); the routers; the graph-safe barrier kernel.
`gpu` tests (one GPU, bf16): the same systems at mid size, CUDA-graph capture and replay with changing
routing, no host sync inside a call, torch.compile with inductor, and a one-rank process group (NCCL,
SymmetricWorkspace, DistCollectives) with graph capture.
"""

from __future__ import annotations

import gc
import os
import socket

import pytest
import torch

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.ownership import token_owner
from comet.core.reference import dispatch, moe_forward
from comet.core.routing import Routing, imbalanced, topk_gate, uniform
from comet.core.tolerances import assert_close
from comet.core.weights import random_tokens, random_weights, shard_weights
from comet.layer.collectives import EmulatedCollectives
from comet.layer.comet_moe import CPU_POLICY, CometMoE
from comet.layer.gpu_baselines import BaselineRunner, prepare
from comet.layer.routers import softmax_topk_gate, sparsemixer_gate
from kernels.workspace import WorkspaceCapacityError

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
SYSTEMS = ("comet", "sequential", "chunked")


def _tol(dtype):
    return "tf32" if dtype == torch.float32 and DEVICE == "cuda" else dtype


def _model(act="gelu", N=32, K=32, E=4, topk=2) -> ModelConfig:
    return ModelConfig("tiny", hidden_N=N, ffn_K=K, experts_E=E, topk=topk, layers=1, activation=act)


def _layer(model, par, cap=64, dtype=torch.float32, seed=0, **kw) -> tuple[CometMoE, object]:
    """A layer with weights from comet.core.weights.random_weights(seed) (returned, for the reference)."""
    layer = CometMoE(model, par, capacity_tokens=cap, dtype=dtype, device=DEVICE, policy=kw.pop("policy", CPU_POLICY),
                     **kw)
    w = random_weights(model, seed=seed)
    gate = torch.randn(model.experts_E, model.hidden_N, generator=torch.Generator().manual_seed(seed)) / 4
    layer.load_experts(w.to(dtype, DEVICE), gate.to(DEVICE, dtype))
    return layer, w


def _reference(layer, w, x) -> torch.Tensor:
    """comet.core.reference on the layer's own routing (float64, CPU)."""
    ids, gw = layer.route(x)
    routing = Routing(ids.cpu(), gw.cpu(), layer.model.experts_E)
    return moe_forward(x.cpu().double(), routing, w.to(x.dtype).to(torch.float64), layer.model.activation)


def _check_systems(layer, w, x, what, systems=SYSTEMS, forms=("all-to-all",)):
    ref = _reference(layer, w, x)
    for system in systems:
        for form in forms if system != "comet" else ("all-to-all",):
            layer.system = system
            layer.policy = layer.policy.replace(dispatch=form)
            with torch.no_grad():
                out = layer(x)
            assert out.shape == x.shape and out.dtype == x.dtype
            assert_close(out.cpu(), ref, _tol(x.dtype), f"{what} {system} {form}")
    layer.system = "comet"


# ------------------------------------------------------------------------------ against the reference
@pytest.mark.parametrize("ep,tp", [(2, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_three_systems_match_reference(ep, tp, act):
    model = _model(act)
    par = ParallelConfig(ep=ep, tp=tp)
    layer, w = _layer(model, par, chunks=3)
    x = random_tokens(45, 32, seed=ep + 2 * tp).to(DEVICE)
    forms = ("all-to-all", "all-gather") if (ep, tp) == (2, 2) else ("all-to-all",)
    _check_systems(layer, w, x, f"EP={ep} TP={tp} {act}", forms=forms)


def test_float16_batched_input_and_consecutive_calls():
    """(B, S, N) input, float16, M changing call to call through one workspace (no host-side clearing)."""
    model = _model("swiglu")
    par = ParallelConfig(ep=2, tp=2)
    layer, w = _layer(model, par, dtype=torch.float16, chunks=2)
    for i, shape in enumerate(((4, 16, 32), (3, 32), (1, 17, 32), (64, 32))):
        x = random_tokens(int(torch.tensor(shape[:-1]).prod()), 32, seed=i).reshape(shape).to(DEVICE, torch.float16)
        ref = _reference(layer, w, x.reshape(-1, 32)).reshape(shape)
        for system in SYSTEMS:
            layer.system = system
            with torch.no_grad():
                out = layer(x)
            assert out.shape == x.shape
            assert_close(out.cpu(), ref, torch.float16, f"call {i} shape {shape} {system}")
    layer.check()


def test_chunks_beyond_tokens_and_idle_rank():
    """More chunks than a rank has tokens (empty chunks dropped); E=6, EP=3 with rank 2's experts unused, so it
    receives nothing in the all-to-all."""
    model = _model("gelu", E=6)
    par = ParallelConfig(ep=3)
    layer, w = _layer(model, par, chunks=8)
    layer.gate_weight.data[4:] = -100.0  # experts 4, 5 (rank 2's) never win
    x = random_tokens(10, 32, seed=5).to(DEVICE)
    _check_systems(layer, w, x, "idle rank, 8 chunks of <= 4 tokens", forms=("all-to-all", "all-gather"))


# ------------------------------------------------------------------------------------ baselines' dispatch
def test_baseline_dispatch_delivers_tagged_rows():
    """Rows tagged [token + 1, owner + 1]: every rank's receive buffer holds exactly the rows comet.core.reference's
    dispatch sends it, in its (source rank, token) order; a wrong row is named."""
    model = _model("gelu")
    par = ParallelConfig(ep=2, tp=2)
    M, W = 40, 4
    routing = uniform(M, 4, 2, seed=3)
    x = torch.zeros(M, 32)
    x[:, 0] = torch.arange(M) + 1
    x[:, 1] = token_owner(M, W) + 1
    _, ref = dispatch(x, routing, model, par, "all-to-all")
    coll = EmulatedCollectives(W, DEVICE)
    runner = BaselineRunner(coll, model, par)
    for chunks in (1, 3):
        metas = prepare(routing.to(DEVICE), model, par, coll.ranks, chunks=chunks, policy=CPU_POLICY)
        got = {r: [] for r in range(W)}
        for meta in metas:
            x_own = {r: x[slice(*_owned(M, W, r))].to(DEVICE) for r in range(W)}
            for r, buf in runner.dispatch(meta, x_own).items():
                got[r].append(buf.cpu())
            assert meta.send_splits[0] == [meta.recv_splits[d][0] for d in range(W)]
        owner = token_owner(M, W)
        for r in range(W):
            rows = torch.cat(got[r])[:, :2]
            want = ref.ranks[r].token_U
            if chunks > 1:  # each chunk in (owner, token) order: sort to compare with the whole layer's order
                rows = rows[rows[:, 0].argsort()]
            assert rows.shape[0] == want.numel(), f"rank {r} received {rows.shape[0]} rows, expected {want.numel()}"
            want_rows = torch.stack([want + 1, owner[want] + 1], 1).float()
            bad = (rows != want_rows).any(1).nonzero().flatten().tolist()
            problems = [f"rank {r} row {i} ({chunks} chunks): holds token {rows[i, 0] - 1:g} from owner "
                        f"{rows[i, 1] - 1:g}, expected token {int(want[i])} from owner {int(owner[want[i]])}"
                        for i in bad]
            assert not problems, problems[:5]


def _owned(M, W, r):
    from comet.core.ownership import owned_range

    return owned_range(M, W, r)


def test_fused_forward_with_prebuilt_plan():
    """kernels.moe.moe_forward_fused(plan=...) (how the benchmark times the kernels alone) gives the same bits;
    a plan for another token count, policy or set of ranks is refused."""
    from comet.core.planner import make_plan
    from kernels.moe import moe_forward_fused

    model = _model("gelu")
    par = ParallelConfig(ep=2)
    layer, w = _layer(model, par)
    routing = uniform(32, 4, 2, seed=2).to(DEVICE)
    x = random_tokens(32, 32).to(DEVICE)
    shards = layer.rank_shards()
    plan = make_plan(routing, model, par, layer.hardware, CPU_POLICY)
    a = moe_forward_fused(layer.workspace, x, routing, shards, model, par, CPU_POLICY)
    b = moe_forward_fused(layer.workspace, x, routing, shards, model, par, CPU_POLICY, plan=plan)
    assert torch.equal(a, b)
    for bad, pol in ((make_plan(uniform(30, 4, 2).to(DEVICE), model, par, layer.hardware, CPU_POLICY), CPU_POLICY),
                     (plan, CPU_POLICY.replace(nc_layer1=3)),
                     (make_plan(routing, model, par, layer.hardware, CPU_POLICY, ranks=[1]), CPU_POLICY)):
        with pytest.raises(ValueError, match="was not built for this call"):
            moe_forward_fused(layer.workspace, x, routing, shards, model, par, pol, plan=bad)


# ------------------------------------------------------------------------------------------- routers
def test_softmax_router_is_topk_gate():
    logits = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
    ids, w = softmax_topk_gate(logits, 3)
    ref = topk_gate(logits, 3)
    assert torch.equal(ids, ref.topk_ids_MJ) and torch.allclose(w, ref.topk_weights_MJ)
    ids, w = softmax_topk_gate(logits, 3, normalize=False)
    assert torch.allclose(w, torch.softmax(logits, -1).gather(-1, ids))
    with pytest.raises(ValueError, match=r"topk=9 must lie in \[1, E=8\]"):
        softmax_topk_gate(logits, 9)


def test_sparsemixer_hand_checked():
    """Row 0: the second expert is within 2 eps of the first (relative), so pick 1 weighs e^0/(e^0 + e^-0.01);
    pick 2 (expert 1) stands alone. Row 1: pick 1 alone; pick 2 shares with expert 2 (1.0 vs 0.99)."""
    logits = torch.tensor([[2.0, 1.99, 0.0, -1.0], [3.0, 1.0, 0.99, -5.0]])
    ids, w = sparsemixer_gate(logits, jitter_eps=0.01)
    close = 1 / (1 + torch.exp(torch.tensor(-0.01)))
    assert ids.tolist() == [[0, 1], [0, 1]]
    assert torch.allclose(w, torch.tensor([[close, 1.0], [1.0, close]]), atol=1e-6), w
    _, w = sparsemixer_gate(logits, jitter_eps=0.0)  # nothing else within 0: every pick alone
    assert torch.allclose(w, torch.ones(2, 2))


# ------------------------------------------------------------------------------------ errors and guards
def test_input_errors():
    model = _model()
    par = ParallelConfig(ep=2)
    layer, _ = _layer(model, par, cap=32)
    with torch.no_grad():
        with pytest.raises(ValueError, match="hidden size N=32"):
            layer(torch.zeros(4, 16, device=DEVICE))
        with pytest.raises(ValueError, match="is torch.float16 on"):
            layer(torch.zeros(4, 32, device=DEVICE, dtype=torch.float16))
        with pytest.raises(WorkspaceCapacityError, match=r"M=40 tokens .* bytes needed, \d+ available"):
            layer(torch.zeros(40, 32, device=DEVICE))
        for system in ("sequential", "chunked"):
            layer.system = system
            with pytest.raises(WorkspaceCapacityError, match="M=40"):
                layer(torch.zeros(40, 32, device=DEVICE))
        layer.system = "nccl"
        with pytest.raises(ValueError, match="unknown system 'nccl'"):
            layer(torch.zeros(4, 32, device=DEVICE))
    with pytest.raises(ValueError, match="topk=5 > experts_E=4"):
        _model(topk=5)
    with pytest.raises(ValueError, match="experts_E=4 is not divisible by ep=3"):
        CometMoE(model, ParallelConfig(ep=3), capacity_tokens=8, dtype=torch.float32, device=DEVICE)
    with pytest.raises(ValueError, match="sparsemixer router picks exactly 2"):
        CometMoE(_model(topk=3), par, capacity_tokens=8, dtype=torch.float32, device=DEVICE, router="sparsemixer")
    with pytest.raises(ValueError, match="unknown router"):
        CometMoE(model, par, capacity_tokens=8, dtype=torch.float32, device=DEVICE, router="sigmoid")
    with pytest.raises(ValueError, match="gate_weight_EN must be"):
        layer.load_experts(random_weights(model), torch.zeros(3, 32))
    with pytest.raises(ValueError, match="weights hold E=8"):
        layer.load_experts(random_weights(_model(E=8)), torch.zeros(4, 32))


def test_forward_only_guard():
    model = _model()
    layer, w = _layer(model, ParallelConfig(ep=2))
    x = random_tokens(20, 32).to(DEVICE)
    with pytest.raises(RuntimeError, match="forward-only"):
        layer(x.clone().requires_grad_())
    out = layer(x)  # grad mode on, but nothing requires grad: fine
    assert not out.requires_grad
    with torch.inference_mode():
        assert_close(layer(x).cpu(), _reference(layer, w, x), _tol(x.dtype), "inference_mode")
    layer.w1.requires_grad_(True)
    with pytest.raises(RuntimeError, match="forward-only"):
        layer(x)
    with torch.no_grad():
        layer(x)
    ids, gw = layer.route(x)
    y = torch.ops.comet.moe_experts(x, ids, gw, layer.w0, layer.w1, layer._handle)
    with pytest.raises(RuntimeError, match="no autograd formula"):
        y.sum().backward()


# --------------------------------------------------------------------------------- custom op, compile
def test_custom_op_opcheck_and_compile():
    model = _model("swiglu")
    layer, _ = _layer(model, ParallelConfig(ep=2, tp=2))
    x = random_tokens(40, 32, seed=1).to(DEVICE)
    ids, gw = layer.route(x)
    torch.library.opcheck(torch.ops.comet.moe_experts.default, (x, ids, gw, layer.w0, layer.w1, layer._handle))
    with torch.no_grad():
        ref = layer(x)
        for backend in ("eager", "aot_eager"):
            torch._dynamo.reset()
            out = torch.compile(layer, backend=backend, fullgraph=True)(x)
            assert torch.equal(out, ref), f"compiled ({backend}) output differs from eager"


def test_shared_workspace_between_layers():
    model = _model("gelu")
    par = ParallelConfig(ep=2)
    a, wa = _layer(model, par, seed=1)
    b = CometMoE(model, par, capacity_tokens=64, dtype=torch.float32, device=DEVICE, policy=CPU_POLICY,
                 workspace=a.workspace)
    wb = random_weights(model, seed=2)
    b.load_experts(wb.to(device=DEVICE), a.gate_weight.clone())
    assert b.workspace is a.workspace
    x = random_tokens(30, 32, seed=4).to(DEVICE)
    with torch.no_grad():
        y = b(a(x))
    ref_a = _reference(a, wa, x)
    assert_close(y.cpu(), _reference(b, wb, ref_a.float().to(DEVICE)), _tol(x.dtype), "two layers, one workspace")
    with pytest.raises(ValueError, match="workspace was made for"):
        CometMoE(_model(K=64), par, capacity_tokens=8, dtype=torch.float32, device=DEVICE, workspace=a.workspace)


# ------------------------------------------------------------------------------- graph-safe barrier
def test_barrier_counter_and_timeout():
    """kernels/symm.py's barrier on two emulated ranks: its value comes from a device counter (so a CUDA graph
    replay advances it); rank 0 arriving first times out naming peer 1, rank 1 then passes."""
    from kernels.signals import STATUS_LEN, describe_status
    from kernels.symm import _barrier_kernel

    W, off = 2, 0
    sflags = [torch.zeros(W, dtype=torch.int32, device=DEVICE) for _ in range(W)]
    peers = torch.tensor([t.data_ptr() for t in sflags], dtype=torch.int64, device=DEVICE)
    status = [torch.zeros(STATUS_LEN, dtype=torch.int32, device=DEVICE) for _ in range(W)]
    count = [torch.zeros(1, dtype=torch.int32, device=DEVICE) for _ in range(W)]

    def barrier(r, spin=1000):
        _barrier_kernel[(1,)](peers, sflags[r], status[r], count[r], r, W, off, spin, num_warps=1)

    barrier(0)  # rank 1 has not arrived
    msg = describe_status(status[0].tolist(), 1, 1000)
    assert msg and "barrier flag[peer rank 1]" in msg and "saw 0, expected 1" in msg, msg
    barrier(1)
    assert status[1].eq(0).all() and count[0].item() == count[1].item() == 1
    status[0].zero_()
    for _ in range(3):  # later barriers: values 2, 3, 4 from the counters, in the peers' slots
        barrier(1, spin=1)  # rank 1 first: it waits on rank 0, which arrives next, so it records a timeout
        barrier(0)
        status[1].zero_()
    assert count[0].item() == 4 and sflags[0].tolist() == [4, 4] and sflags[1].tolist() == [4, 4]
    assert status[0].eq(0).all()


# ------------------------------------------------------------------------------------- GPU (bf16)
def _gpu_layer(model, par, cap=2048, **kw):
    layer = CometMoE(model, par, capacity_tokens=cap, dtype=torch.bfloat16, device="cuda", **kw)
    w = random_weights(model, seed=0)
    layer.load_experts(w.to(torch.bfloat16, "cuda"), (torch.randn(model.experts_E, model.hidden_N) / 8).to(
        "cuda", torch.bfloat16))
    return layer, w


def _gpu_reference(layer, w, x):
    ids, gw = layer.route(x)
    routing = Routing(ids, gw, layer.model.experts_E)
    return moe_forward(x.double(), routing, w.to(torch.bfloat16).to(device="cuda", dtype=torch.float64),
                       layer.model.activation)


@pytest.mark.gpu
@pytest.mark.parametrize("ep,tp", [(2, 1), (4, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_gpu_three_systems_bf16(ep, tp, act):
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation=act)
    layer, w = _gpu_layer(model, ParallelConfig(ep=ep, tp=tp), chunks=4)
    x = random_tokens(2000, 512, seed=ep + tp, dtype=torch.bfloat16, device="cuda")
    ref = _gpu_reference(layer, w, x)
    for system in SYSTEMS:
        for form in ("all-to-all", "all-gather"):
            layer.system = system
            layer.policy = layer.policy.replace(dispatch=form)
            with torch.no_grad():
                out = layer(x)
            assert_close(out, ref, torch.bfloat16, f"EP={ep} TP={tp} {act} {system} {form}")
    layer.check()


@pytest.mark.gpu
@pytest.mark.parametrize("ep", [4, 8])
def test_gpu_a_shape_never_tuned_on(ep):
    """CometMoE on a shape no default was measured on (E=128, topk=8, N=2048, K=768, swiglu, M=4096, bf16) in an
    emulated EP world on one GPU: the output matches the float64 reference of the same routing."""
    model = ModelConfig("unseen", hidden_N=2048, ffn_K=768, experts_E=128, topk=8, layers=1, activation="swiglu")
    layer, w = _gpu_layer(model, ParallelConfig(ep=ep), cap=4096)
    x = random_tokens(4096, 2048, seed=ep, dtype=torch.bfloat16, device="cuda")
    ref = _gpu_reference(layer, w, x)
    with torch.no_grad():
        out = layer(x)
    assert_close(out, ref, torch.bfloat16, f"E=128 topk=8 N=2048 K=768 EP={ep}")
    layer.check()


def _compiled_variants() -> dict[str, int]:
    """Compiled variants of every Triton / Gluon kernel the layer launches, by name (the JIT caches)."""
    import importlib

    from triton.runtime.jit import JITFunction
    counts = {}
    for name in ("comet.core.planner_kernels", "kernels.fused_layer0", "kernels.fused_layer1", "kernels.combine",
                 "kernels.symm", "kernels.grouped_gemm", "kernels.row_gather", "kernels.gluon_gemm"):
        for attr, fn in vars(importlib.import_module(name)).items():
            if isinstance(fn, JITFunction) and fn.device_caches:
                counts[f"{name}.{attr}"] = sum(len(c[0]) for c in fn.device_caches.values())
    return counts


@pytest.mark.gpu
def test_gpu_new_token_counts_compile_nothing():
    """After one call, new token counts (odd, divisible by 16, one token) and every rank's plan compile no new
    kernel variant: no recompiling per shape, and no minutes-long first calls (comet/core/jit.py)."""
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation="swiglu")
    layer, w = _gpu_layer(model, ParallelConfig(ep=4), cap=4096)
    x = random_tokens(4096, 512, seed=0, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        layer(x[:1000])
        torch.cuda.synchronize()
        before = _compiled_variants()
        for M in (700, 1003, 4096, 2048, 1):
            out = layer(x[:M])
            assert_close(out, _gpu_reference(layer, w, x[:M]), torch.bfloat16, f"M={M}")
    after = _compiled_variants()
    assert before and after == before, {k: (before.get(k), v) for k, v in after.items() if before.get(k) != v}
    layer.check()


def _capture_and_replay(layer, w, x, replays: int, what: str) -> None:
    """Capture layer(x) once, then replay on new values of x (new routing each time) against the reference."""
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        y = layer(x)
    for i in range(replays):
        x.copy_(random_tokens(x.shape[0], x.shape[1], seed=100 + i))
        g.replay()
        assert_close(y, _gpu_reference(layer, w, x), torch.bfloat16, f"{what} {i}")
    layer.check()


@pytest.mark.gpu
@pytest.mark.parametrize("variant", ["blocks", "direct"])
def test_gpu_cuda_graph_capture_and_replay(variant):
    """Capture one forward (gate, plan, kernels) in a CUDA graph, then replay it on new token values: the
    routing changes every replay and every result matches the reference; copy-engine and the baselines
    refuse to be captured with a clear error."""
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    layer, w = _gpu_layer(model, ParallelConfig(ep=2, tp=2), policy=CPU_POLICY.replace(
        block_m=128, block_n0=64, block_n1=128, nc_layer0=16, nc_layer1=28, comm_rows=64, layer0_comm=variant))
    x = torch.empty(1024, 512, dtype=torch.bfloat16, device="cuda")
    x.copy_(random_tokens(1024, 512, seed=0))
    with torch.no_grad():
        layer(x)  # warm-up: compile the kernels
        torch.cuda.synchronize()
        _capture_and_replay(layer, w, x, 5, f"replay ({variant})")
        for system, policy, match in (("comet", layer.policy.replace(layer0_comm="copy-engine"), "copy-engine"),
                                      ("sequential", layer.policy, "host sync")):
            layer.system, layer.policy = system, policy
            with pytest.raises(RuntimeError, match=match), torch.cuda.graph(torch.cuda.CUDAGraph()):
                layer(x)


@pytest.mark.gpu
def test_gpu_baseline_runner_graph_capture():
    """BaselineRunner.forward with prepared metadata (no host sync) captures, chunked streams included."""
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    coll = EmulatedCollectives(4, "cuda")
    runner = BaselineRunner(coll, model, par)
    w = random_weights(model, dtype=torch.bfloat16, device="cuda")
    shards = {r: shard_weights(w, par, r) for r in range(4)}
    routing = imbalanced(2048, 8, 2, std=0.03, seed=1).to("cuda")
    x = random_tokens(2048, 512, seed=2, dtype=torch.bfloat16, device="cuda")
    ref = moe_forward(x.double(), routing, w.to(torch.float64), "gelu")
    for chunks in (1, 4):
        metas = prepare(routing, model, par, coll.ranks, chunks=chunks)
        runner.forward(metas, x, shards, overlap=True)
        torch.cuda.synchronize()
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            out = runner.forward(metas, x, shards, overlap=True)
        g.replay()
        assert_close(out, ref, torch.bfloat16, f"graph-replayed baseline, {chunks} chunks")


@pytest.mark.gpu
def test_gpu_no_host_sync_and_inductor():
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1)
    layer, w = _gpu_layer(model, ParallelConfig(ep=2, tp=2))
    x = random_tokens(1000, 512, seed=3, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        layer(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = layer(x)  # gate, plan and kernels
        finally:
            torch.cuda.set_sync_debug_mode("default")
        assert_close(out, _gpu_reference(layer, w, x), torch.bfloat16, "no-sync call")
        compiled = torch.compile(layer, fullgraph=True)
        assert_close(compiled(x), _gpu_reference(layer, w, x), torch.bfloat16, "torch.compile (inductor)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.gpu
def test_gpu_one_rank_process_group():
    """world='process-group' on a one-rank NCCL group: SymmetricWorkspace, DistCollectives (NCCL all-to-all,
    all-gather, reduce-scatter), every system; comet captured in a CUDA graph (the device-side barrier)."""
    import torch.distributed as dist

    if dist.is_initialized() or int(os.environ.get("WORLD_SIZE", "1")) > 1:
        pytest.skip("a process group already exists (torchrun)")
    for k, v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
        os.environ.setdefault(k, v)
    dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1,
                            device_id=torch.device("cuda", torch.cuda.current_device()))
    try:
        _one_rank_group_checks()
    finally:
        torch.cuda.synchronize()
        gc.collect()  # the layer's symmetric memory goes before its group
        dist.destroy_process_group()


def _one_rank_group_checks():
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=4, topk=2, layers=1, activation="swiglu")
    layer, w = _gpu_layer(model, ParallelConfig(), cap=1024, world="process-group", chunks=3)
    x = random_tokens(1000, 512, seed=5, dtype=torch.bfloat16, device="cuda")
    ref = _gpu_reference(layer, w, x)
    for system in SYSTEMS:
        for form in ("all-to-all", "all-gather"):
            layer.system, layer.policy = system, layer.policy.replace(dispatch=form)
            with torch.no_grad():
                assert_close(layer(x), ref, torch.bfloat16, f"one-rank group {system} {form}")
    layer.system = "comet"
    with torch.no_grad():
        _capture_and_replay(layer, w, x, 3, "one-rank group graph replay")


# ------------------------------------------------------------------------------ experiments.layer_bench
def test_layer_bench_config_and_summary():
    """The benchmark's per-configuration logic with a stand-in timer (each measurement runs once and counts
    as 1 us): every system runs, their outputs agree with comet's, the row and the summary are complete."""
    from comet.core.ownership import owned_range
    from experiments import layer_bench

    a = layer_bench.parse_args(["--emulated", "--chunks", "2", "3", "--nc1", "2", "3", "--runs", "1"])
    calls = []

    def timer(name, fn):
        fn()
        calls.append(name)
        return 1.0 + len(calls) % 3

    model = _model("swiglu")
    par = ParallelConfig(ep=2, tp=2)
    layer = CometMoE(model, par, capacity_tokens=64, dtype=torch.float32, device=DEVICE, policy=CPU_POLICY)
    row = layer_bench.run_config(layer, model, par, 48, "imbalanced", a, timer, owned_range)
    assert calls == ["comet nc=2", "comet nc=3", "comet+plan", "plan", "sequential", "chunked Q=2", "chunked Q=3",
                     "gemm_only", "comm_only"]
    assert float(row["max_rel_diff_vs_comet"]) < 1e-5 and row["chunked_best_C"] in (2, 3)
    assert float(row["floor_us"]) == max(float(row["gemm_only_us"]), float(row["comm_only_us"]))
    row.update(gpu="cpu", world_size=4, emulated=True, note="")
    assert set(row) == set(layer_bench.COLUMNS)
    text = layer_bench.summary([row], "cpu", "test")
    assert "geometric mean speedup" in text and "comet / floor" in text


def test_layer_bench_fails_fast_without_a_gpu(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from experiments import layer_bench

    with pytest.raises(SystemExit) as e:
        layer_bench.main(["--emulated", "--quick"])
    assert e.value.code == 2 and "needs CUDA GPUs" in capsys.readouterr().err
