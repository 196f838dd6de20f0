"""The fused kernels on a real process group (SymmetricWorkspace, one GPU per process) against
comet.core.reference, bf16. Run with torchrun (the `multigpu` marker skips everywhere else, tests/conftest.py):

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
        torchrun --nproc-per-node=4 -m pytest -m multigpu tests/test_fused_multigpu.py    (and =2)

Every process builds the same global inputs from seeds, runs its own rank, and compares its own token
rows with the single-process reference. Covered: EP=W, TP=2 (and EP=W/2 x TP=2 on 4 GPUs), gelu and
swiglu, the three layer0 variants, balanced and imbalanced (std 0.05) routing, an idle expert, all
tokens on one rank's experts, the paper models scaled down and Mixtral at full size, tagged rows,
1,000 consecutive calls, no host sync inside a call, a peer that never signals (timeout error naming the
flag on every rank). Measured on 2 x H200 (results/multigpu/README.md); not yet run on 4 GPUs.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    os.environ.setdefault(_k, _v)  # before torch.distributed starts: multicast stays off (docs/GPU_FACTS.md)

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig  # noqa: E402
from comet.core.ownership import token_owner  # noqa: E402
from comet.core.planner import make_plan  # noqa: E402
from comet.core.policy import Policy  # noqa: E402
from comet.core.reference import moe_forward  # noqa: E402
from comet.core.routing import Routing, imbalanced, uniform  # noqa: E402
from comet.core.tolerances import assert_close  # noqa: E402
from comet.core.weights import ExpertWeights, random_tokens, random_weights, shard_weights  # noqa: E402

pytestmark = pytest.mark.multigpu
HW = HardwareProfile.from_name("h200")
VARIANTS = ("blocks", "direct", "copy-engine")
POLICY = Policy(block_m=128, block_n0=128, block_n1=128, nc_layer0=16, nc_layer1=28, comm_rows=64)


@pytest.fixture(scope="module")
def dist_world():
    import torch.distributed as dist

    if not dist.is_initialized():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    yield dist.get_rank(), dist.get_world_size()
    dist.barrier()


def _parallels(W):
    out = [ParallelConfig(ep=W)]
    if W % 2 == 0:
        out.append(ParallelConfig(ep=W // 2, tp=2))
    return out


def _workspace(model, par, cap, **kw):
    from kernels.symm import SymmetricWorkspace

    return SymmetricWorkspace(model, par, cap, dtype=torch.bfloat16, **kw)


def _own_rows(M, W, r):
    from comet.core.ownership import owned_range

    lo, hi = owned_range(M, W, r)
    return slice(lo, hi)


def _gpu_weights(model, seed=0) -> ExpertWeights:
    """bf16 Gaussian weights drawn on the GPU from a seed: the same on every rank."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    E, N, K = model.experts_E, model.hidden_N, model.ffn_K
    w0 = torch.randn(E, N, model.layer0_cols, device="cuda", generator=g) / N ** 0.5
    w1 = torch.randn(E, K, N, device="cuda", generator=g) / K ** 0.5
    return ExpertWeights(w0.bfloat16(), w1.bfloat16())


def _check(ws, model, par, routing, policy, what, seed=0, checked=True):
    from kernels.moe import moe_forward_fused

    rank, W = ws.rank, par.world_size
    M = routing.num_tokens
    w = _gpu_weights(model, seed)
    x = random_tokens(M, model.hidden_N, seed=seed + 1, dtype=torch.bfloat16, device="cuda")
    out = moe_forward_fused(ws, x, routing.to("cuda"), w, model, par, policy, checked=checked)
    ref = moe_forward(x.double(), routing.to("cuda"), w.to(torch.float64), model.activation)
    assert_close(out, ref[_own_rows(M, W, rank)], torch.bfloat16, f"rank {rank}: {what}")
    return out


# --------------------------------------------------------------------------------------- correctness
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference(dist_world, act, variant):
    _, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation=act)
    for par in _parallels(W):
        ws = _workspace(model, par, 1024)
        for std in (0.0, 0.05):
            routing = imbalanced(M=1000, E=8, topk=2, std=std, seed=W)
            _check(ws, model, par, routing, POLICY.replace(layer0_comm=variant, block_n0=64 if act == "swiglu"
                                                           else 128), f"EP={par.ep} TP={par.tp} {act} {variant} {std}")


def test_routing_corner_cases(dist_world):
    _, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    M = 700
    gen = torch.Generator().manual_seed(0)
    one_rank = torch.stack([torch.randperm(2, generator=gen) + 6 for _ in range(M)])
    idle = torch.tensor([[0, 2] if t % 3 else [2, 5] for t in range(M)])
    for par in _parallels(W):
        ws = _workspace(model, par, M)
        for ids, what in ((one_rank, "all tokens on the last rank's experts"), (idle, "idle experts")):
            routing = Routing(ids, torch.softmax(torch.randn(M, 2, generator=gen), -1), 8)
            for variant in VARIANTS:
                _check(ws, model, par, routing, POLICY.replace(layer0_comm=variant, block_n0=64),
                       f"{what} EP={par.ep} TP={par.tp} {variant}")


@pytest.mark.parametrize("name,scale", [("mixtral-8x7b", 8), ("qwen2-moe-2.7b", 4), ("phi-3.5-moe", 8),
                                        ("mixtral-8x7b", 1)])
def test_paper_models(dist_world, name, scale):
    _, W = dist_world
    base = ModelConfig.from_name(name)
    model = dataclasses.replace(base, hidden_N=base.hidden_N // scale, ffn_K=base.ffn_K // scale)
    par = ParallelConfig(ep=W)
    M = 4096 if scale == 1 else 2048
    ws = _workspace(model, par, M)
    routing = imbalanced(M=M, E=model.experts_E, topk=model.topk, std=0.032, seed=1)
    for variant in VARIANTS:
        _check(ws, model, par, routing, POLICY.replace(layer0_comm=variant), f"{name}/{scale} {variant}")


def test_tagged_rows(dist_world):
    """Rows tagged with their token and owner: each received row names where it came from if it is wrong."""
    from kernels.fused_layer0 import fused_layer0
    from kernels.moe import stage_tokens

    rank, W = dist_world
    model = ModelConfig("mid", hidden_N=256, ffn_K=256, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=W)
    ws = _workspace(model, par, 512)
    M = 500
    routing = uniform(M=M, E=8, topk=2, seed=2).to("cuda")
    owner = token_owner(M, W)
    # tags stay small integers, exact in bf16 (whose integers are exact only up to 256): token = 100 hi + lo
    x = torch.zeros(M, 256)
    x[:, 0] = torch.arange(M) // 100 + 1
    x[:, 1] = torch.arange(M) % 100 + 1
    x[:, 2] = owner + 1
    w = random_weights(model, dtype=torch.bfloat16, device="cuda")
    E_loc = 8 // W
    for variant in VARIANTS[::2]:  # blocks and copy-engine fill the receive buffer
        plan = make_plan(routing, model, par, HW, POLICY.replace(layer0_comm=variant), ranks=[rank])
        stage_tokens(ws, x.to("cuda", torch.bfloat16), M)
        ws.barrier()
        fused_layer0(ws, plan, rank, shard_weights(w, par, rank).w0_ENK)
        ws.barrier()
        ws.check()
        recv = ws.buffers(rank).recv_MN.float().cpu()
        for t in range(M):
            if int(owner[t]) == rank:
                continue
            if variant == "blocks" and rank not in (routing.topk_ids_MJ[t].cpu() // E_loc).tolist():
                continue
            got = (100 * (recv[t, 0].item() - 1) + recv[t, 1].item() - 1, recv[t, 2].item() - 1)
            assert got == (t, int(owner[t])), (f"rank {rank} ({variant}): receive row {t} holds token {got[0]:g} "
                                               f"from owner {got[1]:g}, expected token {t} from owner {int(owner[t])}")


def test_1000_calls_changing_routing(dist_world):
    from kernels.moe import moe_forward_fused

    rank, W = dist_world
    model = ModelConfig("small", hidden_N=256, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    par = _parallels(W)[-1]
    ws = _workspace(model, par, 512)
    w = random_weights(model, seed=0, dtype=torch.bfloat16, device="cuda")
    shard = shard_weights(w, par, rank)
    w64 = w.to(torch.float64)
    gen = torch.Generator().manual_seed(0)
    for i in range(1000):
        M = int(torch.randint(W, 513, (1,), generator=gen))
        routing = imbalanced(M=M, E=8, topk=2, std=0.05 * (i % 3) / 2, seed=i).to("cuda")
        x = random_tokens(M, 256, seed=i, dtype=torch.bfloat16, device="cuda")
        policy = POLICY.replace(layer0_comm=VARIANTS[i % 3], nc_layer1=(4, 16, 28, 64)[i % 4])
        out = moe_forward_fused(ws, x, routing, shard, model, par, policy, checked=(i % 100 == 99))
        ref = moe_forward(x.double(), routing, w64, "swiglu")[_own_rows(M, W, rank)]
        assert_close(out, ref, torch.bfloat16, f"rank {rank} call {i} M={M}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_no_host_sync_inside_a_call(dist_world, variant):
    from kernels.moe import moe_forward_fused

    rank, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=W)
    ws = _workspace(model, par, 1024)
    shard = shard_weights(random_weights(model, dtype=torch.bfloat16, device="cuda"), par, rank)
    policy = POLICY.replace(layer0_comm=variant)
    x = random_tokens(1000, 512, dtype=torch.bfloat16, device="cuda")
    for i in range(3):
        moe_forward_fused(ws, x, uniform(M=1000, E=8, topk=2, seed=i).to("cuda"), shard, model, par, policy)
    torch.cuda.synchronize()
    routing = uniform(M=1000, E=8, topk=2, seed=7).to("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = moe_forward_fused(ws, x, routing, shard, model, par, policy)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    ws.check()
    assert bool(torch.isfinite(out).all())


def test_peer_that_never_signals(dist_world):
    """The last rank skips its layer1: every owner that expects its partial sums times out, and check()
    names the combine flag of that source rank; after reset() a normal call works on every rank."""
    from kernels.combine import combine_reduce
    from kernels.fused_layer0 import fused_layer0
    from kernels.fused_layer1 import fused_layer1
    from kernels.moe import stage_tokens
    from kernels.signals import FlagTimeoutError

    rank, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=W)
    ws = _workspace(model, par, 1024, max_spin=200_000)
    routing = uniform(M=1024, E=8, topk=2, seed=3).to("cuda")
    plan = make_plan(routing, model, par, HW, POLICY, ranks=[rank])
    shard = shard_weights(random_weights(model, dtype=torch.bfloat16, device="cuda"), par, rank)
    stage_tokens(ws, random_tokens(1024, 512, dtype=torch.bfloat16, device="cuda"), 1024)
    ws.barrier()
    fused_layer0(ws, plan, rank, shard.w0_ENK)
    if rank != W - 1:
        fused_layer1(ws, plan, rank, shard.w1_EKN)
    expected_W = plan.rank(rank).combine_expected_W
    combine_reduce(ws, plan, rank, expected_W)
    if int(expected_W[W - 1]) > 0:
        with pytest.raises(FlagTimeoutError, match=rf"rank {rank}: timed out waiting on combine flag\[source rank "
                                                   rf"{W - 1}"):
            ws.check()
    ws.reset()
    _check(ws, model, par, routing, POLICY, "after reset")


def test_bitwise_reproducible(dist_world):
    _, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=W)
    ws = _workspace(model, par, 1024)
    routing = uniform(M=1024, E=8, topk=2, seed=3)
    a = _check(ws, model, par, routing, POLICY, "run a")
    b = _check(ws, model, par, routing, POLICY.replace(nc_layer1=8, layer0_comm="direct"), "run b")
    assert torch.equal(a, b)


def _smoke_one_rank() -> None:
    """`torchrun --nproc-per-node=1 tests/test_fused_multigpu.py`: the SymmetricWorkspace code path
    (allocation, rendezvous, peer tables, device barrier) on a one-rank group, EP=1, every variant."""
    import torch.distributed as dist

    from kernels.moe import moe_forward_fused
    from kernels.symm import SymmetricWorkspace

    torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=4, topk=2, layers=1, activation="swiglu")
    par = ParallelConfig(ep=dist.get_world_size())
    ws = SymmetricWorkspace(model, par, 1024, dtype=torch.bfloat16)
    w = _gpu_weights(model)
    for i, variant in enumerate(VARIANTS * 2):
        routing = imbalanced(M=1000 - i, E=4, topk=2, std=0.05, seed=i).to("cuda")
        x = random_tokens(1000 - i, 512, seed=i, dtype=torch.bfloat16, device="cuda")
        out = moe_forward_fused(ws, x, routing, w, model, par, POLICY.replace(layer0_comm=variant, block_n0=64),
                                checked=True)
        ref = moe_forward(x.double(), routing, w.to(torch.float64), "swiglu")[_own_rows(1000 - i, par.world_size,
                                                                                     ws.rank)]
        assert_close(out, ref, torch.bfloat16, f"one-rank symmetric workspace, {variant}")
        print(f"rank {ws.rank}: symmetric workspace {variant} ok", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    _smoke_one_rank()
