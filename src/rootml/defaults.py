"""Defaults of the settings a user meets in more than one place (a library function and the
`rootml` command): defined once here, read by both. Plain numbers only, so the command line can
import this module without torch, uproot or the server.
"""

MiB = 1 << 20

# Streaming (rootml.datasets): entries read at once per file, entries per batch; attempts at a
# read that fails in transport, and the first wait between them (doubling).
CHUNK_SIZE = 100_000
BATCH_SIZE = 1024
RETRIES = 3
BACKOFF_S = 0.5

# Export (rootml.export): ONNX opset; the parity check's largest |onnxruntime - torch|, batches
# and rows per batch; config.pbtxt max_batch_size when the first dim is variable.
ONNX_OPSET = 17
PARITY_TOLERANCE = 1e-5
PARITY_BATCHES = 4
PARITY_BATCH_SIZE = 256
MAX_BATCH_SIZE = 1024

# Serving (rootml serve, rootml.serve.app.ServeSettings).
SERVE_MAX_BODY_BYTES = 64 * MiB
SERVE_MAX_UPLOAD_BYTES = 256 * MiB
SERVE_REQUEST_TIMEOUT_S = 30.0
SERVE_BODY_TIMEOUT_S = 30.0
SERVE_MAX_QUEUE = 1024
# Where versions run whose config.pbtxt instance_group gives no kind: auto, cpu, cuda, cuda:N.
SERVE_DEVICE = "auto"
