#!/usr/bin/env bash
# The main job: the whole RL's Razor experiment on CPU (preset `cpu`: tiny VLA, Meta-World). Installs what it needs
# (idempotent), then runs scripts/razor.py; rerunning resumes, skipping finished stages. Extra arguments override
# the preset, e.g. `bash scripts/main.sh --run-dir runs/mine`; `RAZOR_PRESET=quick bash scripts/main.sh` for the
# five-minute version.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$ROOT/scripts/setup.sh"
cd "$ROOT"
# Small models on 2 cores: one BLAS/OpenMP thread per process avoids oversubscription with the env workers
# (measured ~10x faster per update on a loaded 2-core machine).
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$ROOT/.venv/bin/python" -m scripts.razor "${RAZOR_PRESET:-cpu}" --num-threads "${OMP_NUM_THREADS}" "$@"
