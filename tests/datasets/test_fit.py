"""fit_specs against numpy statistics of uproot's arrays; stale Specs refused; the CLI."""

from __future__ import annotations

import json

import awkward as ak
import numpy as np
import pytest
import uproot

from rootml import RootIterableDataset, Specs, SpecsMismatch, fit_specs
from rootml.cli import main
from rootml.datasets._fit import _sample
from rootml.datasets._plan import Unit
from tests.conftest import DATA, HZZ, RNTUPLE

HZZ_LZ4 = DATA / "uproot-HZZ-lz4.root"


def assert_specs_equal_numpy(specs: Specs, arrays: dict[str, ak.Array]) -> None:
    for name, spec in specs.branches.items():
        values = arrays[name]
        if values.ndim > 1:
            assert spec.kind == "jagged"
            assert spec.multiplicity == np.bincount(ak.to_numpy(ak.num(values))).tolist()
            values = ak.flatten(values)
        values = np.asarray(values, dtype=np.float64).reshape(-1)
        assert spec.count == values.size and spec.nonfinite == 0, name
        if values.size:
            assert (spec.min, spec.max) == (values.min(), values.max()), name
            assert spec.mean == pytest.approx(values.mean(), rel=1e-12, abs=1e-12), name
            assert spec.std == pytest.approx(values.std(), rel=1e-12, abs=1e-12), name


def test_fit_specs_hzz_equals_numpy() -> None:
    specs = fit_specs(str(HZZ), chunk_size=700)
    tree = uproot.open(HZZ)["events"]
    arrays = tree.arrays(list(specs.branches), how=dict)
    assert specs.entries == tree.num_entries
    assert_specs_equal_numpy(specs, arrays)
    assert specs.pad["Jet_Px"] == max(ak.num(arrays["Jet_Px"]))
    ds = RootIterableDataset(str(HZZ), specs=specs)  # same inputs: accepted
    assert ds.feature_names == specs.feature_names


def test_two_files_in_parallel_with_cut_alias_and_quantile() -> None:
    aliases = {"Jet_pt": "sqrt(Jet_Px**2 + Jet_Py**2)"}
    kwargs = dict(branches=["Jet_*", "MET_px"], cut="NJet >= 1", aliases=aliases)
    specs = fit_specs([str(HZZ), str(HZZ_LZ4)], max_len={"Jet": 0.9}, chunk_size=500, **kwargs)
    names = list(specs.branches)
    parts = [
        uproot.open(path)["events"].arrays(names, "NJet >= 1", aliases=aliases)
        for path in (HZZ, HZZ_LZ4)
    ]
    arrays = {name: ak.concatenate([p[name] for p in parts]) for name in parts[0].fields}
    assert list(specs.branches)[-1] == "Jet_pt" and specs.branches["Jet_pt"].kind == "jagged"
    assert specs.entries == len(arrays["MET_px"])
    assert_specs_equal_numpy(specs, arrays)
    counts = ak.to_numpy(ak.num(arrays["Jet_Px"]))
    assert specs.pad["Jet_pt"] == int(np.quantile(counts, 0.9, method="inverted_cdf"))
    assert specs.fingerprint["cut"] == "NJet >= 1"
    assert RootIterableDataset([str(HZZ), str(HZZ_LZ4)], specs=specs, **kwargs).specs is specs


def test_rntuple_fit() -> None:
    specs = fit_specs(str(RNTUPLE), branches=["nMuon", "Muon_pt", "Muon_charge"])
    arrays = uproot.open(RNTUPLE)["Events"].arrays(["nMuon", "Muon_pt", "Muon_charge"], how=dict)
    assert_specs_equal_numpy(specs, arrays)


def test_stale_specs_refused_unless_reused() -> None:
    specs = fit_specs(str(HZZ), branches=["Jet_Px", "MET_px"], max_len=2)
    with pytest.raises(SpecsMismatch, match="files"):
        RootIterableDataset(str(HZZ_LZ4), branches=["Jet_Px", "MET_px"], specs=specs)
    with pytest.raises(SpecsMismatch, match="cut"):
        RootIterableDataset(str(HZZ), branches=["Jet_Px", "MET_px"], cut="NJet > 0", specs=specs)
    with pytest.raises(SpecsMismatch, match="branches"):
        RootIterableDataset(str(HZZ), branches=["Jet_Px"], specs=specs)
    ds = RootIterableDataset(
        str(HZZ_LZ4), branches=["Jet_Px", "MET_px"], specs=specs, reuse_specs=True,
        normalize="standard",
    )  # fmt: skip
    assert ds.feature_names == ["Jet_Px[0]", "Jet_Px[1]", "MET_px"]
    batch = next(iter(ds))
    assert batch["features"].shape == (1024, 3)


def test_sample_of_units_is_seeded_and_exact() -> None:
    units = [Unit(f, a, a + 100) for f in range(3) for a in range(0, 1000, 100)]
    first = _sample(units, 450, seed=1)
    assert first == _sample(units, 450, seed=1) != _sample(units, 450, seed=2)
    assert sum(u.stop - u.start for u in first) == 450
    assert first == sorted(first) and all(
        any(u.file == v.file and v.start == u.start and u.stop <= v.stop for v in units)
        for u in first
    )
    specs = fit_specs(str(HZZ), branches=["MET_px"], nevts=700, seed=3)
    assert specs.entries == 700
    assert specs.to_dict() == fit_specs(str(HZZ), branches=["MET_px"], nevts=700, seed=3).to_dict()


def test_cli_specs_writes_json_that_loads(tmp_path, capsys) -> None:
    out = tmp_path / "specs.json"
    argv = ["specs", str(HZZ), "--branches", "Jet_P*", "MET_px", "--cut", "NJet >= 2"]
    assert main([*argv, "--max-len", "Jet=3", "--nevts", "2000", "-o", str(out)]) == 0
    assert "specs.json" in capsys.readouterr().out
    loaded = Specs.load(out)
    direct = fit_specs(
        str(HZZ), branches=["Jet_P*", "MET_px"], cut="NJet >= 2", nevts=2000, max_len={"Jet": 3}
    )
    assert loaded.to_dict() == json.loads(json.dumps(direct.to_dict()))
    assert loaded.pad == {"Jet_Px": 3, "Jet_Py": 3, "Jet_Pz": 3}


def test_cli_inspect_hist_writes_pngs(tmp_path, capsys) -> None:
    out = tmp_path / "hist"
    argv = ["inspect", str(HZZ), str(HZZ_LZ4), "--hist", str(out), "--labels", "bkg", "sig"]
    assert main([*argv, "--branches", "Jet_Px", "MET_px", "--bins", "20"]) == 0
    assert "2 histograms" in capsys.readouterr().out
    for name in ("Jet_Px.png", "MET_px.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    specs = Specs.load(out / "specs.json")
    assert specs.entries == 2 * 2421
