"""Reading uploads alone: which archive members are taken, which are refused, and the size cap."""

from __future__ import annotations

import io
import tarfile
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


def _tar_gz_with_pax(comment_bytes: int, files: dict[str, bytes]) -> bytes:
    """A tar.gz whose first member carries a PAX header of about `comment_bytes` bytes (what
    tarfile hides from its members' sizes)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tarfile.PAX_FORMAT) as tar:
        for i, (name, data) in enumerate(files.items()):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            if i == 0:
                info.pax_headers = {"comment": "x" * comment_bytes}
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_tar_headers_count_toward_the_unpack_cap():
    small = _tar_gz_with_pax(100, {"model.onnx": ONNX})
    assert read_upload(small, 1 << 20).onnx == ONNX
    # 4 MiB of PAX header in a few kB of gzip: over a 1 MiB cap although the member is tiny.
    bomb = _tar_gz_with_pax(4 << 20, {"model.onnx": ONNX})
    assert len(bomb) < 64 << 10
    with pytest.raises(ProtocolError, match="more than 1048576 bytes") as err:
        read_upload(bomb, 1 << 20)
    assert err.value.status == 413


def test_oversized_tar_headers_are_refused_before_tarfile_parses_them():
    body = _tar_gz_with_pax(1 << 20, {"model.onnx": ONNX})
    with pytest.raises(ProtocolError, match=r"tar header \(type 'x'\) of \d+ bytes") as err:
        read_upload(body, 64 << 20)
    assert err.value.status == 400


def test_a_repository_model_folder_with_one_version_is_an_upload():
    files = read_upload(
        tar_gz(
            {
                "tth/config.pbtxt": b"max_batch_size: 16\n",
                "tth/4/model.onnx": ONNX,
                "tth/4/rootml.json": b'{"labels": ["b", "s"]}',
            }
        ),
        1000,
    )
    assert files.onnx == ONNX and files.metadata == {"labels": ["b", "s"]}
    assert files.config == {"max_batch_size": 16}
    with pytest.raises(ProtocolError, match=r"files of versions \['1', '2'\]"):
        read_upload(tar_gz({"1/model.onnx": ONNX, "2/rootml.json": b"{}"}), 1000)
    with pytest.raises(ProtocolError, match="more than one rootml.json"):
        read_upload(
            tar_gz({"1/model.onnx": ONNX, "1/rootml.json": b"{}", "rootml.json": b"{}"}), 1000
        )
