"""Everything that changes values: pure functions of a chunk plus the fitted `Specs`."""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "BranchSpec": "rootml.transforms.specs",
        "CollectionLayout": "rootml.transforms.collection",
        "Column": "rootml.transforms.layout",
        "Compose": "rootml.transforms.compose",
        "FlatLayout": "rootml.transforms.layout",
        "Histograms": "rootml.transforms.hist",
        "NonFinite": "rootml.transforms.normalize",
        "Pipeline": "rootml.transforms.pipeline",
        "Normalize": "rootml.transforms.normalize",
        "SortBy": "rootml.transforms.sort",
        "Specs": "rootml.transforms.specs",
        "collection_name": "rootml.transforms.collection",
        "jagged_parts": "rootml.transforms.pad",
        "layout_parts": "rootml.transforms.collection",
        "make_columns": "rootml.transforms.layout",
        "build_pipeline": "rootml.transforms.pipeline",
        "make_layout": "rootml.transforms.pipeline",
        "pad_jagged": "rootml.transforms.pad",
        "parse_sort_key": "rootml.transforms.sort",
        "to_torch": "rootml.transforms.compose",
    },
)
