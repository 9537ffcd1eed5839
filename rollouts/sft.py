"""Supervised fine-tuning on demonstrations with LoRA (OpenVLA's fine-tuning objective), optionally + KL to pi0.

Loss: cross-entropy of the 7 demonstrated action tokens, teacher-forced, averaged over tokens and samples
(OpenVLA's finetune.py also counts the stop token; the policies here always emit exactly 7 tokens, so it is left
out). Labels are the demonstrated actions normalized with the model's statistics for `unnorm_key` (None: the
actions are already in [-1, 1], the env contract's range) and tokenized by the model's action tokenizer.
SFT + KL (the hybrid RL's Razor proposes): with kl_coef > 0 the loss adds kl_coef * KL(pi0 || pi) of the
7-token action on the batch's observations (per token the exact KL over the action bins at the demonstrated
prefix, summed over tokens), with pi0 the same model with its adapters disabled.

Data: a demo dataset of envs/demos.py, a LeRobot v3 dataset or ManiSkill3 trajectories (envs/formats.py), streamed: each epoch visits the episodes in a seeded random order,
windows of `shuffle_window` batches are shuffled internally, and batch u is a pure function of (seed, u), so a
resumed run reads exactly the batches the uninterrupted run would have. With torchrun each rank takes its slice
of every global batch.

Run it with scripts/train_sft.py, or call train(SFTConfig(...)).
"""

from __future__ import annotations

import time
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from envs.demos import DemoDataset, generate_demos
from envs.formats import DemoFormatError, open_demos
from envs.registry import ACTION_DIM, ACTION_HIGH, ACTION_LOW
from rollouts.config import ConfigError, TrainConfig, check
from rollouts.constants import CHARTS, LOSSES, TIME
from rollouts.ppo import kl_to_base
from rollouts.run import Callback, Run
from vla.policy import VLAPolicy


@dataclass
class SFTConfig(TrainConfig):
    """SFT hyperparameters (on top of the shared run/model fields)."""

    dataset: str = ""
    """Demonstrations: an envs/demos.py directory (meta.json + episode_*.npz), a LeRobot v3 dataset directory
    (meta/info.json) or a ManiSkill3 trajectory file (.h5 + .json); see envs/formats.py."""
    dataset_image_key: str | None = None
    """LeRobot: the image feature (default observation.images.image, else the first); ManiSkill: the camera."""
    dataset_action_key: str | None = None
    """LeRobot: the action feature (default "action")."""
    dataset_instruction: str | None = None
    """The instruction for every episode, replacing the dataset's task strings (ManiSkill trajectories have none;
    default: the registered instruction of their env id)."""
    generate_demos: int = 0
    """When `dataset` holds no dataset yet: first generate this many demos of demo_task into it with the task's
    scripted expert (single process only; 0: never)."""
    demo_task: str = "toy/color-side"
    """Task whose expert generate_demos uses."""
    demo_env_kwargs: dict[str, int | float | bool | str] = field(default_factory=dict)
    """envs.make options for generate_demos (e.g. image_size)."""
    checkpoint_every: int = 50
    """Write a checkpoint every this many updates (and at the end); SFT steps are cheap, so not every one."""
    batch_size: int = 32
    """Samples per optimizer update over all ranks (split into grad_accum_steps micro-batches per rank)."""
    shuffle_window: int = 16
    """Batches per shuffle window of the streamed dataset (memory holds one window's episodes)."""
    kl_coef: float = 0.0
    """SFT + KL: weight of KL(pi0 || pi) on the batch's observations (0: plain SFT)."""
    log_kl: bool = True
    """Compute and log KL(pi0 || pi) even when kl_coef is 0 (one extra forward with adapters disabled)."""
    eval_samples: int = 64
    """Size of a fixed held-in batch (the first steps of the dataset) whose action-token accuracy is logged as
    charts/token_accuracy every eval_every updates (0: off)."""
    eval_every: int = 10
    """Updates between token-accuracy evaluations."""
    action_stat_tolerance: float = 0.25
    """With unnorm_key: how far (in units of the model's q01..q99 range) the dataset's 1st/99th action
    percentiles may lie outside the model's q01/q99 before the dataset is rejected as not matching."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.generate_demos >= 0, f"generate_demos must be >= 0, got {self.generate_demos}")
        check(self.batch_size >= 1 and self.shuffle_window >= 1, "batch_size and shuffle_window must be >= 1")
        check(self.kl_coef >= 0, f"kl_coef must be >= 0, got {self.kl_coef}")
        check(self.eval_samples >= 0 and self.eval_every >= 1, "eval_samples must be >= 0 and eval_every >= 1")

    def run_name(self) -> str:
        kl = f"_kl{self.kl_coef:g}" if self.kl_coef else ""
        return f"sft_{Path(self.dataset).name}_{super().run_name()}_b{self.batch_size}{kl}"


# ---- helpers ---------------------------------------------------------------------------------------------------
class DemoBatches:
    """Seeded, position-addressable minibatches over a streamed DemoDataset (see the module docstring)."""

    def __init__(self, dataset: DemoDataset, batch_size: int, seed: int, window: int):
        self.dataset, self.batch_size, self.seed, self.window = dataset, batch_size, seed, window
        self.lengths = np.array([e["length"] for e in dataset.meta["episodes"]], dtype=np.int64)
        self.batches_per_epoch = int(self.lengths.sum()) // batch_size
        if self.batches_per_epoch == 0:
            raise ConfigError(f"{dataset.root} has {int(self.lengths.sum())} steps, fewer than batch_size={batch_size}")
        self._cache: dict[int, dict[str, np.ndarray]] = {}
        self._cache_key: tuple[int, int] | None = None

    def batch(self, update: int) -> dict[str, Any]:
        """Global batch number `update` (0-based): images uint8 [B, H, W, 3], instructions (B str), actions [B, 7],
        and where each sample comes from: episodes, steps (int [B])."""
        epoch, b = divmod(update, self.batches_per_epoch)
        window, j = divmod(b, self.window)
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
        ends = np.cumsum(self.lengths[order])  # step positions of the epoch's stream
        lo = window * self.window * self.batch_size
        hi = min(lo + self.window * self.batch_size, self.batches_per_epoch * self.batch_size)
        shuffled = lo + np.random.default_rng([self.seed, epoch, window]).permutation(hi - lo)
        positions = shuffled[j * self.batch_size : (j + 1) * self.batch_size]
        slots = np.searchsorted(ends, positions, side="right")  # index into `order`
        steps = positions - np.concatenate([[0], ends])[slots]
        if self._cache_key != (epoch, window):
            self._cache, self._cache_key = {}, (epoch, window)
        images, instructions, actions = [], [], []
        episodes = order[slots]
        for slot, t in zip(slots.tolist(), steps.tolist()):
            episode = int(order[slot])
            if episode not in self._cache:
                self._cache[episode] = self.dataset.episode(episode, ("images", "actions", "instruction"))
            ep = self._cache[episode]
            images.append(ep["images"][t])
            actions.append(ep["actions"][t])
            instructions.append(str(ep["instruction"]))
        return {"images": np.stack(images), "instructions": instructions, "actions": np.stack(actions),
                "episodes": episodes, "steps": steps}  # fmt: skip


def open_dataset(cfg: SFTConfig):
    """The demonstrations of cfg.dataset (envs/formats.py's open_demos), generated first when cfg.generate_demos
    asks for it."""
    if not cfg.dataset:
        raise ConfigError("dataset is required: the directory of a demo dataset (python -m envs demos ...)")
    path = Path(cfg.dataset)
    if path.suffix != ".h5" and not (path / "meta" / "info.json").is_file() and not (path / "meta.json").is_file():
        if not cfg.generate_demos:
            raise ConfigError(f"dataset {cfg.dataset!r} is not a demo dataset directory (no meta.json)")
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ConfigError(f"generate the dataset {cfg.dataset!r} before a multi-process run (python -m envs demos)")
        generate_demos(cfg.demo_task, cfg.generate_demos, cfg.dataset, seed=cfg.seed, env_options=cfg.demo_env_kwargs,
                       log=lambda line: None)  # fmt: skip
    try:
        return open_demos(path, image_key=cfg.dataset_image_key, action_key=cfg.dataset_action_key,
                          instruction=cfg.dataset_instruction)  # fmt: skip
    except DemoFormatError as error:
        raise ConfigError(str(error)) from None


def check_dataset(dataset: DemoDataset, policy: VLAPolicy, cfg: SFTConfig) -> None:
    """Reject, before training, a dataset whose actions do not fit the model (dims, normalization statistics)."""
    if len(dataset) == 0:
        raise ConfigError(f"{dataset.root} holds no episodes")
    actions = dataset.episode(0, ("actions",))["actions"]
    for i in range(1, min(len(dataset), 20)):
        actions = np.concatenate([actions, dataset.episode(i, ("actions",))["actions"]])
    if actions.ndim != 2 or actions.shape[1] != ACTION_DIM:
        raise ConfigError(
            f"{dataset.root} has actions of shape {actions.shape[1:]}, the model emits {ACTION_DIM}-D actions "
            "[dx, dy, dz, droll, dpitch, dyaw, gripper]"
        )
    if cfg.unnorm_key is None:
        if (actions < ACTION_LOW - 1e-4).any() or (actions > ACTION_HIGH + 1e-4).any():
            raise ConfigError(
                f"{dataset.root} has actions outside the env contract's range [-1, 1] (gripper [0, 1]) and no "
                "unnorm_key was given to normalize them with the model's statistics"
            )
        return
    stats = policy.action_stats(cfg.unnorm_key)
    span = np.maximum(stats.q99 - stats.q01, 1e-6)
    lo, hi = np.percentile(actions, 1, axis=0), np.percentile(actions, 99, axis=0)
    outside = stats.mask & ((stats.q01 - lo > cfg.action_stat_tolerance * span) | (hi - stats.q99 > cfg.action_stat_tolerance * span))
    if outside.any():
        dims = np.flatnonzero(outside).tolist()
        raise ConfigError(
            f"{dataset.root} does not match the model's unnorm stats {cfg.unnorm_key!r}: action dims {dims} have "
            f"1st..99th percentiles {lo[dims].round(4).tolist()}..{hi[dims].round(4).tolist()}, the model's "
            f"q01..q99 are {stats.q01[dims].round(4).tolist()}..{stats.q99[dims].round(4).tolist()}"
        )


def action_labels(policy: VLAPolicy, actions: np.ndarray, unnorm_key: str | None) -> torch.Tensor:
    """Demonstrated actions [B, 7] -> action token ids [B, 7] (normalized with unnorm_key's stats first)."""
    normalized = policy.action_stats(unnorm_key).normalize(actions) if unnorm_key else actions
    return torch.as_tensor(policy.action_tokenizer.encode(normalized), device=policy.device)


@torch.no_grad()
def token_accuracy(policy: VLAPolicy, images: np.ndarray, instructions: list[str], labels: torch.Tensor) -> float:
    """Fraction of the 7 action tokens whose teacher-forced argmax equals the label."""
    scores = policy.evaluate_actions(policy.preprocess(images, instructions), labels)
    predicted = scores.logits.argmax(-1) + policy.vla.action_token_offset
    return float((predicted == labels).float().mean())


# ---- training loop ---------------------------------------------------------------------------------------------
def train(cfg: SFTConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run SFT (or SFT + KL) as configured; returns the last logged metrics."""
    dataset = open_dataset(cfg)
    run = Run.start(cfg, callbacks=callbacks, desc="sft", validate=lambda policy: check_dataset(dataset, policy, cfg))
    policy, dist = run.policy, run.dist
    if cfg.batch_size % (dist.world_size * cfg.grad_accum_steps):
        raise ConfigError(f"batch_size={cfg.batch_size} must split into {dist.world_size} processes x {cfg.grad_accum_steps} micro-batches")
    batches = DemoBatches(dataset, cfg.batch_size, cfg.seed, cfg.shuffle_window)
    held = DemoBatches(dataset, min(cfg.eval_samples, int(batches.lengths.sum())), 0, 1).batch(0) if cfg.eval_samples else None
    held_labels = action_labels(policy, held["actions"], cfg.unnorm_key) if held else None
    with_base = cfg.kl_coef > 0 or cfg.log_kl

    for update in range(run.update + 1, cfg.total_updates + 1):
        t0 = time.perf_counter()
        data = batches.batch(update - 1)
        rows = slice(dist.rank, None, dist.world_size)  # this rank's share of the global batch
        images, instructions, actions = data["images"][rows], data["instructions"][rows], data["actions"][rows]
        labels = action_labels(policy, actions, cfg.unnorm_key)
        t1 = time.perf_counter()
        policy.train()
        sums: dict[str, float] = {}
        for idx in np.array_split(np.arange(len(labels)), cfg.grad_accum_steps):
            batch = policy.preprocess(images[idx], [instructions[i] for i in idx])
            base = torch.log_softmax(policy.base_action_logits(batch, labels[idx]), -1) if with_base else None
            scores = policy.evaluate_actions(batch, labels[idx])
            ce_loss = -scores.log_probs.mean()  # mean over the 7 tokens and the samples
            with torch.no_grad():
                accuracy = ((scores.logits.argmax(-1) + policy.vla.action_token_offset) == labels[idx]).float().mean()
            stats = dict(ce_loss=ce_loss, token_accuracy=accuracy, entropy=scores.entropy.sum(-1).mean())
            loss = ce_loss
            if base is not None:
                stats["kl_pi0"] = kl_to_base(base, scores.logits).mean()
                loss = loss + cfg.kl_coef * stats["kl_pi0"]
            run.backward(loss * len(idx) / len(labels))
            for k, v in dict(loss=loss, **stats).items():
                sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx) / len(labels)
        grad_norm = run.step()
        t2 = time.perf_counter()

        metrics = {f"{LOSSES}{k}": v for k, v in sums.items()}
        metrics.update({
            f"{LOSSES}grad_norm": grad_norm, f"{CHARTS}epoch": (update - 1) / batches.batches_per_epoch,
            f"{TIME}data_s": t1 - t0, f"{TIME}update_s": t2 - t1,
            f"{TIME}samples_per_s": len(labels) * dist.world_size / (t2 - t0),
        })  # fmt: skip
        if held is not None and (update % cfg.eval_every == 0 or update == cfg.total_updates):
            policy.eval()
            metrics[f"{CHARTS}token_accuracy"] = token_accuracy(policy, held["images"], held["instructions"], held_labels)
        run.end_update(update, metrics, samples=len(labels))
    last = run.logger.last
    acc = f"token_accuracy={last['charts/token_accuracy']:.3f}" if "charts/token_accuracy" in last else ""
    return run.finish(acc)
