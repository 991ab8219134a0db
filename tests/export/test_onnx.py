"""Export of a training run: torch vs onnxruntime parity (flat and collection layouts), folded
normalisation, config.pbtxt against the graph, versions, refused exports, `rootml export RUN`.

Run folders are written here by hand following the checkpoint contract (not by rootml train), so
these tests depend only on the contract.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import textwrap
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import tritonclient
import uproot
from google.protobuf import text_format

from rootml.cli import main as rootml_main
from rootml.datasets import RootIterableDataset, fit_specs
from rootml.errors import ModelError
from rootml.export import export_run, graph_io, list_versions, load_model, read_config
from rootml.transforms import CollectionLayout, FlatLayout, Specs
from tests.conftest import HZZ
from tests.export._runs import (
    BRANCHES,
    FLAT_MODEL,
    LABELS,
    MASKED_MODEL,
    ROWS,
    import_model,
    make_run,
)

# DeepSets over each collection: per item a small net on its C channels, a masked mean over
# items, then a head on those and the flat features. ByName takes the inputs by name (without
# the flat mask), ByDict one dict of all inputs, ByPosition all inputs in layout order.
COLLECTION_MODEL = """
import torch

class DeepSets(torch.nn.Module):
    def __init__(self, inputs):
        super().__init__()
        self.keys = [k for k in inputs if k != "features"]
        self.phi = torch.nn.ModuleDict(
            {k: torch.nn.Sequential(torch.nn.Linear(inputs[k][0], 8), torch.nn.ReLU())
             for k in self.keys}
        )
        self.head = torch.nn.Sequential(
            torch.nn.Linear(inputs["features"][0] + 8 * len(self.keys), 16), torch.nn.ReLU(),
            torch.nn.Linear(16, 1),
        )

    def pooled(self, inputs):
        parts = [inputs["features"]]
        for k in self.keys:
            items = self.phi[k](inputs[k].transpose(1, 2))  # (B, N, 8)
            weight = inputs[k + "_mask"].float().unsqueeze(2)
            parts.append((items * weight).sum(1) / weight.sum(1).clamp(min=1.0))
        return self.head(torch.cat(parts, dim=1))

class ByName(DeepSets):
    def forward(self, features, Jet, Jet_mask, Muon, Muon_mask):
        return self.pooled(dict(features=features, Jet=Jet, Jet_mask=Jet_mask, Muon=Muon,
                                Muon_mask=Muon_mask))

class ByDict(DeepSets):
    def forward(self, inputs):
        return self.pooled(inputs)

class ByPosition(DeepSets):
    def forward(self, x, m, jet, jet_mask, muon, muon_mask):
        return self.pooled(dict(features=x, Jet=jet, Jet_mask=jet_mask, Muon=muon,
                                Muon_mask=muon_mask))

def model(inputs):
    return {cls}(inputs)
"""

# Tracing freezes float(...) as a constant of the tracing batch: the graph is wrong on others.
TRACE_TRAP_MODEL = """
import torch

class Trap(torch.nn.Module):
    def __init__(self, idim):
        super().__init__()
        self.net = torch.nn.Linear(idim, 1)

    def forward(self, features):
        return self.net(features) * float(features.mean())

def model(idim):
    return Trap(idim)
"""


@pytest.fixture(scope="module")
def specs():
    return fit_specs(str(HZZ), branches=BRANCHES, max_len=3)


def raw_flat(specs, rows: int = ROWS) -> dict[str, np.ndarray]:
    """The first `rows` entries of HZZ in the flat layout, not normalised."""
    ds = RootIterableDataset(str(HZZ), branches=BRANCHES, specs=specs, batch_size=rows)
    batch = next(iter(ds))
    return {"features": batch["features"].numpy(), "mask": batch["mask"].numpy()}


def raw_collection(specs, rows: int = ROWS) -> dict[str, np.ndarray]:
    """The first `rows` entries of HZZ in the collection layout, read with uproot."""
    chunk = uproot.open(HZZ)["events"].arrays(BRANCHES, entry_stop=rows)
    block = CollectionLayout(specs)({name: chunk[name] for name in BRANCHES})
    block.pop("stats")
    return block


def normalise(specs, block: dict, method: str = "standard") -> dict[str, np.ndarray]:
    """Plain numpy normalisation per branch, pad stays 0 (the reference for the graph)."""
    stats = {}
    for name, spec in specs.branches.items():
        offset, scale = (
            (spec.mean, spec.std) if method == "standard" else (spec.min, spec.max - spec.min)
        )
        stats[name] = (offset, scale if scale > 0 else 1.0)
    out = dict(block)
    if any(key.endswith("_mask") for key in block):  # collection layout
        layout = CollectionLayout(specs)
        columns = [c.branch for c in layout.flat.columns for _ in range(c.width)]
        branches = {"features": columns, **layout.collections}
    else:
        branches = {"features": [c.branch for c in specs.columns() for _ in range(c.width)]}
    for key, names in branches.items():
        offset = np.array([stats[b][0] for b in names])
        scale = np.array([stats[b][1] for b in names])
        mask = block["mask" if key == "features" else f"{key}_mask"]
        if key != "features":
            offset, scale, mask = offset[:, None], scale[:, None], mask[:, None, :]
        values = (block[key].astype(np.float64) - offset) / scale
        out[key] = np.where(mask, values, 0.0).astype(np.float32)
    return out


def torch_scores(model, inputs: dict, **names) -> np.ndarray:
    with torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in inputs.items()}
        return model(*[tensors[n] for n in names["args"]]).numpy()


def session(repo: Path, name: str, version: int | None = None) -> ort.InferenceSession:
    return load_model(repo, name, version).session


def run_onnx(sess: ort.InferenceSession, block: dict) -> np.ndarray:
    return sess.run(["score"], {i.name: block[i.name] for i in sess.get_inputs()})[0]


def _model_config_pb2():
    # The generated ModelConfig module, loaded by path: tritonclient's grpc package needs grpcio.
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2_export", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flat_parity_metadata_and_config(tmp_path, specs):
    summary = {"events_per_s": 1234.5, "final": {"val_auc": 0.8}}
    model = make_run(tmp_path / "run", FLAT_MODEL, specs, summary=summary)
    repo = tmp_path / "models"
    assert export_run(tmp_path / "run", repo, "flat") == 1

    loaded = load_model(repo, "flat")
    names = specs.feature_names
    assert [(s.name, s.datatype, s.shape) for s in loaded.inputs] == [
        ("features", "FP32", (-1, len(names)))
    ]
    assert [(s.name, s.datatype, s.shape) for s in loaded.outputs] == [("score", "FP32", (-1, 1))]
    inputs = normalise(specs, raw_flat(specs))
    expected = torch_scores(model, inputs, args=["features"])
    got = run_onnx(loaded.session, inputs)
    assert got.shape == (ROWS, 1)
    assert np.abs(got - expected).max() < 1e-5
    assert np.ptp(got) > 1e-3  # the inputs reach the scores

    meta = loaded.metadata
    assert meta["format"] == 1 and meta["name"] == "flat" and meta["layout"] == "flat"
    assert meta["feature_names"] == names
    assert meta["normalization"] == {"method": "standard", "folded": False}
    assert meta["specs"] == json.loads(json.dumps(specs.to_dict()))
    assert meta["labels"] == LABELS and meta["pad_value"] == 0.0
    assert meta["tree"] == "events" and meta["branches"] == specs.fingerprint["branches"]
    assert meta["training"]["summary"] == summary
    assert meta["training"]["epoch"] == 2
    assert meta["training"]["metrics"] == {"loss": 0.5, "auc": 0.75, "val_auc": None}
    json.loads((repo / "flat" / "1" / "rootml.json").read_text(), parse_constant=pytest.fail)
    assert not (repo / "flat" / "rootml.json").exists()  # metadata belongs to the version
    assert meta["versions"]["torch"] == torch.__version__
    assert meta["versions"]["onnx"] == onnx.__version__ and meta["versions"]["opset"] == 17
    parity = meta["parity"]
    assert parity["data"] == "training data" and parity["rows"] == 4 * 256
    assert 0 <= parity["max_abs_diff"] <= parity["tolerance"] == 1e-5

    # config.pbtxt: Triton's own protobuf reads it, and it says what the graph says.
    folder = repo / "flat"
    pb2 = _model_config_pb2()
    config = text_format.Parse((folder / "config.pbtxt").read_text(), pb2.ModelConfig())
    proto = onnx.load(folder / "1" / "model.onnx")
    assert proto.opset_import[0].version == 17
    graph_inputs, graph_outputs = graph_io(proto)
    assert config.platform == "onnxruntime_onnx" and config.max_batch_size == 1024
    for entries, tensors in ((config.input, graph_inputs), (config.output, graph_outputs)):
        assert [e.name for e in entries] == [t.name for t in tensors]
        assert [list(e.dims) for e in entries] == [list(t.shape[1:]) for t in tensors]
        assert [pb2.DataType.Name(e.data_type) for e in entries] == ["TYPE_FP32"] * len(tensors)
    assert read_config(folder)["input"][0]["dims"] == [len(names)]


def test_flat_mask_model_minmax(tmp_path, specs):
    model = make_run(tmp_path / "run", MASKED_MODEL, specs, normalize="minmax")
    repo = tmp_path / "models"
    export_run(tmp_path / "run", repo, "masked", opset=18)
    loaded = load_model(repo, "masked")
    assert [(s.name, s.datatype) for s in loaded.inputs] == [("features", "FP32"), ("mask", "BOOL")]
    assert loaded.outputs[0].shape == (-1, 2)
    raw = raw_flat(specs)
    assert not raw["mask"].all()  # padding is exercised
    inputs = normalise(specs, raw, "minmax")
    expected = torch_scores(model, inputs, args=["features", "mask"])
    assert np.abs(run_onnx(loaded.session, inputs) - expected).max() < 1e-5
    assert loaded.metadata["normalization"] == {"method": "minmax", "folded": False}
    assert onnx.load(repo / "masked" / "1" / "model.onnx").opset_import[0].version == 18


def test_fold_normalization_takes_raw_values(tmp_path, specs):
    make_run(tmp_path / "run", MASKED_MODEL, specs)
    repo = tmp_path / "models"
    export_run(tmp_path / "run", repo, "plain")
    export_run(tmp_path / "run", repo, "folded", fold_normalization=True)
    folded = load_model(repo, "folded")
    assert folded.metadata["normalization"] == {"method": "standard", "folded": True}
    assert [s.name for s in folded.inputs] == ["features", "mask"]

    raw = raw_flat(specs)
    on_normalised = run_onnx(session(repo, "plain"), normalise(specs, raw))
    on_raw = run_onnx(folded.session, raw)
    assert np.abs(on_raw - on_normalised).max() < 1e-5
    # Whatever a client puts where the mask is False, the folded graph sees pad_value there.
    junk = dict(raw, features=np.where(raw["mask"], raw["features"], 999.0).astype(np.float32))
    assert np.abs(run_onnx(folded.session, junk) - on_raw).max() < 1e-6


@pytest.mark.parametrize("cls, fold", [("ByName", False), ("ByDict", True), ("ByPosition", False)])
def test_collection_parity(tmp_path, specs, cls, fold):
    model = make_run(
        tmp_path / "run", COLLECTION_MODEL.replace("{cls}", cls), specs, layout="collection"
    )
    repo = tmp_path / "models"
    export_run(tmp_path / "run", repo, "sets", fold_normalization=fold)
    loaded = load_model(repo, "sets")
    shapes = {s.name: (s.datatype, s.shape) for s in loaded.inputs}
    expected_inputs = {
        "features": ("FP32", (-1, 2)),
        "Jet": ("FP32", (-1, 3, 3)),
        "Jet_mask": ("BOOL", (-1, 3)),
        "Muon": ("FP32", (-1, 2, 3)),
        "Muon_mask": ("BOOL", (-1, 3)),
    }
    if fold:  # the folded normalisation keeps the flat features' padding through their mask
        expected_inputs["mask"] = ("BOOL", (-1, 2))
    assert shapes == expected_inputs
    meta = loaded.metadata
    assert meta["layout"] == "collection" and meta["feature_names"] == ["MET_px", "MET_py"]
    assert meta["collections"] == {
        "Jet": {"branches": ["Jet_Px", "Jet_Py", "Jet_E"], "length": 3},
        "Muon": {"branches": ["Muon_Px", "Muon_Py"], "length": 3},
    }
    assert meta["parity"]["data"] == "training data"
    assert meta["parity"]["max_abs_diff"] <= 1e-5

    raw = raw_collection(specs)
    normalised = normalise(specs, raw)
    with torch.no_grad():
        tensors = {k: torch.from_numpy(v) for k, v in normalised.items()}
        if cls == "ByDict":
            expected = model(tensors).numpy()
        elif cls == "ByPosition":
            order = ["features", "mask", "Jet", "Jet_mask", "Muon", "Muon_mask"]
            expected = model(*[tensors[k] for k in order]).numpy()
        else:
            expected = model(**{k: v for k, v in tensors.items() if k != "mask"}).numpy()
    got = run_onnx(loaded.session, raw if fold else normalised)
    assert np.abs(got - expected).max() < 1e-5
    assert np.ptp(got) > 1e-3


def test_state_saved_from_a_ddp_wrapper(tmp_path, specs):
    model = make_run(tmp_path / "run", MASKED_MODEL, specs)
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    wrapped = {f"module.{k}": v for k, v in checkpoint["model_state"].items()}
    torch.save({**checkpoint, "model_state": wrapped}, tmp_path / "run" / "checkpoint.pt")
    export_run(tmp_path / "run", tmp_path / "models", "ddp")
    inputs = normalise(specs, raw_flat(specs))
    expected = torch_scores(model, inputs, args=["features", "mask"])
    got = run_onnx(session(tmp_path / "models", "ddp"), inputs)
    assert np.abs(got - expected).max() < 1e-5


def test_versions_increase_and_never_overwrite(tmp_path, specs):
    make_run(tmp_path / "run", MASKED_MODEL, specs)
    repo = tmp_path / "models"
    assert export_run(tmp_path / "run", repo, "m") == 1
    first = (repo / "m" / "1" / "model.onnx").read_bytes()
    digest = hashlib.sha256(first).hexdigest()
    assert export_run(tmp_path / "run", repo, "m", fold_normalization=True) == 2
    epoch_file = tmp_path / "run" / "checkpoints" / "epoch_001.pt"
    assert export_run(epoch_file, repo, "m") == 3
    assert list_versions(repo, "m") == [1, 2, 3]
    assert hashlib.sha256((repo / "m" / "1" / "model.onnx").read_bytes()).hexdigest() == digest
    # Each version keeps the rootml.json of its own export.
    meta = load_model(repo, "m").metadata
    assert meta["training"]["checkpoint"] == str(epoch_file) and meta["training"]["epoch"] == 1
    assert meta["training"]["run"] == str(tmp_path / "run")
    folded = {v: load_model(repo, "m", v).metadata["normalization"]["folded"] for v in (1, 2, 3)}
    assert folded == {1: False, 2: True, 3: False}
    assert load_model(repo, "m", 1).metadata["training"]["epoch"] == 2


def test_parity_failure_writes_nothing(tmp_path, specs):
    make_run(tmp_path / "run", TRACE_TRAP_MODEL, specs, normalize=None)
    repo = tmp_path / "models"
    with pytest.warns(torch.jit.TracerWarning), pytest.raises(ModelError, match="parity check"):
        export_run(tmp_path / "run", repo, "trap")
    assert not (repo / "trap").exists()
    # The same model exported with a huge tolerance shows the difference was real.
    with pytest.warns(torch.jit.TracerWarning):
        export_run(tmp_path / "run", repo, "trap", tolerance=1e9)
    assert load_model(repo, "trap").metadata["parity"]["max_abs_diff"] > 1e-3


def test_fallback_to_random_inputs_when_files_are_gone(tmp_path):
    copy = tmp_path / "gone.root"
    shutil.copy(HZZ, copy)
    specs = fit_specs(str(copy), branches=BRANCHES, max_len=3)
    copy.unlink()
    model = make_run(tmp_path / "run", MASKED_MODEL, specs)
    repo = tmp_path / "models"
    export_run(tmp_path / "run", repo, "m", parity_batches=2, parity_batch_size=100)
    parity = load_model(repo, "m").metadata["parity"]
    assert parity["data"] == "random" and str(copy) in parity["reason"]
    assert parity["rows"] == 200 and parity["max_abs_diff"] <= 1e-5
    # The graph is still right on real data.
    inputs = normalise(specs, raw_flat(fit_specs(str(HZZ), branches=BRANCHES, max_len=3)))
    expected = torch_scores(model, inputs, args=["features", "mask"])
    assert np.abs(run_onnx(session(repo, "m"), inputs) - expected).max() < 1e-5


def test_bad_runs_are_refused(tmp_path, specs):
    repo = tmp_path / "models"
    with pytest.raises(ModelError, match="no training run"):
        export_run(tmp_path / "nowhere", repo, "m")
    make_run(tmp_path / "run", FLAT_MODEL, specs, normalize=None)
    with pytest.raises(ModelError, match="nothing to fold"):
        export_run(tmp_path / "run", repo, "m", fold_normalization=True)
    with pytest.raises(ModelError, match="invalid model name"):
        export_run(tmp_path / "run", repo, "../m")
    checkpoint = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    checkpoint["model_args"] = {"idim": 3}
    torch.save(checkpoint, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ModelError, match="does not fit the model"):
        export_run(tmp_path / "run", repo, "m")
    assert not repo.exists()


def test_cli_export_run(tmp_path, specs, capsys):
    model = make_run(tmp_path / "run", MASKED_MODEL, specs)
    repo = tmp_path / "models"
    argv = ["export", str(tmp_path / "run"), "--name", "cli", "--repo", str(repo)]
    assert rootml_main([*argv, "--fold-normalization", "--opset", "16"]) == 0
    assert rootml_main(argv) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(repo / "cli" / "1" / "model.onnx"), str(repo / "cli" / "2" / "model.onnx")]
    assert onnx.load(repo / "cli" / "1" / "model.onnx").opset_import[0].version == 16
    raw = raw_flat(specs)
    expected = torch_scores(model, normalise(specs, raw), args=["features", "mask"])
    assert np.abs(run_onnx(session(repo, "cli", 1), raw) - expected).max() < 1e-5

    assert rootml_main([*argv[:2], "--name", "x/y", "--repo", str(repo)]) == 2
    assert rootml_main(["export", str(tmp_path / "none"), "--name", "z", "--repo", str(repo)]) == 2
    assert rootml_main([*argv, "--onnx", str(repo / "cli" / "1" / "model.onnx")]) == 2
    assert "error" in capsys.readouterr().err
    assert list_versions(repo, "cli") == [1, 2] and sorted(p.name for p in repo.iterdir()) == [
        "cli"
    ]


def test_export_a_real_rootml_train_run(tmp_path, capsys):
    # Two copies of HZZ as "signal" and "background": the run folder, checkpoint and Specs are
    # written by `rootml train` itself; what the model learns does not matter here.
    files = [tmp_path / "signal.root", tmp_path / "background.root"]
    for path in files:
        shutil.copy(HZZ, path)
    (tmp_path / "labels.txt").write_text("1\n0\n")
    (tmp_path / "model.py").write_text(textwrap.dedent(MASKED_MODEL))
    params = {
        "epochs": 1,
        "batch_size": 256,
        "chunk_size": 1000,
        "selected_branches": ["MET_px", "MET_py", "Jet_Px", "Jet_Py"],
        "max_len": 3,
        "val_fraction": 0.25,
        "device": "cpu",
        "seed": 1,
    }
    (tmp_path / "params.json").write_text(json.dumps(params))
    run = tmp_path / "run"
    argv = [
        "train", "--files", *map(str, files), "--labels", str(tmp_path / "labels.txt"),
        "--model", str(tmp_path / "model.py"), "--params", str(tmp_path / "params.json"),
        "--out", str(run),
    ]  # fmt: skip
    assert rootml_main(argv) == 0
    repo = tmp_path / "models"
    export = ["export", str(run), "--name", "trained", "--repo", str(repo)]
    assert rootml_main([*export, "--fold-normalization"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(repo / "trained" / "1" / "model.onnx")

    loaded = load_model(repo, "trained")
    meta = loaded.metadata
    checkpoint = torch.load(run / "checkpoint.pt", weights_only=False)
    specs = Specs.load(run / "specs.json")
    assert meta["feature_names"] == checkpoint["feature_names"] == specs.feature_names
    assert meta["normalization"] == {"method": "standard", "folded": True}
    assert meta["parity"]["data"] == "training data" and meta["parity"]["max_abs_diff"] <= 1e-5
    assert meta["training"]["summary"] == json.loads((run / "summary.json").read_text())
    # The trained weights, rebuilt here from model.py, on numpy-normalised HZZ entries, against
    # the folded graph on the raw values.
    model = import_model(run / "model.py")(**checkpoint["model_args"])
    model.load_state_dict(checkpoint["model_state"])
    chunk = uproot.open(HZZ)["events"].arrays(["MET_px", "MET_py", "Jet_Px", "Jet_Py"])
    raw = FlatLayout(specs.columns())({k: chunk[k] for k in chunk.fields})
    raw.pop("stats")
    expected = torch_scores(model.eval(), normalise(specs, raw), args=["features", "mask"])
    got = run_onnx(loaded.session, raw)
    assert got.shape == (2421, 2) and np.abs(got - expected).max() < 1e-5
