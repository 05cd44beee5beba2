#!/usr/bin/env bash
# The main job: set up, then run the local demo (field emulator, emulated OPC UA
# controllers, SoftHSM2 token, daemon) until Ctrl-C. Extra arguments go to
# `signaltwin demo` (e.g. --cycles 3).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/signaltwin demo "$@"
