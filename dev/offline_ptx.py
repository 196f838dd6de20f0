"""PTX of kernels for sm_90 with the GPU machines' Triton, on a machine without a GPU: a cheap proof that a
refactor changes no instruction, and a way to see what a new kernel compiles to before a GPU run.

    pip download triton==3.6.0 --no-deps --only-binary=:all: -d /tmp/wheel && pip install --no-deps \\
        --target /tmp/triton36 /tmp/wheel/triton-3.6.0-*.whl
    PYTHONPATH=/tmp/triton36:. python dev/offline_ptx.py /tmp/before      # on the old tree
    PYTHONPATH=/tmp/triton36:. python dev/offline_ptx.py /tmp/after       # on the new tree
    (... DIR --fused-only: the fused kernels alone, ~30 s)
    python dev/offline_ptx.py --compare /tmp/before /tmp/after

A stand-in driver reports an sm_90 target; `JITFunction.warmup` then specialises on CPU tensors (same classes as
CUDA tensors of the same shapes) and compiles without launching. Compared: the instructions, without line
information, debug labels and debug sections. Covers the tl grouped GEMM over gather / activation / EVEN_K /
TMA forms (20 variants, ~2 minutes on 2 cores), and the fused layer0 (blocks, direct) and layer1 kernels as
their host wrappers launch them for a small swiglu case in an emulated world of CPU tensors (every launch is
compiled, none runs)."""

from __future__ import annotations

import itertools
import re
import sys
from collections import Counter
from pathlib import Path


def _fake_driver():
    import triton
    from triton.backends.compiler import GPUTarget

    class Sm90:
        def get_current_target(self):
            return GPUTarget("cuda", 90, 64)

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            import torch
            return torch.device("cpu")

    triton.runtime.driver.set_active(Sm90())


def instructions(ptx: str) -> str:
    """PTX without line info, debug labels and debug sections."""
    ptx = ptx.split(".section\t.debug", 1)[0].split(".section .debug", 1)[0]
    lines = [ln for ln in ptx.splitlines() if ln.strip() and not re.match(r"\s*\.(loc|file)\b", ln)
             and not re.match(r"\$L__tmp\d+:", ln)]
    return "\n".join(lines)


def grouped_gemm_variants(out: Path) -> None:
    import torch
    from triton.tools.tensor_descriptor import TensorDescriptor

    from kernels import grouped_gemm as gg
    E, D_OUT, R, BM, BN, BK = 4, 1024, 256, 128, 128, 64
    for gather, act, even, (at, bt, ct) in itertools.product((0, 1), (1, 2), (True, False),
                                                            ((0, 0, 0), (0, 1, 0), (1, 1, 1))):
        if at and gather:  # TMA loads of A need rows in place
            continue
        d_in = 512 if even else 504
        cols = 2 * D_OUT if act == 2 else D_OUT
        a = torch.empty(R, d_in, dtype=torch.bfloat16)
        b = torch.empty(E, d_in, cols, dtype=torch.bfloat16)
        c = torch.empty(R, D_OUT, dtype=torch.bfloat16)
        desc = lambda t, box, on: TensorDescriptor.from_tensor(t, box) if on else None  # noqa: E731
        tables = [torch.empty(64, dtype=torch.int64) for _ in range(4)]
        compiled = gg._grouped_gemm_kernel.warmup(
            a, desc(a, [BM, BK], at), torch.empty(R, dtype=torch.int64), b, desc(b.view(E * d_in, cols), [BK, BN], bt),
            c, desc(c, [BM, BN], ct), *tables, torch.empty((), dtype=torch.int64), 64, 132, d_in, D_OUT,
            D_OUT if act == 2 else 0, *a.stride(), *b.stride(), *c.stride(),
            GATHER=bool(gather), ACTIVATION=act, BLOCK_M=BM, BLOCK_N=BN, BLOCK_K=BK, EVEN_K=even, FLATTEN=False,
            A_TMA=bool(at), B_TMA=bool(bt), C_TMA=bool(ct), WARP_SPECIALIZE=False, num_warps=8, num_stages=3,
            grid=(1,))
        name = f"grouped_gemm_g{gather}_a{act}_e{int(even)}_tma{at}{bt}{ct}.ptx"
        (out / name).write_text(compiled.asm["ptx"])
        print(name, flush=True)


def fused_variants(out: Path) -> None:
    """The fused kernels as kernels/fused_layer0.py and fused_layer1.py launch them (GPU tile and comm options,
    TMA on), each launch compiled and not run."""
    import torch
    from triton.runtime.jit import JITFunction

    from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
    from comet.core.planner import make_plan
    from comet.core.policy import benchmark_policy
    from comet.core.routing import balanced
    from comet.core.weights import random_weights, shard_weights
    from kernels.fused_layer0 import fused_layer0
    from kernels.fused_layer1 import fused_layer1
    from kernels.options import GPU_COMM, GPU_TILE
    from kernels.workspace import EmulatedWorld

    compiled = []
    run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kw):
        kernel = run(self, *args, grid=grid, warmup=True, **kw)
        compiled.append((self.fn.__name__, kernel))
        return kernel

    JITFunction.run = compile_only
    model = ModelConfig("mid", hidden_N=512, ffn_K=768, experts_E=8, topk=2, layers=1, activation="swiglu")
    par = ParallelConfig(ep=4)
    plan = make_plan(balanced(1024, 8, 2, 0), model, par, HardwareProfile.from_name("h200"),
                     benchmark_policy("swiglu"), backend="torch")
    world = EmulatedWorld(model, par, 1024, dtype=torch.bfloat16, device="cpu")
    shard = shard_weights(random_weights(model, seed=0).to(torch.bfloat16), par, 0)
    try:
        for variant in ("blocks", "direct"):
            fused_layer0(world, plan, 0, shard.w0_ENK, variant=variant, tile=GPU_TILE, comm=GPU_COMM, b_tma=True)
        fused_layer1(world, plan, 0, shard.w1_EKN, tile=GPU_TILE, comm=GPU_COMM, a_tma=True, b_tma=True)
        # layer1's Gluon form: its communication kernel, and the Gluon GEMM counting tiles per column block
        from kernels import fused_layer1_gluon
        from kernels.gluon_gemm import grouped_gemm_hopper
        from kernels.grouped_gemm import _tiles
        from kernels.options import GemmOptions

        buf, R_max = world.buffers(0), plan.rank(0).row_token_R.numel()
        fused_layer1_gluon.launch_comm(world, plan, 0, buf.y_RN[:R_max], programs=16, total_programs=16 + 132,
                                       comm=GPU_COMM, send_block=GPU_COMM.send_block_for("cuda"),
                                       max_spin=world.max_spin)
        grouped_gemm_hopper(buf.h_RK[:R_max], shard.w1_EKN, _tiles(plan.rank(0), "l1"), buf.y_RN[:R_max],
                            block_m=128, block_n=128, activation="none", num_programs=116,
                            options=GemmOptions(impl="gluon", split_tail=False, ws_tma=True),
                            col_counts=buf.flags_F[:plan.l1_col_blocks])
        # layer0's Gluon form: its pull kernel, and the Gluon GEMM whose loader waits on the arrival flags
        from kernels import fused_layer0_gluon
        from kernels.gluon_gemm import SourceWaits

        rp, lay = plan.rank(0), world.layout
        fused_layer0_gluon.launch_pull(world, plan, 0, comm=GPU_COMM, done_total=132)
        waits = SourceWaits(tile_src=rp.l0_tile_src_mask_T, flags=buf.flags_F[lay.arrive:],
                            targets=rp.l0_chunks_per_src_W, status=buf.status, done=buf.flags_F[lay.done_l0:],
                            rank=0, world=4, max_spin=world.max_spin, done_total=132)
        grouped_gemm_hopper(buf.recv_MN, shard.w0_ENK, _tiles(rp, "l0"), buf.h_RK[:R_max], block_m=128,
                            block_n=plan.policy.block_n0, activation="swiglu", num_programs=116,
                            a_rows_R=rp.row_token_R, options=GemmOptions(impl="gluon", split_tail=False),
                            wait_sources=waits)
        # ... with tokens pulled into their shared rows (CommConfig.pull_to_rows): A in place through TMA
        fused_layer0_gluon.launch_pull_rows(world, plan, 0, buf.y_RN[:R_max], comm=GPU_COMM, done_total=132)
        grouped_gemm_hopper(buf.y_RN[:R_max], shard.w0_ENK, _tiles(rp, "l0"), buf.h_RK[:R_max], block_m=128,
                            block_n=plan.policy.block_n0, activation="swiglu", num_programs=116,
                            options=GemmOptions(impl="gluon", split_tail=False, ws_tma=True), wait_sources=waits)
        # ... as two launches over the head and the tail of the tile table (CommConfig.l0_tail_pct)
        for part in (1, 2):
            grouped_gemm_hopper(buf.y_RN[:R_max], shard.w0_ENK, _tiles(rp, "l0"), buf.h_RK[:R_max], block_m=128,
                                block_n=plan.policy.block_n0, activation="swiglu", num_programs=116,
                                options=GemmOptions(impl="gluon", split_tail=False, ws_tma=True), wait_sources=waits,
                                tile_part=(part, 8 * 75, 100 * 124))
    finally:
        JITFunction.run = run
    for i, (name, kernel) in enumerate(compiled):
        (out / f"fused_{i:02d}{name}.ptx").write_text(kernel.asm["ptx"])
        print(f"fused_{i:02d}{name}.ptx", flush=True)


def opcodes(ptx: str) -> Counter:
    """The multiset of an instruction listing's opcodes (register names and order aside)."""
    return Counter(ln.split()[0] for ln in instructions(ptx).splitlines()
                   if not ln.strip().startswith(("//", ".", "{", "}", "$")))


def compare(before: Path, after: Path) -> int:
    """Per kernel: the same instructions; or the same opcodes in another order (register names and the order
    within blocks differ: what moving an expression into a helper can do); or different. Exit 1 if any differ."""
    names = sorted(p.name for p in before.glob("*.ptx"))
    same, reordered, differ = [], [], []
    for n in names:
        a, b = (before / n).read_text(), (after / n).read_text() if (after / n).exists() else ""
        (same if instructions(a) == instructions(b) else reordered if opcodes(a) == opcodes(b) else differ).append(n)
    print(f"{len(names)} kernels: {len(same)} the same instructions, {len(reordered)} the same opcodes reordered"
          + (f" ({', '.join(reordered)})" if reordered else "") + f", {len(differ)} different"
          + (f" ({', '.join(differ)})" if differ else ""))
    return 1 if differ else 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["--compare"]:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
    _fake_driver()
    folder = Path(sys.argv[1])
    folder.mkdir(parents=True, exist_ok=True)
    if sys.argv[2:3] != ["--fused-only"]:
        grouped_gemm_variants(folder)
    fused_variants(folder)
