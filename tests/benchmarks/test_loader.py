"""benchmarks/loader.py and report.py on a small file; `rootml bench` refusals."""

from __future__ import annotations

import json

from rootml.cli import main
from tests.benchmarks import load_script


def test_small_run_counts_every_event_and_reports(tmp_path, capsys):
    loader, report = load_script("loader"), load_script("report")
    output = tmp_path / "results" / "loader.json"
    code = loader.main(
        [
            "--events",
            "20000",
            "--cases",
            "reference,naive,loader-0,rss-1x,flat-reference,flat-loader-0,rntuple-reference,"
            "rntuple-loader-0,rdl-flat,nope",
            "--data-dir",
            str(tmp_path),
            "--json",
            str(output),
            "--repeat",
            "1",
        ]
    )
    assert code == 0
    results = json.loads(output.read_text())
    cases = results["cases"]
    skipped = results["skipped"]
    assert skipped.pop("nope") == "unknown case"
    # ROOT's loader runs where its own venv is (benchmarks/README.md says how to make it).
    assert set(cases) | set(skipped) == {
        "reference", "naive", "loader-0", "rss-1x", "flat-reference", "flat-loader-0",
        "rntuple-reference", "rntuple-loader-0", "rdl-flat",
    }  # fmt: skip
    assert set(skipped) <= {"rdl-flat"}
    for name, case in cases.items():
        assert "error" not in case, (name, case)
        assert case["events"] == 20000, name
        assert case["events_per_s"] > 0 and case["rss_mb"] > 0
        # CPU of the case's processes per million events, and the time to its first batch.
        assert case["cpu_per_m"] == case["cpu_seconds"] / case["events"] * 1e6 > 0, name
        assert 0 < case["first_batch_s"] < case["seconds"] + case.get("setup_seconds", 0), name
        assert case["load_before"] >= 0 and len(case["runs"]) == 1, name
    for name in ("reference", "flat-reference", "rntuple-reference"):
        assert cases[name]["ratio_to_reference"] == cases[name]["cpu_ratio"] == 1.0
    assert cases["flat-loader-0"]["reference"] == "flat-reference"
    assert cases["rntuple-loader-0"]["reference"] == "rntuple-reference"
    assert cases["naive"]["features"] == cases["loader-0"]["features"] == 131
    assert (
        cases["flat-loader-0"]["features"]
        == 23
        == cases.get("rdl-flat", {"features": 23})["features"]
    )
    targets = results["targets"]
    assert targets["CPU/event, 0 workers / reference"]["value"] == cases["loader-0"]["cpu_ratio"]
    assert set(targets) >= {
        "CPU/event, flat branches / their reference",
        "CPU/event, RNTuple / its reference",
    }
    assert results["data"]["entries"] == 20000 and results["data"]["branches"] == 40
    assert "rootml DataLoader, 0 workers" in capsys.readouterr().out

    readme = "intro\n<!-- loader-results:begin -->\nold\n<!-- loader-results:end -->\nend\n"
    text = report.render(readme, output.parent)
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| rootml `DataLoader`, 0 workers | 20,000 |" in text
    assert "CPU s / 1M events" in text and "first batch s" in text
    assert "| CPU/event, 0 workers / reference |" in text


def test_bench_refuses_unknown_names(capsys):
    assert main(["bench", "nope"]) == 2
    assert "no benchmark ['nope']" in capsys.readouterr().err
