"""fit(): training through rootml equals training the same events outside it (plain uproot +
numpy + a TensorDataset); a run stopped inside an epoch and resumed equals an uninterrupted one."""

from __future__ import annotations

import logging
import warnings

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from rootml import RootIterableDataset
from rootml.datasets import fit_specs
from rootml.errors import ModelError
from rootml.train import fit, load_checkpoint

from ._outside import outside_features

BRANCHES = ["nJet", "Jet_pt", "Jet_btagDeepB", "HT", "MET_pt"]  # stored order = feature order
EVENTS = 3000  # per file (tests/train/conftest.py)
FEATURES = 11  # nJet, Jet_pt[0..3], Jet_btagDeepB[0..3], HT, MET_pt


def small_model(idim, outputs=1, dropout=0.0):
    torch.manual_seed(0)
    layers = [torch.nn.Linear(idim, 16), torch.nn.ReLU(), torch.nn.Dropout(dropout)]
    layers.append(torch.nn.Linear(16, outputs))
    if outputs == 1:
        layers.append(torch.nn.Sigmoid())
    return torch.nn.Sequential(*layers)


def tth_dataset(tth_data, **options):
    files = [str(tth_data / "signal.root"), str(tth_data / "background.root")]
    specs = fit_specs(files, branches=BRANCHES, max_len=4)
    return RootIterableDataset(
        files,
        labels=[1, 0],
        branches=BRANCHES,
        specs=specs,
        normalize="standard",
        batch_size=200,
        chunk_size=700,
        **options,
    )


@pytest.mark.parametrize(
    "outputs, class_weights",
    [(1, None), (2, [1.0, 3.0])],
    ids=["sigmoid-bce", "softmax-ce-class-weights"],
)
def test_inside_equals_outside(tth_data, tmp_path, outputs, class_weights):
    ds = tth_dataset(tth_data)
    assert len(ds.feature_names) == FEATURES
    inside = fit(
        small_model(len(ds.feature_names), outputs),
        ds,
        out_dir=tmp_path / "run",
        epochs=3,
        lr=3e-3,
        device="cpu",
        class_weights=class_weights,
    )

    features = torch.from_numpy(outside_features(ds.files, BRANCHES, 4))
    labels = torch.cat([torch.ones(EVENTS), torch.zeros(EVENTS)]).long()
    per_class = torch.tensor(class_weights or [1.0, 1.0])
    model = small_model(features.shape[1], outputs)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(features, labels), batch_size=200
    )
    for epoch in range(3):
        loss_sum, weight_sum, correct, scores = 0.0, 0.0, 0.0, []
        for x, y in loader:
            output, w = model(x), per_class[y]
            if outputs == 1:
                p = output.reshape(-1)
                losses = torch.nn.functional.binary_cross_entropy(p, y.float(), reduction="none")
                predicted = (p > 0.5).long()
            else:
                losses = torch.nn.functional.cross_entropy(output, y, reduction="none")
                p, predicted = output.softmax(1)[:, 1], output.argmax(1)
            loss = (losses * w).sum() / w.sum()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss_sum += float((losses * w).sum().detach())
            weight_sum += float(w.sum())
            correct += float((w * (predicted == y)).sum())
            scores.append(p.detach())
        outside_auc = roc_auc_score(labels.numpy(), torch.cat(scores).numpy())
        # Same events, order, initialisation and arithmetic: the stated tolerance is float32
        # summation order (1e-4 on the loss) and the AUC's score binning (1e-3).
        assert inside[epoch]["train_loss"] == pytest.approx(loss_sum / weight_sum, abs=1e-4)
        assert inside[epoch]["train_accuracy"] == pytest.approx(correct / weight_sum, abs=1e-4)
        assert inside[epoch]["train_auc"] == pytest.approx(outside_auc, abs=1e-3)
        assert inside[epoch]["train_events"] == 2 * EVENTS
    assert inside[-1]["train_auc"] > 0.8  # it learnt something, so the comparison means something


class Stop(Exception):
    """Raised from on_step: the run dies inside an epoch."""


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_inside_an_epoch_equals_uninterrupted(tth_data, tmp_path, workers):
    """30 steps an epoch; killed at step 17 of epoch 2, the checkpoint of step 15 resumes."""
    options = dict(epochs=2, lr=3e-3, device="cpu", num_workers=workers)

    def dataset():
        return tth_dataset(tth_data, shuffle=True, seed=3)

    torch.manual_seed(1)
    full = fit(small_model(FEATURES, dropout=0.3), dataset(), out_dir=tmp_path / "full", **options)

    def stop(step):
        if step["epoch"] == 2 and step["step"] == 17:
            raise Stop

    torch.manual_seed(1)
    with pytest.raises(Stop):
        fit(
            small_model(FEATURES, dropout=0.3),
            dataset(),
            out_dir=tmp_path / "cut",
            checkpoint_every=5,
            on_step=stop,
            **options,
        )
    state = load_checkpoint(tmp_path / "cut" / "checkpoint.pt")
    assert state["epoch"] == 1 and state["partial"]["step"] == 15

    torch.manual_seed(99)  # dropout's generator must come back from the checkpoint
    resumed = fit(
        small_model(FEATURES, dropout=0.3),
        dataset(),
        out_dir=tmp_path / "cut",
        resume=True,
        checkpoint_every=5,
        **options,
    )
    assert len(resumed) == 2
    for one, two in zip(full, resumed):
        for key in one:
            if key not in ("seconds", "events_per_s"):
                assert two[key] == pytest.approx(one[key], rel=1e-9, abs=1e-12), key
    assert resumed[1]["train_events"] == 2 * EVENTS  # the 15 batches before the stop count


def test_class_weights_must_match_the_classes(tth_data, tmp_path):
    ds = tth_dataset(tth_data)
    with pytest.raises(ModelError, match="3 class weights for a model of 2 classes"):
        fit(small_model(FEATURES), ds, out_dir=tmp_path, epochs=1, class_weights=[1, 2, 3])


def test_amp_on_cpu_trains_in_bfloat16_close_to_float32(tth_data, tmp_path):
    runs = [
        fit(
            small_model(FEATURES),
            tth_dataset(tth_data),
            out_dir=tmp_path / str(amp),
            epochs=2,
            lr=3e-3,
            device="cpu",
            amp=amp,
        )
        for amp in (False, True)
    ]
    full, amp = runs
    assert amp[-1]["train_loss"] < amp[0]["train_loss"]
    assert amp[-1]["train_events"] == 2 * EVENTS
    # bfloat16 keeps 8 bits of mantissa: close to float32, not equal.
    assert amp[-1]["train_loss"] != full[-1]["train_loss"]
    assert amp[-1]["train_loss"] == pytest.approx(full[-1]["train_loss"], abs=0.02)
    assert amp[-1]["train_auc"] == pytest.approx(full[-1]["train_auc"], abs=0.02)


def test_raw_inputs_warn_once_naming_branches_and_their_rms(tth_data, tmp_path, caplog):
    """No Specs, no normalize: the first batch's RMS per branch (numpy, here) is quoted for the
    branches above 10; standardised inputs (tth_dataset) give no warning."""
    files = [str(tth_data / "signal.root"), str(tth_data / "background.root")]
    raw = RootIterableDataset(
        files, labels=[1, 0], branches=BRANCHES, max_len=4, batch_size=200, chunk_size=700
    )
    raw.set_epoch(0)
    first = next(iter(raw))
    features, mask = first["features"].double().numpy(), first["mask"].numpy()
    columns = np.array(raw.feature_names)
    rms = {}
    for branch in BRANCHES:
        chosen = (columns == branch) | np.char.startswith(columns, branch + "[")
        values = features[:, chosen][mask[:, chosen]]
        rms[branch] = np.sqrt(np.mean(values**2))
    large = sorted((b for b in rms if rms[b] > 10), key=lambda b: -rms[b])
    assert "HT" in large and "Jet_btagDeepB" not in large  # the check means something here
    with caplog.at_level(logging.WARNING, logger="rootml.train.loop"):
        fit(small_model(FEATURES), raw, out_dir=tmp_path / "raw", epochs=2, device="cpu")
    warned = [r.getMessage() for r in caplog.records if r.name == "rootml.train.loop"]
    assert len(warned) == 1, warned
    quoted = ", ".join(f"{b} {rms[b]:.3g}" for b in large)
    assert f"RMS in the first batch: {quoted};" in warned[0]
    assert f"{len(large)} of {len(BRANCHES)} branches above 10" in warned[0]
    assert 'normalize="standard"' in warned[0]

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="rootml.train.loop"):
        fit(small_model(FEATURES), tth_dataset(tth_data), out_dir=tmp_path / "std", epochs=1)
    assert not [r for r in caplog.records if r.name == "rootml.train.loop"]


def test_epoch_results_are_table_lines_and_torchdata_warnings_are_hidden(
    tth_data, tmp_path, caplog, monkeypatch
):
    monkeypatch.setenv("ROOTML_PROGRESS", "log")
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.INFO):
        warnings.simplefilter("always")
        history = fit(
            small_model(FEATURES),
            tth_dataset(tth_data),
            tth_dataset(tth_data, entries=[(2000, 3000), (2000, 3000)]),
            out_dir=tmp_path,
            epochs=2,
            lr=3e-3,
        )
    assert not [w for w in caught if "set_vital" in str(w.message)]
    lines = [r.getMessage() for r in caplog.records if r.name == "rootml.progress"]
    table = [line for line in lines if " | " in line]
    assert table[0].split() == "epoch | train loss acc AUC | val loss acc AUC | time events/s".split()  # fmt: skip
    for line, row in zip(table[1:], history, strict=True):
        cells = line.replace("|", " ").split()
        assert cells[0] == f"{row['epoch']}/2"
        assert cells[1:7] == [
            f"{row[k]:.4f}"
            for k in (
                "train_loss",
                "train_accuracy",
                "train_auc",
                "val_loss",
                "val_accuracy",
                "val_auc",
            )  # fmt: skip
        ]
        assert cells[-1] == f"{row['events_per_s']:,.0f}"
    assert not any("{'epoch'" in line for line in lines)  # no Python dict
