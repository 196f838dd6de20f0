"""kernels.gluon_gemm.split_schedule: the Gluon kernel's work split (the kernel's `_schedule` / `_work_item`
on the host). The GPU tests in test_grouped_gemm.py check the kernel against the reference on split tails."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

gluon_gemm = pytest.importorskip("kernels.gluon_gemm", reason="needs Triton's Gluon Hopper API")
split_schedule = gluon_gemm.split_schedule


def _makespan(items):
    return max(sum(k1 - k0 for _, k0, k1 in prog) for prog in items)


@settings(max_examples=300, deadline=None)
@given(T=st.integers(0, 900), G=st.integers(1, 140), K=st.integers(1, 80), split=st.booleans())
def test_every_step_once_and_splits_between_neighbours(T, G, K, split):
    items = split_schedule(T, G, K, split)
    seen = {}
    for p, prog in enumerate(items):
        tiles = [t for t, _, _ in prog]
        assert tiles == sorted(tiles), f"program {p} runs its tiles out of order: {prog}"
        for t, k0, k1 in prog:
            assert 0 <= k0 < k1 <= K, (p, t, k0, k1)
            seen.setdefault(t, []).append((p, k0, k1))
    assert sorted(seen) == list(range(T)), "some tile is missing or foreign"
    for t, parts in seen.items():
        assert len(parts) <= 2, f"tile {t} split {len(parts)} ways: {parts}"
        if len(parts) == 2:
            (p, a0, a1), (q, b0, b1) = sorted(parts)
            # the kernel's join: the part from step 0 is program b - 1's last item, the rest is program b's
            assert q == p + 1 and a0 == 0 and a1 == b0 and b1 == K, parts
            assert items[p][-1][0] == t
        else:
            assert parts[0][1:] == (0, K), parts


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 900), G=st.integers(1, 140), K=st.integers(1, 80))
def test_split_only_where_the_last_wave_is_short_and_then_faster(T, G, K):
    whole = split_schedule(T, G, K, split_tail=False)
    split = split_schedule(T, G, K)
    assert _makespan(whole) == -(-T // G) * K  # round-robin whole tiles
    short_tail = T > G and 0 < T % G <= 0.9 * G
    if not short_tail:
        assert split == whole
    else:
        # the last two waves' steps spread evenly: at most one step above the ideal share, which beats
        # whole tiles once a tile has enough steps to share (rem <= 0.9 G: K >= 10)
        ideal = (T // G - 1) * K + -(-(T % G + G) * K // G)
        assert _makespan(split) <= ideal <= _makespan(whole)
        if K >= 10:
            assert ideal < _makespan(whole)


def test_phi_at_4096_tokens():
    # Phi-3.5-MoE layer0 at M=4096 (balanced, EP=4): 16 row tiles x 25 column blocks of 128 x 256 on 132 SMs,
    # K = 4096 / 64 = 64 steps: whole tiles need 4 waves (the 4th runs 4 tiles); split, 3.03 waves' steps.
    whole, split = split_schedule(400, 132, 64, False), split_schedule(400, 132, 64)
    assert _makespan(whole) == 4 * 64
    assert _makespan(split) == 2 * 64 + 66  # 136 tail tiles x 64 steps / 132 programs = 65.9
    assert sum(len(p) for p in split) - 400 <= 131  # at most one split per boundary between programs
