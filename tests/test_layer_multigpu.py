"""CometMoE and its baselines on a real process group of GPUs (SymmetricWorkspace, NCCL), bf16, against
comet.reference. Run with torchrun (the `multigpu` marker skips everywhere else, tests/conftest.py):

    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
        torchrun --nproc-per-node=4 -m pytest -q -m multigpu tests/test_layer_multigpu.py    (and =2)

Every process builds the same global inputs from seeds, feeds its own m tokens, and compares its output rows
with the reference's. Covered: EP=W and EP=W/2 x TP=2; gelu and swiglu; comet, sequential and chunked; both
dispatch forms; a Mixtral block state dict sharded per rank; CUDA-graph capture and replay of the comet
system over the group (device-side barrier); no host sync inside a comet call; 100 calls with changing token
counts. Written while no multi-GPU machine was lent: not yet run.
"""

from __future__ import annotations

import math
import os

import pytest
import torch

for _k, _v in {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}.items():
    # before torch.distributed starts (multicast must stay off on shared machines: docs/GPU_FACTS.md)
    os.environ.setdefault(_k, _v)

from comet.core.config import ModelConfig, ParallelConfig  # noqa: E402
from comet.core.reference import moe_forward  # noqa: E402
from comet.core.routing import Routing  # noqa: E402
from comet.core.tolerances import assert_close  # noqa: E402
from comet.core.weights import random_tokens, random_weights  # noqa: E402

pytestmark = pytest.mark.multigpu
SYSTEMS = ("comet", "sequential", "chunked")


@pytest.fixture(scope="module")
def dist_world():
    import torch.distributed as dist

    if not dist.is_initialized():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl", device_id=torch.device("cuda", torch.cuda.current_device()))
    yield dist.get_rank(), dist.get_world_size()
    dist.barrier()


def _parallels(W):
    return [ParallelConfig(ep=W)] + ([ParallelConfig(ep=W // 2, tp=2)] if W % 2 == 0 else [])


def _layer(model, par, cap, **kw):
    from comet.layer.comet_moe import CometMoE

    layer = CometMoE(model, par, world="process-group", capacity_tokens=cap, dtype=torch.bfloat16, **kw)
    w = random_weights(model, seed=0)
    gate = torch.randn(model.experts_E, model.hidden_N, generator=torch.Generator().manual_seed(1)) / 8
    layer.load_experts(w.to(torch.bfloat16, "cuda"), gate.to("cuda", torch.bfloat16))
    return layer, w


def _check(layer, w, x_all, rank, W, what):
    """Feed this rank's rows of x_all; compare with the reference on the layer's routing of all tokens."""
    m = x_all.shape[0] // W
    with torch.no_grad():
        out = layer(x_all[rank * m:(rank + 1) * m])
        ids, gw = layer.route(x_all)
    ref = moe_forward(x_all.double(), Routing(ids, gw, layer.model.experts_E),
                      w.to(torch.bfloat16).to(device="cuda", dtype=torch.float64), layer.model.activation)
    assert_close(out, ref[rank * m:(rank + 1) * m], torch.bfloat16, f"rank {rank}: {what}")


@pytest.mark.parametrize("act", ["gelu", "swiglu"])
def test_three_systems(dist_world, act):
    rank, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation=act)
    x = random_tokens(256 * W, 512, seed=W, dtype=torch.bfloat16, device="cuda")
    for par in _parallels(W):
        layer, w = _layer(model, par, 256 * W, chunks=4)
        for system in SYSTEMS:
            for form in ("all-to-all", "all-gather"):
                layer.system, layer.policy = system, layer.policy.replace(dispatch=form)
                _check(layer, w, x, rank, W, f"EP={par.ep} TP={par.tp} {act} {system} {form}")
        layer.check()


def test_hf_mixtral_block_sharded(dist_world):
    from comet.layer.comet_moe import CometMoE

    rank, W = dist_world
    E, N, K = 8, 256, 512
    g = torch.Generator().manual_seed(0)
    sd = {"gate.weight": torch.randn(E, N, generator=g) / math.sqrt(N)}
    for e in range(E):
        sd[f"experts.{e}.w1.weight"] = torch.randn(K, N, generator=g) / math.sqrt(N)
        sd[f"experts.{e}.w3.weight"] = torch.randn(K, N, generator=g) / math.sqrt(N)
        sd[f"experts.{e}.w2.weight"] = torch.randn(N, K, generator=g) / math.sqrt(K)
    sd = {k: v.bfloat16() for k, v in sd.items()}
    from comet.core.weights import ExpertWeights

    full = ExpertWeights(torch.stack([torch.cat([sd[f"experts.{e}.w1.weight"].T, sd[f"experts.{e}.w3.weight"].T], 1)
                                      for e in range(E)]),
                         torch.stack([sd[f"experts.{e}.w2.weight"].T for e in range(E)]).contiguous())
    for par in _parallels(W):
        layer = CometMoE.from_hf_state_dict(sd, "mixtral", topk=2, parallel=par, world="process-group",
                                            capacity_tokens=128 * W)
        x = random_tokens(128 * W, N, seed=1, dtype=torch.bfloat16, device="cuda")
        _check(layer, full, x, rank, W, f"HF Mixtral block EP={par.ep} TP={par.tp}")


def test_cuda_graph_and_no_sync(dist_world):
    rank, W = dist_world
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    par = _parallels(W)[-1]
    layer, w = _layer(model, par, 512 * W)
    m = 512
    x_all = random_tokens(m * W, 512, seed=0, dtype=torch.bfloat16, device="cuda")
    x = x_all[rank * m:(rank + 1) * m].clone()
    with torch.no_grad():
        layer(x)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            layer(x)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            y = layer(x)
        for i in range(5):
            x_all = random_tokens(m * W, 512, seed=10 + i, dtype=torch.bfloat16, device="cuda")
            x.copy_(x_all[rank * m:(rank + 1) * m])
            g.replay()
            ids, gw = layer.route(x_all)
            ref = moe_forward(x_all.double(), Routing(ids, gw, 8), w.to(torch.bfloat16).to(torch.float64, "cuda"),
                              "swiglu")[rank * m:(rank + 1) * m]
            assert_close(y, ref, torch.bfloat16, f"rank {rank}: graph replay {i}")
    layer.check()


def test_100_calls_changing_tokens(dist_world):
    rank, W = dist_world
    model = ModelConfig("small", hidden_N=256, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    layer, w = _layer(model, _parallels(W)[-1], 300 * W, chunks=3)
    gen = torch.Generator().manual_seed(0)
    for i in range(100):
        m = int(torch.randint(1, 301, (1,), generator=gen))
        layer.system = SYSTEMS[i % 3]
        x = random_tokens(m * W, 256, seed=i, dtype=torch.bfloat16, device="cuda")
        _check(layer, w, x, rank, W, f"call {i} m={m} {layer.system}")
    layer.check()
