"""The short benchmarks, one after the other, with their tables: what `rootml bench` runs.

A repository script, not part of the installed package: the benchmarks need the checkout
(examples/, tests/conftest.py's XRootD server, git for the commit, benchmarks/results/).

Usage:
    python benchmarks/run.py                    # every benchmark, quick
    python benchmarks/run.py loader serve --full --json results.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from rootml.errors import ConfigError

HERE = Path(__file__).resolve().parent
# name -> script here; each defines run_benchmark(quick=...) -> dict and format_table(results)
# -> str. Another benchmark adds itself here. gpu, serve_gpu: reported as skipped without a CUDA
# device.
BENCHMARKS = {
    "loader": "loader.py",
    "serve": "serve.py",
    "gpu": "gpu.py",
    "serve_gpu": "serve_gpu.py",
}


def run(names: list[str], full: bool = False, json_path: str | None = None) -> dict:
    """Run the benchmarks `names` (all when empty), print each table; returns the results (also
    written to `json_path`). Raises ConfigError for an unknown name."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ConfigError(f"no benchmark {unknown}; choose from {sorted(BENCHMARKS)}")
    results = {}
    for name in names or list(BENCHMARKS):
        spec = importlib.util.spec_from_file_location(
            f"rootml_bench_{name}", HERE / BENCHMARKS[name]
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        print(f"== {name} ({'full' if full else 'quick'}) ==", flush=True)
        results[name] = module.run_benchmark(quick=not full)
        print(module.format_table(results[name]), "\n", flush=True)
    if json_path:
        with open(json_path, "w") as f:
            json.dump(results, f, indent=2)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", metavar="NAME", help=f"of {', '.join(BENCHMARKS)}")
    parser.add_argument("--full", action="store_true", help="the full benchmarks (minutes)")
    parser.add_argument("--json", help="write the results of every benchmark to this JSON file")
    args = parser.parse_args(argv)
    run(args.names, args.full, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
