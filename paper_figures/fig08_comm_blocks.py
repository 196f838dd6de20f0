"""Fig. 8: layer1 time vs communication blocks n_c, per M (left) and per TP (right); best n_c starred.

The paper gives no numbers here, only the trend (best n_c grows with M and as TP shrinks) and the code's
default n_c = 28, drawn as a dashed line.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "fig08_comm_blocks"


def _panel(ax, df, key: str, title: str, default_nc: float) -> None:
    cmap = plt.get_cmap("viridis")
    values = sorted(df[key].unique())
    for i, v in enumerate(values):
        g = df[df[key] == v].sort_values("nc_layer1")
        c = cmap(i / max(1, len(values) - 1) * 0.85)
        best = int(g["best_nc"].iloc[0])
        ax.plot(g["nc_layer1"], g["layer1_us"], "-o", ms=3, color=c,
                label=f"{key.replace('tokens', 'M').upper()}={v}: best n_c={best}")
        b = g[g["is_best"]]
        ax.scatter(b["nc_layer1"], b["layer1_us"], marker="*", s=120, color=c, edgecolor="k", zorder=5)
    ax.axvline(default_nc, color=style.PAPER_COLOR, ls="--", lw=1, label=f"paper code default n_c={default_nc:g}")
    ax.set_xlabel("communication blocks n_c (of the SMs)")
    ax.set_ylabel("layer1 time (us)")
    ax.set_yscale("log")
    style.plain_log(ax)
    ax.set_title(title)
    ax.legend(loc="best")


def draw(df, paper):
    default_nc = style.paper_value(paper, "default_nc_layer1", "comet")[0]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    tp1 = df[df["tp"] == df["tp"].min()]
    _panel(axes[0], tp1, "tokens", f"M varied (EP={tp1['ep'].iloc[0]}, TP={tp1['tp'].iloc[0]})", default_nc)
    # the M with the most TP values
    m = df.groupby("tokens")["tp"].nunique().idxmax()
    _panel(axes[1], df[df["tokens"] == m], "tp", f"TP varied (M={m}, EP=8/TP)", default_nc)
    fig.suptitle(f"{df['model'].iloc[0]}: layer1 alone vs its communication blocks n_c (stars: the best n_c)")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
