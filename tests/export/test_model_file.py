"""config.pbtxt's default_model_filename (Triton's): a repository whose versions hold net.onnx
is read, served, added to, uploaded to and scored from, and a name that is not a plain file name
is refused. rootml itself keeps writing model.onnx."""

from __future__ import annotations

import asyncio

import numpy as np
import onnxruntime as ort
import pytest

from rootml.cli import main as rootml_main
from rootml.errors import BadRequest, ModelError
from rootml.export.model_config import model_file_name, validate_config
from rootml.export.repository import (
    add_onnx_model,
    list_versions,
    load_model,
    model_file,
    read_config,
)
from rootml.predict.run import open_model
from rootml.serve.app import repository_notice
from rootml.serve.models import ModelManager
from rootml.serve.upload import read_upload
from tests.conftest import tree_digest
from tests.serve.conftest import N_FEATURES, make_inputs, mlp_onnx_bytes, tar_gz

# A Triton repository as its users write it: the model file named in the config.
TRITON_CONFIG = f"""
name: "tagger"
platform: "onnxruntime_onnx"
default_model_filename: "net.onnx"
max_batch_size: 8
input [
  {{ name: "features", data_type: TYPE_FP32, dims: [ {N_FEATURES} ] }},
  {{ name: "mask", data_type: TYPE_BOOL, dims: [ {N_FEATURES} ] }}
]
output [ {{ name: "score", data_type: TYPE_FP32, dims: [ 1 ] }} ]
"""


def scores(model: bytes, inputs: dict) -> np.ndarray:
    return ort.InferenceSession(model, providers=["CPUExecutionProvider"]).run(None, inputs)[0]


@pytest.fixture(scope="module")
def models() -> tuple[bytes, bytes]:
    return mlp_onnx_bytes(seed=0), mlp_onnx_bytes(seed=1)


@pytest.fixture
def triton_repo(tmp_path, models):
    folder = tmp_path / "repo" / "tagger"
    (folder / "1").mkdir(parents=True)
    (folder / "config.pbtxt").write_text(TRITON_CONFIG)
    (folder / "1" / "net.onnx").write_bytes(models[0])
    return tmp_path / "repo"


def test_a_triton_repository_with_net_onnx_loads(triton_repo, models):
    assert model_file(triton_repo / "tagger") == "net.onnx"
    assert list_versions(triton_repo, "tagger") == [1]
    assert repository_notice(triton_repo) is None  # it holds a model
    loaded = load_model(triton_repo, "tagger")
    assert loaded.path == triton_repo / "tagger" / "1" / "net.onnx"
    inputs = make_inputs(6)
    np.testing.assert_array_equal(loaded.session.run(None, inputs)[0], scores(models[0], inputs))
    # predict finds the version folder by the same file
    model = open_model(str(triton_repo / "tagger" / "1"), threads=1)
    np.testing.assert_array_equal(model.run(inputs)["score"], scores(models[0], inputs))


def test_a_version_added_to_it_is_written_as_net_onnx(triton_repo, models, capsys, tmp_path):
    config_before = (triton_repo / "tagger" / "config.pbtxt").read_bytes()
    assert add_onnx_model(triton_repo, "tagger", models[1]) == 2
    assert (triton_repo / "tagger" / "2" / "net.onnx").read_bytes() == models[1]
    assert not (triton_repo / "tagger" / "2" / "model.onnx").exists()
    assert (triton_repo / "tagger" / "config.pbtxt").read_bytes() == config_before
    # the CLI prints the file it wrote
    onnx = tmp_path / "x.onnx"
    onnx.write_bytes(models[1])
    argv = ["export", "--onnx", str(onnx), "--repo", str(triton_repo), "--name", "tagger"]
    assert rootml_main(argv) == 0
    assert capsys.readouterr().out.strip() == str(triton_repo / "tagger" / "3" / "net.onnx")
    # a new model is written with model.onnx
    add_onnx_model(triton_repo, "plain", models[0])
    assert (triton_repo / "plain" / "1" / "model.onnx").is_file()
    assert model_file(triton_repo / "plain") == "model.onnx"


def test_the_server_serves_polls_and_indexes_it(triton_repo, models):
    inputs = make_inputs(3)

    async def scenario():
        manager = ModelManager(triton_repo)
        try:
            await manager.load_all()
            assert manager.index() == [
                {"name": "tagger", "version": "1", "state": "READY", "reason": ""}
            ]
            served = manager.get("tagger")
            got = (await manager.infer(served, inputs))["score"]
            np.testing.assert_array_equal(got, scores(models[0], inputs))
            # a new version's net.onnx is seen by a poll
            (triton_repo / "tagger" / "2").mkdir()
            (triton_repo / "tagger" / "2" / "net.onnx").write_bytes(models[1])
            await manager.poll()
            assert manager.loaded() == {"tagger": [1, 2]}
            got = (await manager.infer(manager.get("tagger"), inputs))["score"]
            np.testing.assert_array_equal(got, scores(models[1], inputs))
        finally:
            await manager.close()

    asyncio.run(scenario())


def test_a_config_that_renames_the_model_file_of_versions_is_refused(triton_repo, models):
    before = tree_digest(triton_repo)
    for config in ({"default_model_filename": "model.onnx"}, {"default_model_filename": ""}):
        with pytest.raises(ModelError, match="'net.onnx'"):
            add_onnx_model(triton_repo, "tagger", models[1], config=config)
    assert tree_digest(triton_repo) == before
    # the same name is fine, and is kept in the config
    add_onnx_model(triton_repo, "tagger", models[1], config={"default_model_filename": "net.onnx"})
    assert read_config(triton_repo / "tagger")["default_model_filename"] == "net.onnx"


@pytest.mark.parametrize(
    "name", ["../net.onnx", "a/net.onnx", "..", ".hidden", "rootml.json", "config.pbtxt", 7]
)
def test_names_that_are_not_plain_file_names_are_refused(name, triton_repo, models):
    with pytest.raises(ModelError, match="default_model_filename"):
        model_file_name({"default_model_filename": name})
    with pytest.raises(ModelError, match="default_model_filename"):
        validate_config({"default_model_filename": name})
    with pytest.raises(ModelError, match="default_model_filename"):
        add_onnx_model(triton_repo, "other", models[0], config={"default_model_filename": name})
    assert not (triton_repo / "other").exists()
    # a repository's config saying so does not load, and nothing outside is read
    config = triton_repo / "tagger" / "config.pbtxt"
    config.write_text(TRITON_CONFIG.replace('"net.onnx"', repr(name).replace("'", '"')))
    with pytest.raises(ModelError, match="default_model_filename"):
        load_model(triton_repo, "tagger")


def test_an_upload_takes_the_file_its_config_names(models, tmp_path):
    archive = tar_gz({"tagger/config.pbtxt": TRITON_CONFIG.encode(),
                      "tagger/1/net.onnx": models[0]})  # fmt: skip
    files = read_upload(archive, 1 << 24)
    assert files.onnx == models[0] and files.config["default_model_filename"] == "net.onnx"
    version = add_onnx_model(tmp_path, "tagger", files.onnx, config=files.config)
    assert (tmp_path / "tagger" / str(version) / "net.onnx").read_bytes() == models[0]
    assert list_versions(tmp_path, "tagger") == [1]
    # the file the config names must be there, and no other model file
    for members in (
        {"config.pbtxt": TRITON_CONFIG.encode(), "1/model.onnx": models[0]},
        {"config.pbtxt": TRITON_CONFIG.encode()},
        {"1/net.onnx": models[0]},  # without the config the file is model.onnx
    ):
        with pytest.raises(BadRequest, match="net.onnx|model.onnx"):
            read_upload(tar_gz(members), 1 << 24)
    bad = TRITON_CONFIG.replace('"net.onnx"', '"../x"').encode()
    with pytest.raises(BadRequest, match="default_model_filename"):
        read_upload(tar_gz({"config.pbtxt": bad, "1/model.onnx": models[0]}), 1 << 24)
