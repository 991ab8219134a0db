"""Real faults injected into Dask worker processes, each once, driven by marker files.

A worker plugin (installed in every worker, restarted ones too) wraps two calls inside the
worker process; dask itself is untouched, so its own retry and rescheduling machinery is what
the tests exercise:
- "<markers>/<input file name>.missing-once": opening that input raises FileNotFoundError, as
  the OS does for a file that is not there (yet) (rootml does not retry a missing file itself);
- "<markers>/<friend file name>.kill-once": the worker process dies (os._exit) right after
  writing the first basket of that friend tree, mid-task, leaving its partial file behind.
The worker that acts on a marker deletes it first, so the next attempt finds the file and runs.
"""

from __future__ import annotations

import os
from pathlib import Path

from distributed.diagnostics.plugin import WorkerPlugin


def _take(marker: Path) -> bool:
    try:
        marker.unlink()
    except FileNotFoundError:
        return False
    return True


class FaultsOnce(WorkerPlugin):
    name = "rootml-test-faults"

    def __init__(self, markers: Path):
        self.markers = Path(markers)

    def setup(self, worker) -> None:
        import uproot

        from rootml.predict import writers

        markers = self.markers
        if getattr(uproot.open, "_faults", False):
            return
        open_file, write = uproot.open, writers.FriendTrees.write

        def faulty_open(path, *args, **kwargs):
            if isinstance(path, (str, os.PathLike)):
                name = Path(str(path)).name
                if _take(markers / f"{name}.missing-once"):
                    raise FileNotFoundError(2, "No such file or directory", str(path))
            return open_file(path, *args, **kwargs)

        def faulty_write(self, file, start, scores):
            write(self, file, start, scores)
            name = self.paths[file].name.removesuffix(".part")
            if _take(markers / f"{name}.kill-once"):
                self._file.file.sink.flush()  # the first basket on disk, as a crash leaves it
                os._exit(1)

        faulty_open._faults = True
        self._originals = open_file, write
        uproot.open = faulty_open
        writers.FriendTrees.write = faulty_write

    def teardown(self, worker) -> None:
        import uproot

        from rootml.predict import writers

        if hasattr(self, "_originals"):
            uproot.open, writers.FriendTrees.write = self._originals
