"""Routing: which token goes to which experts, with what weight.

Suffix letters (docs/SHAPES.md): M tokens, E experts, J top-k slots of a token.

A real top-k gate (`topk_gate`) and seeded synthetic generators (`balanced`, `uniform`, `imbalanced`)
all return a `Routing`. Synthetic routings are exact: `imbalanced(std=s)` gives expert load shares whose
standard deviation is s up to rounding to whole tokens, or raises saying the largest std reachable (the paper's
Fig. 14 sweeps s from 0 to 0.05; docs/PAPER_NOTES.md).

    >>> r = balanced(M=16, E=4, topk=2, seed=0)
    >>> r.tokens_per_expert_E.tolist()
    [8, 8, 8, 8]
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

ROUTINGS = ("balanced", "uniform", "imbalanced")


@dataclass(frozen=True)
class Routing:
    """topk_ids_MJ: int64 expert of each (token, slot), distinct within a token.
    topk_weights_MJ: float32 gate weights, each row sums to 1."""

    topk_ids_MJ: torch.Tensor
    topk_weights_MJ: torch.Tensor
    num_experts: int

    def __post_init__(self):
        ids, w = self.topk_ids_MJ, self.topk_weights_MJ
        if ids.dim() != 2 or ids.shape != w.shape:
            raise ValueError(f"topk_ids_MJ {tuple(ids.shape)} and topk_weights_MJ {tuple(w.shape)} "
                             f"must both be 2-D (M, topk) of one shape")
        if ids.dtype != torch.int64:
            raise ValueError(f"topk_ids_MJ must be int64, got {ids.dtype}")
        if not w.is_floating_point():
            raise ValueError(f"topk_weights_MJ must be floating point, got {w.dtype}")
        if ids.device != w.device:
            raise ValueError(f"topk_ids_MJ is on {ids.device} but topk_weights_MJ on {w.device}; put both on one")

    @property
    def num_tokens(self) -> int:
        return self.topk_ids_MJ.shape[0]

    @property
    def topk(self) -> int:
        return self.topk_ids_MJ.shape[1]

    @property
    def tokens_per_expert_E(self) -> torch.Tensor:
        """int64 (E,): how many (token, slot) pairs each expert receives. No host sync on GPU."""
        counts = torch.zeros(self.num_experts, dtype=torch.int64, device=self.topk_ids_MJ.device)
        return counts.scatter_add_(0, self.topk_ids_MJ.reshape(-1), torch.ones_like(self.topk_ids_MJ).reshape(-1))

    def load_share_std(self) -> float:
        """Standard deviation of the experts' share of all assignments (0 for perfectly balanced)."""
        share = self.tokens_per_expert_E.double() / self.topk_ids_MJ.numel()
        return float(share.std(unbiased=False))

    def to(self, device) -> Routing:
        return Routing(self.topk_ids_MJ.to(device), self.topk_weights_MJ.to(device), self.num_experts)

    def check_entries(self) -> None:
        """Raise ValueError naming the first bad token (host sync): an expert id outside [0, E), an expert
        repeated within a token, a negative or non-finite weight (`routing_problems_MJ`)."""
        bits_MJ = routing_problems_MJ(self.topk_ids_MJ, self.topk_weights_MJ, self.num_experts)
        if not bool(bits_MJ.any()):  # the usual case: no need to find the first bad token
            return
        err = first_problem(bits_MJ).tolist()
        if err[0]:
            t = err[1]
            raise ValueError(describe_routing_error(err[0], t, self.num_experts) + f": expert ids "
                             f"{self.topk_ids_MJ[t].tolist()}, weights {self.topk_weights_MJ[t].tolist()}")

    def check(self) -> None:
        """Validate contents (costs a host sync): `check_entries`, then the weights of each token sum to 1."""
        self.check_entries()
        sums = self.topk_weights_MJ.double().sum(dim=1)
        if sums.numel() and float((sums - 1).abs().max()) > 1e-3:
            raise ValueError(f"gate weights of a token must sum to 1; worst row sums to "
                             f"{float(sums[(sums - 1).abs().argmax()]):.4f}")


# ----------------------------------------------------------------------------- problems of a routing
# Bits of one (token, slot) entry that the planner drops (`routing_problems_MJ`); the triton planner's
# kernels (comet/core/planner_triton.py) set the same bits.
OUT_OF_RANGE, REPEATED, BAD_WEIGHT = 1, 2, 4
PROBLEMS = {OUT_OF_RANGE: "an expert id outside [0, E) (expert ids must lie in [0, E))",
            REPEATED: "an expert repeated within the token (experts must be distinct within a token)",
            BAD_WEIGHT: "a negative or non-finite gate weight"}


def routing_problems_MJ(topk_ids_MJ: torch.Tensor, topk_weights_MJ: torch.Tensor, E: int) -> torch.Tensor:
    """int64 (M, J) problem bits of each entry, 0 where it is fine: OUT_OF_RANGE (id outside [0, E)),
    REPEATED (an id in range equal to an earlier slot's id of the same token: the first occurrence is kept),
    BAD_WEIGHT (weight negative, NaN or infinite). A plan drops every entry with a bit set: it is no row, no
    send and needs no EP group. Torch ops on the routing's device, no host sync."""
    ids, w = topk_ids_MJ, topk_weights_MJ
    J = ids.shape[1]
    in_range = (ids >= 0) & (ids < E)
    earlier_JJ = torch.ones(J, J, dtype=torch.bool, device=ids.device).tril(-1)  # [k, k'] = k' < k
    repeated = in_range & ((ids[:, :, None] == ids[:, None, :]) & earlier_JJ).any(2)
    bad_w = ~((w >= 0) & (w < float("inf")))
    return ((~in_range).long() * OUT_OF_RANGE) | (repeated.long() * REPEATED) | (bad_w.long() * BAD_WEIGHT)


def routing_error(topk_ids_MJ: torch.Tensor, topk_weights_MJ: torch.Tensor, E: int) -> torch.Tensor:
    """int64 (2,): [problem bits of the first bad token (OR over its slots), that token]; [0, 0] when every
    entry is fine. On the routing's device, no host sync (`Plan.routing_error`)."""
    return first_problem(routing_problems_MJ(topk_ids_MJ, topk_weights_MJ, E))


def first_problem(bits_MJ: torch.Tensor) -> torch.Tensor:
    """`routing_error` from the entries' problem bits (`routing_problems_MJ`), for a caller that has them."""
    bits_M = torch.zeros_like(bits_MJ[:, 0])
    for k in range(bits_MJ.shape[1]):
        bits_M = bits_M | bits_MJ[:, k]
    # the first maximum: the first bad token, else 0; index_select, not bits_M[first]: a 0-d index is a host sync
    first = torch.argmax((bits_M != 0).to(torch.int8)).reshape(1)
    bits = bits_M.index_select(0, first)
    return torch.cat([bits, torch.where(bits != 0, first, 0)])


def describe_routing_error(bits: int, token: int, E: int, dropped: bool = False) -> str:
    """The message for `routing_error`'s values: the first bad token, what is wrong and what to change."""
    what = "; ".join(v.replace("[0, E)", f"[0, {E})") for b, v in PROBLEMS.items() if bits & b)
    return (f"bad routing at token {token} (the first bad one): {what}; give every token distinct expert ids "
            f"in [0, {E}) and finite, non-negative gate weights"
            + (" (the plan dropped the bad entries: it is not the layer's routing)" if dropped else ""))


def _check_sizes(M: int, E: int, topk: int) -> None:
    if M < 1 or E < 1 or topk < 1:
        raise ValueError(f"M, E and topk must be >= 1, got M={M}, E={E}, topk={topk}")
    if topk > E:
        raise ValueError(f"topk={topk} > E={E}: each token needs topk distinct experts; lower topk")


def _random_weights(M: int, topk: int, gen: torch.Generator) -> torch.Tensor:
    # Softmax of random logits over the chosen experts, as a gate would give, sorted descending.
    w = torch.softmax(torch.randn(M, topk, generator=gen), dim=-1)
    return w.sort(dim=-1, descending=True).values.float()


def topk_gate(logits_ME: torch.Tensor, topk: int) -> Routing:
    """A real gate: softmax over router logits, top-k, weights renormalised to sum to 1."""
    E = logits_ME.shape[-1]
    _check_sizes(max(logits_ME.shape[0], 1), E, topk)
    probs = torch.softmax(logits_ME.float(), dim=-1)
    w, ids = probs.topk(topk, dim=-1)
    return Routing(ids.long(), (w / w.sum(dim=-1, keepdim=True)).float(), E)


def _from_counts(counts_E: torch.Tensor, M: int, topk: int, gen: torch.Generator) -> Routing:
    # Lay the expert ids, expert by expert, into slots s = 0..M*topk-1 with slot s -> token s % M.
    # An expert's run is contiguous and no longer than M, so it never hits a token twice.
    E = counts_E.numel()
    ids_flat = torch.repeat_interleave(torch.arange(E), counts_E)
    ids_MJ = ids_flat.reshape(topk, M).T.contiguous()
    ids_MJ = ids_MJ[torch.randperm(M, generator=gen)]  # tokens of every owner rank see every expert
    return Routing(ids_MJ, _random_weights(M, topk, gen), E)


def balanced(M: int, E: int, topk: int, seed: int = 0) -> Routing:
    """Every expert gets M*topk/E assignments (+-1), tokens shuffled."""
    return imbalanced(M, E, topk, std=0.0, seed=seed)


def imbalanced(M: int, E: int, topk: int, std: float, seed: int = 0) -> Routing:
    """Expert load shares with standard deviation `std` (0 = balanced), exact up to whole tokens.

    With z a seeded standardised normal vector, the shares are 1/E + std * z while those all stay positive;
    beyond that (many experts, large std) they are log-normal, proportional to exp(sigma * z) with sigma chosen
    by bisection so that the shares' std is `std`. An expert holds at most M assignments (each token picks it
    at most once), which bounds the reachable std: a larger request raises ValueError naming the largest
    reachable one. `Routing.load_share_std()` reports the std reached.
    """
    _check_sizes(M, E, topk)
    if not std >= 0 or std == float("inf"):
        raise ValueError(f"std must be a finite number >= 0, got {std}")
    gen = torch.Generator().manual_seed(seed)
    total = M * topk
    if std > 0 and E > 1:
        z = torch.randn(E, generator=gen, dtype=torch.float64)
        z = (z - z.mean()) / z.std(unbiased=False)
        counts = _counts_with_std(z, std, M, total)
    else:
        counts = _round_to_total(torch.full((E,), total / E, dtype=torch.float64), total, cap=M)
    return _from_counts(counts, M, topk, gen)


def _share_std(counts: torch.Tensor, total: int) -> float:
    return float((counts.double() / total).std(unbiased=False))


def _counts_with_std(z: torch.Tensor, std: float, M: int, total: int) -> torch.Tensor:
    """Whole-token counts (each <= M, summing to total) whose shares have standard deviation `std`."""
    E = z.numel()
    tol = max(1e-3 * std, 1.0 / total)  # rounding to whole tokens moves the std by about 1 / total
    linear = 1.0 / E + std * z
    if bool((linear >= 0).all()):
        counts = _round_to_total(linear * total, total, cap=M)
        if abs(_share_std(counts, total) - std) <= tol:
            return counts

    def lognormal(sigma: float) -> torch.Tensor:
        w = torch.exp(sigma * (z - z.max()))
        return _round_to_total(w / w.sum() * total, total, cap=M)

    # the std grows with sigma until the cap at M assignments (and float range) flattens it: scan, then bisect
    scan = [(x, lognormal(x)) for x in (2.0 ** k for k in range(8))]  # 1 .. 128; beyond, exp(sigma z) underflows
    stds = [_share_std(c, total) for _, c in scan]
    reached = [(x, c, got) for (x, c), got in zip(scan, stds, strict=True) if got >= std]
    if not reached:
        if max(stds) >= std - tol:
            return scan[stds.index(max(stds))][1]
        raise ValueError(f"imbalanced routing cannot reach a load-share std of {std} with E={E} experts, "
                         f"M={M} tokens and topk={total // M} (an expert holds at most M assignments); the largest "
                         f"it reaches here is {max(stds):.4g}: ask for at most that")
    hi, best, got = reached[0]
    lo, best_err = 0.0, abs(got - std)
    for _ in range(60):
        mid = (lo + hi) / 2
        counts = lognormal(mid)
        got = _share_std(counts, total)
        if abs(got - std) < best_err:
            best, best_err = counts, abs(got - std)
        if got < std:
            lo = mid
        else:
            hi = mid
    return best


def _round_to_total(x: torch.Tensor, total: int, cap: int) -> torch.Tensor:
    """Integer counts near x, each <= cap, summing to total (total <= cap * len(x)).

    Shares above the cap are cut and their excess spread over the others in proportion (water-filling),
    then the remaining units go to the largest fractional parts."""
    x = x.double().clone()
    for _ in range(len(x)):  # each pass caps at least one more expert, or stops
        over = x > cap
        excess = float((x[over] - cap).sum())
        x[over] = float(cap)
        room = x < cap
        if excess <= 1e-9 or not bool(room.any()):
            break
        x[room] += excess * x[room] / x[room].sum() if float(x[room].sum()) > 0 else excess / int(room.sum())
    counts = x.floor().long().clamp(max=cap)
    short = total - int(counts.sum())
    frac = torch.where(counts < cap, x - counts, torch.full_like(x, -1.0))
    counts[torch.argsort(-frac, stable=True)[:short]] += 1
    return counts


def uniform(M: int, E: int, topk: int, seed: int = 0) -> Routing:
    """Each token picks topk distinct experts uniformly at random."""
    _check_sizes(M, E, topk)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.rand(M, E, generator=gen).argsort(dim=-1)[:, :topk]
    return Routing(ids.long().contiguous(), _random_weights(M, topk, gen), E)


def make_routing(kind: str, M: int, E: int, topk: int, seed: int = 0, std: float = 0.032) -> Routing:
    """A routing by name: "balanced", "uniform", or "imbalanced" (with `std`, default 0.032: the production
    figure the paper gives with Fig. 14)."""
    if kind == "balanced":
        return balanced(M, E, topk, seed)
    if kind == "uniform":
        return uniform(M, E, topk, seed)
    if kind == "imbalanced":
        return imbalanced(M, E, topk, std, seed)
    raise ValueError(f"unknown routing {kind!r}; known routings: {', '.join(ROUTINGS)}")
