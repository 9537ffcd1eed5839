"""Advantage estimators used by the on-policy algorithms. Pure tensor functions, tested against hand-computed values.

Time-major shapes throughout: [T, N] = rollout steps x envs.
"""

from __future__ import annotations

import torch

from rollouts import distributed


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    next_values: torch.Tensor,
    dones: torch.Tensor,
    gamma: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized advantage estimation with explicit bootstrap values.

    rewards, values: [T, N], r_t and V(s_t).
    next_values: [T, N], the value the TD target bootstraps from after step t: V(s_{t+1}) while the episode
        continues, V(final obs) when it was truncated at t, 0 when it terminated at t.
    dones: [T, N] bool, the episode ended at t (terminated or truncated): the lambda-recursion stops there.
    Returns (advantages, returns) [T, N], with
        delta_t = r_t + gamma * next_values_t - V(s_t)
        A_t     = delta_t + gamma * lam * (1 - done_t) * A_{t+1}
        returns = A + V (the value targets).
    """
    T = rewards.shape[0]
    advantages = torch.zeros_like(rewards, dtype=torch.float32)
    last = torch.zeros_like(rewards[0], dtype=torch.float32)
    not_done = 1.0 - dones.float()
    for t in reversed(range(T)):
        delta = rewards[t] + gamma * next_values[t] - values[t]
        last = delta + gamma * lam * not_done[t] * last
        advantages[t] = last
    return advantages, advantages + values


def episode_returns(rewards: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Undiscounted return of each env's masked steps: rewards, mask [T, N] -> [N]."""
    return (rewards * mask.float()).sum(0)


def group_normalized(returns: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    """GRPO's advantage: (R - mean of its group) / (std of its group + eps).

    returns: [N] with N = G * group_size and env i in group i // group_size. A group whose returns are all
    equal gets advantage 0 (it carries no learning signal). std is the population std of the group.
    """
    n = returns.numel()
    if n % group_size:
        raise ValueError(f"{n} returns do not split into groups of {group_size}")
    r = returns.reshape(-1, group_size).float()
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, unbiased=False, keepdim=True) + eps)).reshape(-1)


def batch_normalized(returns: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """REINFORCE's normalized-reward baseline: (R - mean R) / (std R + eps), mean and population std over the
    whole batch (over all ranks when running distributed)."""
    mean, std = distributed.mean_std(returns)
    return (returns.float() - mean.to(returns.device).float()) / (std.to(returns.device).float() + eps)
