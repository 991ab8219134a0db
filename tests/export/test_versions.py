"""Each version carries its own rootml.json; the model's config.pbtxt is one signature for all its
versions; a refused change leaves the repository byte for byte as it was; old repositories with
a model-level rootml.json still load."""

from __future__ import annotations

import json
import logging
import stat
from pathlib import Path

import numpy as np
import pytest

from rootml.cli import main as rootml_main
from rootml.datasets import fit_specs
from rootml.errors import ModelError
from rootml.export import (
    add_onnx_model,
    export_run,
    format_config,
    graph_io,
    list_versions,
    load_model,
    make_config,
    validate_onnx,
)
from tests.conftest import HZZ, tree_digest
from tests.export._runs import BRANCHES, FLAT_MODEL, MASKED_MODEL, make_run
from tests.serve._physics_model import onnx_bytes
from tests.serve.conftest import mlp_onnx_bytes


@pytest.fixture(scope="module")
def specs():
    return fit_specs(str(HZZ), branches=BRANCHES, max_len=3)


@pytest.fixture(scope="module")
def runs(tmp_path_factory, specs) -> Path:
    base = tmp_path_factory.mktemp("runs")
    make_run(base / "masked", MASKED_MODEL, specs)
    make_run(base / "flat", FLAT_MODEL, specs)
    return base


def test_each_version_is_loaded_with_its_own_metadata(tmp_path, runs, capsys):
    repo = tmp_path / "models"
    argv = ["--name", "m", "--repo", str(repo)]
    assert rootml_main(["export", str(runs / "masked"), *argv]) == 0
    assert rootml_main(["export", str(runs / "masked"), *argv, "--fold-normalization"]) == 0
    # The graph of version 1, re-exported: it takes the rootml.json next to it.
    assert rootml_main(["export", "--onnx", str(repo / "m" / "1" / "model.onnx"), *argv]) == 0
    # The same graph with an explicit --metadata, and without any.
    other = tmp_path / "folded.json"
    other.write_text((repo / "m" / "2" / "rootml.json").read_text())
    graph = tmp_path / "graph.onnx"
    graph.write_bytes((repo / "m" / "2" / "model.onnx").read_bytes())
    assert rootml_main(["export", "--onnx", str(graph), "--metadata", str(other), *argv]) == 0
    assert rootml_main(["export", "--onnx", str(graph), *argv]) == 0
    capsys.readouterr()
    assert list_versions(repo, "m") == [1, 2, 3, 4, 5]
    assert not (repo / "m" / "rootml.json").exists()
    folded = {v: load_model(repo, "m", v).metadata for v in range(1, 6)}
    assert [None if m is None else m["normalization"]["folded"] for m in folded.values()] == [
        False,
        True,
        False,
        True,
        None,
    ]
    assert folded[3]["specs"] == folded[1]["specs"] and folded[3]["name"] == "m"
    assert load_model(repo, "m").version == 5 and load_model(repo, "m").metadata is None


def test_a_graph_with_other_inputs_is_refused_and_nothing_changes(tmp_path, runs):
    repo = tmp_path / "models"
    assert export_run(runs / "flat", repo, "m") == 1  # inputs: features
    before = tree_digest(repo)
    # The folded normalisation needs the mask: another signature, so another model.
    with pytest.raises(ModelError, match=r"input 'mask' is not in config.pbtxt") as err:
        export_run(runs / "flat", repo, "m", fold_normalization=True)
    assert "one signature per model" in str(err.value)
    with pytest.raises(ModelError, match="does not fit the model's config.pbtxt"):
        add_onnx_model(repo, "m", mlp_onnx_bytes(0))  # 6 features: another shape
    assert tree_digest(repo) == before
    assert export_run(runs / "flat", repo, "m_folded", fold_normalization=True) == 1
    assert export_run(runs / "flat", repo, "m") == 2  # the same signature is welcome


def test_config_stays_byte_identical_when_versions_are_added(tmp_path, runs):
    repo = tmp_path / "models"
    export_run(runs / "masked", repo, "m")
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text() + "# a comment by the user\n")
    text = config.read_text()
    export_run(runs / "masked", repo, "m", fold_normalization=True, max_batch_size=8)
    assert config.read_text() == text


@pytest.mark.parametrize(
    "metadata, config, words",
    [
        (None, {"dynamic_batching": {"preferred_batch_size": [100000000]}}, "preferred_batch_size"),
        (None, {"max_batch_size": -3}, "max_batch_size"),
        (None, {"version_policy": {"latest": {"num_versions": 0}}}, "num_versions"),
        (None, {"input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [99]}]}, "99"),
        ({"specs": {"format": 1, "branches": {"x": "y"}}}, None, "cannot read its specs"),
        ({"format": 7}, None, "unknown format"),
        ({"pad_value": float("nan")}, None, "pad_value"),
        ({"normalization": {"method": "log"}}, None, "normalization"),
    ],
)
def test_refused_changes_leave_the_repository_byte_identical(tmp_path, metadata, config, words):
    repo = tmp_path / "models"
    model = mlp_onnx_bytes(0)
    add_onnx_model(repo, "m", model, {"labels": ["b", "s"]})
    before = tree_digest(repo)
    with pytest.raises(ModelError, match=words):
        add_onnx_model(repo, "m", model, metadata, config=config)
    with pytest.raises(ModelError, match=words):
        add_onnx_model(repo, "new", model, metadata, config=config)
    assert tree_digest(repo) == before
    assert load_model(repo, "m").metadata["labels"] == ["b", "s"]


def _absurd_specs(specs, pad: int) -> dict:
    data = specs.to_dict()
    data["pad"] = {**data["pad"], "Jet_Px": pad}
    return data


def test_absurd_pad_lengths_are_refused_on_add_and_at_load(tmp_path, specs):
    repo = tmp_path / "models"
    model = onnx_bytes(len(specs.feature_names))
    with pytest.raises(ModelError, match=r"branch 'Jet_Px' has pad length 1000000000"):
        add_onnx_model(repo, "m", model, {"specs": _absurd_specs(specs, 10**9)})
    assert not repo.exists()
    add_onnx_model(repo, "m", model, {"specs": specs.to_dict()})
    # A rootml.json edited by hand is checked when the version loads.
    path = repo / "m" / "1" / "rootml.json"
    path.write_text(json.dumps({"specs": _absurd_specs(specs, 10**9)}))
    with pytest.raises(ModelError, match=r"version 1 of model 'm'.*pad length 1000000000"):
        load_model(repo, "m")
    path.write_text(json.dumps({"specs": _absurd_specs(specs, 3.5)}))
    with pytest.raises(ModelError, match="pad length 3.5"):
        load_model(repo, "m")


def test_versions_and_new_models_appear_whole_and_readable(tmp_path):
    repo = tmp_path / "models"
    assert add_onnx_model(repo, "m", mlp_onnx_bytes(0), {"labels": ["b", "s"]}) == 1
    assert add_onnx_model(repo, "m", mlp_onnx_bytes(1)) == 2
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "2", "config.pbtxt"]
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging folder left
    # Readable by other users (Triton in a container), not mkdtemp's owner-only 0o700.
    for path in [repo / "m", repo / "m" / "1", repo / "m" / "1" / "rootml.json"]:
        assert stat.S_IMODE(path.stat().st_mode) & 0o044 == 0o044, path


def legacy_repository(repo: Path, model: bytes, metadata: dict) -> None:
    """A model as rootml wrote it before per-version metadata: rootml.json next to config.pbtxt."""
    folder = repo / "m"
    for version in (1, 2):
        (folder / str(version)).mkdir(parents=True)
        (folder / str(version) / "model.onnx").write_bytes(model)
    config = make_config("m", *graph_io(validate_onnx(model)))
    (folder / "config.pbtxt").write_text(format_config(config))
    (folder / "rootml.json").write_text(json.dumps({"format": 1, **metadata, "name": "m"}))


def test_a_model_level_rootml_json_still_loads_and_moves_into_versions(tmp_path, caplog):
    repo = tmp_path / "models"
    model = mlp_onnx_bytes(0)
    legacy_repository(repo, model, {"labels": ["old"]})
    with caplog.at_level(logging.WARNING, logger="rootml.export.metadata"):
        assert load_model(repo, "m", 1).metadata["labels"] == ["old"]
        assert load_model(repo, "m", 2).metadata["labels"] == ["old"]
    assert "deprecated" in caplog.text and str(repo / "m" / "rootml.json") in caplog.text
    # A new version without metadata must not inherit it: it moves into versions 1 and 2 first.
    assert add_onnx_model(repo, "m", model) == 3
    assert not (repo / "m" / "rootml.json").exists()
    labels = {v: (load_model(repo, "m", v).metadata or {}).get("labels") for v in (1, 2, 3)}
    assert labels == {1: ["old"], 2: ["old"], 3: None}
    scores = [
        load_model(repo, "m", v).session.run(
            None, {"features": np.ones((1, 6), np.float32), "mask": np.ones((1, 6), bool)}
        )[0]
        for v in (1, 3)
    ]
    np.testing.assert_array_equal(scores[0], scores[1])
