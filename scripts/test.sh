#!/usr/bin/env bash
# The test command: installs what the tests need (idempotent), then runs pytest. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow tests or `bash scripts/test.sh tests/test_vla_model.py`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# One OpenMP thread per process: the tests run tiny models beside simulator workers on 2 cores, where more
# threads oversubscribe the CPU (the vla tests ran ~2.5x faster this way).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m pytest "$@"
