"""Fig. 10: one MoE layer's time vs M (EP=8, Mixtral shape), and Comet's speedup over each baseline,
with the paper's reported 1.28-2.37x range shaded."""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "fig10_tokens"


def latency_and_speedup(df, x: str, xlabel: str, paper, band: str | None = "layer_speedup", logx: bool = True):
    """Two panels: latency per system vs x, and comet_speedup of each baseline vs x (paper band)."""
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


def draw(df, paper):
    fig = latency_and_speedup(df, "tokens", "tokens M", paper)
    fig.suptitle(f"{df['model'].iloc[0]}, EP={df['ep'].iloc[0]}, TP={df['tp'].iloc[0]}: one MoE layer vs M")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
