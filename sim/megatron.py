"""The paper's Megatron baselines: Megatron-core's MoE layer kernel by kernel on one stream, NCCL collectives on
the same stream (no overlap).

Systems: "megatron-cutlass" (experts as a loop of per-expert GEMMs) and "megatron-te" (one grouped GEMM over
the local experts), each with one of Megatron-core's token dispatchers (`SimOptions.dispatcher`):

"allgather" (MoEAllGatherTokenDispatcher, what the paper's runs use), over the EP x TP group of all W ranks:
    all-gather of the routing indices and of the probabilities (metadata), all-gather of the hidden states
    (every rank receives every token), a gather of the rows of this rank's experts (memory), the host sync for
    the split sizes (tokens per expert to the host), the permute by expert (memory), GEMM0, activation, GEMM1,
    the unpermute (probabilities applied, rows un-sorted and scatter-added into a zeroed M x N buffer: memory),
    and a reduce-scatter of that M x N buffer back to the token owners.
"alltoall" (MoEAlltoAllTokenDispatcher): the permute of the rank's (token, expert) rows (memory), an
    all-gather of the tokens-per-expert counts in the EP group (metadata), the host sync for the split sizes,
    the all-to-all of the rows among the ranks of one TP rank, with TP > 1 an all-gather of them in the TP
    group, the sort by local expert when a rank holds several (memory); then the GEMMs; then the reverse:
    un-sort, reduce-scatter in the TP group, all-to-all back, and the unpermute at the owner (probabilities
    applied, top-k rows summed: memory).

Costs: HardwareProfile (launch_overhead_us per kernel, host_sync_us, hbm_gbps, the tile model,
collective_overhead_us and the links for NCCL, sim/collectives.py). The gate (router) is not simulated, as for
every system here.
"""

from __future__ import annotations

from comet.core.plan import Plan
from sim.collectives import GroupCollective, all_gather_pairs, reduce_scatter_pairs
from sim.framework import FrameworkSim
from sim.options import SimOptions

MEGATRON_SYSTEMS = {"megatron-cutlass": "loop", "megatron-te": "grouped"}
_INDEX_BYTES, _PROB_BYTES, _COUNT_BYTES = 8, 4, 8  # int64 expert ids, fp32 probabilities, int64 counts


class MegatronSim(FrameworkSim):
    def __init__(self, plan: Plan, options: SimOptions, name: str):
        if name not in MEGATRON_SYSTEMS:
            raise ValueError(f"unknown Megatron system {name!r}; choose one of {', '.join(MEGATRON_SYSTEMS)}")
        if options.layers != "both":
            raise ValueError(f"{name} simulates the whole MoE layer only; use SimOptions(layers='both')")
        self.name = name
        self.gemm_form = MEGATRON_SYSTEMS[name]
        super().__init__(plan, options)
        self.dispatcher = options.dispatcher
        W = self.W
        rb, topk = self.row_bytes, plan.model.topk
        everyone = list(range(W))
        own = {r: float(self.owned_tokens_W[r]) for r in everyone}
        self.steps = {}  # rank -> its collectives, in the order it joins them
        if self.dispatcher == "allgather":
            meta = [GroupCollective(self, "metadata", 0, everyone,
                                    all_gather_pairs(everyone, {r: own[r] * topk * b for r in everyone}), self.nccl)
                    for b in (_INDEX_BYTES, _PROB_BYTES)]
            gather = GroupCollective(self, "dispatch", 0, everyone,
                                     all_gather_pairs(everyone, {r: own[r] * rb for r in everyone}), self.nccl)
            scatter = GroupCollective(self, "combine", 1, everyone,
                                      reduce_scatter_pairs(everyone, {r: own[r] * rb for r in everyone}), self.nccl)
            self.steps = {r: (meta, [gather], [scatter]) for r in everyone}
        else:
            self._alltoall_collectives(rb)

    def _alltoall_collectives(self, rb: float) -> None:
        W, tp, E = self.W, self.plan.parallel.tp, self.plan.experts_per_rank
        ep_groups = [list(range(j, W, tp)) for j in range(tp)]  # ranks of one TP rank, one per EP group
        tp_groups = [list(range(g, g + tp)) for g in range(0, W, tp)]
        rows_W = [self.rows_QW[r].sum(0) for r in range(W)]  # rows of r's EP group by owner
        # stage 1: owner s sends its rows for EP group g to g's rank of s's TP rank
        a2a_pairs = [{} for _ in range(tp)]
        recv = [0.0] * W  # rows each rank receives in stage 1 (its own rows included)
        for d in range(W):
            j = d % tp
            for s in ep_groups[j]:
                recv[d] += rows_W[d][s]
                if s != d:
                    a2a_pairs[j][(s, d)] = rows_W[d][s] * rb
        counts = [GroupCollective(self, "metadata", 0, g, all_gather_pairs(g, dict.fromkeys(g, E * _COUNT_BYTES)),
                                  self.nccl) for g in ep_groups]
        disp = [GroupCollective(self, "dispatch", 0, g, a2a_pairs[j], self.nccl) for j, g in enumerate(ep_groups)]
        back = [GroupCollective(self, "combine", 1, g, {(d, s): b for (s, d), b in a2a_pairs[j].items()}, self.nccl)
                for j, g in enumerate(ep_groups)]
        tp_gather, tp_scatter = [], []
        if tp > 1:
            tp_gather = [GroupCollective(self, "dispatch", 0, g, all_gather_pairs(g, {r: recv[r] * rb for r in g}),
                                         self.nccl) for g in tp_groups]
            tp_scatter = [GroupCollective(self, "combine", 1, g,
                                          reduce_scatter_pairs(g, {r: recv[r] * rb for r in g}), self.nccl)
                          for g in tp_groups]
        for r in range(W):
            j, g = r % tp, r // tp
            self.steps[r] = ([counts[j]], [disp[j]] + ([tp_gather[g]] if tp > 1 else []),
                             ([tp_scatter[g]] if tp > 1 else []) + [back[j]])

    # ------------------------------------------------------------------------------------ rank
    def rank_process(self, r: int):
        env, rb = self.env, self.row_bytes
        rows_E = self.rows_QE[r].sum(0)
        rows = float(rows_E.sum())
        meta, dispatch, combine = self.steps[r]
        cause = -1
        if self.dispatcher == "allgather":
            for c in meta + dispatch:
                cause = yield from self.collective_step(c, r, cause)
            cause = yield from self.memory_step(r, "permute", 0, 2 * rows * rb, cause)  # rows of local experts
            cause = yield from self.host_sync(r, 0, cause)
            cause = yield from self.memory_step(r, "permute", 0, 2 * rows * rb, cause)  # sorted by expert
        else:
            pairs = float(self.own_pairs_W[r])
            cause = yield from self.memory_step(r, "permute", 0, 2 * pairs * rb, cause)
            for c in meta:
                cause = yield from self.collective_step(c, r, cause)
            cause = yield from self.host_sync(r, 0, cause)
            for c in dispatch:
                cause = yield from self.collective_step(c, r, cause)
            if self.plan.experts_per_rank > 1:
                cause = yield from self.memory_step(r, "permute", 0, 2 * rows * rb, cause)
        cause = yield from self.expert_gemm(r, 0, rows_E, cause)
        if not self.fused_act:
            cause = yield from self.memory_step(r, "activation", 0, rows * self.act_row_bytes, cause)
        self.l0_end[r] = env.now
        cause = yield from self.expert_gemm(r, 1, rows_E, cause)
        if self.dispatcher == "allgather":
            # probabilities applied (2 rows), un-sorted (2 rows), a zeroed M x N buffer, scatter-added (2 rows)
            nbytes = 6 * rows * rb + self.plan.num_tokens * rb
            cause = yield from self.memory_step(r, "unpermute", 1, nbytes, cause)
            for c in combine:
                cause = yield from self.collective_step(c, r, cause)
        else:
            if self.plan.experts_per_rank > 1:
                cause = yield from self.memory_step(r, "unpermute", 1, 2 * rows * rb, cause)
            for c in combine:
                cause = yield from self.collective_step(c, r, cause)
            # at the owner: probabilities applied and the top-k rows of each token summed
            pairs = float(self.own_pairs_W[r])
            nbytes = 2 * pairs * rb + float(self.owned_tokens_W[r]) * rb
            cause = yield from self.memory_step(r, "unpermute", 1, nbytes, cause)
        self.end[r] = env.now


__all__ = ["MegatronSim", "MEGATRON_SYSTEMS"]
