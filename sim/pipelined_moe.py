"""The paper's pipelined baselines: FasterMoE and Tutel. Expert parallelism only (TP = 1): FasterMoE supports
nothing else, and Tutel's expert sharding is not modelled.

Both split the (token, expert) rows into Q chunks (each its own way, below) and overlap the all-to-all of one
chunk with the experts of another, on two streams of each rank:
    compute stream: [FasterMoE: all-to-all of the counts (metadata) and the host sync that sizes its buffers]
                    permute (encode: the rows this rank sends, gathered; memory)
                    for each chunk q: wait dispatch(q) | GEMM0(q) | activation(q) | GEMM1(q)
                    wait every combine(q) | decode (probabilities applied, the top-k rows of each token summed)
    comm stream:    dispatch(0) ... dispatch(Q-1) after the permute; combine(q) once GEMM1(q) is done.
The NCCL kernels of the comm stream hold `nccl_sms` SMs while they run, so a GEMM beside them has fewer
(sim/collectives.py).

"fastermoe": its group-wise exchange (smart scheduling): W / 4 steps (fastermoe_degree; 2 at W = 8), step q
    receiving the rows of the worker group q groups away (step 0 its own group, its own rows included), flat
    all-to-all, experts as a per-expert GEMM loop.
"tutel": Q = SimOptions.chunks (Tutel picks its pipeline degree adaptively; the experiments take the fastest
    of 1, 2, 4, 8), experts as one batched GEMM (grouped): one capacity for every (source, expert)
    (TUTEL_CAPACITY_FACTOR: static, Tutel's default; where that would drop rows, dynamic, the largest pair's rows,
    found by an all-reduce the host reads: TUTEL_DROP_ROWS), its slots split into Q equal chunks along the capacity
    dimension, padding moved and computed; and across nodes its 2-D hierarchical all-to-all: first
    among the ranks of a node (each row to the rank with the destination's local index), then among the ranks of
    one local index across nodes.
Both issue NCCL from C++ on one side stream of default priority (tutel/custom/custom_kernel.cpp
nccl_all_to_all_scatter_async / _gather_async: one ncclGroupStart/Send/Recv/End per chunk, in order; fastmoe
cuda/fastermoe/smart_schedule.h), so a chunk's collectives run one after another, never two at once, and the
chunks' expert kernels run one after another on the compute stream; a collective pays NCCL's device latency
(no host call path: the host runs ahead) and gets its SMs once the GEMM beside it has handed out its last tile
(sim.collectives).
"""

from __future__ import annotations

import numpy as np

from comet.core.plan import Plan
from sim.collectives import GroupCollective
from sim.framework import FrameworkSim
from sim.options import SimOptions

PIPELINED_SYSTEMS = ("fastermoe", "tutel")
# FasterMoE's group-wise exchange: workers in groups of FMOE_FASTER_GROUP_SIZE, default 4 (fastmoe
# cuda/fastermoe/smart_schedule.cpp; at most W); step q exchanges with the group q away, so the pipeline degree is
# W / group size: 2 at W = 8
FASTERMOE_GROUP_SIZE = 4
FASTERMOE_DEGREE = 2  # at W = 8 (fastermoe_degree)
# Tutel's capacity factor (tutel/impls/fast_dispatch.py extract_critical): > 0 a static capacity, topk x
# int(factor x tokens per rank / experts) slots per (source rank, expert), rows past it dropped (1.0 is Tutel's
# default, CAP_FACTOR); 0 the dynamic one, the largest (source, expert) count all-reduced over the ranks, so no row is
# dropped (< 0: that, at most -factor's static capacity). Here Tutel's default, 1.0 (the paper does not say which
# its runs used), which drops no row of a balanced routing; where it would (TUTEL_DROP_ROWS), the dynamic one, at an
# all-reduce the host reads, and a capacity above the mean whose ragged row tiles per chunk can make pipelining cost
# a wave. Either way rounded up to a multiple of the pipeline degree, empty slots padded.
TUTEL_CAPACITY_FACTOR = 1.0
# where the static capacity would drop rows (imbalanced routing), Tutel runs its dynamic capacity instead, so that
# every system computes every row, as a latency comparison needs; True: it drops them, as Tutel at factor 1.0 would
TUTEL_DROP_ROWS = False
_COUNT_BYTES = 8


def fastermoe_degree(world: int, group_size: int = FASTERMOE_GROUP_SIZE) -> int:
    """FasterMoE's pipeline degree over `world` ranks: its number of worker groups.

        >>> fastermoe_degree(8), fastermoe_degree(4), fastermoe_degree(16)
        (2, 1, 4)
    """
    g = min(group_size, world)
    return max(1, world // g)


def tutel_capacity(plan: Plan, degree: int, factor: float = TUTEL_CAPACITY_FACTOR,
                   max_pair_rows: int | None = None) -> int:
    """Tutel's capacity: slots per (source rank, global expert), a multiple of the pipeline degree. factor <= 0
    (dynamic) needs max_pair_rows, the largest number of rows any source sends any expert.

        >>> from sim.run import make_case
        >>> plan = make_case("mixtral-8x7b", ep=8, tokens=16384, hw="h800")
        >>> tutel_capacity(plan, 4, factor=1.0), tutel_capacity(plan, 4, factor=0.0, max_pair_rows=530)
        (512, 532)
    """
    m = plan.model
    static = m.topk * int(abs(factor) * (plan.num_tokens // plan.world_size) / m.experts_E)
    if factor > 0:
        c = static
    elif max_pair_rows is None:
        raise ValueError("tutel_capacity: a dynamic capacity (factor <= 0) needs max_pair_rows")
    else:
        c = max_pair_rows if factor == 0 else min(max_pair_rows, static)
    return -(-max(c, 1) // degree) * degree


class PipelinedSim(FrameworkSim):
    def __init__(self, plan: Plan, options: SimOptions, name: str):
        if name not in PIPELINED_SYSTEMS:
            raise ValueError(f"unknown pipelined system {name!r}; choose one of {', '.join(PIPELINED_SYSTEMS)}")
        if plan.parallel.tp != 1:
            raise ValueError(f"{name} runs expert parallelism only (TP = 1), got TP = {plan.parallel.tp}; "
                             f"use megatron-cutlass / megatron-te or comet for TP > 1")
        if options.layers != "both":
            raise ValueError(f"{name} simulates the whole MoE layer only; use SimOptions(layers='both')")
        self.name = name
        self.gemm_form = "loop" if name == "fastermoe" else "grouped"
        Q = fastermoe_degree(plan.world_size) if name == "fastermoe" else options.chunks
        super().__init__(plan, options, chunks=Q)
        W, rb, E = self.W, self.row_bytes, plan.experts_per_rank
        self.capacity = None
        self.tutel_dynamic = False
        if name == "tutel":
            most = max(int(w.max()) for w in self.rows_WE)
            factor = TUTEL_CAPACITY_FACTOR
            if factor > 0 and not TUTEL_DROP_ROWS and most > tutel_capacity(plan, Q, factor):
                factor = 0.0  # the static capacity would drop rows
            self.tutel_dynamic = factor <= 0
            self._fixed_capacity(tutel_capacity(plan, Q, factor, max_pair_rows=most))
        else:
            self._group_exchange()
        everyone = list(range(W))
        hierarchical = name == "tutel" and self.hw.nodes(W) > 1
        self.meta = None
        if name == "fastermoe":
            self.meta = GroupCollective(self, "metadata", 0, everyone,
                                        {(s, d): E * _COUNT_BYTES for s in everyone for d in everyone}, self.nccl,
                                        host_path=False)
        elif self.tutel_dynamic:  # the dynamic capacity: an all-reduce (torch.distributed) read on the host
            self.meta = GroupCollective(self, "metadata", 0, everyone,
                                        {(s, d): _COUNT_BYTES for s in everyone for d in everyone}, self.nccl,
                                        host_path=True)
        # bytes[q][(s, d)]: rows of chunk q that owner s sends to expert rank d
        pair = [{(s, d): float(self.rows_QW[d][q][s]) * rb for d in everyone for s in everyone}
                for q in range(Q)]
        self.dispatch = [self._all_to_all("dispatch", 0, p, hierarchical) for p in pair]
        self.combine = [self._all_to_all("combine", 1, {(d, s): b for (s, d), b in p.items()}, hierarchical)
                        for p in pair]
        env = self.env
        self.permuted = [env.event() for _ in range(W)]
        self.computed = [[env.event() for _ in range(Q)] for _ in range(W)]

    def _fixed_capacity(self, capacity: int) -> None:
        """Tutel's dispatch: every source sends every global expert `capacity` slots (its rows, dropped past the
        capacity, or zero padding), and the pipeline splits the capacity dimension into Q equal parts
        (tutel/impls/overlap.py, split_dim = 1): chunk q of a local expert is W x capacity / Q rows, capacity / Q
        from each source. So every chunk is the same size, and padded slots are moved and computed too."""
        W, Q, E = self.W, self.Q, self.plan.experts_per_rank
        self.capacity = capacity
        per = capacity // Q
        self.rows_QW = [np.full((Q, W), E * per, dtype=np.int64) for _ in range(W)]
        self.rows_QE = [np.full((Q, E), W * per, dtype=np.int64) for _ in range(W)]
        self.own_pairs_W = np.full(W, W * E * capacity, dtype=np.int64)

    def _group_exchange(self) -> None:
        """FasterMoE's chunks: step q of rank r receives every row of the sources in the worker group q groups
        before r's (fastmoe smart_schedule.h, GEN_BASE), step 0 being r's own group (its own rows included)."""
        W, Q = self.W, self.Q
        g = W // Q  # group size
        group = np.arange(W) // g
        for r in range(W):
            step = (group[r] - group) % Q  # the step in which r receives from each source
            we = self.rows_WE[r]
            self.rows_QW[r] = np.stack([np.where(step == q, we.sum(1), 0) for q in range(Q)])
            self.rows_QE[r] = np.stack([we[step == q].sum(0) for q in range(Q)])

    def _all_to_all(self, kind: str, layer: int, pair: dict, hierarchical: bool) -> list[dict[int, GroupCollective]]:
        """The collectives of one all-to-all, in the order a rank joins them: [{rank: its collective}, ...]."""
        W = self.W
        if not hierarchical:
            c = GroupCollective(self, kind, layer, list(range(W)), pair, self.nccl, host_path=False)
            return [dict.fromkeys(range(W), c)]
        hw = self.hw
        node, local = [hw.node_of(r) for r in range(W)], [r % hw.ranks_per_node for r in range(W)]
        rpn = hw.ranks_per_node
        # stage 1 within a node: s -> the rank of s's node with d's local index; stage 2 across nodes
        stage1, stage2 = {}, {}
        for (s, d), b in pair.items():
            hop = node[s] * rpn + local[d]
            stage1[(s, hop)] = stage1.get((s, hop), 0.0) + b
            stage2[(hop, d)] = stage2.get((hop, d), 0.0) + b
        steps = []
        for pairs, group_of in ((stage1, node), (stage2, local)):
            by_group = {}
            for g in sorted(set(group_of)):
                members = [r for r in range(W) if group_of[r] == g]
                sub = {sd: b for sd, b in pairs.items() if group_of[sd[0]] == g}
                c = GroupCollective(self, kind, layer, members, sub, self.nccl, host_path=False)
                by_group.update(dict.fromkeys(members, c))
            steps.append(by_group)
        return steps

    # ------------------------------------------------------------------------------------ rank
    def rank_process(self, r: int):
        self.env.process(self._comm_stream(r))
        return self._compute_stream(r)

    def _compute_stream(self, r: int):
        env, rb, Q = self.env, self.row_bytes, self.Q
        cause = -1
        if self.meta is not None:
            cause = yield from self.collective_step(self.meta, r, cause)
            cause = yield from self.host_sync(r, 0, cause)
        pairs = float(self.own_pairs_W[r])
        cause = yield from self.memory_step(r, "permute", 0, 2 * pairs * rb, cause)
        self.permuted[r].succeed(cause)
        for q in range(Q):
            cause = yield from self._wait_steps(self.dispatch[q], r, cause)
            rows_E = self.rows_QE[r][q]
            rows = float(rows_E.sum())
            cause = yield from self.expert_gemm(r, 0, rows_E, cause)
            if not self.fused_act:
                cause = yield from self.memory_step(r, "activation", 0, rows * self.act_row_bytes, cause)
            if q == Q - 1:
                self.l0_end[r] = env.now
            cause = yield from self.expert_gemm(r, 1, rows_E, cause)
            self.computed[r][q].succeed(cause)
        for q in range(Q):
            cause = yield from self._wait_steps(self.combine[q], r, cause)
        nbytes = pairs * rb + float(self.owned_tokens_W[r]) * rb  # read every returned row, write one per token
        cause = yield from self.memory_step(r, "unpermute", 1, nbytes, cause)
        self.end[r] = env.now

    @staticmethod
    def _wait_steps(steps, r: int, cause: int):
        """Wait until rank r's part of every step's collective is done (the comm stream runs them); returns the
        record index of the last part it had to wait for, else `cause`."""
        for step in steps:
            ev = step[r].done[r]
            if ev.callbacks is not None:
                yield ev
                cause = ev.value
        return cause

    def _comm_stream(self, r: int):
        ev = self.permuted[r]
        if ev.callbacks is not None:
            yield ev
        cause = ev.value
        for q in range(self.Q):
            for step in self.dispatch[q]:
                cause = yield from self.collective_step(step[r], r, cause)
        for q in range(self.Q):
            ev = self.computed[r][q]
            if ev.callbacks is not None:
                yield ev
            cause = ev.value
            for step in self.combine[q]:
                cause = yield from self.collective_step(step[r], r, cause)


__all__ = ["PipelinedSim", "PIPELINED_SYSTEMS", "FASTERMOE_DEGREE", "FASTERMOE_GROUP_SIZE", "fastermoe_degree",
           "TUTEL_CAPACITY_FACTOR", "TUTEL_DROP_ROWS", "tutel_capacity"]
