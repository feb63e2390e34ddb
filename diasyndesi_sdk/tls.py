"""Client certificates for mutual TLS: a family whose agency knows the hub by its
certificate builds its context here, once, at start."""

from __future__ import annotations

import ssl
from pathlib import Path

from diasyndesi_sdk.errors import ConfigurationError

__all__ = ["client_context"]


def client_context(
    agency: str, cert: Path | None, key: Path | None, ca_file: Path | None
) -> ssl.SSLContext:
    """A context presenting ``cert``/``key`` and trusting ``ca_file`` (the agency's CA).
    A missing or unusable file stops the start with a message naming the setting and
    OpenSSL's reason, never the path or the file's content."""
    missing = [
        name
        for name, value in (("client_cert", cert), ("client_key", key), ("ca_file", ca_file))
        if not value
    ]
    if missing:
        raise ConfigurationError(f"agency {agency}: set {', '.join(missing)} (mutual TLS)")
    setting = "ca_file"
    try:
        context = ssl.create_default_context(cafile=ca_file)
        setting = "client_cert/client_key"
        context.load_cert_chain(cert, key, password="")  # type: ignore[arg-type]  # "": never prompt
    except OSError as exc:  # ssl.SSLError included
        reason = getattr(exc, "reason", None) or exc.strerror or "not PEM, or the key is encrypted"
        raise ConfigurationError(f"agency {agency}: {setting} unusable ({reason})") from None
    return context
