"""The whole RL's Razor experiment: pi0, RL and SFT sweeps on a new task, evaluations, predictors, report.

    python -m scripts.razor quick                       # the pipeline on toy tasks (minutes)
    python -m scripts.razor parity                      # the known-answer experiment on toy/parity (about an hour)
    python -m scripts.razor cpu                         # the main CPU job (tiny VLA, Meta-World)
    python -m scripts.razor cpu-full                    # the powered study (every method, hours)
    python -m scripts.razor openvla-7b --model /data/openvla-7b      # one A100
    python -m scripts.razor cpu --updates 8 --run-dir runs/mine       # any field can be overridden
    python -m scripts.razor cpu --workers 2             # up to 2 stages at once (training runs, evaluations)
    python -m scripts.razor cpu --ray                   # stages as tasks of a local Ray instance
    python -m scripts.razor cpu --ray HOST:6379         # ... or of a Ray cluster (run dir on shared storage)
    python -m scripts.razor cpu --seeds 0 1 2 3         # one experiment per seed (own demos, pi0, runs) in
                                                        # <run_dir>/seed_<k>, then the pooled report (scripts/pool.py)

Rerunning the same command resumes: finished stages are skipped (eval/stages.py). The stages and outputs are
described in eval/experiment.py; the report is <run_dir>/report.md (with --seeds: each seed's in its directory,
the pooled one in <run_dir>).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import tyro

from eval.experiment import PRESETS, Experiment, ExperimentConfig
from rollouts.config import ConfigError
from scripts.cli import entry_point


def _ray_address_optional(args: list[str]) -> list[str]:
    """`--ray` without an address means a local Ray instance (`--ray local`)."""
    out = list(args)
    for i, a in enumerate(out):
        if a == "--ray" and (i + 1 == len(out) or out[i + 1].startswith("-")):
            out.insert(i + 1, "local")
            break
    return out


def _split_seeds(args: list[str]) -> tuple[list[str], list[int]]:
    """`--seeds K [K ...]` taken out of the arguments (it is not a field of one experiment's config)."""
    if "--seeds" not in args:
        return args, []
    i = args.index("--seeds")
    j = i + 1
    while j < len(args) and not args[j].startswith("-"):
        j += 1
    try:
        seeds = [int(a) for a in args[i + 1:j]]
    except ValueError:
        raise ConfigError(f"--seeds takes integers, got {args[i + 1:j]}") from None
    if len(seeds) < 2 or len(set(seeds)) < len(seeds):
        raise ConfigError(f"--seeds needs at least two distinct seeds, got {args[i + 1:j]}")
    return args[:i] + args[j:], seeds


def run_seeds(cfg: ExperimentConfig, seeds: list[int]) -> Path:
    """One experiment per seed in <run_dir>/seed_<k> (each resumable on its own), then the pooled report."""
    from eval.report import write_pooled_report

    root = Path(cfg.run_dir)
    if (root / "experiment.json").exists():
        raise ConfigError(f"{root} holds a single experiment; give the seeds a run directory of their own "
                          "(--run-dir), or pool it with others by scripts/pool.py")
    dirs = []
    for seed in seeds:
        print(f"[seeds] seed {seed}: {root / f'seed_{seed}'}", flush=True)
        Experiment(dataclasses.replace(cfg, seed=seed, run_dir=str(root / f"seed_{seed}"))).run_all()
        dirs.append(root / f"seed_{seed}")
    return write_pooled_report(root, dirs, title=f"RL's Razor experiment ({cfg.preset}), seeds {seeds} pooled")


@entry_point
def main(args: list[str] | None = None) -> None:
    args, seeds = _split_seeds(_ray_address_optional(sys.argv[1:] if args is None else args))
    presets = {name: (f"{name} preset", cfg) for name, cfg in PRESETS.items()}
    cfg: ExperimentConfig = tyro.extras.overridable_config_cli(presets, args=args, prog="razor")
    report = run_seeds(cfg, seeds) if seeds else Experiment(cfg).run_all()
    print(f"report: {report}")


if __name__ == "__main__":
    main(sys.argv[1:])
