"""Reading an uploaded model: a single .onnx file, or a model folder as tar, tar.gz or zip.

Archives are read in memory and never extracted to disk by their own paths: only the three known
files are taken (``model.onnx`` at the top or in one numeric version folder, ``rootml.json``,
``config.pbtxt``, optionally all under one top-level folder). Absolute paths, ``..``, links,
devices and any other file are refused, and the unpacked size is capped.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from typing import Any

from rootml.errors import ModelError, ProtocolError
from rootml.export.pbtxt import parse_config

_MAX_MEMBERS = 64
_KNOWN = ("model.onnx", "rootml.json", "config.pbtxt")


@dataclass
class ModelFiles:
    """The parts of an uploaded model; `metadata` and `config` are None when not uploaded."""

    onnx: bytes
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None


def _parts(name: str) -> list[str]:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise ProtocolError(f"archive member {name!r}: absolute or non-POSIX path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ProtocolError(f"archive member {name!r}: '..' refused")
    return parts


def _tar_members(body: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    files, total = [], 0
    try:
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as tar:
            for i, member in enumerate(tar):
                if i >= _MAX_MEMBERS:
                    raise ProtocolError(f"archive has more than {_MAX_MEMBERS} members")
                _parts(member.name)
                if member.issym() or member.islnk():
                    raise ProtocolError(f"archive member {member.name!r}: links are refused")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ProtocolError(f"archive member {member.name!r}: not a regular file")
                total += member.size
                if total > max_bytes:
                    raise ProtocolError(f"archive unpacks to more than {max_bytes} bytes", 413)
                files.append((member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise ProtocolError(f"cannot read the uploaded archive: {err}") from None
    return files


def _zip_members(body: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    files, total = [], 0
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            infos = archive.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise ProtocolError(f"archive has more than {_MAX_MEMBERS} members")
            for info in infos:
                _parts(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise ProtocolError(f"archive member {info.filename!r}: links are refused")
                if info.is_dir():
                    continue
                total += info.file_size
                if total > max_bytes:
                    raise ProtocolError(f"archive unpacks to more than {max_bytes} bytes", 413)
                # zipfile checks the declared size and CRC while reading, so a lying header fails.
                files.append((info.filename, archive.read(info)))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise ProtocolError(f"cannot read the uploaded archive: {err}") from None
    return files


def _is_tar(body: bytes) -> bool:
    return body[:2] == b"\x1f\x8b" or body[257:262] == b"ustar" or body[:3] in (b"BZh", b"\xfd7z")


def _model_files(files: list[tuple[str, bytes]]) -> ModelFiles:
    paths = [(_parts(name), data) for name, data in files]
    tops = {p[0] for p, _ in paths if p}
    if len(tops) == 1 and all(len(p) > 1 for p, _ in paths):
        paths = [(p[1:], data) for p, data in paths]
    found: dict[str, bytes] = {}
    for parts, data in paths:
        if (
            parts
            and parts[-1] == "model.onnx"
            and (len(parts) == 1 or (len(parts) == 2 and parts[0].isdigit()))
        ):
            key = "model.onnx"
        elif len(parts) == 1 and parts[0] in _KNOWN:
            key = parts[0]
        else:
            raise ProtocolError(
                f"unexpected file {'/'.join(parts)!r} in archive; allowed: {', '.join(_KNOWN)}"
            )
        if key in found:
            raise ProtocolError(f"archive holds more than one {key}; upload one version at a time")
        found[key] = data
    if "model.onnx" not in found:
        raise ProtocolError("archive holds no model.onnx")
    metadata = config = None
    if "rootml.json" in found:
        try:
            metadata = json.loads(found["rootml.json"])
        except ValueError as err:
            raise ProtocolError(f"rootml.json is not valid JSON: {err}") from None
        if not isinstance(metadata, dict):
            raise ProtocolError("rootml.json must be a JSON object")
    if "config.pbtxt" in found:
        try:
            config = parse_config(found["config.pbtxt"].decode())
        except (ModelError, UnicodeDecodeError) as err:
            raise ProtocolError(f"config.pbtxt: {err}") from None
    return ModelFiles(found["model.onnx"], metadata, config)


def read_upload(body: bytes, max_bytes: int) -> ModelFiles:
    """The model in an upload body: a zip or tar(.gz) model folder, else a single .onnx file.

    Raises ProtocolError: 400 for a refused or malformed archive, 413 beyond `max_bytes` unpacked.
    The ONNX bytes themselves are validated later (rootml.export.validate_onnx).
    """
    if body[:4] == b"PK\x03\x04":
        return _model_files(_zip_members(body, max_bytes))
    if _is_tar(body):
        return _model_files(_tar_members(body, max_bytes))
    return ModelFiles(body)
