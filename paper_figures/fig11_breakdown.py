"""Fig. 11: where one MoE layer's time goes (left: per-rank compute, overlapped, exposed communication,
other) and the share of communication hidden under computation (right), ours beside the paper's."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from paper_figures import style

NAME = "fig11_breakdown"
# paper system -> ours (the paper's value is drawn at our run of it; for Tutel at its fastest degree)
PAPER_SYSTEMS = (("comet", "Comet", "comet"), ("tutel", "Tutel", "tutel"), ("fastermoe", "FasterMoE", "fastermoe"),
                 ("megatron", "Megatron", "megatron-cutlass"))


def _label(r) -> str:
    return f"{r.system} Q={int(r.chunks)}" if r.system in style.PIPELINED else r.system


def draw(df, paper):
    fig, (a0, a1) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    rows = list(df.itertuples())
    y = np.arange(len(rows))[::-1]
    parts = (("compute only", lambda r: r.compute_us - r.overlapped_us, "#7f7f7f"),
             ("overlapped", lambda r: r.overlapped_us, "#9467bd"),
             ("exposed comm", lambda r: r.exposed_comm_us, "#ff7f0e"),
             ("other (launch, sync)", lambda r: r.other_us, "#dddddd"))
    left = np.zeros(len(rows))
    for name, f, c in parts:
        v = np.array([f(r) for r in rows])
        a0.barh(y, v, left=left, color=c, label=name)
        left += v
    a0.set_yticks(y, [_label(r) + (" (fastest)" if r.system in style.PIPELINED and r.is_best else "") for r in rows],
                  fontsize=7)
    a0.set_xlabel("time per rank (us, mean over ranks)")
    a0.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=4, frameon=False)  # off the bars
    # hidden fraction: ours per run, paper's per system as stars at their counterpart (or its own slot)
    labels = [_label(r) for r in rows]
    x = np.arange(len(rows))
    a1.bar(x, [100 * r.hidden_comm_fraction for r in rows], color=[style.COLORS[r.system] for r in rows],
           label="ours (sim)")
    extra = len(rows)
    for key, name, ours in PAPER_SYSTEMS:
        v = 100 * style.paper_value(paper, "hidden_comm_fraction", key)[0]
        xs = [i for i, r in enumerate(rows) if r.system == ours and r.is_best]
        if not xs:
            xs, labels = [extra], labels + [f"{name}\n(paper only)"]
            extra += 1
        for xi in xs:
            a1.scatter([xi], [v], **style.PAPER_MARKER)
            a1.annotate(f"{name} {v:.1f}%", (xi, v), xytext=(0, 6), textcoords="offset points", ha="center",
                        fontsize=7)
    a1.scatter([], [], label="paper (8 x H800)", **style.PAPER_MARKER)
    a1.set_xticks(np.arange(len(labels)), labels, fontsize=6, rotation=60, ha="right")
    a1.set_ylabel("communication hidden (%)")
    a1.set_ylim(0, 105)
    a1.legend(loc="upper right")
    r0 = rows[0]
    fig.suptitle(f"{r0.model}, EP={r0.ep} TP={r0.tp}, M={r0.tokens}: time breakdown and hidden communication")
    fig.tight_layout()
    return fig


main = style.entry_point(__name__)

if __name__ == "__main__":
    main()
