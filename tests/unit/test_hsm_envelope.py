"""DSSE envelopes and verification with software keys (no HSM)."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.errors import ConfigError, SigningError
from configs.timing import (
    BaseProgram,
    Evidence,
    IntersectionTiming,
    NetworkRef,
    Prediction,
    TimingConfiguration,
)
from hsm import (
    TIMING_PAYLOAD_TYPE,
    Envelope,
    EnvelopeFormatError,
    KeyReport,
    PinFileError,
    SignatureMismatchError,
    Signer,
    TokenInfo,
    enrolment_record,
    keyid_of,
    load_public_key,
    read_pin,
    sign_envelope,
    sign_timing,
    verify_envelope,
    verify_timing,
)
from hsm.enrolment import SOFTWARE_TOKEN_ASSURANCE
from hsm.token import raw_to_der
from tests.support.softkeys import SoftwareSigner

PAYLOAD = b'{"schema":"signaltwin.timing/v1","sequence":7}'
_KEY = SoftwareSigner()
_VALID = sign_envelope(_KEY, PAYLOAD).to_json()


@pytest.fixture(scope="module")
def signer() -> SoftwareSigner:
    return SoftwareSigner()


@pytest.fixture(scope="module")
def envelope_json(signer: SoftwareSigner) -> bytes:
    return sign_envelope(signer, PAYLOAD).to_json()


def _mutate(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def test_software_signer_satisfies_the_protocol(signer: SoftwareSigner) -> None:
    assert isinstance(signer, Signer)


def test_sign_and_verify_round_trip(signer: SoftwareSigner, envelope_json: bytes) -> None:
    verified = verify_envelope(envelope_json, [signer.public_key_pem()])
    assert verified.payload == PAYLOAD
    assert verified.payload_type == TIMING_PAYLOAD_TYPE
    assert verified.keyids == (signer.keyid,)


def test_wire_format_is_canonical_dsse(signer: SoftwareSigner, envelope_json: bytes) -> None:
    obj = json.loads(envelope_json)
    assert list(obj) == ["payload", "payloadType", "signatures"]
    assert base64.b64decode(obj["payload"]) == PAYLOAD
    assert obj["payloadType"] == TIMING_PAYLOAD_TYPE
    [sig] = obj["signatures"]
    assert sig["keyid"] == signer.keyid
    decode_dss_signature(base64.b64decode(sig["sig"]))  # DER, not r||s
    assert b" " not in envelope_json
    assert Envelope.from_json(envelope_json).to_json() == envelope_json


def test_pae_matches_the_dsse_specification() -> None:
    env = Envelope(b"hello world", "http://example.com/HelloWorld", ())
    assert env.pae() == b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"


def test_signature_covers_the_pae(signer: SoftwareSigner) -> None:
    env = sign_envelope(signer, PAYLOAD, "application/x-test")
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(env.signatures[0].sig, env.pae(), ec.ECDSA(hashes.SHA256()))


def test_flipped_payload_bit_fails(signer: SoftwareSigner) -> None:
    env = sign_envelope(signer, PAYLOAD)
    tampered = Envelope(_mutate(env.payload, 10), env.payload_type, env.signatures)
    with pytest.raises(SignatureMismatchError, match="does not verify"):
        verify_envelope(tampered.to_json(), [signer.public_key_pem()])


def test_flipped_signature_bit_fails(signer: SoftwareSigner) -> None:
    env = sign_envelope(signer, PAYLOAD)
    sig = env.signatures[0]
    bad = type(sig)(keyid=sig.keyid, sig=_mutate(sig.sig, len(sig.sig) - 1))
    tampered = Envelope(env.payload, env.payload_type, (bad,))
    with pytest.raises(SignatureMismatchError):
        verify_envelope(tampered.to_json(), [signer.public_key_pem()])


def test_payload_type_is_signed(signer: SoftwareSigner) -> None:
    env = sign_envelope(signer, PAYLOAD)
    relabelled = Envelope(env.payload, "application/x-other", env.signatures)
    with pytest.raises(EnvelopeFormatError, match="payloadType"):
        verify_envelope(relabelled.to_json(), [signer.public_key_pem()])
    with pytest.raises(SignatureMismatchError):
        verify_envelope(relabelled.to_json(), [signer.public_key_pem()], payload_type=None)


def test_untrusted_signer_is_named(signer: SoftwareSigner, envelope_json: bytes) -> None:
    other = SoftwareSigner()
    with pytest.raises(SignatureMismatchError, match="none of which is trusted") as e:
        verify_envelope(envelope_json, [other.public_key_pem()])
    assert signer.keyid in str(e.value)


def test_keyid_collision_with_wrong_key_fails(signer: SoftwareSigner) -> None:
    """A signature claiming a trusted keyid but made by another key does not verify."""
    impostor = SoftwareSigner()
    env = sign_envelope(impostor, PAYLOAD)
    forged = Envelope(
        env.payload,
        env.payload_type,
        (type(env.signatures[0])(signer.keyid, env.signatures[0].sig),),
    )
    with pytest.raises(SignatureMismatchError, match="does not verify"):
        verify_envelope(forged.to_json(), [signer.public_key_pem()])


def test_threshold_of_two_keys() -> None:
    a, b = SoftwareSigner(), SoftwareSigner()
    ea, eb = sign_envelope(a, PAYLOAD), sign_envelope(b, PAYLOAD)
    both = Envelope(PAYLOAD, TIMING_PAYLOAD_TYPE, ea.signatures + eb.signatures).to_json()
    verified = verify_envelope(both, [a.public_key_pem(), b.public_key_pem()], threshold=2)
    assert set(verified.keyids) == {a.keyid, b.keyid}
    with pytest.raises(SignatureMismatchError, match="threshold"):
        verify_envelope(ea.to_json(), [a.public_key_pem(), b.public_key_pem()], threshold=2)
    with pytest.raises(SignatureMismatchError, match="fewer than the threshold"):
        verify_envelope(both, [a.public_key_pem()], threshold=2)


def _envelope_obj(envelope_json: bytes) -> dict[str, object]:
    obj: dict[str, object] = json.loads(envelope_json)
    return obj


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda j: b"x" * (2 << 20) + j, "limit"),
        (lambda j: b"\xff" + j, "not UTF-8"),
        (lambda j: j[:-1], "not valid JSON"),
        (lambda j: b"[]", "JSON object"),
        (lambda j: j.replace(b'"payload":', b'"payload":"",  "payload":', 1), "repeats"),
        (lambda j: j[:-1] + b',"extra":1}', "unexpected"),
        (lambda j: j.replace(b'"payloadType"', b'"payloadtype"'), "missing"),
        (lambda j: j.replace(b'"payload":"', b'"payload":"*', 1), "base64"),
        (lambda j: j.replace(b'"payload":"', b'"payload":"\\u00e9', 1), "base64"),
        (lambda j: j.replace(b'"payloadType":"', b'"payloadType":NaN,"x":"', 1), "NaN"),
        (lambda j: j.replace(b'"keyid":"', b'"keyid":"ABC', 1), "keyid"),
        (
            lambda j: j.replace(
                b'"payloadType":"application/vnd.signaltwin.timing+json"', b'"payloadType":""'
            ),
            "non-empty",
        ),
    ],
)
def test_strict_parsing_rejects(envelope_json: bytes, make: object, match: str) -> None:
    data = make(envelope_json)  # type: ignore[operator]
    with pytest.raises(EnvelopeFormatError, match=match):
        Envelope.from_json(data, max_bytes=1 << 20)


def test_strict_parsing_of_signatures(envelope_json: bytes) -> None:
    obj = _envelope_obj(envelope_json)
    sigs = obj["signatures"]
    assert isinstance(sigs, list)
    cases: list[tuple[object, str]] = [
        ([], "non-empty"),
        ({"keyid": "x"}, "non-empty JSON array"),
        (sigs + sigs, "more than once"),
        ([{"keyid": sigs[0]["keyid"]}], "exactly the fields"),
        # one character short: never a multiple of 4 (stripping "=" is not enough:
        # a 72-byte DER signature has no padding)
        ([dict(sigs[0], sig=sigs[0]["sig"][:-1])], "base64"),
        ([dict(sigs[0], sig=7)], "base64 string"),
        ([dict(sigs[0], sig="")], "expected 1.."),
        (sigs * 17, "limit"),
    ]
    for value, match in cases:
        data = json.dumps(dict(obj, signatures=value)).encode()
        with pytest.raises(EnvelopeFormatError, match=match):
            Envelope.from_json(data)


def test_non_canonical_base64_is_rejected(envelope_json: bytes) -> None:
    obj = _envelope_obj(envelope_json)
    # "YQ==" is "a"; "YR==" decodes to "a" too, with stray low bits.
    data = json.dumps(dict(obj, payload="YR==")).encode()
    with pytest.raises(EnvelopeFormatError, match="canonical"):
        Envelope.from_json(data)


def test_format_errors_are_signing_errors(envelope_json: bytes) -> None:
    with pytest.raises(SigningError):
        verify_envelope(b"{}", [SoftwareSigner().public_key_pem()])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_envelope_errors(data: bytes) -> None:
    with pytest.raises(SigningError):
        verify_envelope(data, [_KEY.public_key_pem()])


@settings(max_examples=300, deadline=None)
@given(st.integers(0, len(_VALID) - 1), st.integers(1, 255))
def test_any_single_byte_change_fails_verification(index: int, mask: int) -> None:
    with pytest.raises(SigningError):
        verify_envelope(_mutate(_VALID, index, mask), [_KEY.public_key_pem()])


def test_keyid_is_sha256_of_spki_der(signer: SoftwareSigner) -> None:
    assert keyid_of(signer.public_key_pem()) == signer.keyid
    key = load_public_key(signer.public_key_pem().decode())
    assert key.keyid == signer.keyid


def test_load_public_key_rejects_other_keys(tmp_path: Path) -> None:
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=1024)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureMismatchError, match="P-256"):
        load_public_key(rsa_pem)
    p384 = (
        ec.generate_private_key(ec.SECP384R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(SignatureMismatchError, match="P-256"):
        load_public_key(p384)
    with pytest.raises(SignatureMismatchError, match="not a PEM"):
        load_public_key(b"garbage")
    with pytest.raises(SignatureMismatchError, match="cannot read"):
        load_public_key(tmp_path / "missing.pem")


def test_raw_signature_conversion_to_der() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    der = key.sign(b"data", ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    raw = r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert raw_to_der(raw) == der
    with pytest.raises(SigningError):
        raw_to_der(b"\x01" * 63)


def _token(manufacturer: str, model: str) -> TokenInfo:
    return TokenInfo(
        label="signaltwin",
        manufacturer=manufacturer,
        model=model,
        serial="1234",
        firmware_version="2.6",
        hardware_version="2.6",
        module="/usr/lib/x.so",
        library_description="x",
        library_version="1.0",
    )


def _key(signer: SoftwareSigner, **attrs: bool | None) -> KeyReport:
    base: dict[str, bool | None] = {
        "CKA_LOCAL": True,
        "CKA_NEVER_EXTRACTABLE": True,
        "CKA_ALWAYS_SENSITIVE": True,
        "CKA_SIGN": True,
    }
    base.update(attrs)
    return KeyReport("k", "00", signer.keyid, signer.public_key_pem(), base)


def test_enrolment_record_for_softhsm(signer: SoftwareSigner) -> None:
    record = enrolment_record(_token("SoftHSM project", "SoftHSM v2"), _key(signer))
    assert record["assurance"] == SOFTWARE_TOKEN_ASSURANCE
    assert record["keyid"] == signer.keyid
    assert record["policy"]["accepted"] is True
    assert record["attestation"] is None
    json.dumps(record)


def test_key_policy_names_the_missing_attributes(signer: SoftwareSigner) -> None:
    report = _key(signer, CKA_LOCAL=False, CKA_NEVER_EXTRACTABLE=None)
    assert report.problems == (
        "CKA_LOCAL is false",
        "CKA_NEVER_EXTRACTABLE is not reported by the token",
    )
    record = enrolment_record(_token("SoftHSM project", "SoftHSM v2"), report)
    assert record["policy"]["accepted"] is False


def test_enrolment_record_with_vendor_attestation(signer: SoftwareSigner, tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Vendor attestation")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path = tmp_path / "attest.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    record = enrolment_record(_token("Acme HSM", "A1"), _key(signer), attestation_certificate=path)
    assert record["assurance"].startswith("hardware-token: vendor key-attestation")
    assert record["attestation"]["subject"] == "CN=Vendor attestation"
    assert record["attestation"]["sha256"] == cert.fingerprint(hashes.SHA256()).hex()
    plain = enrolment_record(_token("Acme HSM", "A1"), _key(signer))
    assert "no attestation certificate" in plain["assurance"]
    path.write_bytes(b"not a cert")
    with pytest.raises(SigningError, match="attestation certificate"):
        enrolment_record(_token("Acme HSM", "A1"), _key(signer), attestation_certificate=path)


def test_pin_from_file_and_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "pin").write_text("1234\n")
    assert read_pin(tmp_path / "pin") == "1234"
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "hsm-pin").write_text("5678")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    assert read_pin("credential:hsm-pin") == "5678"
    with pytest.raises(PinFileError, match="does not exist") as e:
        read_pin("credential:other")
    assert isinstance(e.value, ConfigError) and isinstance(e.value, SigningError)
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(PinFileError, match="empty"):
        read_pin(tmp_path / "empty")


def _timing_config() -> TimingConfiguration:
    base = BaseProgram.from_sumo(
        "J1",
        "0",
        [
            ("GGrr", 30, None, None),
            ("yyrr", 3, None, None),
            ("rrGG", 25, None, None),
            ("rryy", 3, None, None),
        ],
    )
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    return TimingConfiguration(
        network=NetworkRef(id="district", sha256="a" * 64),
        sequence=3,
        issued_at=now,
        valid_from=now,
        valid_until=now + dt.timedelta(minutes=10),
        predicted=Prediction(
            wait_change=-0.15,
            wait_change_ci=(-0.2, -0.1),
            nox_change=0.001,
            nox_change_ci=(-0.002, 0.004),
            horizon_s=900,
            seeds=(1, 2),
        ),
        evidence=Evidence(demand_sha256="b" * 64),
        intersections={"J1": IntersectionTiming.from_base(base)},
    )


def test_sign_and_verify_a_timing_configuration(signer: SoftwareSigner) -> None:
    config = _timing_config()
    envelope = sign_timing(signer, config)
    assert envelope.payload == config.canonical_bytes()
    parsed, verified = verify_timing(envelope.to_json(), [signer.public_key_pem()])
    assert parsed == config
    assert verified.keyids == (signer.keyid,)


def test_verify_timing_requires_canonical_valid_payload(signer: SoftwareSigner) -> None:
    config = _timing_config()
    pretty = json.dumps(config.to_dict(), indent=1).encode()
    with pytest.raises(EnvelopeFormatError, match="canonical"):
        verify_timing(sign_envelope(signer, pretty).to_json(), [signer.public_key_pem()])
    with pytest.raises(EnvelopeFormatError, match="not a valid timing configuration"):
        verify_timing(sign_envelope(signer, b'{"schema":1}').to_json(), [signer.public_key_pem()])
