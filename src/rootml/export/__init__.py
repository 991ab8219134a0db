"""Export: ONNX models in a Triton-layout model repository, and the loader the server uses."""

from rootml.export.checkpoint import TrainedRun, load_run
from rootml.export.pbtxt import format_config, parse_config
from rootml.export.repository import (
    LoadedModel,
    TensorSpec,
    add_onnx_model,
    check_model_name,
    graph_io,
    list_models,
    list_versions,
    load_model,
    make_config,
    model_dir,
    next_version,
    read_config,
    read_metadata,
    validate_onnx,
)
from rootml.export.run import build_onnx, export_run

__all__ = [
    "LoadedModel",
    "TensorSpec",
    "TrainedRun",
    "add_onnx_model",
    "build_onnx",
    "check_model_name",
    "export_run",
    "format_config",
    "graph_io",
    "list_models",
    "list_versions",
    "load_model",
    "load_run",
    "make_config",
    "model_dir",
    "next_version",
    "parse_config",
    "read_config",
    "read_metadata",
    "validate_onnx",
]
