"""The errors a connector raises, and their root. The hub's own errors (hub/errors.py) grow
from the same root, so one ``except DiasyndesiError`` covers both.

    DiasyndesiError
    ├── ConfigurationError        bad settings, registry, mapping or certificate: refuse to start
    └── DeliveryError             raised by a connector's deliver()
        ├── RetryableError        try again later (timeouts, 5xx, 429, credentials refused)
        └── PermanentError        retrying cannot help (4xx, validation, SOAP client fault, TLS)

``error_class`` is what metrics and outcome events count: short, stable, low-cardinality
(``diasyndesi_sdk/classify.py`` has the table). Messages never carry personal data or
secrets: they name fields, codes and classes, not values.
"""

from __future__ import annotations

__all__ = [
    "ConfigurationError",
    "DeliveryError",
    "DiasyndesiError",
    "PermanentError",
    "RetryableError",
]


class DiasyndesiError(Exception):
    """Base of every error the hub or a connector raises on purpose."""


class ConfigurationError(DiasyndesiError):
    """A settings value, registry entry or mapping file is wrong; the process must not start."""


class DeliveryError(DiasyndesiError):
    """A delivery to an agency failed. ``error_class`` is a short, stable, low-cardinality
    name used in metrics and outcome events (for example ``http_503`` or ``timeout``)."""

    def __init__(self, message: str, *, error_class: str, retry_after_s: float | None = None):
        super().__init__(message)
        self.error_class = error_class
        self.retry_after_s = retry_after_s


class RetryableError(DeliveryError):
    """The agency may accept the same delivery later."""


class PermanentError(DeliveryError):
    """The agency will never accept this delivery as it is."""
