"""Tile / warp choices of kernels/row_gather.py's copy on the GPU: device time (CUDA graph) and GB/s moved
(read + write) for layer0's rows at M=4096 and 16384 (EP=4 rank 0, Mixtral / Phi-3.5 hidden 4096).

    python dev/row_gather_configs.py --out results/grouped_gemm --tag h200_row_gather
"""

import argparse
import csv
import datetime
import itertools
from pathlib import Path

import torch
import triton

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from kernels import row_gather
from kernels.timing import device_line, graph_us


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="results/grouped_gemm")
    ap.add_argument("--tag", default="row_gather")
    a = ap.parse_args()
    path = Path(a.out) / f"{a.tag}_{datetime.date.today()}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(f"# {device_line()}\n")
        w = csv.DictWriter(f, fieldnames=["model", "tokens_M", "rows", "block_r", "block_d", "num_warps", "us",
                                          "gb_s", "default"])
        w.writeheader()
        for name, M in itertools.product(("mixtral-8x7b",), (4096, 16384)):
            model = ModelConfig.from_name(name)
            routing = make_routing("balanced", M, model.experts_E, model.topk, seed=0).to("cuda")
            plan = make_plan(routing, model, ParallelConfig(ep=4), HardwareProfile.from_name("h200"), Policy(),
                             ranks=[0])
            rp = plan.rank(0)
            R = int(rp.num_rows)
            rows = rp.row_token_R[:R].to("cuda")
            x = torch.randn(M, model.hidden_N, device="cuda", dtype=torch.bfloat16)
            out = torch.empty(R, model.hidden_N, device="cuda", dtype=torch.bfloat16)
            ref = x[rows]
            D = x.shape[1]
            moved = 2 * R * D * x.element_size()
            us = graph_us(lambda x=x, rows=rows, out=out: row_gather.gather_rows(x, rows, out))
            assert torch.equal(out, ref)
            w.writerow({"model": name, "tokens_M": M, "rows": R, "block_r": row_gather._BLOCK_R, "block_d": "",
                        "num_warps": "", "us": f"{us:.2f}", "gb_s": f"{moved / us / 1e3:.0f}", "default": 1})
            for br, bd_bytes, nw in itertools.product((8, 16, 32), (2048, 4096, 8192), (4, 8)):
                bd = min(triton.next_power_of_2(D), bd_bytes // x.element_size())
                if br * bd * x.element_size() > 64 * 1024:
                    continue
                grid = (triton.cdiv(R, br), triton.cdiv(D, bd))
                def fn(x=x, rows=rows, out=out, R=R, D=D, grid=grid, br=br, bd=bd, nw=nw):
                    row_gather._gather_rows_kernel[grid](x, rows, out, R, D, x.stride(0), out.stride(0), BLOCK_R=br,
                                                         BLOCK_D=bd, num_warps=nw)
                out.zero_()
                fn()
                assert torch.equal(out, ref)
                us = graph_us(fn)
                w.writerow({"model": name, "tokens_M": M, "rows": R, "block_r": br, "block_d": bd, "num_warps": nw,
                            "us": f"{us:.2f}", "gb_s": f"{moved / us / 1e3:.0f}", "default": 0})
                print(f"M={M} R={R} br={br} bd={bd} nw={nw}: {us:.1f} us {moved / us / 1e3:.0f} GB/s", flush=True)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
