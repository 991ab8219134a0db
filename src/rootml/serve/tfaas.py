"""TFaaS compatibility: ``POST /json`` with ``{"keys": [...], "values": [...], "model": name}``.

TFaaS clients send named feature values and get the list of probabilities back. Here `keys` name
the model's features: when the model has rootml.json ``feature_names`` the values are put in that
order, otherwise they are taken in the order given. Values are one row (a flat list) or several
(a list of rows). A "mask" input, when the model has one, is all true.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rootml.errors import BadRequest
from rootml.protocol import DTYPES


def _feature_input(inputs: list) -> Any:
    for spec in inputs:
        if spec.name == "features":
            return spec
    return inputs[0]


def tfaas_request(
    doc: Any, inputs: list, metadata: dict | None
) -> tuple[dict[str, np.ndarray], bool]:
    """The model feeds (name -> array (B, F)) for a TFaaS request; and whether it is one row.

    `inputs` are the model's TensorSpecs. Raises BadRequest for a malformed request or
    keys that do not match the model's features.
    """
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list) or "values" not in doc:
        raise BadRequest("TFaaS request needs 'keys' (list), 'values' and 'model'")
    keys = doc["keys"]
    features = _feature_input(inputs)
    others = [s.name for s in inputs if s is not features and s.name != "mask"]
    if others:
        raise BadRequest(f"model inputs {others} cannot be given through /json")
    if features.datatype == "BYTES" or len(features.shape) != 2:
        raise BadRequest(
            f"/json needs a model whose input is (B, F); {features.name!r} is {list(features.shape)}"
        )
    try:
        values = np.asarray(doc["values"], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise BadRequest(f"'values' must be numbers: {err}") from None
    single = values.ndim == 1
    values = values.reshape(1, -1) if single else values
    if values.ndim != 2 or values.shape[1] != len(keys):
        raise BadRequest(f"'values' must be rows of {len(keys)} numbers, one per key")
    names = (metadata or {}).get("feature_names")
    if names:
        position = {k: i for i, k in enumerate(keys)}
        missing = [n for n in names if n not in position]
        if missing:
            raise BadRequest(f"keys miss the model's features {missing[:10]}")
        values = values[:, [position[n] for n in names]]
    width = features.shape[1]
    if width != -1 and values.shape[1] != width:
        raise BadRequest(f"model {features.name!r} takes {width} features, got {values.shape[1]}")
    feeds = {features.name: values.astype(DTYPES[features.datatype])}
    for spec in inputs:
        if spec.name == "mask" and spec is not features:
            feeds["mask"] = np.ones(values.shape, dtype=DTYPES[spec.datatype])
    return feeds, single


def tfaas_output(outputs: dict[str, np.ndarray], single: bool) -> list:
    """The probabilities TFaaS answers with: "probabilities", else "score", else the first float output."""
    for name in ("probabilities", "score"):
        if name in outputs:
            chosen = outputs[name]
            break
    else:
        floats = [a for a in outputs.values() if a.dtype.kind == "f"]
        if not floats:
            raise BadRequest("the model has no floating-point output to return")
        chosen = floats[0]
    rows = chosen.reshape(chosen.shape[0], -1).astype(np.float64).tolist()
    return rows[0] if single else rows
