"""The fused layer0 / layer1 kernels in an emulated world (W ranks in one process) against comet.core.reference.

Without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set by tests/conftest.py before the kernels
are imported) in float32/float16 on tiny shapes (N = K = 32, M <= 64, 16-wide tiles): EP=2, EP=4, TP=2,
EP=2 x TP=2; gelu and swiglu; the three layer0 variants; tagged rows that name a wrong destination; an
expert with no tokens; all tokens on one rank's experts; consecutive calls through one workspace with no
host-side clearing; the capacity error; a peer that never signals ending in a timeout error.
The interpreter runs programs one after another in id order and ranks' launches one after another, which
the kernels' program order allows (kernels/fused_layer0.py, fused_layer1.py).
`gpu` tests (one GPU, emulated world, bf16): paper models scaled down and Mixtral at full size,
1,000 consecutive calls, no host sync inside a call.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.ownership import owned_range, token_owner
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.reference import moe_forward
from comet.core.routing import Routing, imbalanced, uniform
from comet.core.tolerances import assert_close
from comet.core.weights import ExpertWeights, random_tokens, random_weights, shard_weights
from kernels.combine import combine_reduce
from kernels.fused_layer0 import fused_layer0
from kernels.fused_layer1 import fused_layer1
from kernels.moe import moe_forward_fused, stage_tokens
from kernels.options import SMALL_COMM, CommConfig, TileConfig
from kernels.signals import FlagTimeoutError
from kernels.workspace import EmulatedWorld, WorkspaceCapacityError

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEVICE = "cpu" if INTERPRET or not torch.cuda.is_available() else "cuda"
HW = HardwareProfile.from_name("h200")
SMALL = Policy(block_m=16, block_n0=16, block_n1=16, group_m=2, nc_layer0=2, nc_layer1=2, comm_rows=8)
VARIANTS = ("blocks", "direct", "copy-engine")


def _tol(dtype):
    # float32 tl.dot runs on tf32 tensor cores on the GPU; the interpreter computes it in float32
    return "tf32" if dtype == torch.float32 and DEVICE == "cuda" else dtype


def _model(act="gelu", N=32, K=32, E=4, topk=2) -> ModelConfig:
    return ModelConfig("tiny", hidden_N=N, ffn_K=K, experts_E=E, topk=topk, layers=1, activation=act)


def _world(model, par, cap=64, dtype=torch.float32, **kw) -> EmulatedWorld:
    return EmulatedWorld(model, par, capacity_tokens=cap, dtype=dtype, device=DEVICE, **kw)


def _check_forward(world, model, par, routing, policy, dtype, seed=0, what="", weights=None, x=None, **kw):
    """One fused forward against comet.core.reference.moe_forward (float64); returns the fused output."""
    M = routing.num_tokens
    w = weights or random_weights(model, seed=seed)
    x = random_tokens(M, model.hidden_N, seed=seed + 1) if x is None else x
    out = moe_forward_fused(world, x.to(DEVICE, dtype), routing.to(DEVICE), w.to(dtype, DEVICE), model, par,
                            policy, checked=True, **kw)
    ref = moe_forward(x.to(dtype).double(), routing, w.to(dtype).to(torch.float64), model.activation)
    assert_close(out.cpu(), ref, _tol(dtype), what or f"fused EP={par.ep} TP={par.tp} {policy.layer0_comm}")
    return out


# ------------------------------------------------------------------------------ against the reference
CASES = [  # (ep, tp, activation, layer0 variant, dtype, dispatch)
    (2, 1, "gelu", "blocks", torch.float32, "all-to-all"),
    (2, 1, "swiglu", "direct", torch.float16, "all-to-all"),
    (4, 1, "gelu", "copy-engine", torch.float32, "all-to-all"),
    (4, 1, "swiglu", "blocks", torch.float16, "all-gather"),
    (4, 1, "gelu", "direct", torch.float32, "all-to-all"),
    (1, 2, "gelu", "direct", torch.float32, "all-to-all"),
    (1, 2, "swiglu", "copy-engine", torch.float16, "all-to-all"),
    (2, 2, "gelu", "blocks", torch.float16, "all-to-all"),
    (2, 2, "swiglu", "blocks", torch.float32, "all-gather"),
    (2, 2, "swiglu", "copy-engine", torch.float32, "all-to-all"),
]


@pytest.mark.parametrize("ep,tp,act,variant,dtype,dispatch", CASES)
def test_matches_reference(ep, tp, act, variant, dtype, dispatch):
    model = _model(act)
    par = ParallelConfig(ep=ep, tp=tp)
    routing = imbalanced(M=48, E=4, topk=2, std=0.05, seed=ep * 10 + tp)
    policy = SMALL.replace(layer0_comm=variant, dispatch=dispatch)
    _check_forward(_world(model, par, dtype=dtype), model, par, routing, policy, dtype)


PIPELINE_CASES = [  # (ep, tp, topk, E, dtype, send_block, comm_rows, nc_layer1)
    (2, 1, 2, 4, torch.float32, 4, 10, 2),  # 3 steps per chunk, short last chunks (empty units)
    (4, 1, 2, 4, torch.float16, 16, 8, 3),  # one step per chunk
    (2, 2, 2, 4, torch.float32, 2, 8, 1),  # TP=2, one program, 4 steps per chunk
    (2, 1, 3, 8, torch.float16, 4, 12, 2),  # 3 local rows per send (TOPK_LOCAL=3)
    (1, 2, 2, 4, torch.float32, 8, 40, 5),  # chunks longer than a step; more programs than items per column
]


@pytest.mark.parametrize("ep,tp,topk,E,dtype,send_block,comm_rows,nc", PIPELINE_CASES)
def test_layer1_pipeline_bitwise_equal_to_item_by_item(ep, tp, topk, E, dtype, send_block, comm_rows, nc):
    """CommConfig(pipelined=True) (software-pipelined communication programs, the default): the owners'
    combine buffers and combine_reduce outputs are bitwise those of the item-by-item loop (pipelined=False),
    and match the reference; the calls share one workspace (the combine flags return to 0 after every call)."""
    model = _model("swiglu", E=E, topk=topk)
    par = ParallelConfig(ep=ep, tp=tp)
    world = _world(model, par, dtype=dtype)
    routing = imbalanced(M=44, E=E, topk=topk, std=0.05, seed=ep * 7 + topk)
    policy = SMALL.replace(comm_rows=comm_rows, nc_layer1=nc)
    outs, combs = [], []
    for pipelined in (False, True, False):
        comm = SMALL_COMM.replace(pipelined=pipelined, send_block=send_block)
        outs.append(_check_forward(world, model, par, routing, policy, dtype, layer1_kwargs={"comm": comm},
                                   what=f"pipelined={pipelined} send_block={send_block} EP={ep} TP={tp}"))
        combs.append([world.buffers(r).combine_MLN.clone() for r in world.ranks])
    for i, pipelined in enumerate((True, False), start=1):
        assert torch.equal(outs[i], outs[0]), f"pipelined={pipelined}: output differs bitwise from item by item"
        for r, (a, b) in enumerate(zip(combs[i], combs[0], strict=True)):
            # bytes: slots no send writes hold the workspace's NaN fill
            assert torch.equal(a.view(torch.uint8), b.view(torch.uint8)), \
                f"pipelined={pipelined}: rank {r}'s combine buffer differs from item by item"


@pytest.mark.parametrize("pipelined", [True, False])
def test_layer1_chunks_of_their_own_size(pipelined):
    """Policy.l1_comm_rows larger than comm_rows (layer1 items of 12 sends, layer0 chunks of 4 rows): the
    forward matches the reference, and equals bitwise the forward with layer1 chunks of comm_rows (the same sums
    in the same order, only grouped into other items)."""
    model = _model("swiglu", E=4, topk=2)
    par = ParallelConfig(ep=2, tp=2)
    world = _world(model, par, dtype=torch.float16)
    routing = imbalanced(M=44, E=4, topk=2, std=0.05, seed=9)
    comm = SMALL_COMM.replace(pipelined=pipelined, send_block=4)
    outs = [_check_forward(world, model, par, routing, SMALL.replace(comm_rows=4, l1_comm_rows=l1, nc_layer1=2),
                           torch.float16, layer1_kwargs={"comm": comm}, what=f"l1_comm_rows={l1}")
            for l1 in (0, 12)]
    assert torch.equal(outs[0], outs[1]), "layer1 chunks of 12 sends change the output"


def _layer1_comm_setup(pipelined, num_warps):
    """A world after the one-launch layer1 (its combine buffers kept, then cleared to NaN) and the column
    counts the Gluon GEMM leaves (every column block complete): what the communication kernels start from."""
    model = _model("swiglu", E=4, topk=2)
    par = ParallelConfig(ep=2, tp=2)
    world = _world(model, par, dtype=torch.float16)
    routing = imbalanced(M=44, E=4, topk=2, std=0.05, seed=5)
    policy = SMALL.replace(nc_layer1=3)
    comm = SMALL_COMM.replace(pipelined=pipelined, num_warps=num_warps)
    plan = make_plan(routing.to(DEVICE), model, par, HW, policy)
    w = random_weights(model, seed=4).to(torch.float16, DEVICE)
    shards = [shard_weights(w, par, r) for r in world.ranks]
    stage_tokens(world, random_tokens(44, 32, seed=5).to(DEVICE, torch.float16), 44)
    for r in world.ranks:
        fused_layer0(world, plan, r, shards[r].w0_ENK)
    for r in world.ranks:
        fused_layer1(world, plan, r, shards[r].w1_EKN, comm=comm, impl="triton")
    one_launch = [world.buffers(r).combine_MLN.clone() for r in world.ranks]
    for r in world.ranks:
        combine_reduce(world, plan, r, plan.rank(r).combine_expected_W)
    lay = world.layout
    for r in world.ranks:  # (every owner's buffer cleared before any rank sends to it)
        world.buffers(r).combine_MLN.fill_(float("nan"))
    for r in world.ranks:
        buf = world.buffers(r)
        buf.flags_F[lay.l1_col: lay.l1_col + plan.l1_col_blocks] = plan.rank(r).l1_tiles_per_col.to(torch.int32)
    return world, plan, comm, one_launch


def _launch_comm(world, plan, r, comm, programs, total):
    from kernels import fused_layer1_gluon

    buf = world.buffers(r)
    fused_layer1_gluon.launch_comm(world, plan, r, buf.y_RN[: plan.rank(r).row_token_R.numel()], programs=programs,
                                   total_programs=total, comm=comm, send_block=comm.send_block_for(DEVICE),
                                   max_spin=world.max_spin)


@pytest.mark.parametrize("pipelined,num_warps", [(True, 4), (False, 2)])
def test_layer1_comm_kernels_alone_match_the_one_launch_kernel(pipelined, num_warps):
    """kernels/fused_layer1_gluon.py's communication kernels (the Gluon path's n_c programs beside the GEMM
    and the tail after it, two launches sharing one claim counter), given the one-launch kernel's y and the
    column counts of a finished GEMM, write bitwise the same combine buffers, and the last program of the two
    launches resets the counts, the claim counter and the done counter."""
    world, plan, comm, one_launch = _layer1_comm_setup(pipelined, num_warps)
    lay = world.layout
    for r in world.ranks:
        _launch_comm(world, plan, r, comm, programs=2, total=2 + 3)
        f = world.buffers(r).flags_F.cpu()
        assert int(f[lay.done_l1]) == 2, f"rank {r}: the first launch's programs are not all counted: {f.tolist()}"
        assert int(f[lay.l1_claim]) >= int(plan.rank(r).num_l1_chunks) * plan.l1_col_blocks, \
            f"rank {r}: claim counter {int(f[lay.l1_claim])} below the item count"
        _launch_comm(world, plan, r, comm, programs=3, total=2 + 3)
    for r in world.ranks:
        buf = world.buffers(r)
        assert torch.equal(buf.combine_MLN.view(torch.uint8), one_launch[r].view(torch.uint8)), \
            f"rank {r}: the communication kernels' combine buffer differs from the one-launch kernel's"
        f = buf.flags_F.cpu()
        assert f[lay.l1_col:].eq(0).all(), f"rank {r}: counts / claims / done counters not reset: {f.tolist()}"
        combine_reduce(world, plan, r, plan.rank(r).combine_expected_W)
    world.check()


def test_layer1_comm_programs_take_only_unclaimed_items():
    """Items are claimed in column-block-major order from the claim counter: with the items of the first c
    column blocks already claimed (by programs elsewhere), a launch writes exactly the later column blocks'
    partial sums, as the one-launch kernel did, and leaves the earlier ones untouched."""
    world, plan, comm, one_launch = _layer1_comm_setup(True, 4)
    lay, bn = world.layout, plan.policy.block_n1
    c = plan.l1_col_blocks // 2
    assert 0 < c < plan.l1_col_blocks
    for r in world.ranks:
        buf = world.buffers(r)
        buf.flags_F[lay.l1_claim] = c * int(plan.rank(r).num_l1_chunks)
        _launch_comm(world, plan, r, comm, programs=2, total=2)
    for r in world.ranks:
        got = world.buffers(r).combine_MLN
        assert got[..., : c * bn].isnan().all(), f"rank {r}: an item of the first {c} column blocks was redone"
        assert torch.equal(got[..., c * bn:].view(torch.uint8), one_launch[r][..., c * bn:].view(torch.uint8)), \
            f"rank {r}: the later column blocks differ from the one-launch kernel's"
        assert world.buffers(r).flags_F[lay.l1_col:].eq(0).all(), f"rank {r}: flags not reset"
    world.reset()


def _staged_pull_case(E: int, topk: int, seed: int):
    """An EP=4 fp16 world with 50 imbalanced tokens staged and a Plan of 3 pull programs, for the pull kernels'
    tests: (par, world, plan, tokens)."""
    model = _model("gelu", E=E, topk=topk)
    par = ParallelConfig(ep=4)
    world = _world(model, par, dtype=torch.float16)
    M = 50
    routing = imbalanced(M=M, E=E, topk=topk, std=0.05, seed=seed)
    plan = make_plan(routing.to(DEVICE), model, par, HW, SMALL.replace(nc_layer0=3))
    x = random_tokens(M, 32, seed=seed).to(DEVICE, torch.float16)
    stage_tokens(world, x, M)
    return par, world, plan, x


def test_layer0_pull_kernel_alone_fills_the_rows_and_counts_the_sources():
    """kernels/fused_layer0_gluon.py's pull kernel (the Gluon path's second launch): every row a rank's tiles
    read arrives in its receive buffer as the owner holds it, each source's arrival flag reaches the value
    the Gluon GEMM's loader waits for, and the done counter counts its programs (the GEMM's programs, which
    would reset both, are not run here)."""
    from kernels import fused_layer0_gluon

    par, world, plan, x = _staged_pull_case(E=4, topk=2, seed=6)
    lay = world.layout
    for r in world.ranks:
        rp = plan.rank(r)
        fused_layer0_gluon.launch_pull(world, plan, r, comm=SMALL_COMM, done_total=1000)
        buf = world.buffers(r)
        rows = rp.row_token_R[: int(rp.num_rows)].long()
        assert torch.equal(buf.recv_MN[rows], x[rows]), f"rank {r}: pulled rows differ from the owners'"
        f = buf.flags_F.cpu()
        assert torch.equal(f[lay.arrive: lay.arrive + par.world_size].long(), rp.l0_chunks_per_src_W.cpu()), \
            f"rank {r}: arrival flags {f[lay.arrive: lay.arrive + par.world_size].tolist()}"
        assert int(f[lay.done_l0]) == 3, f"rank {r}: done counter {int(f[lay.done_l0])}, expected 3 programs"
    world.reset()


def test_layer0_pull_into_shared_rows_fills_every_row_and_counts_the_sources():
    """CommConfig.pull_to_rows (kernels/fused_layer0_gluon.py): the own tokens copied into their shared rows,
    then the pull kernel writes every other token into each of its rows (a token on two of the rank's experts
    lands twice); each source's arrival flag reaches the target the Gluon GEMM's loader waits for, and the done
    counter counts the pull programs (the GEMM, which would reset both, is not run here)."""
    from kernels import fused_layer0_gluon

    par, world, plan, x = _staged_pull_case(E=8, topk=4, seed=7)
    lay = world.layout
    comm = SMALL_COMM.replace(pull_to_rows=True)
    doubled = 0  # rows of tokens that have two of a rank's experts
    for r in world.ranks:
        rp = plan.rank(r)
        buf = world.buffers(r)
        a, a_rows, targets = fused_layer0_gluon._rows_in_place(buf, rp, r, par.world_size)
        assert a_rows is None and a.data_ptr() == buf.y_RN.data_ptr()
        fused_layer0_gluon.launch_pull_rows(world, plan, r, a, comm=comm, done_total=1000)
        n = int(rp.num_rows)
        tok = rp.row_token_R[:n].long()
        assert torch.equal(a[:n], x[tok]), f"rank {r}: shared rows differ from their tokens"
        doubled += n - tok.unique().numel()
        src = rp.row_src_R[:n].long()
        f = buf.flags_F.cpu()
        flags = f[lay.arrive: lay.arrive + par.world_size].long()
        assert torch.equal(flags, targets.cpu()), f"rank {r}: arrival flags {flags.tolist()}, targets {targets}"
        assert int(flags[r]) == 0 and all(int(flags[s]) > 0 for s in src.unique().tolist() if s != r), flags
        assert int(f[lay.done_l0]) == 3, f"rank {r}: done counter {int(f[lay.done_l0])}, expected 3 programs"
    assert doubled > 0, "the case should put some token on two of a rank's experts"
    world.reset()


@pytest.mark.parametrize("asked,message,instead", [
    ({"pull_to_rows": True}, "pull_to_rows=True runs in layer0's Gluon form only.*use pull_to_rows=False",
     {"pull_to_rows": False}),
    ({"l0_tail_pct": 50}, "l0_tail_pct=50 runs in layer0's Gluon form only.*use l0_tail_pct=0", {"l0_tail_pct": 0}),
])
def test_gluon_only_layer0_options_outside_the_gluon_form_say_so(asked, message, instead):
    """Options of layer0's Gluon form, asked for where it cannot run (here: the interpreter), raise one line
    naming the option and what to use instead; the option's off value runs."""
    model = _model("gelu")
    par = ParallelConfig(ep=2)
    world = _world(model, par)
    plan = make_plan(uniform(M=8, E=4, topk=2, seed=0).to(DEVICE), model, par, HW, SMALL)
    w0 = shard_weights(random_weights(model, seed=0).to(torch.float32, DEVICE), par, 0).w0_ENK
    with pytest.raises(ValueError, match=message):
        fused_layer0(world, plan, 0, w0, comm=SMALL_COMM.replace(**asked))
    fused_layer0(world, plan, 0, w0, comm=SMALL_COMM.replace(**instead))  # the off value: runs


def test_fused_layer1_impl_errors():
    model = _model("swiglu")
    par = ParallelConfig(ep=2)
    world = _world(model, par)
    plan = make_plan(uniform(M=8, E=4, topk=2, seed=0).to(DEVICE), model, par, HW, SMALL)
    w1 = shard_weights(random_weights(model, seed=0).to(torch.float32, DEVICE), par, 0).w1_EKN
    with pytest.raises(ValueError, match="impl='cuda': use one of auto, triton, gluon"):
        fused_layer1(world, plan, 0, w1, impl="cuda")
    if DEVICE == "cpu":
        with pytest.raises(ValueError, match="impl='gluon' cannot run this call: .*use impl='auto' or 'triton'"):
            fused_layer1(world, plan, 0, w1, impl="gluon")


def test_comm_and_tile_config_errors_say_what_to_use():
    with pytest.raises(ValueError, match="CommConfig pipelined=2: use True"):
        CommConfig(pipelined=2)
    with pytest.raises(ValueError, match=r"CommConfig send_block=24: a tl.arange size, so a power of two"):
        SMALL_COMM.replace(send_block=24)
    with pytest.raises(ValueError, match="CommConfig pull_rows=0"):
        CommConfig(pull_rows=0)
    with pytest.raises(ValueError, match="TileConfig num_stages=0: needs an int >= 1"):
        TileConfig(num_stages=0)


def test_program_counts_send_blocks_and_tiles():
    """Other programs counts (1 GEMM program; more than the work), chunks longer than a send block, 32-row
    tiles, M that no tile size divides."""
    model = _model("swiglu")
    par = ParallelConfig(ep=2, tp=1)
    world = _world(model, par)
    routing = uniform(M=45, E=4, topk=2, seed=5)
    for l0, l1, pol in (({"num_programs": 1}, {"num_programs": 1}, SMALL.replace(comm_rows=40)),
                        ({"num_programs": 3}, {"num_programs": 5}, SMALL.replace(block_m=32, nc_layer1=3)),
                        ({}, {}, SMALL.replace(nc_layer0=1, nc_layer1=1, block_n1=32))):
        _check_forward(world, model, par, routing, pol, torch.float32, layer0_kwargs=l0, layer1_kwargs=l1,
                       what=f"programs {l0} {l1} {pol.block_m}x{pol.block_n1}")


# ------------------------------------------------------------------------------------- tagged data
def _tagged_tokens(M, N, W, dtype):
    """Row t: [t + 1, owner(t) + 1, 0, ...]: a row that lands wrong says where it came from."""
    x = torch.zeros(M, N)
    x[:, 0] = torch.arange(M) + 1
    x[:, 1] = token_owner(M, W) + 1
    return x.to(DEVICE, dtype)


def dispatch_problems(world, routing, par, variant) -> list[str]:
    """Every row a rank needs (from the routing, not the plan) whose tags name another token or owner."""
    M, W = routing.num_tokens, par.world_size
    E_loc = routing.num_experts // par.ep
    owner = token_owner(M, W)
    groups_M = [{int(e) // E_loc for e in row} for row in routing.topk_ids_MJ.tolist()]
    problems = []
    for r in range(W):
        recv = world.buffers(r).recv_MN.cpu().float()
        need = [t for t in range(M) if int(owner[t]) != r and (variant == "copy-engine"  # whole shards
                                                              or par.ep_rank(r) in groups_M[t])]
        for t in need:
            got_t, got_o = recv[t, 0].item() - 1, recv[t, 1].item() - 1
            if (got_t, got_o) != (t, int(owner[t])):
                problems.append(f"rank {r}: receive row {t} holds token {got_t:g} from owner {got_o:g}, expected "
                                f"token {t} from owner {int(owner[t])}")
    return problems


def combine_problems(world, plan, routing, par) -> list[str]:
    """Each owner's combine slot j of token t must hold t's partial sum from the j-th (EP group, TP rank)."""
    M, W = plan.num_tokens, plan.world_size
    E_loc = plan.experts_per_rank
    problems = []
    for o in range(W):
        lo, hi = owned_range(M, W, o)
        comb = world.buffers(o).combine_MLN.cpu().float()
        for t in range(lo, hi):
            groups = sorted({int(e) // E_loc for e in routing.topk_ids_MJ[t].tolist()})
            for j in range(len(groups) * par.tp):
                want = groups[j // par.tp] * par.tp + j % par.tp
                v = comb[t - lo, j]
                if not bool(torch.isfinite(v[:3]).all()) or v[2] == 0:
                    problems.append(f"owner {o}: slot {j} of token {t} was never written (expected the partial sum "
                                    f"from rank {want})")
                    continue
                got_t, got_r = v[0].item() / v[2].item() - 1, v[1].item() / v[2].item() - 1
                if (round(got_t), round(got_r)) != (t, want):
                    problems.append(f"owner {o}: slot {j} of token {t} holds token {got_t:g} from rank {got_r:g}, "
                                    f"expected token {t} from rank {want}")
    return problems


def _run_tagged_layer1(world, plan, par, dtype):
    """Layer1 with h rows tagged [token + 1, rank + 1, 1, 0...] and identity weights: the reduced row of
    (token t, sender q) is [(t + 1) w, (q + 1) w, w, 0...] with w the sum of t's gate weights on q."""
    K, N = plan.ffn_local, plan.model.hidden_N
    for q in range(par.world_size):
        rp = plan.rank(q)
        h = torch.zeros(rp.row_token_R.numel(), K)
        h[:, 0] = rp.row_token_R.cpu().float() + 1
        h[:, 1] = q + 1
        h[:, 2] = 1
        w1 = torch.eye(K, N).expand(plan.experts_per_rank, K, N).contiguous()
        fused_layer1(world, plan, q, w1.to(DEVICE, dtype), h_RK=h.to(DEVICE, dtype))


@pytest.mark.parametrize("ep,tp,variant", [(4, 1, "blocks"), (2, 2, "copy-engine"), (2, 1, "direct")])
def test_tagged_rows_reach_the_planned_destination(ep, tp, variant):
    model = _model("gelu", K=32)
    par = ParallelConfig(ep=ep, tp=tp)
    dtype = torch.float16
    world = _world(model, par, dtype=dtype)
    routing = Routing(uniform(M=40, E=4, topk=2, seed=3).topk_ids_MJ, torch.full((40, 2), 0.5), 4)
    plan = make_plan(routing.to(DEVICE), model, par, HW, SMALL.replace(layer0_comm=variant))
    x = _tagged_tokens(40, 32, par.world_size, dtype)
    stage_tokens(world, x, 40)
    for r in range(par.world_size):
        fused_layer0(world, plan, r, shard_weights(random_weights(model).to(dtype, DEVICE), par, r).w0_ENK)
    if variant != "direct":
        problems = dispatch_problems(world, routing, par, variant)
        assert not problems, problems[:5]
    _run_tagged_layer1(world, plan, par, dtype)
    assert not combine_problems(world, plan, routing, par), combine_problems(world, plan, routing, par)[:5]
    world.check()
    world.reset()


def test_tagged_checks_name_a_wrong_destination():
    """Corrupt the plans (a token id in layer0's receive list, a combine slot in layer1): the tagged
    checks must name the row and the slot that went wrong, with where the data came from."""
    model = _model("gelu")
    par = ParallelConfig(ep=2, tp=1)
    dtype = torch.float32
    world = _world(model, par, dtype=dtype)
    routing = Routing(uniform(M=32, E=4, topk=2, seed=4).topk_ids_MJ, torch.full((32, 2), 0.5), 4)
    plan = make_plan(routing.to(DEVICE), model, par, HW, SMALL)
    rp = plan.rank(0)
    recv = rp.recv_token_U.clone()
    t_bad, t_wrong = int(recv[0]), int(recv[1])
    recv[0] = recv[1]  # rank 0 pulls token recv[1] twice and never token recv[0]
    slot = rp.send_slot_S.clone()
    s_multi = int((rp.send_dest_S == 1).nonzero()[0])
    slot[s_multi] = slot[s_multi] + 1  # a partial sum stored one slot too far
    bad = dataclasses.replace(plan, ranks=(dataclasses.replace(rp, recv_token_U=recv, send_slot_S=slot),
                                           plan.rank(1)))
    stage_tokens(world, _tagged_tokens(32, 32, 2, dtype), 32)
    for r in range(2):
        fused_layer0(world, bad, r, shard_weights(random_weights(model).to(dtype, DEVICE), par, r).w0_ENK)
    # the row of t_bad on rank 0 is still the NaN poison: named as never received
    problems = dispatch_problems(world, routing, par, "blocks")
    assert any(f"rank 0: receive row {t_bad} holds token nan" in p for p in problems), problems
    world.buffers(0).recv_MN[t_bad] = torch.tensor([t_wrong + 1.0, 2.0] + [0.0] * 30)
    assert any(f"receive row {t_bad} holds token {t_wrong} from owner 1, expected token {t_bad}" in p
               for p in dispatch_problems(world, routing, par, "blocks"))
    _run_tagged_layer1(world, bad, par, dtype)
    t = int(rp.send_token_S[s_multi])
    problems = combine_problems(world, bad, routing, par)
    assert any("owner 1: slot" in p and f"token {t}" in p for p in problems), problems
    world.reset()


# ------------------------------------------------------------------------------------ routing cases
def test_expert_without_tokens_and_rank_without_rows():
    # tokens pick experts {0, 2} or {2, 3}: rank 0 (experts 0, 1) has an idle expert 1; with E=6, EP=3,
    # rank 2 (experts 4, 5) receives nothing: its launches must run and send nothing
    M = 30
    ids = torch.tensor([[0, 2] if t % 3 else [2, 3] for t in range(M)])
    routing = Routing(ids, torch.full((M, 2), 0.5), 6)
    model = _model("swiglu", E=6)
    par = ParallelConfig(ep=3)
    for variant in VARIANTS:
        _check_forward(_world(model, par, cap=32), model, par, routing, SMALL.replace(layer0_comm=variant),
                       torch.float32, what=f"idle expert/rank, {variant}")


def test_all_tokens_on_one_ranks_experts():
    M = 40
    gen = torch.Generator().manual_seed(0)
    ids = torch.stack([torch.randperm(2, generator=gen) + 2 for _ in range(M)])  # experts 2, 3: rank 1 only
    routing = Routing(ids, torch.softmax(torch.randn(M, 2, generator=gen), -1), 4)
    model = _model("gelu")
    for par in (ParallelConfig(ep=2), ParallelConfig(ep=2, tp=2)):
        world = _world(model, par, dtype=torch.float16)
        for variant in VARIANTS:
            _check_forward(world, model, par, routing, SMALL.replace(layer0_comm=variant), torch.float16,
                           what=f"one rank's experts EP={par.ep} TP={par.tp} {variant}")


def test_consecutive_calls_without_host_clearing():
    """Changing M and routing, every variant, through one workspace: results match and every count flag is
    back to 0 after each call (the kernels reset them)."""
    model = _model("swiglu")
    par = ParallelConfig(ep=2, tp=2)
    world = _world(model, par, cap=64, dtype=torch.float16)
    w = random_weights(model, seed=9)
    for i, M in enumerate((64, 17, 48, 3, 33, 64)):
        routing = uniform(M=M, E=4, topk=2, seed=100 + i)
        policy = SMALL.replace(layer0_comm=VARIANTS[i % 3], nc_layer1=1 + i % 3)
        _check_forward(world, model, par, routing, policy, torch.float16, seed=i, weights=w, what=f"call {i} M={M}")
        lay = world.layout
        for r in range(par.world_size):
            f, sf = world.buffers(r).flags_F.cpu(), world.buffers(r).sflags_F.cpu()
            assert f[: lay.copy].eq(0).all() and f[lay.l1_col:].eq(0).all(), f"rank {r} local flags {f.tolist()}"
            assert sf[: lay.barrier].eq(0).all(), f"rank {r} combine flags not reset: {sf.tolist()}"


def test_bitwise_reproducible_across_program_counts():
    model = _model("gelu")
    par = ParallelConfig(ep=2, tp=2)
    world = _world(model, par)
    routing = imbalanced(M=40, E=4, topk=2, std=0.05, seed=2)
    a = _check_forward(world, model, par, routing, SMALL, torch.float32)
    b = _check_forward(world, model, par, routing, SMALL.replace(nc_layer1=3, layer0_comm="direct"), torch.float32,
                       layer1_kwargs={"num_programs": 1})
    assert torch.equal(a, b), "fused results changed with nc_layer1 / program counts / layer0 variant"


# ------------------------------------------------------------------------------------------ errors
def test_capacity_error_names_tokens_and_bytes():
    model = _model()
    par = ParallelConfig(ep=2)
    world = _world(model, par, cap=16)
    routing = uniform(M=20, E=4, topk=2, seed=0)
    with pytest.raises(WorkspaceCapacityError, match=r"M=20 tokens.*capacity 16 tokens.*recv 2560 bytes needed, "
                                                     r"2048 available.*capacity_tokens >= 20"):
        _check_forward(world, model, par, routing, SMALL, torch.float32)


def test_peer_that_never_signals_times_out_with_the_flag_named():
    """Rank 1 never runs layer1: owner 0's reduce gives up after max_spin polls and check() names the
    combine flag of source rank 1; after reset() the workspace works again."""
    model = _model()
    par = ParallelConfig(ep=2)
    world = _world(model, par, max_spin=50)
    routing = uniform(M=32, E=4, topk=2, seed=1)
    plan = make_plan(routing.to(DEVICE), model, par, HW, SMALL)
    w = random_weights(model).to(torch.float32, DEVICE)
    stage_tokens(world, random_tokens(32, 32).to(DEVICE), 32)
    shards = [shard_weights(w, par, r) for r in range(2)]
    for r in range(2):
        fused_layer0(world, plan, r, shards[r].w0_ENK)
    fused_layer1(world, plan, 0, shards[0].w1_EKN)  # rank 1's layer1 is never launched
    combine_reduce(world, plan, 0, plan.rank(0).combine_expected_W)
    with pytest.raises(FlagTimeoutError, match=r"rank 0: timed out waiting on combine flag\[source rank 1, column "
                                               r"block 0\].*saw 0, expected \d+ .*after 50 spins"):
        world.check()
    world.reset()
    _check_forward(world, model, par, routing, SMALL, torch.float32, what="after reset")


def test_copy_engine_flag_never_written_times_out(monkeypatch):
    import kernels.fused_layer0 as l0

    model = _model()
    par = ParallelConfig(ep=2)
    world = _world(model, par, max_spin=20)
    real = l0.write_flag
    monkeypatch.setattr(l0, "write_flag", lambda flags, index, value: None if index == world.layout.copy + 1
                        else real(flags, index, value))
    routing = uniform(M=32, E=4, topk=2, seed=1)
    with pytest.raises(FlagTimeoutError, match=r"rank 0: timed out waiting on layer0 copy-engine flag\[1\]"):
        _check_forward(world, model, par, routing, SMALL.replace(layer0_comm="copy-engine"), torch.float32)


def test_argument_errors():
    model = _model()
    par = ParallelConfig(ep=2)
    world = _world(model, par)
    routing = uniform(M=32, E=4, topk=2, seed=1)
    with pytest.raises(ValueError, match="nc_layer1=0"):
        _check_forward(world, model, par, routing, SMALL.replace(nc_layer1=0), torch.float32)
    world.reset()
    with pytest.raises(ValueError, match="nc_layer0 >= 1"):
        _check_forward(world, model, par, routing, SMALL.replace(nc_layer0=0), torch.float32)
    world.reset()
    plan = make_plan(routing.to(DEVICE), model, par, HW, SMALL)
    with pytest.raises(ValueError, match="w0_ENK must be"):
        fused_layer0(world, plan, 0, torch.zeros(2, 32, 16, device=DEVICE))
    with pytest.raises(ValueError, match="differs from the workspace"):
        fused_layer0(_world(model, ParallelConfig(ep=4)), plan, 0, torch.zeros(2, 32, 32, device=DEVICE))
    with pytest.raises(ValueError, match="unknown layer0 variant"):
        fused_layer0(world, plan, 0, torch.zeros(2, 32, 32, device=DEVICE), variant="nvshmem")


# ------------------------------------------------------------------------------------- GPU (bf16)
def _gpu_weights(model, seed=0) -> ExpertWeights:
    """bf16 Gaussian weights drawn on the GPU (full-size models take tens of seconds on the CPU)."""
    g = torch.Generator(device="cuda").manual_seed(seed)
    E, N, K = model.experts_E, model.hidden_N, model.ffn_K
    w0 = torch.randn(E, N, model.layer0_cols, device="cuda", generator=g) / N ** 0.5
    w1 = torch.randn(E, K, N, device="cuda", generator=g) / K ** 0.5
    return ExpertWeights(w0.bfloat16(), w1.bfloat16())


GPU_POLICY = Policy(block_m=128, block_n0=128, block_n1=128, nc_layer0=16, nc_layer1=28, comm_rows=64)


def _gpu_forward(model, par, routing, policy, what, world=None, weights=None, seed=0):
    world = world or EmulatedWorld(model, par, routing.num_tokens, dtype=torch.bfloat16, device="cuda")
    w = weights or random_weights(model, seed=seed, device="cuda")
    x = random_tokens(routing.num_tokens, model.hidden_N, seed=seed + 1, device="cuda")
    out = moe_forward_fused(world, x.bfloat16(), routing.to("cuda"), w.to(torch.bfloat16), model, par, policy,
                            checked=True)
    ref = moe_forward(x.bfloat16().double(), routing.to("cuda"), w.to(torch.bfloat16).to(torch.float64),
                      model.activation)
    assert_close(out, ref, torch.bfloat16, what)
    return out


@pytest.mark.gpu
@pytest.mark.parametrize("ep,tp", [(2, 1), (4, 1), (1, 2), (2, 2)])
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_bf16_matches_reference(ep, tp, act, variant):
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation=act)
    par = ParallelConfig(ep=ep, tp=tp)
    for std in (0.0, 0.05):
        routing = imbalanced(M=1000, E=8, topk=2, std=std, seed=ep + 3 * tp)
        _gpu_forward(model, par, routing, GPU_POLICY.replace(layer0_comm=variant, block_n0=64 if act == "swiglu"
                     else 128), f"EP={ep} TP={tp} {act} {variant} std={std}")


@pytest.mark.gpu
@pytest.mark.parametrize("name,scale,ep", [("mixtral-8x7b", 8, 4), ("qwen2-moe-2.7b", 4, 4), ("phi-3.5-moe", 8, 2)])
def test_gpu_paper_models_scaled_down(name, scale, ep):
    base = ModelConfig.from_name(name)
    model = dataclasses.replace(base, hidden_N=base.hidden_N // scale, ffn_K=base.ffn_K // scale)
    par = ParallelConfig(ep=ep)
    routing = imbalanced(M=2048, E=model.experts_E, topk=model.topk, std=0.032, seed=1)
    for variant in VARIANTS:
        _gpu_forward(model, par, routing, GPU_POLICY.replace(layer0_comm=variant), f"{name}/{scale} {variant}")


@pytest.mark.gpu
def test_gpu_routing_corner_cases():
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    M = 700
    gen = torch.Generator().manual_seed(0)
    one_rank = torch.stack([torch.randperm(2, generator=gen) + 6 for _ in range(M)])  # experts 6, 7 only
    idle = torch.tensor([[0, 2] if t % 3 else [2, 5] for t in range(M)])  # experts 1, 3, 4, 6, 7 idle
    for ids, what in ((one_rank, "all tokens on rank 3's experts"), (idle, "idle experts")):
        routing = Routing(ids, torch.softmax(torch.randn(M, 2, generator=gen), -1), 8)
        for par in (ParallelConfig(ep=4), ParallelConfig(ep=2, tp=2)):
            for variant in VARIANTS:
                _gpu_forward(model, par, routing, GPU_POLICY.replace(layer0_comm=variant, block_n0=64),
                             f"{what} EP={par.ep} TP={par.tp} {variant}")


@pytest.mark.gpu
def test_gpu_mixtral_full_size_ep4():
    """Mixtral-8x7B at full size (N=4096, K=14336), M=4096, EP=4 emulated: both layers, bf16."""
    model = ModelConfig.from_name("mixtral-8x7b")
    par = ParallelConfig(ep=4)
    routing = imbalanced(M=4096, E=8, topk=2, std=0.032, seed=0).to("cuda")
    w = _gpu_weights(model)
    x = random_tokens(4096, 4096, seed=1, dtype=torch.bfloat16, device="cuda")
    world = EmulatedWorld(model, par, 4096, dtype=torch.bfloat16, device="cuda")
    ref = moe_forward(x.float(), routing, w.to(torch.float32), "gelu")
    for variant in VARIANTS:
        out = moe_forward_fused(world, x, routing, w, model, par, GPU_POLICY.replace(layer0_comm=variant),
                                checked=True)
        assert_close(out, ref, torch.bfloat16, f"mixtral full size {variant}")


@pytest.mark.gpu
def test_gpu_1000_calls_changing_routing():
    """1,000 calls through one world: M and routing change every call, the layer0 variant and nc_layer1
    rotate; every result matches the reference; no hang (the checked mode raises on a timed-out wait)."""
    model = ModelConfig("small", hidden_N=256, ffn_K=512, experts_E=8, topk=2, layers=1, activation="swiglu")
    par = ParallelConfig(ep=2, tp=2)
    world = EmulatedWorld(model, par, 512, dtype=torch.bfloat16, device="cuda")
    w = random_weights(model, seed=0, dtype=torch.bfloat16, device="cuda")
    shards = [shard_weights(w, par, r) for r in range(4)]
    w64 = w.to(torch.float64)
    gen = torch.Generator().manual_seed(0)
    for i in range(1000):
        M = int(torch.randint(1, 513, (1,), generator=gen))
        routing = imbalanced(M=M, E=8, topk=2, std=0.05 * (i % 3) / 2, seed=i).to("cuda")
        x = random_tokens(M, 256, seed=i, dtype=torch.bfloat16, device="cuda")
        policy = GPU_POLICY.replace(layer0_comm=VARIANTS[i % 3], nc_layer1=(4, 16, 28, 64)[i % 4])
        out = moe_forward_fused(world, x, routing, shards, model, par, policy, checked=(i % 100 == 99))
        ref = moe_forward(x.double(), routing, w64, "swiglu")
        assert_close(out, ref, torch.bfloat16, f"call {i} M={M} {policy.layer0_comm}")


@pytest.mark.gpu
@pytest.mark.parametrize("variant", VARIANTS)
def test_gpu_no_host_sync_inside_a_call(variant):
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=2, tp=2)
    world = EmulatedWorld(model, par, 1024, dtype=torch.bfloat16, device="cuda")
    shards = [shard_weights(random_weights(model, dtype=torch.bfloat16, device="cuda"), par, r) for r in range(4)]
    policy = GPU_POLICY.replace(layer0_comm=variant)
    for i in range(3):  # warm-up: compile kernels, create the side streams
        routing = uniform(M=1000, E=8, topk=2, seed=i).to("cuda")
        x = random_tokens(1000, 512, seed=i, dtype=torch.bfloat16, device="cuda")
        moe_forward_fused(world, x, routing, shards, model, par, policy)
    torch.cuda.synchronize()
    routing = uniform(M=1000, E=8, topk=2, seed=7).to("cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = moe_forward_fused(world, x, routing, shards, model, par, policy)  # plan building included
    finally:
        torch.cuda.set_sync_debug_mode("default")
    world.check()
    assert bool(torch.isfinite(out).all())


@pytest.mark.gpu
def test_gpu_timeout_and_reproducibility():
    model = ModelConfig("mid", hidden_N=512, ffn_K=512, experts_E=8, topk=2, layers=1)
    par = ParallelConfig(ep=4)
    world = EmulatedWorld(model, par, 1024, dtype=torch.bfloat16, device="cuda", max_spin=100_000)
    routing = uniform(M=1024, E=8, topk=2, seed=3).to("cuda")
    # bitwise the same whatever n_c and program counts (the Gluon forms run unsplit tiles); the "direct"
    # mechanism runs another GEMM kernel (the tl one), so it is compared with itself
    a = _gpu_forward(model, par, routing, GPU_POLICY, "run a", world=world)
    b = _gpu_forward(model, par, routing, GPU_POLICY.replace(nc_layer0=8, nc_layer1=8), "run b", world=world)
    assert torch.equal(a, b), "results differ bitwise between runs with other nc_layer0 / nc_layer1"
    c, d = (_gpu_forward(model, par, routing, GPU_POLICY.replace(nc_layer1=nc, layer0_comm="direct"), f"direct {nc}",
                         world=world) for nc in (28, 8))
    assert torch.equal(c, d), "direct: results differ bitwise between runs with other nc_layer1"
    plan = make_plan(routing, model, par, HW, GPU_POLICY)
    w = random_weights(model, dtype=torch.bfloat16, device="cuda")
    stage_tokens(world, random_tokens(1024, 512, dtype=torch.bfloat16, device="cuda"), 1024)
    for r in range(4):
        fused_layer0(world, plan, r, shard_weights(w, par, r).w0_ENK)
    for r in (0, 1, 3):  # rank 2 never signals
        fused_layer1(world, plan, r, shard_weights(w, par, r).w1_EKN)
    combine_reduce(world, plan, 0, plan.rank(0).combine_expected_W)
    with pytest.raises(FlagTimeoutError, match=r"combine flag\[source rank 2"):
        world.check()
    world.reset()
    _gpu_forward(model, par, routing, GPU_POLICY, "after reset", world=world)


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("ep,tp", [(4, 1), (2, 2)])
def test_gpu_pull_to_rows_bitwise_equal_to_the_gathered_form(act, ep, tp):
    """Layer0's Gluon form with tokens pulled into their shared rows (A read in place by TMA) against the same
    form gathering A by token id: the same products, so bitwise the same output, at two n_c; and the flags
    reset for the next call (a second call gives the same)."""
    from kernels.options import GPU_COMM

    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=4, layers=1, activation=act)
    par = ParallelConfig(ep=ep, tp=tp)
    M = 2000
    routing = imbalanced(M=M, E=8, topk=4, std=0.032, seed=ep + tp).to("cuda")
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda", max_spin=1 << 20)
    w = _gpu_weights(model)
    stage_tokens(world, random_tokens(M, 512, seed=2, dtype=torch.bfloat16, device="cuda"), M)
    for nc in (4, 16):
        plan = make_plan(routing, model, par, HW, GPU_POLICY.replace(nc_layer0=nc, block_n0=64 if act == "swiglu"
                                                                      else 128))
        for r in world.ranks:
            w0 = shard_weights(w, par, r).w0_ENK
            gathered = fused_layer0(world, plan, r, w0, comm=GPU_COMM.replace(pull_to_rows=False), impl="gluon").clone()
            for call in range(2):
                in_place = fused_layer0(world, plan, r, w0, comm=GPU_COMM.replace(pull_to_rows=True), impl="gluon")
                n = int(plan.rank(r).num_rows)
                assert torch.equal(in_place[:n].view(torch.int16), gathered[:n].view(torch.int16)), \
                    f"{act} EP={ep} TP={tp} n_c={nc} rank {r} call {call}: differs from the gathered form"
        world.check()
        lay = world.layout
        for r in world.ranks:
            assert world.buffers(r).flags_F[lay.arrive: lay.arrive + par.world_size].eq(0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("act", ["gelu", "swiglu"])
@pytest.mark.parametrize("to_rows", [False, True])
def test_gpu_layer0_tail_bitwise_equal_to_none(act, to_rows):
    """Layer0's Gluon form with the GEMM's last tiles run on the pull programs' SMs after the pulls
    (CommConfig.l0_tail_pct) against no such tail: every tile written (the output is poisoned before each
    call), bitwise the same, at shares from a few tiles to all of an even share, and the flags reset."""
    from kernels.options import GPU_COMM

    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=4, layers=1, activation=act)
    par = ParallelConfig(ep=4)
    M = 2000
    routing = imbalanced(M=M, E=8, topk=4, std=0.032, seed=5).to("cuda")
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda", max_spin=1 << 20)
    w = _gpu_weights(model)
    stage_tokens(world, random_tokens(M, 512, seed=3, dtype=torch.bfloat16, device="cuda"), M)
    comm = GPU_COMM.replace(pull_to_rows=to_rows)
    for nc in (4, 16):
        plan = make_plan(routing, model, par, HW, GPU_POLICY.replace(nc_layer0=nc, block_n0=64 if act == "swiglu"
                                                                      else 128))
        for r in world.ranks:
            w0 = shard_weights(w, par, r).w0_ENK
            n = int(plan.rank(r).num_rows)
            none = fused_layer0(world, plan, r, w0, comm=comm.replace(l0_tail_pct=0), impl="gluon")[:n].clone()
            for pct in (10, 75, 100):
                world.buffers(r).h_RK.fill_(float("nan"))
                tail = fused_layer0(world, plan, r, w0, comm=comm.replace(l0_tail_pct=pct), impl="gluon")
                assert torch.equal(tail[:n].view(torch.int16), none.view(torch.int16)), \
                    f"{act} pull_to_rows={to_rows} n_c={nc} rank {r} l0_tail_pct={pct}: differs from no tail"
        world.check()
        lay = world.layout
        for r in world.ranks:
            assert world.buffers(r).flags_F[lay.arrive: lay.arrive + par.world_size].eq(0).all()


@pytest.mark.gpu
@pytest.mark.parametrize("topk", [2, 4])
def test_gpu_layer1_tail_shapes_bitwise_equal(topk):
    """Layer1's Gluon form with its tail launch in other shapes (programs per SM, warps, sends a step; the n_c
    programs' step too) and without a tail: the owners' combine buffers (poisoned before each call) bitwise
    the same, at two n_c, and the counts, claims and done counters reset for the next call."""
    from kernels.options import GPU_COMM

    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=topk, layers=1)
    par = ParallelConfig(ep=4)
    M = 2000
    routing = imbalanced(M=M, E=8, topk=topk, std=0.032, seed=topk).to("cuda")
    world = EmulatedWorld(model, par, M, dtype=torch.bfloat16, device="cuda", max_spin=1 << 20)
    w = _gpu_weights(model)
    stage_tokens(world, random_tokens(M, 512, seed=4, dtype=torch.bfloat16, device="cuda"), M)
    shapes = [GPU_COMM, GPU_COMM.replace(tail_per_sm=1, tail_num_warps=8, tail_send_block=64),
              GPU_COMM.replace(tail_per_sm=3, tail_send_block=16, send_block=32)]
    lay = world.layout
    for nc in (4, 16):
        plan = make_plan(routing, model, par, HW, GPU_POLICY.replace(nc_layer1=nc))
        for r in world.ranks:
            fused_layer0(world, plan, r, shard_weights(w, par, r).w0_ENK)
        got = []
        for pol, comm in [(plan.policy.replace(l1_tail=False), GPU_COMM)] + [(plan.policy, c) for c in shapes]:
            p = dataclasses.replace(plan, policy=pol)
            for d in world.ranks:
                world.buffers(d).combine_MLN.fill_(float("nan"))
            for r in world.ranks:
                fused_layer1(world, p, r, shard_weights(w, par, r).w1_EKN, comm=comm, impl="gluon")
            got.append([world.buffers(d).combine_MLN.clone() for d in world.ranks])
            world.check()
            for r in world.ranks:
                assert world.buffers(r).flags_F[lay.l1_col: lay.l1_col + plan.l1_col_blocks].eq(0).all()
                assert int(world.buffers(r).flags_F[lay.l1_claim]) == 0
                assert int(world.buffers(r).flags_F[lay.done_l1]) == 0
            for r in world.ranks:
                combine_reduce(world, p, r, p.rank(r).combine_expected_W)
            world.check()
        for i, other in enumerate(got[1:], 1):
            for d in world.ranks:
                assert torch.equal(other[d].view(torch.int16), got[0][d].view(torch.int16)), \
                    f"topk={topk} n_c={nc} shape {i}: owner {d}'s combine buffer differs from the run without a tail"
