"""The signer, provisioning and faults against a real SoftHSM2 token.

python-pkcs11 loads a module once per process and SoftHSM reads SOFTHSM2_CONF at
C_Initialize, so every real-token test lives in this one module and shares one
token provisioned in a module-scoped temporary state directory (hsm.token
switches configuration only when no signer holds a session; one test checks
that refusal and the switch).
"""

from __future__ import annotations

import base64
import dataclasses
import json
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from asn1crypto.core import OctetString
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11.util.ec import encode_named_curve_parameters

from controller.cli import run as cli_run
from hsm import (
    TIMING_PAYLOAD_TYPE,
    Envelope,
    HsmModuleError,
    HsmParams,
    HsmSigner,
    KeyNotHsmGeneratedError,
    PinBackoffError,
    PinError,
    ProvisionResult,
    SignatureMismatchError,
    Signer,
    SigningKeyNotFoundError,
    TokenNotFoundError,
    TokenUnavailableError,
    inspect_token,
    provision_softhsm,
    verify_envelope,
)
from hsm.enrolment import SOFTWARE_TOKEN_ASSURANCE
from hsm.token import acquire_module, find_token, open_session

SOFTHSM = Path("/usr/lib/softhsm/libsofthsm2.so")

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not SOFTHSM.is_file(), reason="SoftHSM2 (Debian softhsm2) not installed"),
]

PAYLOAD = b'{"intersections":{},"schema":"signaltwin.timing/v1","sequence":1}'


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("hsm-state")


@pytest.fixture(scope="module")
def provisioned(state_dir: Path) -> ProvisionResult:
    return provision_softhsm(state_dir)


@pytest.fixture()
def params(provisioned: ProvisionResult) -> HsmParams:
    return provisioned.params


@pytest.fixture()
def signer(params: HsmParams) -> Iterator[HsmSigner]:
    with HsmSigner(params) as s:
        yield s


def _flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def test_provisioning_creates_a_private_token_in_the_state_dir(
    provisioned: ProvisionResult, state_dir: Path
) -> None:
    assert provisioned.created_token and provisioned.created_key and provisioned.created_pin
    hsm_dir = state_dir / "hsm"
    conf = (hsm_dir / "softhsm2.conf").read_text()
    assert f"directories.tokendir = {hsm_dir / 'tokens'}/" in conf
    assert any((hsm_dir / "tokens").iterdir())
    assert (hsm_dir / "pin").stat().st_mode & 0o777 == 0o600
    assert (hsm_dir / "so-pin").stat().st_mode & 0o777 == 0o600
    attrs = provisioned.report.key.attributes
    for name in ("CKA_LOCAL", "CKA_NEVER_EXTRACTABLE", "CKA_ALWAYS_SENSITIVE", "CKA_SENSITIVE"):
        assert attrs[name] is True, name
    assert attrs["CKA_EXTRACTABLE"] is False
    assert attrs["CKA_PRIVATE"] is True and attrs["CKA_TOKEN"] is True
    pem = (hsm_dir / "signing-key.pub.pem").read_bytes()
    assert pem == provisioned.report.key.public_key_pem
    record = json.loads((hsm_dir / "enrolment.json").read_text())
    assert record["assurance"] == SOFTWARE_TOKEN_ASSURANCE
    assert record["keyid"] == provisioned.report.key.keyid


def test_provisioning_again_changes_nothing(provisioned: ProvisionResult, state_dir: Path) -> None:
    pin_before = (state_dir / "hsm" / "pin").read_bytes()
    again = provision_softhsm(state_dir)
    assert not again.changed
    assert again.report.key.keyid == provisioned.report.key.keyid
    assert (state_dir / "hsm" / "pin").read_bytes() == pin_before


def test_sign_and_verify(signer: HsmSigner, provisioned: ProvisionResult) -> None:
    assert isinstance(signer, Signer)
    assert signer.keyid == provisioned.report.key.keyid
    envelope = signer.sign_envelope(PAYLOAD)
    data = envelope.to_json()
    verified = verify_envelope(data, [provisioned.public_key_path.read_bytes()])
    assert verified.payload == PAYLOAD
    assert verified.payload_type == TIMING_PAYLOAD_TYPE
    assert verified.keyids == (signer.keyid,)
    # sign() is DER ECDSA over SHA-256(data), verifiable by anyone with the PEM
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signer.sign(b"abc"), b"abc", ec.ECDSA(hashes.SHA256()))


def test_flipped_bits_fail(signer: HsmSigner) -> None:
    envelope = signer.sign_envelope(PAYLOAD)
    key = [signer.public_key_pem()]
    for i in (0, len(PAYLOAD) // 2, len(PAYLOAD) - 1):
        bad = Envelope(_flip(envelope.payload, i), envelope.payload_type, envelope.signatures)
        with pytest.raises(SignatureMismatchError):
            verify_envelope(bad.to_json(), key)
    sig = envelope.signatures[0]
    for i in (8, len(sig.sig) - 1):
        bad_sig = dataclasses.replace(sig, sig=_flip(sig.sig, i))
        bad = Envelope(envelope.payload, envelope.payload_type, (bad_sig,))
        with pytest.raises(SignatureMismatchError):
            verify_envelope(bad.to_json(), key)


def test_four_threads_share_one_signer(signer: HsmSigner) -> None:
    errors: list[BaseException] = []
    results: list[list[bytes]] = [[] for _ in range(4)]

    def work(n: int) -> None:
        try:
            for i in range(1000):
                results[n].append(signer.sign(b"%d:%d" % (n, i)))
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    assert [len(r) for r in results] == [1000, 1000, 1000, 1000]
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    for n in range(4):
        for i in (0, 499, 999):
            public.verify(results[n][i], b"%d:%d" % (n, i), ec.ECDSA(hashes.SHA256()))


def test_imported_key_is_refused(params: HsmParams) -> None:
    """A key made outside the token and C_CreateObject'ed into it must not sign."""
    outside = ec.generate_private_key(ec.SECP256R1())
    numbers = outside.private_numbers()
    point = outside.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    lease = acquire_module(params.module, params.softhsm_conf)
    try:
        with lease.lock:
            token = find_token(lease, params.token_label)
            session = open_session(token, Path(params.pin_file).read_text().strip(), rw=True)
            try:
                ec_params = encode_named_curve_parameters("secp256r1")
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PRIVATE_KEY,
                        Attribute.KEY_TYPE: KeyType.EC,
                        Attribute.TOKEN: True,
                        Attribute.PRIVATE: True,
                        Attribute.SENSITIVE: True,
                        Attribute.EXTRACTABLE: False,
                        Attribute.SIGN: True,
                        Attribute.LABEL: "imported",
                        Attribute.EC_PARAMS: ec_params,
                        Attribute.VALUE: numbers.private_value.to_bytes(32, "big"),
                    }
                )
                session.create_object(
                    {
                        Attribute.CLASS: ObjectClass.PUBLIC_KEY,
                        Attribute.KEY_TYPE: KeyType.EC,
                        Attribute.TOKEN: True,
                        Attribute.VERIFY: True,
                        Attribute.LABEL: "imported",
                        Attribute.EC_PARAMS: ec_params,
                        Attribute.EC_POINT: OctetString(point).dump(),
                    }
                )
            finally:
                session.close()
    finally:
        lease.release()
    imported = dataclasses.replace(params, key_label="imported")
    report = inspect_token(imported)
    assert report.key.attributes["CKA_LOCAL"] is False
    assert report.key.attributes["CKA_NEVER_EXTRACTABLE"] is False
    with pytest.raises(KeyNotHsmGeneratedError, match="CKA_LOCAL is false") as e:
        HsmSigner(imported)
    assert "CKA_NEVER_EXTRACTABLE is false" in str(e.value)


def test_wrong_pin(params: HsmParams, tmp_path: Path) -> None:
    wrong = tmp_path / "wrong-pin"
    wrong.write_text("not-the-pin\n")
    with pytest.raises(PinError, match="CKR_PIN_INCORRECT") as e:
        HsmSigner(dataclasses.replace(params, pin_file=wrong))
    assert str(wrong) in str(e.value)


def test_missing_key(params: HsmParams) -> None:
    with pytest.raises(SigningKeyNotFoundError, match="no EC private key labelled 'absent'"):
        HsmSigner(dataclasses.replace(params, key_label="absent"))


def test_missing_module_path(params: HsmParams, tmp_path: Path) -> None:
    with pytest.raises(HsmModuleError, match="not found"):
        HsmSigner(dataclasses.replace(params, module=tmp_path / "libvendor-pkcs11.so"))
    not_a_module = tmp_path / "libbroken.so"
    not_a_module.write_bytes(b"\x7fELF garbage")
    with pytest.raises(HsmModuleError, match="cannot load"):
        HsmSigner(dataclasses.replace(params, module=not_a_module))


def test_missing_token(params: HsmParams) -> None:
    with pytest.raises(TokenNotFoundError, match="'signaltwin'"):
        HsmSigner(dataclasses.replace(params, token_label="elsewhere"))


def test_lost_session_is_reopened(signer: HsmSigner, params: HsmParams) -> None:
    signer.sign(b"before")
    lease = acquire_module(params.module, params.softhsm_conf)
    try:
        lease.reinitialize()  # every session of the process is gone now
    finally:
        lease.release()
    der = signer.sign(b"after")
    public = serialization.load_pem_public_key(signer.public_key_pem())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(der, b"after", ec.ECDSA(hashes.SHA256()))


def test_token_removed_while_running(signer: HsmSigner, state_dir: Path) -> None:
    tokens = state_dir / "hsm" / "tokens"
    away = state_dir / "hsm" / "tokens.removed"
    signer.sign(b"present")
    shutil.move(tokens, away)
    try:
        with pytest.raises(TokenUnavailableError, match="unavailable") as e:
            signer.sign(b"gone")
        assert "next signature will try again" in str(e.value)
        with pytest.raises(TokenUnavailableError):
            signer.sign(b"still gone")
    finally:
        shutil.move(away, tokens)
    signer.sign(b"back")  # reopens without a restart


def test_second_softhsm_config_while_in_use(
    signer: HsmSigner, params: HsmParams, tmp_path: Path
) -> None:
    with pytest.raises(HsmModuleError, match="in use in this process"):
        provision_softhsm(tmp_path / "other-state")
    signer.close()
    other = provision_softhsm(tmp_path / "other-state")  # switches config: nothing open
    with HsmSigner(other.params) as s2:
        assert s2.keyid != signer.keyid
        verify_envelope(s2.sign_envelope(PAYLOAD).to_json(), [s2.public_key_pem()])
    with HsmSigner(params) as s1:  # and back
        s1.sign(b"x")


def test_info_reports_token_and_key(params: HsmParams, provisioned: ProvisionResult) -> None:
    report = inspect_token(params)
    assert report.token.label == "signaltwin"
    assert report.token.manufacturer == "SoftHSM project"
    assert report.token.serial
    assert report.token.firmware_version.count(".") == 1
    assert report.key.keyid == provisioned.report.key.keyid
    with HsmSigner(params) as s:
        record = s.enrolment_record()
    assert record["assurance"] == SOFTWARE_TOKEN_ASSURANCE
    assert record["key_attributes"]["CKA_LOCAL"] is True
    assert record["token"]["model"] == "SoftHSM v2"


def test_cli_init_info_verify(
    state_dir: Path,
    provisioned: ProvisionResult,
    signer: HsmSigner,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli_run(["hsm", "init", "--state-dir", str(state_dir)]) == 0
    assert "nothing changed" in capsys.readouterr().out
    assert cli_run(["hsm", "info", "--state-dir", str(state_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["key"]["keyid"] == signer.keyid
    assert info["key"]["attributes"]["CKA_NEVER_EXTRACTABLE"] is True
    assert cli_run(["hsm", "info", "--state-dir", str(state_dir), "--key-label", "imported"]) in (
        1,
        3,
    )  # refused (1) or absent when run alone (3)
    capsys.readouterr()
    good = tmp_path / "env.json"
    good.write_bytes(signer.sign_envelope(PAYLOAD).to_json())
    key = str(provisioned.public_key_path)
    assert cli_run(["hsm", "verify", str(good), "--key", key, "--payload"]) == 0
    assert PAYLOAD.decode() in capsys.readouterr().out
    obj = json.loads(good.read_bytes())
    obj["payload"] = base64.b64encode(_flip(PAYLOAD, 3)).decode()
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(obj))
    assert cli_run(["hsm", "verify", str(bad), "--key", key]) == 1
    assert "NOT VERIFIED" in capsys.readouterr().err
    assert cli_run(["hsm", "info", "--state-dir", str(state_dir), "--key-label", "nope"]) == 3


def test_pin_from_systemd_credential(
    params: HsmParams, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = tmp_path / "credentials"
    creds.mkdir()
    shutil.copy(Path(params.pin_file), creds / "hsm-pin")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(creds))
    with HsmSigner(dataclasses.replace(params, pin_file="credential:hsm-pin")) as s:
        verify_envelope(s.sign_envelope(PAYLOAD).to_json(), [s.public_key_pem()])


def test_cli_existing_token_generates_only_the_key(
    provisioned: ProvisionResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    p = provisioned.params
    argv = ["hsm", "init", "--existing-token", "--state-dir", str(tmp_path)]
    argv += ["--softhsm-conf", str(p.softhsm_conf), "--pin-file", str(p.pin_file)]
    assert cli_run([*argv, "--key-label", "second-key", "--json"]) == 0
    first = json.loads(capsys.readouterr().out)
    assert first["created_key"] is True
    assert first["key"]["attributes"]["CKA_LOCAL"] is True
    assert first["key"]["keyid"] != provisioned.report.key.keyid
    assert cli_run([*argv, "--key-label", "second-key", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["created_key"] is False
    assert again["key"]["keyid"] == first["key"]["keyid"]
    exported = (tmp_path / "hsm" / "signing-key.pub.pem").read_text()
    assert exported == first["key"]["public_key_pem"]


def test_provisioning_never_puts_a_pin_on_a_command_line(tmp_path: Path) -> None:
    real = shutil.which("softhsm2-util")
    assert real is not None
    argv_log = tmp_path / "argv.log"
    wrapper = tmp_path / "softhsm2-util"
    wrapper.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {argv_log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    state = tmp_path / "pin-state"
    result = provision_softhsm(state, softhsm_util=str(wrapper))
    assert result.created_token
    pins = [
        (state / "hsm" / "pin").read_text().strip(),
        (state / "hsm" / "so-pin").read_text().strip(),
    ]
    argv = argv_log.read_text()
    assert "--init-token" in argv
    for pin in pins:
        assert pin not in argv
    assert "--pin" not in argv.split() and "--so-pin" not in argv.split()
    with HsmSigner(result.params) as s:  # the PIN typed at the prompt is the token's PIN
        assert s.sign(b"x")


def test_pin_error_backs_off_instead_of_retrying_every_signature(
    params: HsmParams, tmp_path: Path
) -> None:
    pin_file = tmp_path / "pin"
    good = Path(params.pin_file).read_text()
    pin_file.write_text(good)
    now = [1000.0]
    timed = dataclasses.replace(
        params, pin_file=pin_file, pin_backoff_s=60.0, pin_backoff_max_s=100.0
    )
    with HsmSigner(timed, clock=lambda: now[0]) as s:
        pin_file.write_text("not-the-pin\n")
        lease = acquire_module(params.module, params.softhsm_conf)
        try:
            lease.reinitialize()  # the session is gone: the next signature logs in again
        finally:
            lease.release()
        with pytest.raises(PinError, match="CKR_PIN_INCORRECT"):
            s.sign(b"a")
        with pytest.raises(PinBackoffError, match="no login is tried for another 60 s"):
            s.sign(b"b")  # the same rejected PIN: no login is tried yet
        now[0] += 61
        with pytest.raises(PinError, match="CKR_PIN_INCORRECT"):
            s.sign(b"c")  # the backoff is over: one more try, rejected again
        now[0] += 61
        with pytest.raises(PinBackoffError, match="2 time"):
            s.sign(b"d")  # doubled: 120 s, capped at 100 s
        pin_file.write_text(good)
        assert s.sign(b"e")  # an operator fixed the PIN file: it is tried at once
