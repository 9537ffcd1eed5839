"""REINFORCE with a normalized-reward baseline (the setting of the RL's Razor robotics experiment).

Every update runs each env's first episode from a fresh seeded reset (group_size envs share each initial state,
as the paper's 5 trajectories per initial state), takes R = the episode's return, and normalizes it over the
whole batch (all ranks): A = (R - mean R) / (std R + eps). Every step of the episode
gets A, and the loss is -A * log pi(a_t | s_t) with log pi the sum of the 7 action tokens' log-probs, averaged
over the steps; one optimizer step per update (split into grad_accum_steps micro-batches), since the samples
are on-policy only once. Optional entropy bonus and KL(pi0 || pi) penalty. No critic.

Run it with scripts/train_ppo.py --algorithm reinforce, or call train(REINFORCEConfig(...)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

import envs
from rollouts.advantages import batch_normalized, episode_returns
from rollouts.collect import collect, local_num_envs
from rollouts.config import RLConfig, check
from rollouts.grpo import group_seeds
from rollouts.constants import CHARTS, LOSSES
from rollouts.ppo import kl_to_base
from rollouts.run import Callback, Run


@dataclass
class REINFORCEConfig(RLConfig):
    """REINFORCE hyperparameters (on top of the shared run/model/collection fields)."""

    num_envs: int = 32
    """Episodes per update over all ranks (one per env)."""
    group_size: int = 1
    """Episodes per initial state: envs j and j + num_envs / group_size start from the same reset seed (1: every
    episode from its own initial state). The baseline stays the batch's normalization."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    adv_eps: float = 1e-6
    """Added to the batch std of the returns."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.group_size >= 1, f"group_size must be >= 1, got {self.group_size}")
        check(self.num_envs % self.group_size == 0, f"num_envs={self.num_envs} must be a multiple of group_size={self.group_size}")

    def run_name(self) -> str:
        return f"reinforce_{super().run_name()}"


def train(cfg: REINFORCEConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run REINFORCE as configured; returns the last logged metrics."""
    run = Run.start(cfg, callbacks=callbacks, desc="reinforce")
    policy, dist, device = run.policy, run.dist, run.dist.device
    n_local = local_num_envs(cfg.num_envs, dist.world_size)
    check(n_local % cfg.group_size == 0, f"each of the {dist.world_size} processes needs whole groups of {cfg.group_size} envs")
    horizon = cfg.rollout_steps()
    vec = envs.make_vec(cfg.task, n_local, seed=cfg.seed, **cfg.vec_options())
    try:
        for update in range(run.update + 1, cfg.total_updates + 1):
            t0 = time.perf_counter()
            policy.eval()
            rollout = collect(
                policy, vec, horizon, group_seeds(cfg, update, dist.rank, n_local // cfg.group_size),
                temperature=cfg.temperature, unnorm_key=cfg.unnorm_key, reward=cfg.reward, with_values=False,
                with_base=cfg.kl_coef > 0 or cfg.log_kl, stop_when_all_done=True,
            )  # fmt: skip
            t1 = time.perf_counter()

            mask = rollout.first_episode  # [T, N]
            returns = episode_returns(rollout.rewards, mask)  # [N]
            adv_env = batch_normalized(returns, cfg.adv_eps)  # over all ranks
            t_idx, e_idx = mask.nonzero(as_tuple=True)
            b_adv, b_tokens = adv_env[e_idx], rollout.action_tokens[t_idx, e_idx]
            b_base = rollout.base_logprobs[t_idx, e_idx] if rollout.base_logprobs is not None else None
            images = rollout.images[t_idx.numpy(), e_idx.numpy()]
            instructions = [rollout.instructions[t][e] for t, e in zip(t_idx.tolist(), e_idx.tolist())]

            policy.train()
            sums: dict[str, float] = {}
            n = len(b_adv)
            for idx in torch.tensor_split(torch.arange(n), cfg.grad_accum_steps):
                if len(idx) == 0:
                    continue
                batch = policy.preprocess(images[idx.numpy()], [instructions[i] for i in idx.tolist()])
                scores = policy.evaluate_actions(batch, b_tokens[idx].to(device), temperature=cfg.temperature)
                logprob = scores.log_probs.sum(-1)  # log pi(a | s) of the 7-token action
                pg_loss = -(b_adv[idx].to(device) * logprob).mean()
                entropy_loss = scores.entropy.sum(-1).mean()
                loss = pg_loss - cfg.ent_coef * entropy_loss
                stats = dict(pg_loss=pg_loss, entropy=entropy_loss)
                if b_base is not None:
                    stats["kl_pi0"] = kl_to_base(b_base[idx].to(device), scores.logits).mean()
                    loss = loss + cfg.kl_coef * stats["kl_pi0"]
                run.backward(loss * len(idx) / n)
                for k, v in dict(loss=loss, **stats).items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx) / n
            grad_norm = run.step()
            t2 = time.perf_counter()

            env_steps = int(rollout.num_steps * n_local)
            metrics = {f"{LOSSES}{k}": v for k, v in sums.items()}
            metrics[f"{LOSSES}grad_norm"] = grad_norm
            metrics.update(run.episode_metrics(rollout.episodes))
            metrics[f"{CHARTS}return_std"] = float(returns.std())
            metrics.update(run.rl_timing_metrics(rollout, env_steps, n, t1 - t0, t2 - t1))
            run.end_update(update, metrics, env_steps=env_steps, samples=n)
    finally:
        vec.close()
    return run.finish()
