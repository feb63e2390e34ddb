"""Plain paths, not ``FilePath``: a missing file is the connector's to report at start."""

from __future__ import annotations

from pathlib import Path

from hub.settings import AgencyConnection


class LifelongLearningConnection(AgencyConnection):
    client_cert: Path | None = None
    client_key: Path | None = None
    ca_file: Path | None = None
