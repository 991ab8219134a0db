"""Serving on a GPU: the same models on onnxruntime's CUDA execution provider and on the CPU,
scores compared and throughput measured in the same run.

Models: serve.py's mlp (100 -> 128 -> 64 -> 1) and heavy (100 -> 2048 x 4 -> 1), each written
into one repository twice: `<name>_gpu` with config.pbtxt `instance_group [{ kind: KIND_GPU,
gpus: [--gpu], count: --instances }]` and `<name>_cpu` with `KIND_CPU`, so rootml's own
placement (rootml.export.execution) puts them where they run.

- scores: both versions loaded by rootml's loader (the server's code) score the same `--rows`
  random rows; the largest |CUDA - CPU| per model must be <= 1e-5 (TF32 is off in rootml's CUDA
  sessions). The `_gpu` version must really run on CUDAExecutionProvider.
- inprocess: `session.run` in a loop for `--seconds` per batch size (`--batches`, default 1, 64,
  1024 and 16384 rows):
  rows/s on the GPU and on the CPU (one intra-op thread per run, as the server), and the ratio.
  (A 16384-row batch of the heavy model takes ~30 s on one CPU core: every case runs at least
  twice, a warm-up and one timed run.)
- served: one `rootml serve` with every model; binary infer of --batch rows from --clients
  connections (serve.py's asyncio client) for `--seconds` per model: rows/s of each and the
  ratio. Every answer is first checked against the CPU scores (1e-5).

The ratio gpu / cpu of served rows/s for the heavy model is the figure to look at: one GPU
against the whole CPU of this server (its run slots, `cores / --threads-per-run`).

Without a GPU (onnxruntime without CUDAExecutionProvider, or no device it can use) the results
are {"skipped": why}. `--device cpu` places the `_gpu` models on the CPU too: the script's own
check on any machine (what tests/benchmarks/test_serve_gpu_bench.py runs), ratios near 1.

Usage (on a machine with a GPU, after `pip uninstall onnxruntime; pip install "rootml[gpu]"`):
    python benchmarks/serve_gpu.py                    # results/serve_gpu.json (~2 min)
    python benchmarks/serve_gpu.py --gpu 1 --instances 2 --seconds 10
    python benchmarks/serve_gpu.py --device cpu --seconds 0.2 --rows 256 --batches 1,64 \
        --batch 64 --clients 2                        # the script's own check, ~30 s
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
TOLERANCE = 1e-5
BATCHES = (1, 64, 1024, 16384)


# serve.py's models, server process, load generator and checks (a script, not a package).
_spec = importlib.util.spec_from_file_location("bench_serve", HERE / "serve.py")
serve_bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serve_bench)


def make_repository(folder: Path, device: str, gpu: int, instances: int) -> dict[str, bytes]:
    """`<name>_gpu` (KIND_GPU on `gpu`, or KIND_CPU for device "cpu") and `<name>_cpu` of each
    model under `folder`; the ONNX bytes by model name."""
    from rootml.export.repository import add_onnx_model

    models = {name: serve_bench.mlp_onnx(widths) for name, widths in serve_bench.MODELS.items()}
    on_gpu = {"kind": "KIND_GPU", "gpus": [gpu], "count": instances}
    if device == "cpu":
        on_gpu = {"kind": "KIND_CPU", "count": instances}
    for name, data in models.items():
        add_onnx_model(folder, f"{name}_gpu", data, config={"instance_group": [on_gpu]})
        add_onnx_model(folder, f"{name}_cpu", data, config={"instance_group": [{"kind": "KIND_CPU"}]})  # fmt: skip
    return models


def compare_scores(folder: Path, models: dict, device: str, rows: int) -> dict:
    """Per model: where each version runs and the largest |gpu - cpu| on `rows` random rows."""
    from rootml.export.repository import load_model

    x = np.random.default_rng(7).standard_normal((rows, serve_bench.FEATURES), dtype=np.float32)
    out = {}
    for name in models:
        gpu, cpu = load_model(folder, f"{name}_gpu"), load_model(folder, f"{name}_cpu")
        if device != "cpu" and gpu.devices[0] == "cpu":
            raise RuntimeError(f"{name}_gpu fell back to the CPU: no usable GPU")
        a = gpu.session.run(["score"], {"features": x})[0]
        b = cpu.session.run(["score"], {"features": x})[0]
        difference = float(np.abs(a - b).max())
        out[name] = {
            "gpu_devices": gpu.devices,
            "gpu_providers": gpu.session.get_providers(),
            "rows": rows,
            "max_abs_difference": difference,
            "ok": difference <= TOLERANCE,
        }
    return out


def inprocess(folder: Path, models: dict, seconds: float, batches=BATCHES) -> dict:
    """rows/s of session.run per batch size, each model on each device, and the ratios."""
    from rootml.export.repository import load_model

    out = {}
    for name in models:
        for side in ("gpu", "cpu"):
            session = load_model(folder, f"{name}_{side}").session
            for batch in batches:
                case = serve_bench.run_inprocess(session, batch, seconds)
                out[f"{name}_{side}-b{batch}"] = case | {"batch": batch}
        for batch in batches:
            gpu, cpu = out[f"{name}_gpu-b{batch}"], out[f"{name}_cpu-b{batch}"]
            out[f"{name}-b{batch}-ratio"] = {"gpu_over_cpu": gpu["rows_per_s"] / cpu["rows_per_s"]}
    return out


def served(folder: Path, models: dict, seconds: float, batch: int, clients: int,
           device: str) -> dict:  # fmt: skip
    """One rootml serve: each model's _gpu and _cpu under the same load; answers checked."""
    from rootml.protocol import encode_infer_request

    port = serve_bench._free_port()
    log = folder.parent / "serve.log"
    command = [sys.executable, "-m", "rootml", "serve", "--repo", str(folder),
               "--port", str(port), "--device", device]  # fmt: skip
    server = serve_bench.Server(command, log, port)
    out: dict = {}
    try:
        server.wait_ready(timeout=300)
        x = serve_bench._inputs(batch)
        body, header = encode_infer_request({"features": x}, binary=True)
        for name, data in models.items():
            expected = serve_bench._session(data).run(["score"], {"features": x})[0]
            for side in ("gpu", "cpu"):
                path = f"/v2/models/{name}_{side}/infer"
                serve_bench._check(server.url + path, body, header, expected)
                case = serve_bench.run_python_client(
                    port, path, body, header, clients, seconds, batch
                )
                out[f"{name}_{side}"] = case | {"batch": batch, "clients": clients}
            ratio = out[f"{name}_gpu"]["rows_per_s"] / out[f"{name}_cpu"]["rows_per_s"]
            out[f"{name}-ratio"] = {"gpu_over_cpu": ratio}
        import httpx

        for name in models:
            parameters = httpx.get(f"{server.url}/v2/models/{name}_gpu").json()["parameters"]
            out[f"{name}_gpu"]["parameters"] = parameters
    finally:
        server.stop()
    return out


def unavailable(device: str) -> str | None:
    """Why there is no GPU to measure (None: go on)."""
    if device == "cpu":
        return None
    from rootml.export.execution import available_gpus

    if available_gpus() is None:
        return 'onnxruntime has no CUDAExecutionProvider (pip install "rootml[gpu]")'
    return None


def run_benchmark(
    device: str = "cuda",
    gpu: int = 0,
    instances: int = 1,
    seconds: float = 3.0,
    rows: int = 100_000,
    batch: int = 1024,
    clients: int = 16,
    batches: tuple[int, ...] = BATCHES,
    quick: bool = False,
) -> dict:
    """Every part above; {"skipped": why} without a GPU (unless device is "cpu")."""
    why = unavailable(device)
    if why is not None:
        return {"skipped": why}
    if quick:  # what `rootml bench` runs
        seconds, rows = min(seconds, 1.0), min(rows, 10_000)
        batches = tuple(b for b in batches if b <= 1024)
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="rootml-serve-gpu-") as tmp:
        folder = Path(tmp) / "models"
        models = make_repository(folder, device, gpu, instances)
        try:
            scores = compare_scores(folder, models, device, rows)
        except RuntimeError as err:
            return {"skipped": str(err)}
        results = {
            "machine": serve_bench.machine_info() | {"gpu": _gpu_name(gpu, device)},
            "settings": {
                "device": device,
                "gpu": gpu,
                "instances": instances,
                "rows": rows,
                "seconds": seconds,
                "batches": list(batches),
                "batch": batch,
                "clients": clients,
            },
            "scores": scores,
            "inprocess": inprocess(folder, models, seconds, batches),
            "served": served(folder, models, seconds, batch, clients, device),
        }
    results["ok"] = all(s["ok"] for s in scores.values())
    return results


def _gpu_name(gpu: int, device: str) -> str | None:
    if device == "cpu":
        return None
    import subprocess

    try:
        done = subprocess.run(
            ["nvidia-smi", f"--id={gpu}", "--query-gpu=name", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        return done.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def format_table(results: dict) -> str:
    if "skipped" in results:
        return f"skipped: {results['skipped']}"
    lines = [f"{'model':<7} {'max |gpu - cpu|':>16} {'ok':>4}  gpu devices"]
    for name, s in results["scores"].items():
        ok = "yes" if s["ok"] else "NO"
        lines.append(f"{name:<7} {s['max_abs_difference']:>16.3g} {ok:>4}  {s['gpu_devices']}")
    lines += ["", f"{'in-process':<20} {'gpu rows/s':>12} {'cpu rows/s':>12} {'gpu/cpu':>8}"]
    cases = results["inprocess"]
    for key in [k for k in cases if k.endswith("-ratio")]:
        name, batch = key.split("-")[:2]
        gpu, cpu = cases[f"{name}_gpu-{batch}"], cases[f"{name}_cpu-{batch}"]
        lines.append(
            f"{name + ' ' + batch:<20} {gpu['rows_per_s']:>12,.0f} {cpu['rows_per_s']:>12,.0f} "
            f"{cases[key]['gpu_over_cpu']:>8.2f}"
        )
    s = results["settings"]
    lines += ["", f"{'served b' + str(s['batch']) + ' c' + str(s['clients']):<20} "
              f"{'gpu rows/s':>12} {'cpu rows/s':>12} {'gpu/cpu':>8}"]  # fmt: skip
    cases = results["served"]
    for key in [k for k in cases if k.endswith("-ratio")]:
        name = key.split("-")[0]
        gpu, cpu = cases[f"{name}_gpu"], cases[f"{name}_cpu"]
        lines.append(
            f"{name:<20} {gpu['rows_per_s']:>12,.0f} {cpu['rows_per_s']:>12,.0f} "
            f"{cases[key]['gpu_over_cpu']:>8.2f}"
        )
    lines.append(f"\nscores within {TOLERANCE:g}: {'yes' if results['ok'] else 'NO'}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device",
        choices=("cuda", "cpu"),
        default="cuda",
        help="where the _gpu models run (cpu: the script's own check)",
    )
    parser.add_argument("--gpu", type=int, default=0, help="GPU id (default 0)")
    parser.add_argument("--instances", type=int, default=1, help="sessions on the GPU (count)")
    parser.add_argument("--seconds", type=float, default=3.0, help="seconds per case")
    parser.add_argument("--rows", type=int, default=100_000, help="rows whose scores are compared")
    parser.add_argument(
        "--batches",
        default=",".join(map(str, BATCHES)),
        help="in-process batch sizes, comma-separated",
    )
    parser.add_argument("--batch", type=int, default=1024, help="rows per served request")
    parser.add_argument("--clients", type=int, default=16, help="connections for served cases")
    parser.add_argument("--json", type=Path, help="where to write the results")
    args = parser.parse_args(argv)  # fmt: skip
    batches = tuple(int(b) for b in args.batches.split(","))
    results = run_benchmark(
        args.device, args.gpu, args.instances, args.seconds, args.rows, args.batch, args.clients,
        batches,
    )  # fmt: skip
    output = args.json or HERE / "results" / "serve_gpu.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nresults: {output}")
    return 0 if results.get("ok", True) else 1


if __name__ == "__main__":
    sys.exit(main())
