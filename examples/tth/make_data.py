"""Write the ttH(bb) example's data: signal.root, background.root, files.txt and labels.txt.

The files come from benchmarks/generate.py (NanoAOD-like `Events` trees: boosted all-hadronic
ttH(bb)-like signal, multijet/tt+jets-like background). files.txt lists one file per line
(absolute paths) and labels.txt the label of each line in the same order (1 signal,
0 background), as MLaaS4HEP reads them. Then, from the repository root:

    python examples/tth/make_data.py examples/tth/data
    rootml train --files examples/tth/data/files.txt --labels examples/tth/data/labels.txt \
        --model examples/tth/model.py --params examples/tth/params.json
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

_GENERATE = Path(__file__).resolve().parents[2] / "benchmarks" / "generate.py"


def _load_generator():
    spec = importlib.util.spec_from_file_location("generate", _GENERATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def make_data(
    folder: str | os.PathLike,
    *,
    events: int = 10_000,
    seed: int = 42,
    fmt: str = "ttree",
    compression: str = "zlib",
) -> dict[str, Path]:
    """Write `events` signal and `events` background events into `folder` (created if needed).

    Returns the paths written: {"signal", "background", "files", "labels"}. Raises ValueError
    for arguments benchmarks/generate.py refuses (negative events or seed, unknown fmt or
    compression).
    """
    generate = _load_generator()
    folder = Path(folder).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for kind in ("signal", "background"):
        written[kind] = folder / f"{kind}.root"
        generate.write_file(
            written[kind], events, kind=kind, seed=seed, fmt=fmt, compression=compression
        )
    written["files"] = folder / "files.txt"
    written["labels"] = folder / "labels.txt"
    written["files"].write_text(f"{written['signal']}\n{written['background']}\n")
    written["labels"].write_text("1\n0\n")
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = Path(__file__).resolve().parent / "data"
    parser.add_argument("folder", nargs="?", type=Path, default=default, help=f"default {default}")
    parser.add_argument("--events", type=int, default=10_000, help="events per file")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--format", dest="fmt", choices=("ttree", "rntuple"), default="ttree")
    parser.add_argument("--compression", choices=("zlib", "lz4", "zstd", "none"), default="zlib")
    args = parser.parse_args(argv)
    try:
        written = make_data(
            args.folder,
            events=args.events,
            seed=args.seed,
            fmt=args.fmt,
            compression=args.compression,
        )
    except ValueError as err:
        print(f"make_data.py: error: {err}", file=sys.stderr)
        return 2
    for path in written.values():
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
