"""Plain paths, not ``FilePath``: a missing file is the connector's to report at start."""

from __future__ import annotations

from pathlib import Path

from pydantic import ConfigDict

from diasyndesi_sdk.connection import AgencyConnection


class LifelongLearningConnection(AgencyConnection):
    """``AGENCIES__<ID>__CLIENT_CERT``, ``__CLIENT_KEY`` and ``__CA_FILE``: the hub's client
    certificate and key, and the CA the centre's server certificate is checked against."""

    model_config = ConfigDict(extra="forbid")

    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
