"""Checkpoints and history files of a run folder (the contract export reads: rootml.runfolder).

RUN/checkpoint.pt is the latest state, RUN/checkpoints/epoch_NNN.pt the state after epoch NNN,
RUN/checkpoints/best.pt the best epoch of a run with early stopping; the keys are
rootml.runfolder.CheckpointKey. The caller adds what describes the model (model file and
arguments, layout, feature names, labels, normalisation, pad value, Specs, params, regression).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rootml.runfolder import (
    CHECKPOINT_FILE,
    CHECKPOINTS_DIR,
    FORMAT,
    CheckpointKey,
    load_checkpoint,
)

__all__ = ["load_checkpoint", "restore_rng", "rng_state", "save_checkpoint", "write_history"]


def rng_state() -> dict[str, Any]:
    """The random generators that change training (dropout, initialisation): CPU and CUDA."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng(state: dict[str, Any] | torch.Tensor | None) -> None:
    """Undo rng_state(): the generators continue as if the run had never stopped."""
    if state is None:
        return
    if isinstance(state, torch.Tensor):  # checkpoints written before CUDA state was kept
        torch.set_rng_state(state.cpu())
        return
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(out: Path, state: dict[str, Any], epoch_copy: bool) -> Path:
    """Write out/checkpoint.pt atomically (a crash mid-write leaves the previous one) and, when
    `epoch_copy`, out/checkpoints/epoch_NNN.pt. Returns the path of checkpoint.pt."""
    out.mkdir(parents=True, exist_ok=True)
    state = {CheckpointKey.FORMAT: FORMAT, **state}
    if epoch_copy:
        (out / CHECKPOINTS_DIR).mkdir(exist_ok=True)
        torch.save(state, out / CHECKPOINTS_DIR / f"epoch_{state[CheckpointKey.EPOCH]:03d}.pt")
    tmp = out / f"{CHECKPOINT_FILE}.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / CHECKPOINT_FILE)
    return out / CHECKPOINT_FILE


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """history.csv (one row per epoch, a header of every metric) and history.json."""
    keys = list(dict.fromkeys(key for row in history for key in row))
    lines = [",".join(keys)]
    lines += [",".join(str(row.get(key, "")) for key in keys) for row in history]
    (out / "history.csv").write_text("\n".join(lines) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=1))
