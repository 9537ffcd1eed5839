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

from eval.experiment import PRESETS, Experiment, ExperimentConfig, Pi0OutOfWindow
from eval.stages import StageFailed
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
    """One experiment per seed in <run_dir>/seed_<k> (each resumable on its own), then the pooled report. With
    `pi0_window`, a seed whose pi0 falls outside it stops before fine-tuning and is left out (the report lists it)."""
    from eval.report import write_pooled_report

    root = Path(cfg.run_dir)
    if (root / "experiment.json").exists():
        raise ConfigError(f"{root} holds a single experiment; give the seeds a run directory of their own "
                          "(--run-dir), or pool it with others by scripts/pool.py")
    dirs, left_out = [], []
    for seed in seeds:
        run_dir = root / f"seed_{seed}"
        print(f"[seeds] seed {seed}: {run_dir}", flush=True)
        experiment = Experiment(dataclasses.replace(cfg, seed=seed, run_dir=str(run_dir)))
        try:
            experiment.run_all()
        except (Pi0OutOfWindow, StageFailed):
            if not experiment.pi0_outside_window():
                raise
            k, n = experiment.pi0_new_success()
            print(f"[seeds] seed {seed}: pi0 solved the new task {k}/{n}, outside --pi0-window {cfg.pi0_window}: "
                  "left out of the pool", flush=True)
            left_out.append({"seed": seed, "dir": str(run_dir), "successes": k, "episodes": n})
            continue
        dirs.append(run_dir)
    if len(dirs) < 2:
        outside = ", ".join(f"seed {d['seed']}: {d['successes']}/{d['episodes']}" for d in left_out)
        raise ConfigError(f"only {len(dirs)} of seeds {seeds} gave a pi0 inside --pi0-window {cfg.pi0_window} "
                          f"(outside: {outside}): add seeds (finished ones are kept) to pool at least two")
    return write_pooled_report(root, dirs, title=f"RL's Razor experiment ({cfg.preset}), seeds {seeds} pooled",
                               left_out=left_out, window=cfg.pi0_window)


@entry_point
def main(args: list[str] | None = None) -> None:
    args, seeds = _split_seeds(_ray_address_optional(sys.argv[1:] if args is None else args))
    presets = {name: (f"{name} preset", cfg) for name, cfg in PRESETS.items()}
    cfg: ExperimentConfig = tyro.extras.overridable_config_cli(presets, args=args, prog="razor")
    report = run_seeds(cfg, seeds) if seeds else Experiment(cfg).run_all()
    print(f"report: {report}")


if __name__ == "__main__":
    main(sys.argv[1:])
