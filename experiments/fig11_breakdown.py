"""Fig. 11: where one MoE layer's time goes: computation, communication, and how much of it overlaps.

EP=8, TP=1, E=8, topk=2, M=16384 (Mixtral-8x7B's shape). Paper (8 x H800), share of communication hidden
under computation: Comet 86.5%, Tutel 68.6%, FasterMoE 29.2%, Megatron 0%.
Per rank r (then averaged over ranks): compute_us = |union of r's compute events|, comm_us = |union of r's
communication events|, overlapped_us = |both at once|, exposed_comm_us = comm_us - overlapped_us,
other_us = latency_us - |compute or comm| (launch gaps, collective fixed costs, waits).
hidden_comm_fraction is sim.result's: sum_r overlapped / sum_r comm. The chunked bound and Tutel are recorded
for every pipeline degree of their sweeps; is_best marks each system's fastest run (True for the others).
CSV: model, ep, tp, tokens, system, chunks, nc_layer1, is_best, latency_us, compute_us, comm_us,
overlapped_us, exposed_comm_us, other_us, hidden_comm_fraction.
"""

from __future__ import annotations

import math

import numpy as np

from comet.tuning.sweep import best_nc
from experiments import common
from sim.options import SimOptions
from sim.pipelined_moe import fastermoe_degree
from sim.result import SimResult, union_length
from sim.run import make_case, simulate, with_policy

NAME = "fig11_breakdown"
COLUMNS = ["model", "ep", "tp", "tokens", "system", "chunks", "nc_layer1", "is_best", "latency_us", "compute_us",
           "comm_us", "overlapped_us", "exposed_comm_us", "other_us", "hidden_comm_fraction"]


def cases(quick: bool) -> list[dict]:
    return [{"model": "mixtral-8x7b", "ep": 8, "tp": 1, "tokens": 2048 if quick else 16384}]


def breakdown(res: SimResult) -> dict:
    """Per-rank means of compute, communication and their overlap (us), from the event list."""
    ev = res.events
    per_rank = []
    for _, g in ev.groupby("rank"):
        s, e, cat = g["start_us"].to_numpy(), g["end_us"].to_numpy(), g["category"].to_numpy()
        cm, cp = cat == "comm", cat == "compute"
        c, p, both = union_length(s[cm], e[cm]), union_length(s[cp], e[cp]), union_length(s[cm | cp], e[cm | cp])
        per_rank.append((p, c, c + p - both, both))
    p, c, ov, both = np.mean(per_rank, axis=0)
    return {"latency_us": res.latency_us, "compute_us": p, "comm_us": c, "overlapped_us": ov,
            "exposed_comm_us": c - ov, "other_us": res.latency_us - both,
            "hidden_comm_fraction": res.hidden_comm_fraction}


def run_case(case: dict, hw: str, quick: bool) -> list[dict]:
    plan = make_case(case["model"], ep=case["ep"], tp=case["tp"], tokens=case["tokens"], hw=hw)
    opts = SimOptions(record=True)
    nc = best_nc(plan, 1, common.QUICK_NC_SWEEP if quick else common.NC_SWEEP, opts)[0]
    runs = [("comet", math.nan, nc, simulate(with_policy(plan, nc_layer1=nc), "comet", opts)),
            ("sequential", 1, math.nan, simulate(plan, "sequential", opts))]
    runs += [("chunked", c, math.nan, simulate(plan, "chunked", opts.replace(chunks=c)))
             for c in (common.QUICK_CHUNK_SWEEP if quick else common.CHUNK_SWEEP)]
    runs += [(s, 1, math.nan, simulate(plan, s, opts)) for s in ("megatron-cutlass", "megatron-te")]
    runs.append(("fastermoe", fastermoe_degree(plan.world_size), math.nan, simulate(plan, "fastermoe", opts)))
    runs += [("tutel", c, math.nan, simulate(plan, "tutel", opts.replace(chunks=c)))
             for c in (common.QUICK_TUTEL_DEGREES if quick else common.TUTEL_DEGREES)]
    best = {}
    for name, _, _, res in runs:
        best[name] = min(best.get(name, math.inf), res.latency_us)
    return [{**case, "system": name, "chunks": c, "nc_layer1": n, "is_best": res.latency_us == best[name],
             **breakdown(res)} for name, c, n, res in runs]


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
