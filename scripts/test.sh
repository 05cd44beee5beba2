#!/usr/bin/env bash
# Set up with the test tools, then run the whole test suite (unit, integration
# with real SUMO, SoftHSM2 and OPC UA on 127.0.0.1, and end-to-end).
# Extra arguments go to pytest (e.g. -m "not slow", -k ledger).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
exec .venv/bin/python -m pytest "$@"
