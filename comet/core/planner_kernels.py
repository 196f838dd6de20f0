"""The triton planner's six kernels (comet/core/planner_triton.py launches them and says what each does).
One program per token block, row block, tile block or chunk block; every output element is written by one
program, no atomics. Shape letters: docs/SHAPES.md; the conventions of the tables: comet/core/plan.py.
No runtime argument is specialised (comet/core/jit.py): the kernels are launch-bound, and a new token count,
rank or table offset compiles nothing; the binary searches take their step counts at run time for the same
reason."""

from __future__ import annotations

import triton
import triton.language as tl

from comet.core.jit import jit
from comet.core.routing import BAD_WEIGHT, OUT_OF_RANGE, REPEATED

# 0-d counts, one int64 vector per rank: their index in it
SCALARS = ("num_rows", "num_l0_tiles", "num_recv", "num_l0_chunks", "num_l1_tiles", "l1_tiles_per_col",
           "num_sends", "num_l1_chunks")
# constants inside the kernels (a kernel reads globals only as constexpr)
SC_ROWS, SC_L0T, SC_RECV, SC_L0C, SC_L1T, SC_PERCOL, SC_SENDS, SC_L1C = (tl.constexpr(i) for i in range(8))
_OUT, _REP, _BADW = tl.constexpr(OUT_OF_RANGE), tl.constexpr(REPEATED), tl.constexpr(BAD_WEIGHT)


@triton.jit
def _or(a, b):
    return a | b


@triton.jit
def _pairs(ids_ptr, w_ptr, s_im, s_ik, s_wm, s_wk, p, lo_r, M, J, E, E_loc, g,
           BT: tl.constexpr, KP: tl.constexpr):
    """Block p's pairs in (u, slot) order: (index i, slot k, u, token t, token valid, problem bits, kept,
    EP group, local, local expert, weight)."""
    i = tl.arange(0, BT * KP)
    k = i % KP
    u = (p * BT + i // KP).to(tl.int64)
    tvalid = u < M
    t = (u + lo_r) % M
    pres = tvalid & (k < J)
    idv = tl.load(ids_ptr + t * s_im + k * s_ik, mask=pres, other=0)
    wv = tl.load(w_ptr + t * s_wm + k * s_wk, mask=pres, other=0.0)
    in_range = (idv >= 0) & (idv < E)
    rep = k < 0
    for d in tl.static_range(1, KP):
        prev = tl.load(ids_ptr + t * s_im + (k - d) * s_ik, mask=pres & (k >= d), other=-1)
        rep = rep | ((k >= d) & (prev == idv))
    rep = rep & in_range
    w_ok = (wv >= 0) & ((wv - wv) == 0)  # NaN fails the first test, +-inf the second
    bits = tl.where(in_range, 0, _OUT) | tl.where(rep, _REP, 0) | tl.where(w_ok, 0, _BADW)
    bits = tl.where(pres, bits, 0)
    ok = pres & (bits == 0)
    grp = tl.where(ok, idv // E_loc, -1)
    local = ok & (grp == g)
    e = tl.where(local, idv - g * E_loc, -1)
    return i, k, u, t, tvalid, bits, ok, grp, local, e, wv.to(tl.float32)


@triton.jit
def _token_sums(i, k, ok, grp, local, g, KP: tl.constexpr):
    """Per pair, over its token's pairs: (kept local pairs, distinct EP groups, distinct groups before g)."""
    same = (i[:, None] // KP) == (i[None, :] // KP)
    n_loc = tl.sum((same & local[None, :]).to(tl.int32), axis=1).to(tl.int64)
    earlier = same & (k[None, :] < k[:, None]) & ok[None, :] & (grp[None, :] == grp[:, None])
    first = ok & (tl.sum(earlier.to(tl.int32), axis=1) == 0)  # the token's first pair in its group
    n_grp = tl.sum((same & first[None, :]).to(tl.int32), axis=1).to(tl.int64)
    before = tl.sum((same & first[None, :] & (grp[None, :] < g)).to(tl.int32), axis=1).to(tl.int64)
    return n_loc, first, n_grp, before


@jit()
def _count(ids_ptr, w_ptr, s_im, s_ik, s_wm, s_wk, hist_ptr, blk_ptr, hgrp_ptr, errt_ptr, errb_ptr,
           owner_ptr, slots_ptr, M, J, E, E_loc, g, r, W, TP, lo_r, m_r,
           SHARED: tl.constexpr, ALL_GATHER: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr, BE: tl.constexpr,
           GB: tl.constexpr):
    p = tl.program_id(0)
    i, k, u, t, tvalid, bits, ok, grp, local, e, wv = _pairs(ids_ptr, w_ptr, s_im, s_ik, s_wm, s_wk, p, lo_r,
                                                            M, J, E, E_loc, g, BT, KP)
    n_loc, first, n_grp, before = _token_sums(i, k, ok, grp, local, g, KP)
    leader = tvalid & (k == 0)
    owner = (t * W) // M
    pos = (owner - r + W) % W
    need = leader & (pos > 0)
    if not ALL_GATHER:
        need = need & (n_loc > 0)
    send = leader & (n_loc > 0)
    c = tl.arange(0, 4)
    sums = tl.where(c == 0, tl.sum(local.to(tl.int64)), tl.where(c == 1, tl.sum(send.to(tl.int64)),
                                                                tl.where(c == 2, tl.sum(need.to(tl.int64)), 0)))
    tl.store(blk_ptr + p * 4 + c, sums)
    for e0 in range(0, E_loc, BE):
        ev = e0 + tl.arange(0, BE)
        h = tl.sum(((e[:, None] == ev[None, :]) & local[:, None]).to(tl.int64), axis=0)
        tl.store(hist_ptr + p * E_loc + ev, h, mask=ev < E_loc)
    gv = tl.arange(0, GB)
    own = first & (u < m_r)
    tl.store(hgrp_ptr + p * GB + gv, tl.sum(((grp[:, None] == gv[None, :]) & own[:, None]).to(tl.int64), axis=0))
    bad = bits != 0
    tmin = tl.min(tl.where(bad, t, M), axis=0)
    tl.store(errt_ptr + p, tmin)
    tl.store(errb_ptr + p, tl.reduce(tl.where(bad & (t == tmin), bits, 0).to(tl.int64), 0, _or))
    if SHARED:
        tl.store(owner_ptr + t, owner, mask=leader)
        tl.store(slots_ptr + t, n_grp * TP, mask=leader)


@jit()
def _scan(hist_ptr, blk_ptr, hgrp_ptr, errt_ptr, errb_ptr, cnt_ptr, scal_ptr, expected_ptr, err_ptr,
          P, E_loc, M, W, TP, n_eb, SHARED: tl.constexpr, BP: tl.constexpr, BE: tl.constexpr, GB: tl.constexpr,
          WB: tl.constexpr):
    pid = tl.program_id(0)
    # the two branches name their values apart: Triton's compiler merges same-named values of an if / else
    if pid < n_eb:  # BE experts' columns of the histogram
        ev = pid * BE + tl.arange(0, BE)
        run = tl.zeros((BE,), tl.int64)
        for p0 in range(0, P, BP):
            pv = p0 + tl.arange(0, BP)
            m = (pv < P)[:, None] & (ev < E_loc)[None, :]
            x = tl.load(hist_ptr + pv[:, None] * E_loc + ev[None, :], mask=m, other=0)
            tl.store(hist_ptr + pv[:, None] * E_loc + ev[None, :], tl.cumsum(x, 0) - x + run[None, :], mask=m)
            run += tl.sum(x, 0)
        tl.store(cnt_ptr + ev, run, mask=ev < E_loc)
    else:  # local pairs, sends, received tokens; own tokens' groups; the first bad token
        c = tl.arange(0, 4)
        gv = tl.arange(0, GB)
        tot = tl.zeros((4,), tl.int64)
        hg = tl.zeros((GB,), tl.int64)
        tmin = M + tl.zeros((), tl.int64)
        eb = tl.zeros((), tl.int64)
        for p0 in range(0, P, BP):
            qv = p0 + tl.arange(0, BP)
            pm = qv < P
            y = tl.load(blk_ptr + qv[:, None] * 4 + c[None, :], mask=pm[:, None], other=0)
            tl.store(blk_ptr + qv[:, None] * 4 + c[None, :], tl.cumsum(y, 0) - y + tot[None, :], mask=pm[:, None])
            tot += tl.sum(y, 0)
            hg += tl.sum(tl.load(hgrp_ptr + qv[:, None] * GB + gv[None, :], mask=pm[:, None], other=0), 0)
            et = tl.load(errt_ptr + qv, mask=pm, other=M)
            cmin = tl.min(et, 0)
            cb = tl.reduce(tl.where(et == cmin, tl.load(errb_ptr + qv, mask=pm, other=0), 0), 0, _or)
            take = cmin < tmin
            eb = tl.where(take, cb, eb)
            tmin = tl.where(take, cmin, tmin)
        tl.store(blk_ptr + P * 4 + c, tot)  # totals after the last block
        where = tl.where(c == 0, SC_ROWS, tl.where(c == 1, SC_SENDS, SC_RECV))
        tl.store(scal_ptr + where, tot, mask=c < 3)
        sv = tl.arange(0, WB)
        exp = tl.sum(tl.where(gv[None, :] == (sv // TP)[:, None], hg[None, :], 0), 1)
        tl.store(expected_ptr + sv, exp, mask=sv < W)
        two = tl.arange(0, 2)
        found = tmin < M
        if SHARED:
            tl.store(err_ptr + two, tl.where(two == 0, tl.where(found, eb, 0), tl.where(found, tmin, 0)))


@jit()
def _experts(cnt_ptr, off_ptr, cumnb_ptr, scal_ptr, E_loc, BM, C0, C1, EB: tl.constexpr):
    ev = tl.arange(0, EB)
    em = ev < E_loc
    cnt = tl.load(cnt_ptr + ev, mask=em, other=0)
    tl.store(off_ptr + ev, tl.zeros((EB,), tl.int64), mask=ev == 0)
    tl.store(off_ptr + ev + 1, tl.cumsum(cnt, 0), mask=em)
    nb = (cnt + BM - 1) // BM
    tl.store(cumnb_ptr + ev, tl.cumsum(nb, 0), mask=em)
    n_rb = tl.sum(nb, 0)
    c = tl.arange(0, 4)
    where = tl.where(c == 0, SC_L0T, tl.where(c == 1, SC_L1T, SC_PERCOL))
    tl.store(scal_ptr + where, tl.where(c == 0, n_rb * C0, tl.where(c == 1, n_rb * C1, n_rb)), mask=c < 3)


@jit()
def _scatter(ids_ptr, w_ptr, s_im, s_ik, s_wm, s_wk, hist_ptr, blk_ptr, off_ptr, scal_ptr,
             row_token_ptr, row_slot_ptr, row_src_ptr, row_weight_ptr, by_send_ptr, send_token_ptr,
             send_dest_ptr, send_slot_ptr, send_start_ptr, send_end_ptr, recv_ptr,
             M, J, E, E_loc, g, r, W, TP, tp_rank, lo_r, R_max, S_max, U_max,
             ALL_GATHER: tl.constexpr, BT: tl.constexpr, KP: tl.constexpr):
    p = tl.program_id(0)
    i, k, u, t, tvalid, bits, ok, grp, local, e, wv = _pairs(ids_ptr, w_ptr, s_im, s_ik, s_wm, s_wk, p, lo_r,
                                                            M, J, E, E_loc, g, BT, KP)
    n_loc, first, n_grp, before = _token_sums(i, k, ok, grp, local, g, KP)
    leader = tvalid & (k == 0)
    owner = (t * W) // M
    pos = (owner - r + W) % W
    # --- rows: expert offset + the blocks before + the pairs of the same expert before in this block
    rank_e = tl.sum(((e[None, :] == e[:, None]) & local[None, :] & (i[None, :] < i[:, None])).to(tl.int32), 1)
    rank_e = rank_e.to(tl.int64)
    row = tl.load(off_ptr + e, mask=local, other=0) + tl.load(hist_ptr + p * E_loc + e, mask=local, other=0) + rank_e
    tl.store(row_token_ptr + row, t, mask=local)
    tl.store(row_slot_ptr + row, k.to(tl.int64), mask=local)
    tl.store(row_src_ptr + row, owner, mask=local)
    tl.store(row_weight_ptr + row, wv, mask=local)
    # --- the same rows in (u, slot) order: rows_by_send; one send per token with local rows
    loc = local.to(tl.int64)
    lr = tl.load(blk_ptr + p * 4) + tl.cumsum(loc, 0) - loc
    tl.store(by_send_ptr + lr, row, mask=local)
    send = leader & (n_loc > 0)
    s64 = send.to(tl.int64)
    si = tl.load(blk_ptr + p * 4 + 1) + tl.cumsum(s64, 0) - s64
    tl.store(send_token_ptr + si, t, mask=send)
    tl.store(send_dest_ptr + si, owner, mask=send)
    tl.store(send_slot_ptr + si, before * TP + tp_rank, mask=send)
    tl.store(send_start_ptr + si, lr, mask=send)
    tl.store(send_end_ptr + si, lr + n_loc, mask=send)
    need = leader & (pos > 0)
    if not ALL_GATHER:
        need = need & (n_loc > 0)
    n64 = need.to(tl.int64)
    tl.store(recv_ptr + tl.load(blk_ptr + p * 4 + 2) + tl.cumsum(n64, 0) - n64, t, mask=need)
    # --- padding: this block's share of the tables past their valid lengths
    ri = p * BT * KP + i
    pad_r = (ri >= tl.load(scal_ptr + SC_ROWS)) & (ri < R_max)
    tl.store(row_token_ptr + ri, tl.full(ri.shape, -1, tl.int64), mask=pad_r)
    tl.store(row_slot_ptr + ri, tl.full(ri.shape, -1, tl.int64), mask=pad_r)
    tl.store(row_src_ptr + ri, tl.full(ri.shape, -1, tl.int64), mask=pad_r)
    tl.store(row_weight_ptr + ri, tl.zeros(ri.shape, tl.float32), mask=pad_r)
    tl.store(by_send_ptr + ri, tl.full(ri.shape, -1, tl.int64), mask=pad_r)
    ti = p * BT + tl.arange(0, BT)
    neg = tl.full(ti.shape, -1, tl.int64)
    pad_s = (ti >= tl.load(scal_ptr + SC_SENDS)) & (ti < S_max)
    tl.store(send_token_ptr + ti, neg, mask=pad_s)
    tl.store(send_dest_ptr + ti, neg, mask=pad_s)
    tl.store(send_slot_ptr + ti, neg, mask=pad_s)
    tl.store(send_start_ptr + ti, neg, mask=pad_s)
    tl.store(send_end_ptr + ti, neg, mask=pad_s)
    tl.store(recv_ptr + ti, neg, mask=(ti >= tl.load(scal_ptr + SC_RECV)) & (ti < U_max))


@triton.jit
def _count_le(a_ptr, n, x, steps):
    """#{i < n : a[i] <= x} for a nondecreasing a (searchsorted right), elementwise over x."""
    lo = tl.zeros_like(x).to(tl.int64)  # a loop-carried value keeps one type
    hi = lo + n
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        go = active & (tl.load(a_ptr + mid, mask=active, other=0) <= x)
        hi = tl.where(active & ~go, mid, hi)
        lo = tl.where(go, mid + 1, lo)
    return lo


@triton.jit
def _pos_below(a_ptr, n, q, r, M, W, steps, IS_TOKEN: tl.constexpr):
    """#{i < n : arrival pos of a[i] < q} for a sorted by arrival pos (a: token ids or owner ranks)."""
    lo = tl.zeros_like(q).to(tl.int64)
    hi = lo + n
    for _ in range(steps):
        active = lo < hi
        mid = (lo + hi) // 2
        v = tl.load(a_ptr + mid, mask=active, other=0)
        if IS_TOKEN:
            v = (v * W) // M
        go = active & ((v - r + W) % W < q)
        hi = tl.where(active & ~go, mid, hi)
        lo = tl.where(go, mid + 1, lo)
    return lo


@triton.jit
def _row_block(b, cumnb_ptr, off_ptr, E_loc, BM, e_steps):
    """(local expert, first row, end row) of row blocks b: BM rows of one expert, expert-major."""
    e = tl.minimum(_count_le(cumnb_ptr, E_loc, b, e_steps), E_loc - 1)
    j = b - tl.load(cumnb_ptr + e - 1, mask=e > 0, other=0)
    start = tl.load(off_ptr + e) + j * BM
    return e, start, tl.minimum(start + BM, tl.load(off_ptr + e + 1))


@triton.jit
def _chunk_table(a_ptr, n, cb, r, M, W, rows, C_max, src_ptr, start_ptr, end_ptr, per_src_ptr, num_ptr,
                 steps, IS_TOKEN: tl.constexpr, WB: tl.constexpr, BC: tl.constexpr):
    """Chunks cb*BC.. of <= rows entries of a (sorted by arrival pos), never spanning two positions."""
    q = tl.arange(0, WB)
    lb = _pos_below(a_ptr, n, q, r, M, W, steps, IS_TOKEN)
    cnt = tl.where(q < W, _pos_below(a_ptr, n, q + 1, r, M, W, steps, IS_TOKEN) - lb, 0)
    per = (cnt + rows - 1) // rows
    cum = tl.cumsum(per, 0)
    n_chunks = tl.sum(per, 0)
    c = cb * BC + tl.arange(0, BC)
    gq = tl.minimum(tl.sum(((cum[None, :] <= c[:, None]) & (q < W)[None, :]).to(tl.int64), 1), W - 1)
    sel = q[None, :] == gq[:, None]
    lb_g = tl.sum(tl.where(sel, lb[None, :], 0), 1)
    start = lb_g + (c - tl.sum(tl.where(sel, (cum - per)[None, :], 0), 1)) * rows
    end = tl.minimum(start + rows, lb_g + tl.sum(tl.where(sel, cnt[None, :], 0), 1))
    ok = c < n_chunks
    cm = c < C_max
    tl.store(start_ptr + c, tl.where(ok, start, -1), mask=cm)
    tl.store(end_ptr + c, tl.where(ok, end, -1), mask=cm)
    if IS_TOKEN:  # layer0: the chunk's source rank, and chunks per source
        tl.store(src_ptr + c, tl.where(ok, (gq + r) % W, -1), mask=cm)
        qs = (q - r + W) % W
        per_s = tl.sum(tl.where(q[None, :] == qs[:, None], per[None, :], 0), 1)
        tl.store(per_src_ptr + q, per_s, mask=(q < W) & (q * 0 + cb == 0))
    tl.store(num_ptr + q, n_chunks + tl.zeros_like(q), mask=(q == 0) & (q * 0 + cb == 0))


@jit()
def _blocks(cumnb_ptr, off_ptr, scal_ptr, row_src_ptr, rb_ptr, B_max,
            l1e_ptr, l1s_ptr, l1end_ptr, l1c_ptr, C1,
            recv_ptr, c0src_ptr, c0s_ptr, c0e_ptr, per_src_ptr, C0_max, send_dest_ptr, c1s_ptr, c1e_ptr, C1_max,
            E_loc, BM, r, M, W, rows, rows1, n_stat, n_l1, e_steps, u_steps,
            BB: tl.constexpr, BMP: tl.constexpr, BL: tl.constexpr, BC: tl.constexpr, WB: tl.constexpr):
    pid = tl.program_id(0)
    n_rb = tl.load(scal_ptr + SC_PERCOL)
    if pid < n_stat:  # row blocks: sources (bit mask, count) and max arrival pos of their rows
        b = pid * BB + tl.arange(0, BB)
        vb = b < n_rb
        e, start, end = _row_block(b, cumnb_ptr, off_ptr, E_loc, BM, e_steps)
        ri = start[:, None] + tl.arange(0, BMP)[None, :]
        rm = vb[:, None] & (ri < end[:, None])
        src = tl.load(row_src_ptr + ri, mask=rm, other=0)
        new = rm & (src != tl.load(row_src_ptr + ri - 1, mask=rm & (ri > start[:, None]), other=-1))
        mask = tl.reduce(tl.where(new, tl.full(src.shape, 1, tl.int64) << src, 0), 1, _or)
        last = tl.load(row_src_ptr + end - 1, mask=vb, other=0)
        tl.store(rb_ptr + b, e, mask=vb)
        tl.store(rb_ptr + B_max + b, start, mask=vb)
        tl.store(rb_ptr + 2 * B_max + b, end, mask=vb)
        tl.store(rb_ptr + 3 * B_max + b, mask, mask=vb)
        tl.store(rb_ptr + 4 * B_max + b, (last - r + W) % W, mask=vb)
        tl.store(rb_ptr + 5 * B_max + b, tl.sum(new.to(tl.int64), 1), mask=vb)
    elif pid < n_stat + n_l1:  # layer1 tiles: column-block-major, every row block per column block
        t1 = (pid - n_stat) * BL + tl.arange(0, BL)
        nrb1 = tl.maximum(n_rb, 1)
        ok = t1 < n_rb * C1
        e, start, end = _row_block(t1 % nrb1, cumnb_ptr, off_ptr, E_loc, BM, e_steps)
        tm = t1 < B_max * C1
        tl.store(l1e_ptr + t1, tl.where(ok, e, -1), mask=tm)
        tl.store(l1s_ptr + t1, tl.where(ok, start, -1), mask=tm)
        tl.store(l1end_ptr + t1, tl.where(ok, end, -1), mask=tm)
        tl.store(l1c_ptr + t1, tl.where(ok, t1 // nrb1, -1), mask=tm)
    else:  # communication chunks: layer0 (received tokens), then layer1 (sends)
        cb = pid - n_stat - n_l1
        n0 = (C0_max + BC - 1) // BC
        if cb < n0:
            _chunk_table(recv_ptr, tl.load(scal_ptr + SC_RECV), cb, r, M, W, rows, C0_max, c0src_ptr, c0s_ptr,
                         c0e_ptr, per_src_ptr, scal_ptr + SC_L0C, u_steps, True, WB, BC)
        else:
            _chunk_table(send_dest_ptr, tl.load(scal_ptr + SC_SENDS), cb - n0, r, M, W, rows1, C1_max, c0src_ptr,
                         c1s_ptr, c1e_ptr, per_src_ptr, scal_ptr + SC_L1C, u_steps, False, WB, BC)


@jit()
def _l0_tiles(rb_ptr, scal_ptr, B_max, e_ptr, s_ptr, end_ptr, col_ptr, mask_ptr, C0, W, GM,
              ORDER: tl.constexpr, BB: tl.constexpr, BJ: tl.constexpr, BCOL: tl.constexpr, BPAD: tl.constexpr):
    pid = tl.program_id(0)
    n_rb = tl.load(scal_ptr + SC_PERCOL)
    b = pid * BB + tl.arange(0, BB)
    vb = b < n_rb
    cls = tl.load(rb_ptr + 4 * B_max + b, mask=vb, other=0)
    if ORDER == 2:  # expert-major: row blocks in their own order, one readiness class
        place = b.to(tl.int64)
        c_start = tl.zeros_like(place)
        c_count = c_start + n_rb
    else:  # comet: key (max arrival pos, sources, block); arrival-order: (max arrival pos, block)
        key = cls
        if ORDER == 0:
            key = cls * (W + 1) + tl.load(rb_ptr + 5 * B_max + b, mask=vb, other=0)
        place = tl.zeros((BB,), tl.int64)
        c_start = tl.zeros((BB,), tl.int64)
        c_count = tl.zeros((BB,), tl.int64)
        for j0 in range(0, n_rb, BJ):
            jv = j0 + tl.arange(0, BJ)
            jm = (jv < n_rb)[None, :]
            cj = tl.load(rb_ptr + 4 * B_max + jv, mask=jv < n_rb, other=0)
            kj = cj
            if ORDER == 0:
                kj = cj * (W + 1) + tl.load(rb_ptr + 5 * B_max + jv, mask=jv < n_rb, other=0)
            before = (kj[None, :] < key[:, None]) | ((kj[None, :] == key[:, None]) & (jv[None, :] < b[:, None]))
            place += tl.sum((jm & before).to(tl.int64), 1)
            c_start += tl.sum((jm & (cj[None, :] < cls[:, None])).to(tl.int64), 1)
            c_count += tl.sum((jm & (cj[None, :] == cls[:, None])).to(tl.int64), 1)
    # swizzle: groups of <= GM row blocks within a class, every column block of a group before the next
    member = (place - c_start) % GM
    g_start = place - member
    g_size = tl.minimum(c_start + c_count - g_start, GM)
    e = tl.load(rb_ptr + b, mask=vb, other=0)
    start = tl.load(rb_ptr + B_max + b, mask=vb, other=0)
    end = tl.load(rb_ptr + 2 * B_max + b, mask=vb, other=0)
    smask = tl.load(rb_ptr + 3 * B_max + b, mask=vb, other=0)
    for c0 in range(0, C0, BCOL):
        cv = c0 + tl.arange(0, BCOL)
        m = vb[:, None] & (cv < C0)[None, :]
        tix = g_start[:, None] * C0 + cv[None, :] * g_size[:, None] + member[:, None]
        z = tl.zeros(tix.shape, tl.int64)
        tl.store(e_ptr + tix, e[:, None] + z, mask=m)
        tl.store(s_ptr + tix, start[:, None] + z, mask=m)
        tl.store(end_ptr + tix, end[:, None] + z, mask=m)
        tl.store(col_ptr + tix, cv[None, :] + z, mask=m)
        tl.store(mask_ptr + tix, smask[:, None] + z, mask=m)
    # padding: this program's share of the table past n_rb * C0
    for q0 in range(0, BB * C0, BPAD):
        qv = q0 + tl.arange(0, BPAD)
        ti = pid * BB * C0 + qv
        pm = (qv < BB * C0) & (ti >= n_rb * C0) & (ti < B_max * C0)
        neg = tl.full((BPAD,), -1, tl.int64)
        tl.store(e_ptr + ti, neg, mask=pm)
        tl.store(s_ptr + ti, neg, mask=pm)
        tl.store(end_ptr + ti, neg, mask=pm)
        tl.store(col_ptr + ti, neg, mask=pm)
        tl.store(mask_ptr + ti, tl.zeros((BPAD,), tl.int64), mask=pm)
