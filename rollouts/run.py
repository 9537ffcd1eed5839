"""The life of a training run, shared by PPO, GRPO, REINFORCE and SFT (the algorithm files hold only the algorithm).

    run = Run.start(cfg, train_value_head=True)       # process group, run dir, policy + LoRA, optimizer, resume
    for update in range(run.update + 1, cfg.total_updates + 1):
        ...collect / forward...
        run.backward(loss / cfg.grad_accum_steps)      # per micro-batch
        run.step()                                      # per optimizer step: all-reduce, NaN check, clip, AdamW
        run.end_update(update, metrics, env_steps=..., samples=...)   # lr schedule, log, callbacks, checkpoint
    run.finish()

Starting a run: the run directory must be writable (checked before the model is built). A run directory that
already holds a run is never overwritten: without --resume it is an error; with --resume its config.json must
match the new config (rollouts/config.py) and training continues from the newest readable checkpoint (weights,
optimizer, scheduler, counters, every rank's RNG states; a corrupt newer one is skipped with a warning), so that
the updates after it reproduce those of an uninterrupted run. A start that failed before its first update was
logged (e.g. a typo in env_kwargs) holds nothing worth keeping: a rerun, with or without --resume, replaces it.
The model's action dims and the unnorm key are checked before any work.

Stopping: a non-finite loss or gradient norm on any rank raises NonFiniteLossError on every rank before the
optimizer step; the last checkpoint on disk is the last good state.

Callbacks (eval/'s online KL monitor): `callbacks` passed to an algorithm's train() are called on every rank
every `cfg.callback_every` updates as callback(RunContext) and may return a dict of scalars, which rank 0 logs
with that update (use the "eval/" prefix). They run under torch.no_grad() with the policy in eval mode.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch

from rollouts import checkpoint, distributed
from rollouts.collect import Rollout
from rollouts.config import ConfigError, TrainConfig, check_resume_compatible, check_writable_dir, save_json
from rollouts.constants import ADAPTER_DIR, CHARTS, EPISODE_METRICS, CONFIG_FILE, ENV_STEPS, METRICS_FILE, SAMPLES, TIME, TRAINER_STATE_FILE, UPDATE
from rollouts.logger import RunLogger
from rollouts.tracking import WANDB_ID_FILE, start_wandb
from vla.config import ACTION_DIM
from vla.lora import LoraSettings
from vla.policy import VLAPolicy


class NonFiniteLossError(FloatingPointError):
    """The loss or gradient became NaN/inf; the run stopped before the optimizer step."""


@dataclass
class RunContext:
    """What a callback sees."""

    update: int
    policy: VLAPolicy
    cfg: TrainConfig
    run_dir: Path
    dist: distributed.DistInfo
    counters: dict[str, int]


Callback = Callable[[RunContext], Mapping[str, float] | None]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(cfg: TrainConfig, update: int) -> float:
    """Multiplier of the base learning rates for `update` (1-based): linear warm-up, then the schedule."""
    total = getattr(cfg, "total_updates")
    if cfg.warmup_updates and update <= cfg.warmup_updates:
        return update / cfg.warmup_updates
    progress = (update - 1 - cfg.warmup_updates) / max(1, total - cfg.warmup_updates)
    if cfg.lr_schedule == "linear":
        return max(0.0, 1.0 - progress)
    if cfg.lr_schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return 1.0


def build_policy(cfg: TrainConfig, device: torch.device, adapter_dir: Path | None = None) -> VLAPolicy:
    """The base model (a vla preset or checkpoint directory) with fresh LoRA, or with the adapters in adapter_dir."""
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
    policy = VLAPolicy.from_pretrained(cfg.model, device=device, dtype=dtype, n_action_bins=cfg.n_action_bins)
    if adapter_dir is not None:
        policy.load_adapters(adapter_dir, trainable=True)
    else:
        torch.manual_seed(cfg.seed)  # LoRA's initialization follows the run's seed (presets re-seed their weights)
        policy.add_lora(
            LoraSettings(r=cfg.lora_rank, alpha=cfg.lora_alpha, dropout=cfg.lora_dropout, lm_head=cfg.lora_lm_head)
        )
    if cfg.gradient_checkpointing:
        lm = policy.vla.language_model
        lm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return policy


def check_policy(policy: VLAPolicy, unnorm_key: str | None, action_dim: int = ACTION_DIM) -> None:
    """Fail before any work when the model cannot produce the env's actions."""
    if policy.action_tokenizer.n_bins != policy.vla.config.n_action_bins:
        raise ConfigError("the policy's action tokenizer and model disagree on the number of action bins")
    if action_dim != ACTION_DIM:
        raise ConfigError(f"the data/env has {action_dim}-D actions, the model emits {ACTION_DIM}-D actions")
    if unnorm_key is not None:
        try:
            stats = policy.action_stats(unnorm_key)
        except (KeyError, ValueError) as error:
            raise ConfigError(f"unnorm_key {unnorm_key!r} does not fit the model: {error}") from None
        if stats.q01.shape != (ACTION_DIM,):
            raise ConfigError(f"norm_stats[{unnorm_key!r}] has {stats.q01.shape[0]}-D actions, the model {ACTION_DIM}-D")


class Run:
    def __init__(self, cfg: TrainConfig, dist: distributed.DistInfo, run_dir: Path, policy: VLAPolicy,
                 optimizer: torch.optim.Optimizer, group_names: list[str], update: int, counters: dict[str, int],
                 logger: RunLogger, callbacks: Sequence[Callback]):  # fmt: skip
        self.cfg, self.dist, self.run_dir, self.policy = cfg, dist, run_dir, policy
        self.optimizer, self.group_names = optimizer, group_names
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.update, self.counters, self.logger, self.callbacks = update, counters, logger, list(callbacks)
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.start_time = time.time()
        self._bad_loss: float | None = None
        self._set_lr(update + 1)

    # ---- start ------------------------------------------------------------------------------------------------
    @classmethod
    def start(
        cls,
        cfg: TrainConfig,
        train_value_head: bool = False,
        value_learning_rate: float | None = None,
        callbacks: Sequence[Callback] = (),
        desc: str = "train",
        validate: Callable[[VLAPolicy], None] | None = None,
    ) -> "Run":
        """Set up the run (see the module docstring). `validate(policy)` may reject the data for this model; it
        runs after the model is built and before anything is written."""
        dist = distributed.init(cfg.device)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        run_dir = cfg.resolved_run_dir()
        checked: tuple[str | None, str | None] = (None, None)  # (checkpoint to resume, error)
        if dist.is_main:
            try:
                checked = (_check_run_dir(cfg, run_dir), None)
            except ConfigError as error:
                checked = (None, str(error))
        ckpt, error = distributed.broadcast_object(checked)  # every rank learns rank 0's verdict
        if error:
            raise ConfigError(error)
        ckpt = Path(ckpt) if ckpt else None

        seed_everything(cfg.seed)  # identical on every rank: identical model and LoRA initialization
        policy = build_policy(cfg, dist.device, ckpt / ADAPTER_DIR if ckpt else None)
        check_policy(policy, cfg.unnorm_key)
        if validate is not None:
            validate(policy)
        groups = [{"params": [p for p in policy.model.parameters() if p.requires_grad], "lr": cfg.learning_rate}]
        names = ["lora"]
        if train_value_head:
            groups.append({"params": list(policy.value_head.parameters()), "lr": value_learning_rate})
            names.append("value_head")
        else:
            policy.value_head.requires_grad_(False)
        optimizer = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
        distributed.broadcast_params([p for g in groups for p in g["params"]])

        update, counters = 0, {ENV_STEPS: 0, SAMPLES: 0}
        if ckpt:
            state = checkpoint.read_trainer_state(ckpt)
            if state["world_size"] != dist.world_size:
                raise ConfigError(f"{ckpt} was written by {state['world_size']} processes, this run has {dist.world_size}")
            checkpoint.load_optimizer(optimizer, ckpt, state["optimizer"])
            update, counters = state["counters"][UPDATE], {k: state["counters"][k] for k in (ENV_STEPS, SAMPLES)}
            checkpoint.set_rng_state(state["rng"][dist.rank])
        else:
            seed_everything(cfg.seed + 1000 * dist.rank)  # ranks sample differently from here on
        if dist.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            save_json(run_dir / CONFIG_FILE, cfg.to_dict())
        wandb_run = None
        if dist.is_main and cfg.wandb:
            wandb_run = start_wandb(cfg.wandb_settings(), run_dir, cfg.to_dict(), name=run_dir.name, job_type=desc)
        logger = RunLogger(run_dir, cfg.total_updates, update, enabled=dist.is_main, progress=cfg.progress, desc=desc,
                           wandb_run=wandb_run)  # fmt: skip
        distributed.barrier()
        return cls(cfg, dist, run_dir, policy, optimizer, names, update, counters, logger, callbacks)

    # ---- optimisation -----------------------------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        """Backward of one micro-batch loss (a non-finite loss is remembered and stops the run in step())."""
        if not bool(torch.isfinite(loss.detach()).all()):
            self._bad_loss = float(loss.detach().float().sum())
        loss.backward()

    def step(self) -> float:
        """Average gradients over ranks, clip, take the AdamW step; returns the gradient norm before clipping.
        A non-finite loss or gradient norm on any rank stops every rank here, before the weights change."""
        distributed.all_reduce_grads(self.params)
        grads = [p.grad for p in self.params if p.grad is not None]
        if self.cfg.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(self.params, self.cfg.max_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads])) if grads else torch.zeros(())
        bad = self._bad_loss is not None or not bool(torch.isfinite(norm))
        if distributed.any_flag(bad, self.dist.device):
            what = f"loss is {self._bad_loss}" if self._bad_loss is not None else f"gradient norm is {float(norm)}"
            self._nonfinite(what if bad else "the loss is not finite on another rank")
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def _nonfinite(self, what: str) -> None:
        last = checkpoint.latest_checkpoint(self.run_dir)
        self.logger.close()
        raise NonFiniteLossError(
            f"{what} at update {self.update + 1}; stopped before the optimizer step. "
            f"Last good checkpoint: {last or 'none (the run had not saved one yet)'}"
        )

    def _set_lr(self, update: int) -> None:
        factor = lr_factor(self.cfg, update)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def lrs(self) -> dict[str, float]:
        return {f"{CHARTS}lr_{name}": g["lr"] for name, g in zip(self.group_names, self.optimizer.param_groups)}

    # ---- end of an update -------------------------------------------------------------------------------------
    def end_update(self, update: int, metrics: Mapping[str, float], env_steps: int = 0, samples: int = 0) -> None:
        """Count, log (means over ranks), run callbacks, checkpoint; then set the next update's learning rates."""
        self.update = update
        self.counters[ENV_STEPS] += int(distributed.sum_(env_steps, self.dist.device))
        self.counters[SAMPLES] += int(distributed.sum_(samples, self.dist.device))
        row = {**distributed.mean(dict(metrics), self.dist.device), **self.lrs()}
        row.update({f"{CHARTS}{ENV_STEPS}": self.counters[ENV_STEPS], f"{CHARTS}{SAMPLES}": self.counters[SAMPLES]})
        if self.callbacks and self.cfg.callback_every and update % self.cfg.callback_every == 0:
            row.update(self._run_callbacks(update))
        self.logger.log(update, row)
        shown = {k: row[k] for k in ("charts/success_once", "losses/approx_kl", "losses/loss") if k in row}
        self.logger.advance(update, shown)
        if update % self.cfg.checkpoint_every == 0 or update == self.cfg.total_updates:
            self.save()
        self._set_lr(update + 1)

    def episode_metrics(self, episodes: Sequence[Mapping[str, float]]) -> dict[str, float]:
        """charts/<metric> means over the episodes that ended on all ranks, and charts/episodes (their count);
        {} when none ended."""
        sums = {k: float(sum(e[k] for e in episodes)) for k in EPISODE_METRICS}
        total = distributed.mean({**sums, "count": float(len(episodes))}, self.dist.device)
        if total["count"] == 0:
            return {}
        out = {f"{CHARTS}{k}": total[k] / total["count"] for k in EPISODE_METRICS}
        out[f"{CHARTS}episodes"] = total["count"] * self.dist.world_size
        return out

    def rl_timing_metrics(
        self, rollout: Rollout, env_steps: int, samples: int, collect_s: float, update_s: float
    ) -> dict[str, float]:
        """time/<metric> of one RL update: this rank's sim/inference/update seconds, throughput over all ranks."""
        world = self.dist.world_size
        return {
            f"{TIME}sim_s": rollout.sim_s,
            f"{TIME}inference_s": rollout.inference_s,
            f"{TIME}update_s": update_s,
            f"{TIME}env_steps_per_s": env_steps * world / collect_s,
            f"{TIME}samples_per_s": samples * world / update_s,
        }

    def _run_callbacks(self, update: int) -> dict[str, float]:
        ctx = RunContext(update, self.policy, self.cfg, self.run_dir, self.dist, dict(self.counters))
        out: dict[str, float] = {}
        was_training = self.policy.training
        self.policy.eval()
        t0 = time.perf_counter()
        with torch.no_grad():
            for callback in self.callbacks:
                out.update(callback(ctx) or {})
        out[f"{TIME}callbacks_s"] = time.perf_counter() - t0
        self.policy.train(was_training)
        return out

    def save(self) -> Path | None:
        """Checkpoint the current state (collective: every rank sends its RNG state; rank 0 writes)."""
        rngs = distributed.gather_objects(checkpoint.rng_state())
        path = None
        if self.dist.is_main:
            counters = {UPDATE: self.update, **self.counters}

            def write(folder: Path) -> None:
                self.policy.save_adapters(folder / ADAPTER_DIR)
                layout = checkpoint.save_optimizer(self.optimizer, folder)
                state = {"counters": counters, "optimizer": layout, "rng": rngs, "world_size": self.dist.world_size,
                         "group_names": self.group_names, "config": self.cfg.to_dict(),
                         "norm_stats": self.policy.vla.config.norm_stats}  # fmt: skip
                checkpoint.write_json(folder / TRAINER_STATE_FILE, state)

            path = checkpoint.write_atomic(self.run_dir, self.update, write, keep=self.cfg.keep_checkpoints)
        distributed.barrier()
        return path

    def finish(self, summary: str = "") -> dict[str, float]:
        """Close the logs with a summary line and leave the process group; returns the last logged metrics."""
        last = dict(self.logger.last)
        steps = self.counters[ENV_STEPS]
        text = f"done: {self.update}/{self.cfg.total_updates} updates, {steps} env steps, {self.counters[SAMPLES]} samples"
        self.logger.summary(f"{text}{'; ' + summary if summary else ''}")
        self.logger.close()
        distributed.shutdown()
        return last


def _check_run_dir(cfg: TrainConfig, run_dir: Path) -> str | None:
    """Validate the run directory against --resume; returns the checkpoint to resume from (or None)."""
    check_writable_dir(run_dir)
    saved_cfg = run_dir / CONFIG_FILE
    if saved_cfg.exists() and _failed_start(run_dir):
        print(f"note: {run_dir} holds a run that stopped before its first update; starting it again", file=sys.stderr)
        for name in (CONFIG_FILE, METRICS_FILE, "tb", "summary.txt", checkpoint.CHECKPOINTS, "wandb", WANDB_ID_FILE):
            path = run_dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        return None
    if not cfg.resume:
        if saved_cfg.exists() or checkpoint.list_checkpoints(run_dir):
            raise ConfigError(f"{run_dir} already holds a run: pass --resume to continue it, or choose another --run-dir")
        return None
    if not saved_cfg.exists():
        raise ConfigError(f"--resume given but {run_dir} holds no run ({CONFIG_FILE} is missing)")
    check_resume_compatible(json.loads(saved_cfg.read_text()), cfg, run_dir)
    checkpoint.remove_stale_temp(run_dir)
    ckpt = checkpoint.latest_readable_checkpoint(run_dir)
    return str(ckpt) if ckpt else None  # killed before its first checkpoint: start again from scratch


def _failed_start(run_dir: Path) -> bool:
    """The run in run_dir never finished an update: no checkpoint and nothing in its metrics log."""
    metrics = run_dir / METRICS_FILE
    return not checkpoint.list_checkpoints(run_dir) and (not metrics.exists() or metrics.stat().st_size == 0)
