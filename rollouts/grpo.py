"""GRPO for a VLA policy: groups of episodes from the same initial state, group-normalized returns, no critic.

Every update resets num_envs = G groups x group_size envs so that the envs of a group start from the same seed
(the same initial state), runs each env's first episode to its end, and gives every step of an episode the
advantage (R - mean of its group's R) / (std of its group's R + eps). The loss is PPO's clipped ratio on the
7-token action (per_token_ratio: per token) over update_epochs x num_minibatches steps, plus the optional
KL(pi0 || pi) penalty (GRPO's beta; kl_coef). A group whose episodes all got the same return contributes nothing.

Run it with scripts/train_ppo.py --algorithm grpo, or call train(GRPOConfig(...)).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch

import envs
from rollouts.advantages import episode_returns, group_normalized
from rollouts.collect import collect, local_num_envs
from rollouts.config import RLConfig, check
from rollouts.constants import CHARTS, LOSSES
from rollouts.ppo import kl_to_base
from rollouts.run import Callback, Run


@dataclass
class GRPOConfig(RLConfig):
    """GRPO hyperparameters (on top of the shared run/model/collection fields)."""

    num_envs: int = 32
    """Envs per update over all ranks = groups x group_size (each rank holds whole groups)."""
    group_size: int = 8
    """Episodes per group (all from the same initial state)."""
    update_epochs: int = 1
    """Passes over the rollout per update."""
    num_minibatches: int = 1
    """Optimizer steps per epoch."""
    clip_coef: float = 0.2
    """Ratio clip range."""
    per_token_ratio: bool = False
    """Clip each token's ratio separately instead of the ratio of the joint 7-token action."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    adv_eps: float = 1e-6
    """Added to the group std."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.group_size >= 2, f"group_size must be >= 2, got {self.group_size}")
        check(self.num_envs % self.group_size == 0, f"num_envs={self.num_envs} must be a multiple of group_size={self.group_size}")
        check(self.update_epochs >= 1 and self.num_minibatches >= 1, "update_epochs and num_minibatches must be >= 1")

    def run_name(self) -> str:
        return f"grpo_g{self.group_size}_{super().run_name()}"


# ---- helpers ---------------------------------------------------------------------------------------------------
def group_seeds(cfg: RLConfig, update: int, rank: int, groups: int) -> list[int]:
    """Reset seeds of this rank's envs for `update`: flat env j starts from the seed of its group g = j % groups,
    so the group_size members of a group share their initial state (cfg: any RL config with a group_size)."""
    first = cfg.seed * 1_000_003 + update * (cfg.num_envs // cfg.group_size) + rank * groups
    return [first + j % groups for j in range(groups * cfg.group_size)]


# ---- training loop ---------------------------------------------------------------------------------------------
def train(cfg: GRPOConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run GRPO as configured; returns the last logged metrics."""
    run = Run.start(cfg, callbacks=callbacks, desc="grpo")
    policy, dist, device = run.policy, run.dist, run.dist.device
    n_local = local_num_envs(cfg.num_envs, dist.world_size)
    check(n_local % cfg.group_size == 0, f"each of the {dist.world_size} processes needs whole groups of {cfg.group_size} envs")
    groups = n_local // cfg.group_size
    horizon = cfg.rollout_steps()
    vec = envs.make_vec(cfg.task, n_local, seed=cfg.seed, **cfg.vec_options())
    try:
        for update in range(run.update + 1, cfg.total_updates + 1):
            t0 = time.perf_counter()
            policy.eval()
            rollout = collect(
                policy, vec, horizon, group_seeds(cfg, update, dist.rank, groups), temperature=cfg.temperature,
                unnorm_key=cfg.unnorm_key, reward=cfg.reward, with_values=False,
                with_base=cfg.kl_coef > 0 or cfg.log_kl, stop_when_all_done=True,
            )
            t1 = time.perf_counter()

            # Group-normalized returns of each env's first episode; flat env j is in group j % groups.
            mask = rollout.first_episode  # [T, N]
            returns = episode_returns(rollout.rewards, mask)  # [N]
            order = torch.arange(n_local).reshape(cfg.group_size, groups).T.reshape(-1)  # group-major env order
            adv_env = torch.empty(n_local)
            adv_env[order] = group_normalized(returns[order], cfg.group_size, cfg.adv_eps)
            t_idx, e_idx = mask.nonzero(as_tuple=True)  # the steps that count
            b_adv = adv_env[e_idx]
            b_tokens, b_old = rollout.action_tokens[t_idx, e_idx], rollout.logprobs[t_idx, e_idx]
            b_base = rollout.base_logprobs[t_idx, e_idx] if rollout.base_logprobs is not None else None
            images = rollout.images[t_idx.numpy(), e_idx.numpy()]
            instructions = [rollout.instructions[t][e] for t, e in zip(t_idx.tolist(), e_idx.tolist())]

            policy.train()
            sums: dict[str, float] = {}
            n_steps = 0
            for epoch in range(cfg.update_epochs):
                perm = torch.randperm(len(b_adv))
                for minibatch in torch.tensor_split(perm, cfg.num_minibatches):
                    for idx in torch.tensor_split(minibatch, cfg.grad_accum_steps):
                        if len(idx) == 0:
                            continue
                        batch = policy.preprocess(images[idx.numpy()], [instructions[i] for i in idx.tolist()])
                        scores = policy.evaluate_actions(batch, b_tokens[idx].to(device), temperature=cfg.temperature)
                        adv = b_adv[idx].to(device)
                        if cfg.per_token_ratio:
                            logratio, adv = scores.log_probs - b_old[idx].to(device), adv[:, None]
                        else:
                            logratio = (scores.log_probs - b_old[idx].to(device)).sum(-1)
                        ratio = logratio.exp()
                        pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()
                        entropy_loss = scores.entropy.sum(-1).mean()
                        loss = pg_loss - cfg.ent_coef * entropy_loss
                        with torch.no_grad():
                            stats = dict(pg_loss=pg_loss, entropy=entropy_loss, approx_kl=((ratio - 1) - logratio).mean(),
                                         clipfrac=((ratio - 1).abs() > cfg.clip_coef).float().mean())  # fmt: skip
                        if b_base is not None:
                            stats["kl_pi0"] = kl_to_base(b_base[idx].to(device), scores.logits).mean()
                            loss = loss + cfg.kl_coef * stats["kl_pi0"]
                        stats["loss"] = loss
                        run.backward(loss * len(idx) / len(minibatch))
                        for k, v in stats.items():
                            sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx) / len(minibatch)
                    run.step()
                    n_steps += 1
            t2 = time.perf_counter()

            env_steps, samples = int(rollout.num_steps * n_local), int(len(b_adv) * cfg.update_epochs)
            metrics = {f"{LOSSES}{k}": v / n_steps for k, v in sums.items()}
            metrics.update(run.episode_metrics(rollout.episodes))
            metrics.update({
                f"{CHARTS}group_return_std": float(returns.reshape(cfg.group_size, groups).std(0).mean()),
                f"{CHARTS}zero_signal_groups": float((returns.reshape(cfg.group_size, groups).std(0) == 0).float().mean()),
            })  # fmt: skip
            metrics.update(run.rl_timing_metrics(rollout, env_steps, samples, t1 - t0, t2 - t1))
            run.end_update(update, metrics, env_steps=env_steps, samples=samples)
    finally:
        vec.close()
    return run.finish()
