"""Benchmark the persistent grouped GEMM (kernels/grouped_gemm.py) on the paper models' expert shapes.

One rank's view at EP=4 (TP=1): rank 0's local experts and the rows routed to them, for several token
counts M and balanced / imbalanced (std 0.032) routing. For each layer it times, in one process with
triton.testing.do_bench medians:
    ours            the Triton kernel over the Plan's tile table (layer0: gathers token rows by id and
                    fuses the activation; layer1: rows in shared-row order), one run per tile variant;
    cublas_loop     torch.mm per local expert on pre-gathered rows (GEMM only);
    grouped_mm      torch._grouped_mm on pre-gathered rows (GEMM only), B column-major (its fast layout)
                    and row-major (the layout our kernel reads);
    torch_unfused   what the GEMM stands for in plain PyTorch: index_select + _grouped_mm + activation;
    cublas_unfused  the same with the cuBLAS loop: index_select + torch.mm per expert + activation;
    cublas_gelu_loop  (layer0, gelu) cuBLASLt per expert with its own gelu epilogue, on pre-gathered rows
                    (torch._addmm_activation): the same GEMM and activation as ours, without the gather.
TFLOP/s count real rows only (2 * rows * D_IN * D_OUT'); the bf16 ceiling is a large torch.matmul measured
in the same process. Primary times are device times (calls replayed from a CUDA graph, for every
implementation alike); eager times (do_bench, launch and Python overhead included) are kept beside them.
Writes a long CSV (one row per case x implementation) and a summary CSV.

    python -m benchmarks.grouped_gemm --check --out results/grouped_gemm
"""

from __future__ import annotations

import argparse
import csv
import datetime
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from comet.core.tolerances import assert_close
from kernels import grouped_gemm as gg
from kernels.options import GemmOptions
from kernels.reference_gemm import expert_rows, reference_layer0, reference_layer1
from kernels.timing import device_line, eager_us, graph_us

MODELS = ("mixtral-8x7b", "phi-3.5-moe", "qwen2-moe-2.7b")
TOKENS = (16384, 4096, 8192)
# name -> (block_m, block_n0, block_n1, group_m, options): kernels.options.GemmOptions fields, plus the
# benchmark's own keys a_tma_l1, programs_per_sm, balanced_programs, sorted_a and activation (`run_case`).
# Suffix t: B through TMA (and A too in layer1, which gathers nothing), f: flattened tile loop, W: Triton's
# warp specialisation of the tile loop, p2: two programs per SM; all run kernels/grouped_gemm.py's kernel
# (impl "triton") unless they say impl "gluon"
_T = {"b_tma": True, "a_tma_l1": True}
VARIANTS = {
    "128x256": (128, 256, 256, 8, {}),
    "128x256t": (128, 256, 256, 8, _T),
    "128x256tW": (128, 256, 256, 8, {**_T, "warp_specialize": True}),
    "128x128t": (128, 128, 128, 8, _T),
    "128x128p2": (128, 128, 128, 8, {"programs_per_sm": 2}),
    "128x128tp2": (128, 128, 128, 8, {**_T, "programs_per_sm": 2}),
    # layer0 with A already in shared-row order (no gather in the kernel), so A too comes through TMA;
    # "+g" adds the index_select that sorts the rows (what a dispatch that writes rows in place saves)
    "128x256tS": (128, 256, 256, 8, {**_T, "sorted_a": "kernel"}),
    "128x256tS+g": (128, 256, 256, 8, {**_T, "sorted_a": "with_gather"}),
    "128x256tSf": (128, 256, 256, 8, {**_T, "sorted_a": "kernel", "flatten": True}),
    "128x128tS": (128, 128, 128, 8, {**_T, "sorted_a": "kernel"}),
    # C: whole output tiles stored through TMA; -noact: layer0 without its activation (a different result:
    # it measures what the epilogue's activation costs, its check is expected to fail)
    "128x256tC": (128, 256, 256, 8, {**_T, "c_tma": True}),
    "128x256tSC": (128, 256, 256, 8, {**_T, "c_tma": True, "sorted_a": "kernel"}),
    "128x128tC": (128, 128, 128, 8, {**_T, "c_tma": True}),
    "128x256t-noact": (128, 256, 256, 8, {**_T, "activation": "none"}),
    # G: the Gluon Hopper kernel (kernels/gluon_gemm.py: the K loops of a program's tiles in one pipeline, the
    # activation overlapped with the next tile's wgmmas; B and C through TMA, A too where it is in place (l1;
    # l0 with S), else gathered by cp.async in a warp-specialised loader partition), with its defaults: gelu by
    # the fast form for bf16. i: the gather issued by the multiplying warps themselves (ws_gather=False);
    # -acc: the accurate gelu (fast_gelu=False). (Until these defaults, "G" meant today's "Gi-acc", and "-fg" /
    # "Gw" marked the fast gelu / the loader partition: results/grouped_gemm/README.md maps the names.)
    "128x256G": (128, 256, 256, 8, {"impl": "gluon"}),
    "128x256GS": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel"}),
    "128x256GS+g": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "with_gather"}),
    "128x256Gi": (128, 256, 256, 8, {"impl": "gluon", "ws_gather": False}),
    "128x256G-acc": (128, 256, 256, 8, {"impl": "gluon", "fast_gelu": False}),
    "128x256GS-acc": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "fast_gelu": False}),
    "128x256Gi-acc": (128, 256, 256, 8, {"impl": "gluon", "ws_gather": False, "fast_gelu": False}),
    "128x128G": (128, 128, 128, 8, {"impl": "gluon"}),
    "128x128GS": (128, 128, 128, 8, {"impl": "gluon", "sorted_a": "kernel"}),
    "128x128Gi": (128, 128, 128, 8, {"impl": "gluon", "ws_gather": False}),
    "64x256GS": (64, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel"}),
    "128x256GS-noact": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "activation": "none"}),
    "128x256G-noact": (128, 256, 256, 8, {"impl": "gluon", "activation": "none"}),
    # -pk: gelu's fast form on bf16 pairs (fast_gelu="packed": every step rounded to bf16)
    "128x256G-pk": (128, 256, 256, 8, {"impl": "gluon", "fast_gelu": "packed"}),
    "128x256G-pk-g16": (128, 256, 256, 16, {"impl": "gluon", "fast_gelu": "packed"}),
    "128x256GS-pk": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "fast_gelu": "packed"}),
    # w: A in place (layer1, and layer0 with S) loaded by the loader partition too (ws_tma=True)
    "128x256Gw": (128, 256, 256, 8, {"impl": "gluon", "ws_tma": True}),
    "128x256GSw": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "ws_tma": True}),
    "128x128GSw": (128, 128, 128, 8, {"impl": "gluon", "sorted_a": "kernel", "ws_tma": True}),
    # -ns: no split tail (split_tail=False: whole tiles round-robin even when the last wave is short; with A in
    # place, the inline loads again); -st: split wherever the last wave is short (split_tail=True). Without
    # either, the default: split where a tile has >= 64 K steps.
    "128x256G-st": (128, 256, 256, 8, {"impl": "gluon", "split_tail": True}),
    "128x256GS-st": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "split_tail": True}),
    "128x256G-ns": (128, 256, 256, 8, {"impl": "gluon", "split_tail": False}),
    "128x256GS-ns": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "split_tail": False}),
    "128x128G-ns": (128, 128, 128, 8, {"impl": "gluon", "split_tail": False}),
    "128x128GS-ns": (128, 128, 128, 8, {"impl": "gluon", "sorted_a": "kernel", "split_tail": False}),
    # -ig: the gather inside the kernel even for wide weights (pregather=False; the default pregathers for
    # >= 4096 weight columns: kernels.grouped_gemm.PREGATHER_MIN_COLS)
    "128x256G-ig": (128, 256, 256, 8, {"impl": "gluon", "pregather": False}),
    "128x256G-ig-g16": (128, 256, 256, 16, {"impl": "gluon", "pregather": False}),
    "128x128G-ig": (128, 128, 128, 8, {"impl": "gluon", "pregather": False}),
    # P: rows copied into shared-row order first (pregather=True, kernels/row_gather.py; timed with the GEMM),
    # then A in place through TMA
    "128x256GP": (128, 256, 256, 8, {"impl": "gluon", "pregather": True}),
    "128x256GP-g16": (128, 256, 256, 16, {"impl": "gluon", "pregather": True}),
    "128x128GP": (128, 128, 128, 8, {"impl": "gluon", "pregather": True}),
    # -bp: balanced programs, ceil(T / waves) instead of one per SM (waves = ceil(T / SMs)): the last wave is
    # (nearly) full and the SMs left idle all along lend their power budget to the others' clock
    "128x256G-bp": (128, 256, 256, 8, {"impl": "gluon", "balanced_programs": True}),
    "128x256G-pk-bp": (128, 256, 256, 8, {"impl": "gluon", "fast_gelu": "packed", "balanced_programs": True}),
    "128x256GS-bp": (128, 256, 256, 8, {"impl": "gluon", "sorted_a": "kernel", "balanced_programs": True}),
    # -g16 / -g32: the Plan's layer0 tiles swizzled in groups of 16 / 32 row blocks (group_m; default 8)
    "128x256G-g16": (128, 256, 256, 16, {"impl": "gluon"}),
    "128x256G-g32": (128, 256, 256, 32, {"impl": "gluon"}),
    "128x256GS-g16": (128, 256, 256, 16, {"impl": "gluon", "sorted_a": "kernel"}),
    "128x256g16t": (128, 256, 256, 16, _T),
    "128x256g4t": (128, 256, 256, 4, _T),
}
# what `impl="auto"` runs on Hopper (the Gluon kernel with its defaults; with group_m 16; with A already in
# shared-row order) and the tl kernel's best variant (what runs elsewhere; on other GPUs the Gluon variants
# report why they cannot run and the rest carries on)
DEFAULT_VARIANTS = ("128x256G", "128x256G-g16", "128x256GS", "128x256t")
DEVICE = "cuda"  # a smoke test points these at the CPU interpreter, whose bf16 is broken: float32
DTYPE = torch.bfloat16
TIMING = "both"  # "both": device (CUDA graph) and eager times; "graph": device times only
FIELDS = ["gpu", "model", "tokens_M", "routing", "layer", "activation", "rows", "experts_local", "d_in", "d_out",
          "impl", "variant", "config", "time_us", "tflops", "frac_ceiling", "eager_time_us", "eager_tflops",
          "rel_err", "check"]


def _bench_both(fn) -> tuple[float, float]:
    eager = eager_us(fn) if TIMING == "both" else float("nan")
    try:
        return graph_us(fn), eager
    except Exception as exc:  # noqa: BLE001 - a capture failure is reported, the eager time kept
        print(f"graph capture failed ({type(exc).__name__}: {str(exc)[:200]}); device time = eager", flush=True)
        return eager, eager


def _ceiling_tflops(dtype, warm_s: float = 0.0) -> float:
    """bf16 matmul 8192x4096x14336 on random data (the ceiling shape of docs/GPU_FACTS.md); warm_s of matmuls first so
    the clocks have ramped up."""
    a = torch.randn(8192, 4096, device=DEVICE, dtype=dtype)
    b = torch.randn(4096, 14336, device=DEVICE, dtype=dtype)
    t_end = time.time() + warm_s
    while time.time() < t_end:
        for _ in range(10):
            a @ b
        torch.cuda.synchronize()
    us = eager_us(lambda: a @ b)
    return 2 * 8192 * 4096 * 14336 / us / 1e6


def _best_config_str() -> str:
    c = getattr(gg._kernel_tuned, "best_config", None)
    if c is None:
        return ""
    return f"BK{c.kwargs.get('BLOCK_K')}_w{c.num_warps}_s{c.num_stages}"


def _gluon_config_str(plan, layer: str) -> str:
    from kernels.gluon_host import num_buffers_for

    bn = plan.policy.block_n0 if layer == "l0" else plan.policy.block_n1
    n_b = 2 if layer == "l0" and plan.model.activation == "swiglu" else 1
    nb = num_buffers_for(plan.policy.block_m, bn, 64, 2, n_b)
    return f"BK64_w{plan.policy.block_m // 16}_nb{nb}"


def _rel_err(actual, expected) -> float:
    a, e = actual.float(), expected.float()
    return float(torch.linalg.vector_norm(a - e) / torch.linalg.vector_norm(e).clamp(min=1e-30))


def _check(actual, expected, what) -> str:
    try:
        assert_close(actual, expected, torch.bfloat16, what)
        return "ok"
    except AssertionError as exc:
        print(f"CHECK FAILED: {exc}", flush=True)
        return "FAIL"


def run_case(writer, summary, model: ModelConfig, M: int, routing_kind: str, variants, ceiling, check: bool,
             gpu: str, seed: int = 0, layers=("l0", "l1")):
    dtype = DTYPE
    par = ParallelConfig(ep=4, tp=1)
    hw = HardwareProfile.from_name("h200")
    routing = make_routing(routing_kind, M, model.experts_E, model.topk, seed=seed, std=0.032).to(DEVICE)
    plans = {v: make_plan(routing, model, par, hw, Policy(block_m=bm, block_n0=bn0, block_n1=bn1, group_m=gm),
                          ranks=[0]) for v, (bm, bn0, bn1, gm, _) in variants.items()}
    plan0 = next(iter(plans.values()))
    rp = plan0.rank(0)
    R, R_max = int(rp.num_rows), rp.row_token_R.numel()
    E, N, K = plan0.experts_per_rank, model.hidden_N, plan0.ffn_local
    act = model.activation
    k0 = 2 * K if act == "swiglu" else K
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    x = torch.randn(M, N, device=DEVICE, dtype=dtype, generator=g)
    w0 = (torch.randn(E, N, k0, device=DEVICE, generator=g) / N ** 0.5).to(dtype)
    w1 = (torch.randn(E, K, N, device=DEVICE, generator=g) / K ** 0.5).to(dtype)
    h = torch.randn(R_max, K, device=DEVICE, dtype=dtype, generator=g)
    rows = expert_rows(plan0, 0)
    offs = torch.tensor([e for _, e in rows], device=DEVICE, dtype=torch.int32)
    tok = rp.row_token_R[:R]
    x_sorted = x[tok].contiguous()
    has_gmm = hasattr(torch, "_grouped_mm")
    sms = gg.sm_count(x.device)
    act_fn = {"gelu": F.gelu, "swiglu": lambda t: F.silu(t[:, :K]) * t[:, K:]}[act]

    tok_R = rp.row_token_R.clamp(min=0)  # R_max rows, padding rows read token 0
    x_RN = x[tok_R].contiguous()
    for layer in layers:
        a_sorted, w = (x_sorted, w0) if layer == "l0" else (h[:R], w1)
        d_in, d_out = w.shape[1], w.shape[2]
        flops = 2.0 * R * d_in * d_out
        base = dict(gpu=gpu, model=model.name, tokens_M=M, routing=routing_kind, layer=layer,
                    activation=act if layer == "l0" else "none", rows=R, experts_local=E, d_in=d_in, d_out=d_out)

        res, res_eager = {}, {}

        def emit(impl, times, variant="", config="", rel_err="", chk="", base=base, flops=flops,
                 res_eager=res_eager):
            us, eager = times
            res_eager[impl if impl != "ours" else f"ours_{variant}"] = flops / eager / 1e6
            tf = flops / us / 1e6
            writer.writerow({**base, "impl": impl, "variant": variant, "config": config, "time_us": f"{us:.2f}",
                             "tflops": f"{tf:.1f}", "frac_ceiling": f"{tf / ceiling:.3f}",
                             "eager_time_us": f"{eager:.2f}", "eager_tflops": f"{flops / eager / 1e6:.1f}",
                             "rel_err": rel_err, "check": chk})
            return tf

        out_b = torch.empty(R, d_out, device=DEVICE, dtype=dtype)

        def loop(a_sorted=a_sorted, w=w, out_b=out_b):
            for e, (s, end) in enumerate(rows):
                if end > s:
                    torch.mm(a_sorted[s:end], w[e], out=out_b[s:end])
        res["cublas_loop"] = emit("cublas_loop", _bench_both(loop))
        if layer == "l0":  # the same output as ours: gather, GEMM, activation
            def loop_unfused(w=w, out_b=out_b):
                a = x.index_select(0, tok)
                for e, (s, end) in enumerate(rows):
                    if end > s:
                        torch.mm(a[s:end], w[e], out=out_b[s:end])
                return act_fn(out_b)
            res["cublas_unfused"] = emit("cublas_unfused", _bench_both(loop_unfused))
            if act == "gelu" and DEVICE == "cuda":  # cuBLASLt's gelu epilogue (tanh form): GEMM + act, no gather
                zero_bias = torch.zeros(d_out, device=DEVICE, dtype=dtype)

                def loop_gelu(a_sorted=a_sorted, w=w, zero_bias=zero_bias):
                    for e, (s, end) in enumerate(rows):
                        if end > s:
                            torch._addmm_activation(zero_bias, a_sorted[s:end], w[e], use_gelu=True)
                res["cublas_gelu_loop"] = emit("cublas_gelu_loop", _bench_both(loop_gelu))
        if has_gmm:
            w_col = w.transpose(1, 2).contiguous().transpose(1, 2)  # same values, column-major per expert
            for impl, ww in (("grouped_mm_colmajor", w_col), ("grouped_mm_rowmajor", w)):
                try:
                    res[impl] = emit(impl, _bench_both(lambda ww=ww, a=a_sorted: torch._grouped_mm(a, ww, offs=offs)))
                except Exception as exc:  # noqa: BLE001 - report and go on
                    print(f"{impl} failed: {type(exc).__name__}: {exc}", flush=True)
            best_w = w_col if res.get("grouped_mm_colmajor", 0) >= res.get("grouped_mm_rowmajor", 0) else w
            try:
                if layer == "l0":
                    fn = lambda ww=best_w: act_fn(torch._grouped_mm(x.index_select(0, tok), ww, offs=offs))
                else:
                    fn = lambda ww=best_w: torch._grouped_mm(h[:R], ww, offs=offs)
                res["torch_unfused"] = emit("torch_unfused", _bench_both(fn))
            except Exception as exc:  # noqa: BLE001
                print(f"torch_unfused failed: {type(exc).__name__}: {exc}", flush=True)
        # (activation's output columns for the FLOP count of ours: swiglu computes 2K columns from K outputs)
        expected = None
        if check:
            expected = (reference_layer0(plan0, 0, x, w0, act, dtype=torch.float32) if layer == "l0"
                        else reference_layer1(plan0, 0, h, w1, dtype=torch.float32))
        for v, plan in plans.items():
            opts = dict(variants[v][4])
            kw = {"num_programs": opts.pop("programs_per_sm", 1) * sms}
            if opts.pop("balanced_programs", False):  # as few programs as finish in the same number of waves
                T = int(getattr(plan.rank(0), f"num_{layer}_tiles"))
                kw["num_programs"] = -(-T // -(-T // sms))
            if "activation" in opts:
                kw["activation"] = opts.pop("activation")
            a_tma_l1 = opts.pop("a_tma_l1", False)
            sorted_a = opts.pop("sorted_a", None)
            opts.setdefault("b_tma", False)  # the layer wrappers' default is TMA where possible: be explicit
            opts.setdefault("impl", "triton")  # and the Gluon kernel where it applies
            if layer == "l1":
                opts["a_tma"] = a_tma_l1
            elif sorted_a is not None:
                opts["a_tma"] = True
            go = GemmOptions(**opts)
            if layer == "l0" and sorted_a == "kernel":
                fn = lambda plan=plan, go=go, kw=kw: gg.grouped_gemm_layer0(plan, 0, x_RN, w0, rows_sorted=True,
                                                                            options=go, **kw)
            elif layer == "l0" and sorted_a == "with_gather":
                fn = lambda plan=plan, go=go, kw=kw: gg.grouped_gemm_layer0(plan, 0, x.index_select(0, tok_R), w0,
                                                                            rows_sorted=True, options=go, **kw)
            elif layer == "l0":
                fn = lambda plan=plan, go=go, kw=kw: gg.grouped_gemm_layer0(plan, 0, x, w0, options=go, **kw)
            else:
                kw.pop("activation", None)  # (layer1 has none)
                fn = lambda plan=plan, go=go, kw=kw: gg.grouped_gemm_layer1(plan, 0, h, w1, options=go, **kw)
            try:
                out = fn()
                if DEVICE == "cuda":
                    torch.cuda.synchronize()
                cfg = _gluon_config_str(plan, layer) if go.impl == "gluon" else _best_config_str()
                rel, chk = "", ""
                if check and "noact" not in v:
                    rel = f"{_rel_err(out[:R], expected):.2e}"
                    chk = _check(out[:R], expected, f"{model.name} M={M} {routing_kind} {layer} {v}")
                res[f"ours_{v}"] = emit("ours", _bench_both(fn), v, cfg, rel, chk)
            except Exception as exc:  # noqa: BLE001 - one failing variant must not end the run
                print(f"ours {v} failed: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
        ours = {k: t for k, t in res.items() if k.startswith("ours_") and "noact" not in k}  # same work only
        gemm_base = {k: res[k] for k in ("cublas_loop", "grouped_mm_colmajor", "grouped_mm_rowmajor") if k in res}
        if ours and gemm_base:
            gmm = max(res.get("grouped_mm_colmajor", 0), res.get("grouped_mm_rowmajor", 0))
            bo, bb = max(ours, key=ours.get), max(gemm_base, key=gemm_base.get)
            unfused = max(res.get("torch_unfused", 0), res.get("cublas_unfused", 0))
            summary.append({"model": model.name, "tokens_M": M, "routing": routing_kind, "layer": layer, "rows": R,
                            "experts_local": E, "d_in": d_in, "d_out": d_out,
                            "ours_tflops": f"{ours[bo]:.1f}", "ours_variant": bo[5:],
                            "cublas_loop_tflops": f"{res.get('cublas_loop', 0):.1f}",
                            "grouped_mm_tflops": f"{gmm:.1f}",
                            "torch_unfused_tflops": f"{res.get('torch_unfused', 0):.1f}",
                            "cublas_unfused_tflops": f"{res.get('cublas_unfused', 0):.1f}",
                            "cublas_gelu_loop_tflops": f"{res.get('cublas_gelu_loop', 0):.1f}",
                            "best_baseline": bb, "ratio_vs_best": f"{ours[bo] / gemm_base[bb]:.3f}",
                            # against the best baseline that computes the same output (gather + GEMM + act)
                            "ratio_vs_unfused": f"{ours[bo] / unfused:.3f}" if unfused else "",
                            "ours_frac_ceiling": f"{ours[bo] / ceiling:.3f}",
                            "eager_ours_tflops": f"{max(res_eager[k] for k in ours):.1f}",
                            "eager_best_baseline_tflops": f"{max(res_eager[k] for k in gemm_base):.1f}"})
            s = summary[-1]
            print(f"{model.name:15s} M={M:6d} {routing_kind:10s} {layer} rows={R:6d} ours {s['ours_tflops']:>6s} "
                  f"({s['ours_variant']}) loop {s['cublas_loop_tflops']:>6s} gmm {s['grouped_mm_tflops']:>6s} "
                  f"unfused {s['torch_unfused_tflops']:>6s} ratio {s['ratio_vs_best']} "
                  f"ceil {s['ours_frac_ceiling']}", flush=True)


def _dump_compiled(out_dir: Path) -> None:
    """Registers and spills of every compiled variant of the kernel (best effort: internal API)."""
    lines = []
    try:
        for caches in gg._grouped_gemm_kernel.device_caches.values():
            for key, k in caches[0].items():
                md = k.metadata
                lines.append(f"regs={k.n_regs} spills={k.n_spills} warps={md.num_warps} stages={md.num_stages} "
                             f"shared={md.shared} key={str(key)[:400]}")
    except Exception as exc:  # noqa: BLE001
        lines.append(f"could not read compiled kernels: {type(exc).__name__}: {exc}")
    (out_dir / "compiled.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines[:40]), flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.grouped_gemm", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="results/grouped_gemm", help="folder for the CSV files")
    ap.add_argument("--check", action="store_true", help="compare every output with the fp32 reference")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--tokens", default=",".join(map(str, TOKENS)), help="token counts M of the whole EP group")
    ap.add_argument("--routings", default="balanced,imbalanced")
    ap.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                    help=f"tile variants among {', '.join(VARIANTS)}")
    ap.add_argument("--layers", default="l0,l1")
    ap.add_argument("--timing", default="both", choices=("both", "graph"),
                    help="both: device (CUDA graph replay) and eager times; graph: device times only")
    ap.add_argument("--swiglu", action="store_true", help="also time Mixtral's layer0 with swiglu (M=16384)")
    ap.add_argument("--activation", choices=("gelu", "swiglu"), default=None,
                    help="override every model's activation (the paper's default is gelu; the Hugging Face "
                         "checkpoints use swiglu: give it tile variants with BLOCK_N <= 128)")
    ap.add_argument("--tag", default="h200")
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("this benchmark needs a CUDA GPU")
    global TIMING
    TIMING = a.timing
    out_dir = Path(a.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().isoformat()
    gpu = torch.cuda.get_device_name(0)
    print(device_line(), flush=True)
    t0 = time.time()
    ceiling = _ceiling_tflops(torch.bfloat16, warm_s=3.0)
    print(f"bf16 ceiling: torch.matmul 8192x4096x14336 = {ceiling:.1f} TFLOP/s", flush=True)
    unknown = [v for v in a.variants.split(",") if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    variants = {v: VARIANTS[v] for v in a.variants.split(",")}
    summary = []
    long_path = out_dir / f"{a.tag}_{date}.csv"
    with open(long_path, "w", newline="") as f:
        f.write(f"# {device_line()}\n# bf16 ceiling (torch.matmul 8192x4096x14336): {ceiling:.1f} TFLOP/s\n")
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for M in map(int, a.tokens.split(",")):
            for name in a.models.split(","):
                for rk in a.routings.split(","):
                    over = {"activation": a.activation} if a.activation else {}
                    run_case(writer, summary, ModelConfig.from_name(name, **over), M, rk, variants, ceiling, a.check,
                             gpu, layers=a.layers.split(","))
                    f.flush()
        if a.swiglu:
            sw = {"128x64t": (128, 64, 128, 8, _T), "128x128t": (128, 128, 128, 8, _T),
                  "64x128p2": (64, 128, 128, 8, {**_T, "programs_per_sm": 2}),
                  "128x128G": (128, 128, 128, 8, {"impl": "gluon"}),
                  "128x128GS": (128, 128, 128, 8, {"impl": "gluon", "sorted_a": "kernel"})}
            run_case(writer, summary, ModelConfig.from_name("mixtral-8x7b", activation="swiglu"), 16384, "balanced",
                     sw, ceiling, a.check, gpu)
    with open(out_dir / f"{a.tag}_{date}_summary.csv", "w", newline="") as f:
        if summary:
            w = csv.DictWriter(f, fieldnames=list(summary[0]))
            w.writeheader()
            w.writerows(summary)
    print(f"bf16 ceiling again at the end: {_ceiling_tflops(torch.bfloat16):.1f} TFLOP/s", flush=True)
    _dump_compiled(out_dir)
    print(f"wrote {long_path} and the summary in {time.time() - t0:.0f} s", flush=True)


if __name__ == "__main__":
    main()
