"""The event vocabulary shared by the simulator (sim/) and the instrumented kernels' timelines
(kernels/timeline.py): one tuple per finished piece of work, and its Chrome trace form (Perfetto).

A record is (rank, track, kind, layer, start_us, end_us, bytes, peer, cause):
    track  >= 0: the SM (block id) it ran on; < 0: one of the TRACKS below (a stream or engine);
    kind   index into KINDS (name, category); category is "compute", "comm" or "overhead";
    peer   the other rank of a transfer (-1 if none);
    cause  index of the record whose end let this one start (-1: none), for the critical path.
Records are plain tuples in one list (appending is the only per-event cost); sim/result.py turns them
into a DataFrame, `chrome_trace_events` into Chrome trace events.
"""

from __future__ import annotations

# (name, category). Compute: SM or memory work on the rank; comm: data moving between GPUs (including
# the top-k reduction a communication block fuses with its send); overhead: launches, fixed collective
# costs and waits on other ranks.
KINDS: tuple[tuple[str, str], ...] = (
    ("gemm0", "compute"),  # a layer0 GEMM tile (swiglu: gate and up)
    ("gemm1", "compute"),  # a layer1 GEMM tile
    ("activation", "compute"),  # separate activation kernel (memory-bound)
    ("permute", "compute"),  # baseline gather of the rows to send (memory-bound)
    ("topk_reduce", "compute"),  # baseline top-k weighted reduction kernel (memory-bound)
    ("reduce_local", "compute"),  # comet comm block: top-k reduce of partial sums kept on this rank
    ("combine_reduce", "compute"),  # owner sums its tokens' partial-sum slots (memory-bound)
    ("pull", "comm"),  # comet layer0 comm block: one chunk of token rows read from a source rank
    ("copy", "comm"),  # layer0 copy-engine copy of one source rank's rows
    ("reduce_send", "comm"),  # comet layer1 comm block: reduce one chunk of sends, store to the owner
    ("dispatch", "comm"),  # NCCL-style dispatch collective, transfer phase
    ("combine", "comm"),  # NCCL-style combine collective, transfer phase
    ("gemm0_direct", "compute"),  # layer0 tile that also loads its remote rows itself ("direct")
    ("launch", "overhead"),  # kernel-launch gap on a stream
    ("collective_fixed", "overhead"),  # fixed cost of one collective (sync + protocol)
    ("sync_wait", "overhead"),  # waiting for the other ranks to join a collective
    ("arrival_wait", "overhead"),  # waiting for the last partial sums to land (link latency)
    ("host_sync", "overhead"),  # the paper's baselines: the stream drained and a device-to-host copy of counts
    ("unpermute", "compute"),  # the paper's baselines: rows scattered back to token order (memory-bound)
    ("metadata", "comm"),  # the paper's baselines: a collective of routing indices, probabilities or counts
)
K = {name: i for i, (name, _) in enumerate(KINDS)}
CATEGORY = tuple(c for _, c in KINDS)

TRACK_STREAM = -1  # the compute stream: launches and whole-GPU memory-bound kernels
TRACK_NCCL = -2  # the communication stream of the baselines
TRACK_COPY = -3  # the copy engine (layer0_comm="copy-engine")
TRACK_NAMES = {TRACK_STREAM: "stream", TRACK_NCCL: "nccl stream", TRACK_COPY: "copy engine"}

COLUMNS = ("rank", "track", "kind", "layer", "start_us", "end_us", "bytes", "peer", "cause")


def track_name(track: int) -> str:
    return TRACK_NAMES[track] if track < 0 else f"SM {track:03d}"


def chrome_trace_events(records, process_names: dict[int, str], extra_args: list[dict] | None = None) -> list[dict]:
    """Chrome trace events of records in this module's tuple form: a name per process (rank, in
    `process_names`' order) and per thread (SM / stream / copy engine, as first met), then one complete slice
    per record (args: layer, event index, cause, bytes and peer where set, plus extra_args[i]). Shared by
    SimResult and the real kernels' timelines (kernels/timeline.py)."""
    out = []
    for r, name in process_names.items():
        out.append({"ph": "M", "name": "process_name", "pid": r, "args": {"name": name}})
        out.append({"ph": "M", "name": "process_sort_index", "pid": r, "args": {"sort_index": r}})
    tids = {}
    for rec in records:
        r, track = rec[0], rec[1]
        if (r, track) not in tids:
            tid = track if track >= 0 else 1000 - track
            tids[(r, track)] = tid
            out.append({"ph": "M", "name": "thread_name", "pid": r, "tid": tid, "args": {"name": track_name(track)}})
            out.append({"ph": "M", "name": "thread_sort_index", "pid": r, "tid": tid, "args": {"sort_index": tid}})
    for i, (r, track, kind, layer, start, end, nbytes, peer, cause) in enumerate(records):
        args = {"layer": layer, "event": i, "cause": cause}
        if nbytes:
            args["bytes"] = nbytes
        if peer >= 0:
            args["peer"] = peer
        if extra_args is not None:
            args.update(extra_args[i])
        out.append({"ph": "X", "name": KINDS[kind][0], "cat": KINDS[kind][1], "pid": r, "tid": tids[(r, track)],
                    "ts": start, "dur": end - start, "args": args})
    return out
