"""`auto_nc(plan, routing)`: n_c chosen by the simulator and cached per shape bucket.

Comet profiles pre-compiled kernels offline and looks n_c up by shape at run time (the paper's mechanism 4,
docs/PAPER_NOTES.md). Here the profile is a simulation (`comet.tuning.sweep.best_nc`: each layer alone, every
candidate n_c) and the lookup is a dict keyed by a *shape bucket*: everything the best n_c depends on (model
shape, EP x TP, hardware name and figures, the Policy's fields other than n_c, the tuning's candidates and
options), with the token count rounded to the nearest power of two and the load imbalance (the busiest EP group's
assignments over the mean) rounded to steps of LOAD_STEP.

A miss syncs with the host, builds the plan's CPU tables if needed and runs 2 x len(candidates) layer
simulations (seconds at M = 16384); a hit costs one key (a bincount of the routing, one host sync) and a
dict lookup. With a path (argument or $COMET_NC_CACHE) the dict is also a JSON file, read when the cache
is made and rewritten on every miss, so a restarted serving process starts warm.

    >>> from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
    >>> from comet.core.planner import make_plan
    >>> from comet.core.routing import make_routing
    >>> routing = make_routing("balanced", 256, 8, 2)
    >>> case = (routing, ModelConfig.from_name("mixtral-8x7b"), ParallelConfig(ep=2), HardwareProfile.from_name("h800"))
    >>> cache = NcCache(candidates=(8, 16))
    >>> auto_nc(make_plan(*case), routing, cache).policy.nc_layer1 in (8, 16), cache.misses
    (True, 1)
    >>> _ = auto_nc(make_plan(*case), routing, cache); cache.hits
    1
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path

import torch

from comet.core.plan import Plan
from comet.core.planner import make_plan
from comet.core.routing import Routing
from comet.tuning import sweep
from sim.options import SimOptions
from sim.run import with_policy

CACHE_ENV = "COMET_NC_CACHE"
LOAD_STEP = 0.25  # load-imbalance bucket width (busiest EP group / mean): 1.0, 1.25, 1.5, ...
FILE_VERSION = 1
_NC_FIELDS = ("nc_layer0", "nc_layer1")


# ------------------------------------------------------------------------------------------ buckets
def token_bucket(M: int) -> int:
    """M rounded to the nearest power of two (in log scale): 3072..5792 -> 4096."""
    return 1 << max(0, round(math.log2(max(M, 1))))


def load_ratio(routing: Routing, experts_per_rank: int, ep: int) -> float:
    """Assignments of the busiest EP group over the mean (1.0: balanced). Host sync."""
    groups = routing.topk_ids_MK.reshape(-1) // experts_per_rank
    counts = torch.bincount(groups, minlength=ep).double()
    return float(counts.max() / counts.mean())


def load_bucket(ratio: float) -> float:
    return round(ratio / LOAD_STEP) * LOAD_STEP


def _fingerprint(obj) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def hardware_fingerprint(hw) -> str:
    """Name and a hash of every figure: a calibrated profile under an old name gets its own buckets."""
    figures = {f.name: getattr(hw, f.name) for f in dataclasses.fields(hw) if f.name != "sources"}
    return f"{hw.name}:{_fingerprint(figures)}"


# ------------------------------------------------------------------------------------------ the cache
class NcCache:
    """Tuned n_c per shape bucket: an in-process dict, optionally backed by a JSON file.

    candidates (default comet.tuning.sweep.NC_CANDIDATES) and options (SimOptions of the layer simulations) belong
    to the cache: they are part of every key, so one file can serve caches with different settings. `hits` and
    `misses` count lookups."""

    def __init__(self, path: str | os.PathLike | None = None, candidates=None, options: SimOptions | None = None):
        self.path = Path(path) if path else None
        given = sweep.NC_CANDIDATES if candidates is None else candidates
        self.candidates = tuple(sorted(set(int(c) for c in given)))
        if not self.candidates:
            raise ValueError("NcCache needs at least one candidate n_c")
        self.options = (options or SimOptions()).replace(record=False)
        self.entries: dict[str, dict] = self._read()
        self.hits = self.misses = 0

    def key(self, plan: Plan, routing: Routing) -> str:
        """The shape bucket of `plan` (built from `routing`), as a readable string."""
        m, p = plan.model, plan.parallel
        policy = {k: v for k, v in dataclasses.asdict(plan.policy).items() if k not in _NC_FIELDS}
        tune = {"candidates": self.candidates, "options": dataclasses.asdict(self.options)}
        ratio = load_ratio(routing, plan.experts_per_rank, p.ep)
        return "|".join([
            f"model={m.name}:N{m.hidden_N}:K{m.ffn_K}:E{m.experts_E}:top{m.topk}:{m.activation}:{m.dtype}",
            f"par=ep{p.ep}:tp{p.tp}",
            f"hw={hardware_fingerprint(plan.hardware)}",
            "policy=" + ":".join(f"{k}={v}" for k, v in policy.items()),
            f"tune={_fingerprint(tune)}",
            f"M~{token_bucket(plan.num_tokens)}",
            f"load~{load_bucket(ratio):.2f}",
        ])

    def lookup(self, plan: Plan, routing: Routing) -> dict:
        """The bucket's entry {"nc_layer1", "nc_layer0" (None unless layer0_comm is "blocks"), "tuned_on",
        "layer1_us", "layer0_us"}; simulates `plan` on a miss."""
        key = self.key(plan, routing)
        entry = self.entries.get(key)
        if entry is not None:
            self.hits += 1
            return entry
        self.misses += 1
        entry = self._tune(plan, routing)
        self.entries[key] = entry
        self._write()
        return entry

    def apply(self, plan: Plan, routing: Routing) -> Plan:
        """`plan` (built from `routing`) with nc_layer1, and nc_layer0 under layer0_comm "blocks", from its
        bucket's entry."""
        entry = self.lookup(plan, routing)
        changes = {"nc_layer1": entry["nc_layer1"]}
        if plan.policy.layer0_comm == "blocks" and entry["nc_layer0"] is not None:
            changes["nc_layer0"] = entry["nc_layer0"]
        return with_policy(plan, **changes)

    # --- internals
    def _tune(self, plan: Plan, routing: Routing) -> dict:
        if len(plan.ranks) < plan.world_size or plan.token_owner_M.device.type != "cpu":
            # the simulator needs every rank's tables, on the CPU
            plan = make_plan(routing.to("cpu"), plan.model, plan.parallel, plan.hardware, plan.policy)
        nc1, t1 = sweep.best_nc(plan, 1, self.candidates, self.options)
        nc0, t0 = (sweep.best_nc(plan, 0, self.candidates, self.options) if plan.policy.layer0_comm == "blocks"
                   else (None, {}))
        return {"nc_layer1": nc1, "nc_layer0": nc0,
                "tuned_on": {"tokens": plan.num_tokens,
                             "load_ratio": round(load_ratio(routing, plan.experts_per_rank, plan.parallel.ep), 4)},
                "layer1_us": {str(k): round(v, 3) for k, v in t1.items()},
                "layer0_us": {str(k): round(v, 3) for k, v in t0.items()}}

    def _read(self) -> dict[str, dict]:
        if self.path is None or not self.path.exists():
            return {}
        try:
            data = json.loads(self.path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"n_c cache {self.path} is not valid JSON ({e}); delete it to start afresh") from e
        if data.get("version") != FILE_VERSION:
            raise ValueError(f"n_c cache {self.path} has version {data.get('version')!r}, expected {FILE_VERSION}; "
                             f"delete it to start afresh")
        return dict(data["entries"])

    def _write(self) -> None:
        if self.path is None:
            return
        entries = {**self._read(), **self.entries}  # keep what another process added meanwhile
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump({"version": FILE_VERSION, "entries": entries}, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)  # readers never see a half-written file


# ------------------------------------------------------------------------------------------ the entry point
_SHARED: dict[Path | None, NcCache] = {}


def shared_cache(path: str | os.PathLike | None = None) -> NcCache:
    """The process-wide cache for `path` (None: $COMET_NC_CACHE, or an in-memory cache when unset)."""
    path = path or os.environ.get(CACHE_ENV) or None
    key = Path(path).resolve() if path else None
    if key not in _SHARED:
        _SHARED[key] = NcCache(key)
    return _SHARED[key]


def auto_nc(plan: Plan, routing: Routing, cache: NcCache | str | os.PathLike | None = None) -> Plan:
    """`plan` (built from `routing` by make_plan) with nc_layer1, and nc_layer0 under layer0_comm "blocks", from
    its shape bucket's entry in `cache` (an NcCache, a JSON file path, or None: $COMET_NC_CACHE if set, else a
    process-wide in-memory cache). Syncs with the host: a bucket's first plan runs the simulator on CPU tables
    (seconds at M = 16384); a hit runs no simulation."""
    if not isinstance(cache, NcCache):
        cache = shared_cache(cache)
    return cache.apply(plan, routing)
