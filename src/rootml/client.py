"""A small client for rootml's server (or any KServe V2 server): numpy arrays in and out.

```python
from rootml.client import Client
with Client("http://127.0.0.1:8000") as client:
    scores = client.infer("tth", {"features": x, "mask": m})["score"]   # x: float32 (B, F)
```
Tensors travel with the binary tensor extension by default (raw bytes after a JSON header).
The wire format comes from rootml.protocol, which the server shares; nothing of the server is
imported, so a client needs httpx, numpy and orjson only (awkward only for `columns_to_inputs`
of awkward arrays).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from rootml.errors import FileAccessError, error_for_status
from rootml.protocol import columns_to_inputs as columns_to_inputs
from rootml.protocol import decode_infer_response, encode_infer_request


class Client:
    """HTTP client of one server. `token` is the bearer token for load, unload and upload."""

    def __init__(
        self,
        url: str = "http://127.0.0.1:8000",
        token: str | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
    ):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=url.rstrip("/"), headers=headers, timeout=timeout, transport=transport
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The response to one request. Raises FileAccessError, in one line, when the server
        cannot be reached or does not answer in time (httpx's errors carry 20+ frames)."""
        url = f"{self._http.base_url}".rstrip("/")
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.ConnectError as err:
            raise FileAccessError(
                f"cannot connect to the server at {url} ({err}); is `rootml serve` running there?"
            ) from err
        except httpx.TimeoutException as err:
            timeout = self._http.timeout.read
            raise FileAccessError(f"{method} {url}{path}: no answer within {timeout} s") from err
        except httpx.TransportError as err:
            raise FileAccessError(f"{method} {url}{path}: {type(err).__name__}: {err}") from err

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """`_send`, raising the ProtocolError of an error status (rootml.errors.error_for_status:
        NotFound for 404, Unavailable for 503, ...) with the server's message."""
        response = self._send(method, path, **kwargs)
        if response.status_code >= 300:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text or response.reason_phrase
            raise error_for_status(response.status_code, f"{method} {path}: {message}")
        return response

    @staticmethod
    def _model_path(name: str, version: str | int | None) -> str:
        return f"/v2/models/{name}" + (f"/versions/{version}" if version not in (None, "") else "")

    def live(self) -> bool:
        """Whether the server answers /v2/health/live (False when it cannot be reached)."""
        return self._health("/v2/health/live")

    def ready(self) -> bool:
        """Whether the server is ready (its models are loaded; False when it cannot be reached)."""
        return self._health("/v2/health/ready")

    def _health(self, path: str) -> bool:
        try:
            return self._send("GET", path).status_code == 200
        except FileAccessError:
            return False

    def server_metadata(self) -> dict[str, Any]:
        """``{"name", "version", "extensions"}``."""
        return self._request("GET", "/v2").json()

    def model_metadata(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        """``{"name", "versions", "platform", "inputs", "outputs"}``, -1 for a variable dim."""
        return self._request("GET", self._model_path(name, version)).json()

    def model_config(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        """The model's config.pbtxt as JSON (max_batch_size, inputs, outputs, dynamic_batching)."""
        return self._request("GET", self._model_path(name, version) + "/config").json()

    def model_rootml(self, name: str, version: str | int | None = None) -> dict[str, Any]:
        """The rootml.json of a version (default: the default version) of model `name`: Specs,
        feature names, labels, normalisation. NotFound if it has none."""
        return self._request("GET", self._model_path(name, version) + "/rootml").json()

    def infer(
        self,
        name: str,
        inputs: dict[str, np.ndarray],
        version: str | int | None = None,
        outputs: list[str] | None = None,
        binary: bool = True,
    ) -> dict[str, np.ndarray]:
        """Run model `name` on `inputs` (input name -> array); return output name -> array.

        Raises ProtocolError with the server's message and HTTP status.
        """
        body, header_length = encode_infer_request(inputs, outputs, binary=binary)
        headers = {
            "Content-Type": "application/octet-stream" if header_length else "application/json"
        }
        if header_length is not None:
            headers["Inference-Header-Content-Length"] = str(header_length)
        response = self._request(
            "POST", self._model_path(name, version) + "/infer", content=body, headers=headers
        )
        return decode_infer_response(
            response.content, response.headers.get("inference-header-content-length")
        )

    def repository_index(self, ready_only: bool = False) -> list[dict[str, str]]:
        """``[{"name", "version", "state", "reason"}]`` of the server's repository."""
        return self._request("POST", "/v2/repository/index", json={"ready": ready_only}).json()

    def load(self, name: str) -> None:
        """(Re)load model `name` from the server's repository (needs the token)."""
        self._request("POST", f"/v2/repository/models/{name}/load")

    def unload(self, name: str) -> None:
        """Stop serving model `name` (needs the token)."""
        self._request("POST", f"/v2/repository/models/{name}/unload")

    def upload(self, name: str, model: str | os.PathLike | bytes) -> int:
        """Upload a .onnx file or a model folder archive (.tar.gz, .zip) as a new version of
        `name` (needs the token); return the version number once the server serves it."""
        body = model if isinstance(model, bytes) else Path(model).read_bytes()
        response = self._request(
            "POST",
            f"/v2/repository/models/{name}/upload",
            content=body,
            headers={"Content-Type": "application/octet-stream"},
        )
        return int(response.json()["version"])
