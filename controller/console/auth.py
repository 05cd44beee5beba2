"""Who may read the console: a users file of password hashes and HTTP Basic checks.

The users file is htpasswd-like, one ``user:HASH`` per line (``#`` comments and
blank lines allowed), where ``HASH`` is written by :func:`hash_password`
(``signaltwin console hash-password USER``):

* ``scrypt$N$r$p$SALT$KEY`` (the default: N = 2**15, r = 8, p = 1), or
* ``pbkdf2_sha256$ITERATIONS$SALT$KEY`` (at least 100 000 iterations),

with ``SALT`` and ``KEY`` in unpadded URL-safe base64. A line that is not one of
these (a plain password, say) is refused with its line number, never echoed.
The file is a secret like the HSM PIN: a path, or ``credential:NAME``.

Checks are constant-time, an unknown user costs as much as a known one, a
successful check is remembered (a keyed digest, in memory) so that the page's
live connection does not re-run scrypt on every request, and a client that keeps
failing is refused for a while (:class:`FailureLimiter`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal

from configs.errors import ConfigError
from configs.settings_file import read_secret

__all__ = [
    "USER_NAME",
    "BasicAuth",
    "FailureLimiter",
    "PasswordHash",
    "hash_password",
    "load_users",
    "parse_basic_header",
    "parse_users",
]

USER_NAME: Final = re.compile(r"^[A-Za-z0-9._@\-]{1,64}$")
SCRYPT_N: Final = 2**15
SCRYPT_R: Final = 8
SCRYPT_P: Final = 1
PBKDF2_MIN_ITERATIONS: Final = 100_000
_MAX_HEADER = 1024
_MAX_PASSWORD = 256


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)


@dataclass(frozen=True)
class PasswordHash:
    """One stored password hash (its parameters, salt and derived key)."""

    scheme: Literal["scrypt", "pbkdf2_sha256"]
    salt: bytes
    key: bytes
    n: int = SCRYPT_N
    r: int = SCRYPT_R
    p: int = SCRYPT_P
    iterations: int = 0

    def derive(self, password: str) -> bytes:
        """The key ``password`` derives with this hash's parameters."""
        secret = password.encode("utf-8")
        if self.scheme == "scrypt":
            return hashlib.scrypt(
                secret,
                salt=self.salt,
                n=self.n,
                r=self.r,
                p=self.p,
                maxmem=256 * self.n * self.r * self.p + 2**20,
                dklen=len(self.key),
            )
        return hashlib.pbkdf2_hmac("sha256", secret, self.salt, self.iterations, len(self.key))

    def matches(self, password: str) -> bool:
        """Whether ``password`` is the one hashed (constant-time comparison)."""
        return hmac.compare_digest(self.derive(password), self.key)

    def encode(self) -> str:
        """The text written in the users file."""
        if self.scheme == "scrypt":
            return f"scrypt${self.n}${self.r}${self.p}${_b64(self.salt)}${_b64(self.key)}"
        return f"pbkdf2_sha256${self.iterations}${_b64(self.salt)}${_b64(self.key)}"

    @classmethod
    def decode(cls, text: str) -> PasswordHash:
        """Parse a stored hash.

        Raises:
            ValueError: not a scrypt or PBKDF2 hash with sound parameters (the
                message never contains the text).
        """
        parts = text.split("$")
        try:
            if parts[0] == "scrypt" and len(parts) == 6:
                n, r, p = int(parts[1]), int(parts[2]), int(parts[3])
                if n < 2**14 or n > 2**20 or n & (n - 1) or not 1 <= r <= 32 or not 1 <= p <= 16:
                    raise ValueError("scrypt parameters out of range (N 2**14..2**20, r, p)")
                found = cls("scrypt", _unb64(parts[4]), _unb64(parts[5]), n=n, r=r, p=p)
            elif parts[0] == "pbkdf2_sha256" and len(parts) == 4:
                iterations = int(parts[1])
                if not PBKDF2_MIN_ITERATIONS <= iterations <= 10_000_000:
                    raise ValueError(f"PBKDF2 needs {PBKDF2_MIN_ITERATIONS}..10000000 iterations")
                found = cls(
                    "pbkdf2_sha256", _unb64(parts[2]), _unb64(parts[3]), iterations=iterations
                )
            else:
                raise ValueError(
                    "not a scrypt or pbkdf2_sha256 hash (a plain password is never accepted)"
                )
        except (binascii.Error, UnicodeError) as e:
            raise ValueError("salt or key is not base64") from e
        if len(found.salt) < 16 or not 16 <= len(found.key) <= 64:
            raise ValueError("salt shorter than 16 bytes or key not 16..64 bytes")
        return found


def hash_password(
    password: str, *, scheme: Literal["scrypt", "pbkdf2_sha256"] = "scrypt"
) -> PasswordHash:
    """Hash ``password`` with a fresh salt (what ``signaltwin console hash-password`` writes).

    Raises:
        ConfigError: an empty or overlong password.
    """
    if not password or len(password) > _MAX_PASSWORD:
        raise ConfigError(f"a console password has 1..{_MAX_PASSWORD} characters")
    salt = secrets.token_bytes(16)
    if scheme == "scrypt":
        template = PasswordHash("scrypt", salt, b"\0" * 32)
    else:
        template = PasswordHash("pbkdf2_sha256", salt, b"\0" * 32, iterations=600_000)
    return PasswordHash(
        template.scheme,
        salt,
        template.derive(password),
        n=template.n,
        r=template.r,
        p=template.p,
        iterations=template.iterations,
    )


def parse_users(text: str, where: str) -> dict[str, PasswordHash]:
    """Parse a users file's text (``where`` names it in errors).

    Raises:
        ConfigError: a bad line (by number, never its content), a repeated
            user, or no user at all.
    """
    users: dict[str, PasswordHash] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not USER_NAME.match(user):
            raise ConfigError(
                f"{where}: line {number}: expected 'user:HASH' with a user name of letters, "
                "digits and ._@- (write lines with 'signaltwin console hash-password USER')"
            )
        if user in users:
            raise ConfigError(f"{where}: line {number}: user {user!r} is listed twice")
        try:
            users[user] = PasswordHash.decode(stored)
        except ValueError as e:
            raise ConfigError(
                f"{where}: line {number} (user {user!r}): {e}; write it with "
                "'signaltwin console hash-password USER'"
            ) from None
    if not users:
        raise ConfigError(f"{where}: no users; add one with 'signaltwin console hash-password'")
    return users


def load_users(ref: str) -> dict[str, PasswordHash]:
    """Read and parse the users file ``ref`` (a path or ``credential:NAME``).

    Raises:
        ConfigError: unreadable, empty, or a bad line.
    """
    text = read_secret(ref, "console.users_file").get_secret_value()
    return parse_users(text, f"console.users_file ({ref})")


def parse_basic_header(header: str | None) -> tuple[str, str] | None:
    """``(user, password)`` of an ``Authorization: Basic ...`` header, or None."""
    if header is None or len(header) > _MAX_HEADER:
        return None
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic" or not value:
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep or not USER_NAME.match(user) or len(password) > _MAX_PASSWORD:
        return None
    return user, password


class FailureLimiter:
    """Refuses a client for ``lockout_s`` after ``max_failures`` failed checks in that time."""

    def __init__(
        self,
        max_failures: int = 5,
        lockout_s: float = 60.0,
        max_clients: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._max = max_failures
        self._lockout_s = lockout_s
        self._cap = max_clients
        self._clock = clock
        self._failures: OrderedDict[str, list[float]] = OrderedDict()
        self._lock = threading.Lock()

    def blocked(self, client: str) -> bool:
        """Whether ``client`` failed too often lately."""
        with self._lock:
            return len(self._recent(client)) >= self._max

    def failed(self, client: str) -> None:
        """Count a failed check of ``client``."""
        with self._lock:
            recent = self._recent(client)
            recent.append(self._clock())
            self._failures[client] = recent
            self._failures.move_to_end(client)
            while len(self._failures) > self._cap:
                self._failures.popitem(last=False)

    def _recent(self, client: str) -> list[float]:
        since = self._clock() - self._lockout_s
        return [t for t in self._failures.get(client, []) if t > since]


class BasicAuth:
    """Checks HTTP Basic credentials against the users file's hashes."""

    def __init__(self, users: Mapping[str, PasswordHash], limiter: FailureLimiter | None = None):
        self._users = dict(users)
        self.limiter = limiter or FailureLimiter()
        self._key = secrets.token_bytes(32)
        self._good: OrderedDict[bytes, None] = OrderedDict()
        self._lock = threading.Lock()
        # at most two key derivations at once: scrypt is memory-hard on purpose
        self._deriving = threading.BoundedSemaphore(2)
        self._dummy = next(iter(self._users.values()))

    def check(self, header: str | None) -> str | None:
        """The user name when ``header`` carries valid credentials, else None."""
        credentials = parse_basic_header(header)
        if credentials is None:
            return None
        user, password = credentials
        token = hmac.new(self._key, f"{user}\0{password}".encode(), "sha256").digest()
        with self._lock:
            if token in self._good:
                self._good.move_to_end(token)
                return user
        stored = self._users.get(user)
        with self._deriving:
            # an unknown user costs a derivation too, so timing does not tell who exists
            ok = (stored or self._dummy).matches(password) and stored is not None
        if not ok:
            return None
        with self._lock:
            self._good[token] = None
            while len(self._good) > 64:
                self._good.popitem(last=False)
        return user
