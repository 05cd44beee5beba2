"""The Ray backend of training without a cluster: what an unreachable one costs and says."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from configs.errors import ConfigError
from controller.cli import run
from controller.exit_codes import ExitCode
from rl.ray_env import connect

ROOT = Path(__file__).resolve().parents[2]
DISTRICT = ROOT / "configs" / "district"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never says a word (not a Ray GCS)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def test_an_address_nothing_listens_on_fails_at_once_saying_what_to_do() -> None:
    address = f"127.0.0.1:{_free_port()}"
    started = time.monotonic()
    with pytest.raises(ConfigError) as caught:
        connect(address, "signaltwin", timeout_s=3.0)
    assert time.monotonic() - started < 3.0
    message = str(caught.value)
    assert f"Ray cluster at {address} unreachable after" in message
    assert "ray start --head" in message and '[compute] backend = "local"' in message


@pytest.mark.slow
def test_a_port_that_never_answers_costs_the_connect_timeout_not_minutes(
    silent_port: int,
) -> None:
    # in a process of its own: ray.init stays behind in a thread after the timeout
    probe = (
        "import time, sys\n"
        "from configs.errors import ConfigError\n"
        "from rl.ray_env import connect\n"
        "started = time.monotonic()\n"
        "try:\n"
        f"    connect('127.0.0.1:{silent_port}', 'signaltwin', timeout_s=3.0)\n"
        "except ConfigError as e:\n"
        "    print(f'{time.monotonic() - started:.2f}', e)\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    elapsed, message = done.stdout.strip().split(" ", 1)
    assert 2.9 <= float(elapsed) < 4.0
    assert "unreachable after 3.0 s: ray.init did not return" in message
    assert "SIGTERM handler" not in done.stderr


def test_the_local_backend_never_imports_ray() -> None:
    probe = (
        "import sys\n"
        "import rl, rl.env, rl.train, controller.commands.train\n"
        "sys.exit(int('ray' in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, cwd=ROOT, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr


def test_train_on_an_unreachable_cluster_is_a_usage_error_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    config = tmp_path / "ray.toml"
    config.write_text(
        f'[simulation]\nnetwork = "{DISTRICT / "district.net.xml"}"\n'
        f'detectors = "{DISTRICT / "district.det.add.xml"}"\n'
        f'[compute]\nbackend = "ray"\naddress = "{address}"\nconnect_timeout_s = 3\n',
        encoding="utf-8",
    )
    out = tmp_path / "run" / "policy.pt"
    argv = ["train", "--config", str(config), "--timesteps", "1", "--out", str(out)]
    assert run(argv) == ExitCode.USAGE
    err = capsys.readouterr().err
    assert f"Ray cluster at {address} unreachable" in err
    assert not out.exists() and not (out.parent / "checkpoints").exists()
