"""Provisioning: a SoftHSM2 token in the state directory, the key inside a token.

``signaltwin hsm init`` is a thin layer over :func:`provision_softhsm`; a vendor
HSM whose token already exists uses :func:`ensure_signing_key`; ``signaltwin hsm
info`` uses :func:`inspect_token`, which reports a key's attributes without
refusing it (the signer refuses).

State-directory layout (SoftHSM2)::

    STATE_DIR/hsm/softhsm2.conf      SOFTHSM2_CONF: tokendir below, file backend
    STATE_DIR/hsm/tokens/            the token store (0700), never the system one
    STATE_DIR/hsm/pin                user PIN (0600, random, created once)
    STATE_DIR/hsm/so-pin             security-officer PIN (0600; move it offline)
    STATE_DIR/hsm/signing-key.pub.pem  the public key, for controllers and auditors
    STATE_DIR/hsm/enrolment.json     the key-enrolment record
"""

from __future__ import annotations

import json
import logging
import os
import pty
import secrets
import select
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pkcs11 import Attribute, KeyType, MechanismFlag
from pkcs11.exceptions import PKCS11Error

from configs.errors import SigningError
from hsm.enrolment import KeyReport, TokenInfo, enrolment_record
from hsm.errors import PinFileError, SigningKeyNotFoundError, TokenNotFoundError
from hsm.params import DEFAULT_KEY_LABEL, DEFAULT_MODULE, DEFAULT_TOKEN_LABEL, HsmParams, read_pin
from hsm.token import (
    ModuleLease,
    acquire_module,
    find_key_pair,
    find_token,
    key_report,
    open_session,
    p256_params,
    token_info,
)

__all__ = [
    "ProvisionResult",
    "SoftHsmLayout",
    "TokenReport",
    "ensure_signing_key",
    "inspect_token",
    "provision_softhsm",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SoftHsmLayout:
    """Where a SoftHSM2 token lives under a state directory."""

    hsm_dir: Path
    softhsm_conf: Path
    token_dir: Path
    pin_file: Path
    so_pin_file: Path
    public_key_pem: Path
    enrolment_json: Path

    @classmethod
    def under(cls, state_dir: Path) -> SoftHsmLayout:
        """The layout under ``state_dir/hsm`` (absolute paths)."""
        hsm_dir = Path(state_dir).absolute() / "hsm"
        return cls(
            hsm_dir=hsm_dir,
            softhsm_conf=hsm_dir / "softhsm2.conf",
            token_dir=hsm_dir / "tokens",
            pin_file=hsm_dir / "pin",
            so_pin_file=hsm_dir / "so-pin",
            public_key_pem=hsm_dir / "signing-key.pub.pem",
            enrolment_json=hsm_dir / "enrolment.json",
        )


@dataclass(frozen=True)
class TokenReport:
    """A token and its signing key, as ``hsm info`` shows them."""

    token: TokenInfo
    key: KeyReport

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "token": self.token.to_dict(),
            "key": {
                "label": self.key.key_label,
                "id": self.key.key_id,
                "keyid": self.key.keyid,
                "public_key_pem": self.key.public_key_pem.decode("ascii"),
                "attributes": self.key.attributes,
                "accepted_for_signing": not self.key.problems,
                "problems": list(self.key.problems),
            },
        }


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision_softhsm` found and what it changed."""

    params: HsmParams
    report: TokenReport
    created_token: bool
    created_key: bool
    created_pin: bool
    wrote_files: tuple[Path, ...]
    public_key_path: Path

    @property
    def changed(self) -> bool:
        """Whether anything was created or written."""
        return self.created_token or self.created_key or self.created_pin or bool(self.wrote_files)


def provision_softhsm(
    state_dir: Path,
    *,
    module: Path = DEFAULT_MODULE,
    token_label: str = DEFAULT_TOKEN_LABEL,
    key_label: str = DEFAULT_KEY_LABEL,
    pin_file: Path | None = None,
    softhsm_util: str = "softhsm2-util",
) -> ProvisionResult:
    """Create (or find) a SoftHSM2 token and its signing key under ``state_dir/hsm``.

    Idempotent: a second run finds the token, the key and the PIN and changes
    nothing. The token gets its own ``SOFTHSM2_CONF`` and token directory, so
    the system token store is never touched.

    Args:
        state_dir: The daemon's state directory.
        module: The SoftHSM2 PKCS#11 module.
        token_label: Label of the token to create/find.
        key_label: Label of the key pair to create/find.
        pin_file: User PIN file (default ``state_dir/hsm/pin``); a random PIN is
            written (0600) when it does not exist and the token is new.
        softhsm_util: The ``softhsm2-util`` executable (initialises the token).

    Raises:
        SigningError: (subclasses) naming what failed and how to fix it.
    """
    layout = SoftHsmLayout.under(state_dir)
    pin_path = Path(pin_file).absolute() if pin_file is not None else layout.pin_file
    wrote: list[Path] = []
    _private_dir(layout.hsm_dir)
    _private_dir(layout.token_dir)
    if not layout.softhsm_conf.exists():
        layout.softhsm_conf.write_text(
            "# SoftHSM2 configuration of the signaltwin signing token (signaltwin hsm init)\n"
            f"directories.tokendir = {layout.token_dir}/\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n"
            "slots.removable = false\n"
            "slots.mechanisms = ALL\n",
            encoding="utf-8",
        )
        wrote.append(layout.softhsm_conf)
    params = HsmParams(
        module=module,
        token_label=token_label,
        key_label=key_label,
        pin_file=pin_path,
        softhsm_conf=layout.softhsm_conf,
    )
    lease = acquire_module(module, layout.softhsm_conf)
    created_token = created_pin = False
    try:
        with lease.lock:
            try:
                find_token(lease, token_label)
            except TokenNotFoundError:
                if not pin_path.exists():
                    _write_secret(pin_path, secrets.token_urlsafe(18))
                    created_pin = True
                if not layout.so_pin_file.exists():
                    _write_secret(layout.so_pin_file, secrets.token_urlsafe(18))
                    created_pin = True
                _init_token(
                    softhsm_util,
                    layout.softhsm_conf,
                    token_label,
                    so_pin=read_pin(layout.so_pin_file),
                    pin=read_pin(pin_path),
                )
                created_token = True
                # SoftHSM enumerates tokens at C_Initialize: see the new one.
                lease.reinitialize()
            if not pin_path.exists():
                raise PinFileError(
                    f"token {token_label!r} exists in {layout.token_dir} but its PIN file "
                    f"{pin_path} does not; restore the PIN file (or pass --pin-file)"
                )
            report, created_key = _ensure_key(lease, params)
    finally:
        lease.release()
    pem = report.key.public_key_pem
    if not layout.public_key_pem.exists() or layout.public_key_pem.read_bytes() != pem:
        layout.public_key_pem.write_bytes(pem)
        wrote.append(layout.public_key_pem)
    if created_key or not layout.enrolment_json.exists():
        record = enrolment_record(report.token, report.key)
        layout.enrolment_json.write_text(
            json.dumps(record, indent=2, sort_keys=True) + "\n", encoding="utf-8"
        )
        wrote.append(layout.enrolment_json)
    return ProvisionResult(
        params=params,
        report=report,
        created_token=created_token,
        created_key=created_key,
        created_pin=created_pin,
        wrote_files=tuple(wrote),
        public_key_path=layout.public_key_pem,
    )


def ensure_signing_key(params: HsmParams) -> tuple[TokenReport, bool]:
    """Find the signing key on an existing token, generating it there if missing.

    For any PKCS#11 module (a vendor HSM's token is initialised with the
    vendor's tools). Returns the report and whether the key was generated.
    """
    lease = acquire_module(params.module, params.softhsm_conf)
    try:
        with lease.lock:
            return _ensure_key(lease, params)
    finally:
        lease.release()


def inspect_token(params: HsmParams) -> TokenReport:
    """Read the token's information and the key's attributes (no policy enforced).

    Raises:
        SigningError: (subclasses) module, token, PIN or key not found.
    """
    lease = acquire_module(params.module, params.softhsm_conf)
    try:
        with lease.lock:
            token = find_token(lease, params.token_label)
            session = open_session(token, read_pin(params.pin_file), where=params.describe_pin())
            try:
                private_key, public_key = find_key_pair(
                    session, params.key_label, params.token_label
                )
                return TokenReport(
                    token=token_info(lease, token),
                    key=key_report(private_key, public_key, params.key_label),
                )
            finally:
                _close(session)
    except PKCS11Error as e:
        raise SigningError(
            f"token {params.token_label!r} failed while reading it ({type(e).__name__}: {e})"
        ) from e
    finally:
        lease.release()


def _ensure_key(lease: ModuleLease, params: HsmParams) -> tuple[TokenReport, bool]:
    token = find_token(lease, params.token_label)
    session = open_session(token, read_pin(params.pin_file), rw=True, where=params.describe_pin())
    created = False
    try:
        try:
            private_key, public_key = find_key_pair(session, params.key_label, params.token_label)
        except SigningKeyNotFoundError:
            if _has_key_object(session, params.key_label):
                raise
            logger.info(
                "generating EC P-256 key %r in token %r", params.key_label, params.token_label
            )
            public_key, private_key = session.generate_keypair(
                KeyType.EC,
                store=True,
                label=params.key_label,
                id=secrets.token_bytes(16),
                capabilities=MechanismFlag.SIGN | MechanismFlag.VERIFY,
                public_template={
                    Attribute.EC_PARAMS: p256_params(),
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: False,
                },
                private_template={
                    Attribute.TOKEN: True,
                    Attribute.PRIVATE: True,
                    Attribute.SENSITIVE: True,
                    Attribute.EXTRACTABLE: False,
                },
            )
            created = True
        report = TokenReport(
            token=token_info(lease, token),
            key=key_report(private_key, public_key, params.key_label),
        )
    except PKCS11Error as e:
        raise SigningError(
            f"token {params.token_label!r} failed while generating/reading key "
            f"{params.key_label!r} ({type(e).__name__}: {e})"
        ) from e
    finally:
        _close(session)
    return report, created


def _has_key_object(session: Any, label: str) -> bool:
    """Whether any object carries ``label`` (half a key pair must not be papered over)."""
    return any(True for _ in session.get_objects({Attribute.LABEL: label}))


def _init_token(util: str, conf: Path, label: str, *, so_pin: str, pin: str) -> None:
    """Run ``softhsm2-util --init-token`` answering its PIN prompts through a pty.

    PINs never go on the command line (``--pin``/``--so-pin`` are readable by
    every local user in ``/proc/PID/cmdline``); without them softhsm2-util
    prompts on its terminal, which here is a private pseudo-terminal.
    """
    exe = shutil.which(util)
    if exe is None:
        raise SigningError(
            f"{util} not found; install the Debian package 'softhsm2' (it provides "
            f"softhsm2-util and {DEFAULT_MODULE})"
        )
    env = dict(os.environ, SOFTHSM2_CONF=str(conf))
    cmd = [exe, "--init-token", "--free", "--label", label]
    try:
        returncode, output = _run_with_prompts(cmd, env, so_pin=so_pin, pin=pin, timeout_s=60.0)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise SigningError(f"{util} --init-token failed to run: {e}") from e
    if returncode != 0:
        detail = output.strip().replace(so_pin, "***").replace(pin, "***")
        raise SigningError(
            f"{util} --init-token --label {label!r} failed (exit {returncode}): {detail}; "
            f"check SOFTHSM2_CONF {conf}"
        )
    logger.info("initialised SoftHSM2 token %r (SOFTHSM2_CONF=%s)", label, conf)


def _run_with_prompts(
    cmd: list[str], env: dict[str, str], *, so_pin: str, pin: str, timeout_s: float
) -> tuple[int, str]:
    """Run ``cmd`` on a pty, typing ``so_pin``/``pin`` at its "SO PIN"/"user PIN" prompts."""
    master, slave = pty.openpty()
    try:
        proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
            cmd, stdin=slave, stdout=slave, stderr=slave, env=env, start_new_session=True
        )
    finally:
        os.close(slave)
    seen = b""
    answered = 0
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise subprocess.TimeoutExpired(cmd, timeout_s)
            ready, _, _ = select.select([master], [], [], 0.2)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            prompt = seen[answered:].lower()
            if prompt.rstrip().endswith(b":"):
                answered = len(seen)
                secret = so_pin if b"so pin" in prompt.rsplit(b"\n", 1)[-1] else pin
                os.write(master, secret.encode() + b"\n")
        return proc.wait(timeout=max(1.0, deadline - time.monotonic())), seen.decode(
            "utf-8", "replace"
        )
    finally:
        os.close(master)


def _private_dir(path: Path) -> None:
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as e:
        raise SigningError(f"cannot create {path}: {e.strerror}; check the state directory") from e


def _write_secret(path: Path, value: str) -> None:
    """Create ``path`` with mode 0600 (never overwrite)."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except OSError as e:
        raise PinFileError(f"cannot create PIN file {path}: {e.strerror}") from e
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(value + "\n")


def _close(session: Any) -> None:
    try:
        session.close()
    except PKCS11Error as e:
        logger.debug("closing session failed: %s", e)
