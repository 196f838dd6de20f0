"""Triton kernels that measure a GPU and its links for comet.calibrate.

    peer_copy     programs copying between this rank's buffer and peers' symmetric buffers: link GB/s
    ping_pong     one program per rank passing a flag back and forth between two ranks: one-way latency (us)
    empty_kernel  a kernel that does nothing: the cost of one eager Triton launch

Peer addresses come from a symmetric-memory rendezvous (kernels/symm.py): a Triton load or store through a
peer's address crosses NVLink. Buffers are 1-D; sizes are elements unless a name says `_bytes`.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


# ------------------------------------------------------------------------------------- peer copies
@triton.jit
def _peer_copy_kernel(local_ptr, peers_ptr, rank, world, n_peers, elems_per_prog, slot_elems, own_slot_off,
                      STORE: tl.constexpr, BLOCK: tl.constexpr):
    """Program p moves elements [p * elems_per_prog, (p + 1) * elems_per_prog) between this rank's local buffer
    and the symmetric buffer (world slots of slot_elems) of peer (rank + 1 + p % n_peers) % world.
    STORE: local -> the peer's slot `rank` (own_slot_off = rank * slot_elems); else the peer's own slot -> local."""
    pid = tl.program_id(0)
    elem = local_ptr.dtype.element_ty
    peer = (rank + 1 + pid % n_peers) % world
    # symmetric buffers are 16-byte aligned: say so, or the peer accesses go out scalar
    base = tl.multiple_of(tl.load(peers_ptr + peer).to(tl.pointer_type(elem)), 16)
    start = pid.to(tl.int64) * elems_per_prog
    offs = tl.arange(0, BLOCK)
    for i in range(0, elems_per_prog, BLOCK):
        o = start + i + offs
        if STORE:
            tl.store(base + own_slot_off + o, tl.load(local_ptr + o))
        else:
            tl.store(local_ptr + o, tl.load(base + peer.to(tl.int64) * slot_elems + o, cache_modifier=".cg"))


def peer_copy(local: torch.Tensor, peer_ptrs: torch.Tensor, rank: int, world: int, *, programs: int, n_peers: int,
              elems_per_prog: int, slot_elems: int, store: bool, block: int = 8192) -> None:
    """Launch _peer_copy_kernel on `programs` programs (one per SM at most; elems_per_prog a multiple of `block`).

    local: this rank's buffer (>= programs * elems_per_prog elements); peer_ptrs: int64 (world,), every rank's
    address of its symmetric buffer of world * slot_elems elements of local's dtype."""
    if elems_per_prog % block or programs * elems_per_prog > min(local.numel(), slot_elems):
        raise ValueError(f"{programs} programs x {elems_per_prog} elements: need a multiple of {block} per program "
                         f"within {min(local.numel(), slot_elems)} elements")
    if not 1 <= n_peers < world:
        raise ValueError(f"n_peers={n_peers} must be in [1, world-1={world - 1}]")
    _peer_copy_kernel[(programs,)](local, peer_ptrs, rank, world, n_peers, elems_per_prog, slot_elems,
                                   rank * slot_elems, STORE=store, BLOCK=block, num_warps=8)


# ------------------------------------------------------------------------------------- flag ping-pong
@triton.jit
def _wait_at_least(flag_ptr, value, max_spin):
    """Spin until *flag_ptr >= value or max_spin reads have passed; 1 if the value came, 0 on timeout."""
    seen = tl.load(flag_ptr, volatile=True)
    spins = 0
    while (seen < value) & (spins < max_spin):
        seen = tl.load(flag_ptr, volatile=True)
        spins += 1
    return (seen >= value).to(tl.int32)


@triton.jit(do_not_specialize=["base", "max_spin"])
def _ping_pong_kernel(flag_ptr, peer_flags_ptr, peer, base, warm, iters, max_spin, out_ptr, FIRST: tl.constexpr):
    """Rounds i = 1..warm+iters: FIRST writes base+i into the peer's flag and waits for its own flag to reach it;
    the other side waits, then answers. out = [ns of the last `iters` rounds (globaltimer), 1 if no timeout]."""
    peer_flag = tl.load(peer_flags_ptr + peer).to(tl.pointer_type(tl.int32))
    ok = tl.full((), 1, tl.int32)
    t0 = tl.extra.cuda.globaltimer()
    for i in range(0, warm + iters):
        if i == warm:
            t0 = tl.extra.cuda.globaltimer()
        v = base + 1 + i
        if ok != 0:
            if FIRST:
                tl.atomic_xchg(peer_flag, v, sem="release", scope="sys")
                ok = _wait_at_least(flag_ptr, v, max_spin)
            else:
                ok = _wait_at_least(flag_ptr, v, max_spin)
                tl.atomic_xchg(peer_flag, v, sem="release", scope="sys")
    t1 = tl.extra.cuda.globaltimer()
    tl.store(out_ptr, t1 - t0)
    tl.store(out_ptr + 1, ok.to(tl.int64))


def ping_pong(flags: torch.Tensor, peer_flags: torch.Tensor, peer: int, *, base: int, warm: int, iters: int,
              max_spin: int, out: torch.Tensor, first: bool) -> None:
    """Launch one program of _ping_pong_kernel on this rank; both ranks of the pair must launch it.

    flags: this rank's int32 symmetric flags (flags[0] is the one waited on); peer_flags: int64 (world,), every
    rank's address of its flags; base: a value no flag has reached yet (rounds write base+1, base+2, ...);
    out: int64 (2,), receives [nanoseconds of the last `iters` rounds, 1 if the peer answered every round]."""
    _ping_pong_kernel[(1,)](flags, peer_flags, peer, base, warm, iters, max_spin, out, FIRST=first, num_warps=1)


# ------------------------------------------------------------------------------------- launch cost
@triton.jit
def empty_kernel(x_ptr):
    """Does nothing: launched bare (`empty_kernel[(1,)](x)`, no wrapper) its eager time is Triton's launch cost."""
    pass
