"""Markers: `gpu` tests need CUDA, `multigpu` tests need a torchrun world of several GPUs; both skip
cleanly elsewhere, so the CPU suite never needs a GPU. `slow` tests run only when -m names them
(`pytest -m slow`, `-m "gpu or slow"`)."""

import os

import pytest
import torch

# Without CUDA, Triton kernels can only run in the interpreter, and a @triton.jit function is decorated for one
# mode when its module is imported: choose it here, before any test module imports a kernel module.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    has_cuda = torch.cuda.is_available()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    skip_multi = pytest.mark.skip(reason="needs several CUDA GPUs under torchrun (WORLD_SIZE > 1)")
    run_slow = "slow" in (config.getoption("-m") or "")
    skip_slow = pytest.mark.skip(reason="slow: run with -m slow")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        elif "multigpu" in item.keywords and not (has_cuda and world > 1):
            item.add_marker(skip_multi)
        elif "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
