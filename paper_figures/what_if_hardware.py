"""What-if sweeps (experiments.what_if_hardware, not a figure of the paper): per sweep, one MoE layer's time per
system (top) and Comet's speedup over each baseline (bottom) as one hardware figure changes.

`draw_one(df)` draws one sweep's rows as a figure; notebooks/what_if_hardware.ipynb uses it on the sweeps it
runs live, and shows TABLE_COLUMNS of them.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "what_if_hardware"
XLABELS = {"link_gbps": "NVLink GB/s per direction (h800: 160)", "sms": "SMs per GPU (h800: 132)",
           "nodes": "nodes for 16 GPUs (IB between nodes)", "gpus": "GPUs (8 per node, IB between nodes)"}
LOG2 = {"link_gbps", "nodes", "gpus"}
TABLE_COLUMNS = ["value", "system", "latency_us", "hidden_comm_fraction", "nc_layer1", "chunks", "comet_speedup"]


def draw_sweep(ax_time, ax_speedup, df) -> None:
    """One sweep (rows of one `sweep` value): latency per system and Comet's speedup vs the swept value."""
    name = df["sweep"].iloc[0]
    for s in style.SYSTEMS:
        g = df[df["system"] == s].sort_values("value")
        if g.empty:
            continue
        ax_time.plot(g["value"], g["latency_us"], marker=style.MARKERS[s], color=style.COLORS[s], label=style.LABELS[s])
        if s != "comet":
            ax_speedup.plot(g["value"], g["comet_speedup"], marker=style.MARKERS[s], color=style.COLORS[s],
                            label=f"Comet over {s}")
    ax_speedup.axhline(1.0, color="k", lw=0.8)
    r = df.iloc[0]
    ax_time.set_title(f"{r['model']}, M={r['tokens']}" + (f", EP={r['ep']}" if name != "gpus" else ", EP=GPUs"),
                      fontsize=9)
    for a in (ax_time, ax_speedup):
        if name in LOG2:
            a.set_xscale("log", base=2)
        a.set_xticks(sorted(df["value"].unique()), [f"{v:g}" for v in sorted(df["value"].unique())])
    ax_speedup.set_xlabel(XLABELS.get(name, name))
    ax_time.set_ylabel("MoE layer time (us)")
    ax_speedup.set_ylabel("Comet speedup")
    ax_time.set_yscale("log")
    style.plain_log(ax_time)


def draw_one(df, figsize=(5.5, 5.5)):
    """A figure of one sweep: latency (top) and Comet's speedup (bottom)."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=figsize, sharex=True)
    draw_sweep(top, bottom, df)
    top.legend(fontsize=7)
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return fig


def draw(df, paper):
    del paper  # the paper has no such sweeps
    sweeps = list(dict.fromkeys(df["sweep"]))
    fig, axes = plt.subplots(2, len(sweeps), figsize=(3.6 * len(sweeps), 6), squeeze=False, sharex="col")
    for j, name in enumerate(sweeps):
        draw_sweep(axes[0, j], axes[1, j], df[df["sweep"] == name])
    axes[0, 0].legend(fontsize=7)
    axes[1, 0].legend(fontsize=7)
    fig.suptitle("What if the hardware changed (simulated; n_c and the baseline's chunks tuned per point)")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
