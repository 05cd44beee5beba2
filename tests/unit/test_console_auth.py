"""The console's users file and Basic checks: hashes only, constant-time, bounded, never echoed."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs.errors import ConfigError
from controller.cli import run as cli_run
from controller.console.auth import (
    BasicAuth,
    FailureLimiter,
    PasswordHash,
    hash_password,
    load_users,
    parse_basic_header,
    parse_users,
)


def header(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_scrypt_and_pbkdf2_hashes_verify_and_read_back() -> None:
    for scheme in ("scrypt", "pbkdf2_sha256"):
        hashed = hash_password("s3cret pass", scheme=scheme)  # type: ignore[arg-type]
        again = PasswordHash.decode(hashed.encode())
        assert again == hashed and again.matches("s3cret pass") and not again.matches("s3cret")
    assert hash_password("x").encode().startswith("scrypt$32768$8$1$")
    assert hash_password("x").salt != hash_password("x").salt


def test_a_plain_password_in_the_users_file_is_refused_without_echoing_it(tmp_path: Path) -> None:
    good = hash_password("pw", scheme="pbkdf2_sha256").encode()
    text = f"# users\n\noperator:{good}\nauditor:hunter2-plain\n"
    with pytest.raises(ConfigError) as caught:
        parse_users(text, "users")
    message = str(caught.value)
    assert "line 4" in message and "auditor" in message and "plain password" in message
    assert "hunter2" not in message


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("no-colon-here", "expected 'user:HASH'"),
        ("bad user:scrypt$x", "expected 'user:HASH'"),
        ("a:scrypt$1024$8$1$" + "A" * 22 + "$" + "A" * 43, r"N 2\*\*14"),
        ("a:pbkdf2_sha256$1000$AAAAAAAAAAAAAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA", "iterations"),
        ("a:pbkdf2_sha256$200000$AAAA$AAAAAAAAAAAAAAAAAAAAAA", "salt shorter"),
        ("a:pbkdf2_sha256$200000$!!!!$AAAA", "base64"),
    ],
)
def test_bad_lines_name_what_is_wrong(line: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=expected):
        parse_users(line, "users")


def test_repeated_users_and_empty_files_are_refused(tmp_path: Path) -> None:
    line = "a:" + hash_password("pw", scheme="pbkdf2_sha256").encode()
    with pytest.raises(ConfigError, match="listed twice"):
        parse_users(f"{line}\n{line}\n", "users")
    with pytest.raises(ConfigError, match="no users"):
        parse_users("# nobody yet\n", "users")
    path = tmp_path / "users"
    path.write_text(line + "\n")
    assert set(load_users(str(path))) == {"a"}
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        load_users("credential:console-users")


def test_basic_checks_remember_success_and_cost_the_same_for_unknown_users() -> None:
    auth = BasicAuth({"operator": hash_password("pw", scheme="pbkdf2_sha256")})
    assert auth.check(header("operator", "pw")) == "operator"
    assert auth.check(header("operator", "pw")) == "operator"  # remembered
    assert auth.check(header("operator", "PW")) is None
    assert auth.check(header("intruder", "pw")) is None
    assert auth.check(None) is None
    assert auth.check("Bearer abc") is None


def test_failure_limiter_forgets_after_the_lockout() -> None:
    now = [0.0]
    limiter = FailureLimiter(max_failures=2, lockout_s=10, clock=lambda: now[0])
    limiter.failed("10.0.0.1")
    assert not limiter.blocked("10.0.0.1")
    limiter.failed("10.0.0.1")
    assert limiter.blocked("10.0.0.1") and not limiter.blocked("10.0.0.2")
    now[0] = 11.0
    assert not limiter.blocked("10.0.0.1")


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_parse_basic_header_never_raises(text: str) -> None:
    result = parse_basic_header(text)
    assert result is None or (isinstance(result[0], str) and isinstance(result[1], str))


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=400))
def test_parse_users_raises_only_config_errors(text: str) -> None:
    try:
        parse_users(text, "users")
    except ConfigError:
        pass


def test_hash_password_command_prints_a_line_the_users_file_reads(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO("a long passphrase\n"))
    assert cli_run(["console", "hash-password", "operator", "--pbkdf2"]) == 0
    line = capsys.readouterr().out.strip()
    users = parse_users(line, "users")
    assert users["operator"].matches("a long passphrase")
    assert "a long passphrase" not in line
    assert cli_run(["console", "hash-password", "bad name"]) == 2
