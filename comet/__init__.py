"""comet-moe: configs, routing, the planner and the MoE layer. Importing the package loads nothing heavy;
`comet.CometMoE` (comet/layer/comet_moe.py: torch, Triton kernels) is imported on first use."""

__all__ = ["CometMoE"]


def __getattr__(name):
    if name == "CometMoE":
        from comet.layer.comet_moe import CometMoE  # deferred: `import comet` loads no torch or Triton

        return CometMoE
    raise AttributeError(f"module 'comet' has no attribute {name!r}")
