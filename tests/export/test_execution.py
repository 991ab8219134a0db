"""Where versions run: config.pbtxt's instance_group and the --device default placed on the CPU
and CUDA execution providers, the CPU fallback and its warning, instance counts as sessions.

This machine has no GPU: planning is given the GPUs, onnxruntime's CUDA provider is asked for
for real (a CPU build leaves it out, which must fall back), and where a test needs sessions that
claim CUDA, `_session` makes real CPU sessions and records the device it was asked for.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
import onnxruntime as ort
import pytest

from rootml.errors import ConfigError, ModelError
from rootml.export import execution
from rootml.export.execution import CPU, CUDA, devices_of, plan_groups
from rootml.export.model_config import instance_groups, validate_config
from rootml.export.repository import add_onnx_model, load_model
from rootml.serve.models import ModelManager, ServedVersion
from tests.serve.conftest import make_inputs, mlp_onnx_bytes


@pytest.fixture(scope="module")
def mlp_bytes() -> bytes:
    return mlp_onnx_bytes(seed=0)


def gpu_group(count=1, gpus=()):
    return {"kind": "KIND_GPU", "count": count, "gpus": list(gpus)}


def cpu_group(count=1):
    return {"kind": "KIND_CPU", "count": count, "gpus": []}


@pytest.mark.parametrize(
    "groups, device, gpus, placed, devices",
    [
        # No instance_group: the default device decides (Triton's KIND_AUTO for "auto").
        (None, "auto", None, [cpu_group()], ["cpu"]),
        (None, "auto", [], [cpu_group()], ["cpu"]),
        (None, "auto", [0, 1], [gpu_group(1, [0, 1])], ["cuda:0", "cuda:1"]),
        (None, "cpu", [0, 1], [cpu_group()], ["cpu"]),
        (None, "cuda", [0, 1], [gpu_group(1, [0, 1])], ["cuda:0", "cuda:1"]),
        (None, "cuda:1", [0, 1], [gpu_group(1, [1])], ["cuda:1"]),
        # A group's kind wins over the default device.
        ([{"kind": "KIND_CPU", "count": 3}], "cuda", [0], [cpu_group(3)], ["cpu"]),
        ([{"kind": "KIND_GPU", "gpus": [0], "count": 2}], "cpu", [0], [gpu_group(2, [0])],
         ["cuda:0", "cuda:0"]),
        # KIND_GPU without gpus: every GPU, count instances on each.
        ([{"kind": "KIND_GPU", "count": 2}], "auto", [0, 1], [gpu_group(2, [0, 1])],
         ["cuda:0", "cuda:0", "cuda:1", "cuda:1"]),
        # A group without a kind follows the default; with gpus it wants those.
        ([{"count": 2}], "auto", [0], [gpu_group(2, [0])], ["cuda:0", "cuda:0"]),
        ([{"gpus": [1]}], "cpu", [0, 1], [gpu_group(1, [1])], ["cuda:1"]),
        ([{"kind": "KIND_MODEL"}], "auto", None, [cpu_group()], ["cpu"]),
        # Groups on both: the GPU sessions, then one CPU session for every CPU instance.
        ([{"kind": "KIND_CPU", "count": 4}, {"kind": "KIND_GPU", "gpus": [1]}], "auto", [0, 1],
         [cpu_group(4), gpu_group(1, [1])], ["cuda:1", "cpu"]),
        # Triton reads a count below 1 as 1.
        ([{"kind": "KIND_CPU", "count": 0}], "auto", None, [cpu_group(1)], ["cpu"]),
    ],
)  # fmt: skip
def test_placement_without_fallback(groups, device, gpus, placed, devices):
    config = {} if groups is None else {"instance_group": groups}
    got, fallback = plan_groups(config, device, gpus)
    assert fallback is None
    assert got == placed
    assert devices_of(got) == devices


@pytest.mark.parametrize(
    "groups, device, gpus, reason",
    [
        ([{"kind": "KIND_GPU"}], "auto", None, "onnxruntime-gpu"),
        ([{"kind": "KIND_GPU", "gpus": [0], "count": 2}], "cpu", None, "onnxruntime-gpu"),
        ([{"kind": "KIND_GPU"}], "auto", [], "no GPU"),
        (None, "cuda", None, "onnxruntime-gpu"),
        (None, "cuda:0", None, "onnxruntime-gpu"),
        ([{"gpus": [0]}], "auto", None, "onnxruntime-gpu"),
    ],
)
def test_a_gpu_that_is_not_there_falls_back_to_the_cpu(groups, device, gpus, reason):
    config = {} if groups is None else {"instance_group": groups}
    got, fallback = plan_groups(config, device, gpus)
    assert reason in fallback
    assert all(g["kind"] == "KIND_CPU" and g["gpus"] == [] for g in got)
    assert devices_of(got) == ["cpu"]


@pytest.mark.parametrize(
    "groups, message",
    [
        ([{"kind": "KIND_CPU", "gpus": [0]}], "KIND_CPU but gpus"),  # Triton refuses it too
        ([{"kind": "KIND_TPU"}], "unknown kind"),
        ([{"kind": "KIND_GPU", "gpus": [-1]}], "gpus"),
        ([{"kind": "KIND_GPU", "gpus": ["0"]}], "gpus"),
        ([{"count": 1.5}], "count"),
        ("KIND_GPU", "instance_group must be messages"),
    ],
)
def test_bad_instance_groups_are_refused(groups, message):
    config = {"instance_group": groups}
    with pytest.raises(ModelError, match=message):
        instance_groups(config)
    with pytest.raises(ModelError, match=message):
        validate_config(config)


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:x", "CPU", "cuda:-1", ""])
def test_bad_devices_are_refused(device):
    with pytest.raises(ConfigError, match="auto, cpu, cuda or cuda:N"):
        plan_groups({}, device, None)


def test_cuda_sessions_ask_onnxruntime_for_the_cuda_provider_on_the_device(monkeypatch, mlp_bytes):
    """What is handed to onnxruntime: the CUDA provider with device_id and full float32 matmuls
    (no TF32), CPU after it, and no onnxruntime fallback of its own (it would print and go on on
    the CPU unannounced)."""
    asked = []

    def recording_session(data, sess_options=None, providers=None, **kwargs):
        asked.append((providers, kwargs))
        session = real(data, sess_options=sess_options, providers=[CPU])
        return type("CudaSession", (), {"get_providers": lambda self: [CUDA, CPU],
                                        "run": lambda self, *a: session.run(*a)})()  # fmt: skip

    real = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", recording_session)
    execution._session(mlp_bytes, "cuda:1", threads=1)
    execution._session(mlp_bytes, "cpu", threads=1)
    assert asked == [
        ([(CUDA, {"device_id": 1, "use_tf32": 0}), CPU], {"enable_fallback": 0}),
        ([CPU], {"enable_fallback": 0}),
    ]


def test_this_onnxruntime_has_no_cuda_and_load_model_falls_back_with_one_warning(
    tmp_path, mlp_bytes, caplog
):
    """The real CPU build of onnxruntime: config.pbtxt asks for two GPU instances, the version
    runs on one CPU session, scores equal onnxruntime's own, and one warning names the model."""
    assert CUDA not in ort.get_available_providers()  # this machine: CPU build
    assert execution.available_gpus() is None
    config = {"instance_group": [{"kind": "KIND_GPU", "gpus": [0], "count": 2}]}
    add_onnx_model(tmp_path, "gpu_model", mlp_bytes, config=config)
    with caplog.at_level(logging.WARNING, logger="rootml.export.execution"):
        loaded = load_model(tmp_path, "gpu_model")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "version 1 of model 'gpu_model'" in warnings[0] and "CPU" in warnings[0]
    assert "onnxruntime-gpu" in warnings[0]
    assert loaded.devices == ["cpu"] and len(loaded.sessions) == 1
    assert loaded.session.get_providers() == [CPU]
    assert loaded.config["instance_group"] == [
        {"name": "gpu_model_0", "kind": "KIND_CPU", "count": 2, "gpus": []}
    ]
    inputs = make_inputs(5)
    expected = ort.InferenceSession(mlp_bytes, providers=[CPU]).run(None, inputs)[0]
    np.testing.assert_array_equal(loaded.session.run(None, inputs)[0], expected)


def test_a_cuda_provider_that_drops_out_falls_back_to_the_cpu(
    tmp_path, mlp_bytes, monkeypatch, caplog
):
    """onnxruntime said it has CUDA and a GPU, but the session comes back without the CUDA
    provider (here: the CPU build ignores it, as a build missing cuDNN does): CPU, one warning."""
    monkeypatch.setattr(execution, "available_gpus", lambda: [0])
    add_onnx_model(tmp_path, "m", mlp_bytes, config={"instance_group": [{"kind": "KIND_GPU"}]})
    with caplog.at_level(logging.WARNING):
        loaded = load_model(tmp_path, "m")
    warnings = [r.getMessage() for r in caplog.records if r.name == "rootml.export.execution"]
    assert len(warnings) == 1 and "version 1 of model 'm'" in warnings[0]
    assert f"without {CUDA}" in warnings[0]
    assert loaded.devices == ["cpu"] and loaded.session.get_providers() == [CPU]


def fake_cuda(monkeypatch, gpus):
    """GPUs `gpus` available; `_session` makes a real CPU session per call and records the
    device it was asked for on it."""
    monkeypatch.setattr(execution, "available_gpus", lambda: gpus)
    real = execution._session

    def session(data, device, threads):
        made = real(data, "cpu", threads)
        made.asked_device = device
        return made

    monkeypatch.setattr(execution, "_session", session)


def test_gpu_instance_counts_are_sessions_and_runs_take_them_in_turn(
    tmp_path, mlp_bytes, monkeypatch
):
    fake_cuda(monkeypatch, [0, 1])
    groups = [{"kind": "KIND_GPU", "count": 2}, {"kind": "KIND_CPU", "count": 3}]
    add_onnx_model(tmp_path, "m", mlp_bytes, config={"instance_group": groups})
    loaded = load_model(tmp_path, "m")
    assert loaded.devices == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cpu"]
    assert [s.asked_device for s in loaded.sessions] == loaded.devices
    assert len({id(s) for s in loaded.sessions}) == 5
    assert loaded.config["instance_group"] == [
        {"name": "m_0", "kind": "KIND_GPU", "count": 2, "gpus": [0, 1]},
        {"name": "m_1", "kind": "KIND_CPU", "count": 3, "gpus": []},
    ]
    served = ServedVersion(loaded)
    assert served.placement() == {
        "execution_provider": f"{CUDA},{CPU}",
        "device": "cuda:0,cuda:1,cpu",
        "instances": 5,
    }
    used = []
    for session in loaded.sessions:
        run = session.run
        session.run = lambda names, feeds, run=run, s=session: used.append(s) or run(names, feeds)
    inputs = make_inputs(4)
    expected = ort.InferenceSession(mlp_bytes, providers=[CPU]).run(None, inputs)[0]
    for _ in range(10):
        np.testing.assert_array_equal(served.run(inputs)["score"], expected)
    assert [used.count(s) for s in loaded.sessions] == [2, 2, 2, 2, 2]


def test_a_failing_cuda_session_moves_the_version_to_the_cpu(tmp_path, mlp_bytes, monkeypatch):
    """The second GPU (an id the machine does not have) fails: every GPU instance goes."""
    monkeypatch.setattr(execution, "available_gpus", lambda: [0])
    real = execution._session

    def session(data, device, threads):
        if device == "cuda:7":
            raise RuntimeError("CUDA failure 101: invalid device ordinal")
        return real(data, "cpu", threads)

    monkeypatch.setattr(execution, "_session", session)
    config = {"instance_group": [{"kind": "KIND_GPU", "gpus": [0, 7]}]}
    add_onnx_model(tmp_path, "m", mlp_bytes, config=config)
    loaded = load_model(tmp_path, "m")
    assert loaded.devices == ["cpu"] and len(loaded.sessions) == 1
    assert loaded.config["instance_group"][0]["kind"] == "KIND_CPU"


def test_the_manager_places_by_its_device_and_reloads_when_placement_changes(
    tmp_path, mlp_bytes, monkeypatch
):
    """--device: the default for a config without groups. A reload with an unchanged model file
    keeps its sessions only while they are placed as before."""
    fake_cuda(monkeypatch, [0])
    add_onnx_model(tmp_path, "m", mlp_bytes)

    async def scenario():
        manager = ModelManager(tmp_path, device="cuda")
        try:
            await manager.load("m")
            first = manager.get("m")
            assert first.model.devices == ["cuda:0"]
            assert first.placement()["execution_provider"] == CUDA
            await manager.load("m")
            assert manager.get("m").sessions == first.sessions  # unchanged: reused
            config = (tmp_path / "m" / "config.pbtxt").read_text()
            config += "instance_group [ { kind: KIND_CPU } ]\n"
            (tmp_path / "m" / "config.pbtxt").write_text(config)
            await manager.load("m")
            again = manager.get("m")
            assert again.model.devices == ["cpu"] and again.sessions != first.sessions
            assert again.placement() == {
                "execution_provider": CPU,
                "device": "cpu",
                "instances": 1,
            }
        finally:
            await manager.close()

        with pytest.raises(ConfigError):
            ModelManager(tmp_path, device="gpu")

    asyncio.run(scenario())
