"""comet.tuning.auto_nc and its cache (comet/tuning/cache.py): the choice is best_nc's, buckets hit and miss
as documented, the JSON file round-trips, bad nc values say what is accepted, and the experiment's quick grid."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import sim.run
from comet.core.config import HardwareProfile, ModelConfig, ParallelConfig
from comet.core.planner import make_plan
from comet.core.policy import Policy
from comet.core.routing import make_routing
from comet.tuning import cache as nc_cache
from comet.tuning import sweep
from comet.tuning.cache import NcCache, auto_nc, load_bucket, token_bucket
from comet.tuning.sweep import best_nc

MODEL = ModelConfig("tiny", hidden_N=256, ffn_K=512, experts_E=4, topk=2, layers=1)
PAR = ParallelConfig(ep=2)
HW = HardwareProfile.from_name("h800")
POLICY = Policy(block_m=32, block_n0=64, block_n1=64, comm_rows=16)
CANDIDATES = (2, 4, 8)


def routing(M=256, kind="balanced", std=0.032, seed=0):
    return make_routing(kind, M, MODEL.experts_E, MODEL.topk, seed=seed, std=std)


def auto(r, cache, policy=POLICY, **kw):
    return auto_nc(make_plan(r, MODEL, PAR, HW, policy, **kw), r, cache)


@pytest.fixture
def sim_count(monkeypatch):
    """Counts simulator runs (best_nc imports sim.run.simulate at call time)."""
    calls = []
    real = sim.run.simulate

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(sim.run, "simulate", counting)
    return calls


def test_auto_picks_best_nc_of_each_layer():
    r = routing()
    plan = make_plan(r, MODEL, PAR, HW, POLICY)
    tuned = auto(r, NcCache(candidates=CANDIDATES))
    assert tuned.policy.nc_layer1 == best_nc(plan, 1, CANDIDATES)[0]
    assert tuned.policy.nc_layer0 == best_nc(plan, 0, CANDIDATES)[0]
    # only n_c changed: same tables, same other Policy fields
    assert tuned.policy.replace(nc_layer0=POLICY.nc_layer0, nc_layer1=POLICY.nc_layer1) == POLICY
    assert tuned.ranks is not plan.ranks and tuned.num_tokens == plan.num_tokens


def test_auto_leaves_nc_layer0_alone_without_communication_blocks(sim_count):
    pol = POLICY.replace(layer0_comm="copy-engine", nc_layer0=5)
    tuned = auto(routing(), NcCache(candidates=CANDIDATES), pol)
    assert tuned.policy.nc_layer0 == 5 and tuned.policy.nc_layer1 in CANDIDATES
    assert len(sim_count) == len(CANDIDATES)  # layer1 only


def test_cache_hits_in_the_same_bucket_and_misses_in_another(sim_count):
    cache = NcCache(candidates=CANDIDATES)
    first = auto(routing(256), cache)
    per_miss = len(sim_count)
    assert per_miss == 2 * len(CANDIDATES) and (cache.hits, cache.misses) == (0, 1)
    # another batch of the same bucket: 200 tokens round to 256, another seed, still balanced
    second = auto(routing(200, seed=3), cache)
    assert len(sim_count) == per_miss and (cache.hits, cache.misses) == (1, 1)
    assert second.policy == first.policy
    auto(routing(1024), cache)  # another token bucket
    auto(routing(256, "imbalanced", std=0.2), cache)  # another load bucket
    auto(routing(256), cache, POLICY.replace(order="expert-major"))  # another Policy
    assert len(sim_count) == 4 * per_miss and cache.misses == 4 and len(cache.entries) == 4


def test_bucket_rounding():
    assert [token_bucket(m) for m in (1, 3, 5, 2896, 2897, 5792, 5793, 16384)] == [1, 4, 4, 2048, 4096, 4096,
                                                                                     8192, 16384]
    assert [load_bucket(x) for x in (1.0, 1.12, 1.13, 1.377, 1.9)] == [1.0, 1.0, 1.25, 1.5, 2.0]
    key = NcCache(candidates=CANDIDATES).key(make_plan(routing(), MODEL, PAR, HW, POLICY), routing())
    assert "M~256" in key and "load~1.00" in key and "nc_layer" not in key
    # a calibrated profile under the same name is another bucket
    other = NcCache(candidates=CANDIDATES).key(make_plan(routing(), MODEL, PAR, HW.replace(link_gbps=100.0), POLICY),
                                               routing())
    assert other != key and other.split("|hw=")[1][:5] == "h800:"


def test_json_cache_round_trips(tmp_path, sim_count, monkeypatch):
    path = tmp_path / "nc.json"
    tuned = auto(routing(), NcCache(path, candidates=CANDIDATES))
    data = json.loads(path.read_text())
    assert data["version"] == nc_cache.FILE_VERSION and len(data["entries"]) == 1
    entry = next(iter(data["entries"].values()))
    assert (entry["nc_layer0"], entry["nc_layer1"]) == (tuned.policy.nc_layer0, tuned.policy.nc_layer1)
    assert entry["tuned_on"]["tokens"] == 256 and set(entry["layer1_us"]) == {str(c) for c in CANDIDATES}
    n = len(sim_count)
    reloaded = NcCache(path, candidates=CANDIDATES)  # a new process: starts warm
    assert auto(routing(), reloaded).policy == tuned.policy and len(sim_count) == n and reloaded.hits == 1
    # through the environment variable and the process-wide cache
    monkeypatch.setenv(nc_cache.CACHE_ENV, str(tmp_path / "env.json"))
    monkeypatch.setattr(nc_cache, "_SHARED", {})
    monkeypatch.setattr(sweep, "NC_CANDIDATES", CANDIDATES)
    auto_nc(make_plan(routing(), MODEL, PAR, HW, POLICY), routing())
    assert (tmp_path / "env.json").exists() and nc_cache.shared_cache().misses == 1


def test_broken_cache_file_says_what_to_do(tmp_path):
    path = tmp_path / "nc.json"
    path.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON.*delete it"):
        NcCache(path)
    path.write_text(json.dumps({"version": 99, "entries": {}}))
    with pytest.raises(ValueError, match="version 99"):
        NcCache(path)


def test_auto_is_deterministic():
    r = routing(300, "imbalanced", std=0.05)
    a = auto(r, NcCache(candidates=CANDIDATES))
    b = auto(r, NcCache(candidates=CANDIDATES))
    assert a.policy == b.policy


def test_auto_with_a_subset_of_ranks_tunes_on_the_whole_plan():
    r = routing()
    full = auto(r, NcCache(candidates=CANDIDATES))
    part = auto(r, NcCache(candidates=CANDIDATES), ranks=[1])
    assert [p.rank for p in part.ranks] == [1] and part.policy == full.policy


def test_fixed_nc_values():
    r = routing()
    assert make_plan(r, MODEL, PAR, HW, POLICY, nc=12).policy == POLICY.replace(nc_layer0=12, nc_layer1=12)
    p = make_plan(r, MODEL, PAR, HW, POLICY, nc=(3, 7)).policy
    assert (p.nc_layer0, p.nc_layer1) == (3, 7)
    assert make_plan(r, MODEL, PAR, HW, POLICY).policy == POLICY  # default: the Policy's n_c


@pytest.mark.parametrize("bad", ["fast", "AUTO", "auto", 0, 132, (1, 2, 3), (4,), True, 2.5, (4, "8"), [8, None]])
def test_bad_nc_values_say_what_is_accepted(bad):
    with pytest.raises(ValueError, match=r"nc must be None .*an int.*pair.*comet.tuning.auto_nc"):
        make_plan(routing(), MODEL, PAR, HW, POLICY, nc=bad)


def test_make_plan_only_plans():
    """The planner never simulates: n_c by simulation is comet.tuning's (the floor above sim/)."""
    import inspect

    assert "nc_cache" not in inspect.signature(make_plan).parameters


def test_experiment_quick_grid(tmp_path):
    from experiments import nc_auto

    out = tmp_path / "nc_auto.csv"
    nc_auto.main(["--quick", "--out", str(out), "--jobs", "1"])
    df = pd.read_csv(out)
    assert list(df.columns) == nc_auto.COLUMNS and len(df) == len(nc_auto.cases(True))
    assert df["cache_hit"].all()  # the warming batch falls in the evaluated shape's bucket
    assert df["auto_speedup"].to_numpy() == pytest.approx((df["default_us"] / df["auto_us"]).to_numpy(), rel=1e-5)
    assert set(df["auto_nc1"]) | set(df["exact_nc1"]) <= set(sweep.QUICK_NC_CANDIDATES)
    s = nc_auto.summarise(df)
    assert s["auto_beats_default"] + s["auto_ties_default"] + s["auto_loses_to_default"] == pytest.approx(1.0)
