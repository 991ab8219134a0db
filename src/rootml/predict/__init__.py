"""Batch scoring: every entry of ROOT files through a model, scores written entry by entry.

Files are read by the streaming layer (rootml.datasets) with the model's Specs; the model runs
here (onnxruntime) or on a server (rootml.client); scores go to friend trees (uproot) and/or
parquet (awkward). `predict_dask` fans the files out over a Dask cluster (one task per file);
`ArrayScorer` scores awkward arrays (dask-awkward partitions) inside a columnar analysis. Not
part of the server: `rootml serve` never imports this package.
"""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "ArrayScorer": "rootml.predict.arrays",
        "branch_names": "rootml.predict.run",
        "open_model": "rootml.predict.run",
        "output_paths": "rootml.predict.run",
        "predict": "rootml.predict.run",
        "predict_dask": "rootml.predict.fanout",
    },
)
