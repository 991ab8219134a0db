"""The seed's ttH(bb) classifier in PyTorch, for `rootml train --model model.py`.

MLaaS4HEP's Keras model (Dense 128 relu, Dropout 0.5, Dense 64 relu, Dropout 0.5, Dense 1
sigmoid; trained with Adam 1e-3 and binary cross-entropy) with the same layers.
"""

from __future__ import annotations

import torch


def model(idim: int) -> torch.nn.Module:
    """Return the MLP for `idim` input features: (B, idim) float32 -> (B, 1) scores in [0, 1]."""
    return torch.nn.Sequential(
        torch.nn.Linear(idim, 128),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(128, 64),
        torch.nn.ReLU(),
        torch.nn.Dropout(0.5),
        torch.nn.Linear(64, 1),
        torch.nn.Sigmoid(),
    )
