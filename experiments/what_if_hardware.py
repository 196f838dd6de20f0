"""What if the hardware were different: one MoE layer under Comet and the baselines while one figure of the
h800 profile changes. Not a figure of the paper (so not part of experiments.reproduce); the notebook
notebooks/what_if_hardware.ipynb runs small versions live and reads this script's CSV for the large ones.

Sweeps (`sweep` column; `value` is the swept figure):
  link_gbps  NVLink bandwidth per direction per GPU (h800: 160 GB/s); Mixtral-8x7B, EP=8. One
             communication block still drives at most per_block_link_gbps (7 GB/s), so a faster link
             needs more blocks (n_c is tuned per point, from experiments.common.NC_SWEEP).
  sms        SMs per GPU, each as fast as an H800 SM (peak_tflops scales with the count; HBM does not);
             Mixtral-8x7B, EP=8. Comet's communication blocks scale with the SMs: nc_layer0 = 16 x SMs / 132
             and the n_c candidates of layer1 likewise (so 33 SMs try 2, 4, 7 instead of 8, 16, 28).
  nodes      16 GPUs (Qwen2-MoE, EP=16) spread over 1, 2, 4, 8, 16 nodes: traffic between nodes goes
             through each GPU's InfiniBand NIC (nic_gbps 45 GB/s, nic_latency_us 5) instead of NVLink.
  gpus       EP = 8, 16, 32, 64 GPUs at 8 per node (Qwen2-MoE has 64 experts: one per GPU at 64), M fixed.
Multi-node cases run the independent-ports link model (SimOptions.link_model "auto"); the full grid takes
about 41 s on 2 cores.
CSV: sweep, value, model, ep, tp, tokens, ranks_per_node, nodes, link_gbps, sms, then one row per system
(experiments.common.SYSTEM_COLUMNS).
"""

from __future__ import annotations

import pandas as pd

from comet.core import defaults
from comet.core.config import HardwareProfile
from comet.core.plan import Plan
from comet.core.policy import Policy
from experiments import common
from sim.run import make_case

NAME = "what_if_hardware"
COLUMNS = ["sweep", "value", "model", "ep", "tp", "tokens", "ranks_per_node", "nodes", "link_gbps", "sms",
           *common.SYSTEM_COLUMNS]
SINGLE_NODE_MODEL, MULTI_NODE_MODEL = "mixtral-8x7b", "qwen2-moe-2.7b"
FULL = {"link_gbps": ((25, 50, 100, 160, 320, 640), 8192), "sms": ((33, 66, 99, 132), 8192),
        "nodes": ((1, 2, 4, 8, 16), 4096), "gpus": ((8, 16, 32, 64), 4096)}
QUICK = {"link_gbps": ((50, 160, 640), 2048), "sms": ((66, 132), 2048), "nodes": ((1, 4), 2048),
         "gpus": ((8, 16), 2048)}


def case(sweep: str, value, tokens: int, hw: str = defaults.SIM_HARDWARE) -> dict:
    """The grid point `value` of `sweep` (a CSV row's case columns; see the module docstring)."""
    base = HardwareProfile.from_name(hw)
    if sweep == "link_gbps":
        return dict(sweep=sweep, value=value, model=SINGLE_NODE_MODEL, ep=8, tp=1, tokens=tokens,
                    ranks_per_node=8, nodes=1, link_gbps=float(value), sms=base.sms)
    if sweep == "sms":
        return dict(sweep=sweep, value=value, model=SINGLE_NODE_MODEL, ep=8, tp=1, tokens=tokens,
                    ranks_per_node=8, nodes=1, link_gbps=base.link_gbps, sms=int(value))
    if sweep == "nodes":
        if 16 % value:
            raise ValueError(f"nodes must divide the 16 GPUs, got {value}")
        return dict(sweep=sweep, value=value, model=MULTI_NODE_MODEL, ep=16, tp=1, tokens=tokens,
                    ranks_per_node=16 // value, nodes=value, link_gbps=base.link_gbps, sms=base.sms)
    if sweep == "gpus":
        return dict(sweep=sweep, value=value, model=MULTI_NODE_MODEL, ep=value, tp=1, tokens=tokens,
                    ranks_per_node=8, nodes=-(-value // 8), link_gbps=base.link_gbps, sms=base.sms)
    raise ValueError(f"unknown sweep {sweep!r}; choose one of {', '.join(FULL)}")


def hardware(c: dict, hw: str = defaults.SIM_HARDWARE) -> HardwareProfile:
    """The profile of a case: `hw` with the case's link bandwidth and SM count (peak scaled per SM)."""
    base = HardwareProfile.from_name(hw)
    changes = {}
    if c["link_gbps"] != base.link_gbps:
        changes["link_gbps"] = c["link_gbps"]
    if c["sms"] != base.sms:
        changes.update(sms=c["sms"], peak_tflops=base.peak_tflops * c["sms"] / base.sms)
    return base.replace(**changes) if changes else base


def _scaled(nc: int, c: dict, hw: str) -> int:
    """n_c for the case's SM count: the same share of the SMs as `nc` of the base profile's."""
    return max(1, round(nc * c["sms"] / HardwareProfile.from_name(hw).sms))


def plan_of(c: dict, hw: str = defaults.SIM_HARDWARE) -> Plan:
    policy = Policy(nc_layer0=_scaled(Policy.nc_layer0, c, hw), nc_layer1=_scaled(Policy.nc_layer1, c, hw))
    return make_case(c["model"], ep=c["ep"], tp=c["tp"], tokens=c["tokens"], hw=hardware(c, hw),
                     ranks_per_node=c["ranks_per_node"], policy=policy)


def cases(quick: bool) -> list[dict]:
    grid = QUICK if quick else FULL
    return [case(s, v, tokens) for s, (values, tokens) in grid.items() for v in values]


def run_case(c: dict, hw: str, quick: bool) -> list[dict]:
    ncs = tuple(sorted({_scaled(n, c, hw) for n in (common.QUICK_NC_SWEEP if quick else common.NC_SWEEP)}))
    return [{**c, **row} for row in common.compare_systems(plan_of(c, hw), quick, ncs=ncs)]


def sweep(name: str, values, tokens: int, hw: str = defaults.SIM_HARDWARE, quick: bool = True) -> pd.DataFrame:
    """One sweep as a DataFrame (COLUMNS), for notebooks: `quick` tunes n_c and Q over fewer candidates."""
    rows = []
    for v in values:
        rows.extend(run_case(case(name, v, tokens, hw), hw, quick))
    return pd.DataFrame(rows)[COLUMNS]


main = common.entry_point(__name__)

if __name__ == "__main__":
    main()
