"""Regenerate the result sections of benchmarks/README.md from the JSON files in benchmarks/results/.

Each generated section sits between `<!-- NAME:begin -->` and `<!-- NAME:end -->` markers in the
README; everything outside the markers is written by hand and kept as it is. Sections:

- `loader-results`: benchmarks/results/loader.json (python benchmarks/loader.py), the machine it
  ran on, its table, targets and skipped cases;
- `loader-baseline`: benchmarks/results/loader-baseline.json (the same benchmark before the
  loader was optimised) next to loader.json, case by case;
- `serve-results`: benchmarks/results/serve.json (python benchmarks/serve.py), the machine, every
  case, the targets and the profiles of the target cases;
- `serve-baseline`: benchmarks/results/serve-baseline.json (the server code before it was
  optimised, run by the same script) next to serve.json;
- `gpu-results`: benchmarks/results/gpu.json (python benchmarks/gpu.py, on a GPU machine).

Another benchmark adds its own section: a function taking the results folder and returning
markdown, registered in SECTIONS.

Usage:
    python benchmarks/report.py [--results benchmarks/results] [--readme benchmarks/README.md]
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent

_LABELS = {
    "reference": "uproot `iterate` (reference)",
    "reference-again": "uproot `iterate` (reference, again at the end)",
    "reference-threads": "uproot `iterate`, 2-thread decompression executor",
    "naive": "uproot `iterate` + `ak.pad_none`/`fill_none`/`to_numpy` per branch",
    "loader-0": "rootml `DataLoader`, 0 workers",
    "loader-1": "rootml `DataLoader`, 1 worker",
    "loader-2": "rootml `DataLoader`, 2 workers",
    "loader-2-shuffle": "rootml `DataLoader`, 2 workers, `shuffle=True`",
    "weaver-0": "weaver-core `SimpleIterDataset`, 0 workers",
    "weaver-1": "weaver-core `SimpleIterDataset`, 1 worker",
    "weaver-2": "weaver-core `SimpleIterDataset`, 2 workers",
    "flat-reference": "uproot `iterate`, 23 flat branches (reference of the next)",
    "flat-loader-0": "rootml `DataLoader`, 0 workers, 23 flat branches",
    "rntuple-reference": "uproot `iterate`, RNTuple (reference of the next)",
    "rntuple-loader-0": "rootml `DataLoader`, 0 workers, RNTuple",
    "rdl-flat": "ROOT `RDataLoader`, 23 flat branches",
    "rdl-jagged": "ROOT `RDataLoader`, all 40, jagged padded (`max_vec_sizes`)",
    "xrootd-reference": "uproot `iterate`, `root://127.0.0.1`",
    "xrootd-loader-0": "rootml, 0 workers, `root://127.0.0.1`",
    "xrootd-loader-1": "rootml, 1 worker, `root://127.0.0.1`",
    "xrootd-loader-2": "rootml, 2 workers, `root://127.0.0.1`",
    "rss-1x": "rootml, 2 workers, 1x the data (peak RSS)",
    "rss-4x": "rootml, 2 workers, 4x the data (peak RSS)",
}


def _load(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def _rate(case: dict) -> str:
    return f"{case['events_per_s']:,.0f}" if "events_per_s" in case else "—"


def _cpu(case: dict) -> str:
    return f"{case['cpu_per_m']:.2f}" if "cpu_per_m" in case else "—"


def _rss(case: dict) -> str:
    if "rss_mb" not in case:
        return "—"
    worker = case.get("worker_rss_mb")
    return f"{case['rss_mb']:.0f}" + (f" / {worker:.0f}" if worker else "")


def _machine(results: dict) -> str:
    m = results["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    data = results["data"]
    settings = results["settings"]
    return "\n".join(
        [
            f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}",
            f"- Versions: {versions}; rootml commit {m.get('commit')}",
            f"- Run: {m['date']}, mode {results['mode']}, {settings.get('repeat', 1)} rounds of "
            "the throughput cases, each case once per round in turn, best run kept (highest "
            "events/s, lowest CPU per event; every run in the JSON; naive, weaver, ROOT and RSS "
            "cases run once); load: the 1-minute load average before the case",
            f"- Data: {data['entries']:,} events, zlib TTree, {data['file_bytes'] / 1e6:.0f} MB "
            f"file (and the same events as an RNTuple for its cases); "
            f"{data['branches']} branches read ({data['jagged']} jagged), "
            f"{data['compressed_bytes'] / 1e6:.0f} MB compressed / "
            f"{data['uncompressed_bytes'] / 1e6:.0f} MB uncompressed",
            f"- Batches: {settings['batch_size']} rows, chunks of {settings['chunk_size']:,}, "
            f"flat layout, pad lengths {settings['max_len']}",
        ]
    )


def loader_results(folder: Path) -> str:
    results = _load(folder / "loader.json")
    if results is None:
        return "_No results yet: run `python benchmarks/loader.py`._"
    lines = [
        _machine(results),
        "",
        "| case | events | events/s | x ref | CPU s / 1M events | x ref | first batch s "
        "| peak RSS MB (main / worker) | load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, case in results["cases"].items():
        label = _LABELS.get(name, name)
        if "error" in case:
            lines.append(f"| {label} | error: {case['error']} | | | | | | | |")
            continue
        ratio = _num(case.get("ratio_to_reference"), ".2f")
        local = case.get("ratio_to_local")
        if local is not None:
            ratio += f" ({local:.2f} x local)"
        lines.append(
            f"| {label} | {case['events']:,} | {_rate(case)} | {ratio} | {_cpu(case)} "
            f"| {_num(case.get('cpu_ratio'), '.2f')} | {_num(case.get('first_batch_s'), '.2f')} "
            f"| {_rss(case)} | {case.get('load_before', 0):.2f} |"
        )
    if results.get("targets"):
        lines += ["", "| target | value | needed | met |", "|---|--:|--:|---|"]
        for name, target in results["targets"].items():
            met = "yes" if target["met"] else "**no**"
            lines.append(f"| {name} | {target['value']:.2f} | {target['need']} | {met} |")
    if results.get("skipped"):
        lines += ["", "Not run:", ""]
        lines += [f"- {_LABELS.get(n, n)}: {why}" for n, why in results["skipped"].items()]
    return "\n".join(lines)


def loader_baseline(folder: Path) -> str:
    before, after = _load(folder / "loader-baseline.json"), _load(folder / "loader.json")
    if before is None or after is None:
        return "_Needs benchmarks/results/loader-baseline.json and loader.json._"
    lines = [
        f"Baseline: rootml of commit {before['machine'].get('commit')} "
        f"({before['machine']['date']}); now: commit {after['machine'].get('commit')} "
        f"({after['machine']['date']}). Ratios are to the case's reference in the same run.",
        "",
        "| case | before CPU s / 1M | x ref | now CPU s / 1M | x ref | before events/s | x ref "
        "| now events/s | x ref | before RSS MB | now RSS MB |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, case in after["cases"].items():
        old = before["cases"].get(name)
        if old is None or "events_per_s" not in case or "events_per_s" not in old:
            continue
        lines.append(
            f"| {_LABELS.get(name, name)} | {_cpu(old)} | {_num(old.get('cpu_ratio'), '.2f')} "
            f"| {_cpu(case)} | {_num(case.get('cpu_ratio'), '.2f')} | {_rate(old)} "
            f"| {_num(old.get('ratio_to_reference'), '.2f')} | {_rate(case)} "
            f"| {_num(case.get('ratio_to_reference'), '.2f')} | {_rss(old)} | {_rss(case)} |"
        )
    return "\n".join(lines)


def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def serve_results(folder: Path) -> str:
    """benchmarks/results/serve.json (python benchmarks/serve.py): machine, cases, targets and
    the event loop profiles of the target cases."""
    results = _load(folder / "serve.json")
    if results is None:
        return "_No results yet: run `python benchmarks/serve.py`._"
    m, settings = results["machine"], results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v)
    load = " / ".join(f"{x:.2f}" for x in m["load_before"])
    lines = [
        f"- Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB RAM; {m['platform']}; "
        "server, load generator and benchmark share these cores",
        f"- Versions: {versions}; HTTP stack (uvicorn's auto): "
        f"{m.get('http_stack', 'not recorded')}; rootml commit {m.get('commit')}",
        f"- Run: {m['date']}, mode {results['mode']}, {settings['seconds']:g} s per case, best "
        f"of {settings['repeat']} runs (every run's req/s in the JSON), load generator "
        f"{settings['client']}; load average (1 / 5 / 15 min) before the run {load}",
    ]
    for name, model in results["models"].items():
        lines.append(
            f"- Model {name}: {' -> '.join(map(str, model['widths']))}, single-row run "
            f"{model['single_row_ms']:.3f} ms in-process (p50)"
        )
    lines += [
        "",
        "| case | requests | errors | req/s | rows/s | p50 ms | p99 ms | server CPU us/req "
        "| server cores | loop | generator cores | machine cores | server RSS MB | load |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for name, case in results["cases"].items():
        if "error" in case:
            lines.append(f"| {name} | error: {case['error']} |" + " |" * 12)
            continue
        lines.append(
            f"| {name} | {case['requests']:,} | {case['errors']} | {case['req_per_s']:,.0f} "
            f"| {case['rows_per_s']:,.0f} | {case['p50_ms']:.3f} | {case['p99_ms']:.3f} "
            f"| {_num(case.get('server_cpu_us_per_req'), '.0f')} "
            f"| {_num(case.get('server_cores'), '.2f')} | {_num(case.get('loop_busy'), '.2f')} "
            f"| {_num(case.get('client_cores'), '.2f')} | {_num(case.get('machine_cores'), '.2f')} "
            f"| {_num(case.get('server_rss_mb'), '.0f')} | {case.get('load_before', 0):.2f} |"
        )
    if results.get("memory"):
        shown = ", ".join(f"{name} {mb:.0f}" for name, mb in results["memory"].items())
        lines += [
            "",
            f"RSS once ready, before any request (MB, all of a server's processes): {shown}.",
        ]
    lines += [
        "",
        "Each target's value is the median of its paired rounds (its two cases run back to back, "
        "the order alternating), so that both sides of a ratio see the same minute of this shared "
        "machine; the ratio of the two cases' best runs in the table above is shown next to it.",
        "",
        "| target | cases | value | paired rounds | best runs | needed | errors | met |",
        "|---|---|--:|--:|--:|--:|--:|---|",
    ]
    for name, target in results["targets"].items():
        met = "yes" if target["met"] else "**no**"
        cases = " / ".join(f"`{c}`" for c in target.get("cases", []))
        rounds = ", ".join(f"{r:.2f}" for r in target.get("rounds", []))
        lines.append(
            f"| {name} | {cases} | {_num(target['value'], '.2f')} | {rounds} "
            f"| {_num(target.get('cases_ratio'), '.2f')} | {target['need']} "
            f"| {target.get('errors', '')} | {met} |"
        )
    profiles = {k: v for k, v in results.get("profiles", {}).items() if "loop_layers" in v}
    if profiles:
        lines += [
            "",
            "Profiles (py-spy, run again under the profiler): samples per thread, and where the "
            "event loop thread's samples were, by the layer of the innermost frame.",
            "",
            "| case | req/s (profiled) | loop busy | threads | event loop thread by layer |",
            "|---|--:|--:|---|---|",
        ]
        for name, p in profiles.items():
            threads = ", ".join(f"{t} {share:.0f}%" for t, share in p["threads"])
            layers = ", ".join(f"{t} {share:.0f}%" for t, share in p["loop_layers"] if share >= 2)
            lines.append(
                f"| {name} | {p['req_per_s']:,.0f} | {p['loop_busy']:.2f} | {threads} | {layers} |"
            )
    return "\n".join(lines)


def _serve_reference(results: dict, name: str) -> dict | None:
    """The case a serve case is compared with: binary b1024 -> in-process onnxruntime,
    heavy_batched -> heavy unbatched, rootml* -> the Starlette endpoint with as many worker
    processes; None for the rest."""
    cases = results["cases"]
    if re.match(r"rootml(_workers)?-binary-b1024-", name):
        return cases.get("inprocess-b1024")
    if name.startswith("heavy_batched-"):
        return cases.get(name.replace("heavy_batched-", "heavy-", 1))
    if name.startswith("rootml_workers-"):
        return cases.get(name.replace("rootml_workers-", "starlette_workers-", 1))
    if name.startswith("rootml"):
        return cases.get(re.sub(r"^rootml[^-]*-", "starlette-", name))
    return None


def serve_baseline(folder: Path) -> str:
    """benchmarks/results/serve-baseline.json (the server code before its optimisations, run by
    the same benchmark script) next to serve.json, case by case, each with its reference."""
    before, after = _load(folder / "serve-baseline.json"), _load(folder / "serve.json")
    if before is None or after is None:
        return "_Needs benchmarks/results/serve-baseline.json and serve.json._"
    lines = [
        f"Baseline: server code of commit {before['machine'].get('server_code')} "
        f"({before['machine']['date']}); now: commit {after['machine'].get('server_code')} "
        f'({after["machine"]["date"]}). "x ref" is the ratio to the reference of the same run: '
        "the Starlette endpoint with as many worker processes, in-process onnxruntime for binary "
        "batch 1024, the unbatched model for dynamic batching.",
        "",
        "| case | before req/s | x ref | before CPU us/req | before p99 ms | now req/s | x ref "
        "| now CPU us/req | now p99 ms |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]

    def ratio(results: dict, name: str, case: dict) -> str:
        other = _serve_reference(results, name)
        return _num(case["req_per_s"] / other["req_per_s"], ".2f") if other else ""

    for name, case in after["cases"].items():
        old = before["cases"].get(name)
        # One server process: the baseline is the default server before its optimisations.
        if not name.startswith(("rootml", "heavy")) or "inprocess" in name or "_workers" in name:
            continue
        if old is None or "req_per_s" not in old or "req_per_s" not in case:
            continue
        lines.append(
            f"| {name} | {old['req_per_s']:,.0f} | {ratio(before, name, old)} "
            f"| {old['server_cpu_us_per_req']:.0f} | {old['p99_ms']:.1f} | {case['req_per_s']:,.0f} "
            f"| {ratio(after, name, case)} | {case['server_cpu_us_per_req']:.0f} "
            f"| {case['p99_ms']:.1f} |"
        )
    return "\n".join(lines)


def gpu_results(folder: Path) -> str:
    """benchmarks/results/gpu.json (python benchmarks/gpu.py on a machine with a GPU)."""
    results = _load(folder / "gpu.json")
    if results is None:
        return "_Not measured yet: `python benchmarks/gpu.py` needs a machine with a GPU._"
    m, s, t = results["machine"], results["settings"], results["target"]
    lines = [
        f"- Machine: {m['gpu']}, {m['cores']} cores; {m['platform']}; torch {m['torch']}, CUDA "
        f"{m['cuda']}; rootml commit {m['commit']}; run {m['date']}",
        f"- Settings: {s['events']:,} events, batch {s['batch_size']}, {s['features']} features, "
        f"{s['workers']} loader workers, AMP {s['amp']}, {s['steps']} timed steps per phase after "
        f"{s['warmup']} warm-up steps, {s['resident_batches']} batches resident on the GPU",
        "",
        "| phase | steps/s | events/s | GPU utilisation % |",
        "|---|--:|--:|--:|",
    ]
    for name, p in results["phases"].items():
        lines.append(
            f"| {name} | {p['steps_per_s']:,.1f} | {p['events_per_s']:,.0f} "
            f"| {_num(p['gpu_utilisation'], '.0f')} |"
        )
    met = "yes" if t["met"] else "**no**"
    lines += ["", f"Loader / resident step rate: {t['value']:.3f} (needed {t['need']}): {met}"]
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[Path], str]] = {
    "loader-results": loader_results,
    "loader-baseline": loader_baseline,
    "serve-results": serve_results,
    "serve-baseline": serve_baseline,
    "gpu-results": gpu_results,
}


def render(readme: str, folder: Path) -> str:
    """`readme` with every known section between its markers replaced by fresh markdown."""
    for name, make in SECTIONS.items():
        pattern = re.compile(
            rf"(<!-- {re.escape(name)}:begin -->\n).*?(<!-- {re.escape(name)}:end -->)", re.S
        )
        if pattern.search(readme):
            text = make(folder)
            readme = pattern.sub(lambda m, text=text: m.group(1) + text + "\n" + m.group(2), readme)
    return readme


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=HERE / "results")
    parser.add_argument("--readme", type=Path, default=HERE / "README.md")
    args = parser.parse_args(argv)
    text = render(args.readme.read_text(), args.results)
    args.readme.write_text(text)
    print(f"wrote {args.readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
