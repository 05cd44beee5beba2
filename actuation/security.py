"""Certificates for the controller links: self-signed OPC UA application certificates.

OPC UA (Part 6, 6.2.2) wants an RSA application-instance certificate whose
subjectAltName carries the application URI, with key usage digitalSignature,
nonRepudiation, keyEncipherment and dataEncipherment, and the extended key
usage serverAuth (controllers) or clientAuth (the daemon). This module makes
such certificates with ``cryptography`` for the demo and the tests, and loads
and fingerprints them for pinning. Production deployments install certificates
issued by their own PKI; the controllers and the daemon only pin them.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import logging
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from configs.errors import ConfigError

__all__ = [
    "CLIENT_APPLICATION_URI",
    "CertificatePair",
    "DemoPki",
    "certificate_fingerprint",
    "controller_application_uri",
    "controller_certificate_paths",
    "generate_application_certificate",
    "load_certificate_der",
    "provision_demo_pki",
]

logger = logging.getLogger(__name__)

#: Application URI of the signaltwin daemon (its client certificate carries it).
CLIENT_APPLICATION_URI = "urn:signaltwin:daemon"

Role = Literal["server", "client"]

_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.-]")


def controller_application_uri(tls_id: str) -> str:
    """Application URI of the emulated controller of traffic light ``tls_id``."""
    return f"urn:signaltwin:controller:{tls_id}"


@dataclass(frozen=True)
class CertificatePair:
    """A certificate and its private key, as files (DER certificate, PEM key)."""

    certificate: Path
    private_key: Path

    def to_dict(self) -> dict[str, str]:
        """Plain data for logs and manifests."""
        return {"certificate": str(self.certificate), "private_key": str(self.private_key)}


@dataclass(frozen=True)
class DemoPki:
    """Files written by :func:`provision_demo_pki`."""

    client: CertificatePair
    servers: dict[str, CertificatePair]
    password_file: Path

    def to_dict(self) -> dict[str, object]:
        """Plain data for logs and manifests."""
        return {
            "client": self.client.to_dict(),
            "servers": {k: v.to_dict() for k, v in sorted(self.servers.items())},
            "password_file": str(self.password_file),
        }


def generate_application_certificate(
    application_uri: str,
    common_name: str,
    role: Role,
    hostnames: Iterable[str] | None = None,
    ip_addresses: Iterable[str] = ("127.0.0.1",),
    days: int = 365,
    key_size: int = 2048,
) -> tuple[bytes, bytes]:
    """Make a self-signed OPC UA application certificate.

    Args:
        application_uri: the application URI, put in subjectAltName (OPC UA requires it).
        common_name: subject CN.
        role: ``"server"`` (extended key usage serverAuth) or ``"client"`` (clientAuth).
        hostnames: DNS names for subjectAltName (default: localhost and this host's name).
        ip_addresses: IP addresses for subjectAltName.
        days: validity in days from now.
        key_size: RSA key size (2048 suits Basic256Sha256 and Aes256Sha256RsaPss).

    Returns:
        ``(certificate DER, private key PEM (PKCS#8, unencrypted))``.
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=key_size)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:64] or "signaltwin"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "signaltwin"),
        ]
    )
    alt: list[x509.GeneralName] = [x509.UniformResourceIdentifier(application_uri)]
    names = ("localhost", socket.gethostname()) if hostnames is None else tuple(hostnames)
    alt.extend(x509.DNSName(h) for h in dict.fromkeys(names))
    alt.extend(x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses)
    now = dt.datetime.now(dt.UTC)
    eku = ExtendedKeyUsageOID.SERVER_AUTH if role == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=True,
                data_encipherment=True,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([eku]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert.public_bytes(serialization.Encoding.DER), key_pem


def load_certificate_der(path: Path) -> bytes:
    """Read a certificate file (DER or PEM) and return its DER bytes.

    Raises:
        ConfigError: the file is missing or holds no certificate.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read certificate {path}: {e.strerror}; check the path") from e
    try:
        if data.lstrip().startswith(b"-----BEGIN"):
            cert = x509.load_pem_x509_certificate(data)
        else:
            cert = x509.load_der_x509_certificate(data)
    except ValueError as e:
        raise ConfigError(f"{path} is not a DER or PEM X.509 certificate: {e}") from e
    return cert.public_bytes(serialization.Encoding.DER)


def certificate_fingerprint(der: bytes) -> str:
    """Hex sha256 of a DER certificate (what the controllers and the daemon pin)."""
    return hashlib.sha256(der).hexdigest()


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def controller_certificate_paths(directory: Path, tls_id: str) -> CertificatePair:
    """Where :func:`provision_demo_pki` keeps controller ``tls_id``'s certificate and key."""
    stem = "controller-" + _SAFE_NAME.sub("_", tls_id)
    return CertificatePair(directory / f"{stem}-cert.der", directory / f"{stem}-key.pem")


def _pair(directory: Path, stem: str, uri: str, cn: str, role: Role) -> CertificatePair:
    cert_path = directory / f"{stem}-cert.der"
    key_path = directory / f"{stem}-key.pem"
    if not (cert_path.is_file() and key_path.is_file()):
        der, key_pem = generate_application_certificate(uri, cn, role)
        _write_private(key_path, key_pem)
        cert_path.write_bytes(der)
    return CertificatePair(cert_path, key_path)


def provision_demo_pki(
    directory: Path,
    intersections: Iterable[str],
    password: str | None = None,
) -> DemoPki:
    """Write the demo's certificates and OPC UA password under ``directory``.

    Creates ``daemon-cert.der``/``daemon-key.pem`` (the daemon's client
    certificate), one ``controller-<id>-cert.der``/``controller-<id>-key.pem`` per
    intersection, and ``opcua-password`` (mode 0600): the names ``configs/demo.toml``
    expects under ``<state_dir>/pki``. Existing files are kept, so a restarted demo reuses its PKI.
    Demo only: production installs certificates from its own PKI.

    Args:
        directory: where to write (created with mode 0700).
        intersections: traffic-light ids that get a controller certificate.
        password: the OPC UA password to write; a random one when ``None``
            and no password file exists yet.
    """
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    client = _pair(directory, "daemon", CLIENT_APPLICATION_URI, "signaltwin daemon", "client")
    servers: dict[str, CertificatePair] = {}
    for tls_id in intersections:
        stem = controller_certificate_paths(directory, tls_id).certificate.name
        servers[tls_id] = _pair(
            directory,
            stem.removesuffix("-cert.der"),
            controller_application_uri(tls_id),
            f"controller {tls_id}",
            "server",
        )
    password_file = directory / "opcua-password"
    if password is not None or not password_file.is_file():
        secret = password if password is not None else os.urandom(18).hex()
        _write_private(password_file, secret.encode("utf-8") + b"\n")
    logger.info("demo PKI in %s: %d controller certificates", directory, len(servers))
    return DemoPki(client=client, servers=servers, password_file=password_file)
