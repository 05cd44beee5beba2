#!/usr/bin/env bash
# Set up signaltwin on a Debian machine: system packages, .venv, the package.
#
#   scripts/setup.sh          runtime (softhsm2, .venv with signaltwin)
#   scripts/setup.sh --dev    also test tools (ffmpeg's ffprobe, chromium + chromedriver,
#                             promtool, pytest, ruff, mypy)
#
# Idempotent: a second run installs nothing when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."

dev=0
if [ "${1:-}" = "--dev" ]; then dev=1; fi

say() { printf '[setup] %s\n' "$*" >&2; }

# --- system packages ------------------------------------------------------
# fonts-dejavu-core: DejaVu Sans, the what-if video's text (edge_accel/font.py)
packages=(softhsm2 fonts-dejavu-core)
# Debian's python3 needs python3-venv for `python3 -m venv`; other Pythons have it built in
"${PYTHON:-python3}" -c 'import ensurepip, venv' 2>/dev/null || packages+=(python3-venv)
if [ "$dev" = 1 ]; then
    # chromium + chromium-driver: the browser tests (console, audit report, via selenium);
    # prometheus: promtool checks the shipped alerting rules
    packages+=(ffmpeg chromium chromium-driver prometheus)
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
TORCH_CPU_INDEX="https://download.pytorch.org/whl/cpu"

# Fail loudly rather than run (or keep) a CUDA build: say what is installed.
check_cpu_torch() {
    local cuda nvidia
    cuda="$(.venv/bin/python -c 'import torch; print(torch.version.cuda or "")')"
    nvidia="$(.venv/bin/pip list --disable-pip-version-check 2>/dev/null | awk 'tolower($1) ~ /^nvidia-/ {print $1}' | tr '\n' ' ')"
    if [ -n "$cuda" ] || [ -n "$nvidia" ]; then
        say "torch is a CUDA build (CUDA ${cuda:-?}; packages: ${nvidia:-none}); signaltwin needs the CPU build."
        say "Remove it (.venv/bin/pip uninstall -y torch ${nvidia}) and run this again where $TORCH_CPU_INDEX is reachable."
        exit 1
    fi
    say "torch $(.venv/bin/python -c 'import torch; print(torch.__version__)') (CPU build)"
}
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && .venv/bin/python -c 'import configs, torch' 2>/dev/null; then
    say "python environment up to date"
else
    # torch first, pinned: its CPU build; a range in pyproject.toml that 2.13.0
    # satisfies then makes pip install nothing more (never a CUDA build). On the
    # public index alone the default Linux wheel is the CUDA build (gigabytes):
    # PyTorch's CPU wheel index is used whenever it answers.
    if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
        if .venv/bin/python -c "import urllib.request as u; u.urlopen('$TORCH_CPU_INDEX/torch/', timeout=10)" 2>/dev/null; then
            say "installing torch==2.13.0 from PyTorch's CPU wheel index ($TORCH_CPU_INDEX)"
            .venv/bin/pip install -q --disable-pip-version-check --index-url "$TORCH_CPU_INDEX" "torch==2.13.0"
        else
            say "PyTorch's CPU wheel index is unreachable; installing torch==2.13.0 from pip's configured index"
            .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
        fi
    fi
    check_cpu_torch
    say "installing signaltwin$extra into .venv"
    .venv/bin/pip install -q --disable-pip-version-check -e ".$extra"
    check_cpu_torch
    echo "$want" > "$stamp"
fi
say "ready: .venv/bin/signaltwin"
