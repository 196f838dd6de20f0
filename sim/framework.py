"""What the paper's framework baselines share (sim/megatron.py, sim/pipelined_moe.py): kernel-by-kernel steps
on a rank's stream, as an eager PyTorch framework issues them.

- every kernel pays `launch_overhead_us` first (the stream runs behind the host: after a host sync, and in
  eager mode generally, the GPU waits for each launch);
- a host sync (`host_sync`: split sizes copied to the host so that buffers can be sized there) drains the
  stream and costs `host_sync_us`;
- memory-bound kernels (permute, unpermute, activation, decode) stream their bytes at `hbm_gbps`;
- expert GEMMs are either one grouped GEMM over every local expert ("grouped": one launch, one tile queue,
  Transformer Engine / Tutel's batched matmul) or one GEMM per expert ("loop": a launch and a wave tail per
  expert, as a per-expert loop of CUTLASS / cuBLAS GEMMs runs them);
- collectives are sim.collectives.GroupCollective (NCCL: fixed cost, then the link rate; its SMs held);
  a pipelined system's GEMMs (Q > 1) run beside them and have link_gbps less HBM bandwidth for their floor;
  an NCCL kernel launched beside a GEMM gets its SMs once the GEMM has handed out its last tile (streams of
  equal priority; sim.collectives.NcclSMs, SimOptions.nccl_priority).

Rows here are (token, expert) pairs, as these frameworks move them: a token routed to two experts of one rank
is sent twice (the Plan's all-to-all sends it once; comet reads it once).
Suffix letters: docs/SHAPES.md (W ranks, E local experts, R rows of a rank's shared tensor, Q chunks).
"""

from __future__ import annotations

import numpy as np

from comet.core import ownership
from comet.core.events import TRACK_STREAM, K
from comet.core.plan import Plan
from sim.collectives import NcclSMs
from sim.engine import SystemSim, grouped_gemm_tiles
from sim.options import SimOptions

GEMM_FORMS = ("grouped", "loop")


class FrameworkSim(SystemSim):
    """Base of the paper's baselines: per-rank rows by owner (and by token chunk), GEMM kernels, host syncs."""

    gemm_form = "grouped"

    def __init__(self, plan: Plan, options: SimOptions, chunks: int = 1):
        super().__init__(plan, options)
        hw, W = self.hw, self.W
        self.nccl = (NcclSMs(self.env, W, min(hw.nccl_sms, self.sms - 1), self.sms, options.nccl_priority)
                     if hw.nccl_sms else None)
        self.Q = chunks
        self.padded = options.tile_rows == "padded"
        E = plan.experts_per_rank
        owner = plan.token_owner_M.numpy()
        chunk_M = ownership.token_chunk(plan.num_tokens, W, chunks).numpy()
        self.owned_tokens_W = np.bincount(owner, minlength=W)
        # pair rows of each rank's shared tensor: [rank] (Q, W) rows per chunk and owner, (Q, E) per chunk and expert,
        # (W, E) per owner and expert
        self.rows_QW, self.rows_QE, self.rows_WE = [], [], []
        for r in range(W):
            t = {k: v.numpy() for k, v in plan.rank(r).trimmed().items()}
            tok = t["row_token_R"]
            expert_R = np.repeat(np.arange(E), np.diff(t["expert_offsets_E1"]))
            q_R = chunk_M[tok]
            self.rows_QW.append(np.bincount(q_R * W + owner[tok], minlength=chunks * W).reshape(chunks, W))
            self.rows_QE.append(np.bincount(q_R * E + expert_R, minlength=chunks * E).reshape(chunks, E))
            self.rows_WE.append(np.bincount(owner[tok] * E + expert_R, minlength=W * E).reshape(W, E))
        # pair rows each owner sends out (all chunks): what its permute gathers and its decode reads
        self.own_pairs_W = np.zeros(W, dtype=np.int64)
        for g in self._ep_group_heads():
            self.own_pairs_W += self.rows_QW[g].sum(0)

    def _ep_group_heads(self) -> list[int]:
        """One rank per EP group (its TP rank 0): the ranks whose rows, together, are every pair once."""
        tp = self.plan.parallel.tp
        return list(range(0, self.W, tp))

    # ------------------------------------------------------------------------------------ steps
    def host_sync(self, r: int, layer: int, cause: int):
        start = self.env.now
        yield self.env.timeout(self.hw.host_sync_us)
        return self.record(r, TRACK_STREAM, K["host_sync"], layer, start, self.env.now, cause=cause)

    def memory_step(self, r: int, kind: str, layer: int, nbytes: float, cause: int):
        """A launch and a memory-bound kernel of `nbytes` (read + written); nothing when nbytes is 0."""
        if nbytes <= 0:
            return cause
        cause = yield from self.launch(r, layer, cause)
        return (yield from self.memory_kernel(r, kind, layer, nbytes, cause))

    def expert_gemm(self, r: int, layer: int, rows_E: np.ndarray, cause: int):
        """One grouped GEMM over rows_E (one launch), or one GEMM per expert with rows (gemm_form "loop")."""
        groups = [rows_E] if self.gemm_form == "grouped" else [np.where(np.arange(rows_E.size) == e, rows_E, 0)
                                                                 for e in np.flatnonzero(rows_E)]
        for g in groups:
            tiles = grouped_gemm_tiles(self.plan, layer, g, self.padded, self.options.memory_floor,
                                       self.hw.link_gbps if self.Q > 1 else 0.0)
            if tiles:
                cause = yield from self.launch(r, layer, cause)
                if self.nccl is not None:
                    tiles = self.nccl.feed(r, tiles)  # a collective launched beside it waits for its last tile
                cause = yield from self.gemm_kernel(r, layer, tiles, cause, nccl=self.nccl)
        return cause

    def collective_step(self, coll, r: int, cause: int):
        """Join `coll` from rank r's stream and wait until r's part is done."""
        ev = coll.join(r, cause)
        yield ev
        return ev.value


__all__ = ["FrameworkSim", "GEMM_FORMS"]
