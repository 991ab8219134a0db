"""Where a model version runs: config.pbtxt's instance_group and a default device, turned into
onnxruntime sessions on the CPU or CUDA execution provider.

Triton places each instance group of a model on a kind of device: KIND_GPU on the GPUs it lists
(every GPU when it lists none), KIND_CPU on the CPU, KIND_AUTO (a group without a kind, or a
config without groups) on the GPUs when there are any. rootml does the same, with these
differences (docs/serving.md):

- a GPU that cannot be used (onnxruntime without the CUDA provider, no device, a CUDA library
  missing, an id that does not exist) makes the version run on the CPU, with one warning naming
  the model, version and reason; Triton refuses such a model instead;
- a group that does not say its kind follows the server's default device (`rootml serve
  --device`): auto (the GPUs when there are any), cpu, cuda or cuda:N;
- `count` instances on a GPU are that many sessions (each with its own CUDA stream, so their runs
  overlap); on the CPU one session serves every instance, because onnxruntime runs one session
  from many threads at once (the server's run slots are the CPU's concurrency).

`plan_groups` is the pure part (a test gives it the GPUs); `create_sessions` makes the
sessions and reports where they really run.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from rootml.errors import ConfigError
from rootml.export.model_config import instance_groups

log = logging.getLogger(__name__)

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
_DEVICE = re.compile(r"auto|cpu|cuda(?::(\d+))?")


def check_device(device: str) -> str:
    """`device` if it is auto, cpu, cuda or cuda:N (N >= 0, a GPU id), else ConfigError."""
    if not isinstance(device, str) or _DEVICE.fullmatch(device) is None:
        raise ConfigError(f"device {device!r}: use auto, cpu, cuda or cuda:N (N a GPU id)")
    return device


def provider_of(device: str) -> str:
    """The execution provider of a device ("cpu" -> CPUExecutionProvider, "cuda:N" -> CUDA...)."""
    return CPU if device == "cpu" else CUDA


def available_gpus() -> list[int] | None:
    """GPU ids onnxruntime can run on: None when it has no CUDA provider (the CPU build), else
    the CUDA devices it lists (onnxruntime >= 1.22), or [0] when it cannot list them."""
    import onnxruntime as ort

    if CUDA not in ort.get_available_providers():
        return None
    try:
        devices = [d for d in ort.get_ep_devices() if d.ep_name == CUDA]
    except (AttributeError, RuntimeError):
        devices = []
    return list(range(len(devices))) or [0]


def plan_groups(
    config: dict[str, Any], device: str = "auto", gpus: list[int] | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """config.pbtxt's instance groups as placed here, and why a GPU they ask for cannot be had
    (None when nothing falls back).

    config: the model's config.pbtxt; device: the default for groups of KIND_AUTO (and for a
    config without groups); gpus: what `available_gpus` says (None: no CUDA provider). Each group
    comes back as {"kind": "KIND_GPU" with its "gpus" listed, or "KIND_CPU", "count"}. ModelError
    for a bad instance_group, ConfigError for a bad device.
    """
    check_device(device)
    groups = instance_groups(config) or [{"kind": "KIND_AUTO", "count": 1, "gpus": []}]
    placed, fallback = [], None
    for group in groups:
        kind, ids = group["kind"], group["gpus"]
        if kind in ("KIND_AUTO", "KIND_MODEL"):
            wants_gpu = ids or device.startswith("cuda") or (device == "auto" and gpus)
            kind = "KIND_GPU" if wants_gpu else "KIND_CPU"
            if not ids and device.startswith("cuda:"):
                ids = [int(device[5:])]
        if kind == "KIND_GPU" and gpus is None:
            fallback = f"this onnxruntime has no {CUDA} (pip install onnxruntime-gpu)"
        elif kind == "KIND_GPU" and not (gpus or ids):
            fallback = "onnxruntime finds no GPU"
        if kind == "KIND_GPU" and fallback is None:
            placed.append({"kind": kind, "count": group["count"], "gpus": list(ids or gpus)})
        else:
            placed.append({"kind": "KIND_CPU", "count": group["count"], "gpus": []})
    return placed, fallback


def devices_of(groups: list[dict[str, Any]]) -> list[str]:
    """The device of each session placed `groups` need: "cuda:N" once per instance and GPU of a
    KIND_GPU group, then "cpu" once if any group is KIND_CPU."""
    devices = [
        f"cuda:{gpu}"
        for g in groups
        if g["kind"] == "KIND_GPU"
        for gpu in g["gpus"]
        for _ in range(g["count"])
    ]
    return devices + ["cpu"] * any(g["kind"] == "KIND_CPU" for g in groups)


def session_options(threads: int = 1):
    """onnxruntime SessionOptions using `threads` intra-op threads and no inter-op pool."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, threads)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return options


def _session(data: bytes, device: str, threads: int):
    import onnxruntime as ort

    providers: list[Any] = [CPU]
    if device != "cpu":
        # use_tf32 off: TF32 matmuls (onnxruntime's default on Ampere and newer) keep 10 bits of
        # mantissa, and scores would differ from the CPU's by ~1e-3 instead of ~1e-7.
        options = {"device_id": int(device.split(":")[1]), "use_tf32": 0}
        providers.insert(0, (CUDA, options))
    # enable_fallback=0: onnxruntime would print to stdout and go on on the CPU; the caller
    # decides and warns instead.
    session = ort.InferenceSession(
        data, sess_options=session_options(threads), providers=providers, enable_fallback=0
    )
    if device != "cpu" and CUDA not in session.get_providers():
        # onnxruntime dropped the CUDA provider while making the session (a CUDA or cuDNN
        # library it could not load): the session runs on the CPU.
        raise RuntimeError(f"onnxruntime made the session without {CUDA}")
    return session


def create_sessions(
    data: bytes,
    groups: list[dict[str, Any]],
    threads: int,
    what: str,
    fallback: str | None = None,
) -> tuple[list[Any], list[str], list[dict[str, Any]]]:
    """The sessions of placed `groups` (plan_groups'), the device each runs on, and the groups
    as they run. When a CUDA session cannot be made, or planning gave a `fallback` reason, every
    group runs on the CPU and one warning names `what` (the model and version) and the reason.
    Exceptions of a CPU session propagate."""
    sessions: list[Any] = []
    devices = devices_of(groups)
    if fallback is None:
        try:
            sessions = [_session(data, d, threads) for d in devices if d != "cpu"]
        except Exception as err:  # onnxruntime raises its own types (Fail, RuntimeError, ...)
            fallback, sessions = f"{err}".strip() or type(err).__name__, []
    if fallback is not None:
        log.warning("%s runs on the CPU, not on a GPU as configured: %s", what, fallback)
        groups = [{**g, "kind": "KIND_CPU", "gpus": []} for g in groups]
        devices = devices_of(groups)
    if "cpu" in devices:
        sessions.append(_session(data, "cpu", threads))
    return sessions, devices, groups
