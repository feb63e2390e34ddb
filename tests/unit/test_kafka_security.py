"""Kafka client security and topic settings (hub/settings.py, hub/bus.py): the settings build
a working TLS context (proved by a real handshake against a server whose certificate a
throw-away CA from ``trustme`` signed), and the same options reach every aiokafka
producer, consumer and admin client the hub creates."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme
from pydantic import ValidationError

from hub import bus
from hub.bus import KafkaCluster, KafkaPublisher, ensure_topics, list_topics, make_consumer
from hub.errors import ConfigurationError
from hub.settings import ConsumerSettings, KafkaClientSettings, ProducerSettings, Settings


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


def scram(ca_file: Path, **extra: Any) -> KafkaClientSettings:
    return KafkaClientSettings(
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="diasyndesi",
        sasl_password="s3cret-from-the-vault",
        ssl_cafile=ca_file,
        **extra,
    )


async def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> bytes:
    """One TLS connection on loopback; returns what the server sent after the handshake."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    listener = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=server)
    port = listener.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client, server_hostname="localhost"
        )
        data = await reader.read(2)
        writer.close()
        return data
    finally:
        listener.close()
        await listener.wait_closed()


def server_context(ca: trustme.CA, *, require_client_cert: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(context)
    if require_client_cert:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


async def test_the_ca_file_makes_a_context_that_trusts_the_brokers(
    ca: trustme.CA, ca_file: Path
) -> None:
    options = bus.client_options(scram(ca_file))
    context = options["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    assert await handshake(context, server_context(ca)) == b"ok"
    stranger = server_context(trustme.CA())  # a broker certificate our CA never signed
    with pytest.raises(ssl.SSLCertVerificationError):
        await handshake(context, stranger)


async def test_a_client_certificate_for_mutual_tls(
    ca: trustme.CA, ca_file: Path, tmp_path: Path
) -> None:
    client = ca.issue_cert("diasyndesi-hub")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    client.cert_chain_pems[0].write_to_path(str(cert))
    client.private_key_pem.write_to_path(str(key))
    settings = KafkaClientSettings(
        security_protocol="SSL", ssl_cafile=ca_file, ssl_certfile=cert, ssl_keyfile=key
    )
    context = bus.client_options(settings)["ssl_context"]
    assert await handshake(context, server_context(ca, require_client_cert=True)) == b"ok"


def test_sasl_options_and_nothing_else_on_plaintext(ca_file: Path) -> None:
    options = bus.client_options(scram(ca_file))
    assert options["security_protocol"] == "SASL_SSL"
    assert options["sasl_mechanism"] == "SCRAM-SHA-512"
    assert options["sasl_plain_username"] == "diasyndesi"
    assert options["sasl_plain_password"] == "s3cret-from-the-vault"
    assert bus.client_options(KafkaClientSettings()) == {"security_protocol": "PLAINTEXT"}


class Recorder:
    """Stands in for an aiokafka client class: records its keyword arguments."""

    def __init__(self, calls: list[tuple[str, dict[str, Any]]], name: str) -> None:
        self.calls, self.name = calls, name

    def __call__(self, **kwargs: Any) -> Any:
        self.calls.append((self.name, kwargs))
        return FakeClient()


class FakeClient:
    def __init__(self) -> None:
        self.created: list[Any] = []

    def subscribe(self, **_: Any) -> None: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def list_topics(self) -> list[str]:
        return ["kk.referrals.v1"]

    async def create_topics(self, topics: list[Any]) -> None:
        CREATED.extend(topics)


CREATED: list[Any] = []


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, dict[str, Any]]]]:
    recorded: list[tuple[str, dict[str, Any]]] = []
    for name in ("AIOKafkaProducer", "AIOKafkaConsumer", "AIOKafkaAdminClient"):
        monkeypatch.setattr(bus, name, Recorder(recorded, name))
    CREATED.clear()
    yield recorded


async def test_every_client_gets_the_security_options_and_topics_the_replication(
    ca_file: Path, calls: list[tuple[str, dict[str, Any]]]
) -> None:
    settings = Settings(
        kafka=scram(ca_file),
        kafka_bootstrap_servers="kafka-0.example:9093",
        topic_replication_factor=3,
        topic_min_insync_replicas=2,
    )
    kafka = KafkaCluster.from_settings(settings)
    KafkaPublisher(kafka, ProducerSettings(), client_id="hub")
    make_consumer(kafka, "group", ["kk.referrals.v1"], ConsumerSettings(), client_id="c")
    await ensure_topics(kafka, ["kk.referrals.v1", "kk.status.v1"])
    await list_topics(kafka)
    assert [name for name, _ in calls] == [
        "AIOKafkaProducer",
        "AIOKafkaConsumer",
        "AIOKafkaAdminClient",
        "AIOKafkaAdminClient",
    ]
    context = kafka.client_options["ssl_context"]
    for name, kwargs in calls:
        assert kwargs["bootstrap_servers"] == "kafka-0.example:9093", name
        assert kwargs["security_protocol"] == "SASL_SSL", name
        assert kwargs["ssl_context"] is context, name  # built once per process
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512", name
        assert kwargs["sasl_plain_username"] == "diasyndesi", name
        assert kwargs["sasl_plain_password"] == "s3cret-from-the-vault", name
    (created,) = CREATED  # kk.referrals.v1 already existed
    assert created.name == "kk.status.v1"
    assert created.replication_factor == 3
    assert created.topic_configs == {"min.insync.replicas": "2"}
    assert "s3cret" not in repr(kafka)


def test_replication_defaults_follow_the_environment() -> None:
    development = Settings()
    assert (development.replication_factor, development.min_insync_replicas) == (1, 1)
    production = Settings.model_construct(environment="production")
    assert (production.replication_factor, production.min_insync_replicas) == (3, 2)
    with pytest.raises(ValidationError, match="exceeds TOPIC_REPLICATION_FACTOR"):
        Settings(topic_min_insync_replicas=2)


def test_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, ca_file: Path, tmp_path: Path
) -> None:
    password = tmp_path / "kafka-password"
    password.write_text("from-a-mounted-secret\n")
    for name, value in {
        "KAFKA__SECURITY_PROTOCOL": "SASL_SSL",
        "KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "KAFKA__SASL_USERNAME": "diasyndesi",
        "KAFKA__SASL_PASSWORD_FILE": str(password),
        "KAFKA__SSL_CAFILE": str(ca_file),
        "TOPIC_REPLICATION_FACTOR": "3",
        "TOPIC_MIN_INSYNC_REPLICAS": "2",
    }.items():
        monkeypatch.setenv(name, value)
    settings = Settings()
    assert settings.kafka.sasl_mechanism == "SCRAM-SHA-256"
    assert settings.kafka.sasl_password.get_secret_value() == "from-a-mounted-secret"
    assert settings.kafka.ssl_cafile == ca_file
    assert (settings.replication_factor, settings.min_insync_replicas) == (3, 2)
    assert "from-a-mounted-secret" not in repr(settings)


@pytest.mark.parametrize(
    ("given", "refusal"),
    [
        ({"security_protocol": "SASL_SSL"}, "SASL_SSL needs KAFKA__SASL_MECHANISM"),
        (
            {"security_protocol": "SASL_PLAINTEXT", "sasl_mechanism": "PLAIN"},
            "needs KAFKA__SASL_USERNAME, KAFKA__SASL_PASSWORD",
        ),
        ({"sasl_username": "hub"}, "does not use SASL"),
        ({"security_protocol": "SSL", "ssl_keyfile": __file__}, "needs KAFKA__SSL_CERTFILE"),
        ({"ssl_cafile": __file__}, "does not use TLS"),
        ({"security_protocol": "SSL", "ssl_cafile": "/no/such/ca.pem"}, "ssl_cafile"),
        ({"security_protocol": "PLAINTEXTISH"}, "security_protocol"),
    ],
)
def test_settings_that_cannot_work_are_refused(given: dict[str, Any], refusal: str) -> None:
    with pytest.raises(ValidationError, match=refusal):
        KafkaClientSettings(**given)


def test_a_file_that_is_not_a_certificate_names_the_setting(tmp_path: Path) -> None:
    bogus = tmp_path / "ca.pem"
    bogus.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="KAFKA__SSL_CAFILE"):
        bus.client_options(KafkaClientSettings(security_protocol="SSL", ssl_cafile=bogus))
