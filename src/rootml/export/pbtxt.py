"""Triton's ``config.pbtxt``: protobuf text format, read and written without Triton's schema.

A config is a plain dict mirroring the protobuf message: scalars as int/float/str/bool, enum
values as their names (``"TYPE_FP32"``), nested messages as dicts and repeated fields as lists::

    {"name": "tth", "platform": "onnxruntime_onnx", "max_batch_size": 1024,
     "input": [{"name": "features", "data_type": "TYPE_FP32", "dims": [12]}],
     "dynamic_batching": {"max_queue_delay_microseconds": 500}}
"""

from __future__ import annotations

import re
from typing import Any

from rootml.errors import ModelError

# Fields of Triton's ModelConfig that are repeated; a single occurrence still becomes a list.
_REPEATED = {
    "input",
    "output",
    "dims",
    "shape",
    "preferred_batch_size",
    "instance_group",
    "versions",
    "gpus",
    "parameters",
    "label_filename",
    "model_warmup",
    "allow_ragged_batch",
}
# Fields whose values are enum names, written without quotes.
_ENUMS = {"data_type", "kind", "format"}

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
      | (?P<number>[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?[fF]?)
      | (?P<ident>[A-Za-z_][A-Za-z0-9_.]*)
      | (?P<punct>[{}\[\]:,;<>])
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            line = text.count("\n", 0, pos) + 1
            raise ModelError(f"config.pbtxt: cannot read line {line}: {text[pos : pos + 30]!r}")
        pos = m.end()
        kind = m.lastgroup
        if kind != "comment":
            out.append((kind, m.group(kind)))
    return out


def _scalar(kind: str, value: str) -> Any:
    if kind == "string":
        return value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
    if kind == "number":
        value = value.rstrip("fF")
        return float(value) if any(c in value for c in ".eE") else int(value)
    if value in ("true", "True"):
        return True
    if value in ("false", "False"):
        return False
    return value


class _Reader:
    def __init__(self, text: str):
        self.toks = _tokens(text)
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (expected is not None and tok[1] != expected):
            raise ModelError(f"config.pbtxt: expected {expected or 'a value'}, found {tok}")
        self.i += 1
        return tok

    def message(self, closing: str | None) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        while True:
            tok = self.peek()
            if tok is None:
                if closing is not None:
                    raise ModelError(f"config.pbtxt: missing {closing!r}")
                return fields
            if closing is not None and tok[1] == closing:
                self.i += 1
                return fields
            kind, key = self.take()
            if kind != "ident":
                raise ModelError(f"config.pbtxt: expected a field name, found {key!r}")
            if self.peek() is not None and self.peek()[1] == ":":
                self.i += 1
            value = self.value()
            if isinstance(value, list) or key in _REPEATED or key in fields:
                prior = fields.get(key, [])
                prior = prior if isinstance(prior, list) else [prior]
                fields[key] = prior + (value if isinstance(value, list) else [value])
            else:
                fields[key] = value
            if self.peek() is not None and self.peek()[1] in (",", ";"):
                self.i += 1

    def value(self) -> Any:
        kind, tok = self.take()
        if tok in ("{", "<"):
            return self.message("}" if tok == "{" else ">")
        if tok == "[":
            items: list[Any] = []
            while self.peek() is not None and self.peek()[1] != "]":
                items.append(self.value())
                if self.peek() is not None and self.peek()[1] == ",":
                    self.i += 1
            self.take("]")
            return items
        if kind == "punct":
            raise ModelError(f"config.pbtxt: unexpected {tok!r}")
        return _scalar(kind, tok)


def parse_config(text: str) -> dict[str, Any]:
    """Parse the text of a ``config.pbtxt`` into a dict (see the module docstring).

    Raises ModelError on text that is not protobuf text format.
    """
    return _Reader(text).message(None)


def _format_scalar(key: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if key in _ENUMS:
        return str(value)
    escaped = str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def _format_fields(fields: dict[str, Any], indent: str) -> list[str]:
    lines = []
    for key, value in fields.items():
        if isinstance(value, dict):
            lines.append(f"{indent}{key} {{")
            lines += _format_fields(value, indent + "  ")
            lines.append(f"{indent}}}")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                lines.append(f"{indent}{key} {{")
                lines += _format_fields(item, indent + "  ")
                lines.append(f"{indent}}}")
        elif isinstance(value, list):
            lines.append(f"{indent}{key}: [{', '.join(_format_scalar(key, v) for v in value)}]")
        else:
            lines.append(f"{indent}{key}: {_format_scalar(key, value)}")
    return lines


def format_config(config: dict[str, Any]) -> str:
    """The ``config.pbtxt`` text of a config dict; `parse_config` reads it back unchanged."""
    return "\n".join(_format_fields(config, "")) + "\n"
