"""The `rootml` command: one subcommand per job. Only this module parses command lines.

Each job adds its parser in an `_add_<job>` function that sets `func`; `main` runs it.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from rootml.errors import RootmlError


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="list trees/ntuples, entries and branches of ROOT files")
    p.add_argument("files", nargs="+", help="paths or URLs (root://, https://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from rootml.datasets.inspect import format_report, inspect_file

    reports = [inspect_file(f) for f in args.files]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    return 0


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="add a model to a model repository (Triton layout)")
    p.add_argument("source", nargs="?", help="training run folder or checkpoint to export")
    p.add_argument("--onnx", help="add this single-file ONNX model (any framework) instead")
    p.add_argument("--name", required=True, help="model name: letters, digits, '_', '.', '-'")
    p.add_argument("--repo", default="models", help="model repository folder (default: models)")
    p.add_argument("--metadata", help="JSON file stored as the model's rootml.json (with --onnx)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=1024,
        help="config.pbtxt max_batch_size when the first dim is variable; 0: no batching",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    from rootml.errors import ModelError

    if args.onnx is None:
        if args.source is None:
            raise ModelError("give a training run/checkpoint to export, or --onnx FILE")
        raise ModelError("exporting a training run is not available yet; use --onnx FILE")
    from rootml.export.repository import add_onnx_model, model_dir

    metadata = None
    if args.metadata is not None:
        with open(args.metadata) as f:
            metadata = json.load(f)
    version = add_onnx_model(
        args.repo, args.name, args.onnx, metadata, max_batch_size=args.max_batch_size
    )
    print(f"{model_dir(args.repo, args.name) / str(version) / 'model.onnx'}")
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a model repository over KServe V2 (HTTP)")
    p.add_argument("--repo", default="models", help="model repository folder (default: models)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    p.add_argument(
        "--token-file",
        help="file holding the bearer token that load/unload/upload need; without it they are off",
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: 1)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=64 << 20,
        help="largest request body, also after decompression (default: 64 MiB)",
    )
    p.add_argument(
        "--max-upload-bytes",
        type=int,
        default=256 << 20,
        help="largest model upload, also unpacked (default: 256 MiB)",
    )
    p.add_argument("--timeout", type=float, default=30.0, help="per-request deadline in s")
    p.add_argument("--max-queue", type=int, default=1024, help="requests waiting before 503")
    p.add_argument(
        "--threads-per-run",
        type=int,
        default=1,
        help="onnxruntime intra-op threads per run; runs in flight = cores / this",
    )
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    from rootml.serve.app import ServeSettings, run_server

    token = None
    if args.token_file is not None:
        with open(args.token_file) as f:
            token = f.read().strip()
        if not token:
            raise RootmlError(f"token file {args.token_file} is empty")
    settings = ServeSettings(
        repo=args.repo,
        token=token,
        max_body_bytes=args.max_body_bytes,
        max_upload_bytes=args.max_upload_bytes,
        request_timeout_s=args.timeout,
        max_queue=args.max_queue,
        workers=args.workers,
        threads_per_run=args.threads_per_run,
    )
    control = "on" if token else "off (no --token-file)"
    print(
        f"rootml serve: {args.repo} on http://{args.host}:{args.port}, model control {control}",
        file=sys.stderr,
    )
    run_server(settings, host=args.host, port=args.port)
    return 0


_JOBS = [_add_inspect, _add_export, _add_serve]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="rootml", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _JOBS:
        add(sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.func(args) or 0)
    except RootmlError as err:
        print(f"rootml {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
