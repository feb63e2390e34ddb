"""The hub's error tree. Foreign exceptions (aiokafka, aiohttp, zeep) are translated at
the seam that meets them, so nothing above a connector or the bus sees a library error.

    DiasyndesiError
    ├── ConfigurationError        bad settings, registry or mapping file: refuse to start
    ├── BrokerError               Kafka unreachable or refused a request
    │   └── BrokerTimeout
    ├── DeliveryError             raised by a connector's deliver()
    │   ├── RetryableError        try again later (timeouts, 5xx, 429, connection refused)
    │   └── PermanentError        retrying cannot help (4xx, validation, SOAP client fault)
    ├── RoutingError              a referral no agency can take
    ├── PoisonRecord              (hub/events.py) a Kafka record that is not our CloudEvent
    ├── WebhookError              (hub/webhooks.py) a signed message refused, with a reason
    ├── ReplayError               (hub/dlq.py) a dead letter that cannot be replayed
    └── TokenError                (hub/tokens.py) a token command refused: unknown id or
                                  principal, a lifetime that is not a duration or too long

Messages never carry personal data: they name fields and classes, not values.
"""

from __future__ import annotations


class DiasyndesiError(Exception):
    """Base of every error the hub raises on purpose."""


class ConfigurationError(DiasyndesiError):
    """A settings value, registry entry or mapping file is wrong; the process must not start."""


class BrokerError(DiasyndesiError):
    """The Kafka broker could not be reached or refused a request."""


class BrokerTimeout(BrokerError):
    """A broker call did not finish within its bound."""


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


class RoutingError(DiasyndesiError):
    """No agency handles a requested programme in the centre's municipality."""

    def __init__(self, message: str, *, field: str):
        super().__init__(message)
        self.field = field
