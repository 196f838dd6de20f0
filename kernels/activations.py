"""Activations fused into GEMM epilogues (shared by kernels.grouped_gemm and kernels.fused_layer0).

gelu is the exact (erf) form, computed with Abramowitz & Stegun 7.1.26: for z >= 0,
erf(z) = 1 - p(t) exp(-z^2), t = 1 / (1 + 0.3275911 z), |error| <= 1.5e-7, far below bf16 rounding.
libdevice's erff costs ~2x the instructions and, over a 128x256 fp32 tile, pushed the epilogue into
register spills (results/grouped_gemm/README.md); this form is one fast reciprocal, one exp2 and five FMAs.
With e = p(t) exp(-z^2): gelu(x) = x (1 - e/2) for x >= 0 and x e / 2 for x < 0.
"""

from __future__ import annotations

import math

import triton
import triton.language as tl

NONE, GELU, SWIGLU = 0, 1, 2  # the kernels' ACTIVATION constexpr values
# name -> code: the model activations (comet.core.config.ACTIVATIONS) and "none" (a plain GEMM)
ACTIVATIONS = {"none": NONE, "gelu": GELU, "swiglu": SWIGLU}

# A&S 7.1.26 coefficients: t = 1 / (1 + AS_P z), erf(z) = 1 - t (AS_T[0] + t (AS_T[1] + ...)) exp(-z^2)
AS_P = 0.3275911
AS_T = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
# folded for z = |x| / sqrt(2) and the half taken by gelu (kernels/gluon_gemm.py's epilogue): t = 1 / (1 +
# GELU_P |x|), e/2 = t (GELU_T[0] + t (...)) 2^(GELU_E x^2): ~12 instructions and two MUFU ops an element
# instead of ~17 (the kernels run at the board's power limit, where instructions cost time). The tl kernel
# keeps the plain form: with the folded one ptxas (Triton 3.6) spills its 128x256 epilogue.
GELU_P = AS_P / math.sqrt(2.0)
GELU_T = tuple(c / 2 for c in AS_T)
GELU_E = -0.5 / math.log(2.0)
# Fast gelu (kernels/gluon_gemm.py, GemmOptions.fast_gelu): gelu(x) ~ x/2 (1 + tanh(x (K1 + K3 x2 + K5 x2^2))),
# x2 = min(x^2, X2_MAX), with one tanh.approx.f32 (a single MUFU op, relative error <= 2^-11): ~7 instructions
# an element. K1..K5: minimax fit of |error| on x in [-12, 12] (scipy Nelder-Mead, exact tanh): |error| <=
# 2.6e-5; with tanh.approx's error, <= 2.6e-4 relative for |x| >= 0.5 (bf16 rounds at 2^-9 = 2e-3
# relative; fp16 at 4.9e-4, hence opt-in). The clamp keeps the K5 term (negative) from turning the
# argument's sign for |x| > 11.9; past |x| = 5 the tanh is 1 to fp32 precision anyway.
FAST_GELU_K = (0.7975078842854613, 0.0370056460224696, -0.0003515167885740765)
FAST_GELU_X2_MAX = 25.0
# Packed gelu (kernels/gluon_gemm.py, fast_gelu="packed"): the fast form on pairs of bf16 / fp16 values with
# the GPU's x2 instructions (fma.rn.bf16x2, tanh.approx.bf16x2, ...), every step rounded to the 16-bit type: ~8
# instructions per pair instead of ~19, and no conversions. In bf16 the tanh's own rounding (2^-9 near +-1)
# leaves |error| up to |x| 2^-7.6 where gelu is small (x < -1; 2^-7.8 with an exact tanh: the GPU test
# test_gpu_gluon_packed_gelu and `packed_gelu_reference`), relative norm error 2.0e-3 vs 1.7e-3 for the fp32
# form (N(0, 1) inputs), hence opt-in. fp16: |x| 2^-10.5.
PACKED_DTYPES = {"bfloat16": "bf16x2", "float16": "f16x2"}
_LOG2E = tl.constexpr(1.4426950408889634)
_P = tl.constexpr(AS_P)
_T0, _T1, _T2, _T3, _T4 = (tl.constexpr(c) for c in AS_T)


@triton.jit
def gelu_erf(x):
    z = tl.abs(x) * 0.7071067811865476
    t = tl.fdiv(1.0, 1.0 + _P * z)  # approximate division: ~2 ulp, ample here
    p = t * (_T0 + t * (_T1 + t * (_T2 + t * (_T3 + t * _T4))))
    half_e = 0.5 * p * tl.exp2(-(z * z) * _LOG2E)
    # x * factor (not a select between two products): ptxas then keeps a 128x256 tile in registers
    return x * tl.where(x >= 0, 1.0 - half_e, half_e)


def gelu_erf_folded_reference(x):
    """The folded form on torch tensors, in x's dtype (kernels/gluon_gemm.py computes it on the GPU)."""
    import torch

    t = 1.0 / (1.0 + GELU_P * x.abs())
    poly = GELU_T[4]
    for c in reversed(GELU_T[:4]):
        poly = c + t * poly
    half_e = t * poly * torch.exp2(x * x * GELU_E)
    return x * torch.where(x >= 0, 1.0 - half_e, half_e)


def fast_gelu_reference(x, tanh=None):
    """The fast form on torch tensors (exact tanh unless `tanh` is given: a test perturbs it)."""
    import torch

    k1, k3, k5 = FAST_GELU_K
    x2 = torch.clamp(x * x, max=FAST_GELU_X2_MAX)
    u = x * (k1 + x2 * (k3 + k5 * x2))
    half = 0.5 * x
    return half + half * (tanh or torch.tanh)(u)


def packed_gelu_reference(x, tanh=None):
    """The packed form on a bf16 / fp16 tensor: each step rounded to x's dtype, as the x2 instructions do
    (a fused multiply-add rounds once; tanh exact then rounded unless `tanh` is given)."""
    import torch

    dt = x.dtype
    f = x.float()

    def rnd(v):
        return v.to(dt).float()

    k1, k3, k5 = (rnd(torch.tensor(c)) for c in FAST_GELU_K)
    x2 = torch.clamp(rnd(f * f), max=FAST_GELU_X2_MAX)
    p = rnd(x2 * k5 + k3)  # (exact products of 16-bit values in fp32, then one rounding: the fma)
    p = rnd(x2 * p + k1)
    t = rnd((tanh or torch.tanh)(rnd(p * f)))
    half = rnd(0.5 * f)
    return rnd(half * t + half).to(dt)


def packed_gelu_asm(dtype_name: str) -> str:
    """PTX for one pair ($1 in, $0 out, 32-bit registers) of the packed form in bfloat16 or float16."""
    import torch

    ty = PACKED_DTYPES[dtype_name]
    dt = getattr(torch, dtype_name)

    def pair(c):  # the constant rounded to the 16-bit type, in both halves of a 32-bit register
        h = torch.tensor([c], dtype=dt).view(torch.int16).item() & 0xFFFF
        return f"0x{h:04x}{h:04x}"

    k1, k3, k5 = (pair(c) for c in FAST_GELU_K)
    return "\n".join([
        "{", ".reg .b32 x2, p, t, h, c;",
        f"mul.rn.{ty} x2, $1, $1;", f"mov.b32 c, {pair(FAST_GELU_X2_MAX)};", f"min.{ty} x2, x2, c;",
        f"mov.b32 c, {k5};", f"mov.b32 p, {k3};", f"fma.rn.{ty} p, x2, c, p;",
        f"mov.b32 c, {k1};", f"fma.rn.{ty} p, x2, p, c;", f"mul.rn.{ty} p, p, $1;",
        f"tanh.approx.{ty} t, p;", f"mov.b32 c, {pair(0.5)};", f"mul.rn.{ty} h, $1, c;",
        f"fma.rn.{ty} $0, h, t, h;", "}"])


@triton.jit
def apply_activation(acc, acc_up, ACTIVATION: tl.constexpr):
    """act(acc) in fp32; swiglu: silu(gate = acc) * up (acc_up)."""
    if ACTIVATION == 1:
        acc = gelu_erf(acc)
    elif ACTIVATION == 2:
        acc = acc * tl.sigmoid(acc) * acc_up
    return acc
