"""Model shapes, parallelism and hardware profiles: frozen dataclasses with registries by name.

Units: time in microseconds (_us), sizes in bytes (_bytes), bandwidth in GB/s (_gbps, 1e9 bytes/s),
compute in TFLOP/s (_tflops).

    >>> m = ModelConfig.from_name("mixtral-8x7b")
    >>> (m.hidden_N, m.ffn_K, m.experts_E, m.topk)
    (4096, 14336, 8, 2)
    >>> ParallelConfig(ep=4, tp=2).world_size
    8
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

ACTIVATIONS = ("gelu", "swiglu")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "float64": 8}


def _unknown(kind: str, name: str, known) -> ValueError:
    return ValueError(f"unknown {kind} {name!r}; known {kind}s: {', '.join(sorted(known))}")


# --------------------------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelConfig:
    """Shapes of one MoE layer (and how many such layers the model has).

    hidden_N: embedding size N; ffn_K: expert FFN size K; experts_E: E; topk: experts per token.
    activation: "gelu" (one up-projection) or "swiglu" (gate and up projections, 2K columns in layer0).
    shared_ffn_K: K_s of the shared experts (one dense swiglu MLP every token passes through, e.g. DeepSeek-V3's),
    None without. A record of the shape: the simulator, the planner and the fused kernels model the routed
    experts; CometMoE runs a shared expert outside them, on each rank's own tokens (its shared_ffn_K argument).
    """

    name: str
    hidden_N: int
    ffn_K: int
    experts_E: int
    topk: int
    layers: int
    activation: str = "gelu"
    dtype: str = "bfloat16"
    shared_ffn_K: int | None = None

    def __post_init__(self):
        for f in ("hidden_N", "ffn_K", "experts_E", "topk", "layers"):
            if getattr(self, f) < 1:
                raise ValueError(f"{self.name}: {f} must be >= 1, got {getattr(self, f)}")
        if self.shared_ffn_K is not None and self.shared_ffn_K < 1:
            raise ValueError(f"{self.name}: shared_ffn_K must be >= 1 or None, got {self.shared_ffn_K}")
        if self.topk > self.experts_E:
            raise ValueError(
                f"{self.name}: topk={self.topk} > experts_E={self.experts_E}: a token cannot pick more "
                f"distinct experts than exist; lower topk or raise the expert count"
            )
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation {self.activation!r} not supported; use one of {ACTIVATIONS}")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(f"dtype {self.dtype!r} not supported; use one of {tuple(DTYPE_BYTES)}")

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    @property
    def layer0_cols(self) -> int:
        """Columns of the layer0 weight: K for gelu, 2K (gate | up) for swiglu."""
        return 2 * self.ffn_K if self.activation == "swiglu" else self.ffn_K

    @classmethod
    def from_name(cls, name: str, **overrides) -> ModelConfig:
        """A registered model, with optional field overrides (e.g. topk=4, experts_E=16)."""
        if name not in MODELS:
            raise _unknown("model", name, MODELS)
        return dataclasses.replace(MODELS[name], **overrides) if overrides else MODELS[name]


# Shapes of the Comet paper's evaluation (docs/PAPER_NOTES.md): mixtral-8x7b, qwen2-moe-2.7b, phi-3.5-moe. The paper
# runs every model with gelu (its scripts' default); the Hugging Face checkpoints use swiglu, so
# `activation="swiglu"` is an override. The other entries are the checkpoints as released (swiglu; gpt-oss's
# clamped variant has the same shapes), each figure from the model's config.json on the Hugging Face hub
# (MODEL_SOURCES). layers counts the MoE layers only.
MODELS: dict[str, ModelConfig] = {
    m.name: m
    for m in (
        ModelConfig("mixtral-8x7b", hidden_N=4096, ffn_K=14336, experts_E=8, topk=2, layers=32),
        ModelConfig("qwen2-moe-2.7b", hidden_N=2048, ffn_K=1408, experts_E=64, topk=4, layers=24),
        ModelConfig("phi-3.5-moe", hidden_N=4096, ffn_K=6400, experts_E=16, topk=2, layers=32),
        ModelConfig("mixtral-8x22b", hidden_N=6144, ffn_K=16384, experts_E=8, topk=2, layers=56, activation="swiglu"),
        ModelConfig("qwen3-30b-a3b", hidden_N=2048, ffn_K=768, experts_E=128, topk=8, layers=48, activation="swiglu"),
        ModelConfig("qwen3-235b-a22b", hidden_N=4096, ffn_K=1536, experts_E=128, topk=8, layers=94,
                    activation="swiglu"),
        ModelConfig("deepseek-v3", hidden_N=7168, ffn_K=2048, experts_E=256, topk=8, layers=58, activation="swiglu",
                    shared_ffn_K=2048),
        ModelConfig("gpt-oss-20b", hidden_N=2880, ffn_K=2880, experts_E=32, topk=4, layers=24, activation="swiglu"),
        ModelConfig("gpt-oss-120b", hidden_N=2880, ffn_K=2880, experts_E=128, topk=4, layers=36, activation="swiglu"),
    )
}
_PAPER = "the Comet paper's evaluation shapes (docs/PAPER_NOTES.md)"
MODEL_SOURCES: dict[str, str] = {
    "mixtral-8x7b": _PAPER,
    "qwen2-moe-2.7b": _PAPER,
    "phi-3.5-moe": _PAPER,
    "mixtral-8x22b": "config.json of mistralai/Mixtral-8x22B-v0.1: hidden_size 6144, intermediate_size 16384, "
                     "num_local_experts 8, num_experts_per_tok 2, num_hidden_layers 56",
    "qwen3-30b-a3b": "config.json of Qwen/Qwen3-30B-A3B: hidden_size 2048, moe_intermediate_size 768, num_experts 128, "
                     "num_experts_per_tok 8, num_hidden_layers 48 (decoder_sparse_step 1, mlp_only_layers []: all "
                     "MoE), norm_topk_prob true, no shared expert",
    "qwen3-235b-a22b": "config.json of Qwen/Qwen3-235B-A22B: hidden_size 4096, moe_intermediate_size 1536, num_experts "
                       "128, num_experts_per_tok 8, num_hidden_layers 94 (all MoE), norm_topk_prob true",
    "deepseek-v3": "config.json of deepseek-ai/DeepSeek-V3: hidden_size 7168, moe_intermediate_size 2048, "
                   "n_routed_experts 256, num_experts_per_tok 8, n_shared_experts 1 (K_s = 1 x 2048), "
                   "num_hidden_layers 61 of which first_k_dense_replace 3 dense: 58 MoE; router n_group 8, "
                   "topk_group 4, routed_scaling_factor 2.5, norm_topk_prob true, scoring_func sigmoid",
    "gpt-oss-20b": "config.json of openai/gpt-oss-20b: hidden_size 2880, intermediate_size 2880, num_local_experts 32, "
                   "num_experts_per_tok 4, num_hidden_layers 24 (every layer MoE), swiglu_limit 7.0",
    "gpt-oss-120b": "config.json of openai/gpt-oss-120b: hidden_size 2880, intermediate_size 2880, num_local_experts "
                    "128, num_experts_per_tok 4, num_hidden_layers 36 (every layer MoE), swiglu_limit 7.0",
}


# ---------------------------------------------------------------------------------------- parallelism
@dataclass(frozen=True)
class ParallelConfig:
    """Expert parallel degree ep and tensor parallel degree tp; world_size = ep * tp.

    Rank r has ep_rank = r // tp and tp_rank = r % tp (TP groups are contiguous ranks, as in Megatron). Which
    node a rank is on is the machine's business: HardwareProfile.ranks_per_node and node_of.
    """

    ep: int = 1
    tp: int = 1

    def __post_init__(self):
        for f in ("ep", "tp"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f} must be >= 1, got {getattr(self, f)}")

    @property
    def world_size(self) -> int:
        return self.ep * self.tp

    def ep_rank(self, rank: int) -> int:
        return rank // self.tp

    def tp_rank(self, rank: int) -> int:
        return rank % self.tp

    def validate(self, model: ModelConfig, world_size: int | None = None) -> None:
        """Raise ValueError, saying what to change, if this parallelism cannot run `model`."""
        if model.experts_E % self.ep:
            raise ValueError(
                f"{model.name}: experts_E={model.experts_E} is not divisible by ep={self.ep}; "
                f"choose ep among the divisors of {model.experts_E}"
            )
        if model.ffn_K % self.tp:
            raise ValueError(
                f"{model.name}: ffn_K={model.ffn_K} is not divisible by tp={self.tp}; "
                f"choose tp among the divisors of {model.ffn_K}"
            )
        if world_size is not None and world_size != self.world_size:
            raise ValueError(
                f"world size mismatch: the process group has {world_size} ranks but ep*tp = "
                f"{self.ep}*{self.tp} = {self.world_size}; launch {self.world_size} ranks or change ep/tp"
            )


# ------------------------------------------------------------------------------------------- hardware
_MAY_BE_ZERO = ("l1_item_overhead_us", "host_sync_us", "nccl_sms")  # the other figures must be positive

@dataclass(frozen=True)
class HardwareProfile:
    """One GPU model and its interconnect, as the simulator and planner see it.

    GEMM tile time = 2*BM*BN*K / (peak_tflops/sms * efficiency(BM, BN, K)), where
    efficiency = gemm_efficiency * (BM*BN / (BM*BN + tile_area_half)) * (K / (K + gemm_k_half)):
    a large, deep tile runs near `gemm_efficiency` of peak; small tiles and short K loops pay their
    prologue/epilogue. `sources` names, for every figure, where it comes from.
    """

    name: str
    sms: int
    peak_tflops: float  # dense bf16 tensor-core peak, whole GPU
    gemm_efficiency: float  # best fraction of peak a large GEMM reaches
    gemm_k_half: float  # K at which the K-loop ramp halves efficiency
    tile_area_half: float  # BM*BN at which the tile-shape factor halves efficiency
    hbm_gbps: float  # achievable device-memory bandwidth (read + write)
    link: str  # "nvlink" (through NVSwitch, non-blocking) or "pcie"
    link_gbps: float  # per direction, per GPU, achievable
    link_latency_us: float
    per_block_link_gbps: float  # what one communication block (one SM) can drive over the link
    nic_gbps: float  # per GPU, per direction, for traffic between nodes
    nic_latency_us: float
    ranks_per_node: int
    launch_overhead_us: float  # one kernel launch as a framework pays it
    # fixed cost of one collective as a framework's torch.distributed call costs a stream that waits on the host
    # (the host's call path and NCCL's own latency together; measured back to back)
    collective_overhead_us: float
    # a layer0 tile's time over a plain tile's of the same shape: the gathered A rows and the activation
    # epilogue (comet.calibrate measures it; the tile model above is fitted on plain tiles)
    gemm0_slowdown: float = 1.0
    # a layer1 communication block's fixed time per work item (column block x send chunk) on top of its
    # bytes: the chain of dependent index loads and the signal (comet.calibrate measures it)
    l1_item_overhead_us: float = 0.0
    # the paper's baselines (sim/megatron.py, sim/pipelined_moe.py): what a device-to-host copy of split
    # sizes costs the GPU's stream (it drains, then waits for the copy), and the SMs one NCCL kernel holds
    # while it runs (a concurrent GEMM cannot use them)
    host_sync_us: float = 0.0
    nccl_sms: int = 0
    # how fast one GEMM tile of layer0's "direct" mechanism reads its remote rows (None: per_block_link_gbps,
    # one SM's link rate; inf: the rows are this GPU's memory, read by the tile's own loads, which its compute
    # time already includes, as in the emulated world)
    direct_read_gbps: float | None = None
    # the device-side fixed time of one NCCL collective kernel among the ranks of a node (handshakes and protocol,
    # before its bytes move at the link rate), what a collective costs when the host issues it ahead of the GPU
    # (Tutel and FasterMoE call NCCL from C++ on a side stream). None: all of collective_overhead_us
    nccl_latency_us: float | None = None
    sources: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    def __post_init__(self):
        numeric = [f.name for f in dataclasses.fields(self) if f.name not in ("name", "link", "sources")]
        for f in numeric:
            if getattr(self, f) is None:  # optional figures (direct_read_gbps, nccl_latency_us): a documented fallback
                continue
            if getattr(self, f) < 0 or (getattr(self, f) == 0 and f not in _MAY_BE_ZERO):
                bound = ">= 0" if f in _MAY_BE_ZERO else "> 0"
                raise ValueError(f"hardware {self.name}: {f} must be {bound}, got {getattr(self, f)}")
        defaulted = {f.name: f"default {f.default} (not given)" for f in dataclasses.fields(self)
                     if f.name in numeric and f.default is not dataclasses.MISSING and f.name not in self.sources}
        if defaulted:  # e.g. a profile file older than the field
            object.__setattr__(self, "sources", {**self.sources, **defaulted})
        missing = [f for f in numeric if f not in self.sources]
        if missing:
            raise ValueError(f"hardware {self.name}: no source given for {missing}")
        if self.link not in ("nvlink", "pcie"):
            raise ValueError(f"hardware {self.name}: link must be 'nvlink' or 'pcie', got {self.link!r}")

    @property
    def nccl_device_us(self) -> float:
        """NCCL's device-side fixed time per collective: nccl_latency_us, or all of collective_overhead_us when
        the profile does not split it."""
        lat = self.collective_overhead_us if self.nccl_latency_us is None else self.nccl_latency_us
        return min(lat, self.collective_overhead_us)

    @property
    def per_sm_tflops(self) -> float:
        return self.peak_tflops / self.sms

    def gemm_efficiency_of(self, bm: int, bn: int, k: int) -> float:
        area = bm * bn
        return self.gemm_efficiency * (area / (area + self.tile_area_half)) * (k / (k + self.gemm_k_half))

    def tile_time_us(self, bm: int, bn: int, k: int) -> float:
        """Time one SM takes for a BM x BN output tile over a K-long reduction (microseconds)."""
        flops = 2.0 * bm * bn * k
        return flops / (self.per_sm_tflops * 1e6 * self.gemm_efficiency_of(bm, bn, k))

    def node_of(self, rank: int) -> int:
        """The node of `rank`: ranks fill nodes of `ranks_per_node` GPUs in order."""
        return rank // self.ranks_per_node

    def nodes(self, world_size: int) -> int:
        """Nodes a world of `world_size` ranks spans."""
        return math.ceil(world_size / self.ranks_per_node)

    def link_time_us(self, nbytes: float, gbps: float | None = None) -> float:
        return nbytes / ((gbps or self.link_gbps) * 1e3)

    def replace(self, **changes) -> HardwareProfile:
        """A copy with some figures changed (for what-if sweeps); changed figures are marked as such."""
        sources = dict(changes.pop("sources", self.sources))
        for k in changes:
            if k in sources:
                sources[k] = "what-if override"
        return dataclasses.replace(self, sources=sources, **changes)

    def emulated_world(self, per_block_gbps: float | None = None, local_gbps: float | None = None,
                       latency_us: float = 1.0, sms: int | None = None) -> HardwareProfile:
        """This GPU with its link replaced by its own memory: how the single-GPU emulated world
        (kernels.workspace.EmulatedWorld) moves "peer" data. per_block_gbps / local_gbps: one communication
        block's and all blocks' rate (measured: comet.calibrate part comm); by default hbm_gbps / sms and
        hbm_gbps / 2 (a moved byte is read and written in one HBM). latency_us: a DRAM round trip and a
        flag, an assumption. sms: the measured GPU's SM count."""
        sms = sms or self.sms
        why = "emulated world: local memory " + ("(comet.calibrate part comm)" if per_block_gbps else
                                                 "(assumption: HBM shared by the blocks)")
        return self.replace(name=f"{self.name}-emulated-world", sms=sms,
                            link_gbps=local_gbps or self.hbm_gbps / 2,
                            per_block_link_gbps=per_block_gbps or self.hbm_gbps / sms, link_latency_us=latency_us,
                            direct_read_gbps=math.inf,
                            sources={**self.sources, "link_gbps": why, "per_block_link_gbps": why,
                                     "link_latency_us": "emulated world: assumption, a DRAM round trip and a flag",
                                     "direct_read_gbps": "emulated world: peers' rows are this GPU's memory; a "
                                     "direct tile reads them with its own loads, as the GEMM alone reads its "
                                     "rows (no link in between)"})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2)

    @classmethod
    def from_json(cls, path: str | Path) -> HardwareProfile:
        return cls(**json.loads(Path(path).read_text()))

    @classmethod
    def from_name(cls, name: str) -> HardwareProfile:
        """A registered profile by name, a JSON profile file (e.g. one `comet.calibrate` wrote), or the name of
        a file `profiles/<name>.json` in the current directory or the repository."""
        if name in HARDWARE:
            return HARDWARE[name]
        if name.endswith(".json") and Path(name).exists():
            return cls.from_json(name)
        files = profile_files()
        if name in files:
            return cls.from_json(files[name])
        raise _unknown("hardware", name, [*HARDWARE, *(f"{n} ({p})" for n, p in files.items())])


def profile_dirs() -> list[Path]:
    """Where profile names are looked up: ./profiles, then the repository's profiles/."""
    dirs = [Path.cwd() / "profiles", Path(__file__).resolve().parents[2] / "profiles"]
    return [d for i, d in enumerate(dirs) if d.resolve() not in [e.resolve() for e in dirs[:i]]]


def profile_files() -> dict[str, Path]:
    """Profile name -> JSON file in `profile_dirs()` (the first directory wins a name found in both)."""
    found: dict[str, Path] = {}
    for d in profile_dirs():
        for path in sorted(d.glob("*.json")) if d.is_dir() else ():
            found.setdefault(path.stem, path)
    return found


_DS_H100 = "NVIDIA H100 datasheet (SXM5): 132 SMs, 989 TFLOP/s dense bf16, 3.35 TB/s HBM3, NVLink 900 GB/s"
_ASSUMED_EFF = "assumption (typical Hopper CUTLASS GEMM curve); comet.calibrate measures it (profiles/)"
_ASSUMED_BLOCK = ("assumption: one SM's load/store stream over NVLink; set so ~25 blocks saturate the link, "
                  "near Comet's default of 28 communication blocks (docs/PAPER_NOTES.md)")
_ASSUMED_FW = "assumption: typical PyTorch launch (~5 us); NCCL fixed cost measured ~50-60 us (docs/GPU_FACTS.md)"
_MEASURED_L1_ITEM = ("measured on H200 (same SM as H100 / H800): a layer1 communication item's fixed cost 0.71 us "
                     "(comet.calibrate, results/calibration/h200_x1_2026-11-24.csv, l1_item_overhead_us)")
_HOST_SYNC = ("public source: one small cudaMemcpyAsync costs ~5-7 us per call (DualPath, arXiv 2602.21548, sec. 5.2; "
              "https://arxiv.org/abs/2602.21548); 6 us taken. Not measured in this repository")
_NCCL_SMS = ("public report: one NCCL kernel alone keeps ~15% of the SMs active, ~20 of 132 "
             "(https://github.com/NVIDIA/nccl/issues/1432; NCCL runs one CTA per channel, 16-32 channels on "
             "8-GPU NVSwitch hosts). Not measured in this repository")
_MEASURED_NCCL_FIXED = ("measured on H200 (Hopper + NVSwitch + NCCL, the H800's stack; the H800 itself not measured): "
                        "torch.distributed all_to_all_single back to back, ~50-60 us per call on 4 x H200 "
                        "(docs/GPU_FACTS.md; 77 us on 2, results/calibration/h200_x2_2026-11-24.csv); a fixed + "
                        "bytes / link_gbps fit of the 4-rank sizes 1-256 MiB gives 58 us. Flat from 1 to 4 MiB per "
                        "rank, so mostly the host's call path: nccl-tests, whose calls are thin, time NCCL's "
                        "all-to-all at ~11 us on 8 Hopper GPUs (nccl_latency_us)")
_NCCL_LATENCY = ("public measurement: nccl-tests alltoall_perf on 8 x H20 in one node (Hopper, NVLink 4 through "
                 "NVSwitch, the H800's generation), 10.3-11.1 us from 128 B to 4 KiB per rank "
                 "(https://github.com/deepseek-ai/DeepEP/issues/303); 10.5 us taken. Not measured in this repository "
                 "(needs several GPUs and a graph-captured or C++-issued collective)")
_COMMON_SOURCES = {
    "gemm_k_half": _ASSUMED_EFF,
    "tile_area_half": _ASSUMED_EFF,
    "link_latency_us": "assumption: ~2 us one-way NVLink load/store + flag latency",
    "nic_gbps": "ConnectX-7 400 Gb/s InfiniBand per GPU = 50 GB/s, ~45 achievable (assumption)",
    "nic_latency_us": "assumption: ~5 us GPU-initiated RDMA put",
    "ranks_per_node": "8 GPUs per HGX node",
    "launch_overhead_us": _ASSUMED_FW,
    "collective_overhead_us": _MEASURED_NCCL_FIXED,
    "gemm0_slowdown": "assumption: layer0 tiles cost as much as plain ones (comet.calibrate measures it)",
    "l1_item_overhead_us": _MEASURED_L1_ITEM,
    "host_sync_us": _HOST_SYNC,
    "nccl_sms": _NCCL_SMS,
    "nccl_latency_us": _NCCL_LATENCY,
}

HARDWARE: dict[str, HardwareProfile] = {
    p.name: p
    for p in (
        HardwareProfile(
            name="h800", sms=132, peak_tflops=989.0, gemm_efficiency=0.78, gemm_k_half=256.0,
            tile_area_half=2048.0, hbm_gbps=3000.0, link="nvlink", link_gbps=160.0, link_latency_us=2.0,
            per_block_link_gbps=7.0, nic_gbps=45.0, nic_latency_us=5.0, ranks_per_node=8,
            launch_overhead_us=5.0, collective_overhead_us=55.0, l1_item_overhead_us=0.71,
            host_sync_us=6.0, nccl_sms=20, nccl_latency_us=10.5,
            sources={
                **_COMMON_SOURCES,
                "sms": "H800 SXM = H100 SXM die: 132 SMs",
                "peak_tflops": "H800 SXM datasheet: 989 TFLOP/s dense bf16 (same core as H100 SXM)",
                "gemm_efficiency": "assumption: ~78% of peak, like the ~790/989 measured on H200 (docs/GPU_FACTS.md)",
                "hbm_gbps": "H800 datasheet 3.35 TB/s; ~90% achievable (assumption)",
                "link_gbps": "H800 NVLink 400 GB/s bidirectional = 200 per direction; ~80% achievable "
                             "(assumption; DeepEP's README reports ~153-158 GB/s per GPU on H800)",
                "per_block_link_gbps": _ASSUMED_BLOCK,
            },
        ),
        HardwareProfile(
            name="h100", sms=132, peak_tflops=989.0, gemm_efficiency=0.78, gemm_k_half=256.0,
            tile_area_half=2048.0, hbm_gbps=3000.0, link="nvlink", link_gbps=360.0, link_latency_us=2.0,
            per_block_link_gbps=10.0, nic_gbps=45.0, nic_latency_us=5.0, ranks_per_node=8,
            launch_overhead_us=5.0, collective_overhead_us=55.0, l1_item_overhead_us=0.71,
            host_sync_us=6.0, nccl_sms=20, nccl_latency_us=10.5,
            sources={
                **_COMMON_SOURCES,
                "sms": _DS_H100, "peak_tflops": _DS_H100,
                "gemm_efficiency": "assumption: ~78% of peak, like the ~790/989 measured on H200 (docs/GPU_FACTS.md)",
                "hbm_gbps": "H100 SXM datasheet 3.35 TB/s; ~90% achievable (assumption)",
                "link_gbps": "H100 NVLink4 900 GB/s bidirectional = 450 per direction; ~80% achievable "
                             "(assumption)",
                "per_block_link_gbps": _ASSUMED_BLOCK,
            },
        ),
        HardwareProfile(
            name="h200", sms=132, peak_tflops=989.0, gemm_efficiency=0.80, gemm_k_half=256.0,
            tile_area_half=2048.0, hbm_gbps=4300.0, link="nvlink", link_gbps=320.0, link_latency_us=2.0,
            per_block_link_gbps=10.0, nic_gbps=45.0, nic_latency_us=5.0, ranks_per_node=8,
            launch_overhead_us=5.0, collective_overhead_us=55.0, l1_item_overhead_us=0.71, host_sync_us=6.0,
            nccl_sms=20, nccl_latency_us=10.5,
            sources={
                **_COMMON_SOURCES,
                "sms": "measured: torch reports 132 multiprocessors on H200 "
                       "(results/calibration/h200_x1_2026-11-24.csv)",
                "peak_tflops": "H200 SXM datasheet: 989 TFLOP/s dense bf16",
                "gemm_efficiency": "measured: bf16 torch.matmul 8192x4096x14336 687-796 TFLOP/s on H200 "
                                   "(results/grouped_gemm/h200_*.csv headers; docs/GPU_FACTS.md)",
                "hbm_gbps": "assumption: ~90% of the H200 datasheet's 4.8 TB/s HBM3e (measured: a Triton row copy "
                            "3.7 TB/s, a 1 GiB copy_ 2.8 TB/s; docs/GPU_FACTS.md)",
                "link_gbps": "measured: Triton kernel peer load 311-315 GB/s, store 334-340 GB/s on 2-4 x H200 "
                             "(results/calibration/h200_x2_2026-11-24.csv; docs/GPU_FACTS.md)",
                "per_block_link_gbps": _ASSUMED_BLOCK,
                "collective_overhead_us": "measured: torch.distributed all_to_all_single back to back, ~50-60 "
                                          "us per call on 4 x H200, 77 us on 2 (docs/GPU_FACTS.md); mostly the "
                                          "host's call path (nccl_latency_us)",
                "ranks_per_node": "8 GPUs per HGX H200 node",
            },
        ),
        HardwareProfile(
            name="l20", sms=92, peak_tflops=119.5, gemm_efficiency=0.75, gemm_k_half=256.0,
            tile_area_half=2048.0, hbm_gbps=780.0, link="pcie", link_gbps=25.0, link_latency_us=5.0,
            per_block_link_gbps=2.0, nic_gbps=25.0, nic_latency_us=10.0, ranks_per_node=8,
            launch_overhead_us=5.0, collective_overhead_us=40.0, host_sync_us=6.0, nccl_sms=20,
            sources={
                **_COMMON_SOURCES,
                "sms": "NVIDIA L20 (AD102): 92 SMs",
                "peak_tflops": "NVIDIA L20 datasheet: 119.5 TFLOP/s dense fp16/bf16 tensor",
                "gemm_efficiency": "assumption: ~75% of peak on Ada",
                "hbm_gbps": "L20 datasheet 864 GB/s GDDR6; ~90% achievable (assumption)",
                "link_gbps": "the paper's PCIe testbed: 8 x L20, ~25 GB/s (Fig. 14 right; docs/PAPER_NOTES.md)",
                "link_latency_us": "assumption: PCIe peer write + flag ~5 us",
                "per_block_link_gbps": "assumption: ~12 blocks saturate PCIe",
                "nic_gbps": "assumption: 200 Gb/s NIC on PCIe hosts",
                "nic_latency_us": "assumption",
                "collective_overhead_us": "assumption: NCCL over PCIe fixed cost ~40 us (not measured)",
                "l1_item_overhead_us": "not measured on Ada: none, bytes only",
                "nccl_sms": _NCCL_SMS + "; on PCIe NCCL may use fewer channels (not measured)",
                "nccl_latency_us": "not given: no public figure for NCCL over PCIe found; all of "
                                   "collective_overhead_us counts as device time",
            },
        ),
    )
}


# ----------------------------------------------------------------------------------- names or objects
def as_model(model: ModelConfig | str) -> ModelConfig:
    """A ModelConfig, or a registered model's name; anything else is refused in one line."""
    if isinstance(model, ModelConfig):
        return model
    if isinstance(model, str):
        return ModelConfig.from_name(model)
    raise TypeError(f"model must be a ModelConfig or a model name ({', '.join(MODELS)}), got {type(model).__name__}")


def as_hardware(hardware: HardwareProfile | str) -> HardwareProfile:
    """A HardwareProfile, or a profile's name / JSON path; anything else is refused in one line."""
    if isinstance(hardware, HardwareProfile):
        return hardware
    if isinstance(hardware, str):
        return HardwareProfile.from_name(hardware)
    raise TypeError(f"hardware must be a HardwareProfile or a profile name ({', '.join(HARDWARE)}), got "
                    f"{type(hardware).__name__}")


def as_parallel(parallel: ParallelConfig) -> ParallelConfig:
    """A ParallelConfig; anything else (e.g. an int) is refused in one line."""
    if isinstance(parallel, ParallelConfig):
        return parallel
    raise TypeError(f"parallel must be a ParallelConfig(ep=..., tp=...), got {type(parallel).__name__} {parallel!r}")
