"""Run logging: TensorBoard scalars, one JSON line per logged update, a tqdm bar with ETA and a summary line; with
a W&B run (rollouts/tracking.py) the same scalars under the same names, against `update`.

Only rank 0 logs (the others get a logger whose methods do nothing). metrics.jsonl holds one object per logged
update: {"update": n, "env_steps": ..., "<prefix/name>": value, ...} with the names of rollouts/constants.py.
On resume the lines and TensorBoard events after the restored update are dropped (they belong to updates that
will be redone), so a resumed run's log reads like an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from tqdm import tqdm

from rollouts.constants import METRICS_FILE, UPDATE


class RunLogger:
    def __init__(
        self,
        run_dir: str | Path,
        total_updates: int,
        start_update: int = 0,
        enabled: bool = True,
        progress: bool = True,
        desc: str = "train",
        wandb_run=None,
    ):
        self.enabled = enabled
        self.run_dir = Path(run_dir)
        self.start_time = time.time()
        self.last: dict[str, float] = {}  # the last logged row's numbers (with "update")
        self._tb = None
        self._bar = None
        self._wandb = wandb_run
        if not enabled:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / METRICS_FILE
        _truncate_jsonl(self.metrics_path, start_update)
        from torch.utils.tensorboard import SummaryWriter  # imported here: tensorboard is slow to import

        # purge_step: TensorBoard drops the earlier event files' points from this update on (a resume redoes them;
        # from update 1 too, when the run was resumed before its first checkpoint)
        self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_update + 1)
        self._jsonl = open(self.metrics_path, "a")
        if progress:
            self._bar = tqdm(total=total_updates, initial=start_update, desc=desc, dynamic_ncols=True,
                             file=sys.stderr, unit="upd")

    def log(self, update: int, metrics: Mapping[str, Any]) -> None:
        """Write the scalars of one update (non-numeric values go to JSONL only)."""
        if not self.enabled:
            return
        row = {UPDATE: int(update)}
        scalars = {}
        for key, value in metrics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                row[key] = value
                continue
            row[key] = float(value)
            if "/" in key and math.isfinite(value):
                self._tb.add_scalar(key, value, update)
                scalars[key] = float(value)
        if self._wandb is not None:
            self._wandb.log({UPDATE: int(update), **scalars})
        self._jsonl.write(json.dumps(row) + "\n")
        self._jsonl.flush()
        os.fsync(self._jsonl.fileno())
        self.last = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}

    def advance(self, update: int, postfix: Mapping[str, float] | None = None) -> None:
        """Move the progress bar to `update` (completed updates) with a short postfix."""
        if self._bar is None:
            return
        self._bar.update(update - self._bar.n)
        if postfix:
            self._bar.set_postfix({k.split("/")[-1]: f"{v:.3g}" for k, v in postfix.items()}, refresh=False)

    def summary(self, text: str) -> None:
        """Print the final summary line (stdout) and keep it in the run folder."""
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        line = f"[{self.run_dir.name}] {text} ({time.time() - self.start_time:.1f}s)"
        print(line, flush=True)
        with open(self.run_dir / "summary.txt", "a") as f:
            f.write(line + "\n")

    def close(self) -> None:
        if not self.enabled:
            return
        if self._bar is not None:
            self._bar.close()
        self._tb.flush()
        self._tb.close()
        self._jsonl.close()
        if self._wandb is not None:
            self._wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """The metrics.jsonl rows of a run, in order."""
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, keep_through: int) -> None:
    """Drop rows with update > keep_through (and a torn last line from a kill)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if row.get(UPDATE, 0) <= keep_through:
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)
