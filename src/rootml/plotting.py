"""The one way rootml draws a PNG: an Agg figure (no pyplot state, no display needed), fonts a
reader can read at 640x480, fixed margins, a title over the axes and a grey context line (run,
sample) above it. Used by the run plots (rootml.train.plots) and the input histograms
(rootml.transforms.hist). Matplotlib is imported here only when a Canvas is made."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rootml._extras import require

FONTS = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 12, "legend.fontsize": 9}
# Margins that fit the labels of these plots: tight_layout would take a third of the time.
MARGINS = {"left": 0.13, "right": 0.97, "bottom": 0.12, "top": 0.87}


class Canvas:
    """One figure, cleared and redrawn for each plot (making a Figure costs as much as drawing
    one, which matters for a thousand branch histograms)."""

    def __init__(self) -> None:
        require("train", "plots (rootml.plotting)")
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        self.figure = Figure(figsize=(6.4, 4.8), dpi=100)
        FigureCanvasAgg(self.figure)

    def draw(
        self, path: Path, fill: Callable[[Any], None], title: str = "", context: str = ""
    ) -> Path:
        """Write `path` (its folder created): `fill(axes)` draws; `title` goes over the axes,
        left; `context` above it, small and grey."""
        from matplotlib import rc_context

        path.parent.mkdir(parents=True, exist_ok=True)
        with rc_context(FONTS):
            self.figure.clear()
            axes = self.figure.add_subplot()
            fill(axes)
            if title:
                axes.set_title(title, loc="left")
            axes.grid(alpha=0.3)
            if context:
                self.figure.suptitle(context, x=0.01, y=0.985, ha="left", fontsize=9, color="dimgrey")  # fmt: skip
            self.figure.subplots_adjust(**MARGINS)
            self.figure.savefig(path)
        return path


def file_name(name: str) -> str:
    """A branch or class name as a file name: characters other than letters, digits, '_', '.'
    and '-' become '_'."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)
