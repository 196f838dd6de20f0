"""The fused kernels' workspace: buffers, flags, peer-address tables and status, created once per process
group and reused by every call and layer; and `EmulatedWorld`, W ranks in one process.

Shapes (docs/SHAPES.md): M tokens (M_cap: the capacity; M_own = ceil(M_cap / W) owned by a rank), N hidden,
K/TP layer0 output columns, R rows of a rank's shared tensor (R_max = M_cap * min(topk, E_local)), L combine
slots per token (min(topk, EP) * TP), W ranks, F flags.

Per rank:
    recv_MN      (M_cap, N)      symmetric  token rows by global token id (the owner's own rows, then those
                                            pulled in layer0); the paper's M x N symmetric buffer
                                            (docs/PAPER_NOTES.md, memory)
    combine_MLN  (M_own, L, N)   symmetric  partial sums arriving at the owner, slot = Plan.send_slot_S
    sflags_F     int32           symmetric  [combine flags W x col_max | barrier flags W]: written by peers
    flags_F      int32           local      [layer0 arrival W | layer0 copy-engine W | layer1 column counts
                                            col_max | done counters 2, layer1 claim counter | reduce done per column
                                            col_max]
    status       int32 (8,)      local      timeout record (kernels/signals.py)
    h_RK         (R_max, K/TP)   local      layer0 output = layer1 input
    y_RN         (R_max, N)      local      layer1 GEMM output before the top-k reduction
    *_ptrs_W     int64 (W,)      local      every rank's address of recv_MN / combine_MLN / sflags_F
Sizes come from comet.core.plan.plan_bounds for the capacity; the combine buffer uses `combine_dtype` (the
tokens' dtype unless asked otherwise). col_max = ceil(N / 16), enough for any block_n1.

Flags need no host-side clearing between calls: count flags are reset by the last program of the launch
that consumed them, copy-engine flags hold a per-rank epoch (a host-side counter advanced at every
copy-engine launch, so no sync). Buffers are poisoned with NaN at creation so that an unwritten row shows
up in tests.

`check()` reads every status buffer (one host sync: ~10-50 us plus draining the stream, so call it in debug
runs, tests, or every few hundred calls) and raises FlagTimeoutError naming the flag; `reset()` clears
flags and status after such an error (host sync).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.plan import plan_bounds
from comet.core.policy import Policy
from kernels.signals import STATUS_LEN, FlagTimeoutError, describe_status

DEFAULT_MAX_SPIN = 1 << 22  # polls of ~0.5 us each on an H200: a wait gives up after ~2 s


class WorkspaceCapacityError(ValueError):
    """A call needs more tokens (bytes) than the workspace was created for."""


@dataclass(frozen=True)
class FlagLayout:
    """Offsets (in int32 elements) of every flag group; see the module docstring."""

    world: int
    col_max: int

    # local flags_F
    @property
    def arrive(self) -> int:
        return 0

    @property
    def copy(self) -> int:
        return self.world

    @property
    def l1_col(self) -> int:
        return 2 * self.world

    @property
    def done_l0(self) -> int:
        return 2 * self.world + self.col_max

    @property
    def done_l1(self) -> int:
        return self.done_l0 + 1

    @property
    def l1_claim(self) -> int:
        """layer1's item claim counter (kernels/fused_layer1_comm.py `claim_item`)."""
        return self.done_l0 + 2

    @property
    def red_done(self) -> int:
        return self.done_l0 + 3

    @property
    def local_len(self) -> int:
        return self.red_done + self.col_max

    # symmetric sflags_F
    @property
    def combine(self) -> int:
        return 0

    @property
    def barrier(self) -> int:
        return self.world * self.col_max

    @property
    def sym_len(self) -> int:
        return self.barrier + self.world


@dataclass(frozen=True)
class WorkspaceSizes:
    """Elements of each buffer for a capacity (per rank)."""

    tokens: int  # M_cap
    recv_rows: int  # M_cap
    own_rows: int  # ceil(M_cap / W)
    slots: int  # L: combine slots per token
    rows: int  # R_max
    hidden: int
    ffn_local: int
    layout: FlagLayout

    def bytes(self, elem: int, combine_elem: int) -> dict[str, int]:
        return {"recv": self.recv_rows * self.hidden * elem,
                "combine": self.own_rows * self.slots * self.hidden * combine_elem,
                "layer0_out": self.rows * self.ffn_local * elem, "layer1_out": self.rows * self.hidden * elem,
                "flags": 4 * (self.layout.local_len + self.layout.sym_len)}


def workspace_sizes(M: int, model: ModelConfig, parallel: ParallelConfig) -> WorkspaceSizes:
    W = parallel.world_size
    b = plan_bounds(M, model, parallel, Policy())
    return WorkspaceSizes(tokens=M, recv_rows=M, own_rows=math.ceil(M / W),
                          slots=min(model.topk, parallel.ep) * parallel.tp, rows=b["R"], hidden=model.hidden_N,
                          ffn_local=model.ffn_K // parallel.tp,
                          layout=FlagLayout(W, math.ceil(model.hidden_N / 16)))


@dataclass(frozen=True)
class RankBuffers:
    """One rank's views (see the module docstring for shapes); lifetime: the workspace's."""

    rank: int
    recv_MN: torch.Tensor
    combine_MLN: torch.Tensor
    sflags_F: torch.Tensor
    flags_F: torch.Tensor
    status: torch.Tensor
    h_RK: torch.Tensor
    y_RN: torch.Tensor
    recv_ptrs_W: torch.Tensor
    combine_ptrs_W: torch.Tensor
    sflag_ptrs_W: torch.Tensor
    # int64 (W,): what each source's arrival flag reaches in layer0's pull_to_rows form, written by each call
    # (kernels/fused_layer0_gluon.py); here, not allocated per call, so that no launch of a CUDA graph's next call
    # can be handed its memory while this call's GEMM still reads it
    l0_targets_W: torch.Tensor


class Workspace:
    """What both backends share: sizes, capacity checks, the epoch counter, check() and reset().

    Subclasses set `ranks` (the ranks this process runs), `_bufs` (rank -> RankBuffers) and implement
    `peer_recv`, `barrier` and `side_stream`.
    """

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, capacity_tokens: int, dtype: torch.dtype,
                 combine_dtype: torch.dtype | None, device, max_spin: int):
        parallel.validate(model)
        if capacity_tokens < 1:
            raise ValueError(f"capacity_tokens must be >= 1, got {capacity_tokens}")
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"dtype must be float16, bfloat16 or float32, got {dtype}")
        if max_spin < 1:
            raise ValueError(f"max_spin must be >= 1, got {max_spin}")
        self.model, self.parallel = model, parallel
        self.capacity_tokens = capacity_tokens
        self.dtype = dtype
        self.combine_dtype = combine_dtype or dtype
        self.device = torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:  # so that "cuda" == x.device ("cuda:0")
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.max_spin = max_spin
        self.sizes = workspace_sizes(capacity_tokens, model, parallel)
        self.layout = self.sizes.layout
        self.world_size = parallel.world_size
        self.epoch = 0
        self._copy_epoch: dict[int, int] = {}
        self._side: dict[int, torch.cuda.Stream] = {}
        self.ranks: tuple[int, ...] = ()
        self._bufs: dict[int, RankBuffers] = {}

    # ------------------------------------------------------------------------------------ per call
    def buffers(self, rank: int) -> RankBuffers:
        if rank not in self._bufs:
            raise KeyError(f"rank {rank} is not run by this workspace (it runs ranks {list(self.ranks)})")
        return self._bufs[rank]

    def bytes_per_rank(self) -> dict[str, int]:
        return self.sizes.bytes(torch.finfo(self.dtype).bits // 8, torch.finfo(self.combine_dtype).bits // 8)

    def check_capacity(self, M: int) -> None:
        """Raise WorkspaceCapacityError if a call with M tokens does not fit (shapes only, no sync)."""
        if M <= self.capacity_tokens:
            return
        need = workspace_sizes(M, self.model, self.parallel).bytes(
            torch.finfo(self.dtype).bits // 8, torch.finfo(self.combine_dtype).bits // 8)
        have = self.bytes_per_rank()
        worst = [k for k in need if need[k] > have[k]]
        detail = ", ".join(f"{k} {need[k]} bytes needed, {have[k]} available" for k in worst)
        raise WorkspaceCapacityError(
            f"a routing of M={M} tokens needs more than this workspace holds (capacity {self.capacity_tokens} "
            f"tokens): {detail}; create the workspace with capacity_tokens >= {M}")

    def check_plan(self, plan) -> None:
        """The plan's shapes must match the workspace (model dims, world size, capacity)."""
        m, p = plan.model, plan.parallel
        if (m.hidden_N, m.ffn_K, m.experts_E, m.topk) != (self.model.hidden_N, self.model.ffn_K,
                                                          self.model.experts_E, self.model.topk):
            raise ValueError(f"plan model {m.name} (N={m.hidden_N}, K={m.ffn_K}, E={m.experts_E}, topk={m.topk}) "
                             f"differs from the workspace's {self.model.name}")
        if (p.ep, p.tp) != (self.parallel.ep, self.parallel.tp):
            raise ValueError(f"plan parallelism EP={p.ep} TP={p.tp} differs from the workspace's "
                             f"EP={self.parallel.ep} TP={self.parallel.tp}")
        self.check_capacity(plan.num_tokens)
        if plan.policy.block_n1 < 16:
            raise ValueError(f"block_n1={plan.policy.block_n1} < 16: the combine flags hold ceil(N/16) column "
                             f"blocks per source")

    def begin_call(self, M: int) -> int:
        """Check capacity and advance the epoch (a positive int32, host-side: no sync). Returns it."""
        self.check_capacity(M)
        self.epoch = self.epoch % (2**31 - 2) + 1
        return self.epoch

    def next_copy_epoch(self, rank: int) -> int:
        """The value the copy-engine flags of `rank` take at its next layer0 launch (host counter, no sync)."""
        self._copy_epoch[rank] = self._copy_epoch.get(rank, 0) % (2**31 - 2) + 1
        return self._copy_epoch[rank]

    # ------------------------------------------------------------------------------- health
    def check(self) -> None:
        """Raise FlagTimeoutError if any kernel of any rank here recorded a timed-out wait (host sync)."""
        msgs = []
        for r in self.ranks:
            st = self._bufs[r].status.tolist()
            msg = describe_status(st, self.layout.col_max, self.max_spin)
            if msg:
                msgs.append(msg)
        if msgs:
            raise FlagTimeoutError("; ".join(msgs) + ". A producer never signalled (a rank's kernel not "
                                   "launched, failed or stuck, or plans that disagree between ranks); call "
                                   "workspace.reset() before the next call")

    def reset(self) -> None:
        """Zero every flag and status buffer of this process's ranks and the epoch (host sync)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        for r in self.ranks:
            b = self._bufs[r]
            b.flags_F.zero_()
            b.sflags_F.zero_()
            b.status.zero_()
        self.epoch = 0
        self._copy_epoch.clear()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.barrier()

    # --------------------------------------------------------------------------- backend hooks
    def peer_recv(self, rank: int, peer: int) -> torch.Tensor:
        """Peer `peer`'s recv_MN as a tensor usable by `rank`'s process (for copy_)."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Device-side barrier of all ranks (no host sync); a no-op where launches are already ordered."""
        raise NotImplementedError

    def side_stream(self, rank: int) -> torch.cuda.Stream:
        if rank not in self._side:
            self._side[rank] = torch.cuda.Stream(self.device)
        return self._side[rank]


def _poisoned(shape, dtype, device) -> torch.Tensor:
    return torch.full(shape, float("nan"), dtype=dtype, device=device)


class EmulatedWorld(Workspace):
    """W = EP x TP ranks in one process: each rank's buffers are ordinary tensors of this process (on the
    CPU for Triton's interpreter, or all on one GPU), and the peer tables hold their addresses.

    Launch ranks' kernels one after another in an order where no launch waits on a later one: every rank's
    tokens staged, then every rank's layer0, every rank's layer1, then every owner's reduce
    (kernels.moe.moe_forward_fused does this). Peer traffic is local memory traffic, not NVLink.

        >>> from comet.core.config import ModelConfig, ParallelConfig
        >>> m = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
        >>> world = EmulatedWorld(m, ParallelConfig(ep=2), capacity_tokens=64, dtype=torch.float32)
        >>> world.buffers(1).recv_MN.shape, world.buffers(1).combine_MLN.shape
        (torch.Size([64, 32]), torch.Size([32, 2, 32]))
    """

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, capacity_tokens: int, *,
                 dtype: torch.dtype = torch.bfloat16, device="cpu", combine_dtype: torch.dtype | None = None,
                 max_spin: int = DEFAULT_MAX_SPIN):
        super().__init__(model, parallel, capacity_tokens, dtype, combine_dtype, device, max_spin)
        W, sz, lay, dev = self.world_size, self.sizes, self.layout, self.device
        recv = [_poisoned((sz.recv_rows, sz.hidden), dtype, dev) for _ in range(W)]
        comb = [_poisoned((sz.own_rows, sz.slots, sz.hidden), self.combine_dtype, dev) for _ in range(W)]
        sflags = [torch.zeros(lay.sym_len, dtype=torch.int32, device=dev) for _ in range(W)]

        def table(ts):
            # the kernels tell Triton that peer buffers are 16-byte aligned (vectorised peer loads/stores)
            assert all(t.data_ptr() % 16 == 0 for t in ts), "peer buffers must be 16-byte aligned"
            return torch.tensor([t.data_ptr() for t in ts], dtype=torch.int64, device=dev)

        recv_ptrs, comb_ptrs, sflag_ptrs = table(recv), table(comb), table(sflags)
        self.ranks = tuple(range(W))
        for r in range(W):
            self._bufs[r] = RankBuffers(
                rank=r, recv_MN=recv[r], combine_MLN=comb[r], sflags_F=sflags[r],
                flags_F=torch.zeros(lay.local_len, dtype=torch.int32, device=dev),
                status=torch.zeros(STATUS_LEN, dtype=torch.int32, device=dev),
                h_RK=_poisoned((sz.rows, sz.ffn_local), dtype, dev), y_RN=_poisoned((sz.rows, sz.hidden), dtype, dev),
                recv_ptrs_W=recv_ptrs, combine_ptrs_W=comb_ptrs, sflag_ptrs_W=sflag_ptrs,
                l0_targets_W=torch.zeros(W, dtype=torch.int64, device=dev))

    def peer_recv(self, rank: int, peer: int) -> torch.Tensor:
        return self._bufs[peer].recv_MN

    def barrier(self) -> None:
        return None
