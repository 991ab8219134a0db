"""schemathesis against the OpenAPI schema a live `rootml serve` publishes: no 5xx, every answer
(status, content type, headers, body) as the schema says, schema-violating requests refused.

Bounded: a fixed number of examples per operation, derandomized, so the run is repeatable and
takes seconds. The checks that a schema-valid request is accepted (positive_data_acceptance) is
left out on purpose: whether an infer body fits a model (names, shapes) or an upload is a usable
ONNX model cannot be said by a static schema, and those refusals are the tested behaviour here.
"""

from __future__ import annotations

import collections
import copy
import shutil

import httpx
import numpy as np
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from tests.conftest import write_results
from tests.serve.conftest import N_FEATURES, TOKEN, Server

EXAMPLES_PER_OPERATION = 25


def _valid_infer_request() -> dict:
    rng = np.random.default_rng(0)
    return {
        "id": "schemathesis",
        "inputs": [
            {
                "name": "features",
                "datatype": "FP32",
                "shape": [2, N_FEATURES],
                "data": rng.normal(size=2 * N_FEATURES).round(3).tolist(),
            },
            {"name": "mask", "datatype": "BOOL", "shape": [2, N_FEATURES], "data": [True] * 12},
        ],
    }


def with_examples(spec: dict) -> dict:
    """The served schema with examples naming the test repository's model, so that the success
    paths (200 metadata, config, infer) are exercised and checked against the schema too."""
    spec = copy.deepcopy(spec)
    for path, operations in spec["paths"].items():
        if not path.startswith("/v2/models/"):
            continue  # repository routes keep random names: they would unload the test model
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter["name"] == "model_name":
                    parameter["example"] = "mlp"
                elif parameter["name"] == "model_version":
                    parameter["example"] = "1"
            content = operation.get("requestBody", {}).get("content", {})
            if "application/json" in content:
                content["application/json"]["example"] = _valid_infer_request()
    return spec


@pytest.fixture(scope="module")
def fuzzed_server(repo, token_file, tmp_path_factory):
    """A server of its own on a copy of the repository: fuzzing load/unload/upload with the token
    must not change what the other tests' server serves."""
    base = tmp_path_factory.mktemp("schemathesis")
    shutil.copytree(repo, base / "repo")
    srv = Server(base / "repo", base / "serve.log", "--token-file", str(token_file))
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def served_schema(fuzzed_server):
    spec = httpx.get(f"{fuzzed_server.url}/openapi.json").json()
    return schemathesis.openapi.from_dict(with_examples(spec))


@pytest.fixture(scope="module")
def statuses(request, fuzzed_server, tmp_path_factory):
    """(operation, status) -> count of the answers; once every operation ran, checks that both
    the success and the refusal paths were reached and the server still serves, and records the
    counts for the reliability report."""
    counts: collections.Counter = collections.Counter()
    yield counts
    if not counts:
        return  # deselected
    by_status: collections.Counter = collections.Counter()
    for (_, status), count in counts.items():
        by_status[status] += count
    infer = "POST /v2/models/{model_name}/infer"
    assert counts[(infer, 200)] >= 1 and counts[(infer, 400)] >= 1, counts
    assert not [s for s in by_status if s >= 500]
    assert fuzzed_server.alive()
    record = dict(
        kind="bad input",
        what="schemathesis on the served OpenAPI schema",
        operations=len({label for label, _ in counts}),
        tried=sum(by_status.values()),
        refused=sum(c for s, c in by_status.items() if 400 <= s < 500),
        accepted=sum(c for s, c in by_status.items() if 200 <= s < 300),
        server_errors=0,
        statuses={str(s): c for s, c in sorted(by_status.items())},
    )
    write_results(
        request.node.nodeid + "::test_served_schema_holds",
        record,
        tmp_path_factory.mktemp("results"),
    )


schema = schemathesis.pytest.from_fixture("served_schema")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES_PER_OPERATION,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
def test_served_schema_holds(case, fuzzed_server, statuses):
    response = case.call_and_validate(
        base_url=fuzzed_server.url,
        headers={"Authorization": f"Bearer {TOKEN}"},
        excluded_checks=[positive_data_acceptance],
        timeout=30,
    )
    statuses[(case.operation.label, response.status_code)] += 1
