"""comet/layer/plan_graphs.py: a replayed graph of make_plan gives the tables make_plan builds, for every new
routing of the same token count; one capture per key, the least recently used dropped; CometMoE's eager call
through it is bitwise the call through make_plan and makes no host sync. CUDA only (graphs)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from test_plan_triton import assert_same

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import balanced
from comet.core.weights import random_weights
from comet.layer.comet_moe import CometMoE
from comet.layer.plan_graphs import PlanGraphs

HW = HardwareProfile.from_name("h200")


def test_plan_graphs_needs_one_graph_at_least():
    model = ModelConfig.from_name("mixtral-8x7b")
    with pytest.raises(ValueError, match="max_graphs must be >= 1"):
        PlanGraphs(model, ParallelConfig(ep=4), [0, 1, 2, 3], max_graphs=0)


def test_cpu_layer_builds_no_graphs():
    model = ModelConfig("t", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    layer = CometMoE(model, ParallelConfig(ep=2), capacity_tokens=64, dtype=torch.float32, device="cpu")
    assert layer.plan_graphs is None


def _snapshot(plan):
    """The tables as they are now, on the CPU (a later replay rewrites the graph's own)."""
    return dataclasses.replace(plan, token_owner_M=plan.token_owner_M.cpu(),
                               token_num_slots_M=plan.token_num_slots_M.cpu(), routing_error=plan.routing_error.cpu(),
                               ranks=tuple(r.to("cpu") for r in plan.ranks))


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_gpu_replay_equals_make_plan(backend):
    model, par, pol = ModelConfig.from_name("mixtral-8x7b"), ParallelConfig(ep=4, tp=2), Policy()
    ranks = [1, 6]
    graphs = PlanGraphs(model, par, ranks, max_graphs=2)
    for seed in range(3):  # the first call captures, the next two replay on new routings
        routing = balanced(4096, 8, 2, seed=seed).to("cuda")
        got = _snapshot(graphs.plan(routing, HW, pol, backend))
        assert_same(make_plan(routing, model, par, HW, pol, ranks, backend=backend), got)
    assert graphs.captures == 1 and len(graphs) == 1
    for M in (1000, 3000, 4096):  # two new token counts: the oldest key (4096) goes, then comes back
        routing = balanced(M, 8, 2, seed=M).to("cuda")
        assert_same(make_plan(routing, model, par, HW, pol, ranks, backend=backend),
                    _snapshot(graphs.plan(routing, HW, pol, backend)))
    assert graphs.captures == 4 and len(graphs) == 2


@pytest.mark.gpu
def test_gpu_layer_through_plan_graphs_is_bitwise_and_sync_free():
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation="swiglu")
    layers = [CometMoE(model, ParallelConfig(ep=2, tp=2), capacity_tokens=2048, dtype=torch.bfloat16,
                       device="cuda", plan_graphs=graphs) for graphs in (True, False)]
    w = random_weights(model, seed=0).to(torch.bfloat16, "cuda")
    gate = (torch.randn(8, 512) / 8).to("cuda", torch.bfloat16)
    for layer in layers:
        layer.load_experts(w, gate)
    assert layers[1].plan_graphs is None
    with torch.no_grad():
        for seed in range(3):
            x = torch.randn(1500, 512, generator=torch.Generator().manual_seed(seed)).to("cuda", torch.bfloat16)
            if seed == 2:  # captured on the first call: later calls replay without a host sync
                torch.cuda.synchronize()
                torch.cuda.set_sync_debug_mode("error")
            try:
                a = layers[0](x)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            assert torch.equal(a, layers[1](x)), f"call {seed}"
    assert layers[0].plan_graphs.captures == 1
    layers[0].check()
