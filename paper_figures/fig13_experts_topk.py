"""Fig. 13: Comet's speedup over each baseline per expert count E and topk (heat maps), and every case's
speedup beside the paper's reported 1.16-1.83x range (right)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_figures import style

NAME = "fig13_experts_topk"


def draw(df, paper):
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8), gridspec_kw={"width_ratios": [1, 1, 0.8]},
                             layout="constrained")
    es, ks = sorted(df["experts"].unique()), sorted(df["topk"].unique())
    # diverging around 1 (no gain), spread to the data: the colours resolve 1.1 against 1.3
    half = max(0.05, 1.05 * float((df["comet_speedup"] - 1).abs().max()))
    vmax = 1 + half
    for ax, s in zip(axes[:2], ("megatron-cutlass", "tutel"), strict=True):
        g = df[df["system"] == s].pivot(index="experts", columns="topk", values="comet_speedup").loc[es, ks]
        im = ax.imshow(g.to_numpy(), cmap="RdBu", vmin=2 - vmax, vmax=vmax, origin="lower", aspect="auto")
        for (i, j), v in np.ndenumerate(g.to_numpy()):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(ks)), ks)
        ax.set_yticks(range(len(es)), es)
        ax.set_xlabel("topk")
        ax.set_ylabel("experts E")
        ax.set_title(f"Comet over {style.LABELS[s].removesuffix(' (sim)')}")
        ax.grid(False)
    fig.colorbar(im, ax=axes[:2], shrink=0.8, label="speedup (>1: Comet faster)")
    ax = axes[2]
    shown = (*style.BASELINES, *style.BOUNDS)
    for i, s in enumerate(shown):
        v = df[df["system"] == s]["comet_speedup"].to_numpy()
        ax.scatter(np.full(v.size, i) + np.linspace(-0.15, 0.15, v.size), v, color=style.COLORS[s],
                   marker=style.MARKERS[s], s=14)
    style.speedup_band(ax, paper)
    short = {"megatron-cutlass": "Megatron\nCutlass", "megatron-te": "Megatron\nTE", "fastermoe": "Faster\nMoE",
             "tutel": "Tutel", "sequential": "seq.\nbound", "chunked": "chunked\nbound"}
    ax.set_xticks(range(len(shown)), [short[s] for s in shown], fontsize=6)
    ax.set_xlim(-0.6, len(shown) - 0.4)
    ax.set_ylabel("Comet speedup")
    ax.legend(loc="upper right")
    fig.suptitle(f"{df['model'].iloc[0]} N, K; EP={df['ep'].iloc[0]}, M={df['tokens'].iloc[0]}: "
                 "one MoE layer vs E and topk")
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
