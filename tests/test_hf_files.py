"""A block's safetensors file read lazily per rank (comet.layer.hf_files.SafetensorsStateDict), and the copyable
example examples/hf_block_torchrun.py run for real under torchrun: two CPU processes joined by gloo, each
loading only its own experts of a DeepSeek-V3 block from the file and comparing its rows with the real
transformers block's forward.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers.hf_blocks import block_forward, hf_block, hub_layout
from safetensors.torch import save_file

from comet.core.config import ParallelConfig
from comet.core.tolerances import assert_close
from comet.core.weights import random_tokens
from comet.layer.comet_moe import CPU_POLICY, CometMoE
from comet.layer.hf import hf_rank_shard
from comet.layer.hf_files import SafetensorsStateDict

REPO = Path(__file__).resolve().parents[1]


class CountingStateDict(SafetensorsStateDict):
    """Records what is read: whole tensors by key, slices as (key, start, stop)."""

    def __init__(self, paths):
        super().__init__(paths)
        self.reads: list = []

    def __getitem__(self, key):
        self.reads.append(key)
        return super().__getitem__(key)

    def get_slice(self, key):
        inner, reads = super().get_slice(key), self.reads

        class Slice:
            def get_shape(self):
                return inner.get_shape()

            def __getitem__(self, s):
                reads.append((key, s.start, s.stop))
                return inner[s]

        return Slice()


def _write_block(tmp_path: Path, family: str, layout: str, layer: int = 3):
    block, _, config, prefix = hf_block(family, seed=4)
    prefix = prefix.format(layer)
    sd = {prefix + k: v.contiguous() for k, v in block.state_dict().items()}
    if layout == "hub":
        sd = hub_layout(block.state_dict(), family, prefix)
    if family == "deepseek_v3":  # a dense first layer in the same file, as the checkpoint has
        sd.update({f"model.layers.0.mlp.{n}.weight": torch.zeros(64, 32) for n in ("gate_proj", "up_proj")})
        sd["model.layers.0.mlp.down_proj.weight"] = torch.zeros(32, 64)
    path = tmp_path / "block.safetensors"
    save_file(sd, str(path))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return block, config, prefix, path


@pytest.mark.parametrize("layout", ["fused", "hub"])
def test_each_rank_reads_only_its_experts(tmp_path, layout):
    _, _, prefix, path = _write_block(tmp_path, "qwen3_moe", layout)
    for rank, experts in ((0, range(0, 4)), (1, range(4, 8))):
        sd = CountingStateDict(path)
        shard = hf_rank_shard(sd, "qwen3_moe", ParallelConfig(ep=2), rank, prefix=prefix)
        assert shard.w0_ENK.shape == (4, 32, 64)
        if layout == "fused":
            assert sorted(sd.reads) == [(prefix + "experts.down_proj", experts.start, experts.stop),
                                        (prefix + "experts.gate_up_proj", experts.start, experts.stop)]
        else:
            read = {int(k.split("experts.")[1].split(".")[0]) for k in sd.reads}
            assert read == set(experts) and len(sd.reads) == 3 * len(experts)


def test_index_file_and_lazy_load_matches_the_block(tmp_path):
    block, config, prefix, path = _write_block(tmp_path, "deepseek_v3", "hub")
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {k: path.name for k in SafetensorsStateDict(path)}}))
    sd = SafetensorsStateDict(index)
    assert len(sd) == len(SafetensorsStateDict(path)) and prefix + "gate.weight" in sd
    layer = CometMoE.from_hf_state_dict(sd, config=config, layer=3, prefix=prefix, parallel=ParallelConfig(ep=2, tp=2),
                                        capacity_tokens=64, device="cpu", policy=CPU_POLICY)
    x = random_tokens(20, 32, seed=1)
    with torch.no_grad():
        assert_close(layer(x), block_forward(block.double(), x.double()), torch.float32, "from the index file")
    with pytest.raises(ValueError, match="layer 0 is not a MoE block"):
        CometMoE.from_hf_state_dict(sd, config=config, layer=0, prefix="model.layers.0.mlp.", capacity_tokens=8)
    with pytest.raises(ValueError, match="'model.layers.0.mlp.' are a dense MLP"):
        CometMoE.from_hf_state_dict(sd, config=config, prefix="model.layers.0.mlp.", capacity_tokens=8)
    with pytest.raises(FileNotFoundError, match="no such safetensors file: .*nowhere.safetensors"):
        SafetensorsStateDict(tmp_path / "nowhere.safetensors")
    with pytest.raises(ValueError, match="has no weight_map"):
        (tmp_path / "bad.index.json").write_text("{}")
        SafetensorsStateDict(tmp_path / "bad.index.json")


def test_torchrun_example_two_ranks(tmp_path):
    """examples/hf_block_torchrun.py as a user runs it: torchrun, 2 ranks (gloo on the CPU), EP=2."""
    block, _, _, path = _write_block(tmp_path, "deepseek_v3", "hub")
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(REPO / "examples" / "hf_block_torchrun.py"), "--checkpoint", str(path), "--config",
           str(tmp_path / "config.json"), "--layer", "3", "--tokens", "12", "--save", str(tmp_path / "out")]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rank 1/2: hf-deepseek_v3 N=32 K=32 E=8 topk=3, EP rank 1" in run.stdout
    for rank in (0, 1):
        got = torch.load(tmp_path / "out" / f"rank{rank}.pt")
        assert got["x"].shape == (12, 32)
        want = block_forward(block.double(), got["x"].double())
        assert_close(got["out"], want, torch.float32, f"torchrun rank {rank} vs transformers' DeepSeek-V3 block")
