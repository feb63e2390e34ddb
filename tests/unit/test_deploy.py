"""The deployment files (deploy/): valid against their specifications, offline
(``check-jsonschema`` with the Compose specification, ``kubernetes-validate`` with the bundled
Kubernetes schemas), consistent with the registry, and configured the way production
settings accept. No container engine runs here; tests/unit/test_packaging.py proves the
image's content starts."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from diasyndesi_sdk.connection import AgencyConnection
from hub.families import family_spec
from hub.registry import Registry
from hub.settings import load_settings, packaged_dir

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BIN = Path(sys.executable).parent
REGISTRY = Registry.load(packaged_dir("registry"))
AGENCIES = [agency.id for agency in REGISTRY.active_agencies]
SECRET_WORDS = ("SECRET", "PASSWORD", "CLIENT_KEY")


def secret_files(agency: str) -> dict[str, str]:
    """The agency's settings given as secret files → the secret item holding each: the
    family's own file settings (a client certificate, key and CA for mutual TLS), or else
    its shared secret (``SECRET_FILE``)."""
    model = family_spec(REGISTRY.agencies[agency].family).connection
    own = [name for name in model.model_fields if name not in AgencyConnection.model_fields]
    if own:
        return {name.upper(): f"{agency}-{name.replace('_', '-')}" for name in own}
    return {"SECRET_FILE": agency}


def env_key(agency: str) -> str:
    return agency.upper().replace("-", "_")


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, check=False, timeout=120)  # noqa: S603


# --- docker compose -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    result = run(
        str(BIN / "check-jsonschema"),
        "--builtin-schema",
        "vendor.compose-spec",
        str(DEPLOY / "docker-compose.yml"),
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_runs_one_worker_per_agency_with_its_own_secret(compose: dict[str, Any]) -> None:
    workers = {
        name: service
        for name, service in compose["services"].items()
        if service.get("command", [])[:2] == ["diasyndesi", "worker"]
    }
    assert sorted(s["command"][2] for s in workers.values()) == sorted(AGENCIES)
    for service in workers.values():
        (agency,) = service["command"][2:]
        env = service["environment"]
        files = secret_files(agency)
        for setting, item in files.items():
            assert env[f"AGENCIES__{env_key(agency)}__{setting}"] == f"/run/secrets/{item}"
        assert sorted(service["secrets"]) == sorted(["database_password", *files.values()])


def test_compose_secrets_are_files_and_never_values(compose: dict[str, Any]) -> None:
    for name, secret in compose["secrets"].items():
        assert secret == {"file": f"./secrets/{name}"}, name  # deploy/secrets/ is ignored by git
    for name, service in compose["services"].items():
        for key, value in (service.get("environment") or {}).items():
            if any(word in key for word in SECRET_WORDS):
                # a secret is a file: *_FILE, or a setting that is a path (a client key)
                assert key.endswith(("_FILE", "__CLIENT_KEY")), (name, key)
                assert str(value).startswith("/run/secrets/"), (name, key)
    postgres = compose["services"]["postgres"]["environment"]
    hub = compose["services"]["hub"]["environment"]
    assert postgres["POSTGRES_PASSWORD_FILE"] == hub["DATABASE_PASSWORD_FILE"]
    assert (
        "@" in hub["DATABASE_URL"] and ":" not in hub["DATABASE_URL"].split("//")[1].split("@")[0]
    )
    assert "deploy/secrets/" in (DEPLOY.parent / ".gitignore").read_text()


def test_compose_runs_the_migration_before_the_hub(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["migrate"]["command"] == ["diasyndesi", "db", "upgrade"]
    for name, service in services.items():
        if service.get("command", [""])[1:2] in (["serve"], ["worker"]):
            assert service["depends_on"]["migrate"] == {
                "condition": "service_completed_successfully"
            }, name


# --- Kubernetes ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def manifests() -> list[dict[str, Any]]:
    return [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]


def kind(manifests: list[dict[str, Any]], wanted: str) -> dict[str, dict[str, Any]]:
    return {m["metadata"]["name"]: m for m in manifests if m["kind"] == wanted}


def test_kubernetes_manifests_validate_strictly() -> None:
    files = sorted(str(p) for p in (DEPLOY / "k8s").glob("*.yaml"))
    result = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", *files)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_validator_does_catch_a_broken_manifest(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    text = (DEPLOY / "k8s" / "serve.yaml").read_text().replace("replicas: 2", "replicas: two")
    broken.write_text(text)
    result = run(str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(broken))
    assert result.returncode != 0 and "replicas" in result.stdout + result.stderr


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    result: dict[str, Any] = only
    return result


def port(c: dict[str, Any], name: str) -> int:
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == name]
    return int(number)


def test_a_deployment_per_agency_probed_on_its_observability_port(
    manifests: list[dict[str, Any]],
) -> None:
    deployments = kind(manifests, "Deployment")
    config = kind(manifests, "ConfigMap")["diasyndesi"]["data"]
    workers = {
        container(d)["command"][2]: d
        for d in deployments.values()
        if container(d)["command"][:2] == ["diasyndesi", "worker"]
    }
    assert sorted(workers) == sorted(AGENCIES)
    for agency, deployment in workers.items():
        c = container(deployment)
        assert port(c, "observability") == int(config["OBSERVABILITY_PORT"]) == 9100
        assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "observability"}
        assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "observability"}
        files = secret_files(agency)
        assert {e["name"]: e["value"] for e in c["env"]} == {
            f"AGENCIES__{env_key(agency)}__{setting}": f"/run/secrets/diasyndesi/{item}"
            for setting, item in files.items()
        }
        mounted = secret_items(deployment, "diasyndesi-agencies")
        assert mounted == list(files.values()), "a worker mounts only its own agency's secrets"
    serve = container(deployments["diasyndesi-serve"])
    assert serve["command"] == ["diasyndesi", "serve"] and port(serve, "http") == 8000
    assert serve["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert serve["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def secret_items(deployment: dict[str, Any], secret: str) -> list[str]:
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    return [
        item["key"]
        for volume in volumes
        for source in volume.get("projected", {}).get("sources", [])
        if source.get("secret", {}).get("name") == secret
        for item in source["secret"]["items"]
    ]


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_services_and_disruption_budgets_select_their_deployments(
    manifests: list[dict[str, Any]],
) -> None:
    deployments = kind(manifests, "Deployment")
    budgets = kind(manifests, "PodDisruptionBudget")
    for name, deployment in deployments.items():
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
        covering = [
            b for b in budgets.values() if selects(b["spec"]["selector"]["matchLabels"], labels)
        ]
        assert len(covering) == 1, name
        assert deployment["spec"]["replicas"] >= 2, (
            "a budget needs a second replica to allow drains"
        )
    (service,) = kind(manifests, "Service").values()
    serve_labels = deployments["diasyndesi-serve"]["spec"]["template"]["metadata"]["labels"]
    assert selects(service["spec"]["selector"], serve_labels)
    assert [
        d
        for d in deployments.values()
        if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
    ] == [deployments["diasyndesi-serve"]]


def test_a_job_runs_the_migration(manifests: list[dict[str, Any]]) -> None:
    (job,) = kind(manifests, "Job").values()
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["diasyndesi", "db", "upgrade"]


def test_secret_templates_hold_no_values(manifests: list[dict[str, Any]]) -> None:
    secrets = kind(manifests, "Secret")
    items = [item for agency in AGENCIES for item in secret_files(agency).values()]
    assert sorted(secrets["diasyndesi-agencies"]["stringData"]) == sorted(items)
    for name, secret in secrets.items():
        assert "data" not in secret, name
        assert set(secret["stringData"].values()) == {""}, name


def test_every_pod_runs_as_non_root_with_a_read_only_root(manifests: list[dict[str, Any]]) -> None:
    for m in manifests:
        if m["kind"] not in ("Deployment", "Job"):
            continue
        pod = m["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for c in pod["containers"]:
            assert c["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {v["mountPath"] for v in c["volumeMounts"]}
            assert "/var/lib/diasyndesi/var" in mounts  # VAR_DIR stays writable
            for env in c.get("env", []):
                assert any(env["value"].startswith(f"{mount}/") for mount in mounts)


def test_the_configmap_is_a_configuration_production_accepts(
    manifests: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Load the ConfigMap as a pod would (secret files stood in by local ones)."""
    config = kind(manifests, "ConfigMap")["diasyndesi"]["data"]
    monkeypatch.chdir(tmp_path)
    for key, value in config.items():
        if key.endswith("_FILE") or key == "KAFKA__SSL_CAFILE":
            stand_in = tmp_path / re.sub(r"\W", "_", key)
            stand_in.write_text("a-real-secret-value\n")
            value = str(stand_in)
        monkeypatch.setenv(key, value)
    settings = load_settings()
    assert settings.environment == "production"
    assert settings.kafka.security_protocol == "SASL_SSL"
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert sorted(settings.agencies) == sorted(AGENCIES)


# --- the Dockerfile -------------------------------------------------------------------------


def test_the_image_installs_the_wheel_only_and_runs_as_non_root() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    final = text.rsplit("\nFROM ", 1)[1]  # the last stage is the image
    assert final.startswith("python:3.11-slim\n")
    copies = re.findall(r"^COPY (.+)$", final, re.M)
    assert copies == ["--from=wheel /dist /dist", "requirements.lock /tmp/requirements.lock"]
    assert re.search(
        r"pip install .*-c /tmp/requirements.lock /dist/diasyndesi-\*\.whl asyncpg", final
    )
    (user,) = re.findall(r"^USER (\S+)$", final, re.M)
    assert user.split(":")[0] not in ("root", "0")
    assert 'CMD ["diasyndesi", "serve"]' in final
