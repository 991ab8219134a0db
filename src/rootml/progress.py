"""Progress of long steps: a tqdm bar on a terminal, a log line every few seconds elsewhere.

Every step that can take more than a couple of seconds (fitting Specs, filling and drawing
histograms, training and validation epochs, prediction) reports through one `Progress`; callers
count whole chunks or batches, never single events. Where it shows:

- on a terminal (stderr is a TTY) or in a Jupyter kernel: a tqdm bar, drawn once the step has
  run for a second, gone when it ends;
- elsewhere (batch jobs, output piped to a file): a line on the ``rootml.progress`` logger at INFO
  every few seconds (5 s, growing to a tenth of the time so far, at most 60 s, so an hour-long
  step logs tens of lines, not hundreds) with what is done, the rate (entries/s) and the ETA,
  and a last line when the step ends, if it logged any;
- ``ROOTML_PROGRESS=bar|log|off`` forces one of them; ``show=`` does the same per call.
- without tqdm (it comes with the `train` extra), log lines instead of bars.

The ``rootml`` command sets the ``rootml.progress`` logger to INFO; from Python,
``logging.basicConfig(level=logging.INFO)`` shows the lines. `say` writes a result line (an
epoch's metrics) the same way: above the bars on a terminal, on that logger elsewhere.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import threading
import time
from typing import Any

log = logging.getLogger(__name__)

MODES = ("bar", "log", "off")
EVERY_S = 5.0  # first log line after this, then at least this far apart
MAX_EVERY_S = 60.0
BAR_DELAY_S = 1.0  # a bar appears only for a step that lasts longer than this


def mode(show: bool | str | None = None) -> str:
    """The display: "bar", "log" or "off". `show` ("bar", "log", "off"; False is "off"; None or True: the
    ROOTML_PROGRESS environment variable, else "bar" on a terminal or in Jupyter, else "log").
    Always "off" on DDP ranks other than 0 (RANK set by torchrun)."""
    if isinstance(show, str) and show not in MODES:
        raise ValueError(f"progress must be one of {MODES}, not {show!r}")
    if show is False or int(os.environ.get("RANK", "0") or 0) != 0:
        return "off"  # under torchrun rank 0 speaks for all
    if isinstance(show, str):
        choice = show
    else:
        forced = os.environ.get("ROOTML_PROGRESS", "").strip().lower()
        interactive = sys.stderr is not None and sys.stderr.isatty()
        choice = (
            forced
            if forced in MODES
            else "bar"
            if interactive or "ipykernel" in sys.modules
            else "log"
        )
    # tqdm comes with the train extra: without it, log lines.
    return "log" if choice == "bar" and importlib.util.find_spec("tqdm") is None else choice


class Progress:
    """Work done towards `total` (None: unknown) in `unit`s, shown as `mode(show)` says.

    Use as a context manager or call close(); update(n) is thread-safe and cheap (call it per
    chunk or batch). `every`: seconds before the first log line (default EVERY_S)."""

    def __init__(
        self,
        desc: str,
        total: int | None = None,
        unit: str = "entries",
        *,
        show: bool | str | None = None,
        every: float | None = None,
    ):
        self.desc, self.total, self.unit = desc, total, unit
        self.mode = mode(show)
        self.every = EVERY_S if every is None else float(every)
        self.n, self.lines = 0, 0
        self._lock = threading.Lock()
        self._start = self._last = time.monotonic()
        self._bar = None
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit=unit, unit_scale=total is None or total >= 10_000,
                leave=False, delay=BAR_DELAY_S,
                file=sys.stderr, dynamic_ncols=True,
            )  # fmt: skip

    def update(self, n: int) -> None:
        with self._lock:
            self.n += int(n)
            if self._bar is not None:
                self._bar.update(int(n))
            elif self.mode == "log":
                now = time.monotonic()
                elapsed = now - self._start
                if now - self._last >= min(max(self.every, elapsed / 10), MAX_EVERY_S):
                    self._last = now
                    self.lines += 1
                    log.info("%s", self.line(elapsed))

    def line(self, elapsed: float) -> str:
        """A log line: desc: 8,192/16,000 entries (51%) in 2.1 s, 3,901 entries/s, ETA 2 s."""
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if self.total is None:
            done, eta = f"{self.n:,} {self.unit}", "unknown (total not known)"
        else:
            percent = 100 * self.n / max(self.total, 1)
            done = f"{self.n:,}/{self.total:,} {self.unit} ({percent:.0f}%)"
            eta = duration(max(self.total - self.n, 0) / rate) if rate > 0 else "unknown"
        return f"{self.desc}: {done} in {duration(elapsed)}, {_rate(rate)} {self.unit}/s, ETA {eta}"

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
        elif self.lines:  # a step long enough to have logged says when it ended
            elapsed = time.monotonic() - self._start
            rate = self.n / elapsed if elapsed > 0 else 0.0
            log.info(
                "%s: done, %s %s in %s (%s %s/s)",
                self.desc, f"{self.n:,}", self.unit, duration(elapsed), _rate(rate), self.unit,
            )  # fmt: skip

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def say(text: str, show: bool | str | None = None) -> None:
    """A result line: written above the bars on a terminal, logged at INFO elsewhere."""
    if mode(show) == "bar":
        from tqdm import tqdm

        tqdm.write(text, file=sys.stderr)
    else:
        log.info("%s", text)


def duration(seconds: float) -> str:
    """42 s, 3 min 05 s, 1 h 02 min."""
    seconds = max(float(seconds), 0.0)
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min {int(seconds % 60):02d} s"
    return f"{int(seconds // 3600)} h {int(seconds % 3600 // 60):02d} min"


def _rate(rate: float) -> str:
    return f"{rate:.1f}" if rate < 10 else f"{rate:,.0f}"
