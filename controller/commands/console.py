"""``signaltwin console hash-password USER``: a line for the console's users file."""

from __future__ import annotations

import argparse
import getpass
import sys

from configs.errors import ConfigError
from controller.exit_codes import ExitCode

DESCRIPTION = """\
The operator console (docs/operations.md, "The operator console") is served by
'signaltwin run' and 'signaltwin demo'. Bound to an address other than loopback it
needs HTTPS and a users file ([console] users_file): one 'user:HASH' line per
person, where HASH is a salted scrypt (or PBKDF2) hash, never the password.

hash-password reads the password (twice from a terminal, else one line from
standard input) and prints the line to append to the users file.
"""


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``console`` sub-command."""
    parser = subparsers.add_parser(
        "console",
        help="the operator console's users file (hash-password)",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="console_command", metavar="ACTION", required=True)
    hashing = sub.add_parser(
        "hash-password",
        help="print 'USER:HASH' for the users file",
        description="Print 'USER:HASH' for [console] users_file (the password is read, "
        "not given as an argument).",
    )
    hashing.add_argument("user", metavar="USER", help="the user name (letters, digits, ._@-)")
    hashing.add_argument(
        "--pbkdf2",
        action="store_true",
        help="PBKDF2-HMAC-SHA256 (600 000 iterations) instead of scrypt",
    )
    hashing.set_defaults(func=_hash_password)


def _read_password() -> str:
    if sys.stdin.isatty():
        first = getpass.getpass("console password: ")
        if getpass.getpass("again: ") != first:
            raise ConfigError("the two passwords differ; nothing was written")
        return first
    return sys.stdin.readline().rstrip("\r\n")


def _hash_password(args: argparse.Namespace) -> int:
    from controller.console.auth import USER_NAME, hash_password

    if not USER_NAME.match(args.user):
        print(
            f"signaltwin console: user name {args.user!r}: use 1..64 letters, digits and ._@-",
            file=sys.stderr,
        )
        return ExitCode.USAGE
    hashed = hash_password(_read_password(), scheme="pbkdf2_sha256" if args.pbkdf2 else "scrypt")
    print(f"{args.user}:{hashed.encode()}")
    return ExitCode.OK
