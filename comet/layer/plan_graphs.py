"""The Plan of an eager CUDA forward as a replayed CUDA graph: one graph launch instead of the planner's
launches through Python (six Triton launches per rank, each tens of microseconds of host work).

PlanGraphs captures make_plan once per token count M (and top-k, dtypes, policy, hardware, backend) on static
routing buffers; a later call copies its routing into them and replays. The Plan it returns is the graph's:
its tables are rewritten by the next replay of the same M, which stream order makes safe for the kernels that
consume it right after on the same stream (what CometMoE does). Keep a Plan beyond the next call by building it
with make_plan instead. At most `max_graphs` token counts are kept (the least recently used goes).
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing

MAX_GRAPHS = 8


class _Entry:
    def __init__(self, graph: torch.cuda.CUDAGraph, ids_MJ: torch.Tensor, w_MJ: torch.Tensor, plan: Plan):
        self.graph, self.ids_MJ, self.w_MJ, self.plan = graph, ids_MJ, w_MJ, plan


class PlanGraphs:
    """make_plan for fixed model, parallelism and ranks, as graph replays keyed by the routing's shape."""

    def __init__(self, model: ModelConfig, parallel: ParallelConfig, ranks: list[int], max_graphs: int = MAX_GRAPHS):
        if max_graphs < 1:
            raise ValueError(f"max_graphs must be >= 1, got {max_graphs}")
        self.model, self.parallel, self.ranks = model, parallel, list(ranks)
        self.max_graphs = max_graphs
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()
        self.captures = 0  # graphs captured so far (tests and benchmarks read it)

    def __len__(self) -> int:
        return len(self._entries)

    def plan(self, routing: Routing, hardware: HardwareProfile, policy: Policy, backend: str = "auto") -> Plan:
        """make_plan(routing, ..., backend=backend) for this layer's ranks (routing on a CUDA device; not while
        a graph is being captured), from a replay; the first call of a new key captures the graph."""
        ids, w = routing.topk_ids_MJ, routing.topk_weights_MJ
        key = (tuple(ids.shape), tuple(ids.stride()), tuple(w.stride()), ids.dtype, w.dtype, ids.device, policy,
               id(hardware), backend)
        entry = self._entries.get(key)
        if entry is None:
            entry = self._capture(routing, hardware, policy, backend)
            self._entries[key] = entry
            if len(self._entries) > self.max_graphs:
                # safe to free: torch.cuda.graph synchronised the device before this capture, so no kernel
                # still reads the evicted plan's tables
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
            entry.ids_MJ.copy_(ids)
            entry.w_MJ.copy_(w)
            entry.graph.replay()
        return entry.plan

    def _capture(self, routing: Routing, hardware: HardwareProfile, policy: Policy, backend: str) -> _Entry:
        ids, w = routing.topk_ids_MJ.clone(), routing.topk_weights_MJ.clone()
        static = Routing(ids, w, routing.num_experts)

        def build():
            return make_plan(static, self.model, self.parallel, hardware, policy, ranks=self.ranks,
                             backend=backend)

        side = torch.cuda.Stream(device=ids.device)
        side.wait_stream(torch.cuda.current_stream(ids.device))
        with torch.cuda.stream(side):
            build()  # compiles on a first launch, outside the capture
        torch.cuda.current_stream(ids.device).wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            plan = build()
        graph.replay()  # capturing does not run the kernels: this fills the tables for this call
        self.captures += 1
        return _Entry(graph, ids, w, plan)
