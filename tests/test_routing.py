"""comet.core.routing's imbalanced generator: the std asked for is the std reached (up to whole tokens), or a
one-line error names the largest reachable one; small spreads keep the plain linear shares."""

from __future__ import annotations

import pytest
import torch

from comet.core.config import ModelConfig
from comet.core.routing import _round_to_total, imbalanced, make_routing


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen2-moe-2.7b", "phi-3.5-moe", "deepseek-v3"])
@pytest.mark.parametrize("std", [0.0, 0.005, 0.02])
def test_reaches_the_std_asked_for(name, std):
    m = ModelConfig.from_name(name)
    r = imbalanced(4096, m.experts_E, m.topk, std, seed=1)
    r.check()
    assert r.load_share_std() == pytest.approx(std, abs=max(1e-3 * std, 1 / (4096 * m.topk)))
    assert int(r.tokens_per_expert_E.max()) <= 4096 and int(r.tokens_per_expert_E.sum()) == 4096 * m.topk


def test_many_experts_reach_the_paper_std():
    """Qwen2-MoE (E=64) at the paper's 0.032: linear shares would go negative; the log-normal regime gets there."""
    r = make_routing("imbalanced", 8192, 64, 4, std=0.032, seed=0)
    assert r.load_share_std() == pytest.approx(0.032, abs=1e-3 * 0.032 + 1 / (8192 * 4))


@pytest.mark.parametrize("E,topk,std", [(8, 2, 0.5), (256, 8, 0.032)])
def test_beyond_reach_says_the_largest_reachable(E, topk, std):
    with pytest.raises(ValueError, match=r"cannot reach a load-share std of .* largest it reaches here is 0\.\d+"):
        imbalanced(2048, E, topk, std, seed=0)


def test_the_largest_reachable_is_reachable():
    with pytest.raises(ValueError) as e:
        imbalanced(2048, 8, 2, 0.5, seed=0)
    top = float(str(e.value).split("largest it reaches here is ")[1].split(":")[0])
    assert imbalanced(2048, 8, 2, top, seed=0).load_share_std() == pytest.approx(top, rel=1e-3)


def test_small_spreads_keep_the_linear_shares():
    """Where 1/E + std z stays positive the counts are those shares rounded: the routings of earlier results."""
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(8, generator=gen, dtype=torch.float64)
    z = (z - z.mean()) / z.std(unbiased=False)
    expect = _round_to_total((1 / 8 + 0.03 * z) * 1000 * 2, 2000, cap=1000)
    assert imbalanced(1000, 8, 2, 0.03, seed=3).tokens_per_expert_E.tolist() == expect.tolist()


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf")])
def test_bad_std(bad):
    with pytest.raises(ValueError, match="std must be a finite number >= 0"):
        imbalanced(64, 8, 2, bad)
