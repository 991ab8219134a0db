"""rootml against NVIDIA Triton 2.51 itself (tests/serve/_triton.py), on the same repository.

- Every config.pbtxt rootml writes is read by Triton: started on rootml's repository as it is,
  Triton parses every config and refuses each version only for the onnxruntime backend PyPI
  does not ship.
- With the platform line swapped for Triton's python backend (a model.py running the same ONNX
  file with onnxruntime), tritonclient gets the same metadata and the same scores from Triton
  and from `rootml serve`, and the repository API the same success codes.
- Where the two answer a call with different codes, the code each gives is the one
  docs/serving.md's table says (measured here, not guessed), and so are the instance_group
  rules: the refusals they share, and rootml's CPU fallback where Triton refuses KIND_GPU.

Skipped only where the Triton wheel cannot be installed (ROOTML_REQUIRE_TRITON=1 fails instead,
as scripts/test.sh sets it).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import tritonclient.http as triton_http
from onnx import TensorProto, helper

from rootml.cli import main as rootml_main
from rootml.datasets import fit_specs
from rootml.export.model_config import select_versions
from rootml.export.repository import add_onnx_model, list_models, list_versions, read_config
from tests.export._runs import BRANCHES, MASKED_MODEL, make_run
from tests.serve._physics_model import HZZ
from tests.serve._triton import (
    Triton,
    backends,
    load_only,
    model_states,
    python_backend_copy,
    triton_home,
)
from tests.serve.conftest import AUTH, N_FEATURES, Server, mlp_onnx_bytes

pytestmark = pytest.mark.slow
# Loading a model into Triton's python backend starts a Python process per version: seconds on a
# busy machine.
HTTP = httpx.Client(timeout=120)
DOCS = Path(__file__).resolve().parents[2] / "docs" / "serving.md"
MISSING_BACKEND = (
    "UNAVAILABLE: Invalid argument: unable to find backend library for backend 'onnxruntime'"
)
# Appended to a copy of mlp's config: Triton's instance_group rules against rootml's.
GROUPS = {
    "on_gpu": "instance_group [ { kind: KIND_GPU } ]",
    "cpu_with_gpus": "instance_group [ { kind: KIND_CPU gpus: [ 0 ] } ]",
    "count_zero": "instance_group [ { kind: KIND_CPU count: 0 } ]",
}
TAGGER_CONFIG = f"""name: "tagger"
platform: "onnxruntime_onnx"
default_model_filename: "net.onnx"
max_batch_size: 16
input [ {{ name: "features" data_type: TYPE_FP32 dims: [ {N_FEATURES} ] }},
        {{ name: "mask" data_type: TYPE_BOOL dims: [ {N_FEATURES} ] }} ]
output [ {{ name: "score" data_type: TYPE_FP32 dims: [ 1 ] }} ]
"""


def summed_onnx() -> bytes:
    """x FP32 [-1, 3] -> total FP32 [-1]: a rank-1 output (config dims [1], reshape [])."""
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["x", "axes"], ["total"], keepdims=0)],
        "summed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"])],
        [helper.make_tensor("axes", TensorProto.INT64, [1], [1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def make_repository(base: Path) -> Path:
    """What rootml writes, in every form of config it makes, plus a Triton-style model (net.onnx)
    and mlp's config with instance groups appended."""
    repo = base / "models"
    metadata = {"feature_names": [f"f{i}" for i in range(N_FEATURES)]}
    add_onnx_model(repo, "mlp", mlp_onnx_bytes(0), metadata)
    add_onnx_model(repo, "mlp", mlp_onnx_bytes(1), metadata)  # two versions: version_policy
    batching = {"max_queue_delay_microseconds": 2000, "preferred_batch_size": [4, 8]}
    add_onnx_model(repo, "mlp_batched", mlp_onnx_bytes(2), config={"dynamic_batching": batching})
    add_onnx_model(repo, "fixed", mlp_onnx_bytes(3), max_batch_size=0)
    add_onnx_model(repo, "summed", summed_onnx())
    # A training run exported by the CLI: rootml.json with Specs, a two-class softmax output.
    make_run(base / "run", MASKED_MODEL, fit_specs(str(HZZ), branches=BRANCHES, max_len=3))
    assert rootml_main(["export", str(base / "run"), "--name", "tth", "--repo", str(repo)]) == 0
    tagger = repo / "tagger"
    (tagger / "1").mkdir(parents=True)
    (tagger / "config.pbtxt").write_text(TAGGER_CONFIG)
    (tagger / "1" / "net.onnx").write_bytes(mlp_onnx_bytes(4))
    for name, groups in GROUPS.items():
        shutil.copytree(repo / "mlp", repo / name, ignore=shutil.ignore_patterns("2"))
        config = (repo / name / "config.pbtxt").read_text().replace('"mlp"', f'"{name}"')
        (repo / name / "config.pbtxt").write_text(config + groups + "\n")
    return repo


@pytest.fixture(scope="module")
def home() -> Path:
    return triton_home()


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return make_repository(tmp_path_factory.mktemp("parity"))


@pytest.fixture(scope="module")
def backend_dir(home, tmp_path_factory) -> Path:
    return backends(home, tmp_path_factory.mktemp("backends"))


@pytest.fixture(scope="module")
def servers(home, backend_dir, repo, token_file, tmp_path_factory):
    """(Triton on the python-backend copy, rootml serve on the repository itself)."""
    base = tmp_path_factory.mktemp("servers")
    copy = python_backend_copy(repo, base / "python-models")
    tri = Triton(home, backend_dir, copy, base / "triton.log")
    try:
        ours = Server(repo, base / "serve.log", "--token-file", str(token_file))
    except BaseException:
        tri.stop()
        raise
    yield tri, ours
    ours.stop()
    tri.stop()


def served_by_rootml(repo: Path) -> dict[tuple[str, int], bool]:
    return {
        (name, v): True
        for name in list_models(repo)
        for v in select_versions(list_versions(repo, name), read_config(repo / name))
    }


def test_triton_reads_every_config_rootml_writes(home, backend_dir, repo, tmp_path):
    """Triton on rootml's repository as written: every config parsed and every version rootml
    serves tried, each refused only for the missing onnxruntime backend. (Bad text, unknown
    fields or enums, batching settings Triton rejects would stop it earlier.)"""
    rootml_written = tmp_path / "models"
    shutil.copytree(repo, rootml_written, ignore=shutil.ignore_patterns(*GROUPS, "tagger"))
    log = load_only(home, backend_dir, rootml_written)
    assert "Poll failed" not in log and "failed to read text proto" not in log, log[-3000:]
    states = model_states(log)
    assert set(states) == set(served_by_rootml(rootml_written)), log[-3000:]
    assert len(states) >= 6
    for version, state in states.items():
        assert state.startswith(MISSING_BACKEND), (version, state)


def infer(url: str, model: str, inputs: dict[str, np.ndarray], version: str = "") -> dict:
    """Outputs of one tritonclient.http infer (binary tensors, its default)."""
    with triton_http.InferenceServerClient(url) as client:
        tensors = []
        for name, value in inputs.items():
            datatype = triton_http.np_to_triton_dtype(value.dtype)
            tensors.append(triton_http.InferInput(name, list(value.shape), datatype))
            tensors[-1].set_data_from_numpy(value)
        result = client.infer(model, tensors, model_version=version)
        return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def random_inputs(metadata: dict, rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for tensor in metadata["inputs"]:
        shape = [rows if d == -1 else d for d in tensor["shape"]]
        if tensor["datatype"] == "BOOL":
            inputs[tensor["name"]] = rng.random(shape) > 0.3
        else:
            inputs[tensor["name"]] = rng.normal(size=shape).astype(np.float32)
    return inputs


def reshaped_outputs(config: dict) -> set[str]:
    """Outputs whose config.pbtxt entry has `reshape` (rank-1 graph outputs, dims [1])."""
    return {entry["name"] for entry in config["output"] if "reshape" in entry}


def triton_view(tensor: dict, reshaped: set[str]) -> dict:
    """A metadata tensor of Triton's as rootml reports it: for a reshaped output Triton shows
    the config's dims ([-1, 1]), rootml the graph's shape ([-1]) (docs/serving.md)."""
    if tensor["name"] in reshaped and tensor["shape"][1:] == [1]:
        return {**tensor, "shape": tensor["shape"][:1]}
    return tensor


SERVED = ["mlp", "mlp_batched", "fixed", "summed", "tth", "tagger", "count_zero"]


@pytest.mark.parametrize("model", SERVED)
def test_same_metadata_and_scores_from_triton_and_rootml(servers, model):
    tri, ours = servers
    with (
        triton_http.InferenceServerClient(tri.address) as a,
        triton_http.InferenceServerClient(ours.address) as b,
    ):
        theirs, mine = a.get_model_metadata(model), b.get_model_metadata(model)
    config = HTTP.get(f"{ours.url}/v2/models/{model}/config").json()
    reshaped = reshaped_outputs(config)
    for key in ("name", "versions", "inputs", "outputs"):
        view = [triton_view(t, reshaped) for t in theirs[key]] if key == "outputs" else theirs[key]
        assert mine[key] == view, key
    assert mine["parameters"]["execution_provider"] == "CPUExecutionProvider"
    for version in theirs["versions"]:
        for seed, rows in enumerate((1, 7, min(300, config["max_batch_size"] or 300))):
            inputs = random_inputs(mine, rows, seed)
            expected = infer(tri.address, model, inputs, version)
            got = infer(ours.address, model, inputs, version)
            assert set(got) == set(expected) == {t["name"] for t in mine["outputs"]}
            for name in got:
                assert got[name].dtype == expected[name].dtype
                if name in reshaped:  # documented: rootml answers the graph's (rows,)
                    assert got[name].shape == (rows,) and expected[name].shape == (rows, 1)
                    expected[name] = expected[name].reshape(rows)
                assert got[name].shape == expected[name].shape
                np.testing.assert_array_equal(got[name], expected[name])


def test_repository_api_success_codes_agree(servers):
    """Index, unload, load through tritonclient: the same success, the same models after."""
    tri, ours = servers
    for server, headers in ((tri, {}), (ours, AUTH)):
        with triton_http.InferenceServerClient(server.address) as client:
            index = client.get_model_repository_index(headers=headers)
            ready = {(e["name"], e["version"]) for e in index if e["state"] == "READY"}
            assert ("mlp", "1") in ready and ("mlp", "2") in ready
            client.unload_model("mlp", headers=headers)
            assert not client.is_model_ready("mlp")
            client.load_model("mlp", headers=headers)
            assert client.is_model_ready("mlp") and client.is_model_ready("mlp", "1")
            for path in ("index", "models/mlp/unload", "models/mlp/load"):
                answer = HTTP.post(f"{server.url}/v2/repository/{path}", headers=headers)
                assert answer.status_code == 200, (server, path, answer.text)
    with (
        triton_http.InferenceServerClient(tri.address) as a,
        triton_http.InferenceServerClient(ours.address) as b,
    ):
        theirs = {(e["name"], e["version"]) for e in a.get_model_repository_index()
                  if e["state"] == "READY"}  # fmt: skip
        mine = {(e["name"], e["version"]) for e in b.get_model_repository_index(headers=AUTH)
                if e["state"] == "READY"}  # fmt: skip
    # The same versions ready, but for the GPU model: Triton refuses KIND_GPU without a GPU.
    assert theirs | {("on_gpu", "1")} == mine


GOOD = {
    "inputs": [
        {"name": "features", "shape": [1, N_FEATURES], "datatype": "FP32",
         "data": list(range(N_FEATURES))},
        {"name": "mask", "shape": [1, N_FEATURES], "datatype": "BOOL", "data": [True] * N_FEATURES},
    ]
}  # fmt: skip


def changed(**first_input) -> dict:
    body = json.loads(json.dumps(GOOD))
    body["inputs"][0].update(first_input)
    return body


ROWS = 2000
# (the call, as docs/serving.md's table names it; method; path; body; rootml's code; Triton's)
CALLS = [
    ("metadata of an unknown model", "GET", "/v2/models/nosuch", None, 404, 404),
    ("readiness of an unknown model", "GET", "/v2/models/nosuch/ready", None, 404, 400),
    ("infer on an unknown model", "POST", "/v2/models/nosuch/infer", GOOD, 404, 404),
    ("metadata of an unknown version", "GET", "/v2/models/mlp/versions/9", None, 404, 404),
    ("load of a model not in the repository", "POST", "/v2/repository/models/nosuch/load", {},
     404, 500),
    ("unload of a model not in the repository", "POST", "/v2/repository/models/nosuch/unload",
     {}, 404, 200),
    ("load of an invalid model name", "POST", "/v2/repository/models/-x/load", {}, 400, 500),
    ("infer with an unknown input name", "POST", "/v2/models/mlp/infer", changed(name="x"),
     400, 400),
    ("infer with a wrong datatype", "POST", "/v2/models/mlp/infer", changed(datatype="FP64"),
     400, 400),
    ("infer with a wrong shape", "POST", "/v2/models/mlp/infer",
     changed(shape=[1, 5], data=[0] * 5), 400, 400),
    ("infer with fewer values than the shape", "POST", "/v2/models/mlp/infer",
     changed(shape=[2, N_FEATURES]), 400, 500),
    ("infer with a body that is not JSON", "POST", "/v2/models/mlp/infer", b"{not json", 400,
     500),
    ("infer without a required input", "POST", "/v2/models/mlp/infer",
     {"inputs": GOOD["inputs"][:1]}, 400, 400),
    ("infer with more rows than max_batch_size", "POST", "/v2/models/tagger/infer",
     {"inputs": [{**t, "shape": [ROWS, N_FEATURES], "data": t["data"] * ROWS}
                 for t in GOOD["inputs"]]}, 400, 400),
    ("infer with GET", "GET", "/v2/models/mlp/infer", None, 405, 405),
    ("an unknown path", "GET", "/v2/nothing", None, 404, 404),
]  # fmt: skip
# After unloading mlp.
UNLOADED = [
    ("metadata of an unloaded model", "GET", "/v2/models/mlp", None, 503, 404),
    ("readiness of an unloaded model", "GET", "/v2/models/mlp/ready", None, 503, 400),
    ("infer on an unloaded model", "POST", "/v2/models/mlp/infer", GOOD, 503, 404),
]


def status(server, method: str, path: str, body) -> int:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    return HTTP.request(method, server.url + path, content=content, headers=AUTH).status_code


def test_error_codes_are_the_ones_docs_serving_md_says(servers):
    tri, ours = servers
    docs = DOCS.read_text()

    def answers(calls) -> list[tuple[str, int, int]]:
        return [(c[0], status(ours, *c[1:4]), status(tri, *c[1:4])) for c in calls]

    for call, _, _, _, mine, theirs in CALLS + UNLOADED:
        assert f"| {call} | {mine} | {theirs} |" in docs, f"docs/serving.md lacks: {call}"
    assert answers(CALLS) == [(c[0], c[4], c[5]) for c in CALLS]
    for server, headers in ((tri, {}), (ours, AUTH)):
        HTTP.post(f"{server.url}/v2/repository/models/mlp/unload", headers=headers)
    try:
        assert answers(UNLOADED) == [(c[0], c[4], c[5]) for c in UNLOADED]
    finally:
        for server, headers in ((tri, {}), (ours, AUTH)):
            HTTP.post(f"{server.url}/v2/repository/models/mlp/load", headers=headers)


def test_instance_group_rules(servers):
    """KIND_CPU with GPUs: both refuse. count 0: both run one instance. KIND_GPU on a machine
    without a GPU: Triton refuses the model, rootml runs it on the CPU with one warning."""
    tri, ours = servers
    states = tri.states()
    assert "KIND_CPU but specifies one or more GPUs" in states[("cpu_with_gpus", 1)]
    assert "has kind KIND_GPU but no GPUs are available" in states[("on_gpu", 1)]
    assert states[("count_zero", 1)] == "READY"
    index = {e["name"]: e for e in HTTP.post(f"{ours.url}/v2/repository/index").json()}
    assert index["cpu_with_gpus"]["state"] == "UNAVAILABLE"
    assert "KIND_CPU but gpus [0]" in index["cpu_with_gpus"]["reason"]
    assert index["count_zero"]["state"] == index["on_gpu"]["state"] == "READY"
    metadata = HTTP.get(f"{ours.url}/v2/models/on_gpu").json()
    assert metadata["parameters"] == {
        "execution_provider": "CPUExecutionProvider",
        "device": "cpu",
        "instances": 1,
    }
    log = ours.log.read_text()
    assert log.count("model 'on_gpu' runs on the CPU") == 1
    # Both report the groups resolved: count 0 read as 1, KIND_CPU.
    for server in (tri, ours):
        group = HTTP.get(f"{server.url}/v2/models/count_zero/config").json()["instance_group"]
        assert [(g["kind"], g["count"]) for g in group] == [("KIND_CPU", 1)]
