"""Tile timelines from the real fused kernels: what every program did, on which SM, when.

An instrumented build of kernels/fused_layer0.py and fused_layer1.py (their constexpr INSTRUMENT, off by
default: the uninstrumented build does not contain a single extra instruction) writes one record per work
item: a GEMM tile, a layer0 communication chunk, a layer1 (column block, send chunk) item. Records go to
this launch's buffer at [program, n] (n: the program's own item counter), so no atomics are needed; a
program with more items than the buffer's `slots` keeps counting but writes no more (overflow, reported).

    rec = TimelineRecorder()
    out = moe_forward_fused(world, x, routing, weights, model, parallel, policy, timeline=rec)
    events = rec.events()                  # DataFrame, the simulator's event columns (host sync)
    write_chrome_trace(events, "real.json", label="H200")

Record (int64 x RECORD_WORDS): [t_begin, t_ready, t_end, sm, kind, item, peer, rows, col, program, 0...].
Times are %globaltimer nanoseconds: t_begin when the program took the item, t_ready once its waits were over
(flags of the tile's source ranks; a layer1 column block's tiles), t_end after its results were stored and
signalled (a barrier of the program's threads first). kind: REC_* below; item: tile index (the Plan's table)
or communication work item (layer0: chunk; layer1: column block x chunks + chunk); peer: layer0 chunk's source
rank, layer1 item's destination rank; rows: the chunk's rows (layer0), the item's sends (layer1), 0 for a tile
(decoding takes a tile's rows, and a "direct" tile's rows from other ranks, from the Plan: fewer values live
across the GEMM's K loop); col: column block.
Counts: int32 (programs,), the items each program had.

Cost. Off: none; the sm_90 PTX of both kernels is the uninstrumented kernels' (checked with Triton 3.6, the
trace arguments are None, i.e. constexpr). On, per item: 2-3 timer reads, 10 scalar int64 stores, and in
layer0's GEMM one extra barrier of the program's threads; ptxas: layer1 unchanged (255 registers, no stack),
layer0 16 bytes more stack. experiments/timeline_compare.py times forwards with and without.

The instrumented path reads %globaltimer and %smid with inline PTX, which Triton's interpreter
(TRITON_INTERPRET=1) cannot run: it is GPU-only and the kernels' wrappers refuse it elsewhere
(`require_gpu_kernel`). %globaltimer's resolution depends on the driver (1 us steps have been reported on
some set-ups; tens of ns on others): items shorter than that read as zero length.

Events (`events_frame`) have SimResult.events' columns (rank, track "SM 017" = the real SM, kind, category,
layer, start_us, end_us, bytes, peer, cause = -1, dur_us) and: program, block (the simulator's numbering
of the launch's blocks: compute blocks 0 .. num_gemm - 1, then the communication blocks), sm, item, col, rows,
begin_us (t_begin: the event itself starts at t_ready, as the simulator's do), wait_us (t_ready - t_begin),
launch. Times in microseconds from the recording's earliest t_begin. This module imports nothing of sim/
(it runs where simpy is not installed); both speak comet/core/events.py's vocabulary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import torch
import triton
import triton.language as tl

from comet.core.events import CATEGORY, K, chrome_trace_events

RECORD_WORDS = 16
_RECORD_WORDS = tl.constexpr(RECORD_WORDS)
# record kinds (word 4); layer1 items whose destination is this rank are named "reduce_local", as in sim/
REC_GEMM0, REC_GEMM0_DIRECT, REC_PULL, REC_GEMM1, REC_REDUCE_SEND = 0, 1, 2, 3, 4
KIND_NAMES = {REC_GEMM0: "gemm0", REC_GEMM0_DIRECT: "gemm0_direct", REC_PULL: "pull", REC_GEMM1: "gemm1",
              REC_REDUCE_SEND: "reduce_send"}
# their categories, from the shared vocabulary (comet/core/events.py)
CATEGORIES = {name: CATEGORY[K[name]] for name in (*KIND_NAMES.values(), "reduce_local")}
EVENT_COLUMNS = ["rank", "track", "kind", "category", "layer", "start_us", "end_us", "bytes", "peer", "cause",
                 "dur_us", "program", "block", "sm", "item", "col", "rows", "begin_us", "wait_us", "launch"]
W_BEGIN, W_READY, W_END, W_SM, W_KIND, W_ITEM, W_PEER, W_ROWS, W_COL, W_PROGRAM = range(10)


class TimelineOverflowError(RuntimeError):
    """Some programs had more items than their buffer slots: their later items were not recorded."""


# ------------------------------------------------------------------------------------------- device
@triton.jit
def global_timer_ns():
    """%globaltimer (ns); not pure, so every call reads the clock where it stands."""
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False,
                                     pack=1)


@triton.jit
def sm_id():
    """%smid: the SM this program runs on (fixed for its lifetime)."""
    return tl.inline_asm_elementwise("mov.u32 $0, %smid;", "=r", [], dtype=tl.int32, is_pure=False, pack=1)


@triton.jit
def trace_write(trace_ptr, trace_slots, pid, n, t_begin, t_ready, t_end, sm, kind, item, peer, rows, col):
    """Record n of program pid; nothing past the buffer's slots (the program's count says how many it had).
    Scalar stores (cast to int64 by tl.store): one 16-wide vector store built with tl.where made ptxas spill
    in layer1's GEMM (sm_90)."""
    if n < trace_slots:
        p = trace_ptr + (pid.to(tl.int64) * trace_slots + n) * _RECORD_WORDS
        tl.store(p + 0, t_begin)
        tl.store(p + 1, t_ready)
        tl.store(p + 2, t_end)
        tl.store(p + 3, sm)
        tl.store(p + 4, kind)
        tl.store(p + 5, item)
        tl.store(p + 6, peer)
        tl.store(p + 7, rows)
        tl.store(p + 8, col)
        tl.store(p + 9, pid)


# --------------------------------------------------------------------------------------- host: launch
def interpreted(kernel) -> bool:
    """True when Triton runs `kernel` in its interpreter (TRITON_INTERPRET=1 when it was decorated)."""
    return type(kernel).__name__ == "InterpretedFunction" or os.environ.get("TRITON_INTERPRET") == "1"


def require_gpu_kernel(kernel, device) -> None:
    """Raise if the instrumented build cannot run here (the interpreter, or tensors off the GPU)."""
    if interpreted(kernel) or torch.device(device).type != "cuda":
        raise RuntimeError(
            "timeline recording needs a CUDA GPU: the instrumented kernels read %globaltimer and %smid with "
            "inline PTX, which Triton's interpreter (TRITON_INTERPRET=1) and the CPU cannot run; record on a "
            "GPU, or run without timeline=")


@dataclass
class LaunchTrace:
    """One instrumented launch: its buffers and what decoding needs. records: int64 (programs, slots,
    RECORD_WORDS); counts: int32 (programs,). Communication programs are [0, num_comm) when comm_first
    (layer0), else [num_gemm, num_gemm + num_comm) (layer1). Bytes: row_bytes per layer0 row (N x dtype),
    combine_elem_bytes x the column block's width (block_n, hidden_N) per layer1 send. tile_rows: the GEMM
    records' rows by tile index (the kernels leave that word 0: one value fewer live across the K loop);
    tile_remote_rows: the rows a "direct" tile reads from other ranks (its bytes)."""

    rank: int
    layer: int
    variant: str
    num_comm: int
    num_gemm: int
    comm_first: bool
    slots: int
    row_bytes: int
    hidden_N: int
    block_n: int
    combine_elem_bytes: int
    records: torch.Tensor
    counts: torch.Tensor
    tile_rows: torch.Tensor | None = None  # int64 rows of each tile of the Plan's table (GEMM records' rows)
    tile_remote_rows: torch.Tensor | None = None  # int64 rows of each tile owned by other ranks ("direct")

    def block_of(self, program: np.ndarray) -> np.ndarray:
        """The simulator's block number of each program: compute blocks first, then communication."""
        if not self.comm_first:
            return program
        return np.where(program < self.num_comm, self.num_gemm + program, program - self.num_comm)


@dataclass
class TimelineRecorder:
    """Collects the instrumented launches of a forward (pass it as `timeline=` to moe_forward_fused, or to
    fused_layer0 / fused_layer1). slots: records per program (None: as many as the program can have, from
    the Plan's table sizes: never overflows)."""

    slots: int | None = None
    launches: list[LaunchTrace] = field(default_factory=list)

    def new_launch(self, *, rank: int, layer: int, variant: str, num_comm: int, num_gemm: int, comm_first: bool,
                   max_gemm_items: int, max_comm_items: int, device, row_bytes: int, hidden_N: int, block_n: int,
                   combine_elem_bytes: int, tile_rows: torch.Tensor | None = None,
                   tile_remote_rows: torch.Tensor | None = None) -> LaunchTrace:
        """Buffers for one launch (allocated on the device, no host sync)."""
        need = max(-(-max_gemm_items // max(num_gemm, 1)), -(-max_comm_items // num_comm) if num_comm else 0, 1)
        slots = need if self.slots is None else self.slots
        if slots < 1:
            raise ValueError(f"slots must be >= 1, got {slots}")
        programs = num_comm + num_gemm
        lt = LaunchTrace(rank=rank, layer=layer, variant=variant, num_comm=num_comm, num_gemm=num_gemm,
                         comm_first=comm_first, slots=slots, row_bytes=row_bytes, hidden_N=hidden_N,
                         block_n=block_n, combine_elem_bytes=combine_elem_bytes,
                         records=torch.zeros(programs, slots, RECORD_WORDS, dtype=torch.int64, device=device),
                         counts=torch.zeros(programs, dtype=torch.int32, device=device), tile_rows=tile_rows,
                         tile_remote_rows=tile_remote_rows)
        self.launches.append(lt)
        return lt

    def clear(self) -> None:
        self.launches.clear()

    def overflow(self) -> int:
        """Items recorded by no slot, over all launches (host sync)."""
        return sum(int(np.maximum(lt.counts.cpu().numpy() - lt.slots, 0).sum()) for lt in self.launches)

    def events(self, strict: bool = True):
        """All launches' records as one DataFrame (see the module docstring); host sync. strict: raise
        TimelineOverflowError if records were dropped (else decode those that were kept)."""
        raw = [(lt, lt.records.cpu().numpy(), lt.counts.cpu().numpy()) for lt in self.launches]
        dropped = sum(int(np.maximum(c - lt.slots, 0).sum()) for lt, _, c in raw)
        if strict and dropped:
            raise TimelineOverflowError(f"{dropped} work items were not recorded (more items than the {raw[0][0].slots}"
                                        f" slots per program); record with TimelineRecorder(slots=None)")
        return events_frame([decode_launch(lt, rec, cnt, i) for i, (lt, rec, cnt) in enumerate(raw)])


def tile_remote_rows(row_src_R: torch.Tensor, start_T: torch.Tensor, end_T: torch.Tensor, rank: int
                     ) -> torch.Tensor:
    """Rows of each tile [start_T, end_T) whose owner (row_src_R) is another rank (device ops, no sync)."""
    prefix = torch.zeros(row_src_R.numel() + 1, dtype=torch.int64, device=row_src_R.device)
    prefix[1:] = torch.cumsum(row_src_R != rank, 0)
    n = row_src_R.numel()
    return prefix[end_T.clamp(0, n)] - prefix[start_T.clamp(0, n)]


# --------------------------------------------------------------------------------------- host: decode
def decode_launch(lt: LaunchTrace, records: np.ndarray, counts: np.ndarray, launch: int = 0) -> dict:
    """The kept records of one launch as columns (numpy): ns times still absolute. Records past a
    program's slots were never written and are skipped. GEMM records take their rows from lt.tile_rows."""
    n_kept = np.minimum(counts.astype(np.int64), lt.slots)
    keep = np.arange(lt.slots)[None, :] < n_kept[:, None]  # (programs, slots)
    r = records[keep]  # row-major: program by program, in each program's item order
    kind = r[:, W_KIND]
    peer = r[:, W_PEER]
    names = np.array([KIND_NAMES[int(k)] for k in kind.tolist()], dtype=object)
    names[(kind == REC_REDUCE_SEND) & (peer == lt.rank)] = "reduce_local"
    col = r[:, W_COL]
    rows = r[:, W_ROWS].copy()
    gemm = np.isin(kind, (REC_GEMM0, REC_GEMM0_DIRECT, REC_GEMM1))
    if lt.tile_rows is not None and gemm.any():
        rows[gemm] = lt.tile_rows.cpu().numpy()[r[gemm, W_ITEM]]
    remote = np.zeros(len(r), dtype=np.int64)
    direct = kind == REC_GEMM0_DIRECT
    if lt.tile_remote_rows is not None and direct.any():
        remote[direct] = lt.tile_remote_rows.cpu().numpy()[r[direct, W_ITEM]]
    width = np.clip(lt.hidden_N - col * lt.block_n, 0, lt.block_n)
    nbytes = np.select([kind == REC_PULL, kind == REC_GEMM0_DIRECT, kind == REC_REDUCE_SEND],
                       [r[:, W_ROWS] * lt.row_bytes, remote * lt.row_bytes,
                        r[:, W_ROWS] * width * lt.combine_elem_bytes], 0).astype(np.float64)
    program = r[:, W_PROGRAM]
    return {"rank": np.full(len(r), lt.rank), "layer": np.full(len(r), lt.layer), "kind": names,
            "begin_ns": r[:, W_BEGIN], "ready_ns": r[:, W_READY], "end_ns": r[:, W_END], "bytes": nbytes,
            "peer": np.where(np.isin(kind, (REC_PULL, REC_REDUCE_SEND)), peer, -1), "program": program,
            "block": lt.block_of(program), "sm": r[:, W_SM], "item": r[:, W_ITEM], "col": col,
            "rows": rows, "launch": np.full(len(r), launch)}


def events_frame(decoded: list[dict], origin_ns: int | None = None):
    """One DataFrame of decoded launches, times in us from origin_ns (default: the earliest t_begin)."""
    import pandas as pd

    cols = {k: np.concatenate([d[k] for d in decoded]) if decoded else np.zeros(0, dtype=np.int64)
            for k in ("rank", "layer", "kind", "begin_ns", "ready_ns", "end_ns", "bytes", "peer", "program",
                      "block", "sm", "item", "col", "rows", "launch")}
    if origin_ns is None:
        origin_ns = int(cols["begin_ns"].min()) if len(cols["begin_ns"]) else 0
    kind = cols["kind"].astype(object)
    df = pd.DataFrame({
        "rank": cols["rank"].astype(np.int64), "track": [f"SM {s:03d}" for s in cols["sm"].tolist()],
        "kind": kind, "category": [CATEGORIES[k] for k in kind.tolist()],
        "layer": cols["layer"].astype(np.int64),
        "start_us": (cols["ready_ns"] - origin_ns) / 1e3, "end_us": (cols["end_ns"] - origin_ns) / 1e3,
        "bytes": cols["bytes"].astype(np.float64), "peer": cols["peer"].astype(np.int64),
        "cause": np.full(len(kind), -1, dtype=np.int64)})
    df["dur_us"] = df["end_us"] - df["start_us"]
    for k in ("program", "block", "sm", "item", "col", "rows"):
        df[k] = cols[k].astype(np.int64)
    df["begin_us"] = (cols["begin_ns"] - origin_ns) / 1e3
    df["wait_us"] = (cols["ready_ns"] - cols["begin_ns"]) / 1e3
    df["launch"] = cols["launch"].astype(np.int64)
    df.attrs["origin_ns"] = origin_ns
    return df[EVENT_COLUMNS]


def end_to_end(events, gap_us: float = 0.0):
    """Each rank's launches laid end to end in launch order: launch k's first t_begin is gap_us after the end
    of the rank's launch k - 1 (the first launch's at gap_us). In an emulated world the ranks' launches run
    one after another on one GPU; this gives each rank the timeline it would have alone."""
    out = events.copy()
    for r in out["rank"].unique().tolist():
        at = gap_us
        for launch in sorted(out.loc[out["rank"] == r, "launch"].unique().tolist()):
            m = (out["rank"] == r) & (out["launch"] == launch)
            out.loc[m, ["start_us", "end_us", "begin_us"]] += at - float(out.loc[m, "begin_us"].min())
            at = float(out.loc[m, "end_us"].max()) + gap_us
    return out


# ------------------------------------------------------------------------------------ Chrome trace
def chrome_trace(events, label: str = "real", other: dict | None = None) -> dict:
    """Chrome trace-event JSON of an events frame, built as the simulator's (comet/core/events.py): pid = rank,
    one thread per SM, slices in us; args add program, item, column block, rows and the wait before."""
    sm = events["track"].str.extract(r"SM (\d+)$", expand=False).astype(np.int64).to_numpy()
    recs = list(zip(events["rank"].tolist(), sm.tolist(), [K[k] for k in events["kind"].astype(str)],
                    events["layer"].tolist(), events["start_us"].tolist(), events["end_us"].tolist(),
                    events["bytes"].tolist(), events["peer"].tolist(), events["cause"].tolist(), strict=True))
    extra = [{"program": p, "item": i, "col": c, "rows": n, "wait_us": round(w, 3)} for p, i, c, n, w in zip(
        events["program"].tolist(), events["item"].tolist(), events["col"].tolist(), events["rows"].tolist(),
        events["wait_us"].tolist(), strict=True)]
    ranks = sorted(set(events["rank"].tolist()))
    out = chrome_trace_events(recs, {r: f"{label} rank {r}" for r in ranks}, extra)
    return {"traceEvents": out, "otherData": {"system": label, **{k: str(v) for k, v in (other or {}).items()}}}


def write_chrome_trace(events, path, label: str = "real", other: dict | None = None):
    import json
    from pathlib import Path

    path = Path(path)
    path.write_text(json.dumps(chrome_trace(events, label, other)))
    return path


__all__ = ["TimelineRecorder", "LaunchTrace", "TimelineOverflowError", "decode_launch", "events_frame",
           "tile_remote_rows",
           "end_to_end", "chrome_trace", "write_chrome_trace", "require_gpu_kernel", "RECORD_WORDS"]
