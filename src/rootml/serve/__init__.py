"""Inference: a KServe V2 / Open Inference Protocol server over onnxruntime.

Never imports torch, uproot, the streaming layer or batch scoring (docs/architecture.md).
"""

from rootml._lazy import lazy_exports

__all__ = lazy_exports(
    __name__,
    {
        "Endpoints": "rootml.serve.endpoints",
        "ModelManager": "rootml.serve.models",
        "ServeSettings": "rootml.serve.settings",
        "ServedVersion": "rootml.serve.models",
        "create_app": "rootml.serve.app",
        "run_server": "rootml.serve.app",
    },
)
