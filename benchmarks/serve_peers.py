"""The peers of benchmarks/serve.py: KServe's and MLServer's Python model servers on one ONNX model.

Each runs in a virtual environment of its own (their pins differ from rootml's: KServe 0.21 wants
another protobuf, MLServer 1.7 an older FastAPI and Starlette), made once by serve.py
(`--peers`) under .peers/ (git-ignored):

    python -m venv .peers/kserve && .peers/kserve/bin/pip install kserve==0.21.0 onnxruntime
    python -m venv .peers/mlserver && .peers/mlserver/bin/pip install mlserver==1.7.1 onnxruntime 'uvloop<0.22'

Both serve ONNX the way their documentation serves a custom model: a small model class whose
predict calls onnxruntime (one intra-op thread, as rootml's runs), the rest their defaults
(KServe: one uvicorn worker; MLServer: its default parallel inference worker process). This file
imports neither rootml nor anything of serve.py: it runs inside the peers' environments.

    .peers/kserve/bin/python benchmarks/serve_peers.py kserve MODEL.onnx --port HTTP_PORT
    .peers/mlserver/bin/python benchmarks/serve_peers.py mlserver MODEL.onnx --port HTTP_PORT
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

MODEL_NAME = "mlp"


def _session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def serve_kserve(model_path: str, port: int) -> None:
    """KServe's ModelServer with a kserve.Model around onnxruntime (REST V2; gRPC off)."""
    from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer
    from kserve.utils.utils import generate_uuid

    class OnnxModel(Model):
        def __init__(self, name: str, path: str):
            super().__init__(name)
            self.session = _session(path)
            self.input = self.session.get_inputs()[0].name
            self.output = self.session.get_outputs()[0].name
            self.ready = True

        def predict(self, payload: InferRequest, headers=None, response_headers=None):
            x = payload.inputs[0].as_numpy()
            y = self.session.run([self.output], {self.input: x})[0]
            out = InferOutput(name=self.output, shape=list(y.shape), datatype="FP32")
            out.set_data_from_numpy(y, binary_data=payload.use_binary_outputs)
            return InferResponse(
                model_name=self.name, infer_outputs=[out], response_id=payload.id or generate_uuid(),
                use_binary_outputs=payload.use_binary_outputs,
            )  # fmt: skip

    sys.argv = sys.argv[:1]  # ModelServer reads its own argparse defaults from sys.argv
    model_path = str(Path(model_path).resolve())
    os.chdir(tempfile.mkdtemp(prefix="rootml-bench-kserve-"))  # what it writes, out of the checkout
    ModelServer(http_port=port, grpc_port=_free_port(), enable_grpc=False, workers=1).start(
        [OnnxModel(MODEL_NAME, model_path)]
    )


def mlserver_model():
    """The mlserver.MLModel class around onnxruntime (made here: mlserver is importable only in
    its own venv)."""
    from mlserver import MLModel
    from mlserver.codecs import NumpyCodec
    from mlserver.types import InferenceRequest, InferenceResponse

    class OnnxRuntime(MLModel):
        async def load(self) -> bool:
            self.session = _session(self.settings.parameters.uri)
            self.input = self.session.get_inputs()[0].name
            self.output = self.session.get_outputs()[0].name
            return True

        async def predict(self, payload: InferenceRequest) -> InferenceResponse:
            x = NumpyCodec.decode_input(payload.inputs[0])
            y = self.session.run([self.output], {self.input: x})[0]
            return InferenceResponse(
                model_name=self.name, id=payload.id,
                outputs=[NumpyCodec.encode_output(self.output, y)],
            )  # fmt: skip

    return OnnxRuntime


def serve_mlserver(model_path: str, port: int) -> None:
    """`mlserver start` on a folder holding settings.json and the model's model-settings.json,
    whose implementation is this file's OnnxRuntime."""
    folder = Path(tempfile.mkdtemp(prefix="rootml-bench-mlserver-"))
    (folder / "peer_model.py").write_text(
        f"import sys\nsys.path.insert(0, {str(Path(__file__).parent)!r})\n"
        "from serve_peers import mlserver_model\nOnnxRuntime = mlserver_model()\n"
    )
    # metrics_dir: MLServer's prometheus files (default .metrics in the working directory).
    settings = {"http_port": port, "grpc_port": _free_port(), "metrics_port": _free_port(),
                "host": "127.0.0.1", "metrics_dir": str(folder / "metrics")}  # fmt: skip
    (folder / "settings.json").write_text(json.dumps(settings))
    model = {"name": MODEL_NAME, "implementation": "peer_model.OnnxRuntime",
             "parameters": {"uri": str(Path(model_path).resolve())}}  # fmt: skip
    (folder / "model-settings.json").write_text(json.dumps(model))
    mlserver = Path(sys.executable).with_name("mlserver")
    os.chdir(folder)  # whatever else it writes stays out of the checkout
    os.execv(str(mlserver), [str(mlserver), "start", str(folder)])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_venv(folder: Path, requirements: list[str]) -> Path:
    """A venv at `folder` with `requirements` installed (once); its python."""
    python = folder / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(folder)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *requirements], check=True)
    return python


# peer -> requirements of its venv
PEERS = {
    "kserve": ["kserve==0.21.0", "onnxruntime"],
    # MLServer 1.7.1's inference workers call asyncio.get_event_loop() with no loop, which uvloop
    # 0.22 and later refuse.
    "mlserver": ["mlserver==1.7.1", "onnxruntime", "uvloop<0.22"],
}

if __name__ == "__main__":
    peer, path, _, http_port = sys.argv[1:5]
    {"kserve": serve_kserve, "mlserver": serve_mlserver}[peer](path, int(http_port))
