"""benchmarks/serve_gpu.py without a GPU: it says so, and its own check (--device cpu, the "_gpu"
models on the CPU too) runs every part with sane figures. The GPU figures need a GPU machine."""

from __future__ import annotations

import json

import pytest

from rootml.export.execution import available_gpus
from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def bench():
    return load_script("serve_gpu")


def test_without_a_gpu_it_says_skipped(bench):
    if available_gpus() is not None:
        pytest.skip("this onnxruntime has CUDA: the benchmark runs for real")
    results = bench.run_benchmark()
    assert results == {
        "skipped": 'onnxruntime has no CUDAExecutionProvider (pip install "rootml[gpu]")'
    }
    assert bench.format_table(results).startswith("skipped: onnxruntime has no CUDA")


@pytest.mark.slow
def test_its_own_check_on_the_cpu(bench, tmp_path):
    out = tmp_path / "serve_gpu.json"
    argv = ["--device", "cpu", "--seconds", "0.1", "--rows", "300", "--batches", "1,16"]
    assert bench.main([*argv, "--batch", "16", "--clients", "2", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert results["ok"] is True
    for name in ("mlp", "heavy"):
        scores = results["scores"][name]
        # Same device, same session options: the same bits.
        assert scores["max_abs_difference"] == 0.0 and scores["rows"] == 300
        assert scores["gpu_devices"] == ["cpu"]
        assert scores["gpu_providers"] == ["CPUExecutionProvider"]
        for batch in (1, 16):
            gpu = results["inprocess"][f"{name}_gpu-b{batch}"]
            cpu = results["inprocess"][f"{name}_cpu-b{batch}"]
            ratio = results["inprocess"][f"{name}-b{batch}-ratio"]["gpu_over_cpu"]
            assert ratio == pytest.approx(gpu["rows_per_s"] / cpu["rows_per_s"])
            assert gpu["requests"] > 0 and cpu["rows_per_s"] > 0
        served = results["served"]
        for side in ("gpu", "cpu"):
            case = served[f"{name}_{side}"]
            assert case["errors"] == 0 and case["requests"] >= 2 and case["batch"] == 16
        assert served[f"{name}_gpu"]["parameters"]["execution_provider"] == "CPUExecutionProvider"
        assert served[f"{name}-ratio"]["gpu_over_cpu"] == pytest.approx(
            served[f"{name}_gpu"]["rows_per_s"] / served[f"{name}_cpu"]["rows_per_s"]
        )
    table = bench.format_table(results)
    assert "scores within 1e-05: yes" in table and "heavy b16" in table
