"""triton.jit (or gluon.jit) that specialises only the arguments that shape the compiled code.

Triton compiles a new variant of a kernel for every new combination of runtime-argument classes: an int equal
to 1 or divisible by 16, a pointer 16-byte aligned or not. For arguments that change from call to call (a
rank, a token count, a table's offset in a workspace, a program count) that means compiling again, seconds a
kernel and up to a minute a shape: a user sees a hang, and "any shape without recompiling" fails. Such
arguments are loop bounds and indices, whose classes buy nothing; the classes that do pay (vectorised loads
and stores) come from the data pointers, the feature sizes and the strides, which a caller names in
`specialise`. TMA descriptors (names ending in `_desc`) always keep theirs."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable

import triton


def unspecialised(fn: Callable, specialise: Iterable[str] = ()) -> list[str]:
    """fn's runtime (non-constexpr) parameters, less those named in specialise and the TMA descriptors."""
    keep = set(specialise)
    unknown = keep - set(inspect.signature(fn).parameters)
    if unknown:
        raise ValueError(f"{fn.__name__} has no parameters {sorted(unknown)}: fix the specialise list")
    return [name for name, p in inspect.signature(fn).parameters.items()
            if "constexpr" not in str(p.annotation) and name not in keep and not name.endswith("_desc")]


def jit(specialise: Iterable[str] = (), *, decorator: Callable = triton.jit):
    """A kernel decorator: `decorator` (triton.jit or gluon.jit) specialising only `specialise`'s arguments."""
    specialise = tuple(specialise)

    def wrap(fn):
        names = unspecialised(fn, specialise)
        return decorator(fn, do_not_specialize=names, do_not_specialize_on_alignment=names)
    return wrap
