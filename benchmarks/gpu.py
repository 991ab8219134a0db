"""GPU step rate: the seed's model trained on CUDA fed by the loader, next to the same training
fed by batches already in GPU memory (the loader's ceiling: nothing left to wait for).

Data: NanoAOD-like signal and background zlib TTrees (benchmarks/generate.py, made under
bench-data/gpu/ when missing), all feature branches as in the loader benchmark (identifiers and
generator-level branches left out), jagged collections padded to Jet 12, FatJet 4, Muon 4,
Electron 4 (131 features and a mask), Specs fitted on 100k entries, standard normalisation,
shuffled and class-mixed batches of 1024: the seed's settings.

Both phases run rootml's own training step (rootml.train.loop.Loop: non_blocking copies from
pinned memory, AMP with GradScaler on CUDA, Adam, weighted BCE) on examples/tth/model.py's MLP:

- resident: the first `--resident` batches copied to the GPU once, then `--steps` steps cycling
  over them (no loader, no host-to-device copy in the step);
- loader: `--steps` steps drawn from `DataLoader(RootIterableDataset(...), num_workers=W,
  pin_memory=True)`, the step unchanged.

Each phase warms up first (`--warmup` steps, CUDA kernels and loader workers started) and ends
with torch.cuda.synchronize(). GPU utilisation is sampled every 50 ms (NVML through
torch.cuda.utilization, or nvidia-smi) while a phase runs. The target: loader / resident step
rate >= 0.95.

Usage (on a machine with a GPU; ~2-3 min with 2M events):
    python benchmarks/gpu.py                          # benchmarks/results/gpu.json
    python benchmarks/gpu.py --workers 8 --steps 2000
    python benchmarks/gpu.py --device cpu --events 20000 --steps 10   # the script's own check
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
TARGET = 0.95


def _module(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _module("generate", HERE / "generate.py")
loader_bench = _module("loader", HERE / "loader.py")
seed_model = _module("tth_model", ROOT / "examples" / "tth" / "model.py")


def ensure_data(folder: Path, events: int) -> list[str]:
    """Background and signal files of events / 2 each under `folder`, generated when missing."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in ("background", "signal"):
        path = folder / f"{kind}-{events // 2}.root"
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            partial = path.with_suffix(".part")
            generate.write_file(partial, events // 2, kind=kind, seed=len(paths) + 1)
            partial.rename(path)
        paths.append(str(path))
    return paths


def make_dataset(paths: list[str], batch_size: int, seed: int = 0):
    from rootml import RootIterableDataset
    from rootml.datasets import fit_specs

    exclude = list(loader_bench.EXCLUDED)
    tree, max_len = loader_bench.TREE, loader_bench.MAX_LEN
    specs = fit_specs(paths, tree, exclude=exclude, nevts=100_000, max_len=max_len)
    return RootIterableDataset(
        paths,
        tree=tree,
        exclude=exclude,
        labels=[0, 1],
        batch_size=batch_size,
        shuffle=True,
        balance="class",
        seed=seed,
        specs=specs,
        normalize="standard",
    )


class _Utilisation:
    """GPU utilisation (%) sampled every 50 ms in a thread while the block runs; None on CPU or
    without NVML and nvidia-smi."""

    def __init__(self, device: torch.device):
        self.device, self.samples = device, []
        self._stop = threading.Event()
        self._read = self._reader()

    def _reader(self):
        if self.device.type != "cuda":
            return None
        with contextlib.suppress(Exception):
            torch.cuda.utilization(self.device)
            return lambda: torch.cuda.utilization(self.device)
        if shutil.which("nvidia-smi"):
            index = str(self.device.index or 0)
            query = ["nvidia-smi", "-i", index, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]  # fmt: skip
            return lambda: float(subprocess.run(query, capture_output=True, text=True).stdout)
        return None

    def __enter__(self):
        if self._read is not None:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.wait(0.05):
            with contextlib.suppress(Exception):
                self.samples.append(float(self._read()))

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, batches, steps: int, warmup: int, device: torch.device) -> dict:
    """`warmup` then `steps` calls of `step` on the next batch of `batches`: steps/s, events/s and
    the GPU utilisation over the timed steps."""
    for _ in range(warmup):
        step(next(batches))
    _sync(device)
    events = 0
    with _Utilisation(device) as usage:
        started = time.perf_counter()
        for _ in range(steps):
            batch = next(batches)
            step(batch)
            events += len(batch["label"])
        _sync(device)
        seconds = time.perf_counter() - started
    return {
        "steps": steps,
        "events": events,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "events_per_s": events / seconds,
        "gpu_utilisation": usage.mean,
    }


def _cycle(items: list):
    while True:
        yield from items


def _forever(loader):
    while True:
        yield from loader


def run_benchmark(
    events: int | None = None,
    steps: int | None = None,
    warmup: int = 50,
    resident: int = 200,
    workers: int | None = None,
    batch_size: int = 1024,
    device: str = "cuda",
    amp: bool = True,
    data: Path | None = None,
    quick: bool = False,
) -> dict:
    """Both phases on the same data, model and step; the results dict (see the docstring).
    `quick` (what `rootml bench` runs): 500k events and 300 steps unless given. Without a CUDA
    device, asked for one: {"skipped": why}."""
    from torch.utils.data import DataLoader

    from rootml.train.loop import Loop
    from rootml.train.objectives import Classification
    from rootml.transforms.collection import layout_parts

    if device.startswith("cuda") and not torch.cuda.is_available():
        return {"benchmark": "gpu", "skipped": "no CUDA device on this machine"}
    events = events or (500_000 if quick else 2_000_000)
    steps = steps or (300 if quick else 1000)
    device = torch.device(device)
    workers = min(8, _cores()) if workers is None else workers
    paths = ensure_data(data or ROOT / "bench-data" / "gpu", events)
    dataset = make_dataset(paths, batch_size)
    torch.manual_seed(0)
    model = seed_model.model(len(dataset.feature_names)).to(device)
    loop = Loop(model, None, 1e-3, device, 1, workers, amp, Classification())
    model.train()
    # What the training loop feeds the model: each part's array and mask.
    keys = [k for a, m, branches in layout_parts(dataset.layout) if branches for k in (a, m)]
    metrics = None

    def step(batch) -> None:
        nonlocal metrics
        _, metrics = loop._step(model, "flat", keys, batch, True, metrics)

    pinned = device.type == "cuda"
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, pin_memory=pinned)
    batches = _forever(loader)
    on_gpu = [
        {k: v.to(device) for k, v in next(batches).items() if isinstance(v, torch.Tensor)}
        for _ in range(resident)
    ]
    results = {
        "benchmark": "gpu",
        "machine": machine_info(device),
        "settings": {
            "events": events,
            "batch_size": batch_size,
            "features": len(dataset.feature_names),
            "workers": workers,
            "amp": amp and device.type == "cuda",
            "steps": steps,
            "warmup": warmup,
            "resident_batches": resident,
            "device": str(device),
        },
        "phases": {},
    }
    results["phases"]["resident"] = _timed(step, _cycle(on_gpu), steps, warmup, device)
    results["phases"]["loader"] = _timed(step, batches, steps, warmup, device)
    ratio = (
        results["phases"]["loader"]["steps_per_s"] / results["phases"]["resident"]["steps_per_s"]
    )
    results["target"] = {"value": ratio, "need": f">= {TARGET}", "met": ratio >= TARGET}
    return results


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info(device: torch.device) -> dict:
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return {
        "gpu": gpu,
        "cores": _cores(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "commit": commit or None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def format_table(results: dict) -> str:
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    s, m = results["settings"], results["machine"]
    lines = [
        f"{'phase':<10} {'steps':>6} {'steps/s':>9} {'events/s':>11} {'GPU util %':>10}",
        "-" * 50,
    ]
    for name, p in results["phases"].items():
        usage = "-" if p["gpu_utilisation"] is None else f"{p['gpu_utilisation']:.0f}"
        lines.append(
            f"{name:<10} {p['steps']:>6} {p['steps_per_s']:>9.1f} {p['events_per_s']:>11,.0f} "
            f"{usage:>10}"
        )
    t = results["target"]
    lines += [
        f"device {s['device']} ({m['gpu'] or 'no GPU'}), {s['workers']} loader workers, batch "
        f"{s['batch_size']}, {s['features']} features, AMP {s['amp']}",
        f"target loader / resident step rate {t['value']:.3f} {t['need']}  "
        f"{'met' if t['met'] else 'NOT met'}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, help="signal + background (default 2M)")
    parser.add_argument("--steps", type=int, help="timed steps per phase (default 1000)")
    parser.add_argument("--warmup", type=int, default=50, help="untimed steps before each phase")
    parser.add_argument("--resident", type=int, default=200, help="batches kept on the GPU")
    parser.add_argument("--workers", type=int, help="DataLoader workers (default: cores, <= 8)")
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--no-amp", action="store_true", help="float32 steps on CUDA")
    parser.add_argument("--data", type=Path, help="folder of the generated files")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args(argv)
    results = run_benchmark(
        args.events, args.steps, args.warmup, args.resident, args.workers, args.batch_size,
        args.device, not args.no_amp, args.data,
    )  # fmt: skip
    if "skipped" in results:
        print(f"{results['skipped']}: nothing to measure (--device cpu checks the script)")
        return 1
    output = args.json or HERE / "results" / "gpu.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
