"""kernels.gluon_host.split_schedule: the Gluon kernel's work split (the kernel's `_schedule` / `_work_item`
on the host). The GPU tests in test_grouped_gemm.py check the kernel against the reference on split tails."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kernels.gluon_host import MAX_PARTS, split_schedule


def _makespan(items):
    return max(sum(k1 - k0 for _, k0, k1 in prog) for prog in items)


@settings(max_examples=300, deadline=None)
@given(T=st.integers(0, 900), programs=st.integers(1, 140), k_steps=st.integers(1, 80), split=st.booleans())
def test_every_step_once_in_aligned_chunks(T, programs, k_steps, split):
    items = split_schedule(T, programs, k_steps, split)
    seen = {}
    for p, prog in enumerate(items):
        tiles = [t for t, _, _ in prog]
        assert tiles == sorted(tiles), f"program {p} runs its tiles out of order: {prog}"
        for t, k0, k1 in prog:
            assert 0 <= k0 < k1 <= k_steps, (p, t, k0, k1)
            seen.setdefault(t, []).append((p, k0, k1))
    assert sorted(seen) == list(range(T)), "some tile is missing or foreign"
    split_tiles = {t: parts for t, parts in seen.items() if len(parts) > 1}
    for t, parts in seen.items():
        chunks = sorted((k0, k1) for _, k0, k1 in parts)  # contiguous from step 0 to k_steps
        assert [0] + [k1 for _, k1 in chunks] == [k0 for k0, _ in chunks] + [k_steps], (t, chunks)
    if split_tiles:
        n = {len(parts) for parts in split_tiles.values()}
        assert len(n) == 1 and 2 <= n.pop() <= MAX_PARTS
        first = min(split_tiles)
        assert sorted(split_tiles) == list(range(first, T)), "only the last tiles are split"
        # the kernel's join: tail tile r's chunk j in program r * parts + j, as that program's last item
        for t, parts in split_tiles.items():
            r, n_parts = t - first, len(parts)
            for p, k0, k1 in parts:
                assert p // n_parts == r and items[p][-1] == (t, k0, k1)
                j = p % n_parts
                assert (k0, k1) == (j * k_steps // n_parts, (j + 1) * k_steps // n_parts), \
                    "chunk j is not at the same K steps"


@settings(max_examples=200, deadline=None)
@given(T=st.integers(1, 900), programs=st.integers(1, 140), k_steps=st.integers(1, 80))
def test_split_only_a_short_last_wave_and_then_faster(T, programs, k_steps):
    whole = split_schedule(T, programs, k_steps, split_tail=False)
    split = split_schedule(T, programs, k_steps)
    assert _makespan(whole) == -(-T // programs) * k_steps  # round-robin whole tiles
    tail = T % programs
    if tail == 0 or 2 * tail > programs or k_steps == 1:
        assert split == whole
    else:
        parts = min(programs // tail, MAX_PARTS, k_steps)
        assert _makespan(split) == (T // programs) * k_steps + -(-k_steps // parts) < _makespan(whole)


def test_phi_at_4096_tokens():
    # Phi-3.5-MoE layer0 at M=4096 (balanced, EP=4): 16 row tiles x 25 column blocks of 128 x 256 on 132 SMs,
    # K = 4096 / 64 = 64 steps: whole tiles need 4 waves (the 4th runs 4 tiles); split, the 4 tail tiles run as
    # 16 quarter tiles: 3.25 waves
    whole, split = split_schedule(400, 132, 64, False), split_schedule(400, 132, 64)
    assert _makespan(whole) == 4 * 64
    assert _makespan(split) == 3 * 64 + 16
    assert sum(len(p) for p in split) == 396 + 16
