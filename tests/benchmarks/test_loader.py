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
            "reference,naive,loader-0,rss-1x,nope",
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
    assert set(cases) == {"reference", "naive", "loader-0", "rss-1x"}
    assert results["skipped"] == {"nope": "unknown case"}
    for name, case in cases.items():
        assert "error" not in case, (name, case)
        assert case["events"] == 20000, name
        assert case["events_per_s"] > 0 and case["rss_mb"] > 0
    assert cases["reference"]["ratio_to_reference"] == 1.0
    assert cases["naive"]["features"] == cases["loader-0"]["features"] == 131
    assert results["data"]["entries"] == 20000 and results["data"]["branches"] == 40
    assert "rootml DataLoader, 0 workers" in capsys.readouterr().out

    readme = "intro\n<!-- loader-results:begin -->\nold\n<!-- loader-results:end -->\nend\n"
    text = report.render(readme, output.parent)
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| rootml `DataLoader`, 0 workers | 20,000 |" in text


def test_bench_refuses_unknown_names(capsys):
    assert main(["bench", "nope"]) == 2
    assert "no benchmark ['nope']" in capsys.readouterr().err
