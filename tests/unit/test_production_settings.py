"""What ``ENVIRONMENT=production`` refuses, secrets read from files, and the folders an
operator can replace (hub/settings.py, the ``diasyndesi`` command's start-up)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from hub.cli import app
from hub.embedded import _merge_connections
from hub.errors import ConfigurationError
from hub.registry import Registry
from hub.settings import AgencyConnection, Settings, load_settings, packaged_dir

PRODUCTION = {
    "ENVIRONMENT": "production",
    "DATABASE_URL": "postgresql+asyncpg://diasyndesi@db.example/diasyndesi",
    "KAFKA_BOOTSTRAP_SERVERS": "kafka-0.example:9093",
}


@pytest.fixture(autouse=True)
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test in an empty folder: ./var is its own. Logging stays as it was: configured
    inside CliRunner it would write to a stream the runner closes, for every later test."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("hub.cli.configure_logging", lambda *_, **__: None)
    return tmp_path


def setenv(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def refusals(monkeypatch: pytest.MonkeyPatch, values: dict[str, str], *args: str) -> list[str]:
    """Run the command; it must refuse with exit 2 and only ``error:`` lines."""
    setenv(monkeypatch, values)
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert lines and all(line.startswith("error: ") for line in lines), result.stderr
    return lines


@pytest.mark.parametrize("command", [["serve"], ["worker", "dypa"], ["up"]])
def test_production_refuses_sqlite_and_the_embedded_broker(
    monkeypatch: pytest.MonkeyPatch, command: list[str]
) -> None:
    lines = refusals(monkeypatch, {"ENVIRONMENT": "production"}, *command)
    assert lines[0].startswith("error: DATABASE_URL: production needs PostgreSQL")
    assert lines[1].startswith("error: KAFKA_BOOTSTRAP_SERVERS: production needs Apache Kafka")
    assert len(lines) == 2


def test_production_refuses_an_explicit_sqlite_url(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {**PRODUCTION, "DATABASE_URL": "sqlite+aiosqlite:///var/hub.db"}
    (line,) = refusals(monkeypatch, values, "serve")
    assert line.startswith("error: DATABASE_URL:")


def test_production_refuses_plain_http_to_an_agency(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        **PRODUCTION,
        "AGENCIES__KOZANI_SOCIAL_GROCERY__BASE_URL": "http://grocery.kozani.example",
        "AGENCIES__DYPA__BASE_URL": "https://api.dypa.example",
    }
    (line,) = refusals(monkeypatch, values, "worker", "kozani-social-grocery")
    assert line.startswith("error: AGENCIES__KOZANI_SOCIAL_GROCERY__BASE_URL:")
    assert "https://" in line


def test_production_refuses_a_plain_sasl_password_in_clear(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    values = {
        **PRODUCTION,
        "KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "KAFKA__SASL_MECHANISM": "PLAIN",
        "KAFKA__SASL_USERNAME": "diasyndesi",
        "KAFKA__SASL_PASSWORD": "kafka-password-1",
    }
    (line,) = refusals(monkeypatch, values, "serve")
    assert line.startswith("error: KAFKA__SASL_MECHANISM:")


def test_production_refuses_a_var_dir_with_dev_credentials(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    (workdir / "var").mkdir()
    (workdir / "var" / "dev-credentials.json").write_text("{}")
    (line,) = refusals(monkeypatch, PRODUCTION, "serve")
    assert line.startswith("error: VAR_DIR:") and "development tokens" in line


class StopAtHub:
    """Replaces the hub: the test is about what ``serve`` does before it."""

    def __init__(self, *_: Any, **__: Any) -> None:
        raise ConfigurationError("stopped before the hub")


@pytest.mark.parametrize(("environment", "written"), [("production", False), ("development", True)])
def test_only_development_writes_dev_credentials(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, environment: str, written: bool
) -> None:
    monkeypatch.setattr("hub.runtime.Hub", StopAtHub)
    values = {**PRODUCTION, "ENVIRONMENT": environment}
    if environment == "development":
        values["DATABASE_URL"] = f"sqlite+aiosqlite:///{workdir / 'hub.db'}"
    (line,) = refusals(monkeypatch, values, "serve")
    assert line == "error: stopped before the hub"
    assert (workdir / "var" / "dev-credentials.json").exists() is written


def test_a_real_refusal_is_one_line_per_setting_and_no_traceback(workdir: Path) -> None:
    diasyndesi = Path(sys.executable).parent / "diasyndesi"
    result = subprocess.run(  # noqa: S603 - our console script
        [str(diasyndesi), "worker", "opeka"],
        cwd=workdir,
        env={"PATH": "/usr/bin:/bin", "ENVIRONMENT": "production"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert [line.split(":")[1] for line in result.stderr.splitlines()] == [
        " DATABASE_URL",
        " KAFKA_BOOTSTRAP_SERVERS",
    ]


def test_a_valid_production_configuration_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {**PRODUCTION, "AGENCIES__DYPA__BASE_URL": "https://api.dypa.example"})
    settings = load_settings()
    assert not settings.writes_dev_credentials
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)


def test_other_problems_name_their_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {"API_PORT": "70000", "KAFKA__SECURITY_PROTOCOL": "TLS"})
    with pytest.raises(ConfigurationError) as refused:
        load_settings()
    lines = str(refused.value).splitlines()
    assert lines[0].startswith("API_PORT: ")
    assert lines[1].startswith("KAFKA__SECURITY_PROTOCOL: ")


# --- secrets from files -------------------------------------------------------------------


def test_secrets_come_from_files(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    (workdir / "db").write_text("p@ss/word:1\n")
    (workdir / "dypa").write_text("dypa-client-secret-1\n")
    setenv(
        monkeypatch,
        {
            "DATABASE_URL": "postgresql+asyncpg://diasyndesi@db.example/diasyndesi",
            "DATABASE_PASSWORD_FILE": str(workdir / "db"),
            "AGENCIES__DYPA__SECRET_FILE": str(workdir / "dypa"),
        },
    )
    settings = Settings()
    assert settings.database == (
        "postgresql+asyncpg://diasyndesi:p%40ss%2Fword%3A1@db.example/diasyndesi"
    )
    assert settings.agencies["dypa"].secret.get_secret_value() == "dypa-client-secret-1"
    assert "p@ss" not in repr(settings) and "dypa-client" not in repr(settings)
    # a file-given secret overrides the sandbox's like an environment-given one
    sandboxes = {"dypa": AgencyConnection(base_url="http://127.0.0.1:8102", secret="s" * 24)}
    merged = _merge_connections(sandboxes, settings)
    assert merged["dypa"].secret.get_secret_value() == "dypa-client-secret-1"


@pytest.mark.parametrize(
    ("values", "refusal"),
    [
        (
            {"DATABASE_URL": "postgresql+asyncpg://u:pw@db/hub", "DATABASE_PASSWORD": "pw2-long"},
            "DATABASE_URL has a password and DATABASE_PASSWORD is set too",
        ),
        ({"DATABASE_URL": "not a url"}, "DATABASE_URL is not a database URL"),
        ({"DATABASE_PASSWORD": "changeme"}, "DATABASE_PASSWORD is a placeholder"),
        ({"AGENCIES__DYPA__SECRET_FILE": "/no/such/file"}, "AGENCIES__DYPA__SECRET_FILE: "),
    ],
)
def test_secret_settings_that_cannot_work(
    monkeypatch: pytest.MonkeyPatch, values: dict[str, str], refusal: str
) -> None:
    setenv(monkeypatch, values)
    with pytest.raises(ConfigurationError, match=refusal):
        load_settings()


def test_an_empty_secret_file_is_refused(monkeypatch: pytest.MonkeyPatch, workdir: Path) -> None:
    (workdir / "password").write_text("\n")
    monkeypatch.setenv("DATABASE_PASSWORD_FILE", str(workdir / "password"))
    with pytest.raises(ConfigurationError, match="password is empty; put the secret in it"):
        load_settings()


def test_a_placeholder_in_a_secret_file_is_refused(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    (workdir / "secret").write_text("changeme\n")
    monkeypatch.setenv("AGENCIES__DYPA__SECRET_FILE", str(workdir / "secret"))
    with pytest.raises(ConfigurationError, match="AGENCIES__DYPA: agency secret is a placeholder"):
        load_settings()


# --- packaged data and the folders that replace it ----------------------------------------


def test_var_dir_is_under_the_working_directory(workdir: Path) -> None:
    assert Settings().var_dir == workdir / "var"


def test_registry_and_mappings_default_to_the_packaged_ones() -> None:
    settings = Settings()
    assert settings.registry_dir == packaged_dir("registry")
    assert settings.mappings_dir == packaged_dir("mappings")
    assert (settings.registry_dir / "agencies.yaml").is_file()


def test_registry_dir_replaces_the_packaged_registry(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    own = workdir / "registry"
    shutil.copytree(packaged_dir("registry"), own, ignore=shutil.ignore_patterns("*.py"))
    agencies = yaml.safe_load((own / "agencies.yaml").read_text(encoding="utf-8"))
    for agency in agencies:
        agency["active"] = agency["id"] == "opeka"
    (own / "agencies.yaml").write_text(yaml.safe_dump(agencies, allow_unicode=True))
    monkeypatch.setenv("REGISTRY_DIR", str(own))
    registry = Registry.load(Settings().registry_dir)
    assert [agency.id for agency in registry.active_agencies] == ["opeka"]


@pytest.mark.parametrize("name", ["REGISTRY_DIR", "MAPPINGS_DIR"])
def test_a_missing_override_folder_is_refused(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, name: str
) -> None:
    monkeypatch.setenv(name, str(workdir / "nowhere"))
    with pytest.raises(ConfigurationError, match=f"^{name}: .*nowhere is not a folder"):
        load_settings()
