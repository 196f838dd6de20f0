"""Invariants of the planner over random routings (hypothesis), and its errors."""

from __future__ import annotations

import dataclasses
from collections import Counter

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import token_owner
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import ORDERS, Policy
from comet.core.routing import Routing, balanced

HW = HardwareProfile.from_name("h800")


def _routing_from_seed(M, E, topk, seed, kind):
    gen = torch.Generator().manual_seed(seed)
    if kind == "one-expert-set":  # every token on experts 0..topk-1: most experts idle
        ids = torch.arange(topk).repeat(M, 1)
    elif kind == "skewed":  # experts drawn from a steep distribution: some get none
        p = torch.tensor([2.0 ** -i for i in range(E)])
        ids = torch.stack([torch.multinomial(p, topk, generator=gen) for _ in range(M)])
    else:
        ids = torch.rand(M, E, generator=gen).argsort(1)[:, :topk]
    w = torch.softmax(torch.randn(M, topk, generator=gen), -1)
    return Routing(ids.long().contiguous(), w.float(), E)


@st.composite
def cases(draw):
    E = draw(st.sampled_from([1, 2, 4, 8, 16]))
    topk = draw(st.integers(1, min(E, 4)))
    ep = draw(st.sampled_from([d for d in (1, 2, 4, 8) if E % d == 0]))
    tp = draw(st.sampled_from([1, 2] if ep <= 4 else [1]))
    M = draw(st.integers(1, 120))
    act = draw(st.sampled_from(["gelu", "swiglu"]))
    model = ModelConfig("t", hidden_N=draw(st.sampled_from([16, 24])), ffn_K=draw(st.sampled_from([8, 20])),
                        experts_E=E, topk=topk, layers=1, activation=act)
    policy = Policy(order=draw(st.sampled_from(ORDERS)), dispatch=draw(st.sampled_from(["all-to-all", "all-gather"])),
                    block_m=draw(st.sampled_from([1, 4, 8])), block_n0=draw(st.sampled_from([4, 8])),
                    block_n1=draw(st.sampled_from([4, 16])), group_m=draw(st.sampled_from([1, 2, 4])),
                    comm_rows=draw(st.sampled_from([1, 3, 16])))
    kind = draw(st.sampled_from(["random", "one-expert-set", "skewed"]))
    routing = _routing_from_seed(M, E, topk, draw(st.integers(0, 10_000)), kind)
    return routing, model, ParallelConfig(ep=ep, tp=tp), policy


def check_plan(plan: Plan, routing: Routing) -> None:
    par, pol = plan.parallel, plan.policy
    M, topk, W = routing.num_tokens, routing.topk, par.world_size
    E_loc = plan.experts_per_rank
    ids = routing.topk_ids_MJ
    owner = token_owner(M, W)
    C0, C1 = plan.l0_col_blocks, plan.l1_col_blocks
    pairs_by_tp = {t: Counter() for t in range(par.tp)}
    contributions = Counter()  # (token, tp_rank) -> rows reduced across all ranks
    slots_by_token = {}
    for rp in plan.ranks:
        t = {k: v.tolist() for k, v in rp.trimmed().items()}
        R = int(rp.num_rows)
        # --- shared rows: this rank's experts, expert-major, local owners first within an expert
        for i in range(R):
            tok, k = t["row_token_R"][i], t["row_slot_R"][i]
            e = int(ids[tok, k])
            assert e // E_loc == rp.ep_rank, f"rank {rp.rank} row {i} holds expert {e} of another rank"
            assert t["row_src_R"][i] == int(owner[tok])
            assert abs(t["row_weight_R"][i] - float(routing.topk_weights_MJ[tok, k])) < 1e-6
            pairs_by_tp[rp.tp_rank][(tok, k)] += 1
        off = t["expert_offsets_E1"]
        for e in range(E_loc):
            pos = [(t["row_src_R"][i] - rp.rank) % W for i in range(off[e], off[e + 1])]
            assert pos == sorted(pos), f"rank {rp.rank} expert {e}: rows not in arrival order"
            assert all(int(ids[t["row_token_R"][i], t["row_slot_R"][i]]) - rp.ep_rank * E_loc == e
                       for i in range(off[e], off[e + 1]))
        # --- tiles cover every (row, column block) once, within one expert; masks are the rows' owners
        for layer, C in (("l0", C0), ("l1", C1)):
            cover = Counter()
            for e, s, end, c in zip(t[f"{layer}_tile_expert_T"], t[f"{layer}_tile_row_start_T"],
                                    t[f"{layer}_tile_row_end_T"], t[f"{layer}_tile_col_T"], strict=True):
                assert off[e] <= s < end <= off[e + 1] and end - s <= pol.block_m and 0 <= c < C
                for i in range(s, end):
                    cover[(i, c)] += 1
            assert cover == Counter({(i, c): 1 for i in range(R) for c in range(C)}), f"{layer} coverage"
        for s, end, mask in zip(t["l0_tile_row_start_T"], t["l0_tile_row_end_T"], t["l0_tile_src_mask_T"],
                                strict=True):
            assert mask == sum(1 << w for w in set(t["row_src_R"][s:end]))
        # --- layer1 tiles are column-block-major; each column block has l1_tiles_per_col tiles
        cols = t["l1_tile_col_T"]
        assert cols == sorted(cols)
        assert all(v == int(rp.l1_tiles_per_col) for v in Counter(cols).values())
        # --- comet order: within an expert, no tile needing remote rows before a local-only one
        if pol.order == "comet":
            seen_remote = set()
            for e, mask in zip(t["l0_tile_expert_T"], t["l0_tile_src_mask_T"], strict=True):
                local_only = mask == (1 << rp.rank)
                assert not (local_only and e in seen_remote), f"rank {rp.rank}: remote tile before local, e={e}"
                if not local_only:
                    seen_remote.add(e)
        # --- layer0 communication: exactly the tokens needed, once, in chunks of one source
        need = {tok for tok in range(M) if int(owner[tok]) != rp.rank and
                (pol.dispatch == "all-gather" or bool(((ids[tok] // E_loc) == rp.ep_rank).any()))}
        recv = t["recv_token_U"]
        assert sorted(recv) == sorted(need) and len(recv) == len(need)
        got = []
        for src, s, end in zip(t["l0_chunk_src_C"], t["l0_chunk_start_C"], t["l0_chunk_end_C"], strict=True):
            assert 0 < end - s <= pol.comm_rows
            assert all(int(owner[tok]) == src for tok in recv[s:end]), "chunk spans two sources"
            got.extend(range(s, end))
        assert got == list(range(len(recv)))
        assert t["l0_chunks_per_src_W"] == [t["l0_chunk_src_C"].count(s) for s in range(W)]
        # --- layer1 sends: each of this rank's rows reduced once, into its token's owner, distinct slots
        rows_seen = []
        for tok, dest, slot, s, end in zip(t["send_token_S"], t["send_dest_S"], t["send_slot_S"],
                                           t["send_row_start_S"], t["send_row_end_S"], strict=True):
            rows = t["rows_by_send_R"][s:end]
            assert rows and all(t["row_token_R"][i] == tok for i in rows)
            assert dest == int(owner[tok])
            assert 0 <= slot < int(plan.token_num_slots_M[tok])
            assert slot not in slots_by_token.setdefault(tok, set()), f"token {tok}: slot {slot} used twice"
            slots_by_token[tok].add(slot)
            rows_seen.extend(rows)
            for i in rows:
                contributions[(tok, rp.tp_rank, t["row_slot_R"][i])] += 1
        assert sorted(rows_seen) == list(range(R))
        got = []
        for s, end in zip(t["l1_chunk_start_C"], t["l1_chunk_end_C"], strict=True):
            assert 0 < end - s <= pol.comm_rows
            assert len(set(t["send_dest_S"][s:end])) == 1, "a send chunk spans two destinations"
            got.extend(range(s, end))
        assert got == list(range(len(t["send_token_S"])))
    # --- across ranks: every (token, slot) pair in layer0 once per TP shard; layer1 reduces each once
    everything = Counter({(tok, k): 1 for tok in range(M) for k in range(topk)})
    for tp_rank in range(par.tp):
        assert pairs_by_tp[tp_rank] == everything, f"layer0 pairs of TP shard {tp_rank}"
        assert Counter({(tok, k): n for (tok, tr, k), n in contributions.items() if tr == tp_rank}) == everything
    for tok in range(M):
        assert len(slots_by_token.get(tok, ())) == int(plan.token_num_slots_M[tok])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cases())
def test_plan_invariants(case):
    routing, model, par, policy = case
    check_plan(make_plan(routing, model, par, HW, policy), routing)


@pytest.mark.parametrize("order", ORDERS)
def test_paper_shape_plan(order):
    model = ModelConfig.from_name("phi-3.5-moe")
    routing = balanced(1024, model.experts_E, model.topk, seed=3)
    plan = make_plan(routing, model, ParallelConfig(ep=4, tp=2), HW, Policy(order=order))
    check_plan(plan, routing)


def test_orders_differ_only_in_order():
    model = ModelConfig.from_name("mixtral-8x7b", ffn_K=512)
    routing = balanced(512, 8, 2, seed=1)
    plans = {o: make_plan(routing, model, ParallelConfig(ep=4), HW, Policy(order=o, block_m=32)) for o in ORDERS}

    def key(rp):
        t = rp.trimmed()
        return sorted(zip(t["l0_tile_row_start_T"].tolist(), t["l0_tile_col_T"].tolist(), strict=True))

    for r in range(4):
        tiles = {o: key(p.rank(r)) for o, p in plans.items()}
        assert tiles["comet"] == tiles["expert-major"] == tiles["arrival-order"]
    # comet puts every local-only tile first; expert-major does not (expert 0's remote rows come early)
    first = plans["comet"].rank(0).trimmed()["l0_tile_src_mask_T"].tolist()
    n_local = sum(m == 1 for m in first)
    assert n_local > 0 and all(m == 1 for m in first[:n_local])
    em = plans["expert-major"].rank(0).trimmed()["l0_tile_src_mask_T"].tolist()
    assert em[:n_local] != first[:n_local]


def test_subset_of_ranks_matches_full_plan():
    model = ModelConfig.from_name("qwen2-moe-2.7b", ffn_K=256)
    routing = balanced(256, 64, 4, seed=2)
    full = make_plan(routing, model, ParallelConfig(ep=4), HW)
    one = make_plan(routing, model, ParallelConfig(ep=4), HW, ranks=[2])
    for name, v in one.rank(2).tensors().items():
        assert torch.equal(v, full.rank(2).tensors()[name]), name


def test_buffer_sizes_match_paper_symmetric_buffer():
    model = ModelConfig.from_name("mixtral-8x7b")
    plan = make_plan(balanced(4096, 8, 2), model, ParallelConfig(ep=8), HW, ranks=[0])
    # the paper's Table 3: one symmetric buffer of M x N elements, 32 MB for Mixtral at M=4096 in bf16
    assert plan.buffers.symm_recv_bytes == 4096 * 4096 * 2 == 32 * 2**20


def test_plan_summary_and_cli(capsys):
    from comet.core.planner import main

    main(["--model", "mixtral-8x7b", "--ep", "4", "--tokens", "1024", "--routing", "balanced"])
    out = capsys.readouterr().out
    assert "rows per source rank" in out and out.count("\n") >= 6
    main(["--model", "phi-3.5-moe", "--ep", "4", "--tokens", "512", "--json"])
    import json

    s = json.loads(capsys.readouterr().out)
    assert len(s["ranks"]) == 4 and sum(r["rows"] for r in s["ranks"]) == 512 * 2


def test_deterministic():
    model = ModelConfig.from_name("phi-3.5-moe", ffn_K=640)
    a = make_plan(balanced(300, 16, 2, seed=5), model, ParallelConfig(ep=4), HW)
    b = make_plan(balanced(300, 16, 2, seed=5), model, ParallelConfig(ep=4), HW)
    for ra, rb in zip(a.ranks, b.ranks, strict=True):
        for k, v in ra.tensors().items():
            assert torch.equal(v, rb.tensors()[k])


# ------------------------------------------------------------------------------------------- errors
def test_errors_say_what_to_change():
    with pytest.raises(ValueError, match="topk=3 > experts_E=2"):
        ModelConfig("x", 8, 8, experts_E=2, topk=3, layers=1)
    with pytest.raises(ValueError, match="not divisible by ep=3.*divisors of 8"):
        ParallelConfig(ep=3).validate(ModelConfig.from_name("mixtral-8x7b"))
    with pytest.raises(ValueError, match="ffn_K=14336 is not divisible by tp=3"):
        ParallelConfig(tp=3).validate(ModelConfig.from_name("mixtral-8x7b"))
    with pytest.raises(ValueError, match="world size mismatch.*launch 8 ranks"):
        ParallelConfig(ep=4, tp=2).validate(ModelConfig.from_name("mixtral-8x7b"), world_size=4)
    with pytest.raises(ValueError, match="unknown model 'gpt-5'.*mixtral-8x7b"):
        ModelConfig.from_name("gpt-5")
    with pytest.raises(ValueError, match="unknown hardware 'a100'.*h800"):
        HardwareProfile.from_name("a100")
    with pytest.raises(ValueError, match="activation"):
        ModelConfig("x", 8, 8, 2, 1, 1, activation="relu")
    with pytest.raises(ValueError, match="unknown order"):
        Policy(order="random")
    model = ModelConfig.from_name("mixtral-8x7b")
    with pytest.raises(ValueError, match="routing has 16 experts but mixtral-8x7b has 8"):
        make_plan(balanced(64, 16, 2), model, ParallelConfig(ep=8), HW)
    with pytest.raises(ValueError, match="topk=4 but mixtral-8x7b has topk=2"):
        make_plan(balanced(64, 8, 4), model, ParallelConfig(ep=8), HW)
    with pytest.raises(ValueError, match="no source given"):
        dataclasses.replace(HW, sources={})


def test_hardware_sources_and_json_roundtrip(tmp_path):
    from comet.core.config import HARDWARE

    for hw in HARDWARE.values():
        assert all(v for v in hw.sources.values())
    p = tmp_path / "p.json"
    p.write_text(HW.to_json())
    assert HardwareProfile.from_name(str(p)) == HW
    faster = HW.replace(link_gbps=2 * HW.link_gbps)
    assert faster.sources["link_gbps"] == "what-if override"


@pytest.mark.gpu
def test_plan_on_gpu_matches_cpu_without_sync():
    model = ModelConfig.from_name("mixtral-8x7b")
    routing = balanced(4096, 8, 2, seed=7)
    cpu = make_plan(routing, model, ParallelConfig(ep=4), HW, ranks=[1])
    gpu_routing = routing.to("cuda")
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        gpu = make_plan(gpu_routing, model, ParallelConfig(ep=4), HW, ranks=[1])
    finally:
        torch.cuda.set_sync_debug_mode("default")
    for name, v in cpu.rank(1).tensors().items():
        assert torch.equal(v, gpu.rank(1).tensors()[name].cpu()), name


def test_names_work_and_wrong_types_are_refused_at_once():
    """A model or hardware name works wherever an object does; a bare tensor or an int is refused in one line."""
    from comet.core.routing import balanced
    from sim import simulate

    r = balanced(64, 8, 2)
    by_name = make_plan(r, "mixtral-8x7b", ParallelConfig(ep=2), "h800")
    by_object = make_plan(r, ModelConfig.from_name("mixtral-8x7b"), ParallelConfig(ep=2),
                          HardwareProfile.from_name("h800"))
    assert by_name.model == by_object.model and by_name.hardware == by_object.hardware
    with pytest.raises(TypeError, match="routing must be a comet.core.routing.Routing"):
        make_plan(r.topk_ids_MJ, "mixtral-8x7b", ParallelConfig(ep=2), "h800")
    with pytest.raises(TypeError, match=r"parallel must be a ParallelConfig\(ep=..., tp=...\), got int"):
        make_plan(r, "mixtral-8x7b", 2, "h800")
    with pytest.raises(TypeError, match="hardware must be a HardwareProfile or a profile name"):
        make_plan(r, "mixtral-8x7b", ParallelConfig(ep=2), 3.0)
    with pytest.raises(TypeError, match="plan must be a comet.core.plan.Plan"):
        simulate("mixtral-8x7b")
