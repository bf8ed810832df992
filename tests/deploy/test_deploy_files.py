"""docker-compose.yml, deploy/Dockerfile and deploy/k8s/*.yaml agree with the code they run:
commands exist in the CLI, every SPECTRAL_* variable is a Settings field with a valid value,
ports and probe paths match the app's routes, GPU workers ask for a GPU and consume the queue
that jobs are routed to."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import typer
import yaml
from fastapi.testclient import TestClient

from service.artifacts import LocalStore, S3Store, store_for
from service.cli import app as cli_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
K8S_DOCS = [
    doc
    for path in sorted((ROOT / "deploy" / "k8s").glob("*.yaml"))
    for doc in yaml.safe_load_all(path.read_text())
    if doc
]
DOCKERFILE = (ROOT / "deploy" / "Dockerfile").read_text()


def _k8s(kind: str, name: str) -> dict[str, Any]:
    found = [d for d in K8S_DOCS if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} documents"
    return found[0]


def _container(deployment: dict[str, Any]) -> dict[str, Any]:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return dict(containers[0])


def _cli_commands() -> dict[str, Any]:
    return dict(typer.main.get_command(cli_app).commands)  # type: ignore[attr-defined]


def _check_cli_args(args: list[str]) -> None:
    commands = _cli_commands()
    assert args[0] in commands, f"`spectral {args[0]}` is not a CLI command"
    options = {opt for param in commands[args[0]].params for opt in param.opts}
    for arg in args[1:]:
        if arg.startswith("--"):
            assert arg in options, f"`spectral {args[0]}` has no option {arg}"


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default}, with the default (the test shell sets none of them)."""
    return re.sub(r"\$\{[A-Z_]+:-(.*?)\}$", r"\1", value)


def _compose_env(service: str) -> dict[str, str]:
    env = COMPOSE["services"][service].get("environment", {})
    return {key: _interpolate(str(value)) for key, value in env.items()}


def _k8s_env() -> dict[str, str]:
    config = _k8s("ConfigMap", "spectral-config")["data"]
    secret = _k8s("Secret", "spectral-secrets")["stringData"]
    return {**config, **secret}


def _settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key, value in env.items():
        if key.startswith("SPECTRAL_"):
            assert key.removeprefix("SPECTRAL_").lower() in Settings.model_fields, key
            monkeypatch.setenv(key, value)
    return Settings(_env_file=None)  # type: ignore[call-arg]


def _dockerfile_env() -> dict[str, str]:
    block = re.search(r"^ENV (.*?)(?=^\S)", DOCKERFILE, re.S | re.M)
    assert block is not None
    pairs = re.findall(r"(\w+)=(\S+)", block.group(1))
    return dict(pairs)


@pytest.fixture(scope="module")
def api_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    from service.api.app import create_app

    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("deploy-app")))
    with TestClient(app) as client:
        yield client


def test_every_spectral_variable_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    for service in ("api", "worker", "gpu-worker"):
        with monkeypatch.context() as patch:
            _settings_from(_compose_env(service), patch)
    with monkeypatch.context() as patch:
        _settings_from(_dockerfile_env(), patch)
    named = set(
        re.findall(
            r"SPECTRAL_[A-Z_]+",
            "\n".join(
                p.read_text()
                for p in [ROOT / "docker-compose.yml", *(ROOT / "deploy").rglob("*")]
                # deploy/ci runs the client, whose SPECTRAL_URL is not a server setting.
                if p.is_file() and (ROOT / "deploy" / "ci") not in p.parents
            ),
        )
    )
    unknown = {n for n in named if n.removeprefix("SPECTRAL_").lower() not in Settings.model_fields}
    assert not unknown, f"not Settings fields: {sorted(unknown)}"
    for deployment in ("spectral-api", "spectral-worker", "spectral-gpu-worker"):
        for item in _container(_k8s("Deployment", deployment)).get("env", []):
            assert item["name"].removeprefix("SPECTRAL_").lower() in Settings.model_fields


def test_compose_services_and_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    services = COMPOSE["services"]
    assert {"redis", "postgres", "api", "worker", "gpu-worker"} <= set(services)
    for name in ("api", "worker", "gpu-worker"):
        assert services[name].get("profiles") in (None, ["gpu"])
        _check_cli_args(services[name]["command"])
        assert "spectral-data:/data" in services[name]["volumes"]
        assert _compose_env(name)["SPECTRAL_DATA_DIR"] == "/data"
    assert services["api"]["build"]["dockerfile"] == "deploy/Dockerfile"
    assert services["worker"]["image"] == services["api"]["image"]

    settings = _settings_from(_compose_env("api"), monkeypatch)
    assert settings.broker_url == "redis://redis:6379/0"
    assert settings.resolved_database_url.startswith("postgresql+psycopg://")
    assert "@postgres:5432/" in settings.resolved_database_url
    assert settings.embedded_worker is False
    host_port, container_port = services["api"]["ports"][0].split(":")
    assert int(container_port) == settings.port == 8000
    worker_args = services["worker"]["command"]
    assert worker_args[worker_args.index("--queues") + 1] == settings.default_queue


def test_compose_gpu_worker() -> None:
    gpu = COMPOSE["services"]["gpu-worker"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert gpu["command"][gpu["command"].index("--queues") + 1] == "gpu"
    assert "tensorflow[and-cuda]" in gpu["build"]["args"]["EXTRA_PIP"]


def test_probe_paths_exist(api_client: TestClient) -> None:
    assert "/readyz" in COMPOSE["services"]["api"]["healthcheck"]["test"][-1]
    api = _container(_k8s("Deployment", "spectral-api"))
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for path in ("/readyz", "/healthz"):
        assert api_client.get(path).status_code == 200, path
    paths = set(api_client.get("/openapi.json").json()["paths"])
    assert {"/prune", "/jobs", "/jobs/{job_id}", "/jobs/{job_id}/cancel", "/datasets"} <= paths


def test_k8s_api_ports_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    api = _container(_k8s("Deployment", "spectral-api"))
    _check_cli_args(api["args"])
    env = {item["name"]: item["value"] for item in api["env"]}
    settings = _settings_from({**_k8s_env(), **env}, monkeypatch)
    (port,) = api["ports"]
    assert port["containerPort"] == settings.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert api[probe]["httpGet"]["port"] == port["name"]
    service = _k8s("Service", "spectral-api")
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    assert (
        service["spec"]["selector"]
        == _k8s("Deployment", "spectral-api")["spec"]["selector"]["matchLabels"]
    )
    assert [ref for ref in api["envFrom"]] == [
        {"configMapRef": {"name": "spectral-config"}},
        {"secretRef": {"name": "spectral-secrets"}},
        {"configMapRef": {"name": "spectral-storage", "optional": True}},
        {"secretRef": {"name": "spectral-storage-credentials", "optional": True}},
    ]


def test_k8s_workers_and_queues(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = _settings_from(_k8s_env(), monkeypatch)
    cpu = _container(_k8s("Deployment", "spectral-worker"))
    gpu = _container(_k8s("Deployment", "spectral-gpu-worker"))
    for container in (cpu, gpu):
        _check_cli_args(container["args"])
        assert container["volumeMounts"] == [{"name": "data", "mountPath": str(settings.data_dir)}]
    assert cpu["args"][cpu["args"].index("--queues") + 1] == settings.default_queue
    gpu_queue = gpu["args"][gpu["args"].index("--queues") + 1]
    assert gpu_queue in settings.queue_routes.values()
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})
    assert settings.broker_url == "redis://spectral-redis:6379/0"
    assert "@spectral-postgres:5432/" in settings.resolved_database_url
    pvc = _k8s("PersistentVolumeClaim", "spectral-data")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    for name in ("spectral-redis", "spectral-postgres"):
        assert _k8s("Service", name)


def test_dockerfile() -> None:
    assert re.search(r"^FROM python:3\.11-slim$", DOCKERFILE, re.M)
    assert 'pip install ".[service]"' in DOCKERFILE
    user = re.findall(r"^USER (\S+)$", DOCKERFILE, re.M)
    assert user and user[-1] not in ("root", "0")
    assert re.search(r'^ENTRYPOINT \["spectral"\]$', DOCKERFILE, re.M)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["spectral"] == "service.cli:main"
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE, re.M)
    assert cmd is not None
    _check_cli_args(yaml.safe_load(cmd.group(1)))
    for copied in re.findall(r"^COPY (\S+) ", DOCKERFILE, re.M):
        assert (ROOT / copied).exists(), copied


def test_compose_s3_profile(monkeypatch: pytest.MonkeyPatch) -> None:
    """``--profile s3`` adds MinIO and a one-shot that creates the bucket; the API and the
    workers reach it with the credentials MinIO was started with, and wait for the bucket."""
    services = COMPOSE["services"]
    minio, bucket_job = services["minio"], services["minio-bucket"]
    assert minio["profiles"] == bucket_job["profiles"] == ["s3"]
    # The documented command line selects a bucket that the one-shot creates.
    header = (ROOT / "docker-compose.yml").read_text().split("\nx-spectral-env")[0]
    match = re.search(r"SPECTRAL_ARTIFACT_URL=(s3://\S+) docker compose --profile s3 up", header)
    assert match is not None, "the header documents the s3 profile"
    url = match.group(1)
    assert _interpolate(bucket_job["environment"]["SPECTRAL_ARTIFACT_URL"]) == url
    script = bucket_job["command"][0]
    assert "mc mb --ignore-existing" in script and "http://minio:9000" in script
    assert bucket_job["depends_on"]["minio"]["condition"] == "service_healthy"
    for name in ("api", "worker", "gpu-worker"):
        env = _compose_env(name)
        # Off by default: no profile, no bucket, the volume as before.
        assert env["SPECTRAL_ARTIFACT_URL"] == ""
        # "-" not ":-": an empty AWS_ENDPOINT_URL (AWS itself) is kept, not defaulted.
        assert env["AWS_ENDPOINT_URL"] == "${AWS_ENDPOINT_URL-http://minio:9000}"
        assert env["AWS_ACCESS_KEY_ID"] == _interpolate(minio["environment"]["MINIO_ROOT_USER"])
        assert env["AWS_SECRET_ACCESS_KEY"] == _interpolate(
            minio["environment"]["MINIO_ROOT_PASSWORD"]
        )
        needs = services[name]["depends_on"]["minio-bucket"]
        assert needs == {"condition": "service_completed_successfully", "required": False}
        with monkeypatch.context() as patch:
            settings = _settings_from({**env, "SPECTRAL_ARTIFACT_URL": url}, patch)
            store = store_for(settings, "artifacts")
            assert isinstance(store, S3Store) and url == f"s3://{store.bucket}/registry"
            default = _settings_from(env, patch)
            assert isinstance(store_for(default, "datasets"), LocalStore)
    assert "minio-data" in COMPOSE["volumes"]


def test_k8s_storage_config(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _k8s("ConfigMap", "spectral-storage")["data"]
    secret = _k8s("Secret", "spectral-storage-credentials")["stringData"]
    assert set(secret) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    # Credentials only in the Secret; the ConfigMap has the URL and the standard AWS names.
    assert set(config) == {"SPECTRAL_ARTIFACT_URL", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION"}
    settings = _settings_from({**_k8s_env(), **config}, monkeypatch)
    artifacts, datasets = store_for(settings, "artifacts"), store_for(settings, "datasets")
    assert isinstance(artifacts, S3Store) and isinstance(datasets, S3Store)
    assert artifacts.bucket == datasets.bucket and artifacts.prefix != datasets.prefix
    assert config["AWS_ENDPOINT_URL"].startswith(("http://", "https://"))
