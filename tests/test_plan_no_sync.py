"""The planner on the device never waits for the host. On the CPU, a proxy: no op of the torch planner asks a
tensor for a Python value (item, tolist, bool, int, float) or indexes with a 0-d tensor (a host sync on CUDA),
seen through a TorchFunctionMode. The GPU tests check the real thing with torch.cuda.set_sync_debug_mode."""

from __future__ import annotations

import torch
from helpers.sim_cases import toy_hardware
from torch.overrides import TorchFunctionMode

from comet.core.config import ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import uniform

SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
           torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.Tensor.cpu,
           torch.Tensor.numpy}


class HostValues(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in SYNCING:
            self.seen.append(func.__name__)
        if func is torch.Tensor.__getitem__:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if any(isinstance(i, torch.Tensor) and i.dim() == 0 for i in index):
                self.seen.append("__getitem__ with a 0-d tensor index")
        return func(*args, **(kwargs or {}))


def test_torch_planner_asks_no_python_values(monkeypatch):
    import comet.core.routing as routing_module

    monkeypatch.setattr(routing_module.Routing, "check_entries", lambda self: None)  # the CPU path's one check
    model = ModelConfig("tiny", hidden_N=64, ffn_K=64, experts_E=8, topk=2, layers=1)
    r = uniform(200, 8, 2, seed=1)
    for par in (ParallelConfig(ep=4), ParallelConfig(ep=2, tp=2)):
        for dispatch in ("all-to-all", "all-gather"):
            mode = HostValues()
            with mode:
                make_plan(r, model, par, toy_hardware(sms=8), Policy(block_m=16, block_n0=16, block_n1=16,
                                                                   dispatch=dispatch), backend="torch")
            assert not mode.seen, f"the planner asked for host values: {sorted(set(mode.seen))}"
