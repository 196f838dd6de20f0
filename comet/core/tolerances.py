"""Per-dtype comparison tolerances, in one place, and `assert_close`, which every test that compares a fast
path with `comet.core.reference` uses.

A comparison passes when both hold:
    relative norm:  ||actual - expected||_2 / ||expected||_2 <= rel_norm
    elementwise:    |actual - expected| <= atol_rms * rms(expected) + rtol * |expected|   (every element)
The elementwise bound is in units of the expected tensor's RMS, so it does not depend on the scale of the
values (layer0 activations and layer1 outputs differ in scale); it catches a few garbage elements that a
norm over millions of elements would hide. Compare against a float64 (or float32) reference: `expected`
should be computed in higher precision than `dtype`, the precision of the path under test.

`dtype` names the precision of the computation under test: a torch.dtype or one of the keys of
TOLERANCES ("tf32" for float32 GEMMs on tensor cores, Triton's default for float32 `tl.dot`).

    >>> import torch
    >>> e = torch.linspace(-1, 1, 100, dtype=torch.float64)
    >>> assert_close(e + 1e-4, e, torch.bfloat16, "shifted")
    >>> assert_close(e + 1e-4, e, "float64", "shifted")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    AssertionError: shifted: not close at float64 tolerance ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Tolerance:
    """rel_norm: bound on ||a-e||/||e||; atol_rms: elementwise absolute bound in units of rms(e);
    rtol: elementwise relative bound."""

    rel_norm: float
    atol_rms: float
    rtol: float


# Sized for an MoE layer (two GEMMs, an activation and a top-k sum) against a float64 reference, with
# float32 accumulation in the fast path. Unit roundoff u: fp64 1.1e-16, fp32 6e-8, tf32 4.9e-4 (10-bit
# mantissa inputs), fp16 4.9e-4, bf16 3.9e-3; intermediates rounded to the dtype add a few u per element.
TOLERANCES: dict[str, Tolerance] = {
    "float64": Tolerance(rel_norm=1e-12, atol_rms=1e-11, rtol=1e-10),
    "float32": Tolerance(rel_norm=1e-5, atol_rms=1e-4, rtol=1e-4),
    "tf32": Tolerance(rel_norm=5e-3, atol_rms=2e-2, rtol=2e-2),
    "float16": Tolerance(rel_norm=5e-3, atol_rms=2e-2, rtol=2e-2),
    "bfloat16": Tolerance(rel_norm=2e-2, atol_rms=1e-1, rtol=5e-2),
}


def dtype_name(dtype: torch.dtype | str) -> str:
    """The TOLERANCES key of `dtype`: torch.bfloat16 -> "bfloat16"; strings are checked and returned."""
    name = str(dtype).removeprefix("torch.") if isinstance(dtype, torch.dtype) else str(dtype)
    if name not in TOLERANCES:
        raise ValueError(f"no tolerance for dtype {dtype!r}; known: {', '.join(TOLERANCES)}")
    return name


def tolerance_for(dtype: torch.dtype | str) -> Tolerance:
    return TOLERANCES[dtype_name(dtype)]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | str, what: str) -> None:
    """Raise AssertionError, naming `what`, unless `actual` matches `expected` at `dtype`'s tolerance.

    actual, expected: tensors of one shape, any float dtypes and the same device (compared in float64).
    The message gives the relative norm error, max abs error (with its index and both values), max rel
    error, mean abs error and how many elements broke the elementwise bound.
    """
    tol = tolerance_for(dtype)
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(e).all()):
        raise AssertionError(f"{what}: the expected tensor has non-finite values; fix the reference inputs")
    n_bad_finite = int((~torch.isfinite(a)).sum())
    if n_bad_finite:
        raise AssertionError(f"{what}: {n_bad_finite} of {a.numel()} actual values are NaN or inf")
    if a.numel() == 0:
        return
    diff = (a - e).abs()
    norm_e = float(torch.linalg.vector_norm(e))
    rel_norm = float(torch.linalg.vector_norm(a - e)) / norm_e if norm_e > 0 else float(diff.max())
    rms_e = norm_e / a.numel() ** 0.5
    bound = tol.atol_rms * rms_e + tol.rtol * e.abs()
    n_bad = int((diff > bound).sum())
    if rel_norm <= tol.rel_norm and n_bad == 0:
        return
    flat = int(diff.argmax())
    idx = tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), a.shape)) if a.dim() else ()
    rel = diff / e.abs().clamp(min=rms_e if rms_e > 0 else 1.0)
    raise AssertionError(
        f"{what}: not close at {dtype_name(dtype)} tolerance {tol}: "
        f"rel norm err {rel_norm:.3e} (limit {tol.rel_norm:.1e}); "
        f"max abs err {float(diff.max()):.3e} at {idx} (actual {float(a.reshape(-1)[flat]):.6g}, "
        f"expected {float(e.reshape(-1)[flat]):.6g}); max rel err {float(rel.max()):.3e} "
        f"(|err| / max(|expected|, rms)); mean abs err {float(diff.mean()):.3e}; "
        f"{n_bad} of {a.numel()} elements beyond the elementwise bound; rms(expected) {rms_e:.3e}"
    )
