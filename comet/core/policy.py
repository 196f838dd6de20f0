"""`Policy`: how to schedule one MoE layer (tile order, dispatch form, layer0 communication mechanism, n_c,
tile shapes). The planner turns it into a Plan's tables; the simulator and the kernels read its run-time
fields (n_c, the layer0 mechanism, the SMs a copy engine leaves free) from the Plan.

    >>> Policy(nc_layer1=16).replace(order="expert-major").order
    'expert-major'
    >>> kernel_tile_problem(Policy(block_m=1)) is not None     # the simulator's toy tiles: not for the kernels
    True
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

ORDERS = ("comet", "arrival-order", "expert-major")
DISPATCHES = ("all-to-all", "all-gather")
LAYER0_COMMS = ("blocks", "copy-engine", "direct")
# The kernels' tiles are tl.dot / wgmma operands: a power of two of at least 16 rows and columns.
KERNEL_TILE_MIN = 16
KERNEL_TILE_FIELDS = ("block_m", "block_n0", "block_n1")


def kernel_tile_error(name: str, value: int) -> str | None:
    """Why `value` cannot be a kernel tile size (None if it can): the one statement of the kernels' rule."""
    if value < KERNEL_TILE_MIN or value & (value - 1):
        return (f"{name}={value}: the GPU kernels need a power of two >= {KERNEL_TILE_MIN} (tl.dot); "
                f"build the Plan with such a Policy")
    return None


def check_kernel_tile(name: str, value: int) -> None:
    """Raise ValueError if `value` cannot be a kernel tile size (see `kernel_tile_error`)."""
    why = kernel_tile_error(name, value)
    if why:
        raise ValueError(why)


@dataclass(frozen=True)
class Policy:
    """How to schedule: tile order, dispatch form, layer0 communication mechanism, n_c, tile shapes.

    order: layer0 tile order (comet/core/planner.py's docstring). dispatch: "all-to-all" or "all-gather".
    layer0_comm: "blocks" (nc_layer0 communication programs in the fused kernel), "copy-engine"
    (side-stream copies per source rank, as the released Comet code), "direct" (GEMM tiles load remote
    rows themselves; nc_layer0 is ignored). nc_layer0 / nc_layer1: communication programs (SMs) of each
    fused kernel. block_m, block_n0, block_n1: tile rows and layer0 / layer1 tile columns; any size >= 1 for
    the simulator, a power of two >= 16 for the GPU kernels (`kernel_tile_problem`). group_m: row blocks
    swizzled together for L2 reuse. comm_rows: rows per communication chunk; l1_comm_rows: sends per layer1
    chunk (the sends of one layer1 communication item), 0: comm_rows (`l1_chunk_rows`). copy_engine_reserved_sms: SMs
    the layer0 GEMM leaves free under "copy-engine", so that a copy or flag write that needs an SM can run.
    l1_tail: once layer1's GEMM has ended, its SMs take the (column block, send chunk) items that the n_c
    communication programs have not claimed yet (a launch of as many programs as the GEMM's, after it:
    kernels/fused_layer1_gluon.py); False: the n_c programs do all of them, as the paper's kernel and the
    one-launch tl kernel (kernels/fused_layer1.py, where the GEMM programs end with the launch) do.
    """

    order: str = "comet"
    dispatch: str = "all-to-all"
    layer0_comm: str = "blocks"
    nc_layer0: int = 16
    nc_layer1: int = 28
    block_m: int = 128
    block_n0: int = 128
    block_n1: int = 128
    group_m: int = 4
    comm_rows: int = 64
    l1_comm_rows: int = 0
    copy_engine_reserved_sms: int = 8
    l1_tail: bool = True

    def __post_init__(self):
        for name, value, allowed in (("order", self.order, ORDERS), ("dispatch", self.dispatch, DISPATCHES),
                                     ("layer0_comm", self.layer0_comm, LAYER0_COMMS)):
            if value not in allowed:
                raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(allowed)}")
        for f in ("block_m", "block_n0", "block_n1", "group_m", "comm_rows"):
            if getattr(self, f) < 1:
                raise ValueError(f"policy {f} must be >= 1, got {getattr(self, f)}")
        if self.l1_comm_rows < 0:
            raise ValueError(f"policy l1_comm_rows must be >= 0 (0: comm_rows), got {self.l1_comm_rows}")
        if self.nc_layer0 < 0 or self.nc_layer1 < 0:
            raise ValueError("nc_layer0 and nc_layer1 must be >= 0")
        if not isinstance(self.l1_tail, bool):
            raise ValueError(f"policy l1_tail={self.l1_tail!r}: use True (the GEMM's SMs take the items left after "
                             f"it) or False (the n_c programs do all)")
        if self.copy_engine_reserved_sms < 0:
            raise ValueError(f"copy_engine_reserved_sms must be >= 0, got {self.copy_engine_reserved_sms}")

    @property
    def l1_chunk_rows(self) -> int:
        """Sends per layer1 communication chunk: l1_comm_rows, or comm_rows where it is 0."""
        return self.l1_comm_rows or self.comm_rows

    def replace(self, **changes) -> Policy:
        return dataclasses.replace(self, **changes)


def kernel_tile_problem(policy: Policy) -> str | None:
    """Why the GPU kernels cannot run `policy`'s tiles (None if they can)."""
    for f in KERNEL_TILE_FIELDS:
        why = kernel_tile_error(f"policy {f}", getattr(policy, f))
        if why:
            return why
    return None


def benchmark_policy(activation: str, **changes) -> Policy:
    """The Policy the GPU benchmarks build their plans with (benchmarks.fused_layers, experiments.layer_bench)
    and experiments.validate rebuilds: the defaults, with 256-wide layer0 tiles for gelu (the fastest tile in
    results/grouped_gemm; swiglu's two accumulators keep 128)."""
    return Policy(block_n0=256 if activation == "gelu" else 128, **changes)
