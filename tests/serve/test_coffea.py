"""coffea's `triton_wrapper` (coffea.ml_tools) against `rootml serve`, as an analysis uses it:
events read with uproot, model inputs made with awkward in `prepare_awkward`, scores from the
server equal to onnxruntime's on the same inputs. Over gRPC with TLS (the wrapper's default,
ssl=True) and plain; over HTTP the wrapper fails in the client (test_coffea_http_unchanged).
Also TLS itself: HTTPS and gRPC with the server's certificate, plain gRPC refused."""

from __future__ import annotations

import shutil
import subprocess

import awkward as ak
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from tritonclient.utils import InferenceServerException

from tests.serve._physics_model import (
    HZZ,
    HZZ_BRANCHES,
    add_model,
    hzz_specs,
    read_columns,
    reference_inputs,
    run_onnx,
)
from tests.serve.conftest import Server

triton_wrapper = pytest.importorskip("coffea.ml_tools.triton_wrapper").triton_wrapper

# model -> rootml.json extras: dynamic batching without preferred_batch_size (coffea then takes
# config.dynamic_batching.preferred_batch_size[0]), or none (coffea takes max_batch_size).
MODELS = {"hzz_batched": {"dynamic_batching": {"max_queue_delay_microseconds": 1000}}, "hzz": {}}
MAX_BATCH = 500


class Scores(triton_wrapper):
    """What an analysis writes: model inputs from the events' columns, with awkward."""

    def __init__(self, *args, specs=None, every=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.specs, self.every = specs, every

    def prepare_awkward(self, output_list, events):
        inputs = reference_inputs(events, self.specs.feature_names, self.every, "standard")
        return [], {
            "output_list": output_list,
            "input_dict": {name: ak.Array(array) for name, array in inputs.items()},
        }


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    repo = tmp_path_factory.mktemp("coffea-repo")
    specs = hzz_specs()
    onnx = {
        name: add_model(repo, name, specs, "standard", seed=i, max_batch_size=MAX_BATCH, **extra)
        for i, (name, extra) in enumerate(MODELS.items())
    }
    # The events as an analysis holds them: one awkward array of records.
    every = ak.zip(read_columns(HZZ, "events", HZZ_BRANCHES), depth_limit=1)
    return repo, specs, every, onnx


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command to make a certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
        + ["-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost"]
        + ["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture(scope="module")
def plain(setup, tmp_path_factory):
    srv = Server(setup[0], tmp_path_factory.mktemp("coffea-log") / "serve.log", grpc=True)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def tls(setup, certificate, tmp_path_factory):
    cert, key = certificate
    log = tmp_path_factory.mktemp("coffea-tls-log") / "serve.log"
    args = ("--tls-cert", str(cert), "--tls-key", str(key))
    srv = Server(setup[0], log, *args, ca=cert, grpc=True)
    yield srv
    srv.stop()


def _expected(setup, name: str) -> np.ndarray:
    _, specs, every, onnx = setup
    return run_onnx(onnx[name], reference_inputs(every, specs.feature_names, every, "standard"))


@pytest.mark.parametrize("model", list(MODELS))
def test_coffea_grpc_with_its_default_tls(tls, setup, certificate, model):
    _, specs, every, _ = setup
    wrapper = Scores(
        f"triton+grpc://{tls.grpc}/{model}/1",
        client_args={"root_certificates": str(certificate[0])},
        specs=specs,
        every=every,
    )
    # The batch coffea splits the events into: the served config's preferred_batch_size[0]
    # under dynamic batching (rootml reports [max_batch_size]), else max_batch_size.
    assert wrapper.batch_size == MAX_BATCH
    scores = wrapper(["score"], every)["score"]
    assert len(scores) == len(every) > 4 * MAX_BATCH
    np.testing.assert_allclose(ak.to_numpy(scores), _expected(setup, model)["score"], atol=1e-6)


def test_coffea_grpc_plain(plain, setup):
    _, specs, every, _ = setup
    url = f"triton+grpc://{plain.grpc}/hzz_batched/1"
    wrapper = Scores(url, client_args={"ssl": False}, specs=specs, every=every)
    scores = ak.to_numpy(wrapper(["score"], every)["score"])
    np.testing.assert_allclose(scores, _expected(setup, "hzz_batched")["score"], atol=1e-6)


@pytest.mark.xfail(
    strict=True,
    raises=TypeError,
    reason="coffea's triton_wrapper fails over HTTP in the client, before any request and "
    "against any server (coffea 2026.9, tritonclient 2.73): it calls tritonclient.http's "
    "get_model_metadata and get_model_config with as_json=True, which only tritonclient.grpc "
    "takes; past that, its InferInput shapes are numpy arrays, which tritonclient.http cannot "
    "write as JSON, and it reads the config under a 'config' key that HTTP answers lack",
)
def test_coffea_http_unchanged(plain, setup):
    _, specs, every, _ = setup
    wrapper = Scores(f"triton+http://{plain.address}/hzz/1", specs=specs, every=every)
    wrapper(["score"], every)


def test_tls_serves_https_and_grpc_only_with_the_certificate(tls, certificate):
    cert = str(certificate[0])
    assert httpx.get(f"{tls.url}/v2/health/ready", verify=cert).json() == {"ready": True}
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{tls.port}/v2/health/ready", timeout=5)
    with tgrpc.InferenceServerClient(tls.grpc, ssl=True, root_certificates=cert) as client:
        assert client.is_server_ready()
    with tgrpc.InferenceServerClient(tls.grpc) as client:
        with pytest.raises(InferenceServerException) as err:
            client.is_server_ready(client_timeout=5)
    assert "UNAVAILABLE" in err.value.status() or "DEADLINE" in err.value.status()
