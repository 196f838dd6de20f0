"""Who owns which token, how a range is cut into parts, and which EP groups need which token: one rule each,
shared by the planner, the reference, the kernels, the GPU baselines and the simulator.

The one split rule: n items cut into `parts` contiguous parts whose sizes differ by at most one. Item i
belongs to part i * parts // n; part p holds [ceil(p n / parts), ceil((p + 1) n / parts)). Tokens over ranks
(ownership) and a rank's own tokens over the chunked baseline's chunks both use it.

    >>> [split_range(5, 2, p) for p in range(2)]     # 5 rows in 2 chunks: [0, 3) and [3, 5)
    [(0, 3), (3, 5)]
    >>> token_owner(5, 2).tolist()
    [0, 0, 0, 1, 1]
"""

from __future__ import annotations

import torch


def split_range(n: int, parts: int, p: int) -> tuple[int, int]:
    """[lo, hi) of part p when n items are cut into `parts` parts by the split rule (module docstring)."""
    return (p * n + parts - 1) // parts, ((p + 1) * n + parts - 1) // parts


def part_of(index: torch.Tensor, n: torch.Tensor | int, parts: int) -> torch.Tensor:
    """The part of each item index in `index` (int64) when n items are cut into `parts` parts; n may be a
    tensor of the same shape (one n per item)."""
    return index * parts // n


def token_owner(M: int, W: int, device=None) -> torch.Tensor:
    """int64 (M,): owner rank of each token; rank s owns `owned_range(M, W, s)`."""
    return part_of(torch.arange(M, device=device, dtype=torch.int64), M, W)


def owned_range(M: int, W: int, s: int) -> tuple[int, int]:
    """[lo, hi) global token ids owned by rank s (the split rule over W ranks)."""
    return split_range(M, W, s)


def chunk_range(n_own: int, chunks: int, c: int) -> tuple[int, int]:
    """[a, b) of a rank's own tokens (0 = its first) in chunk c of the chunked baseline (the split rule)."""
    return split_range(n_own, chunks, c)


def token_chunk(M: int, W: int, chunks: int, device=None) -> torch.Tensor:
    """int64 (M,): the chunked baseline's chunk of each token: each owner's tokens cut into `chunks` parts by
    the split rule (token t is in chunk c iff its index among its owner's tokens lies in `chunk_range`)."""
    owner = token_owner(M, W, device)
    bounds = torch.tensor([owned_range(M, W, s) for s in range(W)], dtype=torch.int64, device=owner.device)
    lo, n = bounds[owner, 0], bounds[owner, 1] - bounds[owner, 0]
    return part_of(torch.arange(M, device=owner.device) - lo, n, chunks)


def token_groups(topk_ids_MJ: torch.Tensor, experts_per_group: int, ep: int) -> torch.Tensor:
    """bool (M, EP): True where the token has a chosen expert in that EP group, i.e. every rank of the group
    needs the token's row in an all-to-all dispatch. On the routing's device, no host sync."""
    M = topk_ids_MJ.shape[0]
    need = torch.zeros(M, ep, dtype=torch.bool, device=topk_ids_MJ.device)
    return need.scatter_(1, topk_ids_MJ // experts_per_group, True)


def combine_expected(groups_MG: torch.Tensor, owner_M: torch.Tensor, W: int, tp: int) -> torch.Tensor:
    """int64 (W, W): [o, s] = partial sums owner o receives from rank s in the combine (one per token of o
    with an expert in s's EP group). groups_MG: `token_groups`; owner_M: `token_owner`."""
    per_owner_WG = torch.zeros(W, groups_MG.shape[1], dtype=torch.int64, device=groups_MG.device)
    per_owner_WG.index_add_(0, owner_M, groups_MG.to(torch.int64))
    src_group = torch.arange(W, device=groups_MG.device) // tp
    return per_owner_WG[:, src_group].contiguous()
