"""benchmarks/gpu.py on the CPU at tiny counts: both phases run rootml's training step on the
same batches' shape, and the ratio and table come out (the GPU figures need a GPU machine)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_both_phases_on_cpu(tmp_path):
    import uproot

    gpu = _module("gpu")
    out = tmp_path / "gpu.json"
    argv = ["--device", "cpu", "--events", "6000", "--steps", "5", "--warmup", "2"]
    argv += ["--resident", "3", "--workers", "0", "--batch-size", "256"]
    assert gpu.main([*argv, "--data", str(tmp_path), "--json", str(out)]) == 0
    results = json.loads(out.read_text())

    # Features: every flat branch but the excluded ones, each jagged field times its pad length.
    with uproot.open(sorted(tmp_path.glob("signal-*.root"))[0]) as f:
        tree = f[gpu.loader_bench.TREE]
        names = [n for n in tree.keys() if n not in gpu.loader_bench.EXCLUDED]
        jagged = {n for n in names if type(tree[n].interpretation).__name__ == "AsJagged"}
    max_len = gpu.loader_bench.MAX_LEN
    expected = sum(max_len[n.split("_")[0]] if n in jagged else 1 for n in names)
    assert results["settings"]["features"] == expected

    phases = results["phases"]
    assert set(phases) == {"resident", "loader"}
    for phase in phases.values():
        assert phase["steps"] == 5 and phase["events"] == 5 * 256
        assert phase["steps_per_s"] == pytest.approx(5 / phase["seconds"], rel=1e-3)
        assert phase["gpu_utilisation"] is None  # no GPU here
    ratio = phases["loader"]["steps_per_s"] / phases["resident"]["steps_per_s"]
    assert results["target"]["value"] == pytest.approx(ratio)
    assert "target loader / resident step rate" in gpu.format_table(results)


def test_rootml_bench_gpu_says_skipped_without_cuda(capsys):
    import torch

    from rootml.cli import main

    if torch.cuda.is_available():
        pytest.skip("with a GPU, `rootml bench gpu` runs the real benchmark")
    assert main(["bench", "gpu"]) == 0
    assert "skipped: no CUDA device on this machine" in capsys.readouterr().out
