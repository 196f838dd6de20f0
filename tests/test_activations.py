"""The epilogue's gelu (kernels/activations.py) against the exact erf form, elementwise."""

import math

import pytest
import torch
import triton
import triton.language as tl

from kernels.activations import gelu_erf

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@triton.jit
def _gelu_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(y_ptr + offs, gelu_erf(tl.load(x_ptr + offs, mask=mask)), mask=mask)


def _gelu(x):
    y = torch.empty_like(x)
    _gelu_kernel[(triton.cdiv(x.numel(), 1024),)](x, y, x.numel(), BLOCK=1024)
    return y


def test_gelu_erf_matches_exact_gelu():
    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0])])
    got = _gelu(x.to(DEVICE)).cpu().double()
    exact = 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))
    err = (got - exact).abs()
    # A&S 7.1.26 bounds erf's error by 1.5e-7, so gelu's by 0.5 |x| 1.5e-7; plus ~8 fp32 roundings
    # (u = 6e-8) in the polynomial, the exp2 and the products, all scaled by 0.5 |x|
    bound = 0.5 * x.double().abs() * (1.5e-7 + 8 * 6e-8) + 6e-8 * exact.abs() + 1e-30
    worst = int((err / bound).argmax())
    assert bool((err <= bound).all()), f"gelu({float(x[worst])}) = {float(got[worst])}, exact {float(exact[worst])}"
    assert got[x == 0].abs().max() == 0 and float(got[-2]) == 40.0 and abs(float(got[-1])) < 1e-30


def test_gelu_erf_keeps_sign_and_monotone_tail():
    x = torch.linspace(-6, 6, 4097).to(DEVICE, torch.float32)
    y = _gelu(x).cpu()
    assert bool((y[x.cpu() > 0] > 0).all()) and bool((y[x.cpu() < 0] <= 0).all())
    assert bool((y[x.cpu() >= 0].diff() >= 0).all()), "gelu increases for x >= 0"


def test_folded_gelu_constants_keep_the_accuracy():
    # the Gluon kernel's epilogue uses the folded constants (GELU_P, GELU_T, GELU_E); evaluated here in fp32
    # on the CPU with the same operation order, they must meet the same bound as the plain form
    from kernels.activations import gelu_erf_folded_reference

    x = torch.cat([torch.linspace(-12, 12, 20001), torch.tensor([0.0, -0.0, 40.0, -40.0])])
    got = gelu_erf_folded_reference(x.float()).double()
    exact = 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))
    bound = 0.5 * x.double().abs() * (1.5e-7 + 8 * 6e-8) + 6e-8 * exact.abs() + 1e-30
    assert bool(((got - exact).abs() <= bound).all())


def _exact_gelu(x):
    return 0.5 * x.double() * (1 + torch.erf(x.double() / math.sqrt(2)))


def test_fast_gelu_fit_error_and_tail():
    # the Gluon kernel's fast_gelu form in fp32 with an exact tanh: the fit's error (<= 2.6e-5) plus a few
    # fp32 roundings; with tanh.approx's worst relative error (2^-11) either way: at most 2^-11 |x| / 2 more
    from kernels.activations import fast_gelu_reference

    x = torch.cat([torch.linspace(-12, 12, 40001), torch.tensor([0.0, -0.0, 40.0, -40.0, 1e4, -1e4])])
    exact = _exact_gelu(x)
    got = fast_gelu_reference(x.float()).double()
    assert bool(((got - exact).abs() <= 2.6e-5 + 4 * 6e-8 * x.double().abs()).all())
    for sign in (1, -1):
        worst = fast_gelu_reference(x.float(), lambda u, s=sign: torch.tanh(u) * (1 + s * 2.0 ** -11)).double()
        assert bool(((worst - exact).abs() <= 2.6e-5 + (2.0 ** -12 + 4 * 6e-8) * x.double().abs()).all())
    assert got[-6:].tolist() == [0.0, 0.0, 40.0, 0.0, 1e4, 0.0]  # saturates (the clamp keeps the sign)
    pos = fast_gelu_reference(torch.linspace(0, 12, 100001))
    assert bool((pos.diff() >= 0).all()), "gelu increases for x >= 0"


def test_fast_gelu_adds_little_to_bf16_rounding():
    # The Gluon kernel applies gelu to the bf16-rounded GEMM result; that rounding alone changes ~37% of the
    # bf16 outputs by an ulp against bf16(gelu(exact x)). The fast form, even with tanh.approx's worst-case
    # error on every element, adds at most a few percent to that.
    from kernels.activations import fast_gelu_reference

    x = torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 2
    ref = _exact_gelu(x).bfloat16()
    xb = x.bfloat16().float()
    rounding_only = (_exact_gelu(xb).bfloat16() != ref).float().mean().item()
    fast = fast_gelu_reference(xb, lambda u: torch.tanh(u) * (1 + 2.0 ** -11))
    with_fast = (fast.bfloat16() != ref).float().mean().item()
    assert 0.3 < rounding_only < with_fast < rounding_only + 0.05, (rounding_only, with_fast)


@pytest.mark.parametrize("dtype,rel_bound,norm_bound", [(torch.bfloat16, 2.0 ** -7, 2e-3),
                                                        (torch.float16, 2.0 ** -10, 3e-4)])
def test_packed_gelu_error(dtype, rel_bound, norm_bound):
    # fast_gelu="packed": every step rounded to the 16-bit type; with an exact tanh the error stays below
    # rel_bound |x| everywhere (measured 2^-7.8 bf16, 2^-10.7 fp16) and saturates exactly
    from kernels.activations import packed_gelu_reference

    x = torch.cat([torch.linspace(-12, 12, 40001), torch.tensor([0.0, -0.0, 40.0, -40.0, 1e4, -1e4])]).to(dtype)
    err = (packed_gelu_reference(x).double() - _exact_gelu(x)).abs()
    assert bool((err <= rel_bound * x.double().abs()).all()), float(torch.nan_to_num(err / x.double().abs()).max())
    assert packed_gelu_reference(x)[-6:].tolist() == [0.0, 0.0, 40.0, 0.0, x[-2].item(), 0.0]
    r = (torch.randn(200_000, generator=torch.Generator().manual_seed(0)) * 2).to(dtype)
    exact = _exact_gelu(r)
    assert ((packed_gelu_reference(r).double() - exact).norm() / exact.norm()).item() < norm_bound


def test_packed_gelu_asm_holds_the_rounded_constants():
    # the PTX the Gluon kernel runs is generated from FAST_GELU_K: each constant, rounded to the 16-bit type,
    # in both halves of a register, and every instruction on pairs of that type
    import re

    from kernels.activations import FAST_GELU_K, FAST_GELU_X2_MAX, packed_gelu_asm

    for name, ty in (("bfloat16", "bf16x2"), ("float16", "f16x2")):
        asm = packed_gelu_asm(name)
        consts = [int(h, 16) for h in re.findall(r"mov\.b32 \w+, 0x([0-9a-f]{8});", asm)]
        halves = torch.tensor([c & 0xFFFF for c in consts], dtype=torch.int32).to(torch.int16)
        values = halves.view(getattr(torch, name)).float().tolist()
        want = [FAST_GELU_X2_MAX, FAST_GELU_K[2], FAST_GELU_K[1], FAST_GELU_K[0], 0.5]
        assert values == [torch.tensor(w).to(getattr(torch, name)).item() for w in want]
        assert all(c >> 16 == c & 0xFFFF for c in consts)
        ops = re.findall(r"^(\w+(?:\.\w+)*) ", asm, flags=re.M)
        assert {op.rsplit(".", 1)[1] for op in ops if not op.startswith(("mov", ".reg"))} == {ty}
