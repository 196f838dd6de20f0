"""kernels.row_gather.gather_rows against torch indexing (the CPU runs it in Triton's interpreter)."""

from __future__ import annotations

import pytest
import torch

from kernels.row_gather import gather_rows

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("D", [40, 1000, 1100])
def test_rows_by_index_padding_untouched(dtype, D):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, D, generator=g).to(DEVICE, dtype)
    rows = torch.randint(0, 37, (53,), generator=g)
    rows[[3, 17, 52]] = -1  # padding rows: left as they were
    rows = rows.to(DEVICE)
    out = torch.full((53, D), 7.0, device=DEVICE, dtype=dtype)
    gather_rows(x, rows, out)
    ok = rows >= 0
    assert torch.equal(out[ok], x[rows[ok]])
    assert bool((out[~ok] == 7.0).all())


def test_strided_rows_and_empty():
    x = torch.randn(10, 64, device=DEVICE)[:, :48]  # row stride 64, unit column stride
    rows = torch.tensor([9, 0, 4], device=DEVICE)
    assert torch.equal(gather_rows(x, rows), x[rows])
    assert gather_rows(x, rows[:0]).shape == (0, 48)


def test_clear_errors():
    x = torch.randn(4, 8, device=DEVICE)
    with pytest.raises(ValueError, match="contiguous rows"):
        gather_rows(x.t(), torch.zeros(2, dtype=torch.int64, device=DEVICE))
    with pytest.raises(ValueError, match="1-D int64"):
        gather_rows(x, torch.zeros(2, dtype=torch.int32, device=DEVICE))
    with pytest.raises(ValueError, match=r"out must be \(2, 8\)"):
        gather_rows(x, torch.zeros(2, dtype=torch.int64, device=DEVICE), out=torch.empty(3, 8, device=DEVICE))
