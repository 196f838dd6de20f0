"""Fig. 14 (left): one MoE layer's time vs routing imbalance (std of expert load share), with the
production level the paper reports (0.032) marked."""

from __future__ import annotations

from paper_figures import style
from paper_figures.fig10_tokens import latency_and_speedup

NAME = "fig14_imbalance"


def draw(df, paper):
    fig = latency_and_speedup(df, "std_actual", "std of expert load share", paper, band=None, logx=False)
    prod = style.paper_value(paper, "production_std")[0]
    for ax in fig.axes:
        ax.axvline(prod, color=style.PAPER_COLOR, ls="--", lw=1, label=f"paper: production std {prod}")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=2, frameon=False, fontsize=7)
    fig.suptitle(f"{df['model'].iloc[0]}, EP={df['ep'].iloc[0]}, M={df['tokens'].iloc[0]}: one MoE layer vs "
                 "routing imbalance\n(paper, Fig. 14 left: Comet ahead of every baseline at every std)")
    fig.set_size_inches(10.5, 5.4)
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
