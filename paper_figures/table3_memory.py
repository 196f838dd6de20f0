"""Table 3: symmetric buffer memory per GPU vs M per model: ours (comet.core.plan.buffer_sizes: receive buffer
+ combine buffer + flags) beside the paper's formula, 2MN bytes (one M x N bf16 buffer), drawn once per hidden
size N."""

from __future__ import annotations

import matplotlib.pyplot as plt

from paper_figures import style

NAME = "table3_memory"
MIB = float(1 << 20)


def draw(df, paper):
    per_mn = style.paper_value(paper, "symmetric_bytes_per_MN", "comet")[0]
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(10, 3.8))
    cmap = plt.get_cmap("tab10")
    for i, (m, g) in enumerate(df.groupby("model", sort=False)):
        g = g.sort_values("tokens")
        a0.plot(g["tokens"], g["symmetric_bytes"] / MIB, "-", marker="os^v"[i % 4], ms=7 - 2 * (i % 3), color=cmap(i),
                label=f"{m} (ours)")
        a1.plot(g["tokens"], g["symmetric_over_paper"], ("-", "--", ":")[i % 3], marker="os^v"[i % 4],
                ms=8 - 2 * (i % 3), color=cmap(i), label=m)  # equal-N models coincide: told apart by marker
    for n, g in df.groupby("hidden_N"):  # the paper's formula depends on N only: one line per hidden size
        g = g.drop_duplicates("tokens").sort_values("tokens")
        a0.plot(g["tokens"], per_mn * g["tokens"] * n / MIB, ":", color="0.4", lw=1.2,
                label=f"paper's formula {per_mn:g}MN, N={n}")
    for a in (a0, a1):
        a.set_xscale("log", base=2)
        style.data_ticks(a, df["tokens"].tolist())
        a.set_xlabel("tokens M")
    a0.set_yscale("log")
    style.plain_log(a0)
    a0.set_ylabel("symmetric buffer per GPU (MiB)")
    a1.set_ylabel("ours / paper's 2MN")
    a1.axhline(1.0, color="k", lw=0.8)
    a0.legend(fontsize=7, title="models of equal N have equal buffers", title_fontsize=7)
    a1.legend()
    r = df.iloc[0]
    fig.suptitle(f"Symmetric memory, EP={r['ep']} TP={r['tp']}, bf16 (ours adds the combine buffer: M/W x slots x N)")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
