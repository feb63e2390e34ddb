"""How the hub reaches one agency: the settings every family shares. A family that needs
more (a client certificate, a tenant id) subclasses ``AgencyConnection`` with its own fields
and names the subclass in its ``FamilySpec``; the hub reads an agency's settings from
``AGENCIES__<ID>__<FIELD>`` into this base model (unknown fields kept) and the family's
model validates them, strictly, when the connector is built."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, FilePath, SecretStr, model_validator

from diasyndesi_sdk.secret_files import read_secret_file, refuse_placeholder

__all__ = ["AgencyConnection"]


class AgencyConnection(BaseModel):
    """How to reach one agency. ``secret`` is whatever the agency's scheme needs: an OAuth2
    client secret, a WS-Security password, an API key or a webhook signing secret; or
    ``secret_file`` names a file holding it (a compose secret, a Kubernetes Secret volume)."""

    model_config = ConfigDict(extra="allow")  # a family's own fields, validated by its model

    base_url: str = ""
    username: str = ""
    secret: SecretStr = SecretStr("")
    secret_file: FilePath | None = None
    timeout_s: float = Field(default=10.0, gt=0)

    @model_validator(mode="after")
    def _secret(self) -> AgencyConnection:
        if self.secret_file is not None:
            if self.secret.get_secret_value():
                raise ValueError("set SECRET or SECRET_FILE, not both")
            self.secret = read_secret_file(self.secret_file)  # counts as set (merging)
        refuse_placeholder(self.secret, "agency secret")
        return self
