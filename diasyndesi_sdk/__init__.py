"""The Diasyndesi connector SDK: everything an agency family needs from the hub, and the only
part of the hub a family may import.

A family (``connectors/<family>/``, or a package of its own) depends on this SDK and on the
canonical codes in ``schemas``, never on ``hub``: the hub discovers families through the
``diasyndesi.families`` entry point group (``diasyndesi_sdk.family``) and calls them through
the seam in ``diasyndesi_sdk.connector``.

- ``connector``: ``Connector``, ``Delivery``, ``Receipt``, ``PollsStatus``, idempotency keys
- ``connection``: ``AgencyConnection``, the settings every family shares
- ``errors``: ``RetryableError`` / ``PermanentError`` (and the root of the hub's errors)
- ``classify``: the one table turning HTTP statuses, SOAP faults and transport exceptions
  into those errors
- ``http``: the HTTP session factory (pool, keep-alive, TLS), capped JSON reads
- ``tls``: client-certificate contexts for mutual TLS
- ``webhooks``: Standard Webhooks signing and verification
- ``family``: ``FamilySpec``, what a family publishes, and its discovery
"""
