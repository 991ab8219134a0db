"""The run folder: whether a new run may write into it, resume it, or start it again."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from rootml.errors import ConfigError
from rootml.train.checkpoint import load_checkpoint

# What a run writes into its folder (besides params["hist"]); --overwrite deletes these first.
# model.py stays: it may be the very file the run trains.
_RUN_FILES = ("checkpoint.pt", "checkpoint.pt.tmp", "specs.json", "params.json", "history.csv",
              "history.json", "summary.json", "mlflow.json", "folds.json")  # fmt: skip
_RUN_FOLDERS = ("checkpoints", "plots", "debug", "tensorboard")


def check_run_folder(out: Path, resume: bool | str, overwrite: bool, epochs: int) -> int | None:
    """Epochs completed by the run in `out` when resuming it, else None. resume="auto": resume
    when `out` holds a run, else start one (jobs that restart themselves with the same command:
    torchrun --max-restarts, Slurm --requeue, Ray's max_failures). Raises ConfigError for a
    folder holding a run (without resume or overwrite), resume without a run, a run with more
    epochs than `epochs`, and resume with overwrite."""
    if resume and overwrite:
        raise ConfigError("give --resume (continue the run) or --overwrite (start again), not both")
    held = [n for n in ("checkpoint.pt", "checkpoints", "specs.json") if (out / n).exists()]
    if resume == "auto":
        resume = (out / "checkpoint.pt").is_file() and (out / "specs.json").is_file()
    if not resume:
        if held and not overwrite:
            raise ConfigError(
                f"{out} already holds a run ({', '.join(held)}): continue it with --resume, "
                "start it again with --overwrite, or choose another --out"
            )
        return None
    if not ((out / "checkpoint.pt").is_file() and (out / "specs.json").is_file()):
        raise ConfigError(
            f"--resume: {out} holds no run (checkpoint.pt and specs.json) to continue"
        )
    state = load_checkpoint(out / "checkpoint.pt")
    done, partial = int(state["epoch"]), state.get("partial") is not None
    if done > epochs or (done == epochs and partial):
        reached = f"is inside epoch {done + 1}" if partial else f"has trained {done} epochs"
        raise ConfigError(
            f"{out} {reached}, more than epochs={epochs}: give --epochs above {done} to "
            "continue it, or --overwrite to start again"
        )
    if state.get("stopped"):  # early stopping ended it: nothing is left to train
        return epochs
    return done


def clear_run_folder(out: Path) -> None:
    """Delete what an earlier run wrote into `out` (so no stale checkpoint or plot remains)."""
    try:
        hist = json.loads((out / "params.json").read_text()).get("hist")
    except (OSError, ValueError, AttributeError):
        hist = None
    for name in _RUN_FILES:
        (out / name).unlink(missing_ok=True)
    for name in (*_RUN_FOLDERS, *([str(hist)] if hist else [])):
        if (out / name).is_dir() and (out / name).resolve().is_relative_to(out.resolve()):
            shutil.rmtree(out / name)


def finished_summary(out: Path, done: int) -> dict[str, Any]:
    """The summary of a run that already has its epochs, marked as trained by no call."""
    try:
        summary = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {"epochs": done}
    return {**summary, "new_epochs": 0}
