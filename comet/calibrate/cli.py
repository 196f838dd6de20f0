"""Measure a GPU (and its links) and write a hardware profile the simulator loads: `python -m comet.calibrate`.

    python -m comet.calibrate --name h200_x1                                   # one GPU: parts a-d
    NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
        torchrun --nproc-per-node=4 -m comet.calibrate --name h200_x4          # + part e, the links
    python -m comet.calibrate --name h200_x2 --base h200_x1 \\
        --from-csv results/calibration/h200_x2_2026-11-24.csv                  # no GPU: a CSV on a base profile
    python -m sim --hw h200_x1 ...                                             # use it (name or path)

Each part appends rows `measurement, parameters, value, unit` to results/calibration/<name>_<date>.csv and
lines to <name>_<date>.log; rows whose measurement is a HardwareProfile field are the profile's values
(written to profiles/<name>.json):
  a. tiles   grouped-GEMM tile rates -> gemm_efficiency, gemm_k_half, tile_area_half, gemm0_slowdown  (gpu.py)
  b. hbm     a device-to-device copy -> hbm_gbps                                                     (gpu.py)
  c. launch  eager minus graph-replayed launches -> launch_overhead_us                               (gpu.py)
  d. comm    the fused kernels' communication programs on local memory -> l1_item_overhead_us        (comm.py)
  e. link    under torchrun with >= 2 GPUs: peer copies, flag ping-pong, NCCL -> link_gbps,
             per_block_link_gbps, link_latency_us, collective_overhead_us; skipped on one GPU         (comm.py)
Fields a run does not measure keep the base profile's value (--base, default h200) and its source, with
"(not calibrated: <why>)" appended; measured fields' sources cite the device line and the CSV. A part that
fails is logged with its traceback, its fields are kept, the other parts still run and the exit status is 1.
About 2-3 minutes on one H200 (--quick: fewer points, under a minute with warm Triton caches).
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist

from comet.calibrate import comm, gpu
from comet.calibrate.assemble import PART_FIELDS, assemble_profile, profile_from_csv, profile_table
from comet.calibrate.measurements import Context, Recorder, write_line
from comet.core.case_args import hardware_arg
from comet.core.config import HardwareProfile
from kernels.symm import NVLS_ENV
from kernels.timing import device_line

PARTS = tuple(PART_FIELDS)  # tiles, hbm, launch, comm, link


def _run_part(name: str, fn: Callable[[Context], None], ctx: Context, reasons: dict[str, str],
              failed: list[str]) -> None:
    """Run one part; on an exception log it, add `name` to `failed` and give its fields the reason."""
    t0 = time.time()
    ctx.rec.log(f"--- part {name}")
    try:
        fn(ctx)
        ctx.rec.log(f"--- part {name} done in {time.time() - t0:.0f} s")
    except Exception as e:  # noqa: BLE001 - one failing part must not lose the others' measurements
        ctx.rec.log(f"FAILED part {name} after {time.time() - t0:.0f} s: {type(e).__name__}: {e}")
        ctx.rec.log(traceback.format_exc())
        failed.append(name)
        for f in PART_FIELDS[name]:
            reasons[f] = f"part {name} failed: {type(e).__name__}: {str(e)[:160]}"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m comet.calibrate", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--name", required=True, help="profile name: writes <out>/<name>.json (e.g. h200_x1)")
    ap.add_argument("--out", default="profiles", help="folder of the profile JSON")
    ap.add_argument("--results", default="results/calibration", help="folder of the CSV and the log")
    ap.add_argument("--base", default="h200", type=hardware_arg,
                    help="profile whose values and sources the unmeasured fields keep")
    ap.add_argument("--parts", default=",".join(PARTS), help=f"comma-separated subset of {','.join(PARTS)}")
    ap.add_argument("--quick", action="store_true", help="fewer points (tests, smoke runs)")
    ap.add_argument("--from-csv", metavar="CSV",
                    help="measure nothing: assemble the profile from this calibration CSV on --base (no GPU), e.g. "
                         "a 2-GPU run's link fields on top of the one-GPU profile h200_x1")
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    parts = [p.strip() for p in a.parts.split(",") if p.strip()]
    bad = [p for p in parts if p not in PARTS]
    if bad:
        raise SystemExit(f"--parts: unknown {bad}; choose from {', '.join(PARTS)}")
    base = HardwareProfile.from_name(a.base)
    if a.from_csv:
        if not Path(a.from_csv).is_file():
            raise SystemExit(f"--from-csv {a.from_csv}: no such file; give a CSV written by a calibration run "
                             f"(results/calibration/<name>_<date>.csv)")
        profile = profile_from_csv(a.from_csv, base, a.name)
        path = Path(a.out) / f"{a.name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(profile.to_json() + "\n")
        print(profile_table(profile, base))
        print(f"wrote {path} from {a.from_csv} on base {base.name}")
        return 0
    if not torch.cuda.is_available():
        raise SystemExit("comet.calibrate measures a GPU, and torch sees no CUDA device here "
                         "(torch.cuda.is_available() is False). Run it on a GPU machine: "
                         "python -m comet.calibrate --name <name> (under torchrun with >= 2 GPUs for the link part).")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1:
        for k, v in NVLS_ENV.items():  # multicast must stay off on these machines (docs/GPU_FACTS.md)
            os.environ.setdefault(k, v)
        local = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(local)
        # a bounded timeout: a rank stuck in a collective ends the run instead of hanging it
        dist.init_process_group("nccl", timeout=datetime.timedelta(minutes=5), device_id=local)
    device = torch.device("cuda", torch.cuda.current_device())
    sms = torch.cuda.get_device_properties(device).multi_processor_count

    dev_line = device_line(world)
    stem = f"{a.name}_{datetime.date.today().isoformat()}"
    results = Path(a.results)
    csv_name = f"{stem}.csv"
    citation = f"comet.calibrate on {dev_line}, results/calibration/{csv_name}"
    header = [dev_line, f"command: python -m comet.calibrate {' '.join(sys.argv[1:] if argv is None else argv)}",
              f"base profile: {base.name}; world size {world}; columns: measurement, parameters, value, unit"]
    rec = Recorder(results / csv_name, results / f"{stem}.log", header) if rank == 0 else Recorder()
    for line in header:
        if rank == 0:
            write_line(line)
    ctx = Context(rec, base, device, sms, a.quick, rank == 0)
    reasons: dict[str, str] = {}
    failed: list[str] = []
    t0 = time.time()
    rec.add("sms", sms, "count", method="torch.cuda.get_device_properties")
    for p in PARTS:
        if p not in parts:
            for f in PART_FIELDS[p]:
                reasons[f] = f"part {p} not run (--parts)"
    # --- the link part first, on every rank; then parts a-d on rank 0 alone
    if "link" in parts:
        if world < 2:
            why = "one GPU: the link part needs torchrun with world size >= 2"
            rec.log(f"--- part link skipped: {why} (torchrun --nproc-per-node=N -m comet.calibrate ...)")
            for f in PART_FIELDS["link"]:
                reasons[f] = why
        else:
            _run_part("link", comm.measure_link, ctx, reasons, failed)
    if world > 1:
        dist.barrier()
        dist.destroy_process_group()
        if rank != 0:  # parts a-d measure one GPU: rank 0's
            return 0
    steps = {"tiles": gpu.measure_tiles, "hbm": gpu.measure_hbm, "launch": gpu.measure_launch,
             "comm": comm.measure_comm}
    for p, fn in steps.items():
        if p in parts:
            _run_part(p, fn, ctx, reasons, failed)
    profile = assemble_profile(base, a.name, rec.rows, citation, reasons)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{a.name}.json"
    path.write_text(profile.to_json() + "\n")
    rec.log("\n" + profile_table(profile, base))
    rec.log(f"wrote {path}, {results / csv_name} and the log in {time.time() - t0:.0f} s"
            + (f"; FAILED parts: {', '.join(failed)}" if failed else ""))
    rec.close()
    return 1 if failed else 0
