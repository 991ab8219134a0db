"""Model names on every route: an invalid name (too long, starting with '-', characters outside
[A-Za-z0-9_.-]) is 400, an unknown valid one 404, never a 500 (a 300-character name once made
the filesystem raise "File name too long")."""

from __future__ import annotations

from urllib.parse import quote

import httpx
import pytest

from rootml.errors import ModelError
from rootml.export.repository import check_model_name, list_models
from tests.serve.conftest import AUTH, mlp_onnx_bytes

MAX_NAME_LENGTH = 128  # filesystem-safe: a name is a folder, and staging names add to it

INVALID = ["x" * 300, "y" * (MAX_NAME_LENGTH + 1), "-rf", "-", "a b", "é", "a;b", "a\x00b"]
UNKNOWN = ["z" * MAX_NAME_LENGTH, "not-there", "x.-_"]


def _routes(name: str) -> list[tuple[str, str, dict]]:
    """(method, path, request options) of every route that takes a model name."""
    m = f"/v2/models/{quote(name, safe='')}"
    r = f"/v2/repository/models/{quote(name, safe='')}"
    infer = {"json": {"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [1]}]}}
    return [
        *[("GET", m + tail, {}) for tail in ("", "/ready", "/config", "/rootml")],
        *[("GET", m + "/versions/1" + tail, {}) for tail in ("", "/ready", "/config", "/rootml")],
        ("POST", m + "/infer", infer),
        ("POST", m + "/versions/1/infer", infer),
        ("POST", r + "/load", {"headers": AUTH}),
        ("POST", r + "/unload", {"headers": AUTH}),
        ("POST", r + "/upload", {"headers": AUTH, "content": mlp_onnx_bytes(0)}),
        ("POST", "/json", {"json": {"model": name, "keys": ["a"], "values": [1.0]}}),
    ]


@pytest.mark.parametrize("name", INVALID)
def test_invalid_names_are_400_on_every_route(server, repo, name):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, options in _routes(name):
            response = client.request(method, path, **options)
            assert response.status_code == 400, (method, path[:80], response.text)
            assert "invalid model name" in response.json()["error"], (method, path[:80])
    assert all(not model.startswith(("x" * 10, "y" * 10, "-")) for model in list_models(repo))


@pytest.mark.parametrize("name", UNKNOWN)
def test_unknown_names_are_404_on_every_route_but_upload(server, repo, name):
    with httpx.Client(base_url=server.url, timeout=30) as client:
        for method, path, options in _routes(name):
            if path.endswith("/upload"):
                continue  # an upload under a new valid name creates the model
            response = client.request(method, path, **options)
            assert response.status_code == 404, (method, path[:80], response.text)
            assert name[:20] in response.json()["error"], (method, path[:80])


def test_name_rules():
    from rootml.export.repository import MAX_NAME_LENGTH as limit

    assert limit == MAX_NAME_LENGTH
    assert check_model_name("a" * MAX_NAME_LENGTH) == "a" * MAX_NAME_LENGTH
    assert check_model_name("ttH_v2.1-x") == "ttH_v2.1-x"
    for name in INVALID:
        with pytest.raises(ModelError, match="invalid model name"):
            check_model_name(name)
