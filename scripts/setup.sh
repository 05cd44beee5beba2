#!/usr/bin/env bash
# Set up signaltwin on a Debian machine: system packages, .venv, the package.
#
#   scripts/setup.sh          runtime (softhsm2, .venv with signaltwin)
#   scripts/setup.sh --dev    also test tools (ffmpeg's ffprobe, chromium, pytest, ruff, mypy)
#
# Idempotent: a second run installs nothing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
if [ "${1:-}" = "--dev" ]; then dev=1; fi

say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages ------------------------------------------------------
packages=(softhsm2)
# Debian's python3 needs python3-venv for `python3 -m venv`; other Pythons have it built in
"${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
if [ "$dev" = 1 ]; then
    packages+=(ffmpeg chromium)
    # systemd-analyze checks the shipped unit in the tests (verify, security --offline)
    command -v systemd-analyze >/dev/null 2>&1 || packages+=(systemd)
fi
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null; then SUDO="sudo"; else
        say "need root (or sudo) to install: ${missing[*]}"; exit 1; fi
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- python ---------------------------------------------------------------
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
    say "Python >= 3.11 is required ($PY is $("$PY" --version 2>&1))"; exit 1
fi
[ -x .venv/bin/python ] || { say "creating .venv"; "$PY" -m venv .venv; }

extra=""
stamp=".venv/.signaltwin-setup"
if [ "$dev" = 1 ]; then
    extra="[dev]"
    stamp="$stamp-dev"
fi
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import configs, torch' 2>/dev/null; then
    say "python environment up to date"
else
    # torch first, pinned: its CPU build; a range in pyproject.toml that 2.13.0
    # satisfies then makes pip install nothing more (never a CUDA build).
    if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
        say "installing torch==2.13.0 (CPU build)"
        .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
    fi
    say "installing signaltwin$extra into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e ".$extra"
    echo "$want" > "$stamp"
fi
say "ready: .venv/bin/signaltwin"
