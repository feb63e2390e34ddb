"""Secrets as files: every secret setting ``X`` of the hub may instead be given as ``X_FILE``,
the path of a file holding it (a compose secret under ``/run/secrets``, a Kubernetes Secret
mounted as a volume), so no secret needs to sit in an environment variable or a compose file.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import SecretStr

PLACEHOLDERS = frozenset({"changeme", "change-me", "secret", "password"})


def read_secret_file(path: Path) -> SecretStr:
    """A secret mounted as a file (compose secret, Kubernetes Secret volume): its content
    without the trailing newline editors and ``echo`` add. An empty file is refused: it is
    what an unfilled Secret template mounts."""
    value = path.read_text(encoding="utf-8").rstrip("\r\n")
    if not value:
        raise ValueError(f"{path} is empty; put the secret in it")
    return SecretStr(value)


def refuse_placeholder(value: SecretStr | None, setting: str) -> None:
    if value is not None and value.get_secret_value().lower() in PLACEHOLDERS:
        raise ValueError(f"{setting} is a placeholder; set a real secret")
