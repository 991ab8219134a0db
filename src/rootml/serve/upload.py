"""Reading an uploaded model: a single .onnx file, or a model folder as tar, tar.gz or zip.

Archives are read in memory and never extracted to disk by their own paths: only the three known
files are taken (``model.onnx`` and ``rootml.json`` at the top or in one numeric version folder,
``config.pbtxt`` at the top, optionally all under one top-level folder: a model folder of a
repository holding one version; the model file is the one config.pbtxt's
``default_model_filename`` names, when it does). Absolute paths, ``..``, links,
devices and any other file are refused, and the unpacked size is capped: a compressed tar is
decompressed up to the cap only, so its headers (PAX, GNU long names) count too, and a header
larger than any real one is refused before tarfile reads it.

Unpacking and checking take CPU time (seconds for a large model): the server calls them in a
thread, never on its event loop.
"""

from __future__ import annotations

import bz2
import io
import json
import lzma
import stat
import tarfile
import zipfile
import zlib
from dataclasses import dataclass
from typing import Any

from rootml.errors import BadRequest, BodyTooLarge, ModelError
from rootml.export.model_config import CONFIG_FILE, MODEL_FILE, model_file_name
from rootml.export.pbtxt import parse_config

_MAX_MEMBERS = 64
# PAX and GNU long-name headers hold a few paths and times: hundreds of bytes.
_MAX_TAR_HEADER_BYTES = 64 << 10
_TAR_HEADER_TYPES = (b"x", b"g", b"L", b"K")
_TAR_BLOCK = 512
# What a tar stream holds besides its members' contents (counted by _check_tar_headers): a
# header block and padding per entry, and the end-of-archive record.
_TAR_OVERHEAD = 4 * _MAX_MEMBERS * 2 * _TAR_BLOCK + 20 * _TAR_BLOCK


@dataclass
class ModelFiles:
    """The parts of an uploaded model; `metadata` and `config` are None when not uploaded."""

    onnx: bytes
    metadata: dict[str, Any] | None = None
    config: dict[str, Any] | None = None


def _parts(name: str) -> list[str]:
    if name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":") or "\\" in name:
        raise BadRequest(f"archive member {name!r}: absolute or non-POSIX path refused")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise BadRequest(f"archive member {name!r}: '..' refused")
    return parts


def _decompressed_tar(body: bytes, max_bytes: int) -> bytes:
    """The tar stream of a tar, tar.gz, tar.bz2 or tar.xz body, decompressed up to `max_bytes`
    of contents plus _TAR_OVERHEAD of blocks and padding (BodyTooLarge beyond); BadRequest for a
    truncated or corrupt stream."""
    if body[:2] == b"\x1f\x8b":
        inflater: Any = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif body[:3] == b"BZh":
        inflater = bz2.BZ2Decompressor()
    elif body[:6] == b"\xfd7zXZ\x00":
        inflater = lzma.LZMADecompressor()
    else:
        return body  # a plain tar: the body is already within the upload limit
    try:
        # max_length stops the decompressor after that much output: a bomb costs the cap only.
        out = inflater.decompress(body, max_bytes + _TAR_OVERHEAD + 1)
    except (zlib.error, OSError, EOFError, lzma.LZMAError) as err:
        raise BadRequest(f"cannot decompress the uploaded archive: {err}") from None
    if len(out) > max_bytes + _TAR_OVERHEAD:
        raise BodyTooLarge(f"archive unpacks to more than {max_bytes} bytes")
    if not inflater.eof:
        raise BadRequest("the uploaded archive is truncated")
    return out


def _tar_size(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    try:
        return int(field.strip(b"\0 ") or b"0", 8)
    except ValueError:
        raise BadRequest("cannot read the uploaded archive: bad tar header") from None


def _check_tar_headers(raw: bytes, max_bytes: int) -> None:
    """Walk the headers of a tar stream before tarfile parses it: every entry, also the PAX and
    GNU long-name headers tarfile hides, counts toward `max_bytes`; such a header over
    _MAX_TAR_HEADER_BYTES is refused (tarfile would parse all of it)."""
    pos, total = 0, 0
    for _ in range(4 * _MAX_MEMBERS):
        header = raw[pos : pos + _TAR_BLOCK]
        if len(header) < _TAR_BLOCK or not header.strip(b"\0"):
            return  # the end of the archive (or a truncated one, which tarfile reports)
        size = _tar_size(header[124:136])
        kind = header[156:157]
        if kind in _TAR_HEADER_TYPES and size > _MAX_TAR_HEADER_BYTES:
            raise BadRequest(
                f"archive holds a tar header (type {kind.decode()!r}) of {size} bytes; at most "
                f"{_MAX_TAR_HEADER_BYTES} are accepted"
            )
        total += size
        if total > max_bytes:
            raise BodyTooLarge(f"archive unpacks to more than {max_bytes} bytes")
        pos += _TAR_BLOCK + -(-size // _TAR_BLOCK) * _TAR_BLOCK
    raise BadRequest(f"archive has more than {_MAX_MEMBERS} members")


def _tar_members(body: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    raw = _decompressed_tar(body, max_bytes)
    _check_tar_headers(raw, max_bytes)
    files, total = [], 0
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            for i, member in enumerate(tar):
                if i >= _MAX_MEMBERS:
                    raise BadRequest(f"archive has more than {_MAX_MEMBERS} members")
                _parts(member.name)
                if member.issym() or member.islnk():
                    raise BadRequest(f"archive member {member.name!r}: links are refused")
                if member.isdir():
                    continue
                if not member.isfile():
                    raise BadRequest(f"archive member {member.name!r}: not a regular file")
                total += member.size
                if total > max_bytes:
                    raise BodyTooLarge(f"archive unpacks to more than {max_bytes} bytes")
                files.append((member.name, tar.extractfile(member).read()))
    except (tarfile.TarError, EOFError, OSError) as err:
        raise BadRequest(f"cannot read the uploaded archive: {err}") from None
    return files


def _zip_members(body: bytes, max_bytes: int) -> list[tuple[str, bytes]]:
    files, total = [], 0
    try:
        with zipfile.ZipFile(io.BytesIO(body)) as archive:
            infos = archive.infolist()
            if len(infos) > _MAX_MEMBERS:
                raise BadRequest(f"archive has more than {_MAX_MEMBERS} members")
            for info in infos:
                _parts(info.filename)
                mode = info.external_attr >> 16
                if stat.S_ISLNK(mode):
                    raise BadRequest(f"archive member {info.filename!r}: links are refused")
                if info.is_dir():
                    continue
                total += info.file_size
                if total > max_bytes:
                    raise BodyTooLarge(f"archive unpacks to more than {max_bytes} bytes")
                # zipfile checks the declared size and CRC while reading, so a lying header fails.
                files.append((info.filename, archive.read(info)))
    except (zipfile.BadZipFile, OSError, EOFError) as err:
        raise BadRequest(f"cannot read the uploaded archive: {err}") from None
    return files


def _is_tar(body: bytes) -> bool:
    return body[:2] == b"\x1f\x8b" or body[257:262] == b"ustar" or body[:3] in (b"BZh", b"\xfd7z")


def _read_config(data: bytes) -> tuple[dict[str, Any], str]:
    """An uploaded config.pbtxt and the model file name it gives; BadRequest if unreadable."""
    try:
        config = parse_config(data.decode())
        return config, model_file_name(config)
    except (ModelError, UnicodeDecodeError) as err:
        raise BadRequest(f"config.pbtxt: {err}") from None


def _model_files(files: list[tuple[str, bytes]]) -> ModelFiles:
    paths = [(_parts(name), data) for name, data in files]
    tops = {p[0] for p, _ in paths if p}
    if len(tops) == 1 and all(len(p) > 1 for p, _ in paths):
        paths = [(p[1:], data) for p, data in paths]
    config, filename = None, MODEL_FILE
    for parts, data in paths:
        if parts == [CONFIG_FILE]:
            config, filename = _read_config(data)
    known = (filename, "rootml.json", CONFIG_FILE)
    found: dict[str, bytes] = {}
    folders = set()  # the version folders the model file and rootml.json come from
    for parts, data in paths:
        in_version = len(parts) == 2 and parts[0].isdigit() and parts[1] != CONFIG_FILE
        if (len(parts) == 1 and parts[0] in known) or (in_version and parts[1] in known):
            key = parts[-1]
            folders |= {parts[0]} if in_version else set()
        else:
            raise BadRequest(
                f"unexpected file {'/'.join(parts)!r} in archive; allowed: {filename} and "
                "rootml.json (at the top or in one version folder), config.pbtxt (its "
                "default_model_filename names the model file, model.onnx without one)"
            )
        if key in found:
            raise BadRequest(f"archive holds more than one {key}; upload one version at a time")
        found[key] = data
    if len(folders) > 1:
        raise BadRequest(f"archive holds files of versions {sorted(folders)}; upload one")
    if filename not in found:
        raise BadRequest(f"archive holds no {filename}")
    metadata = None
    if "rootml.json" in found:
        try:
            metadata = json.loads(found["rootml.json"])
        except ValueError as err:
            raise BadRequest(f"rootml.json is not valid JSON: {err}") from None
        if not isinstance(metadata, dict):
            raise BadRequest("rootml.json must be a JSON object")
    return ModelFiles(found[filename], metadata, config)


def check_model_files(name: str, files: ModelFiles) -> None:
    """Check an uploaded model, before anything of it is written: the ONNX file
    (`validate_onnx`, then opened by onnxruntime) and its rootml.json (`check_metadata`, and
    Specs whose layout makes the graph's inputs). Its config.pbtxt, merged into the model's,
    and the model's signature are checked by `add_onnx_model`, also before writing. Raises
    ModelError."""
    import onnxruntime as ort

    from rootml.export.metadata import check_metadata
    from rootml.export.onnx_file import graph_io, validate_onnx
    from rootml.export.preprocessing import Preprocessing

    inputs, _ = graph_io(validate_onnx(files.onnx))
    check_metadata(files.metadata, "the uploaded rootml.json")
    if files.metadata and files.metadata.get("specs"):
        try:
            Preprocessing.from_metadata(files.metadata, name).input_values(inputs)
        except ModelError as err:
            raise ModelError(f"the uploaded rootml.json does not fit the model: {err}") from err
    try:
        ort.InferenceSession(files.onnx, providers=["CPUExecutionProvider"])
    except Exception as err:
        raise ModelError(f"onnxruntime cannot load the uploaded model: {err}") from err


def read_upload(body: bytes, max_bytes: int) -> ModelFiles:
    """The model in an upload body: a zip or tar(.gz) model folder, else a single .onnx file.

    Raises BadRequest for a refused or malformed archive, BodyTooLarge beyond `max_bytes`
    unpacked.
    The ONNX bytes themselves are validated later (rootml.export.validate_onnx).
    """
    if body[:4] == b"PK\x03\x04":
        return _model_files(_zip_members(body, max_bytes))
    if _is_tar(body):
        return _model_files(_tar_members(body, max_bytes))
    return ModelFiles(body)
