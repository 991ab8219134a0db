"""Cache benchmark: epochs over root:// with and without rootml's local cache of remote files.

One NanoAOD-like zlib TTree (benchmarks/generate.py, under bench-data/ when missing) is served by
a real xrootd-server on 127.0.0.1 (tests/conftest.py's server) and read by
`DataLoader(RootIterableDataset(url, ...), batch_size=None, num_workers=W)` for two epochs:

- uncached: both epochs read the server (the reference: its first epoch);
- cached: `cache=<tmp folder>`: epoch 1 reads the server and copies the file, epoch 2 reads the
  copy; the server is stopped before epoch 2, so every byte of it comes from local disk;
- local: the file read from local disk directly (what the cache can reach at best).

Each epoch reports wall seconds, events/s, the ratio to the reference and the process CPU
seconds per event (parent and workers). On loopback the network costs little: the gain over a
real WAN link (latency, bandwidth) is larger than the one measured here.

Usage:
    python benchmarks/cache.py                   # 500k events, 2 workers, JSON in
                                                 # benchmarks/results/cache.json
    python benchmarks/cache.py --events 100000 --workers 0
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import loader  # noqa: E402  (this folder's loader benchmark: its data and its xrootd server)


def run_epochs(url: str, workers: int, cache: str | None, stop=None) -> list[dict]:
    """Two epochs of the loader; `stop` is called between them (to stop the server)."""
    import torch

    from rootml import RootIterableDataset

    started = time.perf_counter()
    ds = RootIterableDataset(
        url, tree=loader.TREE, exclude=list(loader.EXCLUDED), max_len=loader.MAX_LEN,
        batch_size=loader.BATCH_SIZE, chunk_size=loader.CHUNK_SIZE, cache=cache,
    )  # fmt: skip
    setup = time.perf_counter() - started
    epochs = []
    for number in (1, 2):
        if number == 2 and stop is not None:
            stop()
        cpu = _cpu()
        started = time.perf_counter()
        events = 0
        for batch in torch.utils.data.DataLoader(ds, batch_size=None, num_workers=workers):
            events += len(batch["entry"])
        seconds = time.perf_counter() - started
        epochs.append(
            {"epoch": number, "events": events, "seconds": seconds, "events_per_s": events / seconds,
             "cpu_s_per_event": (_cpu() - cpu) / max(events, 1), "setup_s": setup if number == 1 else 0.0}
        )  # fmt: skip
    return epochs


def _cpu() -> float:
    """CPU seconds of this process and its finished children (DataLoader workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--events", type=int, default=500_000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--data-dir", type=Path, default=loader.ROOT / "bench-data")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "cache.json")
    args = parser.parse_args(argv)
    path = loader.ensure_data(
        loader.ROOT / "bench-data" / f"signal-{args.events}.root", args.events
    )
    results: dict = {
        "events": args.events,
        "workers": args.workers,
        "file_bytes": path.stat().st_size,
    }
    rows = []
    folder = Path(tempfile.mkdtemp(prefix="rootml-bench-cache-"))
    try:
        for case in ("uncached", "cached"):
            server, reason = loader._start_xrootd(path)
            if server is None:
                print(f"skipped: {reason}", file=sys.stderr)
                return 1
            try:
                cache = str(folder / "cache") if case == "cached" else None
                stop = server.stop if case == "cached" else None
                rows += [
                    {"case": case, **e}
                    for e in run_epochs(server.url(path.name), args.workers, cache, stop)
                ]
            finally:
                server.stop()
                shutil.rmtree(Path(server.folder).parent, ignore_errors=True)
        rows += [{"case": "local", **e} for e in run_epochs(str(path), args.workers, None)]
        results["cache_bytes"] = sum(p.stat().st_size for p in (folder / "cache").glob("*.root"))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    reference = rows[0]["seconds"]
    for row in rows:
        row["ratio_to_reference"] = reference / row["seconds"]
    results.update(reference="uncached epoch 1", rows=rows, load=os.getloadavg()[0])
    print(
        f"{'case':<10} {'epoch':>5} {'seconds':>8} {'events/s':>10} {'x ref':>6} {'CPU us/event':>13}"
    )
    for row in rows:
        print(f"{row['case']:<10} {row['epoch']:>5} {row['seconds']:>8.2f} {row['events_per_s']:>10.0f} "
              f"{row['ratio_to_reference']:>6.2f} {row['cpu_s_per_event'] * 1e6:>13.1f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
