"""Model control on a live server: token, load/unload, upload (safe), atomic swap of versions."""

from __future__ import annotations

import io
import threading
import time
import zipfile

import httpx
import numpy as np
import onnxruntime as ort
import pytest

from rootml.client import Client
from rootml.errors import ProtocolError
from tests.serve.conftest import (
    AUTH,
    TOKEN,
    Server,
    external_data_onnx,
    make_inputs,
    tar_gz,
    upload,
)


def test_model_control_needs_the_token(server, repo):
    for path in ("mlp/load", "mlp/unload", "newmodel/upload"):
        url = f"{server.url}/v2/repository/models/{path}"
        response = httpx.post(url)
        assert response.status_code == 401 and "token" in response.json()["error"]
        assert response.headers["www-authenticate"] == "Bearer"
        response = httpx.post(url, headers={"Authorization": "Bearer wrong-token"})
        assert response.status_code == 401 and "token" in response.json()["error"]
        response = httpx.post(url, headers={"Authorization": f"Basic {TOKEN}"})
        assert response.status_code == 401
    assert not (repo / "newmodel").exists()
    assert Client(server.url).model_metadata("mlp")["versions"] == ["1", "2"]


def test_model_control_is_off_without_token_file(repo, tmp_path):
    srv = Server(repo, tmp_path / "log")
    try:
        response = httpx.post(f"{srv.url}/v2/repository/models/mlp/unload", headers=AUTH)
        assert response.status_code == 403 and "--token-file" in response.json()["error"]
        assert Client(srv.url).model_metadata("mlp")["name"] == "mlp"
    finally:
        srv.stop()


def test_upload_load_unload(server, repo, mlp_bytes):
    client = Client(server.url, token=TOKEN)
    assert client.upload("uploaded", mlp_bytes) == 1
    assert (repo / "uploaded" / "1" / "model.onnx").read_bytes() == mlp_bytes
    inputs = make_inputs(3)
    expected = ort.InferenceSession(mlp_bytes).run(None, inputs)[0]
    np.testing.assert_array_equal(client.infer("uploaded", inputs)["score"], expected)
    # A model folder as tar.gz: rootml.json and config.pbtxt come along, numbered anew.
    archive = tar_gz(
        {
            "uploaded/7/model.onnx": mlp_bytes,
            "uploaded/rootml.json": b'{"labels": ["b", "s"]}',
            "uploaded/config.pbtxt": b'name: "x"\nmax_batch_size: 8\nversion_policy { latest { num_versions: 1 } }\n',
        }
    )
    assert client.upload("uploaded", archive) == 2
    assert client.model_metadata("uploaded")["versions"] == [
        "2"
    ]  # latest 1 from the uploaded config
    assert httpx.get(f"{server.url}/v2/models/uploaded/rootml").json()["labels"] == ["b", "s"]
    with pytest.raises(ProtocolError, match="max_batch_size 8"):
        client.infer("uploaded", make_inputs(9))
    client.unload("uploaded")
    with pytest.raises(ProtocolError) as err:
        client.infer("uploaded", inputs)
    assert err.value.status == 503
    assert {
        "name": "uploaded",
        "version": "",
        "state": "UNAVAILABLE",
        "reason": "unloaded",
    } in client.repository_index()
    client.load("uploaded")
    np.testing.assert_array_equal(client.infer("uploaded", inputs)["score"], expected)
    with pytest.raises(ProtocolError) as err:
        client.load("not-there")
    assert err.value.status == 404
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.writestr("model.onnx", mlp_bytes)
    assert client.upload("uploaded", zipped.getvalue()) == 3


def _zip_with_symlink(mlp_bytes: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", mlp_bytes)
        link = zipfile.ZipInfo("rootml.json")
        link.external_attr = 0o120777 << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def test_upload_refusals(server, repo, mlp_bytes, results):
    cases = {
        "external data": (external_data_onnx(mlp_bytes, "weights.bin"), "external data"),
        "external data outside": (
            external_data_onnx(mlp_bytes, "../../../etc/passwd"),
            "external data",
        ),
        "external data in archive": (
            tar_gz({"model.onnx": external_data_onnx(mlp_bytes, "w.bin")}),
            "external data",
        ),
        "dot-dot member": (tar_gz({"model.onnx": mlp_bytes, "../evil.txt": b"x"}), "'..' refused"),
        "absolute member": (tar_gz({"/tmp/model.onnx": mlp_bytes}), "absolute"),
        "symlink in tar": (
            tar_gz({"model.onnx": mlp_bytes}, {"rootml.json": "/etc/passwd"}),
            "links are refused",
        ),
        "hardlink in tar": (
            tar_gz({"model.onnx": mlp_bytes}, {"config.pbtxt": "/etc/passwd"}, hard=True),
            "links are refused",
        ),
        "symlink in zip": (_zip_with_symlink(mlp_bytes), "links are refused"),
        "other files": (
            tar_gz({"model.onnx": mlp_bytes, "run.sh": b"rm -rf /"}),
            "unexpected file",
        ),
        "not onnx": (b"\x08\x07garbage", "not an ONNX model"),
    }
    for case, (body, words) in cases.items():
        response = upload(server, "refused", body)
        assert response.status_code == 400, (case, response.text)
        assert words in response.json()["error"], (case, response.json())
    bad_names = ("..", "a b", "x%2Fy")
    for bad_name in bad_names:
        response = upload(server, bad_name, mlp_bytes)
        assert response.status_code in (400, 404), (bad_name, response.text)
    assert not (repo / "refused").exists() or not any((repo / "refused").glob("*/model.onnx"))
    assert not (repo.parent / "evil.txt").exists()
    assert Client(server.url).infer("mlp", make_inputs(1))["score"].shape == (1, 1)
    results.update(
        kind="bad input",
        what="uploads: path traversal, absolute paths, links, external data, bad names",
        tried=len(cases) + len(bad_names),
        refused=len(cases) + len(bad_names),
        accepted=0,
        server_errors=0,
    )


def test_upload_size_cap(repo, tmp_path, token_file, mlp_bytes):
    srv = Server(
        tmp_path, tmp_path / "log", "--token-file", str(token_file), "--max-upload-bytes", "4096"
    )
    try:
        assert len(mlp_bytes) > 0
        big = tar_gz({"model.onnx": bytes(8192)})
        assert len(big) < 4096
        response = upload(srv, "big", big)
        assert response.status_code == 413 and "more than 4096" in response.json()["error"]
        assert upload(srv, "big", bytes(5000)).status_code == 413
    finally:
        srv.stop()


def test_atomic_reload_during_upload(server, mlp_bytes, mlp2_bytes):
    client = Client(server.url, token=TOKEN)
    assert client.upload("swapped", mlp_bytes) == 1
    inputs = make_inputs(4, seed=11)
    old = ort.InferenceSession(mlp_bytes).run(None, inputs)[0]
    new = ort.InferenceSession(mlp2_bytes).run(None, inputs)[0]
    assert not np.array_equal(old, new)
    seen, failures, stop = [], [], threading.Event()

    def loop() -> None:
        with Client(server.url) as looping:
            while not stop.is_set() or len(seen) + len(failures) < 20:
                try:
                    seen.append(looping.infer("swapped", inputs)["score"])
                except Exception as err:  # any failure at all fails the test
                    failures.append(repr(err))

    thread = threading.Thread(target=loop)
    thread.start()
    # The first swap waits for the loop's first answer, which must then come from the old version.
    deadline = time.monotonic() + 30
    while not seen and not failures and time.monotonic() < deadline:
        time.sleep(0.005)
    try:
        for _ in range(3):
            client.upload("swapped", mlp2_bytes)
            client.upload("swapped", mlp_bytes)
        client.upload("swapped", mlp2_bytes)
    finally:
        stop.set()
        thread.join(timeout=30)
    assert failures == []
    assert all(np.array_equal(s, old) or np.array_equal(s, new) for s in seen)
    # The loop's last answer may come from a request sent before the final swap; a request sent
    # after the upload returned must see the new version.
    assert np.array_equal(client.infer("swapped", inputs)["score"], new)
    assert any(np.array_equal(s, old) for s in seen)
