"""Serving benchmark: `rootml serve` on loopback next to onnxruntime in-process and a minimal server.

Models (built here with onnx.helper, random weights, fixed seed):

- mlp: 100 inputs -> 128 -> 64 -> 1 (ReLU, sigmoid), the 100-input MLP of SERVING.md's figure;
- heavy: 100 -> 2048 x 4 -> 1, a model whose single-row run costs >= 1 ms (measured, printed),
  for dynamic batching.

Each is served twice by one `rootml serve`: without batching, and as `<name>_batched` with
dynamic batching (config.pbtxt `dynamic_batching`, see BATCHING). Cases:

- inprocess: `session.run` in a loop on the same batches (1, 64, 1024 rows) with the server's
  session options (1 intra-op thread); `inprocess-2threads`: two threads calling it at once;
- starlette: the floor of a Python HTTP server, a ~30-line Starlette + orjson endpoint around the
  same session (defined here, run by uvicorn with the server's options in a subprocess), V2 JSON
  and binary, the run inline;
- rootml: KServe V2 infer, JSON and binary tensors, batch 1/64/1024, 1 and 64 clients, batching
  off/on; every request/response pair is first checked against the in-process outputs;
- rootml_workers, starlette_workers: both servers with one worker process per core
  (`--workers`), single-row JSON and binary batch 1024 with 64 clients;
- peers (--peers): KServe 0.21's and MLServer 1.7's Python servers (serve_peers.py, each in its
  own venv under .peers/) and Triton 2.51's python backend with an instance per core, on the mlp
  model alone, next to rootml serving that model alone with its defaults (rootml_alone) and a
  worker per core (rootml_alone_workers): single-row JSON and binary batch 1024, RSS per server;
- rootml_grpc: the same `rootml serve` process over gRPC (`--grpc-port`, the protocol SONIC and
  tritonclient.grpc speak), raw_input_contents, batch 1 with 1 and 64 clients and batch 1024
  with 64, next to the HTTP binary cases of the same batch and clients.

Every target's two cases are then run again back to back, three times with the order
alternating (paired rounds): the target is the median of those ratios, so that a machine whose
speed drifts over the minutes of a run (seen here: 15-20%) does not decide it.

Load comes from wrk (Debian's `wrk`, a Lua script for the POST bodies; one thread) or, without
wrk or with `--client python`, from an asyncio raw-socket client in this process. gRPC load comes
from a process of its own running grpc.aio on one channel, sending one ModelInferRequest
serialized once (by tritonclient.grpc's messages) and not decoding the answers: a lean generator,
as wrk is for HTTP, so the server is not starved of the cores; every case's answer is first
checked through tritonclient.grpc itself. The server,
the load generator and this script share the machine's cores: a load generator that takes CPU
takes it from the server too. The CPU of the server, of its event loop thread and of the load
generator (from /proc and getrusage) is recorded per case: with the loop thread near one core,
the loop is the limit.

Usage:
    python benchmarks/serve.py              # full (~12 min on 2 cores), results/serve.json
    python benchmarks/serve.py --quick      # 1 s per case (~1 min; what `rootml bench` runs)
    python benchmarks/serve.py --profile    # also py-spy the server over the target cases
    python benchmarks/serve.py --peers kserve,mlserver,triton   # and the peers (serve_peers.py)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
FEATURES = 100
MODELS = {"mlp": [FEATURES, 128, 64, 1], "heavy": [FEATURES, 2048, 2048, 2048, 2048, 1]}
# Dynamic batching of the *_batched models (config.pbtxt): wait at most 1 ms for a batch, send it
# once it holds 32 rows (so with 64 clients one batch runs while the next one's requests arrive).
BATCHING = {"max_queue_delay_microseconds": 1000, "preferred_batch_size": [32]}
BATCHES = (1, 64, 1024)
CLIENTS = (1, 64)
TARGETS = {
    # name: (numerator case, denominator case, key, needed ratio); for a CPU-per-request key
    # the ratio is the denominator's CPU over the numerator's (higher is better, as for req/s).
    "json b1 c64: rootml / starlette req/s": (
        "rootml-json-b1-c64",
        "starlette-json-b1-c64",
        "req_per_s",
        0.95,
    ),
    "json b1 c64: starlette / rootml server CPU per request": (
        "rootml-json-b1-c64",
        "starlette-json-b1-c64",
        "server_cpu_us_per_req",
        0.95,
    ),
    "binary b1024 c64: rootml / in-process rows/s": (
        "rootml-binary-b1024-c64",
        "inprocess-b1024",
        "rows_per_s",
        0.7,
    ),
    "heavy json b1 c64: batching on / off req/s": (
        "heavy_batched-json-b1-c64",
        "heavy-json-b1-c64",
        "req_per_s",
        3.0,
    ),
    # The same two with one worker process per core (--workers), the reference likewise.
    "json b1 c64, a worker per core: rootml / starlette req/s": (
        "rootml_workers-json-b1-c64",
        "starlette_workers-json-b1-c64",
        "req_per_s",
        0.95,
    ),
    "binary b1024 c64, a worker per core: rootml / in-process rows/s": (
        "rootml_workers-binary-b1024-c64",
        "inprocess-b1024",
        "rows_per_s",
        0.7,
    ),
}
# With --peers triton: rootml serving the same single model with its default settings against
# Triton's python backend with an instance per core, both on every core.
PEER_TARGETS = {
    "json b1 c64: rootml (defaults) / triton (an instance per core) req/s": (
        "rootml_alone-json-b1-c64",
        "triton-json-b1-c64",
        "req_per_s",
        1.0,
    ),
    "binary b1024 c64: rootml (defaults) / triton (an instance per core) req/s": (
        "rootml_alone-binary-b1024-c64",
        "triton-binary-b1024-c64",
        "req_per_s",
        1.0,
    ),
}


def _ratio(a: dict, b: dict, key: str) -> float:
    """a over b in `key`, or b over a for CPU per request (so that higher is better)."""
    return b[key] / a[key] if key.endswith("_per_req") else a[key] / b[key]


# -- models and repository ------------------------------------------------------------------------
def mlp_onnx(widths: list[int], seed: int = 0) -> bytes:
    """An MLP as ONNX: "features" FP32 [-1, widths[0]] -> "score" FP32 [-1, widths[-1]]."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, weights, x = [], [], "features"
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        w = (rng.standard_normal((a, b), dtype=np.float32) * np.float32(np.sqrt(2 / a))).astype(
            np.float32
        )
        weights += [
            numpy_helper.from_array(w, f"w{i}"),
            numpy_helper.from_array(np.full(b, 0.01, np.float32), f"b{i}"),
        ]
        nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [f"h{i}"]))
        x = f"h{i}"
        if i < len(widths) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Sigmoid", [x], ["score"]))
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", widths[0]])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch", widths[-1]])],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def make_repository(folder: Path, models: dict[str, bytes]) -> None:
    """Each model as `name` (no batching) and `name_batched` (dynamic batching) under `folder`."""
    from rootml.export.repository import add_onnx_model

    for name, data in models.items():
        add_onnx_model(folder, name, data)
        add_onnx_model(folder, f"{name}_batched", data, config={"dynamic_batching": BATCHING})


def _session(data: bytes):
    import onnxruntime as ort

    from rootml.export.execution import session_options

    return ort.InferenceSession(data, session_options(1), providers=["CPUExecutionProvider"])


def _inputs(batch: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((batch, FEATURES), dtype=np.float32)


# -- in-process reference -------------------------------------------------------------------------
def run_inprocess(session, batch: int, seconds: float, threads: int = 1) -> dict:
    """`session.run` on one batch in a loop for `seconds` from `threads` threads at once."""
    x = _inputs(batch)
    session.run(["score"], {"features": x})
    times: list[list[float]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads + 1)

    def loop(out: list[float]) -> None:
        start.wait()
        end = time.perf_counter() + seconds
        while True:
            t0 = time.perf_counter()
            session.run(["score"], {"features": x})
            t1 = time.perf_counter()
            out.append(t1 - t0)
            if t1 >= end:
                return

    workers = [threading.Thread(target=loop, args=(t,)) for t in times]
    for w in workers:
        w.start()
    cpu, t0 = time.process_time(), time.perf_counter()
    start.wait()
    for w in workers:
        w.join()
    elapsed = time.perf_counter() - t0
    latencies = np.concatenate([np.asarray(t) for t in times])
    used = time.process_time() - cpu
    summary = _summary(len(latencies), 0, elapsed, latencies, batch)
    return summary | {"client_cpu_s": used, "client_cores": round(used / elapsed, 3)}


def _summary(requests: int, errors: int, seconds: float, latencies, batch: int) -> dict:
    p50, p99 = np.percentile(latencies, [50, 99]) if len(latencies) else (np.nan, np.nan)
    return {
        "requests": int(requests),
        "errors": int(errors),
        "seconds": round(seconds, 4),
        "req_per_s": requests / seconds,
        "rows_per_s": requests * batch / seconds,
        "p50_ms": float(p50) * 1e3,
        "p99_ms": float(p99) * 1e3,
    }


# -- the minimal Starlette endpoint (the floor of a Python HTTP server) ---------------------------
def reference_app(model_path: str):
    """Starlette + orjson + onnxruntime, nothing else: V2 infer of a one-input FP32 model, JSON or
    binary (one tensor after the JSON header, answered the same way)."""
    import orjson
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    session = _session(Path(model_path).read_bytes())
    output = session.get_outputs()[0].name

    async def infer(request):
        body = await request.body()
        length = request.headers.get("inference-header-content-length")
        if length is None:
            item = orjson.loads(body)["inputs"][0]
            x = np.asarray(item["data"], dtype=np.float32).reshape(item["shape"])
        else:
            item = orjson.loads(body[: int(length)])["inputs"][0]
            x = np.frombuffer(body, np.float32, offset=int(length)).reshape(item["shape"])
        y = session.run([output], {item["name"]: x})[0]
        out = {"name": output, "datatype": "FP32", "shape": y.shape}
        doc = {"model_name": request.path_params["name"], "outputs": [out]}
        if length is None:
            out["data"] = y.ravel()
            body = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
            return Response(body, media_type="application/json")
        out["parameters"] = {"binary_data_size": y.nbytes}
        header = orjson.dumps(doc)
        headers = {"Inference-Header-Content-Length": str(len(header))}
        return Response(header + y.tobytes(), headers=headers)

    async def ready(request):
        return Response(b'{"ready":true}', media_type="application/json")

    routes = [
        Route("/v2/models/{name}/infer", infer, methods=["POST"]),
        Route("/v2/health/ready", ready),
    ]
    return Starlette(routes=routes)


def reference_from_env():
    """App factory of the reference's uvicorn worker processes: the model path in the env."""
    return reference_app(os.environ["BENCH_REFERENCE_MODEL"])


def _serve_reference(model_path: str, port: int, workers: int = 1) -> None:
    import uvicorn

    # The options of rootml.serve.app.run_server, so both servers run on the same HTTP stack.
    options = {"host": "127.0.0.1", "port": port, "log_level": "warning", "access_log": False}
    if workers <= 1:
        uvicorn.run(reference_app(model_path), **options)
        return
    os.environ["BENCH_REFERENCE_MODEL"] = model_path
    uvicorn.run("serve:reference_from_env", factory=True, workers=workers, app_dir=str(HERE),
                **options)  # fmt: skip


# -- servers --------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _machine_busy() -> float:
    """Seconds of CPU the whole machine spent not idle so far (all cores, /proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _cpu(stat: str) -> float:
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes), from /proc."""
    pids, i = [pid], 0
    while i < len(pids):
        with contextlib.suppress(OSError):
            for task in os.listdir(f"/proc/{pids[i]}/task"):
                children = Path(f"/proc/{pids[i]}/task/{task}/children").read_text().split()
                pids += [int(c) for c in children]
        i += 1
    return pids


class Server:
    """A server subprocess on a free loopback port; wait_ready() until /v2/health/ready is 200."""

    def __init__(self, command: list[str], log: Path, port: int, env: dict | None = None):
        self.port, self.log, self.command = port, log, command
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT,
                env=env,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 180) -> None:
        import httpx

        # 20 ready answers in a row, each on a new connection: with worker processes, those
        # still loading the models accept none, so a run of answers means all are up. The
        # timeout is generous: worker processes each import onnxruntime, slow on a loaded machine.
        deadline, answers = time.monotonic() + timeout, 0
        while time.monotonic() < deadline and self.process.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                ok = httpx.get(f"{self.url}/v2/health/ready", timeout=5).status_code == 200
                answers = answers + 1 if ok else 0
                if answers == 20:
                    return
            time.sleep(0.02 if answers else 0.1)
        code = self.process.poll()
        why = f"exited with {code}" if code is not None else f"not ready in {timeout:.0f} s"
        raise RuntimeError(
            f"{self.command[:4]} did not become ready ({why}):\n{self.log.read_text()[-2000:]}"
        )

    def cpu_seconds(self) -> dict[str, float]:
        """User + system CPU so far of the server's main threads (its event loops, one per
        worker process: "loop"), and of its processes with all their threads ("all")."""
        out = {"loop": 0.0, "all": 0.0}
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError):  # a process that just ended
                loop, everything = _cpu(f"/proc/{pid}/task/{pid}/stat"), _cpu(f"/proc/{pid}/stat")
                out["loop"] += loop
                out["all"] += everything
        return out

    def rss_mb(self) -> float:
        """Resident memory of the server's processes together (workers included), MB."""
        total = 0
        for pid in _process_tree(self.process.pid):
            with contextlib.suppress(OSError):
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(status.split("VmRSS:", 1)[1].split()[0])
        return total / 1024

    def stop(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)


# -- load generators ------------------------------------------------------------------------------
_WRK_SCRIPT = """
local f = assert(io.open(os.getenv("BENCH_BODY"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
local header_length = os.getenv("BENCH_HEADER_LENGTH")
if header_length ~= "" then wrk.headers["Inference-Header-Content-Length"] = header_length end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\\nWRK_JSON {"requests": %d, "duration_us": %d, "connect": %d, "read": %d, "write": %d, '
    .. '"status": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}\\n',
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


def run_wrk(url: str, body: bytes, header_length: int | None, clients: int, seconds: float,
            batch: int, folder: Path) -> dict:  # fmt: skip
    """wrk -t1 -c`clients` POSTing `body` for `seconds` (whole seconds, at least 1)."""
    import resource

    script, data = folder / "post.lua", folder / "body.bin"
    script.write_text(_WRK_SCRIPT)
    data.write_bytes(body)
    env = {
        **os.environ,
        "BENCH_BODY": str(data),
        "BENCH_HEADER_LENGTH": "" if header_length is None else str(header_length),
        "BENCH_CONTENT_TYPE": "application/octet-stream" if header_length else "application/json",
    }
    duration = max(1, round(seconds))
    command = ["wrk", "-t1", f"-c{clients}", f"-d{duration}s", "--timeout", "10s"]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        [*command, "-s", str(script), url], capture_output=True, text=True, env=env,
        timeout=duration + 60,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    match = re.search(r"WRK_JSON (\{.*\})", done.stdout)
    if done.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {(done.stderr or done.stdout)[-500:]}")
    w = json.loads(match.group(1))
    errors = w["connect"] + w["read"] + w["write"] + w["status"] + w["timeout"]
    elapsed = w["duration_us"] / 1e6
    return {
        "requests": w["requests"],
        "errors": errors,
        "error_kinds": {k: w[k] for k in ("connect", "read", "write", "status", "timeout")},
        "seconds": round(elapsed, 4),
        "req_per_s": w["requests"] / elapsed,
        "rows_per_s": w["requests"] * batch / elapsed,
        "p50_ms": w["p50_us"] / 1e3,
        "p99_ms": w["p99_us"] / 1e3,
        "client_cpu_s": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
    }


def _request_bytes(port: int, path: str, body: bytes, header_length: int | None) -> bytes:
    head = [f"POST {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", f"Content-Length: {len(body)}"]
    if header_length is None:
        head.append("Content-Type: application/json")
    else:
        head.append(f"Inference-Header-Content-Length: {header_length}")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


async def _python_load(port: int, request: bytes, clients: int, seconds: float):
    latencies: list[float] = []
    errors = 0

    async def client() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            # At least one request per connection: a pause in this process (a full garbage
            # collection after other work in it, as in the tests) may outlast a short case.
            while True:
                t0 = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
                if length or not re.search(rb"(?im)^transfer-encoding:\s*chunked", head):
                    await reader.readexactly(int(length.group(1)) if length else 0)
                else:  # chunked (KServe's binary answers): sizes in hex, up to a 0-size chunk
                    while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
                        await reader.readexactly(size + 2)
                    await reader.readuntil(b"\r\n")
                if head[9:12] == b"200":
                    latencies.append(time.perf_counter() - t0)
                else:
                    errors += 1
                if time.perf_counter() >= end:
                    break
        finally:
            writer.close()

    end = time.perf_counter() + seconds
    t0 = time.perf_counter()
    outcomes = await asyncio.gather(*(client() for _ in range(clients)), return_exceptions=True)
    errors += sum(isinstance(o, Exception) for o in outcomes)
    return latencies, errors, time.perf_counter() - t0


def run_python_client(port: int, path: str, body: bytes, header_length: int | None, clients: int,
                      seconds: float, batch: int) -> dict:  # fmt: skip
    """`clients` keep-alive connections from one asyncio loop in this process, for `seconds`."""
    cpu = time.process_time()
    request = _request_bytes(port, path, body, header_length)
    latencies, errors, elapsed = asyncio.run(_python_load(port, request, clients, seconds))
    result = _summary(len(latencies), errors, elapsed, np.asarray(latencies), batch)
    return result | {"client_cpu_s": time.process_time() - cpu}


def _grpc_request(model: str, batch: int) -> bytes:
    """A ModelInferRequest of `batch` rows in raw_input_contents, serialized by tritonclient's
    own messages (tritonclient.grpc.service_pb2)."""
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model, id="bench")
    request.inputs.add(name="features", datatype="FP32", shape=[batch, FEATURES])
    request.raw_input_contents.append(_inputs(batch).tobytes())
    return request.SerializeToString()


async def _grpc_load(address: str, request: bytes, clients: int, seconds: float):
    import grpc

    latencies: list[float] = []
    errors = 0
    async with grpc.aio.insecure_channel(address) as channel:
        # Bytes in, bytes out: no protobuf work in the generator per call.
        infer = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")

        async def client() -> None:
            nonlocal errors
            while True:
                t0 = time.perf_counter()
                try:
                    await infer(request, timeout=30)
                    latencies.append(time.perf_counter() - t0)
                except grpc.RpcError:
                    errors += 1
                if time.perf_counter() >= end:
                    return

        end = time.perf_counter() + seconds
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        return latencies, errors, time.perf_counter() - t0


def grpc_load_main(address: str, model: str, batch: int, clients: int, seconds: float) -> None:
    """The gRPC load generator's process: runs, then prints its summary as JSON."""
    request = _grpc_request(model, batch)
    latencies, errors, elapsed = asyncio.run(_grpc_load(address, request, clients, seconds))
    print(json.dumps(_summary(len(latencies), errors, elapsed, np.asarray(latencies), batch)))


def run_grpc_client(address: str, model: str, batch: int, clients: int, seconds: float) -> dict:
    """The gRPC load generator (grpc_load_main) in a process of its own, for `seconds`."""
    import resource

    command = [sys.executable, str(Path(__file__).resolve()), "--grpc-load", address, model]
    command += [str(batch), str(clients), str(seconds)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 120)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"gRPC load generator failed: {done.stderr[-500:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    used = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return result | {"client_cpu_s": used}


def _check_grpc(address: str, model: str, batch: int, expected: np.ndarray) -> None:
    """One request through tritonclient.grpc; its scores must equal the in-process run's."""
    import tritonclient.grpc as triton

    tensor = triton.InferInput("features", [batch, FEATURES], "FP32")
    tensor.set_data_from_numpy(_inputs(batch))
    with triton.InferenceServerClient(address) as client:
        got = client.infer(model, [tensor]).as_numpy("score")
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(f"gRPC scores differ from in-process onnxruntime: {got[:3]}")


# -- cases ----------------------------------------------------------------------------------------
def grpc_cases() -> list[dict]:
    """The gRPC cases (served by the "rootml" server's --grpc-port)."""
    return [
        dict(server="rootml_grpc", model="mlp", encoding="raw", batch=batch, clients=clients)
        for batch, clients in ((1, 1), (1, 64), (1024, 64))
    ]


def http_cases() -> list[dict]:
    """Every HTTP case, each reference next to what it is compared with."""
    cases = []
    for batch in BATCHES:
        for clients in CLIENTS:
            for encoding in ("json", "binary"):
                cases.append(dict(server="starlette", model="mlp", encoding=encoding))
                cases.append(dict(server="rootml", model="mlp", encoding=encoding))
            for case in cases[-4:]:
                case.update(batch=batch, clients=clients)
    cases += [
        dict(server="rootml", model="mlp_batched", encoding=e, batch=1, clients=64)
        for e in ("json", "binary")
    ]
    for encoding in ("json", "binary"):
        for model in ("heavy", "heavy_batched"):
            cases.append(dict(server="rootml", model=model, encoding=encoding, batch=1, clients=64))
    cases.append(dict(server="rootml", model="heavy_batched", encoding="json", batch=1, clients=1))
    # One worker process per core (--workers): each with its own event loop.
    for encoding, batch in (("json", 1), ("binary", 1024)):
        for server in ("starlette_workers", "rootml_workers"):
            cases.append(
                dict(server=server, model="mlp", encoding=encoding, batch=batch, clients=64)
            )
    return cases


def peer_cases(peers: list[str]) -> list[dict]:
    """The peers' cases: single-row JSON and binary batch 1024, 64 clients, next to rootml
    serving the same one model (rootml_alone: its defaults; rootml_alone_workers: a worker process
    per core). MLServer 1.7 has no binary tensor extension (its REST body must be JSON)."""
    if not peers:
        return []
    servers = ["rootml_alone", "rootml_alone_workers", *peers]
    return [
        dict(server=server, model="mlp", encoding=encoding, batch=batch, clients=64)
        for encoding, batch in (("json", 1), ("binary", 1024))
        for server in servers
        if not (server == "mlserver" and encoding == "binary")
    ]


def case_name(case: dict) -> str:
    """rootml-json-b1-c64, rootml_batched-..., heavy-..., heavy_batched-..., starlette-...,
    rootml_workers-..., starlette_workers-..."""
    prefix = {"mlp": "rootml", "mlp_batched": "rootml_batched"}.get(case["model"], case["model"])
    if case["server"] != "rootml":
        prefix = case["server"]
    return f"{prefix}-{case['encoding']}-b{case['batch']}-c{case['clients']}"


def _body(batch: int, encoding: str) -> tuple[bytes, int | None]:
    from rootml.protocol import encode_infer_request

    return encode_infer_request({"features": _inputs(batch)}, binary=encoding == "binary")


def _check(url: str, body: bytes, header_length: int | None, expected: np.ndarray) -> None:
    """One request; its scores must equal the in-process run's (else RuntimeError)."""
    import httpx

    from rootml.protocol import decode_infer_response

    headers = (
        {"Content-Type": "application/json"}  # as wrk sends (KServe reads a body without it
        if header_length is None  # as binary)
        else {"Inference-Header-Content-Length": str(header_length)}
    )
    answer = httpx.post(url, content=body, headers=headers, timeout=60)
    if answer.status_code != 200:
        raise RuntimeError(f"HTTP {answer.status_code}: {answer.text[:300]}")
    got = decode_infer_response(
        answer.content, answer.headers.get("inference-header-content-length")
    )["score"]
    if got.shape != expected.shape or not np.allclose(got, expected, rtol=1e-5, atol=1e-6):
        raise RuntimeError(
            f"scores differ from in-process onnxruntime: {got[:3]} vs {expected[:3]}"
        )


def _run_http(case: dict, servers: dict, sessions: dict, client: str, seconds: float,
              folder: Path) -> dict:  # fmt: skip
    server = servers[case["server"]]
    path = f"/v2/models/{case['model']}/infer"
    body, header_length = _body(case["batch"], case["encoding"])
    base_model = case["model"].removesuffix("_batched")
    expected = sessions[base_model].run(["score"], {"features": _inputs(case["batch"])})[0]
    _check(server.url + path, body, header_length, expected)

    def load() -> dict:
        if client == "wrk":
            return run_wrk(server.url + path, body, header_length, case["clients"], seconds,
                           case["batch"], folder)  # fmt: skip
        return run_python_client(
            server.port, path, body, header_length, case["clients"], seconds, case["batch"]
        )

    return _measured(case, server, client, load) | {"body_bytes": len(body)}


def _run_grpc(case: dict, servers: dict, sessions: dict, seconds: float) -> dict:
    server = servers["rootml"]
    expected = sessions[case["model"]].run(["score"], {"features": _inputs(case["batch"])})[0]
    _check_grpc(server.grpc_address, case["model"], case["batch"], expected)

    def load() -> dict:
        return run_grpc_client(
            server.grpc_address, case["model"], case["batch"], case["clients"], seconds
        )

    size = len(_grpc_request(case["model"], case["batch"]))
    return _measured(case, server, "grpc.aio", load) | {"body_bytes": size}


def _measured(case: dict, server: Server, client: str, load) -> dict:
    """`load()`'s results with the CPU the server, its loops and the machine used meanwhile."""
    before, cpu, machine = os.getloadavg()[0], server.cpu_seconds(), _machine_busy()
    result = load()
    after, machine = server.cpu_seconds(), _machine_busy() - machine
    server_cpu = after["all"] - cpu["all"]
    return {
        **case,
        "client": client,
        **result,
        "server_cpu_s": round(server_cpu, 3),
        "server_cpu_us_per_req": server_cpu / max(1, result["requests"]) * 1e6,
        # Cores' worth of CPU the event loop threads used over the case (one per worker
        # process): near 1.0 per worker, the loops are the limit.
        "loop_busy": round((after["loop"] - cpu["loop"]) / result["seconds"], 3),
        "server_cores": round(server_cpu / result["seconds"], 3),
        "client_cores": round(result["client_cpu_s"] / result["seconds"], 3),
        # Every process and the kernel (loopback TCP included): near the core count, the machine
        # itself is the limit.
        "machine_cores": round(machine / result["seconds"], 3),
        "load_before": before,
        "server_rss_mb": round(server.rss_mb(), 1),
    }


# name: (model, batch, threads calling session.run at once)
INPROCESS = {
    **{f"inprocess-b{b}": ("mlp", b, 1) for b in BATCHES},
    "inprocess-2threads-b1024": ("mlp", 1024, 2),
    "heavy-inprocess-b1": ("heavy", 1, 1),
    "heavy-inprocess-b64": ("heavy", 64, 1),
}


def _inprocess_cases(sessions: dict, seconds: float, repeat: int) -> dict:
    cases = {}
    for name, (model, batch, threads) in INPROCESS.items():
        load = os.getloadavg()[0]
        runs = [run_inprocess(sessions[model], batch, seconds, threads) for _ in range(repeat)]
        best = max(runs, key=lambda r: r["rows_per_s"])
        cases[name] = {
            "server": "inprocess",
            "model": model,
            "batch": batch,
            "threads": threads,
            **best,
            "runs": [round(r["req_per_s"], 1) for r in runs],
            "load_before": load,
        }
    return cases


def _paired_rounds(servers: dict, sessions: dict, client: str, seconds: float, folder: Path,
                   rounds: int, progress: bool, peers: list[str]) -> dict:  # fmt: skip
    """Each target's two cases measured back to back `rounds` times, which one first alternating:
    one ratio per round, both sides measured in the same half minute, so the drift of a shared
    machine over a run of minutes (seen here: 15-20%) stays out of the ratio."""
    http = {case_name(case): case for case in http_cases() + peer_cases(peers)}

    def measure(name: str) -> dict:
        if name in INPROCESS:
            model, batch, threads = INPROCESS[name]
            return run_inprocess(sessions[model], batch, min(seconds, 2.0), threads)
        return _run_http(http[name], servers, sessions, client, seconds, folder)

    out = {}
    for target, (numerator, denominator, key, _) in target_table(peers).items():
        _say(progress, f"  target {target}: {rounds} paired rounds ...")
        ratios, errors = [], 0
        for i in range(rounds):
            order = (numerator, denominator) if i % 2 == 0 else (denominator, numerator)
            got = {name: measure(name) for name in order}
            errors += sum(got[name].get("errors", 0) for name in order)
            ratios.append(_ratio(got[numerator], got[denominator], key))
        out[target] = {"ratios": ratios, "errors": errors}
    return out


def run_benchmark(
    quick: bool = False,
    seconds: float | None = None,
    repeat: int | None = None,
    client: str | None = None,
    profile: bool = False,
    progress: bool = True,
    rounds: int | None = None,
    peers: list[str] | None = None,
) -> dict:
    """Run every case and return the results dict (see the module docstring).

    `peers`: other servers on the same model (PEERS: KServe's and MLServer's Python servers,
    Triton's python backend with an instance per core), each in its own venv under .peers/.

    `seconds` per case (full 5, quick 1); HTTP cases run `repeat` times (full 2, quick 1) and keep
    the run with the most requests/s. `client` is "wrk" (default when installed) or "python".
    Each target's cases are then run `rounds` more times in pairs (full 3, quick 0: the target
    is then the ratio of the cases' best runs).
    """
    seconds = seconds or (1.0 if quick else 5.0)
    repeat = repeat or (1 if quick else 2)
    rounds = (0 if quick else 3) if rounds is None else rounds
    client = client or ("wrk" if shutil.which("wrk") else "python")
    if client == "wrk" and not shutil.which("wrk"):
        raise RuntimeError("wrk is not installed (apt-get install wrk), or use --client python")
    results: dict = {
        "benchmark": "serve",
        "mode": "quick" if quick else "full",
        "machine": machine_info(),
        "settings": {
            "seconds": seconds,
            "repeat": repeat,
            "rounds": rounds,
            "client": client,
            "dynamic_batching": BATCHING,
            "server": "rootml serve: 1 worker process (runs in flight = cores) or one per core "
            "(*_workers, one run in flight each); 1 intra-op thread per run",
        },
        "models": {},
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="rootml-bench-serve-") as tmp:
        folder = Path(tmp)
        models = {name: mlp_onnx(widths) for name, widths in MODELS.items()}
        sessions = {name: _session(data) for name, data in models.items()}
        for name, widths in MODELS.items():
            results["models"][name] = {"widths": widths, "onnx_bytes": len(models[name])}
        make_repository(folder / "repo", models)
        from rootml.export.repository import add_onnx_model

        add_onnx_model(folder / "repo-mlp", "mlp", models["mlp"])  # the peers' one model
        (folder / "mlp.onnx").write_bytes(models["mlp"])
        _say(progress, "in-process onnxruntime ...")
        results["cases"].update(_inprocess_cases(sessions, min(seconds, 2.0), repeat))
        single = results["cases"]["heavy-inprocess-b1"]["p50_ms"]
        results["models"]["heavy"]["single_row_ms"] = single
        results["models"]["mlp"]["single_row_ms"] = results["cases"]["inprocess-b1"]["p50_ms"]
        _say(progress, f"heavy model: single-row run {single:.2f} ms (p50)")
        servers = _start_servers(folder, peers or [])
        try:
            for case in http_cases() + grpc_cases() + peer_cases(peers or []):
                name = case_name(case)
                _say(progress, f"  {name} ...")
                runs = []
                for _ in range(repeat):
                    try:
                        if case["server"] == "rootml_grpc":
                            runs.append(_run_grpc(case, servers, sessions, seconds))
                        else:
                            runs.append(_run_http(case, servers, sessions, client, seconds, folder))
                    except Exception as err:  # a failed case is reported, the others still run
                        runs.append({**case, "error": f"{type(err).__name__}: {err}"})
                timed = [r for r in runs if "error" not in r]
                best = max(timed, key=lambda r: r["req_per_s"]) if timed else runs[0]
                best["runs"] = [round(r["req_per_s"], 1) for r in timed]
                results["cases"][name] = best
            if rounds:
                results["rounds"] = _paired_rounds(
                    servers, sessions, client, seconds, folder, rounds, progress, peers or []
                )
            if profile:
                results["profiles"] = _profile(servers, sessions, client, seconds, folder)
        finally:
            for server in servers.values():
                server.stop()
    if peers:
        results["memory"] = {name: server.idle_rss_mb for name, server in servers.items()}
    results["machine"]["load_after"] = os.getloadavg()
    results["targets"] = targets(results["cases"], results.get("rounds"), peers or [])
    return results


def _peer_python(peer: str) -> str:
    """The python of the peer's venv under .peers/ (made on first use: pip, ~1-2 min)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    import serve_peers

    return str(serve_peers.make_venv(ROOT / ".peers" / peer, serve_peers.PEERS[peer]))


def _python_peer(peer: str):
    def start(folder: Path) -> Server:
        port = _free_port()
        command = [_peer_python(peer), str(HERE / "serve_peers.py"), peer, str(folder / "mlp.onnx")]
        return Server([*command, "--port", str(port)], folder / f"{peer}.log", port)

    return start


def _triton(folder: Path) -> Server:
    """Triton 2.51's python backend (tests/serve/_triton.py: the binary of nvidia-pytriton) on
    the mlp model with `instance_group [{count: cores, kind: KIND_CPU}]`: an instance per core."""
    sys.path.insert(0, str(ROOT))
    from rootml.export.pbtxt import format_config, parse_config
    from tests.serve import _triton as triton

    try:
        home = triton.triton_home()
    except triton.pytest.skip.Exception as missing:  # no Triton binary or libpython here
        raise RuntimeError(f"the triton peer cannot run: {missing}") from None
    repo = folder / "triton-repo"
    (repo / "mlp").mkdir(parents=True)
    shutil.copytree(folder / "repo" / "mlp", repo / "mlp", dirs_exist_ok=True)
    served = triton.python_backend_copy(repo, folder / "triton-python-repo")
    config_path = served / "mlp" / "config.pbtxt"
    config = parse_config(config_path.read_text())
    config["instance_group"] = [{"count": _cores(), "kind": "KIND_CPU"}]
    config_path.write_text(format_config(config))
    port = _free_port()
    command = triton._command(
        home, triton.backends(home, folder / "triton-backends"), served,
        "--http-address=127.0.0.1", f"--http-port={port}",
    )  # fmt: skip
    return Server(command, folder / "triton.log", port, env=triton._environment())


# peer -> its server's starter (folder holds mlp.onnx and repo/)
PEERS = {"kserve": _python_peer("kserve"), "mlserver": _python_peer("mlserver"), "triton": _triton}


def _start_servers(folder: Path, peers: list[str]) -> dict:
    """rootml serve on the repository and the Starlette reference on mlp.onnx, each with one
    worker process and with one per core (*_workers), and the `peers`, all started at once."""
    rootml = [sys.executable, "-m", "rootml.cli", "serve", "--repo", str(folder / "repo")]
    grpc_port = _free_port()
    reference = [sys.executable, str(Path(__file__).resolve()), "--reference-server"]
    reference.append(str(folder / "mlp.onnx"))
    workers = ["--workers", str(_cores())]
    commands = {
        "rootml": [*rootml, "--grpc-port", str(grpc_port)],
        "starlette": reference,
        "rootml_workers": [*rootml, *workers],
        "starlette_workers": [*reference, *workers],
    }
    servers = {}
    for name, command in commands.items():
        port = _free_port()
        servers[name] = Server([*command, "--port", str(port)], folder / f"{name}.log", port)
    servers["rootml"].grpc_address = f"127.0.0.1:{grpc_port}"
    if peers:  # rootml on the peers' one model, as they serve it
        alone = [*rootml[:-1], str(folder / "repo-mlp")]
        for name, extra in (("rootml_alone", []), ("rootml_alone_workers", workers)):
            port = _free_port()
            command = [*alone, *extra, "--port", str(port)]
            servers[name] = Server(command, folder / f"{name}.log", port)
    for name in peers:
        servers[name] = PEERS[name](folder)
    try:
        for server in servers.values():
            server.wait_ready()
            # Memory once ready, before any request (what a server holds to serve its models).
            server.idle_rss_mb = round(server.rss_mb(), 1)
    except Exception:
        for server in servers.values():
            server.stop()
        raise
    return servers


def _profile(servers: dict, sessions: dict, client: str, seconds: float, folder: Path) -> dict:
    """py-spy on the server over each target's HTTP cases (run again): where its threads' busy
    samples went. The raw stacks are kept in bench-data/serve-profiles/CASE.txt (git-ignored)."""
    if not shutil.which("py-spy"):
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    profiles = {}
    wanted = {
        n for numerator, denominator, *_ in TARGETS.values() for n in (numerator, denominator)
    }
    for case in http_cases():
        name = case_name(case)
        if name not in wanted:
            continue
        raw = folder / f"{name}.txt"
        spy = subprocess.Popen(
            ["py-spy", "record", "--pid", str(servers[case["server"]].process.pid), "--threads",
             "--subprocesses",
             "--nonblocking", "--format", "raw", "--rate", "200", "--output", str(raw)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        time.sleep(1.0)  # attached
        result = _run_http(case, servers, sessions, client, seconds, folder)
        spy.send_signal(signal.SIGINT)  # py-spy writes its output when interrupted
        spy.wait(timeout=60)
        if not raw.exists():
            profiles[name] = {"error": "py-spy wrote nothing (ptrace not permitted?)"}
            continue
        profiles[name] = {
            "req_per_s": result["req_per_s"],
            "loop_busy": result["loop_busy"],
            **summarise_profile(raw),
        }
        kept = ROOT / "bench-data" / "serve-profiles"
        kept.mkdir(parents=True, exist_ok=True)
        shutil.copy(raw, kept / f"{name}.txt")
    return profiles


# Where a sample's innermost frame is, by file: the layer of the stack that was running.
_LAYERS = (
    ("epoll wait (idle)", "EpollSelector.select"),
    ("uvloop (C: socket I/O, callbacks, idle)", r"Runner\.run \(asyncio/runners\.py"),
    ("rootml", "rootml/"),
    ("onnxruntime", "onnxruntime/"),
    ("prometheus-client", "prometheus_client/"),
    ("uvicorn (HTTP)", "uvicorn/|h11/|httptools/"),
    ("starlette + fastapi", "starlette/|fastapi/"),
    ("asyncio + selectors (event loop, socket I/O)", "asyncio/|selectors.py"),
    ("reference endpoint", "serve.py"),
)


def summarise_profile(raw: Path, top: int = 10) -> dict:
    """py-spy raw stacks (--threads) -> the share of samples per thread and, for the event loop
    thread (MainThread), the share of its samples per layer and per function (innermost frame)."""
    threads: dict[str, int] = {}
    layers: dict[str, int] = {}
    functions: dict[str, int] = {}
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        # --subprocesses: 'process PID:"command";' frames (supervisor, worker) come first; a
        # command may hold ";" (python -c "...; spawn_main(...)").
        n, frames = int(count), re.sub(r'^(process \d+:"[^"]*";)+', "", stack).split(";")
        # "thread (123): rootml-run_0" -> "rootml-run"; frames lose their line numbers.
        thread = re.sub(r"_\d+$", "", frames[0].partition(": ")[2] or frames[0])
        threads[thread] = threads.get(thread, 0) + n
        if thread != "MainThread" or len(frames) < 2:
            continue
        leaf = re.sub(r":\d+\)$", ")", frames[-1])
        functions[leaf] = functions.get(leaf, 0) + n
        layer = next((name for name, where in _LAYERS if re.search(where, leaf)), "other")
        layers[layer] = layers.get(layer, 0) + n

    def ranked(counts: dict) -> list:
        total = max(1, sum(counts.values()))
        shares = [[k, round(100 * v / total, 1)] for k, v in counts.items()]
        return sorted(shares, key=lambda kv: -kv[1])

    return {
        "samples": sum(threads.values()),
        "threads": ranked(threads),
        "loop_layers": ranked(layers),
        "loop_functions": ranked(functions)[:top],
    }


def target_table(peers: list[str]) -> dict:
    """TARGETS, and PEER_TARGETS when Triton is among the `peers`."""
    return TARGETS | (PEER_TARGETS if "triton" in peers else {})


def targets(cases: dict, rounds: dict | None = None, peers: list[str] = ()) -> dict:
    """Each target's ratio, and whether it holds (0 errors too): the median of its paired rounds
    where there are some, else the ratio of its two cases' best runs."""
    out = {}
    for name, (numerator, denominator, key, need) in target_table(list(peers)).items():
        a, b = cases.get(numerator, {}), cases.get(denominator, {})
        if key not in a or key not in b:
            out[name] = {"value": None, "need": f">= {need}", "met": False}
            continue
        cases_ratio = _ratio(a, b, key)
        paired = (rounds or {}).get(name)
        value = statistics.median(paired["ratios"]) if paired else cases_ratio
        errors = a.get("errors", 0) + b.get("errors", 0) + (paired["errors"] if paired else 0)
        out[name] = {
            "value": value,
            "need": f">= {need}",
            "errors": errors,
            "met": value >= need and errors == 0,
            "cases": [numerator, denominator],
            "cases_ratio": cases_ratio,
            "rounds": list(paired["ratios"]) if paired else [],
        }
    return out


def _say(progress: bool, text: str) -> None:
    if progress:
        print(text, file=sys.stderr, flush=True)


def _http_stack() -> str:
    """What uvicorn's "auto" runs here: httptools or h11, uvloop or asyncio."""
    stack = []
    for module, fallback in (("httptools", "h11"), ("uvloop", "asyncio")):
        try:
            __import__(module)
        except ImportError:
            stack.append(fallback)
        else:
            stack.append(module)
    return " + ".join(stack)


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def machine_info() -> dict:
    """CPU, cores, memory, versions, commit, date and the load average at the start."""
    import importlib.metadata

    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory = None
    with contextlib.suppress(OSError):
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                memory = round(int(line.split()[1]) / 1024**2, 1)
    versions = {"python": platform.python_version()}
    for package in ("rootml", "onnxruntime", "numpy", "fastapi", "starlette", "uvicorn", "h11",
                    "httptools", "uvloop", "orjson"):  # fmt: skip
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    if shutil.which("wrk"):
        probe = subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        versions["wrk"] = (probe.stdout + probe.stderr).split("[")[0].replace("wrk", "").strip()
    import rootml

    def commit_of(folder: Path) -> str | None:
        done = subprocess.run(
            ["git", "-C", str(folder), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
        )
        return done.stdout.strip() or None

    return {
        "cpu": cpu,
        "cores": _cores(),
        "memory_gib": memory,
        "platform": platform.platform(),
        "versions": versions,
        "http_stack": _http_stack(),
        "commit": commit_of(ROOT),
        # The rootml code served (another checkout for a baseline run: PYTHONPATH=OLD/src).
        "server_code": commit_of(Path(rootml.__file__).parent),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "load_before": os.getloadavg(),
    }


# -- output ---------------------------------------------------------------------------------------
def _num(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def format_table(results: dict) -> str:
    """The results as a fixed-width text table, then the models and the targets."""
    header = (
        f"{'case':<32} {'client':>6} {'requests':>8} {'err':>4} {'req/s':>9} {'rows/s':>11} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'srv us/req':>10} {'srv':>4} {'loop':>4} {'gen':>4} "
        f"{'all':>4} {'load':>5}"
    )
    lines = [header, "-" * len(header)]
    for name, case in results["cases"].items():
        if "error" in case:
            lines.append(f"{name:<32} error: {case['error'][:150]}")
            continue
        cores = " ".join(
            f"{_num(case.get(k), '.2f'):>4}"
            for k in ("server_cores", "loop_busy", "client_cores", "machine_cores")
        )
        lines.append(
            f"{name:<32} {case.get('client', '-'):>6} {case['requests']:>8} {case['errors']:>4} "
            f"{case['req_per_s']:>9,.0f} {case['rows_per_s']:>11,.0f} {case['p50_ms']:>8.3f} "
            f"{case['p99_ms']:>8.3f} {_num(case.get('server_cpu_us_per_req'), '.0f'):>10} "
            f"{cores} {case.get('load_before', 0):>5.2f}"
        )
    lines.append(
        "srv / loop / gen / all: cores' worth of CPU used over the case by the server's "
        "processes, their event loop threads, the load generator (or the in-process loop) and "
        "the whole machine"
    )
    lines.append("")
    for name, model in results["models"].items():
        lines.append(
            f"model {name}: {' -> '.join(map(str, model['widths']))}, single-row run "
            f"{model.get('single_row_ms', float('nan')):.3f} ms in-process (p50)"
        )
    machine = results["machine"]
    lines.append(
        f"machine: {machine['cpu']}, {machine['cores']} cores shared by server, load generator "
        f"and this script; load average before {machine['load_before'][0]:.2f}"
    )
    if results.get("memory"):
        shown = ", ".join(f"{name} {mb:.0f}" for name, mb in results["memory"].items())
        lines.append(f"RSS once ready, MB (all of a server's processes): {shown}")
    if results.get("mode") == "quick":
        lines.append("(quick run: 1 s per case, indicative only; the targets are for the full run)")
    for name, target in results.get("targets", {}).items():
        value = target["value"]
        verdict = "met" if target["met"] else "NOT met"
        shown = "-" if value is None else f"{value:.2f}"
        rounds = ", ".join(f"{r:.2f}" for r in target.get("rounds", []))
        paired = f"  (paired rounds {rounds})" if rounds else ""
        lines.append(f"target {name:<46} {shown:>6} {target['need']:>7}  {verdict}{paired}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="1 s per case, one run each")
    parser.add_argument("--seconds", type=float, help="seconds per case (full 5, quick 1)")
    parser.add_argument("--repeat", type=int, help="runs per HTTP case, fastest kept (full 2)")
    parser.add_argument("--client", choices=("wrk", "python"), help="load generator")
    parser.add_argument("--profile", action="store_true", help="py-spy the target cases too")
    parser.add_argument("--rounds", type=int, help="paired rounds per target (full 3, quick 0)")
    parser.add_argument(
        "--peers", default="", help="comma-separated peers on the same model: kserve, mlserver, "
        "triton (KServe 0.21 and MLServer 1.7 in venvs of their own under .peers/, made on first "
        "use; Triton 2.51's python backend with an instance per core)",
    )  # fmt: skip
    parser.add_argument("--json", type=Path, help="where to write the results")
    parser.add_argument("--reference-server", help=argparse.SUPPRESS)  # internal: MODEL.onnx
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    # internal: ADDRESS MODEL BATCH CLIENTS SECONDS, the gRPC load generator's process
    parser.add_argument("--grpc-load", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.grpc_load:
        address, model, batch, clients, seconds = args.grpc_load
        grpc_load_main(address, model, int(batch), int(clients), float(seconds))
        return 0
    if args.reference_server:
        _serve_reference(args.reference_server, args.port, args.workers)
        return 0
    (HERE / "results").mkdir(exist_ok=True)
    results = run_benchmark(
        args.quick, args.seconds, args.repeat, args.client, args.profile, rounds=args.rounds,
        peers=[p for p in args.peers.split(",") if p],
    )  # fmt: skip
    output = args.json or HERE / "results" / ("serve-quick.json" if args.quick else "serve.json")
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print(format_table(results))
    print(f"\nresults: {output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
