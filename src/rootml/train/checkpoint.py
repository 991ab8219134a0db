"""Checkpoints and history files of a run folder (the contract export reads).

RUN/checkpoint.pt is the latest state, RUN/checkpoints/epoch_NNN.pt the state after epoch NNN.
A checkpoint is one dict saved with torch.save: "format" 1, "epoch" (completed epochs),
"model_state", "optimizer_state", "scaler_state" (AMP), "history" (one row per completed epoch),
"metrics" (the last row), "dataset_state", "rng_state", "schedule" and "monitor" (the
learning-rate schedule's and early stopping's state), "stopped" (early stopping ended the run),
and, for a checkpoint taken inside an epoch, "partial" (step, DataLoader state or in-memory
step, metric sums so far, seconds so far). The caller adds what describes the model
(model_file, model_args, layout, feature_names, labels, normalize, pad_value, specs, params,
and for regression "regression": targets, loss and the output scale/offset).
RUN/checkpoints/best.pt (BEST) is the best epoch's checkpoint of a run with early stopping.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from rootml.errors import ModelError

FORMAT = 1
BEST = Path("checkpoints") / "best.pt"


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
    state = {"format": FORMAT, **state}
    if epoch_copy:
        (out / "checkpoints").mkdir(exist_ok=True)
        torch.save(state, out / "checkpoints" / f"epoch_{state['epoch']:03d}.pt")
    tmp = out / "checkpoint.pt.tmp"
    torch.save(state, tmp)
    os.replace(tmp, out / "checkpoint.pt")
    return out / "checkpoint.pt"


def load_checkpoint(path: str | os.PathLike, device: torch.device | str = "cpu") -> dict[str, Any]:
    """The checkpoint dict at `path`, tensors on `device`. Raises ModelError if it is unreadable
    or not a rootml checkpoint."""
    try:
        # weights_only=False: the run folder is the user's own (its model.py is code already),
        # and the checkpoint holds numpy values and RNG states.
        state = torch.load(path, map_location=device, weights_only=False)
    except (OSError, RuntimeError, EOFError) as err:
        raise ModelError(f"cannot read checkpoint {path}: {err}") from err
    if not isinstance(state, dict) or "model_state" not in state:
        raise ModelError(f"{path} is not a rootml checkpoint (no 'model_state')")
    if state.get("format", FORMAT) != FORMAT:
        raise ModelError(f"{path}: unknown checkpoint format {state.get('format')!r}")
    return state


def write_history(out: Path, history: list[dict[str, Any]]) -> None:
    """history.csv (one row per epoch, a header of every metric) and history.json."""
    keys = list(dict.fromkeys(key for row in history for key in row))
    lines = [",".join(keys)]
    lines += [",".join(str(row.get(key, "")) for key in keys) for row in history]
    (out / "history.csv").write_text("\n".join(lines) + "\n")
    (out / "history.json").write_text(json.dumps(history, indent=1))


def run_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint a run folder stands for (its BEST when it has one, else checkpoint.pt),
    or `source` itself when it is a file. Raises ModelError when there is none."""
    path = Path(source)
    if path.is_dir():
        path = path / BEST if (path / BEST).is_file() else path / "checkpoint.pt"
    if not path.is_file():
        raise ModelError(f"no training run or checkpoint at {source}")
    return path


def unwrapped_state(state: dict[str, Any]) -> dict[str, Any]:
    """The state without the key prefix of a DDP ("module.") or torch.compile ("_orig_mod.")
    wrapper, when every key has it."""
    state = dict(state)
    for prefix in ("module.", "_orig_mod."):
        if state and all(key.startswith(prefix) for key in state):
            state = {key[len(prefix) :]: value for key, value in state.items()}
    return state
