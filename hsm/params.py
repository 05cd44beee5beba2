"""Where the signing key lives: plain parameters, independent of the TOML schema."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from configs.errors import ConfigError
from configs.settings import (
    DEFAULT_HSM_KEY_LABEL,
    DEFAULT_HSM_MODULE,
    DEFAULT_HSM_TOKEN_LABEL,
    HsmSettings,
)
from configs.settings_file import read_secret
from hsm.errors import PinFileError

__all__ = [
    "DEFAULT_KEY_LABEL",
    "DEFAULT_MODULE",
    "DEFAULT_TOKEN_LABEL",
    "HsmParams",
    "read_pin",
]

# The defaults live once, in the settings schema; these names are what hsm's
# callers (provisioning, ``signaltwin hsm``) import.
DEFAULT_MODULE = DEFAULT_HSM_MODULE
DEFAULT_TOKEN_LABEL = DEFAULT_HSM_TOKEN_LABEL
DEFAULT_KEY_LABEL = DEFAULT_HSM_KEY_LABEL


@dataclass(frozen=True)
class HsmParams:
    """The PKCS#11 module, token, key and PIN reference of the signing key.

    Attributes:
        module: Path of the PKCS#11 module (.so) of the token's vendor.
        token_label: CKA_LABEL of the token (``CK_TOKEN_INFO.label``).
        key_label: CKA_LABEL of the EC P-256 key pair.
        pin_file: The user PIN: a file path, or ``credential:NAME`` for the
            systemd credential ``$CREDENTIALS_DIRECTORY/NAME`` (``LoadCredential=``).
        softhsm_conf: A SoftHSM2 configuration file (``SOFTHSM2_CONF``) to use
            instead of the system token store; ``None`` for any other module.
        attestation_certificate: A vendor key-attestation certificate (PEM or
            DER) recorded in the enrolment record; ``None`` when there is none.
        pin_backoff_s: After a PIN error the signer refuses logins this long,
            doubling per further failure.
        pin_backoff_max_s: Cap of that backoff.
    """

    module: Path = DEFAULT_MODULE
    token_label: str = DEFAULT_TOKEN_LABEL
    key_label: str = DEFAULT_KEY_LABEL
    pin_file: Path | str = Path("state/hsm/pin")
    softhsm_conf: Path | None = None
    attestation_certificate: Path | None = None
    pin_backoff_s: float = 60.0
    pin_backoff_max_s: float = 3600.0

    @classmethod
    def from_settings(cls, hsm: HsmSettings) -> HsmParams:
        """Build parameters from the daemon's (resolved) ``[hsm]`` settings section."""
        return cls(
            module=hsm.module,
            token_label=hsm.token_label,
            key_label=hsm.key_label,
            pin_file=hsm.pin_file,
            softhsm_conf=hsm.softhsm_conf,
            attestation_certificate=hsm.attestation_certificate,
            pin_backoff_s=hsm.pin_backoff_s,
            pin_backoff_max_s=hsm.pin_backoff_max_s,
        )

    def describe_pin(self) -> str:
        """Where the PIN is read from, for messages (never the PIN itself)."""
        ref = str(self.pin_file)
        if ref.startswith("credential:"):
            return f"systemd credential {ref.removeprefix('credential:')!r}"
        return f"PIN file {ref}"


def read_pin(pin_file: Path | str) -> str:
    """Read the user PIN from a file or ``credential:NAME`` (systemd credential).

    Raises:
        PinFileError: the file/credential is missing, unreadable or empty (the
            message names where it was looked for).
    """
    try:
        return read_secret(str(pin_file), "[hsm] pin_file").get_secret_value()
    except ConfigError as e:
        raise PinFileError(
            f"{e}; run 'signaltwin hsm init' to create a PIN file, or point [hsm] pin_file "
            "/ --pin-file at the token's user PIN"
        ) from e
