"""The hub's error tree. Foreign exceptions (aiokafka, aiohttp, zeep) are translated at
the seam that meets them, so nothing above a connector or the bus sees a library error.
The root and the connectors' errors live in the SDK (``diasyndesi_sdk/errors.py``).

    DiasyndesiError
    ├── ConfigurationError        bad settings, registry or mapping file: refuse to start
    ├── BrokerError               Kafka unreachable or refused a request
    │   └── BrokerTimeout
    ├── DeliveryError             raised by a connector's deliver()
    │   ├── RetryableError        try again later (timeouts, 5xx, 429, credentials refused)
    │   └── PermanentError        retrying cannot help (4xx, validation, SOAP client fault, TLS)
    ├── RoutingError              a referral no agency can take
    ├── PoisonRecord              (hub/events.py) a Kafka record that is not our CloudEvent
    ├── WebhookError              (diasyndesi_sdk/webhooks.py) a signed message refused
    ├── ReplayError               (hub/dlq.py) a dead letter that cannot be replayed
    └── TokenError                (hub/token_lifetimes.py) a token command refused: unknown id or
                                  principal, a lifetime that is not a duration or too long

Messages never carry personal data: they name fields and classes, not values.
"""

from __future__ import annotations

from diasyndesi_sdk.errors import (  # the root and the connectors' errors, re-exported
    ConfigurationError,
    DeliveryError,
    DiasyndesiError,
    PermanentError,
    RetryableError,
)

__all__ = [
    "BrokerError",
    "BrokerTimeout",
    "ConfigurationError",
    "DeliveryError",
    "DiasyndesiError",
    "PermanentError",
    "RetryableError",
    "RoutingError",
]


class BrokerError(DiasyndesiError):
    """The Kafka broker could not be reached or refused a request."""


class BrokerTimeout(BrokerError):
    """A broker call did not finish within its bound."""


class RoutingError(DiasyndesiError):
    """No agency (other than the referring one) handles a requested programme in the
    municipality the referral is routed by."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field
