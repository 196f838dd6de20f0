"""comet/core/jit.py: which kernel arguments keep Triton's value and alignment specialisation."""

import pytest
import triton.language as tl

from comet.core.jit import jit, unspecialised


def _kernel(x_ptr, rows_ptr, n_rows, D, stride_x, a_desc, BLOCK: tl.constexpr):
    pass


def test_only_the_named_arguments_and_descriptors_are_specialised():
    assert unspecialised(_kernel, ("x_ptr", "D", "stride_x")) == ["rows_ptr", "n_rows"]
    assert unspecialised(_kernel) == ["x_ptr", "rows_ptr", "n_rows", "D", "stride_x"]


def test_a_misspelt_name_is_refused():
    with pytest.raises(ValueError, match="no parameters"):
        unspecialised(_kernel, ("stride_y",))


def test_the_decorator_passes_the_lists_to_triton():
    seen = {}

    def fake_jit(fn, **kw):
        seen.update(kw)
        return fn
    jit(("x_ptr",), decorator=fake_jit)(_kernel)
    names = ["rows_ptr", "n_rows", "D", "stride_x"]
    assert seen == {"do_not_specialize": names, "do_not_specialize_on_alignment": names}

