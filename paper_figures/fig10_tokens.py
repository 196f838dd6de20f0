"""Fig. 10: one MoE layer's time vs M (EP=8, Mixtral shape), and Comet's speedup over each baseline. The
paper reports one range for the figure, 1.28-2.37x: Comet's speedup over each baseline averaged over M, the
lowest and highest of those averages (largest at small M, it says; the per-M values are not given). So the
range is drawn as a bar beside the data, next to our own per-baseline averages over M, not as a band across M
that would claim it at every M."""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "fig10_tokens"


def latency_and_speedup(df, x: str, xlabel: str, paper, band: str | None = "layer_speedup", logx: bool = True,
                        averages: bool = False):
    """Two panels: latency per system vs x, and comet_speedup of each baseline vs x, with the paper's range
    `band` shaded across x, or (averages=True) drawn as a bar beside the data with each baseline's mean over x."""
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    for s in style.SYSTEMS:
        g = df[df["system"] == s].sort_values(x)
        if g.empty:
            continue
        kw = {"marker": style.MARKERS[s], "color": style.COLORS[s], "ls": style.line_style(s)}
        a0.plot(g[x], g["latency_us"], label=style.LABELS[s], **kw)
        if s != "comet":
            a1.plot(g[x], g["comet_speedup"], label=f"over {style.LABELS[s].removesuffix(' (sim)')}", **kw)
            if s in style.PIPELINED:
                for r in g.itertuples():
                    a1.annotate(f"Q={int(r.chunks)}", (getattr(r, x), r.comet_speedup), fontsize=6,
                                textcoords="offset points", xytext=(2, 4), color=style.COLORS[s])
    if averages:
        _averages_beside(a1, df, x, paper, band)
    else:
        style.speedup_band(a1, paper, band)
    for a in (a0, a1):
        a.set_xlabel(xlabel)
        if logx:
            a.set_xscale("log", base=2)
            style.data_ticks(a, df[x].tolist())
    a0.set_yscale("log")
    style.plain_log(a0)
    a0.set_ylabel("MoE layer time (us)")
    a1.set_ylabel("Comet speedup (baseline time / Comet time)")
    a0.legend(fontsize=7)
    a1.legend(fontsize=7)
    return fig


def _averages_beside(ax, df, x: str, paper, quantity: str) -> None:
    """At one x past the data: the paper's range of per-baseline averages as a bar, and our per-baseline means
    over x as markers (the like-for-like comparison)."""
    ax.axhline(1.0, color="k", lw=0.8)
    lo, hi = style.paper_value(paper, quantity)
    xs = sorted(df[x].unique())
    at = xs[-1] * 2.0  # one octave past the data on the log2 axis
    ax.vlines(at, lo, hi, color=style.PAPER_COLOR, lw=6, alpha=0.35,
              label=f"paper: {lo:.2f}-{hi:.2f}x (averages over M)")
    for s in style.SYSTEMS:
        g = df[df["system"] == s]
        if s == "comet" or g.empty:
            continue
        ax.plot([at], [g["comet_speedup"].mean()], marker=style.MARKERS[s], color=style.COLORS[s], ls="none",
                ms=7, mec="k", mew=0.6)
    ax.annotate("means\nover M", (at, hi), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.set_xlim(xs[0] / 1.4, at * 1.4)


def draw(df, paper):
    fig = latency_and_speedup(df, "tokens", "tokens M", paper, averages=True)
    fig.suptitle(f"{df['model'].iloc[0]}, EP={df['ep'].iloc[0]}, TP={df['tp'].iloc[0]}: one MoE layer vs M")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
