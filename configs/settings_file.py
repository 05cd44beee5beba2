"""The settings file: reading and validating the TOML, secrets, checks, writing it back.

:func:`load_settings` is the one way the daemon and every command read their
settings (a missing file is an error, never silent defaults); errors name the
file, the TOML key and the expected value. Secrets are read only where they are
used (:func:`read_secret`), from a file or a systemd credential.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import SecretStr, ValidationError

from configs.errors import ConfigError
from configs.settings import Settings

__all__ = [
    "check_environment",
    "dump_settings_toml",
    "format_validation_error",
    "load_settings",
    "read_secret",
    "secret_path",
]


def load_settings(path: Path | str) -> Settings:
    """Read, validate and resolve a settings TOML file.

    Raises:
        ConfigError: naming the file, the TOML key path, the bad value and what
            was expected.
    """
    file = Path(path)
    try:
        text = file.read_bytes()
    except FileNotFoundError as e:
        raise ConfigError(f"{file}: no such settings file (give --config FILE)") from e
    except OSError as e:
        raise ConfigError(f"{file}: cannot read settings file: {e.strerror}") from e
    try:
        raw = tomllib.loads(text.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{file}: not UTF-8 text: {e}") from e
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{file}: not valid TOML: {e}") from e
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(f"{file}: {format_validation_error(e, raw)}") from e
    resolved = settings.resolved(file.resolve().parent)
    return resolved.model_copy(update={"source": file.resolve()})


def format_validation_error(error: ValidationError, raw: Any) -> str:
    """Turn pydantic's errors into 'key.path = value: what was expected' lines."""
    lines = []
    for item in error.errors():
        loc = item["loc"]
        if not loc:
            # a rule across sections: its message names the keys
            lines.append(str(item["msg"]).removeprefix("Value error, "))
            continue
        key = _toml_key(loc)
        value = _lookup(raw, loc)
        shown = "(missing)" if value is _MISSING else repr(value)
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            message = "unknown key (check the spelling against configs/production.example.toml)"
        elif item["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{key} = {shown}: {message}")
    return "invalid settings:\n  " + "\n  ".join(lines)


_MISSING = object()


def _toml_key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for part in loc:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(("." if parts else "") + str(part))
    return "".join(parts) or "(file)"


def _lookup(raw: Any, loc: tuple[int | str, ...]) -> Any:
    node = raw
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        else:
            return _MISSING
    return node


def secret_path(ref: str, what: str) -> Path:
    """The file a secret reference names: the file itself, or ``credential:NAME``'s.

    For a library that opens the secret itself (an ``ssl`` private key).

    Raises:
        ConfigError: a ``credential:`` reference outside systemd's ``LoadCredential=``.
    """
    if not ref.startswith("credential:"):
        return Path(ref)
    name = ref.removeprefix("credential:")
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        raise ConfigError(
            f"{what}: '{ref}' needs systemd's LoadCredential={name}:... "
            "(CREDENTIALS_DIRECTORY is not set); or point the setting at a file"
        )
    return Path(directory) / name


def read_secret(ref: str, what: str) -> SecretStr:
    """Read a secret from a file or ``credential:NAME`` (systemd ``LoadCredential=``).

    Raises:
        ConfigError: naming the secret, where it was looked for and how to fix it.
    """
    path = secret_path(ref, what)
    try:
        value = path.read_text(encoding="utf-8").strip()
    except FileNotFoundError as e:
        raise ConfigError(f"{what}: secret file {path} does not exist") from e
    except OSError as e:
        raise ConfigError(f"{what}: cannot read secret file {path}: {e.strerror}") from e
    if not value:
        raise ConfigError(f"{what}: secret file {path} is empty")
    return SecretStr(value)


def _secret_problems(ref: str, what: str, auto: bool) -> Iterator[str]:
    if ref.startswith("credential:"):
        if os.environ.get("CREDENTIALS_DIRECTORY"):
            try:
                read_secret(ref, what)
            except ConfigError as e:
                yield str(e)
        return
    path = Path(ref)
    if not path.exists():
        if not auto:
            yield f"{what}: secret file {path} does not exist"
        return
    try:
        read_secret(ref, what)
    except ConfigError as e:
        yield str(e)


def check_environment(settings: Settings) -> list[str]:
    """Problems with the files a valid configuration refers to (empty: none).

    Files the demo provisions itself (``auto_provision = true``) may be absent;
    present but unreadable files are always a problem.
    """
    problems: list[str] = []
    sim = settings.simulation
    if not sim.network.is_file():
        problems.append(
            f"simulation.network: {sim.network} does not exist (run 'signaltwin network build')"
        )
    detectors = sim.detectors
    if detectors is not None and not detectors.is_file():
        # generated at start-up, as the settings promise, where it can be written
        parent = next((p for p in detectors.parents if p.exists()), Path("/"))
        if not os.access(parent, os.W_OK):
            problems.append(
                f"simulation.detectors: {detectors} does not exist and {parent} is not "
                "writable to generate it; generate it with 'signaltwin network info "
                f"{sim.network} --detectors {detectors}'"
            )
    for key, file in (
        ("simulation.demand", sim.demand),
        ("simulation.surrogate", sim.surrogate),
    ):
        if file is not None and not file.is_file():
            problems.append(f"{key}: {file} does not exist")
    if not settings.hsm.module.is_file():
        problems.append(
            f"hsm.module: PKCS#11 module {settings.hsm.module} not found "
            "(install softhsm2 or point it at your HSM vendor's module)"
        )
    problems.extend(
        _secret_problems(settings.hsm.pin_file, "hsm.pin_file", settings.hsm.auto_provision)
    )
    ctl = settings.controllers
    problems.extend(
        _secret_problems(ctl.password_file, "controllers.password_file", ctl.auto_provision)
    )
    if not ctl.auto_provision:
        for key, file in (
            ("controllers.client_certificate", ctl.client_certificate),
            ("controllers.client_private_key", ctl.client_private_key),
        ):
            if file is None:
                problems.append(f"{key}: required (SignAndEncrypt needs a client certificate)")
            elif not file.is_file():
                problems.append(f"{key}: {file} does not exist")
        for index, endpoint in enumerate(ctl.endpoints):
            cert = endpoint.server_certificate
            if cert is None or not cert.is_file():
                problems.append(
                    f"controllers.endpoints[{index}].server_certificate: "
                    f"{cert} missing (the server certificate must be pinned)"
                )
    console = settings.console
    if console.enabled:
        if console.tls_certificate is not None and not console.tls_certificate.is_file():
            problems.append(f"console.tls_certificate: {console.tls_certificate} does not exist")
        for key, ref in (
            ("console.tls_private_key", console.tls_private_key),
            ("console.users_file", console.users_file),
        ):
            if ref is not None:
                problems.extend(_secret_problems(ref, key, auto=False))
    return problems


def _toml_value(value: Any, where: str) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, list) and all(not isinstance(v, dict) for v in value):
        return "[" + ", ".join(_toml_value(v, where) for v in value) + "]"
    raise ConfigError(f"cannot write {where} = {value!r} as a TOML value")


def _toml_key_part(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key, key)


def _toml_table(data: dict[str, Any], prefix: str, out: list[str]) -> None:
    scalars = {
        k: v
        for k, v in data.items()
        if v is not None
        and not isinstance(v, dict)
        and not (isinstance(v, list) and v and isinstance(v[0], dict))
    }
    for key, value in scalars.items():
        out.append(f"{_toml_key_part(key)} = {_toml_value(value, prefix + key)}")
    for key, value in data.items():
        name = f"{prefix}{_toml_key_part(key)}"
        if isinstance(value, dict):
            out.append(f"\n[{name}]")
            _toml_table(value, name + ".", out)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            for item in value:
                out.append(f"\n[[{name}]]")
                _toml_table(item, name + ".", out)


def dump_settings_toml(settings: Settings) -> str:
    """Write ``settings`` as TOML that :func:`load_settings` reads back to equal settings.

    Every path is written as it is held (absolute after loading), so the file can
    live anywhere; ``None`` values are left out (they are the defaults).
    """
    data = settings.model_dump(mode="json", exclude={"source"})
    lines = ["# written by signaltwin; every path is absolute"]
    _toml_table(data, "", lines)
    return "\n".join(lines) + "\n"
