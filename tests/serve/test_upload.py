"""Reading uploads alone: which archive members are taken, which are refused, and the size cap."""

from __future__ import annotations

import io
import zipfile

import pytest

from rootml.errors import ProtocolError
from rootml.serve.upload import read_upload
from tests.serve.conftest import tar_gz

ONNX = b"\x08\x07fake-onnx-bytes"  # read_upload does not parse the ONNX itself


def test_single_file_is_the_model():
    files = read_upload(ONNX, 1000)
    assert files.onnx == ONNX and files.metadata is None and files.config is None


@pytest.mark.parametrize("prefix", ["", "tth/", "./tth/"])
def test_model_folder_archive(prefix):
    body = tar_gz(
        {
            f"{prefix}3/model.onnx": ONNX,
            f"{prefix}rootml.json": b'{"labels": ["b", "s"]}',
            f"{prefix}config.pbtxt": b"max_batch_size: 16\n",
        }
    )
    files = read_upload(body, 1000)
    assert files.onnx == ONNX
    assert files.metadata == {"labels": ["b", "s"]}
    assert files.config == {"max_batch_size": 16}


def test_zip_archive():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("model.onnx", ONNX)
        archive.writestr("rootml.json", '{"format": 1}')
    files = read_upload(buffer.getvalue(), 1000)
    assert files.onnx == ONNX and files.metadata == {"format": 1}


@pytest.mark.parametrize(
    "members, words",
    [
        ({"1/model.onnx": ONNX, "2/model.onnx": ONNX}, "more than one model.onnx"),
        ({"rootml.json": b"{}"}, "no model.onnx"),
        ({"model.onnx": ONNX, "rootml.json": b"[1]"}, "JSON object"),
        ({"model.onnx": ONNX, "config.pbtxt": b"input {"}, "config.pbtxt"),
        ({"model.onnx": ONNX, "a/b/c.txt": b""}, "unexpected file"),
        ({"model.onnx": ONNX, "x/../../model.onnx": ONNX}, "'..' refused"),
        ({"C:/model.onnx": ONNX}, "absolute"),
    ],
)
def test_refused_archives(members, words):
    with pytest.raises(ProtocolError, match=words) as err:
        read_upload(tar_gz(members), 1000)
    assert err.value.status == 400


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps the name as given
    return buffer.getvalue()


@pytest.mark.parametrize(
    "name, words",
    [
        ("../model.onnx", "'..' refused"),
        ("tth/../../model.onnx", "'..' refused"),
        ("/etc/model.onnx", "absolute"),
        ("C:/model.onnx", "absolute"),
        ("..\\model.onnx", "non-POSIX"),
    ],
)
def test_refused_zip_members(name, words):
    with pytest.raises(ProtocolError, match=words) as err:
        read_upload(_zip({"rootml.json": b"{}", name: ONNX}), 1000)
    assert err.value.status == 400


def test_unpacked_size_cap():
    with pytest.raises(ProtocolError) as err:
        read_upload(tar_gz({"model.onnx": bytes(5000)}), 4096)
    assert err.value.status == 413
