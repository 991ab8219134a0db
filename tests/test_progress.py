"""Progress: a tqdm bar on a terminal, periodic log lines with entries/s and ETA elsewhere,
counted per chunk (never per event), on the real Specs pass and on the unit itself."""

from __future__ import annotations

import io
import logging
import re

import pytest
import uproot

from rootml import progress
from rootml.datasets import fit_specs
from rootml.progress import Progress, duration, mode

from .conftest import HZZ

LINE = re.compile(
    r"(?P<desc>.+): (?P<n>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+) \((?P<pct>\d+)%\) in .+, "
    r"(?P<rate>[\d,.]+) (?P=unit)/s, ETA (?P<eta>\S.*)"
)


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_mode_is_a_bar_on_a_terminal_and_log_lines_elsewhere(monkeypatch):
    monkeypatch.delenv("ROOTML_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr("sys.stderr", Terminal())
    assert mode() == "bar" and mode(True) == "bar"
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert mode() == "log"
    assert mode(False) == "off" and mode("bar") == "bar"
    monkeypatch.setenv("ROOTML_PROGRESS", "off")
    assert mode() == "off"
    monkeypatch.setenv("ROOTML_PROGRESS", "")
    monkeypatch.setenv("RANK", "1")  # torchrun: rank 0 speaks for all
    assert mode() == "off" and mode("bar") == "off"
    with pytest.raises(ValueError, match="progress must be one of"):
        mode("loud")


def test_bar_on_a_terminal_counts_and_is_drawn(monkeypatch):
    monkeypatch.delenv("ROOTML_PROGRESS", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    monkeypatch.setattr(progress, "BAR_DELAY_S", 0.0)
    with Progress("reading", 3000, "entries") as bar:
        for _ in range(3):
            bar.update(1000)
        assert bar.mode == "bar" and bar.n == 3000
    drawn = terminal.getvalue()
    assert drawn.startswith("\rreading:") and "/3000" in drawn and "entries/s" in drawn


def test_off_a_terminal_the_specs_pass_logs_rate_and_eta(monkeypatch, caplog):
    """fit_specs over a real file in 10 units: one line per unit (every=0), each with the
    entries read so far of the total, entries/s and an ETA; the closing line has the total."""
    monkeypatch.setenv("ROOTML_PROGRESS", "log")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setattr(progress, "EVERY_S", 0.0)
    monkeypatch.setattr(progress, "MAX_EVERY_S", 0.0)  # a line at every update
    calls = []
    update = Progress.update
    monkeypatch.setattr(Progress, "update", lambda self, n: (calls.append(n), update(self, n)))
    entries = uproot.open(HZZ)["events"].num_entries
    with caplog.at_level(logging.INFO, logger="rootml.progress"):
        fit_specs([str(HZZ)], branches=["MET_px", "Jet_Px"], chunk_size=250)
    lines = [r.getMessage() for r in caplog.records if r.name == "rootml.progress"]
    periodic = [LINE.fullmatch(line) for line in lines[:-1]]
    assert periodic and all(periodic), lines
    counts = [int(m["n"].replace(",", "")) for m in periodic]
    assert counts == sorted(counts) and counts[-1] == entries
    assert {m["total"] for m in periodic} == {f"{entries:,}"}
    assert all(m["unit"] == "entries" and float(m["rate"].replace(",", "")) > 0 for m in periodic)
    assert periodic[-1]["pct"] == "100" and periodic[-1]["eta"] == "0.0 s"
    assert lines[-1].startswith(f"fitting Specs: done, {entries:,} entries in ")
    # One update per work unit of 250 entries, never per event.
    assert len(calls) == -(-entries // 250) and sum(calls) == entries


def test_log_lines_are_spaced_and_say_when_the_total_is_unknown(monkeypatch, caplog):
    clock = iter([0.0, 1.0, 6.0, 7.0, 13.0, 14.0])
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    with caplog.at_level(logging.INFO, logger="rootml.progress"):
        bar = Progress("scoring", None, show="log")  # starts at t=0
        for _ in range(4):  # t = 1, 6, 7, 13: lines at 6 (>= 5 s) and 13 (>= 5 s after 6)
            bar.update(100)
        bar.close()  # t = 14
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "scoring: 200 entries in 6.0 s, 33 entries/s, ETA unknown (total not known)",
        "scoring: 400 entries in 13 s, 31 entries/s, ETA unknown (total not known)",
        "scoring: done, 400 entries in 14 s (29 entries/s)",
    ]


def test_durations_read_as_time():
    assert [duration(s) for s in (0.25, 42, 185, 3725)] == [
        "0.2 s",
        "42 s",
        "3 min 05 s",
        "1 h 02 min",
    ]
