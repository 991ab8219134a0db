"""fit() on a CUDA device (skipped without one): the same metrics as on the CPU, and AMP with
loss scaling trains and checkpoints its scaler."""

from __future__ import annotations

import pytest
import torch

from rootml.train import fit, load_checkpoint
from tests.train.test_fit import FEATURES, small_model, tth_dataset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_cuda_equals_cpu(tth_data, tmp_path):
    runs = {}
    for device in ("cpu", "cuda"):
        torch.backends.cudnn.deterministic = True
        runs[device] = fit(
            small_model(FEATURES),
            tth_dataset(tth_data),
            out_dir=tmp_path / device,
            epochs=2,
            lr=3e-3,
            device=device,
        )
    for cpu, cuda in zip(runs["cpu"], runs["cuda"]):
        # float32 on two devices: the sums differ in their last bits, and 30 steps an epoch.
        assert cuda["train_loss"] == pytest.approx(cpu["train_loss"], abs=1e-3)
        assert cuda["train_auc"] == pytest.approx(cpu["train_auc"], abs=2e-3)
        assert cuda["train_events"] == cpu["train_events"] == 6000


def test_amp_trains_and_keeps_its_scaler(tth_data, tmp_path):
    history = fit(
        small_model(FEATURES),
        tth_dataset(tth_data),
        tth_dataset(tth_data),
        out_dir=tmp_path,
        epochs=2,
        lr=3e-3,
        device="cuda",
        amp=True,
    )
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_auc"] > 0.8
    state = load_checkpoint(tmp_path / "checkpoint.pt")
    assert state["scaler_state"]["scale"] > 0
