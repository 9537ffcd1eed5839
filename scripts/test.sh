#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tests or `bash scripts/test.sh tests/test_vla_model.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
