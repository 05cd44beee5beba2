"""Certificates, the strict user manager, the pinned-certificate validator, the ruleset."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

import pytest
from asyncua import ua
from asyncua.common.utils import ServiceError
from asyncua.crypto.permission_rules import User, UserRole
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from actuation.client import aligned_activation_time
from actuation.security import (
    CLIENT_APPLICATION_URI,
    certificate_fingerprint,
    generate_application_certificate,
    load_certificate_der,
    provision_demo_pki,
)
from actuation.users import (
    ControllerRuleset,
    PasswordHash,
    PinnedCertificateValidator,
    StrictUserManager,
)

CLIENT_DER, _ = generate_application_certificate(CLIENT_APPLICATION_URI, "daemon", "client")
OTHER_DER, _ = generate_application_certificate(CLIENT_APPLICATION_URI, "other", "client")


def test_certificate_has_the_opc_ua_extensions() -> None:
    der, key = generate_application_certificate("urn:x:ctl:J1", "J1", "server")
    cert = x509.load_der_x509_certificate(der)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "urn:x:ctl:J1" in san.get_values_for_type(x509.UniformResourceIdentifier)
    assert "localhost" in san.get_values_for_type(x509.DNSName)
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.digital_signature and usage.content_commitment
    assert usage.key_encipherment and usage.data_encipherment
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert ExtendedKeyUsageOID.SERVER_AUTH in eku
    assert key.startswith(b"-----BEGIN PRIVATE KEY-----")


def test_provision_demo_pki_writes_private_files_once(tmp_path: Path) -> None:
    pki = provision_demo_pki(tmp_path / "pki", ["n1", "n2"], password="pw")
    assert pki.client.certificate.name == "daemon-cert.der"
    assert sorted(pki.servers) == ["n1", "n2"]
    assert stat.S_IMODE(pki.client.private_key.stat().st_mode) == 0o600
    assert pki.password_file.read_text().strip() == "pw"
    first = load_certificate_der(pki.servers["n1"].certificate)
    again = provision_demo_pki(tmp_path / "pki", ["n1", "n2"])
    assert load_certificate_der(again.servers["n1"].certificate) == first
    assert again.password_file.read_text().strip() == "pw"
    assert len(certificate_fingerprint(first)) == 64


def test_load_certificate_der_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "x.der"
    bad.write_bytes(b"nope")
    with pytest.raises(Exception, match="x.der"):
        load_certificate_der(bad)


def test_password_hash() -> None:
    h = PasswordHash.create("s3cret")
    assert h.matches("s3cret")
    assert not h.matches("s3cret ")
    assert b"s3cret" not in h.digest


def test_strict_user_manager_admits_only_the_user_on_a_pinned_channel() -> None:
    manager = StrictUserManager("signaltwin", PasswordHash.create("pw"), [CLIENT_DER])
    ok = manager.get_user(None, "signaltwin", "pw", CLIENT_DER)  # type: ignore[arg-type]
    assert ok is not None and ok.role == UserRole.User
    refused = [
        manager.get_user(None, "signaltwin", "bad", CLIENT_DER),  # type: ignore[arg-type]
        manager.get_user(None, "admin", "pw", CLIENT_DER),  # type: ignore[arg-type]
        manager.get_user(None, None, None, CLIENT_DER),  # type: ignore[arg-type]
        manager.get_user(None, "signaltwin", "pw", None),  # type: ignore[arg-type]
        manager.get_user(None, "signaltwin", "pw", OTHER_DER),  # type: ignore[arg-type]
    ]
    assert refused == [None] * 5


def test_pinned_validator() -> None:
    validator = PinnedCertificateValidator([CLIENT_DER])
    desc = ua.ApplicationDescription()
    desc.ApplicationUri = CLIENT_APPLICATION_URI
    desc.ApplicationType = ua.ApplicationType.Client
    asyncio.run(validator(x509.load_der_x509_certificate(CLIENT_DER), desc))
    with pytest.raises(ServiceError):
        asyncio.run(validator(x509.load_der_x509_certificate(OTHER_DER), desc))
    desc.ApplicationUri = "urn:someone:else"
    with pytest.raises(ServiceError):
        asyncio.run(validator(x509.load_der_x509_certificate(CLIENT_DER), desc))


def test_ruleset_reads_and_calls_but_never_writes() -> None:
    rules = ControllerRuleset()
    user = User(role=UserRole.User)
    read = ua.NodeId(ua.ObjectIds.ReadRequest_Encoding_DefaultBinary)
    call = ua.NodeId(ua.ObjectIds.CallRequest_Encoding_DefaultBinary)
    write = ua.NodeId(ua.ObjectIds.WriteRequest_Encoding_DefaultBinary)
    add = ua.NodeId(ua.ObjectIds.AddNodesRequest_Encoding_DefaultBinary)
    assert rules.check_validity(user, read, b"") and rules.check_validity(user, call, b"")
    assert not rules.check_validity(user, write, b"")
    assert not rules.check_validity(user, add, b"")
    assert not rules.check_validity(User(role=UserRole.Anonymous), read, b"")
    assert not rules.check_validity(User(role=UserRole.Admin), write, b"")


def test_aligned_activation_time() -> None:
    assert aligned_activation_time(1000.0, 10.0, 64.0) == 1024.0
    assert aligned_activation_time(1014.0, 10.0, 64.0) == 1024.0
    assert aligned_activation_time(1014.5, 10.0, 64.0) == 1088.0
    assert aligned_activation_time(1000.2, 10.0, None) == 1011.0
