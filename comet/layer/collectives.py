"""Collectives among the ranks of a layer, in two worlds with one interface: `EmulatedCollectives` (all W
ranks in this process: plain tensor copies; CPU tests, one GPU) and `DistCollectives` (this process's rank of
a torch.distributed group: NCCL on GPUs, gloo on CPUs). Collectives take and return {rank: tensor} for the
ranks this process runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch


class EmulatedCollectives:
    """Collectives among W ranks that all live in this process (tensors on one device): plain copies."""

    emulated = True

    def __init__(self, world_size: int, device):
        if world_size < 1:
            raise ValueError(f"world_size must be >= 1, got {world_size}")
        self.world_size = world_size
        self.ranks = tuple(range(world_size))
        self.device = torch.device(device)

    def all_to_all(self, send: Mapping[int, torch.Tensor], send_splits: Mapping[int, Sequence[int]],
                   recv_splits: Mapping[int, Sequence[int]]) -> dict[int, torch.Tensor]:
        """Rank s's send rows are grouped by destination (send_splits[s][d] rows for d); rank d receives the
        groups addressed to it in source order (recv_splits[d][s] rows from s)."""
        pieces = {s: send[s].split(list(send_splits[s])) for s in self.ranks}
        out = {}
        for d in self.ranks:
            got = [pieces[s][d] for s in self.ranks]
            if [g.shape[0] for g in got] != list(recv_splits[d]):
                raise ValueError(f"rank {d} expects {list(recv_splits[d])} rows from each source, the sources send "
                                 f"{[g.shape[0] for g in got]}")
            out[d] = torch.cat(got)
        return out

    def all_gather(self, parts: Mapping[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Every rank gets the concatenation of all parts in rank order (one shared copy: the emulated ranks
        only read it)."""
        full = torch.cat([parts[s] for s in self.ranks])
        return {d: full for d in self.ranks}

    def reduce_scatter(self, full: Mapping[int, torch.Tensor], splits: Sequence[int]) -> dict[int, torch.Tensor]:
        """Rank s gets rows [sum(splits[:s]), sum(splits[:s + 1])) of the sum over ranks (summed in float32)."""
        ref = full[self.ranks[0]]
        acc = torch.zeros(ref.shape, dtype=torch.float32, device=ref.device)
        for r in self.ranks:
            acc += full[r]
        return {s: piece.to(ref.dtype) for s, piece in zip(self.ranks, acc.split(list(splits)), strict=True)}


class DistCollectives:
    """Collectives of this process's rank in a torch.distributed group (NCCL on GPUs, gloo on CPUs)."""

    emulated = False

    def __init__(self, group=None):
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialised: call init_process_group first (torchrun), "
                               "or use the emulated world")
        self._dist = dist
        self.group = group or dist.group.WORLD
        self.world_size = dist.get_world_size(self.group)
        self.rank = dist.get_rank(self.group)
        self.ranks = (self.rank,)

    def _gather(self, out, inp):
        fn = getattr(self._dist, "all_gather_single", None) or self._dist.all_gather_into_tensor
        fn(out, inp, group=self.group)

    def all_to_all(self, send, send_splits, recv_splits) -> dict[int, torch.Tensor]:
        r = self.rank
        inp = send[r].contiguous()
        out = inp.new_empty(sum(recv_splits[r]), *inp.shape[1:])
        self._dist.all_to_all_single(out, inp, list(recv_splits[r]), list(send_splits[r]), group=self.group)
        return {r: out}

    def all_gather(self, parts) -> dict[int, torch.Tensor]:
        inp = parts[self.rank].contiguous()
        out = inp.new_empty(self.world_size * inp.shape[0], *inp.shape[1:])
        self._gather(out, inp)
        return {self.rank: out}

    def reduce_scatter(self, full, splits) -> dict[int, torch.Tensor]:
        if len(set(splits)) > 1:
            raise ValueError(f"reduce-scatter on a process group needs equal pieces per rank, got {list(splits)}")
        inp = full[self.rank].contiguous()
        out = inp.new_empty(splits[self.rank], *inp.shape[1:])
        fn = getattr(self._dist, "reduce_scatter_single", None) or self._dist.reduce_scatter_tensor
        fn(out, inp, group=self.group)
        return {self.rank: out}

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """All ranks' (m, ...) tensors stacked in rank order: (W m, ...)."""
        out = t.new_empty(self.world_size * t.shape[0], *t.shape[1:])
        self._gather(out, t.contiguous())
        return out

    def gather_routing(self, ids_mJ: torch.Tensor, w_mJ: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Every rank's routing, (ids_MJ int64, weights_MJ float32) in rank order, in one all-gather: the float32
        weights travel bit for bit as int64 columns beside the ids."""
        J = ids_mJ.shape[1]
        bits_mJ = w_mJ.float().contiguous().view(torch.int32).long()
        both = self.gather_rows(torch.cat([ids_mJ.long(), bits_mJ], 1))
        return both[:, :J].contiguous(), both[:, J:].int().view(torch.float32)
