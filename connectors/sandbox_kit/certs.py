"""Development and test certificates for mutual-TLS sandboxes, made at run time and never
committed: a CA, a server certificate for 127.0.0.1 and localhost, the hub's client
certificate and one from another CA (what an agency must refuse). trustme is a development
dependency only, like this kit."""

from __future__ import annotations

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


def write_pair(folder: Path, name: str, leaf: trustme.LeafCert) -> CertPair:
    """``name``.pem (with its chain) and ``name``.key, both created 0600."""
    pair = CertPair(folder / f"{name}.pem", folder / f"{name}.key")
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    for path, data in ((pair.cert, chain), (pair.key, leaf.private_key_pem.bytes())):
        path.unlink(missing_ok=True)  # the mode is only given to a file being created
        path.touch(mode=0o600)
        path.write_bytes(data)
    return pair


def write_dev_certs(folder: Path) -> DevCerts:
    """Everything into ``folder``, made owner-only."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca, stranger = trustme.CA(organization_name="Diasyndesi dev CA"), trustme.CA()
    (folder / "ca.pem").write_bytes(ca.cert_pem.bytes())
    return DevCerts(
        ca_file=folder / "ca.pem",
        server=write_pair(folder, "server", ca.issue_cert("127.0.0.1", "localhost")),
        client=write_pair(folder, "client", ca.issue_cert(common_name="diasyndesi-hub")),
        wrong_ca_client=write_pair(folder, "wrong-ca", stranger.issue_cert(common_name="hub")),
        authority=ca,
    )
