"""The whole RL's Razor experiment: pi0, PPO and SFT sweeps on a new task, evaluations, KL, report.

    python -m scripts.razor quick                       # the pipeline on toy tasks (minutes)
    python -m scripts.razor cpu                         # the main CPU job (tiny VLA, Meta-World)
    python -m scripts.razor openvla-7b --model /data/openvla-7b      # one A100
    python -m scripts.razor cpu --updates 8 --run-dir runs/mine       # any field can be overridden

Rerunning the same command resumes: finished stages are skipped (eval/stages.py). The stages and outputs are
described in eval/experiment.py; the report is <run_dir>/report.md.
"""

from __future__ import annotations

import sys

import tyro

from eval.experiment import PRESETS, Experiment, ExperimentConfig
from scripts.cli import entry_point


@entry_point
def main(args: list[str] | None = None) -> None:
    presets = {name: (f"{name} preset", cfg) for name, cfg in PRESETS.items()}
    cfg: ExperimentConfig = tyro.extras.overridable_config_cli(presets, args=args, prog="razor")
    report = Experiment(cfg).run_all()
    print(f"report: {report}")


if __name__ == "__main__":
    main(sys.argv[1:])
