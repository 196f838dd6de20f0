"""`SymmetricWorkspace`: the fused kernels' workspace on a real process group (one GPU per process),
through torch.distributed._symmetric_memory; and a device-side barrier kernel.

One symmetric allocation per process holds [recv_MN | combine_MLN | sflags_F] at the same offsets on every
rank; `rendezvous` gives every rank's address of it (Triton loads and stores through those addresses cross
NVLink: docs/GPU_FACTS.md). Local buffers (flags_F, status, h_RK, y_RN) are ordinary allocations. Layout and
lifetimes as kernels/workspace.py.

Launch with torchrun, one process per GPU, NVLS/multicast off (docs/GPU_FACTS.md):
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \
        torchrun --nproc-per-node=4 -m pytest -m multigpu tests/test_fused_multigpu.py
Each call: stage own rows -> barrier -> layer0 -> layer1 -> reduce -> barrier (kernels.moe). The two
barriers are device-side (one small kernel each, no host sync): the first makes every owner's rows visible
before peers pull them, the second keeps the next call from overwriting receive or combine buffers that
a peer still reads. Cost: one NVLink round trip each (a flag's one-way latency: docs/GPU_FACTS.md).
"""

from __future__ import annotations

import os
import warnings

import torch
import triton.language as tl

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.jit import jit
from kernels.signals import STATUS_LEN, wait_flag
from kernels.workspace import DEFAULT_MAX_SPIN, RankBuffers, Workspace

_WAIT_BARRIER = tl.constexpr(5)  # kernels.signals.WAIT_BARRIER
NVLS_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
_ALIGN = 512


@jit()
def _barrier_kernel(sflag_peers_ptr, sflags_ptr, status_ptr, count_ptr, rank, world, barrier_off, max_spin):
    # --- this barrier's value: a per-rank counter in device memory (no host counter: CUDA-graph replays
    # advance it too); every rank passes the same barriers, so the counters agree
    value = tl.load(count_ptr) + 1
    tl.debug_barrier()
    tl.store(count_ptr, value)
    # --- announce: my slot on every peer reaches `value` (release: my earlier writes are visible first)
    for p in range(0, world):
        peer = tl.load(sflag_peers_ptr + p).to(tl.pointer_type(tl.int32))
        tl.atomic_xchg(peer + barrier_off + rank, value, sem="release", scope="sys")
    # --- wait: every peer's slot here reached `value` (>=: a fast peer may already be one barrier ahead)
    for p in range(0, world):
        wait_flag(sflags_ptr + barrier_off + p, value, max_spin, status_ptr, _WAIT_BARRIER, p, rank, False, "sys")


def _aligned(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


class SymmetricWorkspace(Workspace):
    """This process's rank of a process group: symmetric receive/combine buffers and flags, peer tables.

    Create once per group (collective: every rank calls it with the same arguments) and reuse for every
    layer and call. group: a torch.distributed ProcessGroup (default WORLD) of ep * tp ranks, one CUDA
    device per process (device defaults to the current one). Export the NVLS variables (NVLS_ENV) before
    torch.distributed starts; a warning says so if they are missing.
    """

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, capacity_tokens: int, *,
                 dtype: torch.dtype = torch.bfloat16, group=None, device=None,
                 combine_dtype: torch.dtype | None = None, max_spin: int = DEFAULT_MAX_SPIN):
        import torch.distributed as dist
        import torch.distributed._symmetric_memory as symm_mem

        missing = [k for k, v in NVLS_ENV.items() if os.environ.get(k) != v]
        if missing:
            warnings.warn(f"SymmetricWorkspace: {missing} not set to {NVLS_ENV}; NVLS/multicast must stay off on "
                          f"machines shared with other jobs (docs/GPU_FACTS.md)", stacklevel=2)
        self.group = group or dist.group.WORLD
        world = dist.get_world_size(self.group)
        parallel.validate(model, world)
        device = torch.device("cuda", torch.cuda.current_device()) if device is None else torch.device(device)
        super().__init__(model, parallel, capacity_tokens, dtype, combine_dtype, device, max_spin)
        rank = dist.get_rank(self.group)
        sz, lay = self.sizes, self.layout
        elem, celem = torch.finfo(dtype).bits // 8, torch.finfo(self.combine_dtype).bits // 8
        recv_bytes = sz.recv_rows * sz.hidden * elem
        comb_bytes = sz.own_rows * sz.slots * sz.hidden * celem
        self._off_recv = 0
        self._off_comb = _aligned(recv_bytes)
        self._off_flags = self._off_comb + _aligned(comb_bytes)
        total = self._off_flags + _aligned(4 * lay.sym_len)
        self._symm = symm_mem.empty(total, dtype=torch.uint8, device=device)
        self._hdl = symm_mem.rendezvous(self._symm, self.group)
        recv = self._view(self._off_recv, recv_bytes, dtype, (sz.recv_rows, sz.hidden))
        comb = self._view(self._off_comb, comb_bytes, self.combine_dtype, (sz.own_rows, sz.slots, sz.hidden))
        sflags = self._view(self._off_flags, 4 * lay.sym_len, torch.int32, (lay.sym_len,))
        recv.fill_(float("nan"))
        comb.fill_(float("nan"))
        sflags.zero_()
        ptrs = [int(p) for p in self._hdl.buffer_ptrs]
        if any(p % _ALIGN for p in ptrs):  # the kernels assume 16-byte aligned peer buffers
            raise RuntimeError(f"symmetric buffers are not {_ALIGN}-byte aligned: {[hex(p) for p in ptrs]}")

        def table(off):
            return torch.tensor([p + off for p in ptrs], dtype=torch.int64, device=device)

        self.rank = rank
        self.ranks = (rank,)
        self._bufs[rank] = RankBuffers(
            rank=rank, recv_MN=recv, combine_MLN=comb, sflags_F=sflags,
            flags_F=torch.zeros(lay.local_len, dtype=torch.int32, device=device),
            status=torch.zeros(STATUS_LEN, dtype=torch.int32, device=device),
            h_RK=torch.full((sz.rows, sz.ffn_local), float("nan"), dtype=dtype, device=device),
            y_RN=torch.full((sz.rows, sz.hidden), float("nan"), dtype=dtype, device=device),
            recv_ptrs_W=table(self._off_recv), combine_ptrs_W=table(self._off_comb),
            sflag_ptrs_W=table(self._off_flags),
            l0_targets_W=torch.zeros(world, dtype=torch.int64, device=device))
        self._barrier_count = torch.zeros(1, dtype=torch.int32, device=device)  # see _barrier_kernel
        torch.cuda.synchronize(device)
        dist.barrier(group=self.group)

    def _view(self, off: int, nbytes: int, dtype: torch.dtype, shape) -> torch.Tensor:
        return self._symm[off:off + nbytes].view(dtype).view(shape)

    def peer_recv(self, rank: int, peer: int) -> torch.Tensor:
        sz = self.sizes
        assert self._off_recv == 0  # get_buffer's storage_offset counts elements; recv_MN starts the buffer
        return self._hdl.get_buffer(peer, (sz.recv_rows, sz.hidden), self.dtype, 0)

    def barrier(self) -> None:
        """Device-side barrier over the group on the current stream (no host sync); bounded like every wait.
        Its value lives in device memory, so the barrier also works inside a captured CUDA graph."""
        b = self._bufs[self.rank]
        _barrier_kernel[(1,)](b.sflag_ptrs_W, b.sflags_F, b.status, self._barrier_count, self.rank,
                              self.world_size, self.layout.barrier, self.max_spin, num_warps=1)

    def reset(self) -> None:
        """Collective: zero flags and status on every rank (host syncs and a process-group barrier)."""
        import torch.distributed as dist

        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.group)
        b = self._bufs[self.rank]
        b.flags_F.zero_()
        b.sflags_F.zero_()
        b.status.zero_()
        self.epoch = 0
        self._copy_epoch.clear()
        self._barrier_count.zero_()
        torch.cuda.synchronize(self.device)
        dist.barrier(group=self.group)
