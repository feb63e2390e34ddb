"""Development and test certificates, made at run time and never committed: a CA, a server
certificate for 127.0.0.1 and localhost, the hub's client certificate and one from another
CA (what a centre must refuse). trustme is a development dependency only."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import trustme


class CertPair(NamedTuple):
    cert: Path
    key: Path


@dataclass(frozen=True)
class DevCerts:
    ca_file: Path
    server: CertPair
    client: CertPair
    wrong_ca_client: CertPair
    authority: trustme.CA  # in memory only, to issue more (a test's expired certificate)


def _write(path: Path, data: bytes) -> None:
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as fh:
        os.fchmod(fh.fileno(), 0o600)  # also when the file existed with another mode
        fh.write(data)


def write_pair(folder: Path, name: str, leaf: trustme.LeafCert) -> CertPair:
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}.key")
    _write(pair.cert, b"".join(blob.bytes() for blob in leaf.cert_chain_pems))
    _write(pair.key, leaf.private_key_pem.bytes())
    return pair


def write_dev_certs(folder: Path) -> DevCerts:
    """Everything into ``folder`` (made owner-only); every file 0600."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, stranger = trustme.CA(organization_name="Diasyndesi dev CA"), trustme.CA()
    _write(folder / "ca.pem", ca.cert_pem.bytes())
    return DevCerts(
        ca_file=folder / "ca.pem",
        server=write_pair(folder, "server", ca.issue_cert("127.0.0.1", "localhost")),
        client=write_pair(folder, "client", ca.issue_cert(common_name="diasyndesi-hub")),
        wrong_ca_client=write_pair(folder, "wrong-ca", stranger.issue_cert(common_name="hub")),
        authority=ca,
    )
