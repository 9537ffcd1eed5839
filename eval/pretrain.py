"""pi0 for the CPU experiment: behaviour cloning of ALL weights of a randomly initialised preset VLA on scripted
demonstrations of several prior skills (OpenVLA's objective: cross-entropy on the 7 action tokens).

This stands in for OpenVLA's pre-training: the fine-tuning stage (rollouts/) then adds LoRA to this pi0. Data are
envs/demos.py datasets, loaded into memory (images uint8; a few tens of MB at 32-64 px); batches are sampled
uniformly over steps of all tasks. The checkpoint is a full vla/ checkpoint directory (save_pretrained), usable as
`model` by rollouts and eval. Validation cross-entropy is not used to stop early: in the prototype it rose while
success still improved.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch


@dataclass
class PretrainConfig:
    model: str = "tiny"
    """vla preset to initialise (random weights)."""
    n_action_bins: int = 256
    """Action bins of the preset."""
    steps: int = 2000
    """Optimizer steps."""
    batch_size: int = 64
    """Steps (observation, action) per batch."""
    learning_rate: float = 1e-3
    """AdamW learning rate (cosine decay to 10%, 50-step warm-up)."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    seed: int = 0
    """Init and sampling seed."""
    log_every: int = 100
    """Print the loss and token accuracy every this many steps."""
    unnorm_key: str | None = None
    """None: the actions are in the env contract's [-1, 1] and tokenized as they are. A key (e.g. "bridge_orig"):
    the actions are in env units; their statistics over the training data (q01/q99, as OpenVLA computes its
    norm_stats) are saved in the checkpoint under this key and the actions normalized with them first."""
    dataset_weights: tuple[float, ...] = ()
    """The data mixture, as OpenVLA's per-dataset sampling weights: one weight per dataset (in load_demo_steps'
    order), the expected share of each batch drawn from it (normalized to sum 1; within a dataset every step is
    equally likely). Empty: every step of every dataset equally likely."""


def load_demo_steps(dataset_dirs: Sequence[str | Path], max_episodes: int | None = None) -> dict[str, np.ndarray]:
    """All steps of the datasets: images uint8 [N, H, W, 3], actions float32 [N, 7], instructions [N] str, dataset
    int64 [N] (the index in `dataset_dirs` each step comes from)."""
    from envs.demos import DemoDataset

    images, actions, instructions, dataset = [], [], [], []
    for index, d in enumerate(dataset_dirs):
        ds = DemoDataset(d)
        for i in range(len(ds) if max_episodes is None else min(max_episodes, len(ds))):
            ep = ds.episode(i, keys=("images", "actions", "instruction"))
            images.append(ep["images"])
            actions.append(ep["actions"])
            instructions += [str(ep["instruction"])] * len(ep["actions"])
            dataset.append(np.full(len(ep["actions"]), index, np.int64))
    if not images:
        raise ValueError(f"no demo episodes in {list(map(str, dataset_dirs))}")
    return {"images": np.concatenate(images), "actions": np.concatenate(actions).astype(np.float32),
            "instructions": np.array(instructions), "dataset": np.concatenate(dataset)}


def step_probabilities(dataset: np.ndarray, weights: Sequence[float]) -> np.ndarray | None:
    """Sampling probability of each step [N] so that dataset i fills a share weights[i] / sum(weights) of a batch
    (uniform within a dataset); None for empty `weights` (every step equally likely)."""
    if not len(weights):
        return None
    weights = np.asarray(weights, np.float64)
    counts = np.bincount(dataset, minlength=len(weights))
    if len(counts) != len(weights) or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"dataset_weights needs one weight >= 0 per dataset ({len(counts)}), not all 0; got "
                         f"{weights.tolist()}")
    if (counts[weights > 0] == 0).any():
        raise ValueError(f"a dataset with weight > 0 has no steps (steps per dataset: {counts.tolist()})")
    return weights[dataset] / weights.sum() / counts[dataset]


def pretrain(cfg: PretrainConfig, data: dict[str, np.ndarray], out_dir: str | Path,
             log: Callable[[str], None] = print) -> dict:
    """Train the preset on `data` (see load_demo_steps) and save it to `out_dir`; returns a summary dict."""
    from envs.demos import action_statistics
    from vla.policy import VLAPolicy

    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    policy = VLAPolicy.from_pretrained(cfg.model, seed=cfg.seed, n_action_bins=cfg.n_action_bins)
    policy.train()
    params = [p for p in policy.vla.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 50) * (
        0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * min(1.0, s / max(1, cfg.steps))))))
    actions = data["actions"]
    if cfg.unnorm_key is not None:
        policy.vla.config.norm_stats = {cfg.unnorm_key: {"action": action_statistics(actions)}}
        actions = policy.action_stats(cfg.unnorm_key).normalize(actions)
    tokens_all = torch.as_tensor(policy.action_tokenizer.encode(actions))
    n = len(tokens_all)
    probabilities = step_probabilities(data["dataset"], cfg.dataset_weights)
    t0 = time.perf_counter()
    losses, accs = [], []
    for step in range(1, cfg.steps + 1):
        idx = rng.integers(0, n, cfg.batch_size) if probabilities is None else rng.choice(n, cfg.batch_size,
                                                                                          p=probabilities)
        batch = policy.preprocess(data["images"][idx], list(data["instructions"][idx]))
        tokens = tokens_all[idx].to(policy.device)
        scores = policy.evaluate_actions(batch, tokens)
        loss = -scores.log_probs.sum(1).mean()  # cross-entropy summed over the 7 tokens
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        accs.append(float((scores.logits.argmax(-1) == tokens - policy.vla.action_token_offset).float().mean()))
        if step % cfg.log_every == 0 or step == cfg.steps:
            elapsed = time.perf_counter() - t0
            eta = elapsed / step * (cfg.steps - step)
            log(f"[pi0] step {step}/{cfg.steps} loss {np.mean(losses[-cfg.log_every:]):.3f} "
                f"token acc {np.mean(accs[-cfg.log_every:]):.3f} ({elapsed:.0f}s, ETA {eta:.0f}s)")
    policy.eval()
    policy.save_pretrained(out_dir)
    summary = {"config": asdict(cfg), "steps": cfg.steps, "samples": n, "final_loss": float(np.mean(losses[-50:])),
               "final_token_acc": float(np.mean(accs[-50:])), "wall_s": time.perf_counter() - t0}
    (Path(out_dir) / "pretrain.json").write_text(json.dumps(summary, indent=2))
    return summary
