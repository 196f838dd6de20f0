"""Tensor-memory-accelerator (TMA) helpers of the Triton (tl) kernels: whether a tensor can be read through a
descriptor, and the descriptor itself. The Gluon kernel builds its own (with a shared-memory layout)."""

from __future__ import annotations

import torch

_capability_cache: dict[int, int] = {}


def tma_ok(t: torch.Tensor) -> bool:
    """Whether a row-major tensor can be read through a TMA descriptor: CUDA, compute capability >= 9.0
    (Hopper), 16-byte aligned base and rows."""
    if not t.is_cuda or t.data_ptr() % 16 or (t.shape[-1] * t.element_size()) % 16:
        return False
    idx = t.device.index if t.device.index is not None else torch.cuda.current_device()
    if idx not in _capability_cache:
        _capability_cache[idx] = torch.cuda.get_device_capability(idx)[0]
    return _capability_cache[idx] >= 9


def descriptor(t: torch.Tensor, block_shape: list[int]):
    """A host-side TMA descriptor of `t` whose box is `block_shape` (Triton's TensorDescriptor)."""
    from triton.tools.tensor_descriptor import TensorDescriptor

    return TensorDescriptor.from_tensor(t, block_shape)
