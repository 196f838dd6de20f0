"""comet/core/ownership.py is the one owner of ownership, chunks and token needs: every consumer agrees with it
(the planner, the reference, the GPU baselines, the simulator, the kernels and the kernel timelines)."""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl
from helpers.sim_cases import toy_hardware
from hypothesis import given, settings
from hypothesis import strategies as st

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.events import CATEGORY, KINDS, K
from comet.core.ownership import (
    chunk_range,
    owned_range,
    part_of,
    split_range,
    token_chunk,
    token_groups,
    token_owner,
)
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.reference import dispatch
from comet.core.routing import uniform
from comet.layer.collectives import EmulatedCollectives
from comet.layer.gpu_baselines import prepare
from kernels.fused_layer1 import first_owned_token
from kernels.timeline import CATEGORIES, KIND_NAMES
from sim import workload

SMALL = Policy(block_m=16, block_n0=16, block_n1=16, comm_rows=8)


@given(n=st.integers(0, 300), parts=st.integers(1, 40))
def test_split_rule_covers_every_item_once(n, parts):
    bounds = [split_range(n, parts, p) for p in range(parts)]
    assert bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:], strict=False))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1
    if n:
        i = torch.arange(n)
        for p, (lo, hi) in enumerate(bounds):
            assert bool((part_of(i[lo:hi], n, parts) == p).all())


def test_five_rows_in_two_chunks():
    """The case where the GPU baseline and the simulator once disagreed ([2, 3] against [3, 2])."""
    assert [chunk_range(5, 2, c) for c in range(2)] == [(0, 3), (3, 5)]


@given(M=st.integers(1, 200), W=st.integers(1, 9))
def test_owner_and_owned_range_agree(M, W):
    owner = token_owner(M, W)
    for s in range(W):
        lo, hi = owned_range(M, W, s)
        assert bool((owner[lo:hi] == s).all()) and int((owner == s).sum()) == hi - lo


@settings(max_examples=25, deadline=None)
@given(M=st.integers(4, 120), W=st.sampled_from([1, 2, 4]), chunks=st.integers(1, 6), seed=st.integers(0, 99))
def test_gpu_baseline_and_simulator_run_the_same_chunks(M, W, chunks, seed):
    model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    par = ParallelConfig(ep=W)
    routing = uniform(M, 4, 2, seed=seed)
    plan = make_plan(routing, model, par, toy_hardware(sms=8), SMALL)
    sim_chunk_M = workload.token_chunk(plan, chunks)
    metas = prepare(routing, model, par, EmulatedCollectives(W, "cpu").ranks, chunks=chunks, policy=SMALL,
                    hardware=toy_hardware(sms=8))
    gpu_chunk_M = torch.full((M,), -1)
    for meta in metas:
        c = next(c for c in range(chunks) if all(
            meta.rows[s] == chunk_range(owned_range(M, W, s)[1] - owned_range(M, W, s)[0], chunks, c)
            for s in range(W)))
        for s, (a, b) in meta.rows.items():
            lo = owned_range(M, W, s)[0]
            gpu_chunk_M[lo + a:lo + b] = c
    assert gpu_chunk_M.tolist() == sim_chunk_M.tolist() == token_chunk(M, W, chunks).tolist()


def test_planner_and_reference_need_the_same_tokens():
    model = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    routing = uniform(50, 8, 2, seed=3)
    plan = make_plan(routing, model, par, toy_hardware(sms=8), SMALL)
    _, meta = dispatch(torch.randn(50, 32), routing, model, par)
    groups = token_groups(routing.topk_ids_MJ, 2, 4)
    owner = token_owner(50, 4)
    for r in range(4):
        rp = plan.rank(r)
        need = groups[:, r] & (owner != r)
        assert sorted(rp.recv_token_U[: int(rp.num_recv)].tolist()) == need.nonzero().flatten().tolist()
        assert sorted(meta.ranks[r].token_U.tolist()) == groups[:, r].nonzero().flatten().tolist()
    # the combine's expected counts: what every owner receives is what every rank sends it
    sent = torch.zeros(4, 4, dtype=torch.int64)
    for r in range(4):
        rp = plan.rank(r)
        n = int(rp.num_sends)
        sent[:, r] += torch.bincount(rp.send_dest_S[:n], minlength=4)
    assert torch.equal(torch.stack([plan.rank(o).combine_expected_W for o in range(4)]), sent)


@triton.jit
def _first_tokens_kernel(out_ptr, M, W):
    s = tl.program_id(0)
    tl.store(out_ptr + s, first_owned_token(s, M, W))


@pytest.mark.parametrize("M,W", [(1, 1), (7, 3), (100, 8), (5, 8)])
def test_kernels_own_tokens_by_the_same_rule(M, W):
    out = torch.zeros(W, dtype=torch.int64)
    _first_tokens_kernel[(W,)](out, M, W)
    assert out.tolist() == [owned_range(M, W, s)[0] for s in range(W)]


def test_kernel_timelines_speak_the_events_vocabulary():
    assert set(KIND_NAMES.values()) <= {name for name, _ in KINDS}
    assert all(CATEGORIES[k] == CATEGORY[K[k]] for k in CATEGORIES)
