"""n_c chosen by the simulator (make_plan(nc="auto")) vs the fixed default n_c, per configuration (left), and
what make_plan costs with a fixed n_c, on a cache miss and on a hit (right).

Not a paper figure: Comet picks n_c by offline profiling and reports no numbers for it; the dashed line is
the default (nc_layer0 = 16, nc_layer1 = 28). Reads results/nc_auto/<hw>-sim_<date>.csv.
"""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "nc_auto"
MODEL_COLORS = {"mixtral-8x7b": "#1f77b4", "qwen2-moe-2.7b": "#ff7f0e", "phi-3.5-moe": "#2ca02c"}


def _speedups(ax, df) -> None:
    df = df.sort_values(["model", "ep", "tokens", "routing"]).reset_index(drop=True)
    x = range(len(df))
    colors = [MODEL_COLORS.get(m, "0.3") for m in df["model"]]
    ax.axhline(1.0, color="0.35", ls="--", lw=1, label="default n_c (16, 28)")
    ax.scatter(x, df["default_us"] / df["exact_us"], s=40, facecolors="none", edgecolors=colors,
               label="best n_c of the exact shape")
    ax.scatter(x, df["auto_speedup"], s=18, c=colors, label='nc="auto" (cache warmed by another batch)')
    imb = df["routing"] == "imbalanced"
    ax.scatter([i for i in x if imb[i]], df["auto_speedup"][imb], s=70, marker="x", color="k", lw=0.6,
               label="imbalanced routing")
    for model, g in df.groupby("model", sort=False):
        ax.text(g.index.to_series().mean(), ax.get_ylim()[1], model, ha="center", va="bottom", fontsize=8,
                color=MODEL_COLORS.get(model, "0.3"))
    ax.set_xticks(list(x))
    labels = [f"{e}x{t} {m // 1024}k" for e, t, m in zip(df["ep"], df["tp"], df["tokens"], strict=True)]
    ax.set_xticklabels(labels, rotation=90, fontsize=6)
    ax.set_xlabel("configuration (EP x TP, M)")
    ax.set_ylabel("speedup over the default n_c (simulated layer)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=4)


def _plan_times(ax, df) -> None:
    cols = (("plan_fixed_s", "fixed\nn_c"), ("plan_hit_s", "auto:\ncache hit"), ("plan_miss_s", "auto:\ncache miss"))
    ax.boxplot([df[c] * 1e3 for c, _ in cols], showfliers=True)
    ax.set_xticks([1, 2, 3])
    ax.set_xticklabels([label for _, label in cols])
    ax.set_yscale("log")
    ax.set_ylabel("make_plan wall time (ms, CPU)")
    for i, (c, _) in enumerate(cols, start=1):
        ax.text(i, df[c].median() * 1e3, f"  {df[c].median() * 1e3:.0f} ms", va="bottom", ha="left",
                fontsize=7)


def draw(df, paper):
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3.2, 1]})
    _speedups(axes[0], df)
    _plan_times(axes[1], df)
    beats = (df["auto_us"] < df["default_us"]).mean()
    fig.suptitle(f'nc="auto" vs the default n_c: faster in {beats:.0%} of {len(df)} configurations, mean '
                 f'{df["auto_speedup"].mean():.2f}x, max {df["auto_speedup"].max():.2f}x (simulator predictions)')
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)


if __name__ == "__main__":
    main()
