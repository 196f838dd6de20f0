"""Fig. 9: model forward latency per model x (EP, TP) x M: Comet's end-to-end speedup over each paper baseline
(FasterMoE and Tutel at TP = 1 only)
(the paper's 1.71x average drawn as a dashed line), and the baselines' communication share of the forward
(the paper's 47% mean for Megatron as a dashed line)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_figures import style

NAME = "fig09_end_to_end"


def draw(df, paper):
    models = list(dict.fromkeys(df["model"]))
    fig, axes = plt.subplots(2, len(models), figsize=(4.6 * len(models), 6.8), squeeze=False,
                             gridspec_kw={"height_ratios": [3, 2]})
    mean_paper = style.paper_value(paper, "forward_speedup_mean")[0]
    comm_paper = style.paper_value(paper, "comm_share_of_forward", "megatron")[0]
    for j, m in enumerate(models):
        d = df[df["model"] == m]
        keys = d[["ep", "tp", "tokens"]].drop_duplicates().sort_values(["ep", "tp", "tokens"],
                                                                        ascending=[False, True, True])
        labels = [f"{r.ep}x{r.tp}\n{r.tokens // 1024}k" for r in keys.itertuples()]
        x = np.arange(len(keys))
        ax, bx = axes[0, j], axes[1, j]
        w = 0.8 / len(style.BASELINES)
        for i, s in enumerate(style.BASELINES):
            g = style.rows_at(d, s, keys)
            off = (i - (len(style.BASELINES) - 1) / 2) * w
            ax.bar(x + off, g["comet_speedup"], w, color=style.COLORS[s],
                   label=f"Comet over {style.LABELS[s].removesuffix(' (sim)')}")
            bx.bar(x + off, 100 * g["comm_share_of_forward"], w, color=style.COLORS[s], label=style.LABELS[s])
            ax.axhline(g["comet_speedup"].mean(), color=style.COLORS[s], ls=":", lw=1)
        ax.axhline(mean_paper, color=style.PAPER_COLOR, ls="--", lw=1.2, label=f"paper mean {mean_paper:.2f}x")
        ax.axhline(1.0, color="k", lw=0.8)
        bx.axhline(100 * comm_paper, color=style.PAPER_COLOR, ls="--", lw=1.2,
                   label=f"paper: Megatron {100 * comm_paper:.0f}% (mean)")
        ax.set_title(f"{m} ({d['layers'].iloc[0]} layers)")
        for a in (ax, bx):
            a.set_xticks(x, labels, fontsize=7)
        ax.set_ylabel("forward speedup of Comet")
        bx.set_ylabel("exposed comm / forward (%)")
        bx.set_xlabel("EP x TP, M")
    for a in axes[0]:
        a.set_ylim(0, max(2.0, 1.15 * float(df["comet_speedup"].max())))
    handles = [h for a in (axes[0, 0], axes[1, 0]) for h in a.get_legend_handles_labels()[0]]
    labels = [x for a in (axes[0, 0], axes[1, 0]) for x in a.get_legend_handles_labels()[1]]
    fig.legend(handles, labels, loc="lower center", ncol=5, bbox_to_anchor=(0.5, 0.0), fontsize=7)
    fig.suptitle("End-to-end forward (MoE layers simulated, non-MoE part a fixed cost; dotted: our means)")
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
