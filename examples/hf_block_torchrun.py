"""One Hugging Face MoE block loaded from its safetensors files into CometMoE under torchrun, each rank
reading only its own experts (and K slice), then run on seeded tokens.

    torchrun --nproc-per-node=4 examples/hf_block_torchrun.py --checkpoint Qwen3-30B-A3B/model.safetensors.index.json \
        --config Qwen3-30B-A3B/config.json --layer 3

--checkpoint: a .safetensors file, several, or a sharded checkpoint's index.json; --config: the model's
config.json (model_type, num_experts_per_tok, norm_topk_prob, the router's settings); keys are looked up under
--prefix (default model.layers.<layer>.mlp., else .block_sparse_moe. as Mixtral's checkpoints name it). EP x TP
defaults to EP = the world size. On GPUs: NCCL, bf16 and the fused "comet" system; without CUDA: gloo, float32
and the "sequential" baseline (the fused kernels need CUDA symmetric memory on a process group), the GEMMs under
Triton's interpreter. --save DIR writes each rank's tokens and outputs (rank<r>.pt).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

if not torch.cuda.is_available():  # Triton's interpreter, chosen before any kernel module is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch.distributed as dist  # noqa: E402

from comet.core.config import ParallelConfig  # noqa: E402
from comet.layer.comet_moe import CometMoE  # noqa: E402
from comet.layer.hf_files import SafetensorsStateDict  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="torchrun ... examples/hf_block_torchrun.py",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", nargs="+", required=True, help=".safetensors file(s) or an index.json")
    ap.add_argument("--config", required=True, help="the model's config.json")
    ap.add_argument("--layer", type=int, required=True, help="the decoder layer whose MoE block to load")
    ap.add_argument("--prefix", help="key prefix of the block (default: model.layers.<layer>.mlp.)")
    ap.add_argument("--ep", type=int, help="expert-parallel degree (default: world size / tp)")
    ap.add_argument("--tp", type=int, default=1, help="tensor-parallel degree")
    ap.add_argument("--tokens", type=int, default=16, help="tokens per rank")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, help="folder for each rank's tokens and outputs")
    a = ap.parse_args(argv)

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        if world % a.tp:
            raise SystemExit(f"error: --tp {a.tp} must divide the world size {world}")
        config = json.loads(Path(a.config).read_text())
        sd = SafetensorsStateDict(a.checkpoint)  # nothing read yet: each rank reads its own experts below
        candidates = [f"model.layers.{a.layer}.{name}." for name in ("mlp", "block_sparse_moe")]
        prefix = a.prefix or next((p for p in candidates if p + "gate.weight" in sd or p + "router.weight" in sd),
                                  candidates[0])
        layer = CometMoE.from_hf_state_dict(
            sd, config=config, layer=a.layer, prefix=prefix, parallel=ParallelConfig(ep=a.ep or world // a.tp, tp=a.tp),
            world="process-group", capacity_tokens=a.tokens * world, dtype=torch.bfloat16 if cuda else torch.float32,
            system="comet" if cuda else "sequential")
        g = torch.Generator().manual_seed(a.seed)
        x_all = torch.randn(a.tokens * world, layer.model.hidden_N, generator=g)  # the same on every rank
        x = x_all[rank * a.tokens:(rank + 1) * a.tokens].to(layer.device, layer.dtype)
        with torch.inference_mode():
            out = layer(x)
        print(f"rank {rank}/{world}: {layer.model.name} N={layer.model.hidden_N} K={layer.model.ffn_K} "
              f"E={layer.model.experts_E} topk={layer.model.topk}, EP rank {layer.parallel.ep_rank(rank)}: "
              f"out {tuple(out.shape)} rms {float(out.float().pow(2).mean().sqrt()):.4g}", flush=True)
        if a.save:
            a.save.mkdir(parents=True, exist_ok=True)
            torch.save({"x": x.cpu(), "out": out.cpu()}, a.save / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
