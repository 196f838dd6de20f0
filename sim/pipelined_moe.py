"""The paper's pipelined baselines: FasterMoE and Tutel. Expert parallelism only (TP = 1): FasterMoE supports
nothing else, and Tutel's expert sharding is not modelled.

Both split every owner's (token, expert) rows into Q chunks and overlap the all-to-all of one chunk with the
experts of another, on two streams of each rank:
    compute stream: [FasterMoE: all-to-all of the counts (metadata) and the host sync that sizes its buffers]
                    permute (encode: the rows this rank sends, gathered; memory)
                    for each chunk q: wait dispatch(q) | GEMM0(q) | activation(q) | GEMM1(q)
                    wait every combine(q) | decode (probabilities applied, the top-k rows of each token summed)
    comm stream:    dispatch(0) ... dispatch(Q-1) after the permute; combine(q) once GEMM1(q) is done.
The NCCL kernels of the comm stream hold `nccl_sms` SMs while they run, so a GEMM beside them has fewer
(sim/collectives.py).

"fastermoe": Q = 2 (its pipeline degree), flat all-to-all, experts as a per-expert GEMM loop.
"tutel": Q = SimOptions.chunks (Tutel picks its pipeline degree adaptively; the experiments take the fastest
    of 1, 2, 4, 8), experts as one batched GEMM (grouped), no host sync (fixed capacity), and across nodes its
    2-D hierarchical all-to-all: first among the ranks of a node (each row to the rank with the destination's
    local index), then among the ranks of one local index across nodes.
"""

from __future__ import annotations

from comet.core.plan import Plan
from sim.collectives import GroupCollective
from sim.framework import FrameworkSim
from sim.options import SimOptions

PIPELINED_SYSTEMS = ("fastermoe", "tutel")
FASTERMOE_DEGREE = 2  # FasterMoE's pipeline degree (its smart schedule's default)
_COUNT_BYTES = 8


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
        Q = FASTERMOE_DEGREE if name == "fastermoe" else options.chunks
        super().__init__(plan, options, chunks=Q)
        W, rb, E = self.W, self.row_bytes, plan.experts_per_rank
        everyone = list(range(W))
        hierarchical = name == "tutel" and self.hw.nodes(W) > 1
        self.meta = None
        if name == "fastermoe":
            self.meta = GroupCollective(self, "metadata", 0, everyone,
                                        {(s, d): E * _COUNT_BYTES for s in everyone for d in everyone}, self.nccl)
        # bytes[q][(s, d)]: rows of chunk q that owner s sends to expert rank d
        pair = [{(s, d): float(self.rows_QW[d][q][s]) * rb for d in everyone for s in everyone}
                for q in range(Q)]
        self.dispatch = [self._all_to_all("dispatch", 0, p, hierarchical) for p in pair]
        self.combine = [self._all_to_all("combine", 1, {(d, s): b for (s, d), b in p.items()}, hierarchical)
                        for p in pair]
        env = self.env
        self.permuted = [env.event() for _ in range(W)]
        self.computed = [[env.event() for _ in range(Q)] for _ in range(W)]

    def _all_to_all(self, kind: str, layer: int, pair: dict, hierarchical: bool) -> list[dict[int, GroupCollective]]:
        """The collectives of one all-to-all, in the order a rank joins them: [{rank: its collective}, ...]."""
        W = self.W
        if not hierarchical:
            c = GroupCollective(self, kind, layer, list(range(W)), pair, self.nccl)
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
                c = GroupCollective(self, kind, layer, members, sub, self.nccl)
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


__all__ = ["PipelinedSim", "PIPELINED_SYSTEMS", "FASTERMOE_DEGREE"]
