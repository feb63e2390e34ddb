"""Kafka client security settings (``KAFKA__*``), a group of ``hub.settings.Settings``; kept
apart so the settings module stays readable. ``hub.bus`` turns them into aiokafka arguments.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

from diasyndesi_sdk.secret_files import read_secret_file, refuse_placeholder


class KafkaClientSettings(BaseModel):
    """How every Kafka client the hub creates (producer, consumers, topic admin) encrypts and
    authenticates: ``KAFKA__SECURITY_PROTOCOL``, ``KAFKA__SASL_*``, ``KAFKA__SSL_*``, named
    after Kafka's own ``security.protocol``, ``sasl.mechanism`` and ``ssl.*`` client settings.

    The password may come from a file (``KAFKA__SASL_PASSWORD_FILE``), like every secret of
    the hub. A combination that cannot work (SASL settings without a SASL protocol, TLS files
    on a plaintext connection) is refused at start rather than ignored.
    """

    model_config = ConfigDict(extra="forbid")

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] | None = None
    sasl_username: str = ""
    sasl_password: SecretStr = SecretStr("")
    sasl_password_file: FilePath | None = None
    ssl_cafile: FilePath | None = Field(
        default=None, description="CA bundle for the brokers' certificates (else the system's)"
    )
    ssl_certfile: FilePath | None = Field(default=None, description="client certificate (mTLS)")
    ssl_keyfile: FilePath | None = Field(default=None, description="its private key")
    ssl_key_password: SecretStr | None = None
    ssl_key_password_file: FilePath | None = None

    @property
    def uses_sasl(self) -> bool:
        return self.security_protocol.startswith("SASL_")

    @property
    def uses_tls(self) -> bool:
        return self.security_protocol in ("SSL", "SASL_SSL")

    @model_validator(mode="after")
    def _coherent(self) -> KafkaClientSettings:
        if self.sasl_password_file is not None:
            if self.sasl_password.get_secret_value():
                raise ValueError("set KAFKA__SASL_PASSWORD or KAFKA__SASL_PASSWORD_FILE, not both")
            self.sasl_password = read_secret_file(self.sasl_password_file)
        refuse_placeholder(self.sasl_password, "KAFKA__SASL_PASSWORD")
        if self.ssl_key_password_file is not None:
            if self.ssl_key_password is not None:
                raise ValueError(
                    "set KAFKA__SSL_KEY_PASSWORD or KAFKA__SSL_KEY_PASSWORD_FILE, not both"
                )
            self.ssl_key_password = read_secret_file(self.ssl_key_password_file)
        sasl = [
            name
            for name, value in (
                ("SASL_MECHANISM", self.sasl_mechanism),
                ("SASL_USERNAME", self.sasl_username),
                ("SASL_PASSWORD", self.sasl_password.get_secret_value()),
            )
            if not value
        ]
        if self.uses_sasl and sasl:
            missing = ", ".join(f"KAFKA__{name}" for name in sasl)
            raise ValueError(f"{self.security_protocol} needs {missing}")
        if not self.uses_sasl and len(sasl) < 3:
            raise ValueError(
                f"KAFKA__SASL_* is set but KAFKA__SECURITY_PROTOCOL={self.security_protocol} "
                "does not use SASL (SASL_SSL or SASL_PLAINTEXT)"
            )
        files = (self.ssl_cafile, self.ssl_certfile, self.ssl_keyfile)
        if not self.uses_tls and any(files):
            raise ValueError(
                f"KAFKA__SSL_* is set but KAFKA__SECURITY_PROTOCOL={self.security_protocol} "
                "does not use TLS (SSL or SASL_SSL)"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("KAFKA__SSL_KEYFILE needs KAFKA__SSL_CERTFILE")
        return self
