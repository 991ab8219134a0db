"""The `rootml` command: one subcommand per job. Only this module parses command lines.

Each job adds its parser in an `_add_<job>` function (through `_command`) that sets `func`;
`main` runs it and prints any RootmlError as one line. Nothing heavy is imported here: each
`_run_<job>` imports what its job needs, so `--help` and usage errors answer at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import traceback

from rootml import __version__, defaults
from rootml._extras import require
from rootml._userfiles import read_json, read_token_file
from rootml.errors import ConfigError, RootmlError, SchemaError

_DESCRIPTION = """\
Machine learning on ROOT files: look into them, train a PyTorch model on them, export it to
ONNX and serve it over the KServe V2 protocol, or score files with it.

a first session:
  rootml inspect data/ttH.root                  trees, entries, branches, types, sizes
  rootml train --files files.txt --labels labels.txt --model model.py \\
               --params params.json --out runs/tth
  rootml export runs/tth --name tth --repo models
  rootml serve --repo models --port 8000
  rootml predict --model models/tth --files data/*.root --out scores/

`rootml COMMAND --help` explains each command. A mistake ends in one line
"rootml COMMAND: error: ..." and exit status 2; -v also prints its traceback."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Every option's default in its help line (unless it has none or says it in words);
    descriptions and epilogs as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        quiet = action.default is None or action.default is False or action.default == []
        if quiet or isinstance(action, argparse._CountAction):
            return action.help or ""
        if "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _verbose(parser: argparse.ArgumentParser, default: object = argparse.SUPPRESS) -> None:
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=default,
        help="more logging (-vv: debug); errors with their traceback",
    )


def _command(
    sub: argparse._SubParsersAction,
    name: str,
    summary: str,
    description: str | None = None,
    epilog: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand parser: `summary` in `rootml --help`, -v accepted after the command too."""
    p = sub.add_parser(
        name,
        help=summary,
        description=description or summary[:1].upper() + summary[1:] + ".",
        epilog=epilog,
        formatter_class=_HelpFormatter,
    )
    _verbose(p)
    return p


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "inspect", "list trees/ntuples, entries and branches of ROOT, Parquet and HDF5 files"
    )
    p.add_argument("files", nargs="+", help="paths or URLs (root://, https://)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    g = p.add_argument_group("which tree and branches (listed, and histogrammed with --hist)")
    g.add_argument(
        "--tree", help="TTree/RNTuple name (default: every one; with --hist the only one)"
    )
    g.add_argument("--branches", nargs="+", help="branch names or glob patterns")
    g.add_argument("--exclude", nargs="+", help="branches to leave out (names or patterns)")
    g = p.add_argument_group("histograms (these options need --hist)")
    g.add_argument(
        "--hist",
        metavar="OUT",
        help="write a PNG per branch (classes overlaid) and the Specs of the same pass into OUT/",
    )
    g.add_argument("--labels", nargs="+", help="class of each file (ints or names), or a .txt")
    g.add_argument("--bins", type=int, help="bins per histogram (default: 50)")
    g.add_argument("--nevts", type=int, help="a random sample of about N entries (default: all)")
    g.add_argument("--log-y", action="store_true", help="logarithmic y axis (for tails)")
    p.set_defaults(func=_run_inspect)


def _run_inspect(args: argparse.Namespace) -> int:
    from rootml.datasets.contents import format_report, inspect_file

    if args.hist is None:
        given = ("labels", "bins", "nevts", "log_y")
        unused = [
            f"--{k.replace('_', '-')}" for k in given if getattr(args, k) not in (None, False)
        ]
        if unused:
            raise ConfigError(f"histogram options ({', '.join(unused)}) need --hist OUT")
    reports = [_select(inspect_file(f), args) for f in args.files]
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print("\n\n".join(format_report(r) for r in reports))
    if args.hist is not None:
        _run_hist(args)
    return 0


def _select(report: dict, args: argparse.Namespace) -> dict:
    """The inspect report of the trees and branches that --tree, --branches, --exclude name."""
    from rootml.datasets import match_names

    trees = report["trees"]
    if args.tree is not None:
        trees = [t for t in trees if t["name"] == args.tree]
        if not trees:
            found = sorted(t["name"] for t in report["trees"])
            raise SchemaError(
                f"no TTree or RNTuple named {args.tree!r}; found {found}", url=report["url"]
            )
    if (args.branches or args.exclude) and len(trees) > 1:
        found = sorted(t["name"] for t in trees)
        raise ConfigError(f"{report['url']} has several trees {found}: choose one with --tree")
    for tree in trees:
        names = [b["name"] for b in tree["branches"]]
        context = f"in file {report['url']}, tree {tree['name']!r}"
        keep = set(match_names(args.branches, names, context) if args.branches else names)
        keep -= set(match_names(args.exclude, names, context) if args.exclude else [])
        tree["branches"] = [b for b in tree["branches"] if b["name"] in keep]
    return {**report, "trees": trees}


def _run_hist(args: argparse.Namespace) -> None:
    require("train", "rootml inspect --hist")
    from rootml.datasets import fit_histograms

    labels, names = _labels(args.labels)
    specs, histograms = fit_histograms(
        args.files,
        args.tree,
        args.branches,
        exclude=args.exclude,
        nevts=args.nevts,
        labels=labels,
        class_names=names,
        **({"bins": args.bins} if args.bins is not None else {}),
    )
    written = histograms.plot(args.hist, log_y=args.log_y)
    specs.save(os.path.join(args.hist, "specs.json"))
    print(f"{len(written)} histograms and specs.json in {args.hist}")


def _add_specs(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "specs", "fit the Specs (statistics, pad lengths) of ROOT files")
    p.add_argument("files", nargs="+", help="paths, URLs, globs or .txt lists")
    p.add_argument("-o", "--output", required=True, help="JSON file to write")
    p.add_argument("--tree", help="TTree/RNTuple name (default: the only one)")
    p.add_argument("--branches", nargs="+", help="branch names or glob patterns")
    p.add_argument("--exclude", nargs="+", help="branches to leave out (names or patterns)")
    p.add_argument("--cut", help='uproot expression selecting entries, e.g. "NJet >= 2"')
    p.add_argument("--alias", action="append", metavar="NAME=EXPR", help="a derived column")
    p.add_argument("--nevts", type=int, help="a random sample of about N entries (default: all)")
    p.add_argument(
        "--max-len",
        nargs="+",
        help="pad length: N, a quantile like 0.99, or per collection/branch NAME=N ... "
        "(default: the largest multiplicity)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the --nevts sample")
    p.add_argument("--chunk-size", type=int, default=defaults.CHUNK_SIZE, help="entries per read")
    p.set_defaults(func=_run_specs)


def _run_specs(args: argparse.Namespace) -> int:
    from rootml.datasets import fit_specs

    if any("=" not in a for a in args.alias or []):
        raise ConfigError(f"--alias takes NAME=EXPR, not {args.alias}")
    aliases = dict(a.split("=", 1) for a in args.alias or [])
    specs = fit_specs(
        args.files,
        args.tree,
        args.branches,
        exclude=args.exclude,
        cut=args.cut,
        aliases=aliases or None,
        nevts=args.nevts,
        max_len=_max_len(args.max_len),
        seed=args.seed,
        chunk_size=args.chunk_size,
    )
    specs.save(args.output)
    print(
        f"{args.output}: {len(specs.branches)} branches, {len(specs.feature_names)} features, "
        f"{specs.entries} entries of {len(specs.fingerprint['files'])} files"
    )
    return 0


def _number(text: str) -> int | float:
    try:
        return float(text) if any(c in text for c in ".eE") else int(text)
    except ValueError:
        raise ConfigError(f"--max-len: {text!r} is not a number") from None


def _max_len(values: list[str] | None) -> int | float | dict | None:
    """["10"] -> 10, ["0.99"] -> 0.99, ["Jet=10", "Muon=0.95"] -> {"Jet": 10, "Muon": 0.95}."""
    if not values:
        return None
    if len(values) == 1 and "=" not in values[0]:
        return _number(values[0])
    pairs = [v.split("=", 1) for v in values]
    if any(len(pair) != 2 for pair in pairs):
        raise ConfigError(f"--max-len: give one value or NAME=VALUE pairs, not {values}")
    return {name: _number(value) for name, value in pairs}


def _labels(values: list[str] | None) -> tuple[list[int] | str | None, dict[int, str] | None]:
    """Per-file labels and class names: ints stay ints; names become 0, 1, ... in order of first
    appearance; one existing .txt file is passed on as it is."""
    if not values:
        return None, None
    if len(values) == 1 and (values[0].endswith(".txt") or os.path.isfile(values[0])):
        return values[0], None
    try:
        return [int(v) for v in values], None
    except ValueError:
        index = {name: i for i, name in enumerate(dict.fromkeys(values))}
        return [index[v] for v in values], {i: name for name, i in index.items()}


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "export", "add a model to a model repository (Triton layout)")
    p.add_argument("source", nargs="?", help="training run folder or checkpoint to export")
    p.add_argument("--onnx", help="add this single-file ONNX model (any framework) instead")
    p.add_argument("--name", required=True, help="model name: letters, digits, '_', '.', '-'")
    p.add_argument("--repo", default="models", help="model repository folder (default: models)")
    p.add_argument("--metadata", help="JSON file stored as the model's rootml.json (with --onnx)")
    p.add_argument(
        "--max-batch-size",
        type=int,
        default=defaults.MAX_BATCH_SIZE,
        help="config.pbtxt max_batch_size when the first dim is variable; 0: no batching",
    )
    g = p.add_argument_group("from a training run")
    g.add_argument(
        "--fold-normalization",
        action="store_true",
        help="put the normalisation into the graph: clients send raw physics values",
    )
    g.add_argument("--opset", type=int, default=defaults.ONNX_OPSET, help="ONNX opset")
    g.add_argument(
        "--tolerance",
        type=float,
        default=defaults.PARITY_TOLERANCE,
        help="largest |onnxruntime - torch| accepted by the parity check",
    )
    g.add_argument(
        "--parity-batches",
        type=int,
        default=defaults.PARITY_BATCHES,
        help=f"batches of {defaults.PARITY_BATCH_SIZE} rows checked",
    )
    p.set_defaults(func=_run_export)


def _run_export(args: argparse.Namespace) -> int:
    require("export", "rootml export")
    from rootml.errors import ModelError
    from rootml.export.repository import add_onnx_model, model_dir, model_file

    def written(version: int) -> str:  # the model file of the version (default_model_filename)
        folder = model_dir(args.repo, args.name)
        return str(folder / str(version) / model_file(folder))

    if args.onnx is None:
        if args.source is None:
            raise ModelError("give a training run/checkpoint to export, or --onnx FILE")
        if args.metadata is not None:
            raise ModelError("--metadata goes with --onnx; a run's rootml.json is written for it")
        from rootml.export.run import export_run

        version = export_run(
            args.source,
            args.repo,
            args.name,
            fold_normalization=args.fold_normalization,
            opset=args.opset,
            tolerance=args.tolerance,
            parity_batches=args.parity_batches,
            max_batch_size=args.max_batch_size,
        )
        print(written(version))
        return 0
    if args.source is not None:
        raise ModelError("give either a training run/checkpoint or --onnx FILE, not both")

    metadata = None
    if args.metadata is not None:
        metadata = read_json(args.metadata, "metadata file")
    version = add_onnx_model(
        args.repo, args.name, args.onnx, metadata, max_batch_size=args.max_batch_size
    )
    print(written(version))
    return 0


def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = _command(sub, "serve", "serve a model repository over KServe V2 (HTTP and gRPC)")
    p.add_argument("--repo", default="models", help="model repository folder (default: models)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port (default: 8000)")
    p.add_argument(
        "--grpc-port",
        type=int,
        default=0,
        help="also serve the protocol over gRPC (inference.GRPCInferenceService, as Triton; "
        "tritonclient.grpc, SONIC) on this port (default: off; Triton uses 8001)",
    )
    p.add_argument("--tls-cert", help="PEM certificate (chain): serve HTTPS and gRPC over TLS")
    p.add_argument("--tls-key", help="PEM private key of --tls-cert")
    p.add_argument(
        "--token-file",
        help="file holding the bearer token that load/unload/upload need; without it they are off",
    )
    p.add_argument("--workers", type=int, default=1, help="uvicorn worker processes (default: 1)")
    p.add_argument(
        "--max-body-bytes",
        type=int,
        default=defaults.SERVE_MAX_BODY_BYTES,
        help="largest request body, also after decompression "
        f"(default: {defaults.SERVE_MAX_BODY_BYTES // defaults.MiB} MiB)",
    )
    p.add_argument(
        "--max-upload-bytes",
        type=int,
        default=defaults.SERVE_MAX_UPLOAD_BYTES,
        help="largest model upload, also unpacked "
        f"(default: {defaults.SERVE_MAX_UPLOAD_BYTES // defaults.MiB} MiB)",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=defaults.SERVE_REQUEST_TIMEOUT_S,
        help="per-request deadline in s",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=defaults.SERVE_BODY_TIMEOUT_S,
        help="s a request body may take to arrive, plus 1 s per MiB; slower: 408",
    )
    p.add_argument(
        "--repository-poll-secs",
        type=float,
        default=0.0,
        help="check the repository every N s: load new or changed models and versions, unload "
        "removed ones (Triton's poll mode; default 0: only at start and on load requests)",
    )
    p.add_argument(
        "--max-queue",
        type=int,
        default=defaults.SERVE_MAX_QUEUE,
        help="requests waiting before 503",
    )
    p.add_argument(
        "--threads-per-run",
        type=int,
        default=1,
        help="onnxruntime intra-op threads per run; runs in flight = cores / this",
    )
    p.add_argument(
        "--device",
        default=defaults.SERVE_DEVICE,
        help="where models run whose config.pbtxt instance_group gives no kind: auto (a GPU "
        "when onnxruntime has CUDA and finds one), cpu, cuda or cuda:N; KIND_GPU/KIND_CPU in "
        f"config.pbtxt win; no usable GPU: the CPU, with a warning (default: {defaults.SERVE_DEVICE})",
    )
    p.set_defaults(func=_run_serve)


def _run_serve(args: argparse.Namespace) -> int:
    require("serve", "rootml serve")
    from rootml.export.execution import check_device
    from rootml.serve.app import repository_notice, run_server
    from rootml.serve.settings import ServeSettings

    token = read_token_file(args.token_file)
    _check_serve_ports(args)
    settings = ServeSettings(
        repo=args.repo,
        token=token,
        max_body_bytes=args.max_body_bytes,
        max_upload_bytes=args.max_upload_bytes,
        request_timeout_s=args.timeout,
        max_queue=args.max_queue,
        workers=args.workers,
        threads_per_run=args.threads_per_run,
        body_timeout_s=args.body_timeout,
        repository_poll_secs=args.repository_poll_secs,
        device=check_device(args.device),
        grpc_port=args.grpc_port,
        grpc_host=args.host,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
    )
    notice = repository_notice(args.repo, args.repository_poll_secs)
    if notice is not None:
        print(f"warning: {notice}", file=sys.stderr)
    control = "on" if token else "off (no --token-file)"
    polled = (
        f"polled every {args.repository_poll_secs:g} s"
        if args.repository_poll_secs > 0
        else "read at start"
    )
    scheme = "https" if args.tls_cert else "http"
    grpc = f" and grpc{'s' if args.tls_cert else ''}://{args.host}:{args.grpc_port}"
    print(
        f"rootml serve: {args.repo} ({polled}) on {scheme}://{args.host}:{args.port}"
        f"{grpc if args.grpc_port else ''}, model control {control}",
        file=sys.stderr,
    )
    run_server(settings, host=args.host, port=args.port)
    return 0


def _check_serve_ports(args: argparse.Namespace) -> None:
    """ConfigError for a gRPC port that is the HTTP one, or TLS given by halves or unreadable."""
    if args.grpc_port and args.grpc_port == args.port:
        raise ConfigError(f"--grpc-port {args.grpc_port} is the HTTP --port: give another")
    if args.grpc_port < 0 or args.grpc_port > 65535:
        raise ConfigError(f"--grpc-port {args.grpc_port} is not a port number (1-65535)")
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    for flag, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if path and not os.access(path, os.R_OK):
            raise ConfigError(f"{flag} {path}: no such readable file")
    if args.grpc_port:
        # Said here in one line; the gRPC server binds the port only once the models are loaded.
        import socket

        try:
            with socket.create_server((args.host, args.grpc_port)):
                pass
        except OSError as err:
            raise ConfigError(
                f"--grpc-port {args.grpc_port}: cannot listen on {args.host}: {err.strerror}"
            ) from None


def _add_predict(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub, "predict", "score ROOT files with a model: entry-aligned friend trees and/or parquet"
    )
    p.add_argument(
        "--model", required=True, help="models/NAME (run here) or http://host:port/NAME (served)"
    )
    p.add_argument(
        "--files",
        nargs="+",
        required=True,
        help="ROOT (Parquet, HDF5) files, folders, globs, URLs, .txt lists",
    )
    p.add_argument("--tree", help="input TTree/RNTuple (default: the only one in the file)")
    p.add_argument(
        "--out",
        nargs="+",
        required=True,
        help="scores.root (one input), scores.parquet, and/or a folder (<input stem>_scores.root each)",
    )
    p.add_argument("--out-tree", help="name of the friend tree (default: the input's tree name)")
    p.add_argument(
        "--rntuple",
        action="store_true",
        help="write the friends as RNTuples instead of TTrees (entry-aligned the same way)",
    )
    p.add_argument(
        "--batch-size", type=int, default=defaults.BATCH_SIZE, help="entries per model run"
    )
    p.add_argument(
        "--branch-name", help="score branch name (default: score; with several outputs, a prefix)"
    )
    p.add_argument(
        "--chunk-size", type=int, default=defaults.CHUNK_SIZE, help="entries read at once"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=0,
        help="onnxruntime threads (default: cores; 1 per task with --dask)",
    )
    p.add_argument("--token-file", help="bearer token for a server that wants one")
    p.add_argument(
        "--dask",
        metavar="SCHEDULER",
        help="one task per file on Dask: local[:N] (N worker processes here), a scheduler "
        "address (tcp://host:8786) or a scheduler file (.json); see docs/scaling.md",
    )
    p.add_argument(
        "--retries", type=int, default=2, help="with --dask: extra attempts of a failed task"
    )
    p.set_defaults(func=_run_predict)


def _run_predict(args: argparse.Namespace) -> int:
    require("serve", "rootml predict")
    from rootml.predict import predict, predict_dask

    options = {
        "tree": args.tree,
        "out_tree": args.out_tree,
        "batch_size": args.batch_size,
        "branch_name": args.branch_name,
        "chunk_size": args.chunk_size,
        "token": read_token_file(args.token_file),
        "rntuple": args.rntuple,
    }
    if args.dask:
        require("dask", "rootml predict --dask")
        summary = predict_dask(
            args.model, args.files, args.out, scheduler=args.dask, retries=args.retries,
            threads=args.threads or 1, **options,
        )  # fmt: skip
    else:
        summary = predict(args.model, args.files, args.out, threads=args.threads, **options)
    print(
        f"scored {summary['entries']} entries of {len(summary['files'])} file(s)", file=sys.stderr
    )
    for path in summary["outputs"]:
        print(path)
    return 0


def _add_train(sub: argparse._SubParsersAction) -> None:
    from rootml.train.params import PARAMS, describe_params

    p = _command(
        sub,
        "train",
        "train a model on ROOT files (MLaaS4HEP inputs work as is)",
        description=_TRAIN_DESCRIPTION,
        epilog="params.json keys (MLaaS4HEP's name in brackets; rootml's or MLaaS4HEP's name "
        "work):\n" + describe_params(min(max(shutil.get_terminal_size().columns, 80), 120) - 2),
    )
    p.add_argument("--files", required=True, nargs="+", help="files.txt, globs, or paths/URLs")
    p.add_argument(
        "--labels",
        nargs="+",
        help="labels.txt (one label per file, in the files' order) or one integer per file",
    )
    p.add_argument(
        "--model", required=True, help="model.py defining model(idim) -> torch.nn.Module"
    )
    p.add_argument("--params", help="params.json (keys below; default: every default)")
    p.add_argument("--out", default="runs/latest", help="run folder")
    run = p.add_mutually_exclusive_group()
    run.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out up to --epochs (nothing to do when it has them)",
    )
    run.add_argument(
        "--auto-resume",
        action="store_true",
        help="--resume when --out holds a run, else start it: for jobs that restart themselves "
        "with the same command (torchrun --max-restarts, Slurm --requeue)",
    )
    run.add_argument(
        "--overwrite",
        action="store_true",
        help="delete the run in --out (checkpoints, history, plots, Specs) and start again",
    )
    g = p.add_argument_group("params.json values as flags (a flag wins over the file)")
    for param in PARAMS:
        if param.flag:
            g.add_argument(
                "--" + param.name.replace("_", "-"),
                type=_flag_type(param),
                metavar=param.name.upper(),
                help=f"{param.meaning} (default: params.json's, else {json.dumps(param.default)})",
            )
    p.set_defaults(func=_run_train, params_flags=[x.name for x in PARAMS if x.flag])


def _flag_type(param):
    """The argparse type of a params.json value given as a flag: argparse reports what
    rootml.train.params finds wrong ("argument --lr: must be >= 0, not -1.0")."""
    from rootml.train.params import parse_text

    def parse(text: str):
        try:
            return parse_text(param, text)
        except ConfigError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


_TRAIN_DESCRIPTION = """\
Train the model of model.py on ROOT files, as MLaaS4HEP does: files.txt lists the files (paths,
globs, root:// or https:// URLs), labels.txt their classes, model.py defines model(idim), and
params.json sets the keys listed below. The last val_fraction of each file's entries is held
out for validation, the test_fraction before it for the test set (scored once at the end); with
"folds" (e.g. "event % 5") each fold trains on the others into OUT/fold_K (--fold K: one fold).
The run folder --out receives checkpoints, history, plots, the Specs and summary.json; `rootml
export RUN` turns it into a served model (a k-fold run: one ensemble picking the fold model).

An existing run folder is never replaced silently: --resume continues it (when it already
has --epochs epochs, there is nothing to train and the command says so and exits 0; fewer
--epochs than it has is an error), --overwrite starts it again."""


def _run_train(args: argparse.Namespace) -> int:
    require("train", "rootml train")
    from rootml.train.run import run_from_params

    files = args.files[0] if len(args.files) == 1 else args.files
    labels, names = _labels(args.labels)
    if names is not None:
        raise ConfigError("--labels takes labels.txt or one integer per file, not class names")
    overrides = {name: getattr(args, name) for name in args.params_flags}
    summary = run_from_params(files, labels, args.model, args.params, args.out,
                              resume="auto" if args.auto_resume else args.resume,
                              overwrite=args.overwrite, **overrides)  # fmt: skip
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun, rank 0 speaks for all
    if "n_folds" in summary:  # every fold of a k-fold run
        print(f"trained folds {summary['folds_done']} of {summary['n_folds']}; run folder: {args.out}")  # fmt: skip
        for key, value in summary["test"].items():
            if key.endswith(_SHOWN):
                print(f"  {key} = {value['mean']:.4f} +- {value['std']:.4f} over the folds")
        return 0
    epochs, new = summary["epochs"], summary["new_epochs"]
    if new == 0:
        print(f"{args.out} already has {epochs} epochs: nothing to train (give --epochs above "
              f"{epochs} to continue it)")  # fmt: skip
        return 0
    events = sum(summary["epoch_events"][-new:])
    seconds = max(sum(summary["epoch_seconds"][-new:]), 1e-9)
    which = f"epoch {epochs}" if new == 1 else f"epochs {epochs - new + 1}-{epochs}"
    print(f"trained {which}: {events:,} events in {seconds:.1f} s ({events / seconds:,.0f} "
          f"events/s; {summary['seconds']:.1f} s with setup); run folder: {args.out}")  # fmt: skip
    final = {**summary["final"], **summary.get("test", {})}
    print("  ".join(f"{k}={final[k]:.4f}" for k in final if k.endswith(_SHOWN)))
    return 0


_SHOWN = ("loss", "accuracy", "auc", "resolution", "bias")  # the metrics `rootml train` prints


def _add_bench(sub: argparse._SubParsersAction) -> None:
    p = _command(
        sub,
        "bench",
        "short benchmarks against their references (from a source checkout)",
        description="Run the short benchmarks against their references, measured in the same "
        "run: the repository's benchmarks/run.py (loader, serve, gpu, serve_gpu). They need the source "
        "checkout (examples, test fixtures, benchmarks/results), so they are not part of the "
        "installed package: run this from a clone of rootml.",
    )
    p.add_argument("names", nargs="*", metavar="NAME", help="benchmarks to run (default: all)")
    p.add_argument("--full", action="store_true", help="the full benchmarks (minutes) instead")
    p.add_argument("--json", help="write the results of every benchmark to this JSON file")
    p.set_defaults(func=_run_bench)


def _run_bench(args: argparse.Namespace) -> int:
    import importlib.util
    from pathlib import Path

    import rootml

    checkouts = [Path(rootml.__file__).resolve().parents[2], Path.cwd()]
    script = next(
        (c / "benchmarks" / "run.py" for c in checkouts if (c / "benchmarks" / "run.py").is_file()),
        None,
    )
    if script is None:
        raise RootmlError(
            "rootml bench runs the benchmark scripts of a rootml source checkout "
            f"(benchmarks/run.py; none in {' or '.join(str(c) for c in checkouts)}): "
            "run it from a clone of the repository"
        )
    spec = importlib.util.spec_from_file_location("rootml_bench_run", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.run(args.names, args.full, args.json)
    return 0


_JOBS = [_add_inspect, _add_specs, _add_train, _add_export, _add_serve, _add_predict, _add_bench]


def build_parser() -> argparse.ArgumentParser:
    """The `rootml` parser with every job's subcommand."""
    parser = argparse.ArgumentParser(
        prog="rootml", description=_DESCRIPTION, formatter_class=_HelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"rootml {__version__}")
    _verbose(parser, default=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _JOBS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run `rootml ARGS`; returns the exit status (2 for a mistake, printed as one line)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(levelname)s %(name)s: %(message)s",
    )
    # Progress lines (off a terminal) and epoch results show without -v (rootml.progress).
    logging.getLogger("rootml.progress").setLevel(logging.INFO)
    try:
        return int(args.func(args) or 0)
    except RootmlError as err:
        if args.verbose:
            traceback.print_exc()
        # uproot's messages span lines ("not found: 'x'\nin file ...\nin object ..."): one line.
        message = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        print(f"rootml {args.command}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"rootml {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
