"""benchmarks.fused_layers' command line on the CPU (the measurements themselves need a GPU:
tests/test_benchmarks_gpu.py)."""

import pytest

from benchmarks import fused_layers


def test_cases_take_an_optional_tp():
    assert fused_layers.parse_cases("mixtral-8x7b:4096:4,qwen3-30b-a3b:8192:2:2") == [
        ("mixtral-8x7b", 4096, 4, 1), ("qwen3-30b-a3b", 8192, 2, 2)]


@pytest.mark.parametrize("text, says", [("mixtral-8x7b:4096", "model:M:EP"), ("mixtral-8x7b:4096:0", "positive"),
                                        ("mixtral-8x7b:4k:4", "positive"), ("no-such-model:4096:4", "unknown model")])
def test_a_bad_case_says_what_is_wrong(text, says):
    with pytest.raises(SystemExit, match=says):
        fused_layers.parse_cases(text)


@pytest.mark.parametrize("argv, says", [(["--impls", "gemm_alone,fused_gluonn"], "unknown fused_gluonn"),
                                        (["--nc1", "4,x"], "comma list of ints"), (["--nc0", "0"], ">= 1")])
def test_bad_options_stop_before_any_gpu_work(argv, says, tmp_path):
    with pytest.raises(SystemExit, match=says):
        fused_layers.main(argv + ["--out", str(tmp_path)])
