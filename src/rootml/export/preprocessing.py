"""A model's preprocessing as its rootml.json records it: raw branch columns -> model inputs.

What training did to a chunk of branches before the model (sort_by, the layout's padding and
mask, the NaN policy, normalisation unless folded into the graph), rebuilt from a version's
rootml.json with the same transforms. The server (raw physics columns, rootml.serve.physics), an
upload's check and batch scoring (rootml.predict) all use it.

rootml.json keys read: rootml.export.metadata.MetadataKey, where its writer (run_metadata) is.
The transforms are assembled by rootml.transforms.build_pipeline, as for training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rootml.errors import ModelError, RootmlError
from rootml.export.metadata import MetadataKey as K
from rootml.export.metadata import check_metadata
from rootml.protocol import DTYPES


@dataclass
class Preprocessing:
    """What training did to a chunk of branches before the model, as rootml.json records it.

    normalize: the method to apply here (None when there is none or the graph does it itself).
    `pipeline` is the value pipeline of these settings (rootml.transforms.build_pipeline).
    """

    specs: Any  # rootml.transforms.Specs
    layout: str = "flat"
    pad_value: float = 0.0
    normalize: str | None = None
    collections: dict[str, list[str]] | None = None
    sort_by: dict[str, Any] | None = None
    nan_policy: str = "keep"
    pipeline: Any = field(default=None, repr=False)

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None, model: str) -> Preprocessing:
        """The preprocessing of a model from its rootml.json. Raises ModelError when it has no
        "specs", or they cannot be read or ask for too much (`check_metadata`)."""
        from rootml.transforms import Specs, build_pipeline

        if not metadata or not metadata.get(K.SPECS):
            raise ModelError(
                f"model {model!r} has no Specs in its rootml.json: it takes model inputs only"
            )
        check_metadata(metadata, f"rootml.json of model {model!r}")
        try:
            normalization = metadata.get(K.NORMALIZATION) or {}
            collections = metadata.get(K.COLLECTIONS)
            # sort_by and nan_policy: top-level keys, else the training parameters exported.
            params = (metadata.get(K.TRAINING) or {}).get(K.PARAMS) or {}
            sort_by = metadata.get(K.SORT_BY, params.get(K.SORT_BY))
            prep = cls(
                Specs.from_dict(metadata[K.SPECS]),
                metadata.get(K.LAYOUT) or "flat",
                float(metadata.get(K.PAD_VALUE) or 0.0),
                None if normalization.get(K.FOLDED) else normalization.get(K.METHOD),
                {k: list(v["branches"]) for k, v in collections.items()} if collections else None,
                dict(sort_by) if sort_by else None,
                metadata.get(K.NAN_POLICY, params.get(K.NAN_POLICY)) or "keep",
            )
            prep.pipeline = build_pipeline(
                prep.specs, prep.layout, pad_value=prep.pad_value, sort_by=prep.sort_by,
                nan_policy=prep.nan_policy, normalize=prep.normalize,
                collections=prep.collections if prep.layout == "collection" else None,
            )  # fmt: skip
        except (RootmlError, KeyError, TypeError, ValueError, AttributeError) as err:
            raise ModelError(
                f"model {model!r}: cannot use the Specs of its rootml.json: {err}"
            ) from err
        return prep

    @property
    def layout_object(self) -> Any:
        """The FlatLayout or CollectionLayout of these Specs."""
        return self.pipeline.layout

    def branches(self) -> dict[str, str]:
        """Branch -> kind ("flat", "fixed", "jagged") of every column a chunk needs: the Specs'
        branches, then sort_by keys that are not features (jagged)."""
        from rootml.transforms import parse_sort_key

        kinds = {name: spec.kind for name, spec in self.specs.branches.items()}
        for key in (self.sort_by or {}).values():
            kinds.setdefault(parse_sort_key(key)[0], "jagged")
        return kinds

    def dataset_options(self) -> dict[str, Any]:
        """Arguments of RootIterableDataset that read and transform as training did."""
        return {
            "branches": list(self.specs.branches),
            "aliases": self.specs.fingerprint.get("aliases") or None,
            "specs": self.specs,
            "reuse_specs": True,
            "pad_value": self.pad_value,
            "normalize": self.normalize,
            "layout": self.pipeline.layout,
            "sort_by": self.sort_by,
            "nan_policy": self.nan_policy,
        }

    def transform(self) -> Any:
        """chunk (branch -> array of n entries) -> block of numpy arrays ("features", "mask",
        ...): the value pipeline."""
        return self.pipeline

    def input_values(self, inputs: Sequence[Any]) -> int:
        """Model input values per entry this preprocessing makes for a model taking `inputs`
        (TensorSpecs), found by transforming an empty chunk. Raises ModelError when it does not
        make them, or not in the model's fixed dims."""
        import awkward as ak  # only models with Specs get here: plain ONNX serving never does

        widths = {n: s.width for n, s in self.specs.branches.items()}
        empty: dict[str, Any] = {}
        for name, kind in self.branches().items():
            if kind == "jagged":
                empty[name] = ak.Array(
                    ak.contents.ListOffsetArray(
                        ak.index.Index64(np.zeros(1, dtype=np.int64)),
                        ak.contents.NumpyArray(np.zeros(0, dtype=np.float32)),
                    )
                )
            else:
                empty[name] = np.zeros((0,) if kind == "flat" else (0, widths[name]))
        values = 0
        try:
            block = self.transform()(empty)
            for name, array in model_feeds(block, inputs).items():
                spec = next(t for t in inputs if t.name == name)
                dims = array.shape[1:]
                values += math.prod(dims)
                if len(spec.shape) != array.ndim or any(
                    want != -1 and want != got for want, got in zip(spec.shape[1:], dims)
                ):
                    raise ModelError(
                        f"the layout makes {name!r} of shape {[-1, *dims]}, the model takes "
                        f"{list(spec.shape)}"
                    )
        except (ModelError, ValueError, KeyError, TypeError) as err:
            raise ModelError(f"raw columns cannot feed this model: {err}") from err
        return values


def model_feeds(block: Mapping[str, Any], inputs: Sequence[Any]) -> dict[str, np.ndarray]:
    """The model's inputs (TensorSpecs) taken by name from a transformed block, in their dtypes.

    Raises ModelError when the block has no array for an input.
    """
    missing = [t.name for t in inputs if t.name not in block]
    if missing:
        made = sorted(k for k in block if k != "stats")
        raise ModelError(f"the model takes inputs {missing} that its layout does not make ({made})")
    return {t.name: np.asarray(block[t.name], dtype=DTYPES[t.datatype]) for t in inputs}
