"""What the simulator needs beyond the Plan: the system to run, which layers, and modelling choices.

The Plan's `Policy` holds what the planner and the kernels share (tile order, n_c, tile shapes, chunk
rows); `SimOptions` holds what only the simulator decides (the baselines' chunk count, the copy-engine
bandwidth, whether tiles are costed padded or by their real rows). Both are frozen; sweep them with
`.replace(...)`.

    >>> SimOptions(chunks=2).replace(layers="layer1").layers
    'layer1'
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# comet; the bounds (sequential: no overlap at all, chunked: an ideal token-chunk pipeline), which move the
# Plan's bytes with ideal kernels; and the paper's baselines as they ran (sim/megatron.py, sim/pipelined_moe.py)
BOUNDS = ("sequential", "chunked")
PAPER_BASELINES = ("megatron-cutlass", "megatron-te", "fastermoe", "tutel")
SYSTEMS = ("comet", *BOUNDS, *PAPER_BASELINES)
DISPATCHERS = ("allgather", "alltoall")
LAYERS = ("both", "layer0", "layer1")
TILE_SCHEDULES = ("dynamic", "static")
TILE_ROWS = ("padded", "actual")
LINK_MODELS = ("auto", "max-min", "independent-ports")

# One copy engine, tensor.copy_ GPU0 -> GPU1, 256 MiB, H200: 112 GB/s (docs/GPU_FACTS.md).
COPY_ENGINE_MEASURED_GBPS = 112.0


@dataclass(frozen=True)
class SimOptions:
    """Modelling choices of one simulation (every time in microseconds, bandwidth in GB/s).

    layers: "both" (the whole MoE layer), "layer0" or "layer1" alone (every rank starts it at t = 0).
    chunks: Q, the token chunks of the `chunked` bound (`sequential` is the same pipeline with Q = 1) and
        Tutel's pipeline degree.
    tile_schedule: how a persistent kernel's compute blocks get tiles: "dynamic" (an atomic tile counter:
        the next free block takes the next tile of the Plan's order) or "static" (block b walks tiles
        b, b + n, b + 2n, ... for n compute blocks, as kernels/grouped_gemm.py does).
    tile_rows: "padded" costs every tile as a full BM-row tile (a GPU tile of BM rows costs about the
        same when partly empty: the MMA runs on the whole tile), "actual" costs a ragged tile by its rows.
    fuse_activation: activation in the layer0 GEMM's epilogue (no extra kernel). None: fused for
        `comet` (one fused kernel), a separate memory-bound kernel for the baselines (Megatron, Tutel).
    copy_engine_gbps: one copy engine's bandwidth for Policy.layer0_comm == "copy-engine"; None:
        min(link_gbps, 112), 112 GB/s being the measured copy-engine figure (docs/GPU_FACTS.md).
    permute: the baselines pay a memory-bound permute kernel that gathers the rows they send into
        contiguous per-destination buffers (what NCCL's all-to-all needs); the fused kernel reads in place.
    record: keep the event list (DataFrame, Chrome trace, critical path, hidden-communication fraction).
    dispatcher: Megatron-core's token dispatcher for megatron-cutlass / megatron-te: "allgather" (what the
        paper's runs use) or "alltoall".
    memory_floor: every GEMM tile takes at least its share of the kernel's HBM traffic at hbm_gbps (the
        weights read once per expert and column block: weight-bound when experts have few rows;
        sim.workload.tile_memory_floor_us). Every system's GEMMs get it.
    l0_tail_pct: comet's layer0 "blocks" (kernels.options.CommConfig.l0_tail_pct, its default in the kernels'
        Gluon form): once every pull has ended and a launch later, min(nc_layer0, compute blocks) blocks on the
        communication SMs run the last tiles of the Plan's order, this percent of an even per-SM share; 0: none
        (the communication SMs idle after their pulls, as the one-launch tl kernel and the paper's kernel).
    nccl_priority: the paper's framework baselines' NCCL kernels come from a high-priority stream, whose CTAs take
        SMs as a concurrent GEMM's running tiles end (the GEMM's later tiles waiting); False (default, as Tutel's,
        FasterMoE's and torch.distributed's NCCL streams are created): the GPU hands out CTAs of equal-priority
        streams in launch order, so an NCCL kernel launched beside a GEMM starts once the GEMM has handed out its
        last tile (sim.collectives.NcclSMs).
    link_model: how transfers share the link and NIC ports: "max-min" (sim.hardware_model.LinkNetwork: exact
        max-min fairness, every rate recomputed by progressive filling whenever a transfer starts or ends),
        "independent-ports" (sim.independent_ports: each port a processor-sharing server of its own, a transfer
        through once both of its ports have served it; an event changes the rates of two ports only, which
        keeps simulations of 64 or more GPUs fast), or "auto": max-min when every rank is on one node,
        independent-ports across nodes (where max-min's cost grows with W^2 once the NICs are saturated). The
        two agree where no port is oversubscribed and within 0.2-1.4 % on Mixtral layers of 16 and 32 GPUs
        (dev/LOG.md).
    """

    layers: str = "both"
    chunks: int = 4
    tile_schedule: str = "dynamic"
    tile_rows: str = "padded"
    fuse_activation: bool | None = None
    copy_engine_gbps: float | None = None
    permute: bool = True
    record: bool = True
    dispatcher: str = "allgather"
    memory_floor: bool = True
    link_model: str = "auto"
    l0_tail_pct: int = 50
    nccl_priority: bool = False

    def __post_init__(self):
        for name, value, allowed in (("layers", self.layers, LAYERS), ("dispatcher", self.dispatcher, DISPATCHERS),
                                     ("tile_schedule", self.tile_schedule, TILE_SCHEDULES),
                                     ("tile_rows", self.tile_rows, TILE_ROWS),
                                     ("link_model", self.link_model, LINK_MODELS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        if self.chunks < 1:
            raise ValueError(f"chunks must be >= 1 (1 = no pipelining), got {self.chunks}")
        pct = self.l0_tail_pct
        if isinstance(pct, bool) or not isinstance(pct, int) or not 0 <= pct <= 100:
            raise ValueError(f"l0_tail_pct={self.l0_tail_pct!r}: a percent of an even share of layer0's tiles, an int "
                             f"from 0 (none) to 100")
        if self.copy_engine_gbps is not None and self.copy_engine_gbps <= 0:
            raise ValueError(f"copy_engine_gbps must be > 0, got {self.copy_engine_gbps}")

    def replace(self, **changes) -> SimOptions:
        return dataclasses.replace(self, **changes)

    def link_model_for(self, nodes: int) -> str:
        """The link model a simulation over `nodes` nodes runs ("auto" resolved)."""
        if self.link_model != "auto":
            return self.link_model
        return "max-min" if nodes == 1 else "independent-ports"

    def fused_activation(self, system: str) -> bool:
        return (system == "comet") if self.fuse_activation is None else self.fuse_activation
