"""Weights & Biases beside TensorBoard and metrics.jsonl: the same metric names against the same x-axis (`update`),
the run's config, and (eval/evaluate.py) the eval suite's tables and videos.

Modes: "online" needs a W&B login (WANDB_API_KEY or `wandb login`); "offline" writes <dir>/wandb/offline-run-*/
for `wandb sync` later; "auto" follows WANDB_MODE when it is set, else goes online when an API key is known and
offline otherwise, so that a machine without network or login still logs. A resumed training run continues its
W&B run: the id is kept in <run_dir>/wandb_run_id.
"""

from __future__ import annotations

import netrc
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rollouts.constants import UPDATE

WANDB_ID_FILE = "wandb_run_id"
WandbMode = Literal["auto", "online", "offline"]


@dataclass(frozen=True)
class WandbSettings:
    project: str = "razor"
    entity: str | None = None
    group: str | None = None
    mode: WandbMode = "auto"


def resolve_mode(mode: WandbMode) -> str:
    """The mode wandb.init gets (see the module docstring)."""
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        logged_in = netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        logged_in = False
    return "online" if logged_in else "offline"


def start_wandb(settings: WandbSettings, run_dir: Path, config: dict[str, Any], name: str, job_type: str,
                keep_id: bool = True):  # fmt: skip
    """A W&B run writing into run_dir/wandb, every metric plotted against `update`. With keep_id, the run's id is
    stored in run_dir and reused, so that a resumed training run continues the same W&B run."""
    try:
        import wandb
    except ImportError:
        from rollouts.config import ConfigError

        raise ConfigError("--wandb needs the wandb package: pip install 'razor[wandb]'") from None
    run_id = None
    id_file = run_dir / WANDB_ID_FILE
    if keep_id:
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        id_file.write_text(run_id)
    run = wandb.init(project=settings.project, entity=settings.entity, group=settings.group, name=name,
                     job_type=job_type, config=config, dir=str(run_dir), id=run_id,
                     resume="allow" if keep_id else None, mode=resolve_mode(settings.mode))  # fmt: skip
    run.define_metric(UPDATE)
    run.define_metric("*", step_metric=UPDATE)
    return run
