"""rootml.client against a live server: metadata, infer in binary and JSON, index, errors."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

from rootml.client import Client
from rootml.errors import ProtocolError
from tests.serve.conftest import make_inputs


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_infer_equals_onnxruntime(server, mlp_bytes, binary):
    inputs = make_inputs(7, seed=21)
    expected = ort.InferenceSession(mlp_bytes, providers=["CPUExecutionProvider"]).run(
        None, inputs
    )[0]
    with Client(server.url) as client:
        for model, version in (("mlp", None), ("mlp", 1), ("mlp_batched", None)):
            result = client.infer(model, inputs, version=version, binary=binary)
            assert list(result) == ["score"]
            np.testing.assert_array_equal(result["score"], expected)
        assert list(client.infer("mlp", inputs, outputs=["score"], binary=binary)) == ["score"]


def test_metadata_index_and_errors(server):
    with Client(server.url) as client:
        assert client.live() and client.ready()
        assert client.server_metadata()["name"] == "rootml"
        meta = client.model_metadata("mlp", 2)
        assert meta["versions"] == ["2"] and meta["inputs"][0]["name"] == "features"
        ready = client.repository_index(ready_only=True)
        assert {"name": "fixed", "version": "1", "state": "READY", "reason": ""} in ready
        assert all(entry["state"] == "READY" for entry in ready)
        with pytest.raises(ProtocolError, match="unknown model") as err:
            client.infer("nope", make_inputs(1))
        assert err.value.status == 404
        with pytest.raises(ProtocolError, match="missing inputs") as err:
            client.infer("mlp", {"features": make_inputs(1)["features"]})
        assert err.value.status == 400
        with pytest.raises(ProtocolError) as err:
            client.upload("mlp", b"x")
        assert err.value.status == 401
