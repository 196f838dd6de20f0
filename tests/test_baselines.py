"""The baselines and CometMoE on a real process group: two CPU processes joined by gloo (torch.distributed), so
DistCollectives' all-to-all / all-gather / reduce-scatter, the routing all-gather and the per-rank token
ownership run for real (the GEMMs under Triton's interpreter, float32, also on a GPU machine). Each rank
compares its own rows with comet.core.reference. The fused kernels need CUDA symmetric memory; on a group they
are tested by tests/test_layer_multigpu.py (torchrun, 2 and 4 GPUs).
"""

from __future__ import annotations

import os
import socket

import pytest
import torch

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.reference import moe_forward
from comet.core.routing import Routing
from comet.core.tolerances import assert_close
from comet.core.weights import random_tokens, random_weights
from comet.layer.collectives import DistCollectives
from comet.layer.comet_moe import CPU_POLICY, CometMoE

W, M = 2, 36
CASES = [  # (ep, tp, activation, system, dispatch form, chunks)
    (2, 1, "gelu", "sequential", "all-to-all", 1),
    (2, 1, "swiglu", "chunked", "all-to-all", 3),
    (1, 2, "swiglu", "sequential", "all-gather", 1),
    (1, 2, "gelu", "chunked", "all-to-all", 2),
    (2, 1, "swiglu", "chunked", "all-gather", 4),
]


def _worker(rank: int, port: int) -> None:
    # CPU tensors even where CUDA exists: Triton's interpreter (the kernels are imported after this line)
    os.environ["TRITON_INTERPRET"] = "1"
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=W)
    try:
        coll = DistCollectives()  # the routing's one all-gather: ids and float32 weights bit for bit
        weights = [torch.tensor([[0.25, float("nan")], [-0.0, 1e-30], [3.5, float("inf")]]) * (r + 1)
                   for r in range(W)]
        ids, w = coll.gather_routing(torch.arange(6).reshape(3, 2) + 10 * rank, weights[rank])
        assert torch.equal(ids, torch.cat([torch.arange(6).reshape(3, 2) + 10 * r for r in range(W)]))
        assert w.dtype == torch.float32
        assert torch.equal(w.view(torch.int32), torch.cat(weights).view(torch.int32))
        m = M // W
        for ep, tp, act, system, form, chunks in CASES:
            model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1, activation=act)
            layer = CometMoE(model, ParallelConfig(ep=ep, tp=tp), world="process-group", capacity_tokens=M,
                             dtype=torch.float32, device="cpu", system=system, chunks=chunks,
                             policy=CPU_POLICY.replace(dispatch=form))
            w = random_weights(model, seed=ep + tp)
            gate = torch.randn(4, 32, generator=torch.Generator().manual_seed(1)) / 4
            layer.load_experts(w, gate)
            assert layer.workspace is None and layer.ranks == (rank,)
            x = random_tokens(M, 32, seed=3)
            with torch.no_grad():
                out = layer(x[rank * m:(rank + 1) * m])
            ids, gw = layer.route(x)
            ref = moe_forward(x.double(), Routing(ids, gw, 4), w.to(torch.float64), act)[rank * m:(rank + 1) * m]
            assert_close(out, ref, torch.float32, f"rank {rank}: EP={ep} TP={tp} {act} {system} {form} C={chunks}")
        with pytest.raises(ValueError, match="system 'comet' on a process group needs CUDA"):
            CometMoE(model, ParallelConfig(ep=2), world="process-group", capacity_tokens=M, dtype=torch.float32,
                     device="cpu")
        with pytest.raises(ValueError, match=r"process group has 2 ranks but ep\*tp = 2\*2 = 4"):
            CometMoE(model, ParallelConfig(ep=2, tp=2), world="process-group", capacity_tokens=M,
                     dtype=torch.float32, device="cpu", system="sequential")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gloo_group():
    torch.multiprocessing.spawn(_worker, args=(_free_port(),), nprocs=W, join=True)
