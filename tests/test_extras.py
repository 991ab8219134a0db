"""Install extras: each works in an environment that holds only the core and that extra.

Making a virtual environment per extra and installing into it takes minutes and a package index.
Instead, each extra's environment is laid out from this one: the distributions that
pyproject.toml's requirements of the core plus the extra pull in (their own requirements
followed, markers evaluated, as pip resolves them) are linked into an empty folder, and a
Python started with -S (no site-packages) sees that folder, rootml's src/ and the standard
library, nothing else. A module of another extra is then not installed there, exactly as in a
fresh `pip install 'rootml[EXTRA]'`; each extra's job then runs a small real action.
"""

from __future__ import annotations

import importlib.metadata as metadata
import os
import subprocess
import sys
import textwrap
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from rootml._extras import MODULES

tomllib = pytest.importorskip("tomllib", reason="reads pyproject.toml with Python 3.11's tomllib")

ROOT = Path(__file__).resolve().parents[1]
HZZ = ROOT / "tests" / "data" / "uproot-HZZ.root"
SERVING_STACK = {
    "fastapi", "uvicorn", "onnx", "onnxruntime", "matplotlib", "prometheus-client", "grpcio",
    "protobuf",
}  # fmt: skip


@cache
def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


@cache
def _installed() -> dict[str, metadata.Distribution]:
    return {canonicalize_name(d.metadata["Name"]): d for d in metadata.distributions()}


def _requirements(extra: str | None) -> list[Requirement]:
    """pyproject.toml's requirements of the core (extra None) or of one extra, rootml's own
    extras ("rootml[a,b]") expanded."""
    if extra is None:
        return [Requirement(r) for r in _project()["dependencies"]]
    found = []
    for text in _project()["optional-dependencies"][extra]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "rootml":
            found += [r for inner in sorted(req.extras) for r in _requirements(inner)]
        else:
            found.append(req)
    return found


def _closure(requirements: list[Requirement]) -> set[str]:
    """The distributions (canonical names) that installing `requirements` brings: each one and,
    recursively, its own requirements (with the extras asked for), where the markers hold."""
    seen: set[str] = set()
    todo = [(r, "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate(
            {**default_environment(), "extra": extra}
        ):
            continue
        name = canonicalize_name(req.name)
        assert name in _installed(), f"{req} is required but not installed in this environment"
        for wanted in ["", *sorted(req.extras)]:
            if (name, wanted) in seen:
                continue
            seen.add((name, wanted))
            todo += [(Requirement(r), wanted) for r in _installed()[name].requires or []]
    return {name for name, _ in seen}


def _environment(folder: Path, extra: str | None) -> Path:
    """`folder` made to hold the distributions of the core (+ `extra`) as links into this
    environment's site-packages: whole top-level entries, or file by file where several
    distributions share one (namespace packages such as google/)."""
    wanted = _closure(_requirements(None) + (_requirements(extra) if extra else []))
    owners: dict[str, set[str]] = {}
    for name, dist in _installed().items():
        for top in _tops(dist):
            owners.setdefault(top, set()).add(name)
    folder.mkdir()
    for name in wanted:
        dist = _installed()[name]
        for top in _tops(dist):
            source = Path(dist.locate_file(top))
            if len(owners[top]) == 1 or source.is_file():
                if not (folder / top).exists():
                    (folder / top).symlink_to(source)
                continue
            for path in dist.files or []:  # shared with other distributions: this one's files
                if Path(path).parts[0] == top:
                    (folder / path).parent.mkdir(parents=True, exist_ok=True)
                    if not (folder / path).exists():
                        (folder / path).symlink_to(dist.locate_file(path))
    return folder


def _tops(dist: metadata.Distribution) -> set[str]:
    """The top-level entries of site-packages that `dist` installed (its scripts left out)."""
    parts = (Path(path).parts for path in dist.files or [])
    return {p[0] for p in parts if p and p[0] not in ("..", "__pycache__")}


ABSENT = """
import importlib.util
def absent(*names):
    found = [n for n in names if importlib.util.find_spec(n) is not None]
    assert not found, f"installed here, but not in this extra: {found}"
"""


def _run(
    folder: Path, code: str, tmp_path: Path, timeout: int = 240
) -> subprocess.CompletedProcess:
    """`code` run by a Python that sees only `folder`, rootml's src/ and the standard library."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "ROOTML_PROGRESS"))}
    env.update(PYTHONPATH=os.pathsep.join([str(folder), str(ROOT / "src")]), PYTHONNOUSERSITE="1")
    env.update(MPLCONFIGDIR=str(tmp_path / "mpl"), HOME=str(tmp_path))
    return subprocess.run(
        [sys.executable, "-S", "-c", ABSENT + textwrap.dedent(code)],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def _check(folder: Path, code: str, tmp_path: Path) -> str:
    result = _run(folder, code, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_core_resolution_has_no_serving_stack():
    core = _closure(_requirements(None))
    assert not core & SERVING_STACK, sorted(core & SERVING_STACK)
    for name in ("torch", "torchdata", "uproot", "awkward", "numpy", "fsspec", "fsspec-xrootd"):
        assert name in core
    serve = _closure(_requirements(None) + _requirements("serve"))
    assert {"fastapi", "uvicorn", "onnxruntime", "prometheus-client", "grpcio", "protobuf"} <= serve
    assert "matplotlib" not in serve


def test_extra_modules_table_matches_pyproject():
    """rootml._extras.MODULES (what `rootml JOB` checks before running) names modules that the
    extra's own requirements install, and none that the core already has."""
    core = _closure(_requirements(None))
    tops = metadata.packages_distributions()
    for extra, modules in MODULES.items():
        dists = _closure(_requirements(extra)) - core
        provided = {t for t, names in tops.items() if {canonicalize_name(n) for n in names} & dists}
        assert set(modules) <= provided, (extra, set(modules) - provided)


def test_core_streams_and_refuses_jobs_of_other_extras(tmp_path):
    folder = _environment(tmp_path / "env", None)
    out = _check(
        folder,
        f"""
        absent("fastapi", "uvicorn", "onnx", "onnxruntime", "matplotlib", "prometheus_client",
               "tqdm", "httpx", "orjson", "grpc")
        import uproot, numpy as np
        from rootml import RootIterableDataset, fit_specs
        specs = fit_specs({str(HZZ)!r}, branches=["MET_px", "Jet_Px"], max_len=2)
        ds = RootIterableDataset({str(HZZ)!r}, specs=specs, normalize="standard", batch_size=100)
        batch = next(iter(ds))
        raw = RootIterableDataset({str(HZZ)!r}, branches=["MET_px"], batch_size=10)
        expected = uproot.open({str(HZZ)!r})["events"]["MET_px"].array(library="np")[:10]
        assert np.array_equal(next(iter(raw))["features"][:, 0].numpy(), expected.astype("f4"))
        print(*batch["features"].shape)
        """,
        tmp_path,
    )
    assert out.split()[-2:] == ["100", "3"]
    for job, extra in (
        (["serve"], "serve"),
        (["export", "x", "--name", "m"], "export"),
        (["train", "--files", str(HZZ), "--model", "m.py"], "train"),
        (["predict", "--model", "m", "--files", str(HZZ), "--out", "o.root"], "serve"),
    ):
        result = _run(
            folder, f"import sys; from rootml.cli import main; sys.exit(main({job!r}))", tmp_path
        )
        assert result.returncode == 2, result.stderr
        line = f"rootml {job[0]}: error: rootml {job[0]} needs the {extra} extra: pip install 'rootml[{extra}]'"
        assert result.stderr.startswith(line) and len(result.stderr.splitlines()) == 1, (
            result.stderr
        )


def test_train_extra_trains_and_plots(tmp_path):
    folder = _environment(tmp_path / "env", "train")
    _check(
        folder,
        f"""
        absent("fastapi", "onnx", "onnxruntime", "prometheus_client", "httpx")
        import torch
        from rootml import RootIterableDataset, fit_specs
        from rootml.train import fit
        specs = fit_specs([{str(HZZ)!r}], branches=["MET_px", "MET_py"])
        ds = RootIterableDataset([{str(HZZ)!r}, {str(HZZ)!r}], labels=[0, 1], specs=specs,
                                 reuse_specs=True, normalize="standard", batch_size=500)
        model = torch.nn.Sequential(torch.nn.Linear(2, 1), torch.nn.Sigmoid())
        history = fit(model, ds, out_dir="run", epochs=1, device="cpu")
        assert history[0]["train_events"] == 2 * 2421
        """,
        tmp_path,
    )
    assert (tmp_path / "run" / "plots" / "loss.png").stat().st_size > 1000


def test_export_extra_writes_and_loads_an_onnx_model(tmp_path):
    folder = _environment(tmp_path / "env", "export")
    out = _check(
        folder,
        """
        absent("fastapi", "uvicorn", "matplotlib", "prometheus_client", "httpx", "orjson")
        import io
        import numpy as np, torch
        from rootml.export import add_onnx_model, load_model
        torch.manual_seed(0)
        model = torch.nn.Linear(3, 1).eval()
        buffer = io.BytesIO()
        torch.onnx.export(model, (torch.zeros(1, 3),), buffer, input_names=["x"],
                          output_names=["y"], dynamic_axes={"x": {0: "b"}, "y": {0: "b"}},
                          dynamo=False)
        version = add_onnx_model("models", "lin", buffer.getvalue())
        loaded = load_model("models", "lin")
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        (got,) = loaded.session.run(None, {"x": x})
        assert np.allclose(got, model(torch.from_numpy(x)).detach().numpy(), atol=1e-6)
        print(version)
        """,
        tmp_path,
    )
    assert out.split()[-1] == "1"


def test_serve_extra_builds_the_server(tmp_path):
    (tmp_path / "models").mkdir()
    folder = _environment(tmp_path / "env", "serve")
    out = _check(
        folder,
        """
        absent("matplotlib", "tqdm")
        import asyncio
        from rootml.serve.app import ServeSettings, create_app
        app = create_app(ServeSettings(repo="models"))
        sent = []
        async def receive():
            return {"type": "http.request", "body": b"", "more_body": False}
        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "GET", "path": "/v2/health/live", "headers": [],
                 "query_string": b"", "http_version": "1.1", "scheme": "http",
                 "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 1), "root_path": ""}
        async def main():
            async with app.router.lifespan_context(app):
                await app(scope, receive, send)
        asyncio.run(main())
        print(sent[0]["status"])
        """,
        tmp_path,
    )
    assert out.split()[-1] == "200"


def test_client_extra_encodes_and_decodes(tmp_path):
    folder = _environment(tmp_path / "env", "client")
    _check(
        folder,
        """
        absent("fastapi", "uvicorn", "onnx", "onnxruntime", "matplotlib", "prometheus_client")
        import httpx, json, numpy as np
        from rootml.client import Client
        x = np.arange(6, dtype=np.float32).reshape(2, 3)
        def answer(request):
            # A V2 server's JSON answer: the input doubled, as "y".
            header = int(request.headers.get("inference-header-content-length", len(request.content)))
            doc = json.loads(request.content[:header])
            data = np.frombuffer(request.content[header:], dtype=np.float32).reshape(doc["inputs"][0]["shape"])
            body = {"model_name": "m", "outputs": [{"name": "y", "datatype": "FP32",
                    "shape": list(data.shape), "data": (2 * data).ravel().tolist()}]}
            return httpx.Response(200, json=body)
        with Client("http://127.0.0.1:1", transport=httpx.MockTransport(answer)) as client:
            got = client.infer("m", {"x": x})["y"]
        assert np.array_equal(got, 2 * x), got
        """,
        tmp_path,
    )
