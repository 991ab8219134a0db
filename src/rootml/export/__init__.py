"""Export: ONNX models in a Triton-layout model repository, and the loader the server uses."""

from rootml._lazy import lazy_exports

_REPOSITORY = "rootml.export.repository"
_CONFIG = "rootml.export.model_config"
__all__ = lazy_exports(
    __name__,
    {
        "LoadedModel": _REPOSITORY,
        "Preprocessing": "rootml.export.preprocessing",
        "TensorSpec": _REPOSITORY,
        "TrainedRun": "rootml.export.checkpoint",
        "add_onnx_model": _REPOSITORY,
        "build_onnx": "rootml.export.run",
        "check_metadata": _REPOSITORY,
        "check_model_name": _REPOSITORY,
        "check_signature": _CONFIG,
        "export_run": "rootml.export.run",
        "format_config": "rootml.export.pbtxt",
        "graph_io": _REPOSITORY,
        "list_models": _REPOSITORY,
        "list_versions": _REPOSITORY,
        "load_model": _REPOSITORY,
        "load_run": "rootml.export.checkpoint",
        "make_config": _REPOSITORY,
        "model_dir": _REPOSITORY,
        "next_version": _REPOSITORY,
        "parse_config": "rootml.export.pbtxt",
        "read_config": _REPOSITORY,
        "read_metadata": _REPOSITORY,
        "validate_config": _CONFIG,
        "validate_onnx": _REPOSITORY,
        "version_metadata": _REPOSITORY,
    },
)
