"""The Kubernetes manifests: rendered from the kustomization, schema-validated, and consistent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "k8s"
KUBERNETES_VERSION = "1.30.0"


def _render() -> list[dict[str, Any]]:
    """The kustomization's resources in order, with its namespace applied (what `kubectl apply -k` sends)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
            docs.append(doc)
    return docs


@pytest.fixture(scope="module")
def docs() -> list[dict[str, Any]]:
    return _render()


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def test_every_file_is_in_the_kustomization() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_manifests_validate_against_the_kubernetes_schema(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate

    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on any schema error
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Job", "StatefulSet"} <= kinds


def test_a_broken_manifest_is_rejected(docs: list[dict[str, Any]]) -> None:
    import copy

    import kubernetes_validate

    bad = copy.deepcopy(_one(docs, "Deployment", "prerank-server"))
    bad["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBERNETES_VERSION, strict=True)


def test_server_probes_resources_and_policies_fit_together(docs: list[dict[str, Any]]) -> None:
    server = _one(docs, "Deployment", "prerank-server")
    pod = server["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["resources"]["requests"]["memory"] and container["resources"]["limits"]["memory"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["terminationGracePeriodSeconds"] > 30  # the server drains for 30 s
    labels = pod["metadata"]["labels"]
    assert server["spec"]["selector"]["matchLabels"].items() <= labels.items()
    for kind in ("Service", "PodDisruptionBudget"):
        selector = _one(docs, kind, "prerank-server")["spec"]
        selector = selector.get("selector", {}).get("matchLabels", selector.get("selector"))
        assert selector.items() <= labels.items(), kind
    hpa = _one(docs, "HorizontalPodAutoscaler", "prerank-server")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "prerank-server"}
    pdb = _one(docs, "PodDisruptionBudget", "prerank-server")
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"] <= server["spec"]["replicas"]
    config = _one(docs, "ConfigMap", "prerank-server")["data"]
    assert config["PRERANK_STORE"] == "redis://redis:6379/0" and _one(docs, "Service", "redis")


def test_images_and_commands_exist_in_the_project(docs: list[dict[str, Any]]) -> None:
    from prerank import JOBS

    dockerfile = (ROOT / "Dockerfile").read_text()
    server = _one(docs, "Deployment", "prerank-server")["spec"]["template"]["spec"]["containers"][0]
    job = _one(docs, "Job", "prerank-train-publish")["spec"]["template"]["spec"]["containers"][0]
    assert server["image"].startswith("hit-prerank-serve:") and "AS serve" in dockerfile
    assert job["image"].startswith("hit-prerank-offline:") and "AS offline" in dockerfile
    assert server["args"][0] == "prerank" and server["args"][1] in JOBS
    ingest = _one(docs, "Deployment", "prerank-ingest")["spec"]["template"]["spec"]["containers"][0]
    assert ingest["image"] == server["image"] and ingest["args"][:2] == ["prerank", "ingest"]
    assert {e["name"] for e in ingest["env"]} >= {"PRERANK_STORE"}  # what $(PRERANK_STORE) expands from
    for part in job["args"][0].split("&&"):
        words = part.split()
        assert words[0] == "prerank" and words[1] in JOBS, part
