"""The Dockerfile and the Kubernetes manifests under deploy/, checked without kubectl: parsed, every
container's arguments read by distpat's own argument parser, the configuration files they carry loaded
by distpat's configuration, and the references between the
objects (Services to pods, volumes to ConfigMaps, Secrets and claims, probes to admin ports) resolved."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from distpat.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = sorted((ROOT / "deploy").glob("*.yaml"))
WORKLOADS = ("Deployment", "StatefulSet")


def documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def distpat_containers(docs: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    out = []
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            for container in doc["spec"]["template"]["spec"]["containers"]:
                if container["image"].startswith("distpat:"):
                    out.append((doc, container))
    return out


def test_there_is_a_manifest_for_each_pattern() -> None:
    assert {p.stem for p in MANIFESTS} == {"sidecar", "ambassador", "cache-and-limiter", "scatter-gather"}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_each_manifest_holds_together(path: Path) -> None:
    docs = documents(path)
    assert all({"apiVersion", "kind", "metadata"} <= doc.keys() for doc in docs)
    by_kind: dict[str, dict[str, dict[str, Any]]] = {}
    for doc in docs:
        by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    pods = []
    for doc in docs:
        if doc["kind"] in WORKLOADS:
            template = doc["spec"]["template"]
            assert doc["spec"]["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
            pods.append(template)
            if doc["kind"] == "StatefulSet":  # its headless Service names its replicas
                service = by_kind["Service"][doc["spec"]["serviceName"]]
                assert service["spec"]["clusterIP"] == "None"
            for volume in template["spec"].get("volumes", []):
                if "configMap" in volume:
                    assert volume["configMap"]["name"] in by_kind.get("ConfigMap", {})
                if "persistentVolumeClaim" in volume:
                    assert volume["persistentVolumeClaim"]["claimName"] in by_kind.get(
                        "PersistentVolumeClaim", {}
                    )
            names = {v["name"] for v in template["spec"].get("volumes", [])}
            for container in template["spec"]["containers"]:
                for mount in container.get("volumeMounts", []):
                    assert mount["name"] in names
    for service in by_kind.get("Service", {}).values():
        selector = service["spec"]["selector"]
        assert any(selector.items() <= pod["metadata"]["labels"].items() for pod in pods), service["metadata"]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.stem)
def test_every_distpat_container_runs_a_command_distpat_accepts_and_is_probed_on_its_admin_port(
    path: Path,
) -> None:
    docs = documents(path)
    containers = distpat_containers(docs)
    assert containers
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    for workload, container in containers:
        args = [str(a) for a in container["args"]]
        parsed = build_parser().parse_args(args)
        assert parsed.command == args[0]
        probe = container["readinessProbe"]["httpGet"]
        assert probe["path"] == "/readyz"
        admin = _admin_port(args, configmaps, workload)
        assert probe["port"] == admin
        assert admin in {p["containerPort"] for p in container["ports"]}


def _admin_port(args: list[str], configmaps: dict[str, Any], workload: dict[str, Any]) -> int:
    if "--admin" in args:
        return int(args[args.index("--admin") + 1].rsplit(":", 1)[1])
    # distpat run --config FILE: the admin address is in the ConfigMap the file comes from
    config = args[args.index("--config") + 1]
    for volume in workload["spec"]["template"]["spec"].get("volumes", []):
        data = configmaps.get(volume.get("configMap", {}).get("name", ""), {}).get("data", {})
        if Path(config).name in data:
            for line in data[Path(config).name].splitlines():
                if line.startswith("admin"):
                    return int(line.split("=")[1].strip().strip('"').rsplit(":", 1)[1])
    raise AssertionError(f"no admin address for {shlex.join(args)}")


def test_the_configuration_files_in_the_manifests_load(tmp_path: Path) -> None:
    from distpat.config.pipeline import load_pipeline
    from distpat.config.twemproxy import load_twemproxy

    for path in MANIFESTS:
        for doc in documents(path):
            if doc["kind"] != "ConfigMap":
                continue
            for name, text in doc["data"].items():
                file = tmp_path / name
                file.write_text(text)
                if name.endswith(".toml"):
                    config, _ = load_pipeline(str(file), environ={})
                    assert config.stages
                else:
                    assert load_twemproxy(str(file))


def test_the_dockerfile_installs_distpat_and_runs_it_unprivileged() -> None:
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    assert next(line for line in lines if line.startswith("FROM")).startswith("FROM python:3.11")
    assert any(line.startswith("RUN pip install") and " ." in line for line in lines)
    assert 'ENTRYPOINT ["distpat"]' in lines
    assert any(line.startswith("USER ") and not line.endswith(" root") for line in lines)
