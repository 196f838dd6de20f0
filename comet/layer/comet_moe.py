"""`CometMoE`: one MoE layer as a torch.nn.Module: router gate, fused layer0 (dispatch + grouped GEMM +
activation) and fused layer1 (grouped GEMM + top-k reduce + combine), over a process group (EP, TP or EP x TP,
one GPU per process) or an emulated world (all W ranks in this process: one GPU, or the CPU under Triton's
interpreter). The baselines of comet/layer/gpu_baselines.py run in the same module: system="sequential" | "chunked".

Shape legend: M tokens of the group, m tokens of one rank (M = W m on a process group), N hidden, K expert FFN
size (K' = K for gelu, 2K for swiglu: [gate | up]), E experts, W = EP x TP ranks, P ranks run by this process
(W in an emulated world, 1 on a process group), K_s the shared expert's FFN size.

Tokens. In an emulated world forward takes all M tokens (..., N) and returns all M outputs. On a process group
every rank passes its own m tokens (the same m on every rank) and gets their outputs; rank s's tokens are the
group's tokens [s m, (s + 1) m): tokens are sharded over all W = EP x TP ranks, as in the released Comet code
(the TP ranks of an expert group do not hold copies of the same tokens).

Parameters (requires_grad False: the kernels are forward-only):
    gate_weight         (E, N)                router, the same on every rank
    w0                  (P, E/EP, N, K'/TP)   layer0 shard of every rank this process runs (comet.core.reference layout)
    w1                  (P, E/EP, K/TP, N)    layer1 shard
    gate_bias           (E,) float32          router "sigmoid-group" only: DeepSeek-V3's e_score_correction_bias
    shared_w0 / _w1     (N, 2 K_s) / (K_s, N) optional dense shared expert ([gate | up], swiglu), run by each rank
                                              on its own tokens with the whole (replicated) weights:
    shared_gate_weight  (1, N)                shared_gated (Qwen2-MoE): out += sigmoid(x @ shared_gate_weight.T) *
                                              shared_expert(x); not shared_gated (DeepSeek-V3): out += shared_expert(x)
Routers (comet/layer/routers.py): "softmax" (softmax over the logits in float32, top-k, weights renormalised to
sum 1 when normalize_topk, as comet.core.routing.topk_gate; Mixtral and Qwen3-MoE checkpoints renormalise,
Qwen1.5-MoE not), "sparsemixer" (Phi-3.5-MoE's top-2 router in its inference form, `sparsemixer_gate`),
"sigmoid-group" (DeepSeek-V3's: sigmoid scores, gate_bias for the choice only, n_group / topk_group group-limited
top-k, renormalised when normalize_topk, times routed_scaling_factor; `grouped_sigmoid_gate`) and "topk-softmax"
(gpt-oss's: softmax over the top-k logits). Logits are x @ gate_weight.T in gate_weight's dtype (router_dtype,
default the layer's: as Hugging Face's blocks compute them; DeepSeek-V3 keeps its router in float32).

Workspace. Created once (or passed in and shared by every layer of a model) for `capacity_tokens` tokens of
the whole group; a call with more tokens raises kernels.workspace.WorkspaceCapacityError naming the bytes
needed and available. It does not grow: on a process group the workspace is a collective symmetric allocation
that every rank would have to redo together, and a captured CUDA graph keeps its addresses.

Per call (system "comet"): gate -> routing (on a process group: the routing of every rank's tokens, one
all-gather) -> Plan built on the device (comet.core.planner.make_plan, or on CUDA the replay of its graph for
this token count, comet/layer/plan_graphs.py; no host sync) -> kernels.moe.moe_forward_fused.
The baselines need one host sync per call (their split sizes, comet.layer.gpu_baselines.prepare).

Autograd: the Triton kernels have no backward. Under torch.no_grad() / torch.inference_mode() (or with no
input or parameter requiring grad) forward works; with grad enabled and an input or parameter requiring grad
it raises a RuntimeError saying so, before any work.

torch.compile: the expert part is the custom op `comet::moe_experts` (torch.library.custom_op, with a fake
implementation: the output is shaped like x); the router and the shared expert are ordinary torch code that
torch.compile traces around it.

CUDA graphs: system "comet" can be captured (warm up with one eager call first: Triton compiles on the first
launch; the capture fixes the token count). The plan is built by the planner's kernels in the graph's pool, the kernels
reset their count flags themselves, and the process-group barrier keeps its value in device memory. Not
capturable, with a clear error: layer0_comm="copy-engine" (its flags take a host-side epoch per launch, which a
replay would freeze, so a replayed tile could read rows before they arrive) and the baselines through this
module (their host sync); comet.layer.gpu_baselines.BaselineRunner.forward with prepared metadata can be captured.

    >>> import os, torch
    >>> from comet.core.config import ModelConfig
    >>> m = ModelConfig("tiny", hidden_N=32, ffn_K=32, experts_E=4, topk=2, layers=1)
    >>> layer = CometMoE(m, ParallelConfig(ep=2), capacity_tokens=64, dtype=torch.float32, device="cpu")
    >>> tuple(layer.w0.shape), tuple(layer.w1.shape)
    ((2, 2, 32, 32), (2, 2, 32, 32))
    >>> with torch.no_grad():  # doctest: +SKIP
    ...     y = layer(torch.randn(40, 32))
"""

from __future__ import annotations

import itertools
import math
import weakref
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from comet.core import defaults
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import Routing
from comet.core.weights import ExpertWeights, shard_weights
from comet.layer import hf
from comet.layer.collectives import DistCollectives, EmulatedCollectives
from comet.layer.gpu_baselines import SYSTEMS, BaselineRunner, prepare
from comet.layer.plan_graphs import PlanGraphs
from comet.layer.routers import ROUTERS, grouped_sigmoid_gate, softmax_topk_gate, sparsemixer_gate, topk_softmax_gate
from kernels.moe import moe_forward_fused
from kernels.symm import SymmetricWorkspace
from kernels.workspace import DEFAULT_MAX_SPIN, EmulatedWorld, WorkspaceCapacityError

# Tiles and n_c for tiny shapes on the CPU (Triton's interpreter): 16-wide tiles, 2 communication programs.
CPU_POLICY = Policy(block_m=16, block_n0=16, block_n1=16, group_m=2, nc_layer0=2, nc_layer1=2, comm_rows=8)

_LAYERS: dict[int, weakref.ref] = {}
_HANDLES = itertools.count()

__all__ = ["CometMoE", "SYSTEMS", "CPU_POLICY", "moe_experts"]


# ------------------------------------------------------------------------------------------------ custom op
@torch.library.custom_op("comet::moe_experts", mutates_args=())
def moe_experts(x_MN: torch.Tensor, topk_ids_MJ: torch.Tensor, topk_weights_MJ: torch.Tensor, w0: torch.Tensor,
                w1: torch.Tensor, handle: int) -> torch.Tensor:
    """The expert part of CometMoE `handle` (dispatch, both expert GEMMs, top-k reduce, combine) for this
    process's tokens x_MN with their routing; w0 / w1 are that layer's expert parameters. Opaque to
    torch.compile; the layer's workspace is state outside the op's arguments."""
    ref = _LAYERS.get(handle)
    layer = ref() if ref is not None else None
    if layer is None:
        raise RuntimeError(f"comet::moe_experts: no live CometMoE has handle {handle}")
    return layer._experts(x_MN, topk_ids_MJ, topk_weights_MJ, w0, w1)


@moe_experts.register_fake
def _moe_experts_fake(x_MN, topk_ids_MJ, topk_weights_MJ, w0, w1, handle):
    return torch.empty_like(x_MN)


# ---------------------------------------------------------------------------------------------------- layer
class CometMoE(nn.Module):
    """One MoE layer; see the module docstring for shapes, ownership, routers, workspace, graphs and compile.

    model: shapes and activation; parallel: EP x TP (default EP = TP = 1); world: "emulated" (all ranks here),
    "process-group" (torch.distributed's default group) or a ProcessGroup; capacity_tokens: the most tokens of
    the whole group per call; dtype: parameters and tokens (default the model's); device: default CUDA if
    available (on a group: the current CUDA device), else the CPU; system: "comet" | "sequential" | "chunked"
    (changeable later); policy: tiles, n_c, layer0 variant, dispatch form (default Policy() on CUDA,
    CPU_POLICY on the CPU); chunks: Q of the chunked baseline; router / normalize_topk / router_jitter_eps /
    n_group / topk_group / routed_scaling_factor / router_dtype: see the module docstring; shared_ffn_K: K_s of
    a shared expert (None: none), shared_gated: its sigmoid gate (Qwen2-MoE) or none (DeepSeek-V3); workspace:
    an existing one to share; hardware: the profile the planner records; plan_backend: make_plan's backend
    ("auto": the Triton planner on CUDA, the torch one on the CPU); plan_graphs: on CUDA, build an eager call's
    Plan by replaying a CUDA graph of make_plan captured once per token count (comet/layer/plan_graphs.py; the
    first call of each M captures it, at most 8 kept); False builds it through make_plan every call.

    Attributes besides the parameters: ranks (the ranks run here), workspace (the fused kernels'; None on a CPU
    process group), collectives and runner (comet.layer.gpu_baselines' EmulatedCollectives / DistCollectives and
    BaselineRunner, for timing the baselines' stages), policy, system, chunks.
    """

    def __init__(self, model: ModelConfig, parallel: ParallelConfig | None = None, *, world="emulated",
                 capacity_tokens: int, dtype: torch.dtype | None = None, device=None, system: str = "comet",
                 policy: Policy | None = None, chunks: int = 4, router: str = "softmax", normalize_topk: bool = True,
                 router_jitter_eps: float = 0.01, n_group: int = 1, topk_group: int = 1,
                 routed_scaling_factor: float = 1.0, router_dtype: torch.dtype | None = None,
                 shared_ffn_K: int | None = None, shared_gated: bool = True, workspace=None,
                 hardware: str | HardwareProfile = defaults.GPU_HARDWARE, max_spin: int | None = None,
                 plan_backend: str = "auto", plan_graphs: bool = True):
        super().__init__()
        parallel = parallel or ParallelConfig()
        parallel.validate(model)
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; choose one of {', '.join(ROUTERS)}")
        if router == "sparsemixer" and model.topk != 2:
            raise ValueError(f"the sparsemixer router picks exactly 2 experts; {model.name} has topk={model.topk}")
        if router == "sigmoid-group":  # its own checks of n_group / topk_group against E and topk, on one token
            grouped_sigmoid_gate(torch.zeros(1, model.experts_E), model.topk, torch.zeros(model.experts_E), n_group,
                                 topk_group)
        if capacity_tokens < 1:
            raise ValueError(f"capacity_tokens must be >= 1, got {capacity_tokens}")
        if shared_ffn_K is not None and shared_ffn_K < 1:
            raise ValueError(f"shared_ffn_K must be >= 1 or None, got {shared_ffn_K}")
        self.model, self.parallel = model, parallel
        self.dtype = dtype or getattr(torch, model.dtype)
        self.router, self.normalize_topk, self.router_jitter_eps = router, normalize_topk, router_jitter_eps
        self.n_group, self.topk_group, self.routed_scaling_factor = n_group, topk_group, routed_scaling_factor
        self.capacity_tokens = capacity_tokens
        self.hardware = hardware if isinstance(hardware, HardwareProfile) else HardwareProfile.from_name(hardware)
        self.system, self.chunks = system, chunks
        self.plan_backend = plan_backend  # make_plan's backend: "auto" (triton on CUDA), "torch", "triton"
        self._check_system()

        # --- the world: which ranks run here, their collectives, the fused kernels' workspace
        self.emulated = isinstance(world, str) and world == "emulated"
        if self.emulated:
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.collectives = EmulatedCollectives(parallel.world_size, self.device)
        else:
            if isinstance(world, str) and world != "process-group":
                raise ValueError(f"world must be 'emulated', 'process-group' or a ProcessGroup, got {world!r}")
            self.collectives = DistCollectives(None if isinstance(world, str) else world)
            parallel.validate(model, self.collectives.world_size)
            default = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else "cpu"
            self.device = torch.device(device or default)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.ranks = self.collectives.ranks
        self.policy = policy or (Policy() if self.device.type == "cuda" else CPU_POLICY)
        self.runner = BaselineRunner(self.collectives, model, parallel)
        self.workspace = self._make_workspace(workspace, max_spin)
        self.plan_graphs = (PlanGraphs(model, parallel, self.ranks)
                            if plan_graphs and self.device.type == "cuda" else None)

        # --- parameters
        P, E_loc, K_loc, N = len(self.ranks), model.experts_E // parallel.ep, model.ffn_K // parallel.tp, model.hidden_N
        k0 = model.layer0_cols // parallel.tp

        def param(*shape, dtype=None):
            return nn.Parameter(torch.empty(*shape, dtype=dtype or self.dtype, device=self.device),
                                requires_grad=False)

        self.gate_weight = param(model.experts_E, N, dtype=router_dtype)
        if router == "sigmoid-group":
            self.gate_bias = param(model.experts_E, dtype=torch.float32)
        self.w0 = param(P, E_loc, N, k0)
        self.w1 = param(P, E_loc, K_loc, N)
        self.shared_ffn_K, self.shared_gated = shared_ffn_K, shared_gated and shared_ffn_K is not None
        if shared_ffn_K is not None:
            self.shared_w0 = param(N, 2 * shared_ffn_K)
            self.shared_w1 = param(shared_ffn_K, N)
            if self.shared_gated:
                self.shared_gate_weight = param(1, N)
        self.reset_parameters()
        self._handle = next(_HANDLES)
        _LAYERS[self._handle] = weakref.ref(self)
        weakref.finalize(self, _LAYERS.pop, self._handle, None)

    # ------------------------------------------------------------------------------------------- setup
    def _check_system(self) -> None:
        if self.system not in SYSTEMS:
            raise ValueError(f"unknown system {self.system!r}; choose one of {', '.join(SYSTEMS)}")
        if self.chunks < 1:
            raise ValueError(f"chunks must be >= 1, got {self.chunks}")

    def _make_workspace(self, workspace, max_spin):
        """The fused kernels' workspace: given, or created here (not on a CPU process group: the fused
        kernels need CUDA and symmetric memory there; the baselines run without one)."""
        spin = max_spin or DEFAULT_MAX_SPIN
        if workspace is not None:
            m, p = workspace.model, workspace.parallel
            if (m.hidden_N, m.ffn_K, m.experts_E, m.topk) != (self.model.hidden_N, self.model.ffn_K,
                                                              self.model.experts_E, self.model.topk) \
                    or (p.ep, p.tp) != (self.parallel.ep, self.parallel.tp):
                raise ValueError(f"the given workspace was made for {m.name} EP={p.ep} TP={p.tp}, not for "
                                 f"{self.model.name} EP={self.parallel.ep} TP={self.parallel.tp}")
            if workspace.dtype != self.dtype or workspace.device != self.device:
                raise ValueError(f"the given workspace holds {workspace.dtype} on {workspace.device}; this layer "
                                 f"runs {self.dtype} on {self.device}")
            if tuple(workspace.ranks) != tuple(self.ranks):
                raise ValueError(f"the given workspace runs ranks {list(workspace.ranks)}, this layer "
                                 f"{list(self.ranks)}")
            self.capacity_tokens = min(self.capacity_tokens, workspace.capacity_tokens)
            return workspace
        if self.emulated:
            return EmulatedWorld(self.model, self.parallel, self.capacity_tokens, dtype=self.dtype, device=self.device,
                                 max_spin=spin)
        if self.device.type != "cuda":
            if self.system == "comet":
                raise ValueError("system 'comet' on a process group needs CUDA GPUs (symmetric memory); on the CPU "
                                 "use world='emulated', or system 'sequential' / 'chunked'")
            return None
        return SymmetricWorkspace(self.model, self.parallel, self.capacity_tokens, dtype=self.dtype,
                                  group=self.collectives.group, device=self.device, max_spin=spin)

    @torch.no_grad()
    def reset_parameters(self, seed: int = 0) -> None:
        """Seeded Gaussian weights, scaled 1/sqrt(fan_in). Expert e's full matrices are drawn from seed
        (seed, e) and then cut to this process's shards, so every sharding holds the same layer."""
        dev = self.device
        gen = torch.Generator(device=dev)
        N, K = self.model.hidden_N, self.model.ffn_K
        gen.manual_seed(seed)
        self.gate_weight.copy_(torch.randn(self.gate_weight.shape, generator=gen, device=dev) / math.sqrt(N))
        if self.router == "sigmoid-group":
            self.gate_bias.zero_()
        for i, r in enumerate(self.ranks):
            for j, e in enumerate(self._local_experts(r)):
                gen.manual_seed(seed * 1_000_003 + 1 + e)
                w0 = torch.randn(1, N, self.model.layer0_cols, generator=gen, device=dev) / math.sqrt(N)
                full = ExpertWeights(w0, torch.randn(1, K, N, generator=gen, device=dev) / math.sqrt(K))
                one = shard_weights(full, ParallelConfig(ep=1, tp=self.parallel.tp), self.parallel.tp_rank(r))
                self.w0[i, j].copy_(one.w0_ENK[0])
                self.w1[i, j].copy_(one.w1_EKN[0])
        if self.shared_ffn_K is not None:
            gen.manual_seed(seed + 7)
            shared = [(self.shared_w0, N), (self.shared_w1, self.shared_ffn_K)]
            for p, fan_in in shared + ([(self.shared_gate_weight, N)] if self.shared_gated else []):
                p.copy_(torch.randn(p.shape, generator=gen, device=dev) / math.sqrt(fan_in))

    def _local_experts(self, rank: int) -> range:
        e_loc = self.model.experts_E // self.parallel.ep
        return range(self.parallel.ep_rank(rank) * e_loc, (self.parallel.ep_rank(rank) + 1) * e_loc)

    @torch.no_grad()
    def load_experts(self, weights: ExpertWeights | Mapping[int, ExpertWeights], gate_weight_EN: torch.Tensor,
                     shared: Mapping[str, torch.Tensor] | None = None, gate_bias_E: torch.Tensor | None = None) -> None:
        """Copy weights in: `weights` holds all E experts (comet.core.reference layout; each rank here keeps its
        shard) or maps each rank run here to its shard; gate_weight_EN (E, N); shared: {"w0": (N, 2 K_s),
        "w1": (K_s, N), "gate_weight": (1, N) (shared_gated only)} when the layer has a shared expert;
        gate_bias_E (E,): the "sigmoid-group" router's correction bias (None: keep the current one)."""
        if isinstance(weights, ExpertWeights):
            if (weights.num_experts, weights.hidden_N, weights.ffn_K, weights.activation) != (
                    self.model.experts_E, self.model.hidden_N, self.model.ffn_K, self.model.activation):
                raise ValueError(f"weights hold E={weights.num_experts}, N={weights.hidden_N}, K={weights.ffn_K} "
                                 f"({weights.activation}); {self.model.name} has E={self.model.experts_E}, "
                                 f"N={self.model.hidden_N}, K={self.model.ffn_K} ({self.model.activation})")
            weights = {r: shard_weights(weights, self.parallel, r) for r in self.ranks}
        for i, r in enumerate(self.ranks):
            if r not in weights:
                raise ValueError(f"no weight shard for rank {r}")
            s = weights[r]
            if s.w0_ENK.shape != self.w0.shape[1:] or s.w1_EKN.shape != self.w1.shape[1:]:
                raise ValueError(f"rank {r}'s shard has w0 {tuple(s.w0_ENK.shape)}, w1 {tuple(s.w1_EKN.shape)}; "
                                 f"expected {tuple(self.w0.shape[1:])} and {tuple(self.w1.shape[1:])}")
            self.w0[i].copy_(s.w0_ENK)
            self.w1[i].copy_(s.w1_EKN)
        if tuple(gate_weight_EN.shape) != tuple(self.gate_weight.shape):
            raise ValueError(f"gate_weight_EN must be {tuple(self.gate_weight.shape)}, got "
                             f"{tuple(gate_weight_EN.shape)}")
        self.gate_weight.copy_(gate_weight_EN)
        if gate_bias_E is not None:
            if self.router != "sigmoid-group":
                raise ValueError(f"gate_bias_E is the 'sigmoid-group' router's; this layer's router is {self.router!r}")
            if tuple(gate_bias_E.shape) != tuple(self.gate_bias.shape):
                raise ValueError(f"gate_bias_E must be {tuple(self.gate_bias.shape)}, got {tuple(gate_bias_E.shape)}")
            self.gate_bias.copy_(gate_bias_E)
        if (shared is None) != (self.shared_ffn_K is None):
            raise ValueError("give `shared` weights exactly when the layer was built with shared_ffn_K")
        if shared is not None:
            for name in ("w0", "w1") + (("gate_weight",) if self.shared_gated else ()):
                p = getattr(self, f"shared_{name}")
                if name not in shared or tuple(shared[name].shape) != tuple(p.shape):
                    got = tuple(shared[name].shape) if name in shared else "missing"
                    raise ValueError(f"shared['{name}'] must be {tuple(p.shape)}, got {got}")
                p.copy_(shared[name])

    def rank_shards(self) -> dict[int, ExpertWeights]:
        """rank -> its shard (views of w0 / w1) for the ranks run here."""
        return {r: ExpertWeights(self.w0[i], self.w1[i]) for i, r in enumerate(self.ranks)}

    def check(self) -> None:
        """Raise kernels.signals.FlagTimeoutError if a fused kernel's wait timed out (one host sync)."""
        if self.workspace is not None:
            self.workspace.check()

    def extra_repr(self) -> str:
        where = "emulated" if self.emulated else f"rank {self.ranks[0]}"
        return (f"{self.model.name}: N={self.model.hidden_N} K={self.model.ffn_K} E={self.model.experts_E} "
                f"topk={self.model.topk} {self.model.activation}; EP={self.parallel.ep} TP={self.parallel.tp} "
                f"({where}); system={self.system}; router={self.router}; capacity {self.capacity_tokens} tokens")

    # --------------------------------------------------------------------------------------------- forward
    def route(self, x_MN: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(topk_ids_MJ int64, topk_weights_MJ float32) of tokens x_MN with this layer's router."""
        logits_ME = F.linear(x_MN.to(self.gate_weight.dtype), self.gate_weight)
        if self.router == "sparsemixer":
            return sparsemixer_gate(logits_ME, self.router_jitter_eps)
        if self.router == "sigmoid-group":
            return grouped_sigmoid_gate(logits_ME, self.model.topk, self.gate_bias, self.n_group, self.topk_group,
                                        self.normalize_topk, self.routed_scaling_factor)
        if self.router == "topk-softmax":
            return topk_softmax_gate(logits_ME, self.model.topk)
        return softmax_topk_gate(logits_ME, self.model.topk, self.normalize_topk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (..., N) tokens in the layer's dtype and device (all M in an emulated world, this rank's m on a
        process group). Returns the layer's output, same shape and dtype. No host sync with system "comet"."""
        if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters())):
            raise RuntimeError("CometMoE is forward-only (its Triton kernels have no backward): call it under "
                               "torch.no_grad() or torch.inference_mode(), with inputs and parameters that do not "
                               "require grad")
        N = self.model.hidden_N
        if x.dim() < 1 or x.shape[-1] != N:
            raise ValueError(f"x must have hidden size N={N} in its last dimension, got shape {tuple(x.shape)}")
        if x.dtype != self.dtype or x.device != self.device:
            raise ValueError(f"x is {x.dtype} on {x.device}; this layer runs {self.dtype} on {self.device}")
        x_MN = x.reshape(-1, N).contiguous()
        if x_MN.shape[0] == 0:
            raise ValueError("x holds no tokens")
        ids_MJ, w_MJ = self.route(x_MN)
        out_MN = moe_experts(x_MN, ids_MJ, w_MJ, self.w0, self.w1, self._handle)
        if self.shared_ffn_K is not None:
            h = x_MN @ self.shared_w0
            h = F.silu(h[:, :self.shared_ffn_K]) * h[:, self.shared_ffn_K:]
            shared = h @ self.shared_w1
            if self.shared_gated:
                shared = torch.sigmoid(F.linear(x_MN, self.shared_gate_weight)) * shared
            out_MN = out_MN + shared
        return out_MN.reshape(x.shape)

    def _experts(self, x_MN, ids_MJ, w_MJ, w0, w1) -> torch.Tensor:
        """The body of comet::moe_experts (see the module docstring for what runs per system)."""
        self._check_system()
        if not self.emulated:  # every rank's routing: the plan of any rank depends on all tokens
            ids_MJ, w_MJ = self.collectives.gather_routing(ids_MJ, w_MJ)
        M = ids_MJ.shape[0]
        if M > self.capacity_tokens:
            if self.workspace is not None:
                self.workspace.check_capacity(M)
            raise WorkspaceCapacityError(f"a call of M={M} tokens exceeds this layer's capacity of "
                                         f"{self.capacity_tokens} tokens; build it with capacity_tokens >= {M}")
        routing = Routing(ids_MJ, w_MJ.float(), self.model.experts_E)
        shards = {r: ExpertWeights(w0[i], w1[i]) for i, r in enumerate(self.ranks)}
        capturing = x_MN.is_cuda and torch.cuda.is_current_stream_capturing()
        if self.system == "comet":
            if self.workspace is None:
                raise RuntimeError("system 'comet' needs the fused kernels' workspace (CUDA); this layer has none")
            if capturing and self.policy.layer0_comm == "copy-engine":
                raise RuntimeError("layer0_comm='copy-engine' cannot be captured in a CUDA graph: its flags take a "
                                   "host-side epoch per launch, which a replay would freeze; use 'blocks' or 'direct'")
            if self.plan_graphs is not None and not capturing:
                plan = self.plan_graphs.plan(routing, self.hardware, self.policy, self.plan_backend)
            else:
                plan = make_plan(routing, self.model, self.parallel, self.hardware, self.policy,
                                 ranks=list(self.ranks), backend=self.plan_backend)
            return moe_forward_fused(self.workspace, x_MN, routing, shards, self.model, self.parallel, self.policy,
                                     plan=plan)
        if capturing:
            raise RuntimeError(f"system {self.system!r} needs one host sync per call (its split sizes) and cannot be "
                               f"captured in a CUDA graph through CometMoE; capture "
                               f"comet.layer.gpu_baselines.BaselineRunner."
                               f"forward with metadata from comet.layer.gpu_baselines.prepare instead")
        chunks = self.chunks if self.system == "chunked" else 1
        metas = prepare(routing, self.model, self.parallel, self.ranks, chunks=chunks, form=self.policy.dispatch,
                        policy=self.policy, hardware=self.hardware)
        return self.runner.forward(metas, x_MN, shards, overlap=self.system == "chunked")

    # ------------------------------------------------------------------------------------- constructors
    @classmethod
    def from_hf_state_dict(cls, state_dict: Mapping[str, torch.Tensor], arch: str | None = None, *,
                           topk: int | None = None, config=None, layer: int | None = None,
                           parallel: ParallelConfig | None = None, prefix: str = "", capacity_tokens: int,
                           world="emulated", dtype: torch.dtype | None = None, device=None,
                           normalize_topk: bool | None = None, name: str | None = None, **layer_kwargs) -> CometMoE:
        """A layer holding this process's shards of one Hugging Face MoE block (comet/layer/hf.py reads the
        state dict; keys relative to `prefix`): Mixtral, Phi-3.5-MoE, Qwen2-MoE, Qwen3-MoE or DeepSeek-V3.

        config: the model's transformers config or its config.json as a dict; it gives arch (model_type), topk,
        normalize_topk (norm_topk_prob) and the router's settings (router_jitter_noise; n_group, topk_group,
        routed_scaling_factor), and with `layer` a dense (non-MoE) layer is refused. Without it pass arch
        ("mixtral", "phimoe", "qwen2_moe", "qwen3_moe", "deepseek_v3") and topk (num_experts_per_tok);
        normalize_topk then defaults to transformers' config default (True for Mixtral and DeepSeek-V3, False for
        the Qwen families: pass the checkpoint's norm_topk_prob). Keywords given override the config's. dtype
        defaults to the experts' in the state dict; other keywords (system, policy, router_jitter_eps, n_group, ...)
        go to CometMoE. DeepSeek-V3's router weight and bias stay float32, as transformers keeps them.
        """
        opts = hf.hf_config_options(config, layer) if config is not None else {}
        arch = arch or opts.get("arch")
        if arch is None:
            raise ValueError("from_hf_state_dict needs the block's arch (e.g. 'qwen3_moe') or the model's config")
        topk = topk or opts.get("topk")
        if topk is None:
            raise ValueError("from_hf_state_dict needs topk (the config's num_experts_per_tok) or the model's config")
        a = hf.hf_arch(arch)
        if opts and opts["arch"] != a.name:
            raise ValueError(f"arch {arch!r} disagrees with the config's model_type ({opts['arch']!r})")
        for k in ("router_jitter_eps", "n_group", "topk_group", "routed_scaling_factor"):
            if k in opts:
                layer_kwargs.setdefault(k, opts[k])
        if normalize_topk is None:
            normalize_topk = opts.get("normalize_topk", a.normalize_topk)
        s = hf.hf_block_shapes(state_dict, arch, prefix)
        parallel = parallel or ParallelConfig()
        gate_w = hf.hf_router_weight(state_dict, arch, prefix)
        dtype = dtype or hf.hf_expert_dtype(state_dict, arch, prefix)
        router_dtype = torch.float32 if a.router == "sigmoid-group" else dtype
        model = ModelConfig(name or f"hf-{a.name}", hidden_N=s.hidden_N, ffn_K=s.ffn_K, experts_E=s.experts_E,
                            topk=topk, layers=1, activation="swiglu", dtype=str(dtype).removeprefix("torch."),
                            shared_ffn_K=s.shared_ffn_K)
        layer_ = cls(model, parallel, world=world, capacity_tokens=capacity_tokens, dtype=dtype, device=device,
                     router=a.router, normalize_topk=normalize_topk, router_dtype=router_dtype,
                     shared_ffn_K=s.shared_ffn_K, shared_gated=a.shared_gate is not None, **layer_kwargs)
        shards = {r: hf.hf_rank_shard(state_dict, arch, parallel, r, prefix=prefix, dtype=dtype, device=layer_.device)
                  for r in layer_.ranks}
        shared = (hf.hf_shared_expert(state_dict, prefix, dtype, layer_.device, arch=arch)
                  if s.shared_ffn_K is not None else None)
        layer_.load_experts(shards, gate_w.to(layer_.device, router_dtype), shared,
                            gate_bias_E=hf.hf_router_bias(state_dict, arch, prefix, layer_.device))
        return layer_
