"""The whole RL's Razor experiment: pi0, PPO and SFT sweeps on a new task, evaluations, KL, report.

    python -m scripts.razor quick                       # the pipeline on toy tasks (minutes)
    python -m scripts.razor cpu                         # the main CPU job (tiny VLA, Meta-World)
    python -m scripts.razor openvla-7b --model /data/openvla-7b      # one A100
    python -m scripts.razor cpu --updates 8 --run-dir runs/mine       # any field can be overridden
    python -m scripts.razor cpu --workers 2             # up to 2 stages at once (training runs, evaluations)
    python -m scripts.razor cpu --ray                   # stages as tasks of a local Ray instance
    python -m scripts.razor cpu --ray HOST:6379         # ... or of a Ray cluster (run dir on shared storage)

Rerunning the same command resumes: finished stages are skipped (eval/stages.py). The stages and outputs are
described in eval/experiment.py; the report is <run_dir>/report.md.
"""

from __future__ import annotations

import sys

import tyro

from eval.experiment import PRESETS, Experiment, ExperimentConfig
from scripts.cli import entry_point


def _ray_address_optional(args: list[str]) -> list[str]:
    """`--ray` without an address means a local Ray instance (`--ray local`)."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--ray" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "local")
            break
    return out


@entry_point
def main(args: list[str] | None = None) -> None:
    args = _ray_address_optional(sys.argv[1:] if args is None else args)
    presets = {name: (f"{name} preset", cfg) for name, cfg in PRESETS.items()}
    cfg: ExperimentConfig = tyro.extras.overridable_config_cli(presets, args=args, prog="razor")
    report = Experiment(cfg).run_all()
    print(f"report: {report}")


if __name__ == "__main__":
    main(sys.argv[1:])
