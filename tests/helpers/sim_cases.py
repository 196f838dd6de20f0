"""Small, hand-checkable cases for the simulator's tests and examples.

`toy_hardware()` has round figures: 4 SMs, 1 TFLOP/s per SM at efficiency 0.25 for a 1 x 128 x 128
tile (0.131072 us), 1 GB/s links (1000 bytes/us), 0.5 GB/s per communication block, 1 us link latency,
4 GB/s of memory (1000 bytes/us per SM), 1 us launches, 3 us collectives.
`toy_plan()` is two ranks, two experts, four tokens, one row per tile: see tests/test_sim_exact.py for
its expected traces. `random_case(seed)` draws a small random case for property tests.
"""

from __future__ import annotations

import random

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing, balanced, imbalanced, uniform

_NUMERIC = ("sms", "peak_tflops", "gemm_efficiency", "gemm_k_half", "tile_area_half", "hbm_gbps", "link_gbps",
            "link_latency_us", "per_block_link_gbps", "nic_gbps", "nic_latency_us", "ranks_per_node",
            "launch_overhead_us", "collective_overhead_us")


def toy_hardware(**changes) -> HardwareProfile:
    """Round figures for hand-checked traces (every source: "test")."""
    figures = dict(sms=4, peak_tflops=4.0, gemm_efficiency=1.0, gemm_k_half=128.0, tile_area_half=128.0,
                   hbm_gbps=4.0, link_gbps=1.0, link_latency_us=1.0, per_block_link_gbps=0.5, nic_gbps=0.25,
                   nic_latency_us=4.0, ranks_per_node=8, launch_overhead_us=1.0, collective_overhead_us=3.0)
    figures.update(changes)
    return HardwareProfile(name="toy", link="nvlink", sources={f: "test" for f in _NUMERIC}, **figures)


def toy_plan(hw: HardwareProfile | None = None, **policy) -> Plan:
    """EP=2, experts {0} on rank 0 and {1} on rank 1, N = K = 128, topk 1, M = 4: rank 0 owns tokens 0, 1
    and rank 1 tokens 2, 3; tokens 0, 2 go to expert 0 and 1, 3 to expert 1. So each rank has one local
    and one remote row, pulls one 256-byte row and pushes one 256-byte partial sum."""
    model = ModelConfig("toy", hidden_N=128, ffn_K=128, experts_E=2, topk=1, layers=1)
    routing = Routing(torch.tensor([[0], [1], [0], [1]]), torch.ones(4, 1), 2)
    pol = Policy(**{**dict(block_m=1, block_n0=128, block_n1=128, comm_rows=1, nc_layer0=1, nc_layer1=1),
                    **policy})
    return make_plan(routing, model, ParallelConfig(ep=2), hw or toy_hardware(), pol)


def random_case(seed: int) -> Plan:
    """A small random case: shapes, parallelism (up to 4 ranks, sometimes over 2 nodes), routing and
    policy drawn from `seed`, on a 16-SM slice of the h800 profile (so GEMMs run in several waves)."""
    rng = random.Random(seed)
    E = rng.choice([2, 4, 8])
    topk = rng.randint(1, min(E, 3))
    ep = rng.choice([d for d in (1, 2, 4) if E % d == 0])
    tp = rng.choice([1, 2]) if ep <= 2 else 1
    model = ModelConfig("rand", hidden_N=rng.choice([256, 512]), ffn_K=rng.choice([256, 384]), experts_E=E,
                        topk=topk, layers=1, activation=rng.choice(["gelu", "swiglu"]))
    M = rng.randint(8, 600)
    kind = rng.choice(["balanced", "uniform", "imbalanced"])
    r_seed = rng.randint(0, 10_000)
    if kind == "balanced":
        routing = balanced(M, E, topk, r_seed)
    elif kind == "uniform":
        routing = uniform(M, E, topk, r_seed)
    else:
        routing = imbalanced(M, E, topk, std=0.05, seed=r_seed)
    h800 = HardwareProfile.from_name("h800")
    hw = h800.replace(sms=16, peak_tflops=h800.peak_tflops * 16 / 132, hbm_gbps=h800.hbm_gbps * 16 / 132)
    policy = Policy(order=rng.choice(["comet", "arrival-order", "expert-major"]),
                    dispatch=rng.choice(["all-to-all", "all-gather"]),
                    layer0_comm=rng.choice(["blocks", "blocks", "copy-engine"]),
                    nc_layer0=rng.randint(1, 6), nc_layer1=rng.randint(1, 6),
                    block_m=rng.choice([16, 32, 64]), block_n0=rng.choice([64, 128]),
                    block_n1=rng.choice([64, 128]), comm_rows=rng.choice([8, 32]))
    hw = hw.replace(ranks_per_node=rng.choice([8, 8, 2]))  # drawn last, as always: the same cases per seed
    par = ParallelConfig(ep=ep, tp=tp)
    return make_plan(routing, model, par, hw, policy)
