"""Batch scoring: every entry of ROOT files through a model, scores written entry by entry.

Files are read by the streaming layer (rootml.datasets) with the model's Specs; the model runs
here (onnxruntime) or on a server (rootml.client); scores go to friend trees (uproot) and/or
parquet (awkward). Not part of the server: `rootml serve` never imports this package.
"""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "branch_names": "rootml.predict.run",
        "open_model": "rootml.predict.run",
        "output_paths": "rootml.predict.run",
        "predict": "rootml.predict.run",
    },
)
