"""Mutual TLS needs three files: a missing or unusable one stops the start, naming the
agency and the setting and never the file's path or content."""

from __future__ import annotations

from pathlib import Path

import pytest

from connectors.lifelong_learning.connector import LifelongLearningConnector
from connectors.lifelong_learning.settings import LifelongLearningConnection
from connectors.sandbox_kit.certs import DevCerts
from diasyndesi_sdk.connection import AgencyConnection
from hub.errors import ConfigurationError
from hub.servers import RunningServer

from .conftest import AGENCY, Sandbox, delivery


def connector(certs: DevCerts, **paths: Path) -> LifelongLearningConnector:
    files = {
        "client_cert": certs.client.cert,
        "client_key": certs.client.key,
        "ca_file": certs.ca_file,
    }
    files.update(paths)
    connection = LifelongLearningConnection(base_url="https://127.0.0.1:9", **files)
    return LifelongLearningConnector(AGENCY, connection)


@pytest.mark.parametrize(
    ("setting", "reason"),
    [
        ("client_cert", "client_cert/client_key unusable (No such file or directory)"),
        ("client_key", "client_cert/client_key unusable (No such file or directory)"),
        ("ca_file", "ca_file unusable (No such file or directory)"),
    ],
)
async def test_missing_file_stops_the_start(
    certs: DevCerts, tmp_path: Path, setting: str, reason: str
) -> None:
    missing = tmp_path / "secret-name-not-to-leak.pem"
    with pytest.raises(ConfigurationError) as caught:
        await connector(certs, **{setting: missing}).start()
    assert str(caught.value) == f"agency {AGENCY}: {reason}"


@pytest.mark.parametrize(
    ("paths", "reason"),
    [
        ({"ca_file": "garbage"}, "ca_file unusable (NO_CERTIFICATE_OR_CRL_FOUND)"),
        ({"client_key": "other_key"}, "client_cert/client_key unusable (KEY_VALUES_MISMATCH)"),
        ({"client_cert": "folder"}, "client_cert/client_key unusable (Is a directory)"),
    ],
)
async def test_unusable_file_stops_the_start(
    certs: DevCerts, tmp_path: Path, paths: dict[str, str], reason: str
) -> None:
    (tmp_path / "garbage").write_text("not a certificate")
    files = {
        "garbage": tmp_path / "garbage",
        "other_key": certs.wrong_ca_client.key,
        "folder": tmp_path,
    }
    with pytest.raises(ConfigurationError) as caught:
        await connector(certs, **{k: files[v] for k, v in paths.items()}).start()
    assert str(caught.value) == f"agency {AGENCY}: {reason}"


async def test_settings_missing_or_not_https_stop_the_start(certs: DevCerts) -> None:
    bare = LifelongLearningConnector(AGENCY, AgencyConnection(base_url="https://127.0.0.1:9"))
    with pytest.raises(ConfigurationError, match=f"{AGENCY}: set client_cert, client_key, ca_file"):
        await bare.start()
    plain = LifelongLearningConnector(AGENCY, AgencyConnection(base_url="http://127.0.0.1:9"))
    with pytest.raises(ConfigurationError, match="https://"):
        await plain.start()


async def test_the_settings_of_a_plain_connection_are_read_as_the_family_s(
    sandbox: Sandbox, certs: DevCerts
) -> None:
    """What the hub's settings hold (AGENCIES__<ID>__CLIENT_CERT… kept as extra fields of
    the shared model) is enough: the connector reads them with its own model."""
    server: RunningServer = sandbox.server
    pair = certs.client
    connection = AgencyConnection.model_validate(
        {
            "base_url": server.url,
            "client_cert": str(pair.cert),
            "client_key": str(pair.key),
            "ca_file": str(certs.ca_file),
        }
    )
    connector = LifelongLearningConnector(AGENCY, connection)
    await connector.start()
    try:
        assert (await connector.deliver(delivery())).reference == "KDBM-KOZ-000001"
    finally:
        await connector.stop()


def test_dev_keys_are_owner_only(certs: DevCerts) -> None:
    for pair in (certs.server, certs.client, certs.wrong_ca_client):
        assert pair.key.stat().st_mode & 0o777 == 0o600
    assert certs.ca_file.parent.stat().st_mode & 0o777 == 0o700
