"""The reference MoE layer: the W-rank emulation equals the single-process forward, tagged rows land where
they should, weights shard as documented, bad inputs raise, and the tolerance helper reports errors."""

from __future__ import annotations

import doctest
import math
from collections import Counter

import pytest
import torch

import comet.core.reference as reference
import comet.core.tolerances as tolerances
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import token_owner
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.reference import DispatchMeta, combine, dispatch, emulate_ranks, expert_ffn, moe_forward
from comet.core.routing import Routing, uniform
from comet.core.tolerances import TOLERANCES, assert_close
from comet.core.weights import ExpertWeights, random_tokens, random_weights, shard_weights

F64 = torch.float64
LAYOUTS = [(2, 1), (4, 1), (1, 2), (2, 2), (4, 2)]  # (ep, tp)
FORMS = ["all-to-all", "all-gather"]
ACTS = ["gelu", "swiglu"]


def _model(act="gelu", E=8, topk=2, N=32, K=48) -> ModelConfig:
    return ModelConfig("ref-test", hidden_N=N, ffn_K=K, experts_E=E, topk=topk, layers=1, activation=act,
                       dtype="float64")


def _routing(ids_MJ: torch.Tensor, E: int, seed: int) -> Routing:
    gen = torch.Generator().manual_seed(seed)
    w = torch.softmax(torch.randn(ids_MJ.shape, generator=gen), dim=-1)
    return Routing(ids_MJ.long().contiguous(), w.float(), E)


def _case(act="gelu", M=64, E=8, topk=2, seed=0):
    model = _model(act, E=E, topk=topk)
    return (model, random_tokens(M, model.hidden_N, seed=seed, dtype=F64), uniform(M, E, topk, seed=seed + 1),
            random_weights(model, seed=seed + 2, dtype=F64))


def _check_emulation(x, routing, weights, model, par, form):
    expected = moe_forward(x, routing, weights, model.activation)
    actual = emulate_ranks(x, routing, weights, model, par, form)
    assert_close(actual, expected, F64, f"emulate_ranks ep={par.ep} tp={par.tp} {form} {model.activation}")
    return expected


# ---------------------------------------------------------------------- emulation == single process
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("ep,tp", LAYOUTS)
def test_emulated_ranks_equal_single_process(ep, tp, act, form):
    model, x, routing, weights = _case(act, seed=ep * 10 + tp)
    out = _check_emulation(x, routing, weights, model, ParallelConfig(ep=ep, tp=tp), form)
    assert 0.05 < float(out.std()) < 5.0, "random_weights should give O(1) outputs"


@pytest.mark.parametrize("M", [61, 5, 1])
@pytest.mark.parametrize("form", FORMS)
def test_tokens_not_divisible_by_world_size(M, form):
    # W = 8: M=61 gives owners of 7 or 8 tokens; M=5 and M=1 leave some ranks owning nothing
    model, x, routing, weights = _case("swiglu", M=M, seed=M)
    _check_emulation(x, routing, weights, model, ParallelConfig(ep=4, tp=2), form)


@pytest.mark.parametrize("form", FORMS)
def test_experts_with_zero_tokens(form):
    # experts 5, 6, 7 never chosen: with ep=4 the ranks of EP group 3 (experts 6, 7) receive nothing
    M, E = 64, 8
    gen = torch.Generator().manual_seed(3)
    ids = torch.rand(M, 5, generator=gen).argsort(dim=1)[:, :2]
    routing = _routing(ids, E, seed=4)
    assert routing.tokens_per_expert_E[5:].tolist() == [0, 0, 0]
    model = _model("gelu")
    x, weights = random_tokens(M, 32, seed=5, dtype=F64), random_weights(model, seed=6, dtype=F64)
    par = ParallelConfig(ep=4, tp=2)
    _check_emulation(x, routing, weights, model, par, form)
    recv_x, meta = dispatch(x, routing, model, par, form)
    assert [rr.num_rows for rr in meta.ranks[6:]] == [0, 0]
    assert recv_x[6].shape == (0, 32)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("topk", [1, 2])
def test_all_tokens_on_one_expert(topk, form):
    M, E = 64, 8
    gen = torch.Generator().manual_seed(7)
    others = torch.rand(M, E - 1, generator=gen).argsort(dim=1)[:, : topk - 1]  # 0..6
    others = others + (others >= 2).long()  # any expert but 2
    routing = _routing(torch.cat([torch.full((M, 1), 2), others], dim=1), E, seed=8)
    routing.check()
    assert int(routing.tokens_per_expert_E[2]) == M
    model = _model("swiglu", topk=topk)
    x, weights = random_tokens(M, 32, seed=9, dtype=F64), random_weights(model, seed=10, dtype=F64)
    for ep, tp in [(4, 2), (8, 1)]:
        _check_emulation(x, routing, weights, model, ParallelConfig(ep=ep, tp=tp), form)


# -------------------------------------------------------------------------------------- tagged rows
def _tagged_x(M: int, N: int, W: int) -> torch.Tensor:
    """x[t, 0] = token id, x[t, 1] = owner rank, the rest seeded random payload."""
    x = random_tokens(M, N, seed=11, dtype=F64)
    x[:, 0] = torch.arange(M, dtype=F64)
    x[:, 1] = token_owner(M, W).to(F64)
    return x


def _tag_errors(x, routing, recv_x, meta: DispatchMeta) -> list[str]:
    """Every row a rank received must be a token one of its experts needs, from the token's owner, intact;
    every needed token must arrive exactly once per rank. Messages name token, source and destination."""
    errors = []
    owner = token_owner(x.shape[0], meta.world_size)
    ids = routing.topk_ids_MJ
    for r, x_UN in enumerate(recv_x):
        local = set(meta.local_experts(r))
        seen = Counter()
        rr = meta.ranks[r]
        if x_UN.shape[0] != rr.num_rows:
            errors.append(f"rank {r} received {x_UN.shape[0]} rows but its metadata lists {rr.num_rows}")
        for u in range(x_UN.shape[0]):
            t, src = int(x_UN[u, 0]), int(x_UN[u, 1])
            seen[t] += 1
            experts = ids[t].tolist()
            if not local & set(experts):
                errors.append(f"token {t} from rank {src} landed on rank {r}, which holds experts "
                              f"{sorted(local)}, but the token's experts are {experts}")
            if src != int(owner[t]):
                errors.append(f"token {t} on rank {r} came from rank {src}, not from its owner "
                              f"{int(owner[t])}")
            elif u < rr.num_rows and (int(rr.src_U[u]) != src or int(rr.token_U[u]) != t):
                errors.append(f"token {t} from rank {src} on rank {r} row {u}: metadata says token "
                              f"{int(rr.token_U[u])} from rank {int(rr.src_U[u])}")
            if not torch.equal(x_UN[u], x[t]):
                errors.append(f"token {t} from rank {src} arrived corrupted on rank {r}")
        for t in range(x.shape[0]):
            if local & set(ids[t].tolist()) and seen[t] != 1:
                errors.append(f"token {t} (owner rank {int(owner[t])}) arrived {seen[t]} times at rank {r}, "
                              f"expected once")
    return errors


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("ep,tp", LAYOUTS)
def test_tagged_rows_land_where_needed(ep, tp, form):
    M, par = 61, ParallelConfig(ep=ep, tp=tp)
    model = _model("gelu")
    x = _tagged_x(M, model.hidden_N, par.world_size)
    routing = uniform(M, model.experts_E, model.topk, seed=12)
    recv_x, meta = dispatch(x, routing, model, par, form)
    errors = _tag_errors(x, routing, recv_x, meta)
    assert not errors, "\n".join(errors[:20])
    for r in range(par.world_size):  # all TP ranks of an EP group receive the same rows
        g0 = par.ep_rank(r) * tp
        assert torch.equal(recv_x[r], recv_x[g0]), f"rank {r} and rank {g0} (same EP group) differ"


def test_tag_check_names_a_wrong_destination():
    # Deliver rank 0's rows to rank 7 and vice versa: the check must name token, source and destination.
    M, par, model = 64, ParallelConfig(ep=4, tp=2), _model("gelu")
    x = _tagged_x(M, model.hidden_N, par.world_size)
    routing = uniform(M, model.experts_E, model.topk, seed=13)
    recv_x, meta = dispatch(x, routing, model, par, "all-to-all")
    swapped = (recv_x[7],) + recv_x[1:7] + (recv_x[0],)
    errors = _tag_errors(x, routing, swapped, meta)
    t, src = int(recv_x[0][0, 0]), int(recv_x[0][0, 1])
    assert any(f"token {t} from rank {src} landed on rank 7" in e for e in errors), errors[:5]
    assert any("expected once" in e for e in errors)


@pytest.mark.parametrize("ep,tp", [(4, 1), (2, 2), (4, 2)])
def test_dispatch_traffic_and_combine_counts(ep, tp):
    M, par, model = 61, ParallelConfig(ep=ep, tp=tp), _model("gelu")
    W = par.world_size
    x, routing = random_tokens(M, model.hidden_N, seed=14, dtype=F64), uniform(M, model.experts_E, 2, seed=15)
    owned = torch.bincount(token_owner(M, W), minlength=W)
    _, a2a = dispatch(x, routing, model, par, "all-to-all")
    _, ag = dispatch(x, routing, model, par, "all-gather")
    assert torch.equal(ag.sent_rows_WW, owned[:, None].expand(W, W)), "all-gather sends every row everywhere"
    assert bool((a2a.sent_rows_WW <= ag.sent_rows_WW).all())
    # all-to-all sends exactly what is kept; both forms keep (and combine) the same rows
    assert torch.equal(a2a.sent_rows_WW, a2a.combine_rows_WW.T)
    assert torch.equal(a2a.combine_rows_WW, ag.combine_rows_WW)
    for r in range(W):
        assert torch.equal(a2a.ranks[r].token_U, ag.ranks[r].token_U)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("ep,tp", [(2, 2), (4, 2), (8, 1)])
def test_agrees_with_planner(ep, tp, form):
    # The reference and comet.plan must agree on who receives what and how many partials each owner sums.
    M, par, model = 61, ParallelConfig(ep=ep, tp=tp), _model("gelu", topk=3)
    routing = uniform(M, model.experts_E, model.topk, seed=16)
    x = random_tokens(M, model.hidden_N, seed=17, dtype=F64)
    recv_x, meta = dispatch(x, routing, model, par, form)
    plan = make_plan(routing, model, par, HardwareProfile.from_name("h800"), Policy(dispatch=form))
    ones = [torch.ones(rr.num_rows, 1, dtype=F64) for rr in meta.ranks]
    partials_per_token = combine(ones, meta)[:, 0].long()
    assert torch.equal(partials_per_token, plan.token_num_slots_M)
    for r in range(par.world_size):
        t = plan.rank(r).trimmed()
        plan_pairs = sorted(zip(t["row_token_R"].tolist(), t["row_slot_R"].tolist(), strict=True))
        rr = meta.ranks[r]
        local = (rr.topk_ids_UJ // meta.experts_per_rank) == par.ep_rank(r)
        u, k = local.nonzero(as_tuple=True)
        assert plan_pairs == sorted(zip(rr.token_U[u].tolist(), k.tolist(), strict=True)), f"rank {r} rows"
        own = set((token_owner(M, par.world_size) == r).nonzero()[:, 0].tolist())
        received = set(rr.token_U.tolist()) - own
        assert received <= set(t["recv_token_U"].tolist()), f"rank {r}: a needed remote row is not planned"


# ----------------------------------------------------------------------- single-process semantics
def _naive_forward(x, routing, weights, act):
    """Per token, per slot, with the activation spelled out."""
    out = torch.zeros_like(x)
    K = weights.ffn_K
    for t in range(x.shape[0]):
        for k in range(routing.topk):
            e = int(routing.topk_ids_MJ[t, k])
            h = x[t] @ weights.w0_ENK[e]
            if act == "gelu":
                a = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))
            else:
                g, up = h[:K], h[K:]
                a = g * torch.sigmoid(g) * up
            out[t] += float(routing.topk_weights_MJ[t, k]) * (a @ weights.w1_EKN[e])
    return out


@pytest.mark.parametrize("act", ACTS)
def test_moe_forward_matches_per_token_formula(act):
    model, x, routing, weights = _case(act, M=16, seed=20)
    assert_close(moe_forward(x, routing, weights, act), _naive_forward(x, routing, weights, act), F64,
                 f"moe_forward {act}")


@pytest.mark.parametrize("act", ACTS)
def test_shards_reassemble_and_tp_partials_sum(act):
    model = _model(act)
    weights = random_weights(model, seed=21, dtype=F64)
    par = ParallelConfig(ep=2, tp=4)
    x = random_tokens(5, model.hidden_N, seed=22, dtype=F64)
    K, E_loc = model.ffn_K, model.experts_E // par.ep
    for g in range(par.ep):
        shards = [shard_weights(weights, par, g * par.tp + j) for j in range(par.tp)]
        full = weights.w0_ENK[g * E_loc:(g + 1) * E_loc]
        if act == "swiglu":
            kl = K // par.tp
            assert torch.equal(torch.cat([s.w0_ENK[..., :kl] for s in shards], -1), full[..., :K]), "gate"
            assert torch.equal(torch.cat([s.w0_ENK[..., kl:] for s in shards], -1), full[..., K:]), "up"
        else:
            assert torch.equal(torch.cat([s.w0_ENK for s in shards], -1), full)
        w1_group = weights.w1_EKN[g * E_loc:(g + 1) * E_loc]
        assert torch.equal(torch.cat([s.w1_EKN for s in shards], 1), w1_group)
        for j in range(E_loc):
            whole = expert_ffn(x, weights.w0_ENK[g * E_loc + j], weights.w1_EKN[g * E_loc + j], act)
            parts = sum(expert_ffn(x, s.w0_ENK[j], s.w1_EKN[j], act) for s in shards)
            assert_close(parts, whole, F64, f"TP partial sums, expert {g * E_loc + j}")


def test_random_weights_seeded_and_typed():
    model = _model("swiglu")
    a, b = random_weights(model, seed=1), random_weights(model, seed=1)
    assert torch.equal(a.w0_ENK, b.w0_ENK) and torch.equal(a.w1_EKN, b.w1_EKN)
    assert not torch.equal(a.w0_ENK, random_weights(model, seed=2).w0_ENK)
    assert a.w0_ENK.shape == (8, 32, 96) and a.w1_EKN.shape == (8, 48, 32) and a.activation == "swiglu"
    c = random_weights({"experts_E": 4, "hidden_N": 8, "ffn_K": 6}, seed=1, dtype="bfloat16")
    assert c.dtype == torch.bfloat16 and c.activation == "gelu" and c.w0_ENK.shape == (4, 8, 6)


# --------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_clear_errors():
    model, x, routing, weights = _case("gelu", M=16, seed=30)
    with pytest.raises(ValueError, match="N=31 columns"):
        moe_forward(x[:, :31], routing, weights, "gelu")
    with pytest.raises(ValueError, match="float32 but the expert weights are torch.float64"):
        moe_forward(x.float(), routing, weights, "gelu")
    with pytest.raises(ValueError, match="routing has 4 experts but the weights hold 8"):
        moe_forward(x, uniform(16, 4, 2, seed=0), weights, "gelu")
    with pytest.raises(ValueError, match="routing has 15 tokens"):
        moe_forward(x, uniform(15, 8, 2, seed=0), weights, "gelu")
    with pytest.raises(ValueError, match="does not match the weights"):
        moe_forward(x, routing, weights, "swiglu")
    with pytest.raises(ValueError, match="activation 'relu' not supported"):
        moe_forward(x, routing, weights, "relu")
    with pytest.raises(ValueError, match="routing has 4 experts but the weights hold 8"):
        emulate_ranks(x, uniform(16, 4, 2, seed=0), weights, model, ParallelConfig(ep=2), "all-to-all")
    with pytest.raises(ValueError, match="but ref-test has"):
        emulate_ranks(x, routing, weights, _model("gelu", K=24), ParallelConfig(ep=2), "all-to-all")
    with pytest.raises(ValueError, match="unknown dispatch form"):
        emulate_ranks(x, routing, weights, model, ParallelConfig(ep=2), "broadcast")
    with pytest.raises(ValueError, match="not divisible by ep=3"):
        emulate_ranks(x, routing, weights, model, ParallelConfig(ep=3), "all-to-all")
    with pytest.raises(ValueError, match="not divisible by ep=3"):
        shard_weights(weights, ParallelConfig(ep=3), 0)
    with pytest.raises(ValueError, match="rank 4 out of range"):
        shard_weights(weights, ParallelConfig(ep=2, tp=2), 4)
    with pytest.raises(ValueError, match="K' must be K"):
        ExpertWeights(weights.w0_ENK[..., :40], weights.w1_EKN)
    with pytest.raises(ValueError, match="disagree on E or N"):
        ExpertWeights(weights.w0_ENK[:4], weights.w1_EKN)
    with pytest.raises(ValueError, match="share dtype"):
        ExpertWeights(weights.w0_ENK, weights.w1_EKN.float())
    bad = Routing(routing.topk_ids_MJ.clone().fill_(9), routing.topk_weights_MJ, 8)
    with pytest.raises(ValueError, match="expert ids must lie in"):
        moe_forward(x, bad, weights, "gelu")


# ------------------------------------------------------------------------------------ tolerances
def test_tolerance_table_and_assert_close_message():
    assert set(TOLERANCES) == {"float64", "float32", "float16", "bfloat16", "tf32"}
    e = torch.randn(64, 32, generator=torch.Generator().manual_seed(40), dtype=F64)
    assert_close(e + 1e-3 * e.std(), e, torch.bfloat16, "bf16-sized error")
    a = e.clone()
    a[3, 5] += 1.0  # one garbage element: small in norm, caught elementwise
    with pytest.raises(AssertionError) as info:
        assert_close(a, e, "float32", "layer1 out")
    msg = str(info.value)
    for part in ("layer1 out", "max abs err 1.000e+00 at (3, 5)", "max rel err", "mean abs err",
                 "rel norm err", "1 of 2048 elements"):
        assert part in msg, msg
    with pytest.raises(AssertionError, match="NaN or inf"):
        assert_close(torch.full_like(e, float("nan")), e, "float64", "nan")
    with pytest.raises(ValueError, match="no tolerance for dtype"):
        assert_close(e, e, torch.int32, "ints")


def test_docstring_examples_run():
    for module in (reference, tolerances):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
