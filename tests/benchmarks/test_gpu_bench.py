"""benchmarks/gpu.py on the CPU at tiny counts: both phases run rootml's training step on the
same batches' shape, and the ratio and table come out (the GPU figures need a GPU machine)."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import load_script


@pytest.mark.slow
def test_both_phases_on_cpu(tmp_path):
    import uproot

    gpu = load_script("gpu")
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


def test_report_renders_gpu_results(tmp_path):
    report = load_script("report")
    readme = "a\n<!-- gpu-results:begin -->\nold\n<!-- gpu-results:end -->\n"
    assert "needs a machine with a GPU" in report.render(readme, tmp_path)
    results = {
        "machine": {"gpu": "G", "cores": 16, "platform": "P", "torch": "T", "cuda": "C",
                    "commit": "abc", "date": "D"},
        "settings": {"events": 1000, "batch_size": 10, "features": 131, "workers": 4, "amp": True,
                     "steps": 5, "warmup": 1, "resident_batches": 2},
        "phases": {"resident": {"steps_per_s": 100.0, "events_per_s": 1000.0,
                                "gpu_utilisation": 90.0},
                   "loader": {"steps_per_s": 96.0, "events_per_s": 960.0,
                              "gpu_utilisation": None}},
        "target": {"value": 0.96, "need": ">= 0.95", "met": True},
    }  # fmt: skip
    (tmp_path / "gpu.json").write_text(json.dumps(results))
    text = report.render(readme, tmp_path)
    assert "| resident | 100.0 | 1,000 | 90 |" in text and "| loader | 96.0 | 960 |  |" in text
    assert "0.960 (needed >= 0.95): yes" in text and "old" not in text
