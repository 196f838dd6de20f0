"""Pictures of a simulation, drawn from its event list and link rates (matplotlib; imported only to draw).

    from sim import make_case, simulate
    from sim.plots import compare, latency_table, timeline
    plan = make_case("mixtral-8x7b", ep=8, tokens=2048)
    results = {"comet": simulate(plan, system="comet"), "sequential": simulate(plan, system="sequential")}
    fig = timeline(results["comet"], rank=0)   # per-SM Gantt chart above the rank's link rates
    fig = compare(results)                     # the same, side by side, one time axis
    fig = sim_vs_real(results["comet"], real_events)   # above a real timeline (kernels/timeline.py)
    latency_table(results)                     # one row per result, latency relative to the first

The Gantt chart has one row per SM (or per group of `sm_group` SMs: a row is busy while any of its SMs
is) and, below the SMs, one row per stream or engine (the compute stream's launches and whole-GPU
memory-bound kernels, the baselines' NCCL stream, the copy engine). Colours are per event kind
(comet/core/events.py). For the comet system, dashed lines mark where layer0's and layer1's communication
blocks begin (SMs sms - n_c .. sms - 1). The link panel draws the rank's port rates in GB/s (egress and
ingress of NVLink/PCIe, and the NIC's out and in when ranks span nodes) as step functions of time; it
needs a result simulated with SimOptions(record=True) (the default). Times in microseconds.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from comet.core.events import TRACK_NAMES
from sim.hardware_model import PORT_KINDS
from sim.result import SimResult

# One colour per event kind: compute in blues/greens/greys, communication in oranges/reds, overhead light.
KIND_COLORS = {
    "gemm0": "#1f77b4", "gemm1": "#2ca02c", "gemm0_direct": "#17becf", "activation": "#7f7f7f",
    "permute": "#bcbd22", "topk_reduce": "#8c564b", "reduce_local": "#9467bd", "combine_reduce": "#e377c2",
    "pull": "#ff7f0e", "copy": "#ffbb78", "reduce_send": "#d62728", "dispatch": "#ff7f0e", "combine": "#d62728",
    "launch": "#dddddd", "collective_fixed": "#c7c7c7", "sync_wait": "#f0f0f0", "arrival_wait": "#aaaaaa",
    "host_sync": "#b0b0b0", "unpermute": "#dbdb8d", "metadata": "#ff9896",
}
PORT_STYLES = {"egress": ("#d62728", "-"), "ingress": ("#1f77b4", "-"), "nic_out": ("#d62728", ":"),
               "nic_in": ("#1f77b4", ":")}
_STREAM_ROWS = tuple(TRACK_NAMES.values())  # "stream", "nccl stream", "copy engine", in this order
_SM = re.compile(r"SM (\d+)$")


def _rank_events(res: SimResult, rank: int) -> pd.DataFrame:
    if not len(res.events):
        raise ValueError("this result holds no events: simulate with SimOptions(record=True) to draw it")
    ev = res.events[res.events["rank"] == rank]
    if ev.empty:
        raise ValueError(f"rank {rank} has no events; the result has ranks 0..{len(res.rank_end_us) - 1}")
    return ev


def sm_count(res: SimResult) -> int:
    """SMs of the simulated GPU (the hardware profile's, as the result's config records it)."""
    return int(res.config["sms"])


def gantt_rows(res: SimResult, rank: int = 0, sm_group: int = 1) -> pd.DataFrame:
    """The rank's events with the Gantt row each is drawn on: `row` = SM // sm_group for an SM's events,
    then one row per stream or engine after the SM rows (in the order stream, nccl stream, copy engine).
    Columns: row, kind, start_us, end_us (and the event's other columns)."""
    if sm_group < 1:
        raise ValueError(f"sm_group must be >= 1, got {sm_group}")
    return _with_rows(_rank_events(res, rank).copy(), sm_count(res), sm_group)


def _with_rows(ev: pd.DataFrame, sms: int, sm_group: int) -> pd.DataFrame:
    sm = ev["track"].str.extract(_SM, expand=False)
    sm_rows = -(-sms // sm_group)
    stream_row = {name: sm_rows + i for i, name in enumerate(_STREAM_ROWS)}
    ev["row"] = [int(s) // sm_group if isinstance(s, str) else stream_row[t]
                 for s, t in zip(sm.tolist(), ev["track"].tolist(), strict=True)]
    return ev


def link_rates(res: SimResult, rank: int = 0) -> pd.DataFrame:
    """The rank's port rates over time: columns time_us, then one column per port kind with traffic
    (egress, ingress, nic_out, nic_in) in GB/s; each row holds from its time until the next row's."""
    if not res.rate_log:
        raise ValueError("this result has no link rates: simulate with SimOptions(record=True) to draw them")
    W = len(res.rank_end_us)
    log = res.rate_log  # (time_us, ports, GB/s): only the ports whose rate changed at that time
    times = np.unique([t for t, _, _ in log])
    t_all = np.concatenate([np.full(len(ports), t) for t, ports, _ in log])
    p_all = np.concatenate([ports for _, ports, _ in log])
    v_all = np.concatenate([rates for _, _, rates in log])
    cols = {}
    for k, kind in enumerate(PORT_KINDS):
        m = p_all == k * W + rank
        # a port's rate holds from its change until its next one (the last change at one time wins)
        at = np.searchsorted(t_all[m], times, side="right") - 1
        cols[kind] = np.concatenate([[0.0], v_all[m]])[at + 1]
    return pd.DataFrame({"time_us": times, **{k: v for k, v in cols.items() if v.any()}})


def draw_gantt(ax, res: SimResult, rank: int = 0, sm_group: int = 1) -> None:
    """The per-SM Gantt chart of one rank on `ax` (see the module docstring)."""
    ev = gantt_rows(res, rank, sm_group)
    handles = _draw_bars(ax, ev)
    sms = sm_count(res)
    sm_rows = -(-sms // sm_group)
    used = sorted(set(ev["row"][ev["row"] >= sm_rows].tolist()))
    names = {sm_rows + i: n for i, n in enumerate(_STREAM_ROWS)}
    ticks = [0, sm_rows - 1] + used
    labels = ["SM 0" if sm_group == 1 else f"SMs 0-{sm_group - 1}",
              f"SM {sms - 1}" if sm_group == 1 else f"SMs ..{sms - 1}"] + [names[r] for r in used]
    pol = res.config.get("policy", {})
    if res.system == "comet" and pol:
        for layer, key in ((0, "nc_layer0"), (1, "nc_layer1")):
            if layer == 0 and pol.get("layer0_comm") != "blocks":
                continue
            first = (sms - pol[key]) / sm_group - 0.5
            ax.axhline(first, color="k", ls="--", lw=0.7)
            ax.text(0.0, first, f" layer{layer} comm blocks below (n_c={pol[key]})", fontsize=6,
                    va="top", transform=ax.get_yaxis_transform())
    ax.set_yticks(ticks, labels, fontsize=7)
    ax.set_ylim(max(ticks) + 0.6, -0.6)
    ax.set_xlim(0, res.latency_us * 1.01)
    ax.set_ylabel("SM (block id)")
    ax.set_title(f"{res.system}, rank {rank}: {res.latency_us:.0f} us", fontsize=9)
    ax.legend(handles=handles, fontsize=6, ncol=2, loc="lower right", framealpha=0.8)


def _draw_bars(ax, ev: pd.DataFrame) -> list:
    """One bar per event (columns kind, start_us, end_us, row), coloured by kind; returns legend handles."""
    from matplotlib.collections import PolyCollection
    from matplotlib.patches import Patch

    h = 0.8
    handles = []
    for kind, g in ev.groupby("kind", observed=True, sort=False):
        s, e, y = g["start_us"].to_numpy(), g["end_us"].to_numpy(), g["row"].to_numpy(dtype=float)
        verts = np.stack([np.stack([s, y - h / 2], 1), np.stack([s, y + h / 2], 1),
                          np.stack([e, y + h / 2], 1), np.stack([e, y - h / 2], 1)], 1)
        ax.add_collection(PolyCollection(verts, facecolors=KIND_COLORS[kind], edgecolors="none"))
        handles.append(Patch(color=KIND_COLORS[kind], label=kind))
    return handles


def draw_events(ax, events: pd.DataFrame, sms: int, rank: int = 0, sm_group: int = 1, title: str = "") -> None:
    """The Gantt chart of one rank of an event frame with the simulator's columns (rank, track, kind,
    start_us, end_us), e.g. the real kernels' timeline (kernels/timeline.py), on `ax`; rows as gantt_rows."""
    ev = events[events["rank"] == rank]
    if ev.empty:
        raise ValueError(f"rank {rank} has no events")
    ev = _with_rows(ev.copy(), sms, sm_group)
    handles = _draw_bars(ax, ev)
    ax.set_yticks([0, -(-sms // sm_group) - 1], ["SM 0" if sm_group == 1 else f"SMs 0-{sm_group - 1}",
                                                 f"SM {sms - 1}" if sm_group == 1 else f"SMs ..{sms - 1}"],
                  fontsize=7)
    ax.set_ylim(max(int(ev["row"].max()), -(-sms // sm_group) - 1) + 0.6, -0.6)
    ax.set_xlim(0, float(ev["end_us"].max()) * 1.01)
    ax.set_ylabel("SM (block id)")
    ax.set_title(title or f"rank {rank}: {float(ev['end_us'].max()):.0f} us", fontsize=9)
    ax.legend(handles=handles, fontsize=6, ncol=2, loc="lower right", framealpha=0.8)


def sim_vs_real(res: SimResult, real: pd.DataFrame, rank: int = 0, sm_group: int = 1, real_title: str = "",
                figsize=(11, 8)):
    """Two timelines of one rank, one above the other on one time axis: the simulation (draw_gantt) and an
    event frame from the real kernels (draw_events; its `track` picks the rows)."""
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(2, 1, figsize=figsize, sharex=True)
    draw_gantt(a0, res, rank, sm_group)
    draw_events(a1, real, sm_count(res), rank, sm_group, real_title)
    a1.set_xlabel("time (us)")
    real_end = float(real.loc[real["rank"] == rank, "end_us"].max())
    a0.set_xlim(0, max(res.latency_us, real_end) * 1.01)
    fig.tight_layout()
    return fig


def draw_links(ax, res: SimResult, rank: int = 0) -> None:
    """The rank's link port rates (GB/s) over time on `ax`."""
    df = link_rates(res, rank)
    for kind in PORT_KINDS:
        if kind in df:
            color, ls = PORT_STYLES[kind]
            ax.step(df["time_us"], df[kind], where="post", color=color, ls=ls, lw=0.9, label=kind)
    ax.set_ylabel("GB/s")
    ax.set_xlabel("time (us)")
    ax.legend(fontsize=6, loc="upper right")


def timeline(res: SimResult, rank: int = 0, sm_group: int = 1, figsize=(10, 6)):
    """A figure: the rank's per-SM Gantt chart above its link rates, sharing the time axis."""
    import matplotlib.pyplot as plt

    fig, (a0, a1) = plt.subplots(2, 1, figsize=figsize, sharex=True, gridspec_kw={"height_ratios": [4, 1]})
    draw_gantt(a0, res, rank, sm_group)
    draw_links(a1, res, rank)
    fig.tight_layout()
    return fig


def compare(results: dict[str, SimResult], rank: int = 0, sm_group: int = 4, figsize=None):
    """Timelines of several results side by side (columns labelled by the dict's keys), one time axis."""
    import matplotlib.pyplot as plt

    n = len(results)
    fig, axes = plt.subplots(2, n, figsize=figsize or (5 * n, 5.5), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [4, 1]})
    for j, (label, res) in enumerate(results.items()):
        draw_gantt(axes[0, j], res, rank, sm_group)
        axes[0, j].set_title(f"{label}: {res.latency_us:.0f} us (rank {rank})", fontsize=9)
        draw_links(axes[1, j], res, rank)
    longest = max(r.latency_us for r in results.values())
    axes[0, 0].set_xlim(0, longest * 1.01)
    fig.tight_layout()
    return fig


def latency_table(results: dict[str, SimResult]) -> pd.DataFrame:
    """One row per labelled result: latency, its layers, hidden and exposed communication, and
    latency_vs_first = its latency / the first result's (> 1: slower than the first)."""
    if not results:
        raise ValueError("no results to tabulate")
    first = next(iter(results.values())).latency_us
    rows = [{"label": label, **{k: r.summary()[k] for k in ("system", "latency_us", "layer0_us", "layer1_us",
                                                              "hidden_comm_fraction", "exposed_comm_us")},
             "latency_vs_first": r.latency_us / first} for label, r in results.items()]
    return pd.DataFrame(rows).set_index("label")
