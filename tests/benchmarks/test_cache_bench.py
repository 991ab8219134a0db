"""benchmarks/cache.py on a small file: every epoch reads every event, the cached epoch 2 with
the server stopped."""

from __future__ import annotations

import json

import pytest

from tests.benchmarks import load_script


@pytest.mark.xrootd
def test_small_run_reads_every_event_in_every_epoch(tmp_path, capsys):
    output = tmp_path / "cache.json"
    bench = load_script("cache")
    code = bench.main(
        ["--events", "20000", "--workers", "0", "--data-dir", str(tmp_path), "--out", str(output)]
    )
    assert code == 0
    results = json.loads(output.read_text())
    rows = {(r["case"], r["epoch"]): r for r in results["rows"]}
    assert set(rows) == {(c, e) for c in ("uncached", "cached", "local") for e in (1, 2)}
    assert all(r["events"] == 20000 and r["seconds"] > 0 for r in rows.values())
    assert rows["uncached", 1]["ratio_to_reference"] == 1.0
    assert results["cache_bytes"] == results["file_bytes"] > 0
    assert "cached         2" in capsys.readouterr().out
