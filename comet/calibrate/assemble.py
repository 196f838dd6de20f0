"""A HardwareProfile from measurement rows: measured fields with their citation, every other field the base
profile's value and source marked '(not calibrated: <why>)'. No GPU needed (`--from-csv` runs it alone)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable
from pathlib import Path

from comet.calibrate.measurements import Measurement, read_measurements
from comet.core.config import HardwareProfile

# the profile fields each part measures (a part not run or failed leaves these to the base profile)
PART_FIELDS = {
    "tiles": ("gemm_efficiency", "gemm_k_half", "tile_area_half", "gemm0_slowdown"),
    "hbm": ("hbm_gbps",),
    "launch": ("launch_overhead_us",),
    "comm": ("l1_item_overhead_us",),
    "link": ("link_gbps", "per_block_link_gbps", "link_latency_us", "collective_overhead_us"),
}
NUMERIC_FIELDS = tuple(f.name for f in dataclasses.fields(HardwareProfile) if f.name not in ("name", "link", "sources"))
INT_FIELDS = ("sms", "ranks_per_node")
# why a field is never measured here (others: "not measured in this run" unless the run says why)
NEVER_MEASURED = {
    "peak_tflops": "datasheet peak by design: gemm_efficiency is measured against it; the torch.matmul "
                   "ceiling is in the CSV",
    "nic_gbps": "one node: no traffic between nodes measured",
    "nic_latency_us": "one node: no traffic between nodes measured",
    "ranks_per_node": "a property of the node, not measured",
    "direct_read_gbps": "no probe of a GEMM tile reading a peer's rows yet (unset: per_block_link_gbps)",
    "nccl_latency_us": "no graph-captured or C++-issued NCCL probe yet (collective_overhead_us is torch's call "
                       "path and NCCL's latency together)",
}


def measured_source(citation: str, parameters: str) -> str:
    """'measured: <citation>; <parameters>' (the source of a measured field)."""
    return f"measured: {citation}" + (f"; {parameters}" if parameters else "")


def not_calibrated_source(base_source: str, why: str) -> str:
    """The base profile's source of a field this run kept, with why it was not measured."""
    return f"{base_source} (not calibrated: {why})"


def assemble_profile(base: HardwareProfile, name: str, rows: Iterable[Measurement], citation: str,
                     reasons: dict[str, str] | None = None) -> HardwareProfile:
    """A profile named `name`: every row whose measurement is a numeric HardwareProfile field gives that
    field (the last such row wins) with a 'measured: <citation>; <parameters>' source; every other field keeps
    `base`'s value and source plus '(not calibrated: <why>)', why from `reasons`, NEVER_MEASURED or a default.
    A measured value that is not a positive finite number is not taken (the source says so).
    citation: 'comet.calibrate on <device line>, results/calibration/<file>.csv'."""
    reasons = dict(reasons or {})
    measured = {r.measurement: r for r in rows if r.measurement in NUMERIC_FIELDS}
    values, sources = {}, {}
    for f in NUMERIC_FIELDS:
        r = measured.get(f)
        if r is not None and r.value > 0 and math.isfinite(r.value):
            values[f] = int(round(r.value)) if f in INT_FIELDS else r.value
            sources[f] = measured_source(citation, r.parameters)
            continue
        why = reasons.get(f) or NEVER_MEASURED.get(f) or "not measured in this run"
        if r is not None:
            why = f"measured {r.value:.4g} is not a positive number; {why}"
        values[f] = getattr(base, f)
        sources[f] = not_calibrated_source(base.sources[f], why)
    return HardwareProfile(name=name, link=base.link, sources=sources, **values)


def _value(v) -> str:
    return f"{'-':>12s}" if v is None else f"{v:12.5g}"  # None: an optional figure left to its fallback


def profile_table(profile: HardwareProfile, base: HardwareProfile) -> str:
    """A short text table: field, value, base value, measured or kept (and why)."""
    lines = [f"{'field':24s} {'value':>12s} {'base ' + base.name:>12s}  source",
             f"{'-' * 24} {'-' * 12} {'-' * 12}  {'-' * 30}"]
    for f in NUMERIC_FIELDS:
        src = profile.sources[f]
        how = "measured" if src.startswith("measured: comet.calibrate") else "kept: " + (
            src.rsplit("(not calibrated: ", 1)[-1].rstrip(")") if "(not calibrated: " in src else src)
        lines.append(f"{f:24s} {_value(getattr(profile, f))} {_value(getattr(base, f))}  {how[:80]}")
    return "\n".join(lines)


def profile_from_csv(path: str | Path, base: HardwareProfile, name: str) -> HardwareProfile:
    """`assemble_profile` over a committed calibration CSV: its measured fields, `base` for the rest (fields
    `base` measured itself keep their source, marked as taken from that profile). The CSV's first line (the
    device line) goes into the citation."""
    path = Path(path)
    with open(path) as f:
        device = f.readline().lstrip("# ").strip()
    citation = f"comet.calibrate on {device}, results/calibration/{path.name}"
    reasons = {f: f"not in {path.name}; kept from profile {base.name}" for f in NUMERIC_FIELDS}
    return assemble_profile(base, name, read_measurements(path), citation, reasons)
