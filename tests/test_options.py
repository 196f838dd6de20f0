"""kernels/options.py: the kernels' typed options keep their documented defaults, refuse bad values in one line
that names the fix, and `.replace` returns a checked copy."""

import dataclasses
import doctest

import pytest

from kernels import options
from kernels.options import (
    GPU_COMM,
    GPU_TILE,
    SMALL_COMM,
    SMALL_TILE,
    CommConfig,
    GemmOptions,
    TileConfig,
    default_comm,
    default_tile,
)


def test_docstring_examples_run():
    result = doctest.testmod(options)
    assert result.failed == 0 and result.attempted > 0


def test_documented_defaults():
    # the values the kernels ran with before these types existed (fused_layer0.GPU_CONFIG / SMALL_CONFIG,
    # fused_layer1's send blocks, grouped_gemm.SMALL_CONFIG)
    assert (GPU_TILE.block_k, GPU_TILE.num_warps, GPU_TILE.num_stages) == (64, 8, 3)
    assert (SMALL_TILE.block_k, SMALL_TILE.num_warps, SMALL_TILE.num_stages) == (16, 4, 1)
    assert (GPU_COMM.pull_rows, GPU_COMM.pull_cols, GPU_COMM.pipelined) == (32, 256, True)
    assert (SMALL_COMM.pull_rows, SMALL_COMM.pull_cols, SMALL_COMM.send_block) == (16, 16, 16)
    assert GPU_COMM.send_block_for("cuda") == 32 and GPU_COMM.send_block_for("cuda", own_launch=True) == 64
    assert (GPU_COMM.tail_per_sm, GPU_COMM.tail_num_warps, GPU_COMM.tail_send_block_for("cuda")) == (2, 4, 32)
    assert GPU_COMM.tail_send_block_for("cpu") == 16
    assert GPU_COMM.replace(tail_send_block=8).tail_send_block_for("cuda") == 8
    assert GPU_COMM.replace(pipelined=False).send_block_for("cuda") == 16
    assert GPU_COMM.send_block_for("cpu") == 16 and SMALL_COMM.replace(pipelined=False).send_block_for("cpu") == 16
    assert default_tile("cpu") is SMALL_TILE and default_comm("cpu") is SMALL_COMM
    assert default_tile("cuda:1") is GPU_TILE and default_comm("cuda") is GPU_COMM
    g = GemmOptions()
    assert (g.impl, g.tile, g.a_tma, g.b_tma, g.fast_gelu, g.split_tail, g.pregather) == ("auto", None, None, None,
                                                                                         None, None, None)
    assert (g.c_tma, g.flatten, g.warp_specialize, g.ws_gather, g.ws_tma) == (False, False, False, True, False)
    assert not g.tl_only() and g.replace(tile=SMALL_TILE).tl_only() and g.replace(flatten=True).tl_only()


def test_frozen_and_replace_checks():
    with pytest.raises(dataclasses.FrozenInstanceError):
        GPU_TILE.block_k = 32
    assert GPU_TILE.replace(num_stages=4) == TileConfig(64, 8, 4) and GPU_TILE.num_stages == 3
    with pytest.raises(ValueError, match="TileConfig block_k=48"):
        GPU_TILE.replace(block_k=48)


@pytest.mark.parametrize("make,message", [
    (lambda: TileConfig(block_k=8), "TileConfig block_k=8: tl.dot needs a power of two >= 16; use 16, 32, 64 or 128"),
    (lambda: TileConfig(block_k=64.0), "TileConfig block_k=64.0"),
    (lambda: TileConfig(num_warps=6), "TileConfig num_warps=6: Triton takes a power of two up to 16; use 4 or 8"),
    (lambda: TileConfig(num_stages=True), "TileConfig num_stages=True: needs an int >= 1"),
    (lambda: CommConfig(pull_cols=100), "CommConfig pull_cols=100: a tl.arange size, so a power of two"),
    (lambda: CommConfig(send_block=0), "CommConfig send_block=0"),
    (lambda: CommConfig(pipelined=1), "CommConfig pipelined=1: use True .* or False"),
    (lambda: CommConfig(l0_tail_pct=101), "CommConfig l0_tail_pct=101: a percent of an even share"),
    (lambda: CommConfig(l0_tail_pct=0.5), "CommConfig l0_tail_pct=0.5: a percent"),
    (lambda: CommConfig(tail_per_sm=0), "CommConfig tail_per_sm=0: programs per SM of layer1's tail"),
    (lambda: CommConfig(tail_num_warps=3), "CommConfig tail_num_warps=3: Triton takes a power of two"),
    (lambda: CommConfig(tail_send_block=24), "CommConfig tail_send_block=24: a tl.arange size"),
    (lambda: GemmOptions(impl="cuda"), "GemmOptions impl='cuda': use one of auto, triton, gluon"),
    (lambda: GemmOptions(tile={"BLOCK_K": 16}), "GemmOptions tile=.*: use a kernels.options.TileConfig"),
    (lambda: GemmOptions(b_tma=1), r"GemmOptions b_tma=1: use None \(where tma_ok allows\), True or False"),
    (lambda: GemmOptions(fast_gelu="tanh"), "GemmOptions fast_gelu='tanh': use None"),
    (lambda: GemmOptions(split_tail="auto"), "GemmOptions split_tail='auto': use None"),
    (lambda: GemmOptions(pregather=1.0), "GemmOptions pregather=1.0: use None"),
    (lambda: GemmOptions(ws_gather=None), "GemmOptions ws_gather=None: use True or False"),
    (lambda: GemmOptions(impl="gluon", flatten=True), "tile / flatten / warp_specialize: those are options of the "
                                                      "tl kernel"),
])
def test_bad_values_say_what_to_use(make, message):
    with pytest.raises(ValueError, match=message) as info:
        make()
    assert "\n" not in str(info.value)


def test_fused_layers_benchmark_parses_comm_changes():
    from benchmarks.fused_layers import parse_comm_changes

    assert parse_comm_changes("pipelined=0,send_block=16") == {"pipelined": False, "send_block": 16}
    assert parse_comm_changes("l1_comm_rows=256,l1_tail=0") == {"l1_comm_rows": 256, "l1_tail": False}
    for bad in ("PIPELINE=2", "gather_3d=1", "send_block=x", "send_block=24", "l1_comm_rows=-4"):
        with pytest.raises((SystemExit, ValueError)):
            parse_comm_changes(bad)


def test_the_simulator_models_layer0s_tail_at_the_kernels_default():
    from kernels.options import L0_TAIL_PCT
    from sim.options import SimOptions

    assert SimOptions().l0_tail_pct == L0_TAIL_PCT
