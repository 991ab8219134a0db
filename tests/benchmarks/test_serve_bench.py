"""benchmarks/serve.py at tiny counts: every case runs, answers correctly, and reports sane figures."""

from __future__ import annotations

import collections
import json

import pytest

from tests.benchmarks import load_script


@pytest.fixture(scope="module")
def serve():
    return load_script("serve")


@pytest.fixture(scope="module")
def results(serve):
    # The asyncio client of the script (wrk may not be installed): 0.1 s per case.
    return serve.run_benchmark(
        quick=True, seconds=0.1, repeat=1, client="python", progress=False, rounds=1
    )


def test_every_case_runs_without_errors(serve, results):
    http = [serve.case_name(case) for case in serve.http_cases()]
    inprocess = [f"inprocess-b{b}" for b in serve.BATCHES]
    inprocess += ["inprocess-2threads-b1024", "heavy-inprocess-b1", "heavy-inprocess-b64"]
    grpc = [serve.case_name(case) for case in serve.grpc_cases()]
    assert grpc == ["rootml_grpc-raw-b1-c1", "rootml_grpc-raw-b1-c64", "rootml_grpc-raw-b1024-c64"]
    assert list(results["cases"]) == inprocess + http + grpc
    assert len(set(http)) == len(http) == 4 * len(serve.BATCHES) * len(serve.CLIENTS) + 11
    for name, case in results["cases"].items():
        assert "error" not in case, (name, case.get("error"))
        assert case["errors"] == 0 and case["requests"] > 0, name
        assert case["rows_per_s"] == pytest.approx(case["req_per_s"] * case["batch"]), name
        assert 0 < case["p50_ms"] <= case["p99_ms"], name
    for name in grpc:  # the generator's own process: its CPU is counted
        assert results["cases"][name]["client_cores"] > 0, name
    server_cpu = collections.Counter()
    for name in http + grpc:
        case = results["cases"][name]
        assert case["client"] == ("grpc.aio" if name in grpc else "python"), name
        # CPU is counted in 10 ms clock ticks: over a 0.1 s case on a loaded machine a server
        # may have used less than one (0), never less than none; summed over a server's cases
        # below, it must show.
        assert case["server_cpu_us_per_req"] >= 0, name
        assert case["server_cpu_us_per_req"] == pytest.approx(
            case["server_cpu_s"] / case["requests"] * 1e6, abs=1e3 / case["requests"]
        ), name
        server_cpu[case["server"]] += case["server_cpu_s"]
        # Event loop threads: one per worker process, each at most one core.
        loops = results["machine"]["cores"] if "_workers" in name else 1
        assert 0 <= case["loop_busy"] <= 1.2 * loops and case["server_cores"] >= 0, name
        # Both counted in 10 ms clock ticks, over 0.1 s: a few ticks either way.
        assert case["machine_cores"] >= case["server_cores"] * 0.8 - 0.3, name
    assert all(cpu > 0 for cpu in server_cpu.values()), server_cpu
    assert set(server_cpu) == {case["server"] for case in serve.http_cases() + serve.grpc_cases()}


def test_models_targets_and_table(serve, results):
    mlp, heavy = results["models"]["mlp"], results["models"]["heavy"]
    assert mlp["widths"] == [100, 128, 64, 1] and heavy["widths"][0] == 100
    # The heavy model is the one for dynamic batching: much dearer per row than the MLP.
    assert heavy["single_row_ms"] > 10 * mlp["single_row_ms"] > 0
    assert set(results["targets"]) == set(serve.TARGETS)
    for name, target in results["targets"].items():
        assert target["value"] > 0 and target["errors"] == 0, name
        # One paired round: the value is its ratio, measured apart from the cases' runs.
        assert target["value"] == target["rounds"][0] == results["rounds"][name]["ratios"][0]
        assert target["cases_ratio"] > 0
    assert results["machine"]["cores"] >= 1 and len(results["machine"]["load_before"]) == 3
    json.dumps(results)  # what main() writes
    table = serve.format_table(results)
    for name in results["cases"]:
        assert name in table
    assert "target json b1 c64: rootml / starlette req/s" in table


def test_report_renders_the_results(results, tmp_path):
    report = load_script("report")
    (tmp_path / "serve.json").write_text(json.dumps(results))
    readme = "intro\n<!-- serve-results:begin -->\nold\n<!-- serve-results:end -->\nend\n"
    text = report.render(readme, tmp_path)
    assert text.startswith("intro\n") and text.endswith("end\n") and "old" not in text
    assert "| rootml-json-b1-c64 |" in text and "| heavy_batched-json-b1-c64 |" in text


def test_reference_endpoint_answers_json_and_binary_like_onnxruntime(serve, tmp_path):
    """The Starlette floor decodes and answers both encodings as rootml's codec expects."""
    import numpy as np
    from starlette.testclient import TestClient

    from rootml.protocol import decode_infer_response

    model = serve.mlp_onnx(serve.MODELS["mlp"])
    (tmp_path / "m.onnx").write_bytes(model)
    expected = serve._session(model).run(["score"], {"features": serve._inputs(3)})[0]
    with TestClient(serve.reference_app(str(tmp_path / "m.onnx"))) as client:
        for encoding in ("json", "binary"):
            body, length = serve._body(3, encoding)
            headers = {} if length is None else {"Inference-Header-Content-Length": str(length)}
            answer = client.post("/v2/models/mlp/infer", content=body, headers=headers)
            assert answer.status_code == 200
            got = decode_infer_response(
                answer.content, answer.headers.get("inference-header-content-length")
            )["score"]
            np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_profile_summary_counts_threads_and_loop_layers(serve, tmp_path):
    """py-spy raw stacks, with the process frames of --subprocesses, summarised by hand's count."""
    raw = tmp_path / "raw.txt"
    raw.write_text(
        'process 1:"python -m rootml.cli serve";process 2:"python -c import x; x.main()";'
        "thread (2): MainThread;"
        "run (uvicorn/server.py:1);infer_body (rootml/serve/app.py:3) 6\n"
        'process 1:"python -m rootml.cli serve";thread (1): MainThread;'
        "run (uvicorn/server.py:1);data_received (uvicorn/protocols/http/httptools_impl.py:9) 2\n"
        "thread (7): rootml-run_0;_worker (concurrent/futures/thread.py:81);"
        "Session.run (onnxruntime/capi/x.py:406) 12\n"
    )
    summary = serve.summarise_profile(raw)
    assert summary["samples"] == 20
    assert summary["threads"] == [["rootml-run", 60.0], ["MainThread", 40.0]]
    assert summary["loop_layers"] == [["rootml", 75.0], ["uvicorn (HTTP)", 25.0]]
    assert summary["loop_functions"][0] == ["infer_body (rootml/serve/app.py)", 75.0]


def test_cpu_per_request_targets_read_lower_as_better(serve):
    """A CPU-per-request target is the reference's CPU over the case's: 0.5 when the case costs
    twice the reference, as a req/s target would read half the requests."""
    case, reference = {"server_cpu_us_per_req": 200.0}, {"server_cpu_us_per_req": 100.0}
    assert serve._ratio(case, reference, "server_cpu_us_per_req") == 0.5
    assert serve._ratio({"req_per_s": 50.0}, {"req_per_s": 100.0}, "req_per_s") == 0.5
    assert set(serve.target_table([])) == set(serve.TARGETS)
    assert set(serve.target_table(["triton"])) == set(serve.TARGETS) | set(serve.PEER_TARGETS)
    names = [serve.case_name(c) for c in serve.peer_cases(["mlserver", "triton"])]
    assert "mlserver-json-b1-c64" in names and "mlserver-binary-b1024-c64" not in names
    assert {"rootml_alone-json-b1-c64", "triton-binary-b1024-c64"} <= set(names)
    assert serve.peer_cases([]) == []


def test_triton_peer_serves_the_model_with_an_instance_per_core(serve, tmp_path):
    """The Triton peer (python backend, tests/serve/_triton.py's binary) answers a case with
    the scores of in-process onnxruntime (checked before it is measured) and runs `cores`
    instances."""
    pytest.importorskip("tritonclient")
    from tests.serve import _triton

    _triton.triton_home()  # skips where the Triton binary is not installed
    model = serve.mlp_onnx(serve.MODELS["mlp"])
    from rootml.export.repository import add_onnx_model

    add_onnx_model(tmp_path / "repo", "mlp", model)
    server = serve.PEERS["triton"](tmp_path)
    try:
        server.wait_ready(timeout=120)
        config = (tmp_path / "triton-python-repo" / "mlp" / "config.pbtxt").read_text()
        assert f"count: {serve._cores()}" in config and "KIND_CPU" in config
        sessions = {"mlp": serve._session(model)}
        case = dict(server="triton", model="mlp", encoding="json", batch=1, clients=2)
        result = serve._run_http(case, {"triton": server}, sessions, "python", 0.2, tmp_path)
        assert result["errors"] == 0 and result["requests"] > 0
        assert result["server_rss_mb"] > 0 and server.rss_mb() > 0
    finally:
        server.stop()
