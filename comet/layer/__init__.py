"""The MoE layer on GPUs (or the CPU under Triton's interpreter): the floor that joins the planner, the
kernels and the tuning. `CometMoE` (comet_moe.py) with its routers (routers.py), the GPU baselines it can run
instead (gpu_baselines.py over collectives.py), and Hugging Face block loading (hf.py; safetensors files read
lazily per rank: hf_files.py)."""

from comet.layer.comet_moe import CPU_POLICY, SYSTEMS, CometMoE, moe_experts
from comet.layer.routers import ROUTERS, grouped_sigmoid_gate, softmax_topk_gate, sparsemixer_gate, topk_softmax_gate

__all__ = ["CometMoE", "CPU_POLICY", "SYSTEMS", "ROUTERS", "moe_experts", "softmax_topk_gate", "sparsemixer_gate",
           "grouped_sigmoid_gate", "topk_softmax_gate"]
