"""The triton planner (comet/core/planner_triton.py) against the torch planner, table by table, bit for bit;
its routing check; its launches. On the CPU the kernels run under Triton's interpreter (tests/conftest.py),
so the unmarked sizes are small; `gpu` tests repeat the comparison at real sizes on CUDA."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import comet.core.planner_triton as planner_triton
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.plan import plan_bounds
from comet.core.planner import _plan_torch, make_plan
from comet.core.policy import ORDERS, Policy
from comet.core.routing import BAD_WEIGHT, OUT_OF_RANGE, REPEATED, Routing, balanced, routing_error

HW = HardwareProfile.from_name("h200")
# inf - inf in the kernels' finiteness test warns under the interpreter (numpy)
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered")



def _routing(M, E, topk, seed, kind, ep=1):
    gen = torch.Generator().manual_seed(seed)
    if kind == "one-expert-set":  # every token on experts 0..topk-1: most experts idle
        ids = torch.arange(topk).repeat(M, 1)
    elif kind == "one-rank":  # every token on the experts of one EP group (when they are enough)
        E_loc = E // ep
        lo = (seed % ep) * E_loc if topk <= E_loc else 0
        span = E_loc if topk <= E_loc else E
        ids = lo + torch.rand(M, span, generator=gen).argsort(1)[:, :topk]
    elif kind == "skewed":  # experts drawn from a steep distribution: some get none
        p = torch.tensor([2.0 ** -min(i, 60) for i in range(E)])
        ids = torch.stack([torch.multinomial(p, topk, generator=gen) for _ in range(M)])
    else:
        ids = torch.rand(M, E, generator=gen).argsort(1)[:, :topk]
    w = torch.softmax(torch.randn(M, topk, generator=gen), -1)
    return Routing(ids.long().contiguous(), w.float(), E)


def assert_same(a, b):
    """Every table of two plans: same dtype, shape and values (padding included)."""
    for name in ("token_owner_M", "token_num_slots_M", "routing_error"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and torch.equal(x.cpu(), y.cpu()), name
    assert [r.rank for r in a.ranks] == [r.rank for r in b.ranks]
    for ra, rb in zip(a.ranks, b.ranks, strict=True):
        ta, tb = ra.tensors(), rb.tensors()
        assert ta.keys() == tb.keys()
        for name, x in ta.items():
            y = tb[name]
            assert x.dtype == y.dtype and x.shape == y.shape, (ra.rank, name, x.dtype, y.dtype, x.shape, y.shape)
            assert torch.equal(x.cpu(), y.cpu()), f"rank {ra.rank} {name}:\n{x}\n{y}"


def compare(routing, model, par, pol, ranks=None):
    a = make_plan(routing, model, par, HW, pol, ranks, backend="torch")
    b = make_plan(routing, model, par, HW, pol, ranks, backend="triton")
    assert_same(a, b)
    return b


@st.composite
def cases(draw, max_M=80):
    E = draw(st.sampled_from([1, 2, 4, 8, 16, 64, 256]))
    topk = draw(st.integers(1, min(E, 8)))
    ep = draw(st.sampled_from([d for d in (1, 2, 4, 8, 16, 32, 64) if E % d == 0]))
    tp = draw(st.sampled_from([1, 2] if ep <= 32 else [1]))
    W = ep * tp
    M = draw(st.integers(1, max_M))
    model = ModelConfig("t", hidden_N=draw(st.sampled_from([16, 24])), ffn_K=draw(st.sampled_from([8, 20])),
                        experts_E=E, topk=topk, layers=1, activation=draw(st.sampled_from(["gelu", "swiglu"])))
    policy = Policy(order=draw(st.sampled_from(ORDERS)), dispatch=draw(st.sampled_from(["all-to-all", "all-gather"])),
                    block_m=draw(st.sampled_from([1, 4, 8, 16])), block_n0=draw(st.sampled_from([4, 8])),
                    block_n1=draw(st.sampled_from([4, 16])), group_m=draw(st.sampled_from([1, 2, 4])),
                    comm_rows=draw(st.sampled_from([1, 3, 16])), l1_comm_rows=draw(st.sampled_from([0, 2, 7])))
    kind = draw(st.sampled_from(["random", "one-expert-set", "skewed", "one-rank"]))
    routing = _routing(M, E, topk, draw(st.integers(0, 10_000)), kind, ep)
    ranks = draw(st.lists(st.integers(0, W - 1), min_size=1, max_size=2, unique=True))
    return routing, model, ParallelConfig(ep=ep, tp=tp), policy, ranks


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_backends_agree(case):
    compare(*case)


@pytest.mark.slow
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_M=300))
def test_backends_agree_many(case):
    compare(*case)


def test_layer1_chunks_have_their_own_size():
    """Policy.l1_comm_rows: layer1's send chunks hold at most that many sends, layer0's chunks comm_rows rows,
    in both backends; 0 is comm_rows for both."""
    model = ModelConfig("t", hidden_N=32, ffn_K=48, experts_E=16, topk=3, layers=1)
    routing = _routing(77, 16, 3, seed=4, kind="skewed")
    par = ParallelConfig(ep=4)
    for l1_rows, expect in ((0, 5), (11, 11)):
        plan = compare(routing, model, par, Policy(block_m=4, block_n0=8, block_n1=16, comm_rows=5,
                                                   l1_comm_rows=l1_rows))
        assert plan.policy.l1_chunk_rows == expect
        l0 = torch.cat([(rp.l0_chunk_end_C - rp.l0_chunk_start_C)[: int(rp.num_l0_chunks)] for rp in plan.ranks])
        l1 = torch.cat([(rp.l1_chunk_end_C - rp.l1_chunk_start_C)[: int(rp.num_l1_chunks)] for rp in plan.ranks])
        assert l0.numel() and l1.numel()
        assert int(l0.max()) <= 5 and int(l1.max()) == expect, (l0, l1)  # the larger chunks used where sends allow
    with pytest.raises(ValueError, match="l1_comm_rows must be >= 0"):
        Policy(l1_comm_rows=-1)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("dispatch", ["all-to-all", "all-gather"])
def test_orders_and_dispatches_all_ranks(order, dispatch):
    """EP x TP, M not divisible by W, a few empty experts (every rank in test_bad_routing_is_recorded...)."""
    model = ModelConfig("t", hidden_N=32, ffn_K=48, experts_E=16, topk=3, layers=1)
    routing = _routing(77, 16, 3, seed=4, kind="skewed")
    compare(routing, model, ParallelConfig(ep=4, tp=2), Policy(order=order, dispatch=dispatch, block_m=4,
                                                                block_n0=8, block_n1=16, group_m=2, comm_rows=5),
            ranks=[1, 6])


@pytest.mark.parametrize("M", [1, 5, 63])
def test_wide_world_few_tokens(M):
    """W = 64 > M: most ranks own no token; E = 256, topk = 8."""
    model = ModelConfig("t", hidden_N=16, ffn_K=16, experts_E=256, topk=8, layers=1)
    compare(_routing(M, 256, 8, seed=M, kind="random"), model, ParallelConfig(ep=64), Policy(block_m=16),
            ranks=[0, M % 64, 63])


def test_all_tokens_on_one_rank():
    model = ModelConfig("t", hidden_N=16, ffn_K=32, experts_E=32, topk=4, layers=1)
    ids = torch.rand(90, 8, generator=torch.Generator().manual_seed(0)).argsort(1)[:, :4] + 16  # EP group 2
    routing = Routing(ids.contiguous(), torch.full((90, 4), 0.25), 32)
    compare(routing, model, ParallelConfig(ep=4), Policy(block_m=8, block_n0=16, block_n1=16, comm_rows=7))


def test_auto_is_torch_on_the_cpu(monkeypatch):
    launches = []
    monkeypatch.setattr(planner_triton, "_launch", lambda *a, **k: launches.append(a[0]))
    model = ModelConfig("t", hidden_N=16, ffn_K=32, experts_E=8, topk=2, layers=1)
    plan = make_plan(balanced(32, 8, 2), model, ParallelConfig(ep=2), HW, Policy(block_m=16))
    assert not launches and plan.routing_error.tolist() == [0, 0]
    plan.check()
    with pytest.raises(ValueError, match="unknown backend 'cuda'"):
        make_plan(balanced(32, 8, 2), model, ParallelConfig(ep=2), HW, backend="cuda")


def test_launches_per_rank(monkeypatch):
    """Six launches per rank, whatever E and W: nothing else runs (no torch op in the triton path)."""
    counted = []
    real = planner_triton._launch
    monkeypatch.setattr(planner_triton, "_launch", lambda k, *a, **m: (counted.append(k), real(k, *a, **m)))
    for E, ep, ranks in ((8, 2, [0, 1]), (256, 64, [3, 40, 63])):
        counted.clear()
        model = ModelConfig("t", hidden_N=16, ffn_K=16, experts_E=E, topk=2, layers=1)
        make_plan(balanced(64, E, 2), model, ParallelConfig(ep=ep), HW, Policy(block_m=16), ranks, backend="triton")
        assert len(counted) == 6 * len(ranks) <= 8 * len(ranks)


# ---------------------------------------------------------------------------------------------- bad routings
def _bad(kind):
    r = _routing(40, 8, 3, seed=1, kind="random")
    ids, w = r.topk_ids_MJ.clone(), r.topk_weights_MJ.clone()
    first = 13
    if kind == "id too large":
        ids[first, 1] = 8
    elif kind == "id negative":
        ids[first, 2] = -3
    elif kind == "repeated":
        ids[first, 2] = ids[first, 0]
    elif kind == "nan weight":
        w[first, 0] = float("nan")
    elif kind == "negative weight":
        w[first, 1] = -0.5
    elif kind == "inf weight":
        w[first, 2] = float("inf")
    ids[30, 0], w[35, 1] = 100, float("-inf")  # later bad tokens: the first one is reported
    bits = {"id too large": OUT_OF_RANGE, "id negative": OUT_OF_RANGE, "repeated": REPEATED}.get(kind, BAD_WEIGHT)
    return Routing(ids, w, 8), first, bits


BAD = ["id too large", "id negative", "repeated", "nan weight", "negative weight", "inf weight"]
MODEL8 = ModelConfig("t", hidden_N=16, ffn_K=16, experts_E=8, topk=3, layers=1)
PAR8, POL8 = ParallelConfig(ep=2, tp=2), Policy(block_m=4, block_n0=8, block_n1=8, comm_rows=3)


@pytest.mark.parametrize("kind", BAD)
def test_bad_routing_raises_on_the_cpu(kind):
    routing, first, _ = _bad(kind)
    with pytest.raises(ValueError, match=f"bad routing at token {first} .*distinct expert ids in \\[0, 8\\)"):
        make_plan(routing, MODEL8, PAR8, HW, POL8)
    with pytest.raises(ValueError, match=f"token {first}"):
        routing.check()


@pytest.mark.parametrize("kind", BAD)
def test_bad_routing_is_recorded_and_dropped(kind, monkeypatch):
    routing, first, bits = _bad(kind)
    assert routing_error(routing.topk_ids_MJ, routing.topk_weights_MJ, 8).tolist() == [bits, first]
    # every table inside a larger buffer filled with a sentinel: nothing outside may change
    held, margin, sentinel = [], 64, -777

    def fenced(n, dtype, device):
        buf = torch.full((n + 2 * margin,), sentinel, dtype=dtype, device=device)
        held.append(buf)
        return buf[margin:margin + n]

    monkeypatch.setattr(planner_triton, "_workspace", fenced)
    plan = make_plan(routing, MODEL8, PAR8, HW, POL8, backend="triton")
    for buf in held:
        assert bool((buf[:margin] == sentinel).all()) and bool((buf[-margin:] == sentinel).all())
    assert plan.routing_error.tolist() == [bits, first]
    with pytest.raises(ValueError, match=f"bad routing at token {first} .*dropped the bad entries"):
        plan.check()
    # the tables are the torch planner's with the bad entries dropped
    owner, slots, error, ranks = _plan_torch(routing, MODEL8, PAR8, POL8, list(range(4)),
                                             plan_bounds(40, MODEL8, PAR8, POL8))
    assert torch.equal(error, plan.routing_error)
    kept = int(torch.stack([rp.num_rows for rp in ranks]).sum())
    assert kept == 2 * (40 * 3 - 3)  # TP=2 shards, three bad entries dropped
    assert_same(plan, dataclasses.replace(plan, token_owner_M=owner, token_num_slots_M=slots, ranks=ranks))


# ---------------------------------------------------------------------------------------------- GPU
GPU_CASES = [("mixtral-8x7b", 8, 1, 16384), ("qwen2-moe-2.7b", 4, 2, 8192), ("phi-3.5-moe", 8, 1, 16384)]


def _gpu_case(name, ep, tp, M, seed=0):
    model = ModelConfig.from_name(name)
    return balanced(M, model.experts_E, model.topk, seed=seed).to("cuda"), model, ParallelConfig(ep=ep, tp=tp)


@pytest.mark.gpu
@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", GPU_CASES)
def test_gpu_backends_agree(case, order):
    routing, model, par = _gpu_case(*case)
    for dispatch in ("all-to-all", "all-gather"):
        compare(routing, model, par, Policy(order=order, dispatch=dispatch))


@pytest.mark.gpu
# few examples: each new shape compiles the six kernels again (their block sizes are compile-time constants)
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases(max_M=3000))
def test_gpu_backends_agree_random(case):
    routing, model, par, policy, ranks = case
    compare(routing.to("cuda"), model, par, policy, ranks)


@pytest.mark.gpu
def test_gpu_no_sync_graph_and_launches():
    routing, model, par = _gpu_case("mixtral-8x7b", 8, 1, 16384)
    ref = make_plan(routing, model, par, HW, ranks=[3], backend="torch")
    make_plan(routing, model, par, HW, ranks=[3])  # compile
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        plan = make_plan(routing, model, par, HW, ranks=[3])  # auto: triton on CUDA
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert_same(ref, plan)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = make_plan(routing, model, par, HW, ranks=[3])
    graph.replay()
    torch.cuda.synchronize()
    assert_same(ref, captured)
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        make_plan(routing, model, par, HW, ranks=[0, 5])
        torch.cuda.synchronize()
    kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) <= 8 * 2, [e.name for e in kernels]


@pytest.mark.gpu
@pytest.mark.parametrize("kind", BAD)
def test_gpu_bad_routing(kind):
    routing, first, bits = _bad(kind)
    routing = routing.to("cuda")
    plan = make_plan(routing, MODEL8, PAR8, HW, POL8)
    torch.cuda.synchronize()
    assert plan.routing_error.tolist() == [bits, first]
    with pytest.raises(ValueError, match=f"token {first}"):
        plan.check()
    assert_same(make_plan(routing, MODEL8, PAR8, HW, POL8, backend="torch"), plan)
