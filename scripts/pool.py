"""Pool finished experiments of one preset (e.g. one per seed) into one report: verdicts with a two-level bootstrap
over the experiments and their checkpoints, one row per experiment, the predictor table (eval/report.py).

    python -m scripts.pool runs/razor-cpu runs/razor-cpu-seed1 runs/razor-cpu-seed2 --out runs/razor-cpu-pooled

`python -m scripts.razor cpu --seeds 0 1 2` runs the experiments and pools them in one command.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import tyro

from scripts.cli import entry_point


@dataclass
class PoolConfig:
    """Experiments to pool and where the pooled report goes."""

    dirs: tyro.conf.Positional[tuple[str, ...]]
    """Experiment run directories (at least two, distinct names; each with its pi0 and checkpoints evaluated)."""
    out: str = "runs/razor-pooled"
    """Directory of the pooled report.md and analysis/."""
    n_boot: int = 1000
    """Bootstrap replicates."""


@entry_point
def main(args: list[str] | None = None) -> None:
    from eval.report import write_pooled_report
    from rollouts.config import ConfigError

    cfg = tyro.cli(PoolConfig, args=sys.argv[1:] if args is None else args, prog="razor-pool")
    try:
        path = write_pooled_report(cfg.out, list(cfg.dirs), n_boot=cfg.n_boot)
    except (ValueError, FileNotFoundError) as e:
        raise ConfigError(str(e)) from None
    print(f"report: {path}")


if __name__ == "__main__":
    main(sys.argv[1:])
