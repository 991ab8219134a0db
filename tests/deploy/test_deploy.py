"""deploy/: the container build file and the Kubernetes manifests for serving a model repository.

No Docker engine or cluster runs here, so the files are checked offline: the core Kubernetes
objects against Kubernetes' own JSON schemas (kubernetes-validate bundles them per release,
strict: an unknown or misspelt field fails), the KServe InferenceService against KServe's
predictor schema (the strict Kubernetes PodSpec plus KServe's own fields), the Dockerfile with
hadolint; then that the files agree with each other, and that the command they run starts a
real `rootml serve` whose probed endpoints answer 200.
"""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
from pathlib import Path

import httpx
import jsonschema
import kubernetes_validate
import pytest
import yaml
from dockerfile_parse import DockerfileParser
from kubernetes_validate.utils import latest_version, major_minor, schema_contents
from referencing import Registry, Resource

from rootml.export.repository import add_onnx_model
from tests.serve.conftest import Server, mlp_onnx_bytes

REPO = Path(__file__).parents[2]
DEPLOY = REPO / "deploy"
VERSION = importlib.metadata.version("rootml")
# The oldest Kubernetes release the manifests are meant for, and the newest with schemas here.
KUBERNETES = ("1.27", major_minor(latest_version()))
CORE_KINDS = {"PersistentVolumeClaim", "Deployment", "Service", "HorizontalPodAutoscaler"}

# KServe v1beta1 PredictorSpec = the Kubernetes PodSpec (with `containers` optional) plus these
# fields (KServe's API, pkg/apis/serving/v1beta1: ComponentExtensionSpec and the predictor's
# model/framework specs); typed where rootml's manifest uses them.
INTEGER = {"type": "integer", "minimum": 0}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas": INTEGER,
    "maxReplicas": INTEGER,
    "scaleTarget": INTEGER,
    "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
    "scaleMetricType": {"enum": ["Utilization", "AverageValue", "Value"]},
    "containerConcurrency": INTEGER,
    "timeout": INTEGER,
    "canaryTrafficPercent": {"type": "integer", "minimum": 0, "maximum": 100},
    "labels": STRINGS,
    "annotations": STRINGS,
    **dict.fromkeys(
        ["autoScaling", "batcher", "logger", "deploymentStrategy", "model", "workerSpec"],
        {"type": "object"},
    ),
    "storageUris": {"type": "array"},
    **dict.fromkeys(
        ["huggingface", "lightgbm", "onnx", "paddle", "pmml", "pytorch", "sklearn"],
        {"type": "object"},
    ),
    **dict.fromkeys(["tensorflow", "triton", "xgboost"], {"type": "object"}),
}
ISVC_ANNOTATIONS = {
    "serving.kserve.io/deploymentMode": {"Standard", "RawDeployment", "Knative", "Serverless"},
    "serving.kserve.io/autoscalerClass": {"hpa", "keda", "external", "none"},
}


def documents() -> list[dict]:
    found = []
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        found += [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    return found


def one(kind: str) -> dict:
    (doc,) = [doc for doc in documents() if doc["kind"] == kind]
    return doc


def _registry(version: str) -> tuple[str, Registry]:
    """The strict schema folder of `version` and a registry holding its shared definitions."""
    folder = f"kubernetes-json-schema/v{version}.0-local-strict"
    definitions = Resource.from_contents(schema_contents(f"{folder}/_definitions.json", version))
    return folder, definitions @ Registry()


def inference_service_validator(version: str) -> jsonschema.Draft202012Validator:
    folder, registry = _registry(version)
    podspec = schema_contents(f"{folder}/podspec-v1.json", version)
    predictor = {
        **podspec,
        "required": [],
        "properties": {**podspec["properties"], **KSERVE_PREDICTOR_FIELDS},
    }
    predictor.pop("$id")
    meta = "/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
    schema = {
        # The base the bundled definitions' references ("/api/_definitions.json") resolve against.
        "$id": "https://kubernetes.io/api/kserve-inferenceservice-v1beta1",
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "serving.kserve.io/v1beta1"},
            "kind": {"const": "InferenceService"},
            "metadata": {"$ref": meta},
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["predictor"],
                "properties": {
                    "predictor": predictor,
                    "transformer": {"type": "object"},
                    "explainer": {"type": "object"},
                },
            },
        },
    }
    return jsonschema.Draft202012Validator(schema, registry=registry)


@pytest.mark.parametrize("version", KUBERNETES)
def test_core_objects_match_the_kubernetes_schemas(version):
    kinds = [doc["kind"] for doc in documents()]
    assert sorted(kinds) == sorted([*CORE_KINDS, "InferenceService"])
    for doc in documents():
        if doc["kind"] in CORE_KINDS:
            kubernetes_validate.validate(doc, version, strict=True)
    # Strict: a misspelt field is an error, not silently dropped as kubectl would warn.
    broken = one("Deployment")
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES)
def test_inference_service_matches_the_kserve_predictor_schema(version):
    validator = inference_service_validator(version)
    isvc = one("InferenceService")
    validator.validate(isvc)
    for key, value in isvc["metadata"]["annotations"].items():
        assert value in ISVC_ANNOTATIONS[key], key
    # The same validator refuses what KServe's API server would.
    for path, value in [
        (("spec", "predictor", "minReplica"), 1),
        (("spec", "predictor", "scaleMetric"), "gpu"),
        (("spec", "predictor", "containers"), [{"name": "x", "image": "y", "port": 1}]),
        (("spec", "predictor", "volumes"), [{"name": "models", "pvc": {}}]),
        (("spec", "predictr"), {}),
    ]:
        broken = json.loads(json.dumps(isvc))
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
        assert not validator.is_valid(broken), path


def server_args(container: dict) -> dict[str, str]:
    args = container["args"]
    assert all(flag.startswith("--") for flag in args[::2]) and len(args) % 2 == 0, args
    return dict(zip(args[::2], args[1::2]))


def pod_specs() -> dict[str, dict]:
    return {
        "Deployment": one("Deployment")["spec"]["template"]["spec"],
        "InferenceService": one("InferenceService")["spec"]["predictor"],
    }


def dockerfile() -> DockerfileParser:
    return DockerfileParser(path=str(DEPLOY / "Dockerfile"))


def final_stage() -> list[dict]:
    structure = dockerfile().structure
    last_from = max(i for i, item in enumerate(structure) if item["instruction"] == "FROM")
    return structure[last_from:]


def instruction(stage: list[dict], name: str) -> str:
    (value,) = [item["value"] for item in stage if item["instruction"] == name]
    return value


def test_manifests_and_image_agree():
    image_cmd = dict(zip(*[iter(json.loads(instruction(final_stage(), "CMD")))] * 2))
    port = int(instruction(final_stage(), "EXPOSE"))
    pvc = one("PersistentVolumeClaim")["metadata"]["name"]
    for kind, pod in pod_specs().items():
        (container,) = pod["containers"]
        assert container["image"] == f"rootml:{VERSION}", kind
        args = server_args(container)
        assert args == image_cmd, kind  # the image's own default command, spelt out
        assert args["--host"] == "0.0.0.0", kind  # reachable from outside the pod
        ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
        assert list(ports.values()) == [int(args["--port"])] == [port], kind
        probes = {name: container[f"{name}Probe"]["httpGet"] for name in ("readiness", "liveness")}
        assert probes["readiness"]["path"] == "/v2/health/ready", kind
        assert probes["liveness"]["path"] == "/v2/health/live", kind
        for probe in [*probes.values(), container["startupProbe"]["httpGet"]]:
            assert ports.get(probe["port"], probe["port"]) == port, kind
        volumes = {v["name"]: v for v in pod["volumes"]}
        mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
        models = mounts[args["--repo"]]
        assert models["readOnly"] and volumes[models["name"]]["persistentVolumeClaim"] == {
            "claimName": pvc,
            "readOnly": True,
        }, kind
        assert all(m["name"] in volumes for m in mounts.values()), kind
        assert container["resources"]["requests"]["cpu"], kind  # what CPU autoscaling divides by
        assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] > 0
        assert container["securityContext"]["readOnlyRootFilesystem"], kind
        assert mounts["/tmp"]["name"] in volumes, kind  # HOME of the image: writable
    assert pod_specs()["InferenceService"]["containers"][0]["name"] == "kserve-container"

    deployment, service, hpa = one("Deployment"), one("Service"), one("HorizontalPodAutoscaler")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert [p["targetPort"] for p in service["spec"]["ports"]] == [container["ports"][0]["name"]]
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        deployment["apiVersion"],
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_dockerfile_builds_a_non_root_rootml_serve_image():
    # hadolint parses the file as Docker does and applies its best-practice rules (pinned
    # versions, no pip cache, no root user at the end, exec form, ...): none may fire.
    hadolint = Path(sys.executable).with_name("hadolint")
    result = subprocess.run(
        [hadolint, "-f", "json", DEPLOY / "Dockerfile"], capture_output=True, text=True, timeout=60
    )
    assert json.loads(result.stdout) == [] and result.returncode == 0, result.stdout

    parser = dockerfile()
    assert all(":" in image and not image.endswith(":latest") for image in parser.parent_images)
    runs = " ".join(item["value"] for item in parser.structure if item["instruction"] == "RUN")
    assert '"torch==2.13.0"' in runs and "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert '".[serve]"' in runs
    stage = final_stage()
    assert json.loads(instruction(stage, "ENTRYPOINT")) == ["rootml", "serve"]
    user = instruction(stage, "USER")
    assert user not in ("root", "0") and int(user) > 0
    healthcheck = instruction(stage, "HEALTHCHECK")
    assert "http://127.0.0.1:8080/v2/health/ready" in healthcheck
    assert instruction(stage, "EXPOSE") == "8080"
    ignore = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("*") :][:4] == ["*", "!pyproject.toml", "!README.md", "!src/"]


def test_the_command_they_run_serves_what_they_probe(tmp_path):
    repo = tmp_path / "models"
    add_onnx_model(repo, "mlp", mlp_onnx_bytes(seed=0))
    stage = final_stage()
    args = server_args({"args": json.loads(instruction(stage, "CMD"))})
    # Here on a loopback port, with the repository in a temporary folder; the rest as in the image.
    rest = [x for k, v in args.items() if k not in ("--repo", "--port", "--host") for x in (k, v)]
    server = Server(repo, tmp_path / "serve.log", "--host", "127.0.0.1", *rest)
    try:
        paths = {instruction(stage, "HEALTHCHECK").split("8080", 1)[1].split("'")[0]}
        for pod in pod_specs().values():
            container = pod["containers"][0]
            paths |= {container[f"{p}Probe"]["httpGet"]["path"] for p in ("readiness", "liveness")}
        assert paths == {"/v2/health/ready", "/v2/health/live"}
        for path in sorted(paths):
            response = httpx.get(server.url + path, timeout=10)
            assert response.status_code == 200, (path, response.text)
        assert httpx.get(server.url + "/v2/models/mlp/ready", timeout=10).json()["ready"] is True
    finally:
        server.stop()
