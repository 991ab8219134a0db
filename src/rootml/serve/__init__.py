"""Inference: a KServe V2 / Open Inference Protocol server over onnxruntime."""

from rootml.serve.app import ServeSettings, create_app, run_server
from rootml.serve.models import ModelManager, ServedVersion

__all__ = ["ModelManager", "ServeSettings", "ServedVersion", "create_app", "run_server"]
