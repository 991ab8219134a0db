"""The `rootml` command explains itself: one-line errors with exit status 2 (tracebacks only with
-v), defaults in every help line, --version, and --help without torch or uproot."""

from __future__ import annotations

import argparse
import fnmatch
import json
import subprocess
import sys

import pytest
import uproot

import rootml
from rootml.cli import build_parser, main
from rootml.train.params import PARAMS, defaults, load_params
from tests.conftest import HZZ, free_port

HEAVY = ("torch", "uproot", "awkward", "fastapi", "onnxruntime", "httpx", "matplotlib")


def rootml_command(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    """`rootml ARGS` as a user runs it: a new process through the package's entry point."""
    return subprocess.run(
        [sys.executable, "-m", "rootml", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result, command: str, *fragments: str) -> str:
    """Exit status 2 and exactly one stderr line `rootml <command>: error: ...` holding each
    fragment; no traceback."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"rootml {command}: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def loaded_modules(code: str) -> set[str]:
    """The HEAVY modules that `code`, run in a fresh interpreter, leaves imported."""
    probe = f"import sys\n{code}\nprint('LOADED', *(m for m in {HEAVY!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return set(result.stdout.splitlines()[-1].split()[1:])


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["inspect", "--help"], []])
def test_help_and_usage_errors_import_nothing_heavy(argv):
    code = f"""
from rootml.cli import main
try:
    main({argv!r})
except SystemExit as stop:
    assert stop.code == (2 if {argv!r} == [] else 0), stop.code
"""
    assert loaded_modules(code) == set()


def test_import_rootml_is_light_and_names_load_on_use():
    assert loaded_modules("import rootml") == set()
    assert loaded_modules("from rootml import RootIterableDataset") >= {"torch", "uproot"}
    assert loaded_modules("from rootml.train.params import load_params") == set()


def test_package_exports_resolve_to_their_objects():
    import rootml.train.run  # binds submodule rootml.train.fit before the name is used
    from rootml.train import fit, run_from_params
    from rootml.train.fit import fit as fit_function

    assert fit is fit_function and callable(run_from_params)
    assert rootml.Specs is __import__("rootml.transforms.specs").transforms.specs.Specs
    assert {"RootIterableDataset", "Specs", "fit_specs"} <= set(dir(rootml))
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        rootml.train.nothing  # noqa: B018


def test_version():
    result = rootml_command("--version")
    assert result.returncode == 0 and result.stdout == f"rootml {rootml.__version__}\n"
    from importlib.metadata import version

    assert version("rootml") == rootml.__version__


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_every_help_line_shows_its_default():
    for name, sub in _subparsers(build_parser()).items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
                continue
            if isinstance(action, argparse._CountAction):
                continue
            help_text = " ".join((action.help or "").split())
            assert "default" in help_text or f"(default: {action.default})" in text, (
                name,
                action.option_strings,
            )


def test_train_help_lists_every_params_key_and_flags(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    # MLaaS4HEP's keys and the ones the README list missed (the list).
    mlaas4hep = ["nevts", "shuffle", "chunk_size", "epochs", "batch_size", "identifier", "branch",
                 "selected_branches", "exclude_branches", "hist", "redirector", "verbose"]  # fmt: skip
    missed = ["aliases", "branches", "exclude", "identifiers", "label_branch", "nan_policy",
              "pad_value", "specs_nevts", "tree"]  # fmt: skip
    keys = text.split("params.json keys", 1)[1]
    for key in [*mlaas4hep, *missed, *(p.name for p in PARAMS)]:
        assert f" {key} " in keys or f"[{key}]" in keys, key
        load_params({key: defaults().get(key)})  # each listed key is one load_params accepts
    for flag in ("--lr", "--batch-size", "--val-fraction", "--epochs", "--overwrite", "--resume"):
        assert flag in text


def test_flags_override_params_file(tmp_path):
    args = build_parser().parse_args(
        ["train", "--files", "f.root", "--model", "m.py", "--lr", "0.01", "--batch-size", "64"]
    )
    overrides = {name: getattr(args, name) for name in args.params_flags}
    params_file = tmp_path / "params.json"
    params_file.write_text(json.dumps({"lr": 0.5, "batch_size": 8, "epochs": 2}))
    params = load_params(params_file, **overrides)
    assert (params["lr"], params["batch_size"], params["epochs"]) == (0.01, 64, 2)


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--lr", "-1", "argument --lr: must be >= 0, not -1.0"),
        ("--epochs", "1.5", "argument --epochs: must be an integer, not '1.5'"),
        ("--val-fraction", "1", "argument --val-fraction: must be in [0, 1), not 1.0"),
    ],
)
def test_bad_flag_values_are_usage_errors(capsys, flag, value, message):
    with pytest.raises(SystemExit) as stop:
        main(["train", "--files", "f.root", "--model", "m.py", flag, value])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"rootml train: error: {message}"


def test_params_typo_names_the_file_and_the_closest_key(tmp_path):
    params = tmp_path / "params.json"
    params.write_text(json.dumps({"epoch": 3, "batch_size": 10}))
    model = tmp_path / "model.py"
    model.write_text("def model(idim):\n    raise AssertionError('not reached')\n")
    result = rootml_command("train", "--files", HZZ, "--labels", "1", "--model", model,
                            "--params", params, "--out", tmp_path / "run")  # fmt: skip
    assert_one_line_error(
        result, "train", f"unknown parameter 'epoch' in {params}; did you mean 'epochs'?"
    )
    assert not (tmp_path / "run").exists()


def test_verbose_after_the_command_adds_the_traceback(tmp_path):
    missing = tmp_path / "missing.root"
    quiet = rootml_command("inspect", missing)
    line = assert_one_line_error(quiet, "inspect", str(missing))
    loud = rootml_command("inspect", missing, "-v")
    assert loud.returncode == 2 and "Traceback (most recent call last)" in loud.stderr
    assert loud.stderr.strip().splitlines()[-1] == line


def test_server_not_running_is_one_line(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    result = rootml_command("predict", "--model", f"{url}/tth", "--files", HZZ,
                            "--out", tmp_path / "scores.parquet")  # fmt: skip
    assert_one_line_error(result, "predict", f"cannot connect to the server at {url}",
                          "rootml serve")  # fmt: skip
    from rootml.client import Client

    with Client(url) as client:
        assert client.live() is False and client.ready() is False


def test_cut_naming_a_missing_branch_is_one_line(tmp_path):
    result = rootml_command("specs", HZZ, "-o", tmp_path / "specs.json", "--cut", "NJets > 1")
    assert_one_line_error(result, "specs", "NJets")
    assert not (tmp_path / "specs.json").exists()


def test_inspect_selects_trees_and_branches_like_uproot(capsys):
    patterns, excluded = ["Jet_*", "MET_px"], "Jet_ID"
    assert (
        main(["inspect", str(HZZ), "--json", "--branches", *patterns, "--exclude", excluded]) == 0
    )
    report = json.loads(capsys.readouterr().out)[0]
    keys = uproot.open(HZZ)["events"].keys()
    expected = [k for k in keys if any(fnmatch.fnmatch(k, p) for p in patterns) and k != excluded]
    assert [b["name"] for b in report["trees"][0]["branches"]] == expected

    assert main(["inspect", str(HZZ), "--bins", "10"]) == 2
    assert (
        capsys.readouterr().err
        == "rootml inspect: error: histogram options (--bins) need --hist OUT\n"
    )
    assert main(["inspect", str(HZZ), "--tree", "Events"]) == 2
    assert "no TTree or RNTuple named 'Events'; found ['events']" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["specs", str(HZZ), "-o", "x.json", "--alias", "HT"], "--alias takes NAME=EXPR"),
        (["specs", str(HZZ), "-o", "x.json", "--max-len", "ten"], "--max-len: 'ten' is not"),
        (["bench", "nothing"], "no benchmark ['nothing']"),
        (["serve", "--token-file", "/nonexistent/token"], "cannot read token file"),
    ],
)
def test_argument_mistakes_are_one_line(capsys, argv, fragment):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"rootml {argv[0]}: error: ") and fragment in err


def test_params_file_mistakes(tmp_path):
    broken = tmp_path / "broken.json"
    broken.write_text('{"epochs": 3,}')
    for params, message in [
        (broken, f"params file {broken} is not valid JSON"),
        (tmp_path / "none.json", f"params file {tmp_path / 'none.json'} not found"),
        ({"branch": "Events", "tree": "Events"}, "'branch' and 'tree' in params are the same"),
        ({"epochs": "3"}, "parameter 'epochs' in params must be an integer, not '3'"),
        ({"shuffle": 1}, "parameter 'shuffle' in params must be true/false, not 1"),
        ({"normalize": "std"}, "must be one of 'standard', 'minmax', not 'std'"),
        (
            {"bactch_size": 3},
            "unknown parameter 'bactch_size' in params; did you mean 'batch_size'",
        ),
    ]:
        with pytest.raises(
            rootml.ConfigError if "found" not in message else rootml.RootmlError
        ) as err:
            load_params(params)
        assert message in str(err.value)
    with pytest.raises(rootml.ConfigError, match="'epoch' in the arguments; did you mean"):
        load_params({}, epoch=3)
    assert load_params({"selected_branches": "HT", "nevts": -1, "normalize": None}) == {
        **load_params(None),
        "branches": ["HT"],
        "nevts": None,
        "normalize": None,
    }


def test_no_command_is_a_usage_error():
    result = rootml_command()
    assert result.returncode == 2 and "required: COMMAND" in result.stderr
    assert result.stderr.startswith("usage: rootml")


def test_readme_training_section_names_every_params_key():
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    training = readme.split("## Training", 1)[1].split("\n## ", 1)[0]
    for param in PARAMS:
        for key in filter(None, (param.name, param.mlaas4hep)):
            assert f"`{key}`" in training, key


def test_serve_refuses_grpc_and_tls_flags_that_cannot_work(tmp_path, capsys):
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        cases = {
            ("--grpc-port", "8000"): "--grpc-port 8000 is the HTTP --port: give another",
            ("--grpc-port", str(port)): f"--grpc-port {port}: cannot listen on 127.0.0.1",
            ("--tls-cert", "c.pem"): "TLS needs both --tls-cert and --tls-key",
            (
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
            ): "--tls-cert c.pem: no such readable file",
        }
        for flags, message in cases.items():
            assert main(["serve", "--repo", str(tmp_path), *flags]) == 2, flags
            assert message in capsys.readouterr().err, flags
