"""Fig. 12: one MoE layer's time per (EP, TP) with EP x TP = 8 (bars), and Comet's speedup over each
baseline (right). The paper reports no numbers for this figure beyond Comet being fastest everywhere."""

from __future__ import annotations

from paper_figures import style
from paper_figures.fig14_pcie import bars_and_speedup

NAME = "fig12_parallelism"


def draw(df, paper):
    fig = bars_and_speedup(df, paper, band=None)
    fig.suptitle(f"{df['model'].iloc[0]}, M={df['tokens'].iloc[0]}: one MoE layer per (EP, TP)")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
