"""What a simulation returns: latencies, busy time per resource, hidden communication, the critical path,
and the event list as a pandas DataFrame and as a Chrome trace (open it in https://ui.perfetto.dev).

Definitions (all times in microseconds):
- latency_us: when the last rank finishes. layer0_us: when the last rank finishes its layer0 work
  (its GEMM and activation); layer1_us = latency_us - layer0_us (the ranks' layers overlap a little,
  so this is the layer1 part of the critical timeline, not any one rank's kernel time).
- compute, communication, overhead intervals: the events of each category (see comet/core/events.py).
  comm_us / compute_us / overhead_us: length of the union over all ranks and events (so
  max(compute_us, comm_us) <= latency_us <= compute_us + comm_us + overhead_us).
- hidden_comm_fraction (the paper's Fig. 11): of the time each rank communicates, the share during which
  the same rank also computes, summed over ranks: sum_r |comm_r & compute_r| / sum_r |comm_r|.
  exposed_comm_us: the mean over ranks of |comm_r| - |comm_r & compute_r|.
- critical_path: the chain of events, following each event's cause back from the last one to end.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from operator import itemgetter
from pathlib import Path

import numpy as np
import pandas as pd

from comet.core.events import CATEGORY, COLUMNS, KINDS, chrome_trace_events, track_name
from sim.hardware_model import PORT_KINDS

_SM_NAME = "sm"


def union_length(start: np.ndarray, end: np.ndarray) -> float:
    """Length of the union of intervals [start_i, end_i)."""
    if start.size == 0:
        return 0.0
    o = np.argsort(start, kind="stable")
    s, e = start[o], end[o]
    run = np.maximum.accumulate(e)
    new = np.ones(s.size, dtype=bool)
    new[1:] = s[1:] > run[:-1]
    first = np.flatnonzero(new)
    last = np.append(first[1:] - 1, s.size - 1)
    return float(np.sum(run[last] - s[first]))


@dataclass
class SimResult:
    """The outcome of one simulation. `events` (DataFrame) and `chrome_trace()` need options.record."""

    system: str
    latency_us: float
    layer0_us: float
    layer1_us: float
    rank_layer0_end_us: list[float]
    rank_end_us: list[float]
    compute_us: float
    comm_us: float
    overhead_us: float
    hidden_comm_fraction: float
    exposed_comm_us: float
    busy: pd.DataFrame  # rank, resource, busy_us, utilization, bytes
    tile_events: int  # GEMM tiles simulated
    wall_s: float  # host time the simulation took
    config: dict  # model, parallelism, hardware (name, SM count), policy, options (plain values)
    link_bytes: np.ndarray = field(repr=False)  # (4, W): bytes through egress, ingress, nic_out, nic_in
    flows: list = field(repr=False, default_factory=list)  # (id, src, dst, bytes, start_us, end_us)
    rate_log: list | None = field(repr=False, default=None)  # (time_us, ports, GB/s) where rates changed
    _records: list = field(repr=False, default_factory=list)
    _events: pd.DataFrame | None = field(repr=False, default=None)

    # ------------------------------------------------------------------------------------ tables
    @property
    def events(self) -> pd.DataFrame:
        """One row per event: rank, track, kind, category, layer, start_us, end_us, dur_us, bytes, peer,
        cause (row index of the event that let it start, -1 for none)."""
        if self._events is None:
            df = pd.DataFrame.from_records(self._records, columns=list(COLUMNS))
            kinds = np.array([k for k, _ in KINDS], dtype=object)
            cats = np.array(CATEGORY, dtype=object)
            kind_id = df["kind"].to_numpy(dtype=np.int64)
            df["kind"] = pd.Categorical(kinds[kind_id], categories=[k for k, _ in KINDS])
            df.insert(3, "category", pd.Categorical(cats[kind_id], categories=["compute", "comm", "overhead"]))
            tracks = df["track"].to_numpy(dtype=np.int64)
            names = {t: track_name(t) for t in np.unique(tracks).tolist()}
            df["track"] = [names[t] for t in tracks.tolist()]
            df["dur_us"] = df["end_us"] - df["start_us"]
            self._events = df
        return self._events

    @property
    def critical_path(self) -> pd.DataFrame:
        """The events of the critical path in time order (a subset of `events`, same index)."""
        if not self._records:
            return self.events
        ends = np.fromiter((rec[5] for rec in self._records), dtype=np.float64, count=len(self._records))
        i = int(np.argmax(ends))
        chain = []
        seen = set()
        while i >= 0 and i not in seen:
            seen.add(i)
            chain.append(i)
            i = self._records[i][8]
        return self.events.loc[chain[::-1]]

    def critical_path_breakdown(self) -> dict[str, float]:
        """Time on the critical path per event kind (us)."""
        cp = self.critical_path
        return {str(k): float(v) for k, v in cp.groupby("kind", observed=True)["dur_us"].sum().items()}

    # ------------------------------------------------------------------------------------ summaries
    def summary(self) -> dict:
        """Plain numbers for --json and tables."""
        return {
            "system": self.system, "latency_us": self.latency_us, "layer0_us": self.layer0_us,
            "layer1_us": self.layer1_us, "hidden_comm_fraction": self.hidden_comm_fraction,
            "exposed_comm_us": self.exposed_comm_us, "compute_us": self.compute_us, "comm_us": self.comm_us,
            "overhead_us": self.overhead_us, "tile_events": self.tile_events, "wall_s": self.wall_s,
        }

    def to_json(self) -> str:
        return json.dumps({**self.summary(), "config": self.config}, indent=2)

    # ------------------------------------------------------------------------------------ trace
    def chrome_trace(self) -> dict:
        """Chrome trace-event JSON: pid = rank, one thread per SM / stream / copy engine, slices in us,
        counter tracks with each link port's rate (GB/s)."""
        out = chrome_trace_events(self._records, {r: f"{self.system} rank {r}" for r in range(len(self.rank_end_us))})
        if self.rate_log:
            W = len(self.rank_end_us)
            for t, ports, rates in self.rate_log:  # only the ports whose rate changed at t
                for p, v in zip(ports.tolist(), rates.tolist(), strict=True):
                    out.append({"ph": "C", "name": f"{PORT_KINDS[p // W]} GB/s", "pid": p % W, "ts": t,
                                "args": {"GB/s": round(v, 3)}})
        return {"traceEvents": out,
                "otherData": {"system": self.system, **{k: str(v) for k, v in self.config.items()}}}

    def write_chrome_trace(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.chrome_trace()))
        return path


def build_result(sim, wall_s: float, config: dict) -> SimResult:
    """Assemble a SimResult from a finished SystemSim."""
    W = sim.W
    end = [float(x) for x in sim.end]
    l0 = [float(x) for x in sim.l0_end]
    latency = max(end)
    layer0 = max(l0) if sim.do_l0 else 0.0
    if sim.do_l0 and not sim.do_l1:
        layer0 = latency
    recs = sim.records
    net = sim.net
    n = len(recs)
    if n:
        # the fields used, as float64 columns (ints and floats, exact); one column at a time from the tuples (a 2-D
        # array of every field took 1 s a million records)
        rank, track, kind, s, e = (np.array(list(map(itemgetter(i), recs)), dtype=np.float64) for i in (0, 1, 2, 4, 5))
        kind_id = kind.astype(np.int64)
        cats = np.array(CATEGORY, dtype=object)
        is_comp, is_comm, is_ovh = ((cats == c)[kind_id] for c in ("compute", "comm", "overhead"))
        compute = union_length(s[is_comp], e[is_comp])
        comm = union_length(s[is_comm], e[is_comm])
        overhead = union_length(s[is_ovh], e[is_ovh])
        hidden_sum = comm_sum = exposed = 0.0
        busy_rows = []
        # each rank's records, in their order (a stable sort by rank): the same selections as a mask per rank
        # over every record, without W passes over millions of them
        by_rank = np.argsort(rank, kind="stable")
        bounds = np.searchsorted(rank[by_rank], np.arange(W + 1), side="left").tolist()
        for r in range(W):
            sel = by_rank[bounds[r]:bounds[r + 1]]
            s_r, e_r, track_r = s[sel], e[sel], track[sel]
            cm, cp = is_comm[sel], is_comp[sel]
            c_len = union_length(s_r[cm], e_r[cm])
            p_len = union_length(s_r[cp], e_r[cp])
            both = union_length(s_r[cm | cp], e_r[cm | cp])
            overlap = c_len + p_len - both
            # inclusion-exclusion in floats leaves ~1e-13 us where nothing overlaps: that is no overlap
            overlap = overlap if overlap > 1e-9 * max(both, 1.0) else 0.0
            hidden_sum += overlap
            comm_sum += c_len
            exposed += c_len - overlap
            on_sm = track_r >= 0
            whole = (track_r == -1) & cp  # memory-bound kernels on all SMs
            sm_us = float(np.sum(e_r[on_sm] - s_r[on_sm])) + sim.sms * float(np.sum(e_r[whole] - s_r[whole]))
            sm_us /= sim.sms
            busy_rows.append((r, _SM_NAME, sm_us, 0.0))
            cp_m = track_r == -3
            busy_rows.append((r, "copy_engine", float(np.sum(e_r[cp_m] - s_r[cp_m])), 0.0))
            nc_m = (track_r == -2) & cm
            busy_rows.append((r, "nccl", union_length(s_r[nc_m], e_r[nc_m]), 0.0))
        hidden = hidden_sum / comm_sum if comm_sum > 0 else math.nan
        exposed /= W
    else:
        compute = comm = overhead = 0.0
        hidden, exposed = math.nan, math.nan
        busy_rows = []
    port_busy, port_bytes = net.port_busy_us, net.port_bytes
    for p in range(net.P):
        r, kindname = net.port_name(p)
        busy_rows.append((r, kindname, float(port_busy[p]), float(port_bytes[p])))
    busy = pd.DataFrame(busy_rows, columns=["rank", "resource", "busy_us", "bytes"])
    busy["utilization"] = busy["busy_us"] / latency if latency > 0 else 0.0
    busy = busy.sort_values(["rank", "resource"], kind="stable").reset_index(drop=True)
    return SimResult(
        system=sim.name, latency_us=latency, layer0_us=layer0, layer1_us=latency - layer0,
        rank_layer0_end_us=l0, rank_end_us=end, compute_us=compute, comm_us=comm, overhead_us=overhead,
        hidden_comm_fraction=hidden, exposed_comm_us=exposed, busy=busy, tile_events=sim.tile_events,
        wall_s=wall_s, config=config, link_bytes=net.port_bytes.reshape(4, W).copy(), flows=net.flows,
        rate_log=net.rate_log, _records=recs,
    )


def config_of(plan, options) -> dict:
    return {"model": plan.model.name, "tokens": plan.num_tokens, "ep": plan.parallel.ep, "tp": plan.parallel.tp,
            "hardware": plan.hardware.name, "sms": plan.hardware.sms, "policy": dataclasses.asdict(plan.policy),
            "options": dataclasses.asdict(options),
            "link_model": options.link_model_for(plan.hardware.nodes(plan.world_size))}
