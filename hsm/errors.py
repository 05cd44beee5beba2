"""Narrow signing errors: each names what failed and what to do about it.

All are :class:`configs.errors.SigningError`, so the cycle and the CLI handle
them as one family; :class:`PinFileError` is also a
:class:`configs.errors.ConfigError` because a missing PIN file is a
configuration problem (exit code 2), not a token failure.
"""

from __future__ import annotations

from configs.errors import ConfigError, SigningError

__all__ = [
    "EnvelopeFormatError",
    "HsmModuleError",
    "KeyNotHsmGeneratedError",
    "PinBackoffError",
    "PinError",
    "PinFileError",
    "SignatureMismatchError",
    "SigningKeyNotFoundError",
    "TokenNotFoundError",
    "TokenUnavailableError",
]


class HsmModuleError(SigningError):
    """The PKCS#11 module (.so) is missing or could not be loaded/initialised."""


class TokenNotFoundError(SigningError):
    """No token (or more than one) carries the configured label."""


class PinError(SigningError):
    """The token rejected the PIN (CKR_PIN_INCORRECT) or the PIN is locked."""


class PinBackoffError(PinError):
    """A recent PIN error holds further logins back (the token must not lock its PIN)."""


class PinFileError(PinError, ConfigError):
    """The PIN file or systemd credential is missing, unreadable or empty."""


class SigningKeyNotFoundError(SigningError):
    """The token has no (or no unique) EC P-256 signing key with the configured label."""


class KeyNotHsmGeneratedError(SigningError):
    """The key was not generated inside the token, or was extractable at some time."""


class TokenUnavailableError(SigningError):
    """The token went away (removed, session lost) and could not be reopened."""


class EnvelopeFormatError(SigningError):
    """Envelope bytes are not a well-formed DSSE envelope of the expected type."""


class SignatureMismatchError(SigningError):
    """No (or too few) signatures verify with the trusted public keys."""
