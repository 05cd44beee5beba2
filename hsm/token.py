"""The PKCS#11 edge: loading a module once per process, tokens, logins, keys.

Only this module and :mod:`hsm.signer` / :mod:`hsm.provision` touch
python-pkcs11; everything they return is plain data or our own errors.

One module, one configuration, one lock per process
    python-pkcs11 caches a loaded module per path (``pkcs11.lib(path)``) and
    SoftHSM2 reads ``SOFTHSM2_CONF`` once, at ``C_Initialize``. So the variable
    is set (and restored) around the first load, and the configuration the
    module was initialised with is remembered here. A later request for another
    SoftHSM configuration re-initialises the module only when nothing in the
    process holds a session on it; otherwise it is refused with a clear error:
    one process uses one SoftHSM configuration at a time.

    Every call into a module goes through that module's one re-entrant lock
    (:attr:`ModuleLease.lock`): SoftHSM under python-pkcs11 crashes when called
    from several threads at once, and a vendor module gains nothing from
    concurrent calls on one logged-in session.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pkcs11
import pkcs11.util.ec
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, Mechanism, ObjectClass
from pkcs11.exceptions import (
    MultipleObjectsReturned,
    MultipleTokensReturned,
    NoSuchKey,
    NoSuchToken,
    PinExpired,
    PinIncorrect,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    UserAlreadyLoggedIn,
)

from configs.digests import sha256_hex
from configs.errors import SigningError
from configs.settings import DEFAULT_HSM_MODULE
from hsm.enrolment import KeyReport, TokenInfo
from hsm.errors import (
    HsmModuleError,
    PinError,
    SigningKeyNotFoundError,
    TokenNotFoundError,
)

__all__ = [
    "KEY_ATTRIBUTES",
    "ModuleLease",
    "acquire_module",
    "find_key_pair",
    "find_token",
    "key_report",
    "open_session",
    "p256_params",
    "public_key_der",
    "raw_to_der",
    "sign_digest",
    "token_info",
]

logger = logging.getLogger(__name__)

#: Boolean attributes reported for a private key (PKCS#11 name -> attribute).
KEY_ATTRIBUTES: dict[str, Attribute] = {
    "CKA_TOKEN": Attribute.TOKEN,
    "CKA_PRIVATE": Attribute.PRIVATE,
    "CKA_SENSITIVE": Attribute.SENSITIVE,
    "CKA_EXTRACTABLE": Attribute.EXTRACTABLE,
    "CKA_LOCAL": Attribute.LOCAL,
    "CKA_NEVER_EXTRACTABLE": Attribute.NEVER_EXTRACTABLE,
    "CKA_ALWAYS_SENSITIVE": Attribute.ALWAYS_SENSITIVE,
    "CKA_SIGN": Attribute.SIGN,
    "CKA_MODIFIABLE": Attribute.MODIFIABLE,
}
_ENV = "SOFTHSM2_CONF"


@dataclass
class _Loaded:
    path: str
    lib: Any
    conf: Path | None
    lock: threading.RLock = field(default_factory=threading.RLock)
    users: int = 0


_registry: dict[str, _Loaded] = {}
_registry_lock = threading.Lock()


@dataclass
class ModuleLease:
    """A hold on a loaded, initialised PKCS#11 module.

    Attributes:
        module: The module path.
        softhsm_conf: The SoftHSM configuration the module was initialised with.
        lock: The module's one lock; hold it for every call into the module.
    """

    _entry: _Loaded
    released: bool = False

    @property
    def module(self) -> Path:
        """The module path."""
        return Path(self._entry.path)

    @property
    def softhsm_conf(self) -> Path | None:
        """The SOFTHSM2_CONF the module was initialised with (if we set one)."""
        return self._entry.conf

    @property
    def lock(self) -> threading.RLock:
        """The module's lock."""
        return self._entry.lock

    @property
    def lib(self) -> Any:
        """The python-pkcs11 ``lib`` (initialised on demand)."""
        entry = self._entry
        if not entry.lib.initialized:
            with _softhsm_env(entry.conf):
                try:
                    entry.lib.initialize()
                except PKCS11Error as e:
                    raise _init_error(entry.path, entry.conf, e) from e
        return entry.lib

    def reinitialize(self) -> None:
        """Finalize and initialise the module again (after a token went away).

        Every session on the module in this process becomes invalid; the
        signers holding them reopen on their next call.
        """
        entry = self._entry
        with entry.lock, _softhsm_env(entry.conf):
            if entry.lib.initialized:
                with contextlib.suppress(PKCS11Error):
                    entry.lib.finalize()
            try:
                entry.lib.initialize()
            except PKCS11Error as e:
                raise _init_error(entry.path, entry.conf, e) from e

    def release(self) -> None:
        """Give the hold back (idempotent)."""
        if not self.released:
            self.released = True
            with _registry_lock:
                self._entry.users -= 1


def acquire_module(module: Path, softhsm_conf: Path | None = None) -> ModuleLease:
    """Load (once per process) and initialise a PKCS#11 module.

    Args:
        module: Path of the module (.so).
        softhsm_conf: SoftHSM2 configuration to initialise it with; ``None``
            leaves the environment as it is (vendor modules, or the process's
            own ``SOFTHSM2_CONF``).

    Raises:
        HsmModuleError: the module is missing or fails to load/initialise, or it
            is already in use in this process with another SoftHSM configuration.
    """
    path = Path(module)
    if not path.is_file():
        raise HsmModuleError(
            f"PKCS#11 module {path} not found; set [hsm] module / --module to the "
            "token vendor's module (SoftHSM2: install the Debian package 'softhsm2', "
            f"{DEFAULT_HSM_MODULE})"
        )
    conf = softhsm_conf.resolve() if softhsm_conf is not None else None
    if conf is not None and not conf.is_file():
        raise HsmModuleError(
            f"SoftHSM configuration {conf} not found; create the token with "
            "'signaltwin hsm init --state-dir DIR' or fix [hsm] softhsm_conf"
        )
    key = str(path.resolve())
    with _registry_lock:
        entry = _registry.get(key)
        if entry is None:
            with _softhsm_env(conf):
                try:
                    lib = pkcs11.lib(key)
                except PKCS11Error as e:
                    raise _init_error(key, conf, e) from e
            entry = _Loaded(path=key, lib=lib, conf=conf)
            _registry[key] = entry
        elif conf is not None and entry.conf != conf:
            if entry.users > 0:
                raise HsmModuleError(
                    f"PKCS#11 module {key} is in use in this process with "
                    f"SOFTHSM2_CONF={entry.conf}; it cannot also use {conf} (SoftHSM reads its "
                    "configuration once per process): close the other signer first, or use "
                    "a separate process"
                )
            with entry.lock, _softhsm_env(conf):
                if entry.lib.initialized:
                    with contextlib.suppress(PKCS11Error):
                        entry.lib.finalize()
                entry.conf = conf
                try:
                    entry.lib.initialize()
                except PKCS11Error as e:
                    raise _init_error(key, conf, e) from e
        entry.users += 1
        return ModuleLease(entry)


@contextlib.contextmanager
def _softhsm_env(conf: Path | None) -> Iterator[None]:
    if conf is None:
        yield
        return
    previous = os.environ.get(_ENV)
    os.environ[_ENV] = str(conf)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(_ENV, None)
        else:
            os.environ[_ENV] = previous


def _init_error(module: str, conf: Path | None, e: PKCS11Error) -> HsmModuleError:
    detail = str(e) or type(e).__name__
    hint = (
        f"; check SOFTHSM2_CONF {conf} and that its directories.tokendir exists and is writable"
        if conf is not None
        else "; check the module is the vendor's PKCS#11 library for this machine"
    )
    return HsmModuleError(f"cannot load/initialise PKCS#11 module {module}: {detail}{hint}")


def find_token(lease: ModuleLease, label: str) -> Any:
    """The one initialised token labelled ``label``.

    Raises:
        TokenNotFoundError: no such token, or several (lists the labels present).
    """
    lib = lease.lib
    try:
        return lib.get_token(token_label=label)
    except NoSuchToken as e:
        present = _token_labels(lib)
        raise TokenNotFoundError(
            f"no token labelled {label!r} in module {lease.module} (tokens present: "
            f"{present or 'none'}); create it with 'signaltwin hsm init' or fix "
            "[hsm] token_label / --token-label"
        ) from e
    except MultipleTokensReturned as e:
        raise TokenNotFoundError(
            f"several tokens are labelled {label!r} in module {lease.module}; give the "
            "signing token a unique label"
        ) from e


def _token_labels(lib: Any) -> str:
    try:
        labels = [t.label for t in lib.get_tokens()]
    except PKCS11Error:
        return "unknown"
    return ", ".join(repr(x) for x in labels if x)


def open_session(token: Any, pin: str, *, rw: bool = False, where: str = "the PIN") -> Any:
    """Open a session on ``token`` and log the user in.

    A module keeps one login state per application and token: when another
    session of this process is already logged in, the new session shares it.

    Raises:
        PinError: CKR_PIN_INCORRECT / CKR_PIN_LOCKED / CKR_PIN_EXPIRED / bad PIN length.
    """
    try:
        return token.open(rw=rw, user_pin=pin)
    except UserAlreadyLoggedIn:
        return token.open(rw=rw)
    except PinIncorrect as e:
        raise PinError(
            f"token {token.label!r} rejected {where} (CKR_PIN_INCORRECT); put the "
            "token's user PIN there (repeated wrong PINs can lock the token)"
        ) from e
    except PinLocked as e:
        raise PinError(
            f"the user PIN of token {token.label!r} is locked (CKR_PIN_LOCKED); the "
            "security officer must reset it (softhsm2-util / the vendor's tool)"
        ) from e
    except PinExpired as e:
        raise PinError(
            f"the user PIN of token {token.label!r} has expired (CKR_PIN_EXPIRED); set a new "
            "one with the vendor's tool and put it in the PIN file"
        ) from e
    except PinLenRange as e:
        raise PinError(
            f"{where} has a length token {token.label!r} does not accept (CKR_PIN_LEN_RANGE)"
        ) from e


def find_key_pair(session: Any, key_label: str, token_label: str) -> tuple[Any, Any]:
    """The EC private and public key objects labelled ``key_label``.

    Raises:
        SigningKeyNotFoundError: missing or ambiguous private or public key.
    """
    found = []
    for object_class, what in (
        (ObjectClass.PRIVATE_KEY, "private"),
        (ObjectClass.PUBLIC_KEY, "public"),
    ):
        try:
            found.append(session.get_key(object_class, KeyType.EC, label=key_label))
        except NoSuchKey as e:
            raise SigningKeyNotFoundError(
                f"token {token_label!r} has no EC {what} key labelled {key_label!r}; "
                "generate it with 'signaltwin hsm init' or fix [hsm] key_label / --key-label"
            ) from e
        except MultipleObjectsReturned as e:
            raise SigningKeyNotFoundError(
                f"token {token_label!r} has several EC {what} keys labelled {key_label!r}; "
                "the signing key's label must be unique"
            ) from e
    return found[0], found[1]


def p256_params() -> bytes:
    """DER ECParameters of the named curve P-256 (secp256r1)."""
    return pkcs11.util.ec.encode_named_curve_parameters("secp256r1")


def public_key_der(public_key: Any, key_label: str) -> bytes:
    """The SubjectPublicKeyInfo DER of an EC P-256 public key object.

    Raises:
        SigningKeyNotFoundError: the key is not on P-256.
    """
    try:
        der = pkcs11.util.ec.encode_ec_public_key(public_key)
        loaded = serialization.load_der_public_key(der)
    except (PKCS11Error, ValueError) as e:
        raise SigningKeyNotFoundError(
            f"cannot read the public key {key_label!r} as an EC key: {e}"
        ) from e
    if not isinstance(loaded, ec.EllipticCurvePublicKey) or not isinstance(
        loaded.curve, ec.SECP256R1
    ):
        raise SigningKeyNotFoundError(
            f"key {key_label!r} is not on curve P-256 (secp256r1); generate a P-256 key"
        )
    return loaded.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_report(private_key: Any, public_key: Any, key_label: str) -> KeyReport:
    """Read the key pair's identity and the private key's attributes."""
    der = public_key_der(public_key, key_label)
    pem = serialization.load_der_public_key(der).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    attributes: dict[str, bool | None] = {}
    for name, attribute in KEY_ATTRIBUTES.items():
        try:
            attributes[name] = bool(private_key[attribute])
        except (PKCS11Error, NotImplementedError, KeyError):
            attributes[name] = None
    try:
        key_id = bytes(private_key[Attribute.ID]).hex()
    except PKCS11Error:
        key_id = ""
    return KeyReport(
        key_label=key_label,
        key_id=key_id,
        keyid=sha256_hex(der),
        public_key_pem=pem,
        attributes=attributes,
    )


def token_info(lease: ModuleLease, token: Any) -> TokenInfo:
    """``CK_TOKEN_INFO`` and the module's description as plain data."""
    lib = lease.lib
    serial = token.serial
    return TokenInfo(
        label=token.label,
        manufacturer=token.manufacturer_id,
        model=token.model,
        serial=serial.decode("ascii", "replace").strip()
        if isinstance(serial, bytes)
        else str(serial),
        firmware_version=_version(token.firmware_version),
        hardware_version=_version(token.hardware_version),
        module=str(lease.module),
        library_description=lib.library_description,
        library_version=_version(lib.library_version),
    )


def _version(version: Any) -> str:
    major, minor = tuple(version)
    return f"{major}.{minor}"


def sign_digest(private_key: Any, digest: bytes) -> bytes:
    """Raw CKM_ECDSA over a host-computed digest: ``r || s`` (64 bytes for P-256)."""
    raw: bytes = private_key.sign(digest, mechanism=Mechanism.ECDSA)
    return raw


def raw_to_der(raw: bytes) -> bytes:
    """Convert a PKCS#11 ``r || s`` ECDSA signature to DER (as X9.62/OpenSSL use).

    Raises:
        SigningError: the token returned a signature of odd or empty length.
    """
    if not raw or len(raw) % 2:
        raise SigningError(
            f"token returned a {len(raw)}-byte ECDSA signature; expected r||s of even length"
        )
    half = len(raw) // 2
    return encode_dss_signature(
        int.from_bytes(raw[:half], "big"), int.from_bytes(raw[half:], "big")
    )
