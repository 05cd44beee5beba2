"""``signaltwin hsm init|info|verify``: the signing token, its key, and envelope checks.

A thin layer over :mod:`hsm`: options become an :class:`hsm.HsmParams` (or the
state directory for SoftHSM provisioning) and the functions do the work.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from configs.errors import ConfigError
from configs.settings import HsmSettings
from configs.settings_file import load_settings
from controller.exit_codes import ExitCode

if TYPE_CHECKING:
    # hsm (python-pkcs11, cryptography) is imported inside the commands, so that
    # registering them at every `signaltwin` start stays cheap.
    from hsm import HsmParams, TokenReport

# the help shows the schema's defaults: they are the [hsm] section's without a --config
_HSM_DEFAULTS = HsmSettings.model_fields


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``hsm`` with its ``init``, ``info`` and ``verify`` sub-commands."""
    parser = subparsers.add_parser(
        "hsm",
        help="provision and inspect the PKCS#11 signing token; verify envelopes",
        description=(
            "The signing key of timing configurations lives in a PKCS#11 token and never "
            "leaves it. 'init' provisions a SoftHSM2 token in the state directory (or the "
            "key in an existing vendor token), 'info' shows the token and key, 'verify' "
            "checks a signed envelope with public keys only. See docs/hsm.md."
        ),
    )
    sub = parser.add_subparsers(dest="hsm_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda _args: _usage(parser))

    init = sub.add_parser(
        "init",
        help="create the SoftHSM2 token, PIN and signing key (idempotent)",
        description=(
            "Create STATE_DIR/hsm/ with its own softhsm2.conf and token directory (the "
            "system token store is never touched), a random user PIN in a 0600 file (kept "
            "if it exists), a SoftHSM2 token, and an ECDSA P-256 key generated inside it "
            "(CKA_TOKEN, CKA_PRIVATE, CKA_SENSITIVE, CKA_EXTRACTABLE=false); export the "
            "public key as PEM and write the key-enrolment record. A second run reports the "
            "existing token and key and changes nothing. With --existing-token, only the "
            "key is generated, in an already initialised token of --module (vendor HSMs)."
        ),
    )
    _token_options(init)
    init.add_argument(
        "--existing-token",
        action="store_true",
        help="do not create a SoftHSM2 token; generate the key in the existing token "
        "--token-label of --module (PIN from --pin-file)",
    )
    init.add_argument("--json", action="store_true", help="print the result as JSON")
    init.set_defaults(func=_run_init)

    info = sub.add_parser(
        "info",
        help="show token and key details (attributes, keyid)",
        description=(
            "Log in to the token and show its manufacturer, model, serial, label and "
            "firmware, and the signing key's keyid (sha256 of its SubjectPublicKeyInfo DER) "
            "and attributes (CKA_LOCAL, CKA_NEVER_EXTRACTABLE, CKA_ALWAYS_SENSITIVE, ...). "
            "Exit code 1 when the key would be refused as a signing key."
        ),
    )
    _token_options(info)
    info.add_argument(
        "--attestation-cert",
        type=Path,
        default=None,
        help="vendor key-attestation certificate to include in --enrolment output",
    )
    info.add_argument(
        "--export-public-key",
        type=Path,
        metavar="FILE",
        default=None,
        help="write the public key (PEM) to FILE",
    )
    info.add_argument(
        "--enrolment", action="store_true", help="print the key-enrolment record (JSON)"
    )
    info.add_argument("--json", action="store_true", help="print the details as JSON")
    info.set_defaults(func=_run_info)

    verify = sub.add_parser(
        "verify",
        help="verify a signed envelope with public keys (no HSM needed)",
        description=(
            "Parse ENVELOPE strictly and verify its DSSE signature(s) with the given public "
            "keys; print the keyids that verified and (with --payload) the payload. Exit "
            "code 1 when it does not verify."
        ),
    )
    verify.add_argument("envelope", type=Path, help="envelope JSON file")
    verify.add_argument(
        "--key",
        type=Path,
        action="append",
        required=True,
        metavar="PEM",
        help="trusted public key (PEM); repeat for several",
    )
    verify.add_argument(
        "--payload-type",
        default="application/vnd.signaltwin.timing+json",
        help="expected payloadType (default: %(default)s)",
    )
    verify.add_argument(
        "--threshold", type=int, default=1, help="distinct trusted signatures required"
    )
    verify.add_argument("--payload", action="store_true", help="print the verified payload")
    verify.set_defaults(func=_run_verify)


def _token_options(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="daemon settings: take the state directory and the [hsm] section from FILE "
        "(options given explicitly still win)",
    )
    p.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="daemon state directory; the token lives in STATE_DIR/hsm (default: ./state)",
    )
    p.add_argument(
        "--module",
        type=Path,
        default=None,
        help=f"PKCS#11 module (default: {_HSM_DEFAULTS['module'].default})",
    )
    p.add_argument(
        "--token-label",
        default=None,
        help=f"token label (default: {_HSM_DEFAULTS['token_label'].default})",
    )
    p.add_argument(
        "--key-label",
        default=None,
        help=f"key label (default: {_HSM_DEFAULTS['key_label'].default})",
    )
    p.add_argument(
        "--pin-file",
        default=None,
        help="user PIN file, or credential:NAME for a systemd credential "
        "(default: STATE_DIR/hsm/pin)",
    )
    p.add_argument(
        "--softhsm-conf",
        type=Path,
        default=None,
        help="SOFTHSM2_CONF to use (default: STATE_DIR/hsm/softhsm2.conf when it exists)",
    )


def _resolve(args: argparse.Namespace, *, for_init: bool) -> None:
    """Fill unset token options: explicit option, else --config's [hsm], else the default."""
    from hsm.params import DEFAULT_KEY_LABEL, DEFAULT_MODULE, DEFAULT_TOKEN_LABEL

    settings = load_settings(args.config) if args.config is not None else None
    hsm = settings.hsm if settings is not None else None
    if args.state_dir is None:
        args.state_dir = settings.state_dir if settings is not None else Path("state")
    if args.module is None:
        args.module = hsm.module if hsm is not None else DEFAULT_MODULE
    if args.token_label is None:
        args.token_label = hsm.token_label if hsm is not None else DEFAULT_TOKEN_LABEL
    if args.key_label is None:
        args.key_label = hsm.key_label if hsm is not None else DEFAULT_KEY_LABEL
    if hsm is not None and args.pin_file is None:
        if not (for_init and hsm.pin_file.startswith("credential:")):
            args.pin_file = hsm.pin_file
    if hsm is not None and not for_init and args.softhsm_conf is None:
        args.softhsm_conf = hsm.softhsm_conf


def params_from_args(args: argparse.Namespace) -> HsmParams:
    """The token parameters named by the command-line options."""
    from hsm import HsmParams, SoftHsmLayout

    layout = SoftHsmLayout.under(args.state_dir)
    conf = args.softhsm_conf
    if conf is None and layout.softhsm_conf.exists():
        conf = layout.softhsm_conf
    return HsmParams(
        module=args.module,
        token_label=args.token_label,
        key_label=args.key_label,
        pin_file=args.pin_file if args.pin_file is not None else layout.pin_file,
        softhsm_conf=conf,
        attestation_certificate=getattr(args, "attestation_cert", None),
    )


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return ExitCode.USAGE


def _run_init(args: argparse.Namespace) -> int:
    from hsm import SoftHsmLayout, ensure_signing_key, provision_softhsm

    _resolve(args, for_init=True)
    if args.existing_token:
        params = params_from_args(args)
        report, created = ensure_signing_key(params)
        pem_path = SoftHsmLayout.under(args.state_dir).public_key_pem
        wrote = False
        if not pem_path.exists() or pem_path.read_bytes() != report.key.public_key_pem:
            pem_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            pem_path.write_bytes(report.key.public_key_pem)
            wrote = True
        if args.json:
            _print_json({"created_key": created, "public_key": str(pem_path), **report.to_dict()})
        else:
            print(f"key {params.key_label!r} {'generated' if created else 'already present'}")
            if wrote:
                print(f"wrote {pem_path}")
            print(f"public key     {pem_path}")
            _print_report(report)
        return ExitCode.OK if not report.key.problems else ExitCode.PROBLEM
    if args.softhsm_conf is not None:
        raise ConfigError(
            "hsm init creates its own SOFTHSM2_CONF in STATE_DIR/hsm; drop --softhsm-conf "
            "or use --existing-token"
        )
    if isinstance(args.pin_file, str) and args.pin_file.startswith("credential:"):
        raise ConfigError(
            "hsm init writes the PIN to a file; give --pin-file a path (systemd credentials "
            "are for the running daemon)"
        )
    result = provision_softhsm(
        args.state_dir,
        module=args.module,
        token_label=args.token_label,
        key_label=args.key_label,
        pin_file=Path(args.pin_file) if args.pin_file is not None else None,
    )
    if args.json:
        _print_json(
            {
                "changed": result.changed,
                "created_token": result.created_token,
                "created_key": result.created_key,
                "created_pin": result.created_pin,
                "wrote": [str(p) for p in result.wrote_files],
                "softhsm_conf": str(result.params.softhsm_conf),
                "pin_file": str(result.params.pin_file),
                "public_key": str(result.public_key_path),
                **result.report.to_dict(),
            }
        )
        return ExitCode.OK
    p = result.params
    if not result.changed:
        print(f"token {p.token_label!r} and key {p.key_label!r} already exist; nothing changed")
    else:
        print("token " + ("created" if result.created_token else "already present"))
        print("key " + ("generated in the token" if result.created_key else "already present"))
        if result.created_pin:
            print(f"PIN written to {p.pin_file} (mode 0600)")
        for path in result.wrote_files:
            print(f"wrote {path}")
    print(f"SOFTHSM2_CONF  {p.softhsm_conf}")
    print(f"pin file       {p.pin_file}")
    print(f"public key     {result.public_key_path}")
    _print_report(result.report)
    return ExitCode.OK


def _run_info(args: argparse.Namespace) -> int:
    from hsm import enrolment_record, inspect_token

    _resolve(args, for_init=False)
    params = params_from_args(args)
    report = inspect_token(params)
    if args.export_public_key is not None:
        args.export_public_key.write_bytes(report.key.public_key_pem)
    if args.enrolment:
        _print_json(
            enrolment_record(
                report.token,
                report.key,
                attestation_certificate=params.attestation_certificate,
            )
        )
    elif args.json:
        _print_json(report.to_dict())
    else:
        _print_report(report)
        if args.export_public_key is not None:
            print(f"public key written to {args.export_public_key}")
    return ExitCode.OK if not report.key.problems else ExitCode.PROBLEM


def _run_verify(args: argparse.Namespace) -> int:
    from hsm import load_public_key, verify_envelope
    from hsm.errors import EnvelopeFormatError, SignatureMismatchError

    try:
        data = args.envelope.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read envelope {args.envelope}: {e.strerror}") from e
    try:
        keys = [load_public_key(path) for path in args.key]
    except SignatureMismatchError as e:
        raise ConfigError(f"--key: {e}") from e
    try:
        verified = verify_envelope(
            data, keys, payload_type=args.payload_type, threshold=args.threshold
        )
    except (EnvelopeFormatError, SignatureMismatchError) as e:
        print(f"NOT VERIFIED: {args.envelope}: {e}", file=sys.stderr)
        return ExitCode.PROBLEM
    print(f"verified: {args.envelope} signed by {', '.join(verified.keyids)}")
    if args.payload:
        sys.stdout.buffer.write(verified.payload + b"\n")
    return ExitCode.OK


def _print_report(report: TokenReport) -> None:
    t, k = report.token, report.key
    print("token")
    print(f"  label          {t.label}")
    print(f"  manufacturer   {t.manufacturer}")
    print(f"  model          {t.model}")
    print(f"  serial         {t.serial}")
    print(f"  firmware       {t.firmware_version} (hardware {t.hardware_version})")
    print(f"  module         {t.module} ({t.library_description} {t.library_version})")
    print("key")
    print(f"  label          {k.key_label}")
    print(f"  CKA_ID         {k.key_id or '-'}")
    print(f"  keyid          {k.keyid}")
    for name, value in k.attributes.items():
        shown = "not reported" if value is None else str(value).lower()
        print(f"  {name:<22} {shown}")
    if k.problems:
        print("  REFUSED as a signing key: " + "; ".join(k.problems))
    else:
        print("  accepted as a signing key (generated in the token, never extractable)")
    print(k.public_key_pem.decode("ascii"), end="")


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, sort_keys=True, default=str))
