"""The model repository: names, versions, ONNX validation, config.pbtxt, `rootml export --onnx`."""

from __future__ import annotations

import importlib.util
import io
import json
import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient
from google.protobuf import text_format

from rootml.cli import main as rootml_main
from rootml.errors import ModelError
from rootml.export import (
    add_onnx_model,
    check_model_name,
    format_config,
    list_models,
    list_versions,
    load_model,
    model_dir,
    next_version,
    parse_config,
    validate_onnx,
)

F = 5


def _model_config_pb2():
    # tritonclient ships the ModelConfig protobuf module inside its grpc package, whose __init__
    # needs grpcio; the generated module itself needs only protobuf, so load it by path.
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mlp_bytes() -> bytes:
    torch.manual_seed(0)

    class WithMask(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = torch.nn.Sequential(
                torch.nn.Linear(F, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
            )

        def forward(self, features, mask):
            return torch.softmax(self.net(features * mask.float()), dim=1)

    buffer = io.BytesIO()
    torch.onnx.export(
        WithMask().eval(),
        (torch.randn(2, F), torch.ones(2, F, dtype=torch.bool)),
        buffer,
        input_names=["features", "mask"],
        output_names=["score"],
        dynamic_axes={n: {0: "batch"} for n in ("features", "mask", "score")},
        dynamo=False,
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def sklearn_model(tmp_path_factory):
    from skl2onnx import to_onnx
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    model = LogisticRegression().fit(x, y)
    path = tmp_path_factory.mktemp("sk") / "lr.onnx"
    path.write_bytes(to_onnx(model, x[:1], options={"zipmap": False}).SerializeToString())
    return model, path


@pytest.mark.parametrize("name", ["tth", "ttH_v2.1", "a-b", "..x", "x.."])
def test_safe_names(name):
    assert check_model_name(name) == name


@pytest.mark.parametrize("name", [".", "..", "", "a/b", "../x", "a\\b", "x y", "/abs", "é", None])
def test_unsafe_names(tmp_path, name):
    with pytest.raises(ModelError, match="invalid model name"):
        check_model_name(name)
    with pytest.raises(ModelError):
        model_dir(tmp_path, name)


def test_versions_increase_and_never_overwrite(tmp_path, mlp_bytes):
    assert next_version(tmp_path, "m") == 1
    assert add_onnx_model(tmp_path, "m", mlp_bytes, {"labels": ["b", "s"]}) == 1
    first = (tmp_path / "m" / "1" / "model.onnx").read_bytes()
    (tmp_path / "m" / "5").mkdir()  # an empty numeric folder still takes its number
    (tmp_path / "m" / "notes").mkdir()
    assert list_versions(tmp_path, "m") == [1]
    assert add_onnx_model(tmp_path, "m", mlp_bytes) == 6
    assert list_versions(tmp_path, "m") == [1, 6]
    assert (tmp_path / "m" / "1" / "model.onnx").read_bytes() == first == mlp_bytes
    assert json.loads((tmp_path / "m" / "1" / "rootml.json").read_text()) == {
        "format": 1,
        "labels": ["b", "s"],
        "name": "m",
    }
    assert list_models(tmp_path) == ["m"]
    assert not [p for p in (tmp_path / "m").iterdir() if p.name.startswith("~")]


def test_links_out_of_the_repository_are_refused(tmp_path, mlp_bytes):
    outside, repo = tmp_path / "outside", tmp_path / "repo"
    add_onnx_model(outside, "m", mlp_bytes)
    repo.mkdir()
    (repo / "linked").symlink_to(outside / "m")
    assert list_models(repo) == []
    with pytest.raises(ModelError, match="outside"):
        load_model(repo, "linked")
    add_onnx_model(repo, "inner", mlp_bytes)
    (repo / "inner" / "2").mkdir()
    (repo / "inner" / "2" / "model.onnx").symlink_to(outside / "m" / "1" / "model.onnx")
    with pytest.raises(ModelError, match="outside"):
        load_model(repo, "inner", 2)


def _external(tmp_path: Path, mlp_bytes: bytes, location: str | None = None) -> Path:
    folder = tmp_path / "ext"
    folder.mkdir(exist_ok=True)
    proto = onnx.load_model_from_string(mlp_bytes)
    onnx.save_model(
        proto,
        folder / "model.onnx",
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    if location is not None:
        proto = onnx.load(folder / "model.onnx", load_external_data=False)
        for tensor in proto.graph.initializer:
            for entry in tensor.external_data:
                if entry.key == "location":
                    entry.value = location
        onnx.save_model(proto, folder / "model.onnx")
    return folder / "model.onnx"


@pytest.mark.parametrize("location", [None, "../../../etc/passwd", "/etc/passwd"])
def test_external_data_is_refused(tmp_path, mlp_bytes, location):
    path = _external(tmp_path, mlp_bytes, location)
    for model in (path, path.read_bytes()):
        with pytest.raises(ModelError, match="references external data"):
            validate_onnx(model)
    with pytest.raises(ModelError, match="external data"):
        add_onnx_model(tmp_path / "repo", "ext", path)
    assert not (tmp_path / "repo" / "ext").exists() or list_versions(tmp_path / "repo", "ext") == []


def test_invalid_models_are_refused(tmp_path, mlp_bytes):
    with pytest.raises(ModelError, match="not an ONNX model"):
        validate_onnx(b"\x0a\xff\xff garbage")
    proto = onnx.load_model_from_string(mlp_bytes)
    proto.graph.node[0].input[0] = "no_such_value"
    with pytest.raises(ModelError, match="onnx.checker"):
        validate_onnx(proto.SerializeToString())
    (tmp_path / "m.onnx").write_bytes(mlp_bytes)
    with pytest.raises(ModelError, match="outside"):
        validate_onnx(tmp_path / "m.onnx", model_folder=tmp_path / "sub")
    assert (
        validate_onnx(tmp_path / "m.onnx", model_folder=tmp_path).graph.input[0].name == "features"
    )


def test_config_pbtxt_parses_with_triton_protobuf_and_matches_graph(
    tmp_path, mlp_bytes, sklearn_model
):
    pb2 = _model_config_pb2()
    names = {pb2.DataType.Value(f"TYPE_{t}"): t for t in ("FP32", "BOOL", "INT64")}
    onnx_types = {"tensor(float)": "FP32", "tensor(bool)": "BOOL", "tensor(int64)": "INT64"}
    add_onnx_model(tmp_path, "mlp", mlp_bytes)
    add_onnx_model(tmp_path, "lr", sklearn_model[1])
    for name in ("mlp", "lr"):
        config = text_format.Parse(
            (tmp_path / name / "config.pbtxt").read_text(), pb2.ModelConfig()
        )
        session = ort.InferenceSession(str(tmp_path / name / "1" / "model.onnx"))
        assert config.name == name and config.platform == "onnxruntime_onnx"
        assert config.max_batch_size == 1024
        for entries, values in (
            (config.input, session.get_inputs()),
            (config.output, session.get_outputs()),
        ):
            assert [e.name for e in entries] == [v.name for v in values]
            for entry, value in zip(entries, values):
                assert names[entry.data_type] == onnx_types[value.type]
                # the batch dim is left out; a rank-1 output is dims [1] reshaped to []
                expected = list(value.shape[1:]) or [1]
                assert list(entry.dims) == expected
                assert entry.HasField("reshape") == (len(value.shape) == 1)


def test_config_reader_agrees_with_protobuf_on_handwritten_config():
    text = """
    # a Triton config as people write it
    name: "tth"
    platform: "onnxruntime_onnx"
    max_batch_size: 64
    input [
      { name: "features", data_type: TYPE_FP32, dims: [ 12 ] },
      { name: "mask" data_type: TYPE_BOOL dims: 12 }
    ]
    output { name: "score" data_type: TYPE_FP32 dims: [ 1 ] }
    dynamic_batching { max_queue_delay_microseconds: 500 preferred_batch_size: [ 8, 16 ] }
    version_policy: { latest: { num_versions: 2 } }
    instance_group [ { count: 2, kind: KIND_CPU } ]
    parameters { key: "note" value: { string_value: "say \\"hi\\"" } }
    """
    pb2 = _model_config_pb2()
    proto = text_format.Parse(text, pb2.ModelConfig())
    ours = parse_config(text)
    assert ours["name"] == proto.name and ours["max_batch_size"] == proto.max_batch_size
    assert [i["name"] for i in ours["input"]] == [i.name for i in proto.input]
    assert [i["dims"] for i in ours["input"]] == [list(i.dims) for i in proto.input]
    assert [i["data_type"] for i in ours["input"]] == [
        pb2.DataType.Name(i.data_type) for i in proto.input
    ]
    assert ours["dynamic_batching"] == {
        "max_queue_delay_microseconds": 500,
        "preferred_batch_size": [8, 16],
    }
    assert (
        ours["version_policy"]["latest"]["num_versions"]
        == proto.version_policy.latest.num_versions
        == 2
    )
    assert ours["instance_group"][0]["kind"] == "KIND_CPU"
    assert ours["parameters"][0]["value"]["string_value"] == proto.parameters["note"].string_value
    # what rootml writes, protobuf reads back to the same message
    again = text_format.Parse(format_config(ours), pb2.ModelConfig())
    assert again == proto
    assert parse_config(format_config(ours)) == ours
    with pytest.raises(ModelError):
        parse_config("input { name: ")


def test_kept_settings_and_load(tmp_path, mlp_bytes):
    add_onnx_model(
        tmp_path,
        "m",
        mlp_bytes,
        config={"dynamic_batching": {"max_queue_delay_microseconds": 100}, "max_batch_size": 32},
    )
    add_onnx_model(tmp_path, "m", mlp_bytes)
    config = parse_config((tmp_path / "m" / "config.pbtxt").read_text())
    assert config["dynamic_batching"] == {"max_queue_delay_microseconds": 100}
    assert config["max_batch_size"] == 32
    loaded = load_model(tmp_path, "m")
    assert loaded.version == 2 and loaded.max_batch_size == 32 and loaded.metadata is None
    assert [t.to_dict() for t in loaded.inputs] == [
        {"name": "features", "datatype": "FP32", "shape": [-1, F]},
        {"name": "mask", "datatype": "BOOL", "shape": [-1, F]},
    ]
    assert load_model(tmp_path, "m", 1).version == 1
    with pytest.raises(ModelError, match="no version 3"):
        load_model(tmp_path, "m", 3)
    add_onnx_model(tmp_path, "fixed", mlp_bytes, max_batch_size=0)
    assert parse_config((tmp_path / "fixed" / "config.pbtxt").read_text())["input"][0]["dims"] == [
        -1,
        F,
    ]


def test_cli_export_onnx_sklearn(tmp_path, sklearn_model, capsys):
    model, path = sklearn_model
    metadata = tmp_path / "meta.json"
    metadata.write_text(
        json.dumps({"labels": ["background", "signal"], "feature_names": ["a", "b", "c", "d"]})
    )
    repo = tmp_path / "models"
    argv = [
        "export",
        "--onnx",
        str(path),
        "--name",
        "lr",
        "--repo",
        str(repo),
        "--metadata",
        str(metadata),
    ]
    assert rootml_main(argv) == 0
    assert rootml_main(argv[:-2]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(repo / "lr" / "1" / "model.onnx"), str(repo / "lr" / "2" / "model.onnx")]
    loaded = load_model(repo, "lr", 1)
    assert loaded.metadata["labels"] == ["background", "signal"]
    x = np.random.default_rng(1).normal(size=(50, 4)).astype(np.float32)
    labels, probabilities = loaded.session.run(["label", "probabilities"], {"X": x})
    np.testing.assert_array_equal(labels, model.predict(x))
    np.testing.assert_allclose(probabilities, model.predict_proba(x), atol=1e-5)
    assert rootml_main(["export", "--name", "x", "--repo", str(repo)]) == 2
    assert rootml_main(["export", "--onnx", str(path), "--name", "../x", "--repo", str(repo)]) == 2
    assert sorted(os.listdir(repo)) == ["lr"]
