"""PPO with LoRA for a VLA policy (CleanRL's ppo.py, adapted to 7-token actions and a frozen base model).

The action is OpenVLA's 7 action tokens; its log-probability is the sum of the 7 per-token log-probs (so the PPO
ratio is that of the whole action), or, with per_token_ratio, each token gets its own clipped ratio. The value
head reads the LM's hidden state before the first action token. Only the LoRA adapters and the value head train,
with their own learning rates. Every update: collect T steps from N envs (rollouts/collect.py), GAE, then
update_epochs passes over the rollout in num_minibatches minibatches (each split into grad_accum_steps
micro-batches), with approx-KL early stopping between epochs; with the vision backbone and projector frozen, the
images' patch embeddings are computed once per rollout for all of them. Optionally a KL(pi0 || pi) penalty keeps the
policy near the base model; KL(pi0 || pi) is logged either way (log_kl).

Run it with scripts/train_ppo.py (presets, CLI) or call train(PPOConfig(...)) directly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
import torch.nn.functional as F

import envs
from rollouts import distributed
from rollouts.advantages import gae
from rollouts.collect import Rollout, collect, env_seeds, local_num_envs
from rollouts.config import ConfigError, RLConfig, check
from rollouts.constants import CHARTS, LOSSES
from rollouts.run import Callback, Run


@dataclass
class PPOConfig(RLConfig):
    """PPO hyperparameters (on top of the shared run/model/collection fields)."""

    gamma: float = 0.99
    """Discount factor."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    update_epochs: int = 4
    """Passes over the rollout per update."""
    num_minibatches: int = 4
    """Minibatches per epoch (one optimizer step each); the rollout's T * num_envs must divide evenly."""
    norm_adv: bool = True
    """Normalize advantages to zero mean, unit std over the whole rollout (all ranks)."""
    clip_coef: float = 0.2
    """PPO ratio clip range."""
    per_token_ratio: bool = False
    """Clip the 7 tokens' ratios separately (averaged) instead of the ratio of the joint 7-token action."""
    value_loss: Literal["clipped", "huber", "mse"] = "clipped"
    """Value loss: CleanRL's clipped squared error, Huber (smooth L1), or plain squared error."""
    value_clip: float = 0.2
    """Clip range of the value change for value_loss=clipped."""
    huber_delta: float = 1.0
    """Transition point of the Huber value loss."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient (entropy of the action = sum of the 7 per-token entropies)."""
    target_kl: float | None = None
    """Stop the update's epochs early when the epoch's mean approx-KL exceeds this (None: never)."""
    value_learning_rate: float = 3e-4
    """Learning rate of the value head (the LoRA rate is learning_rate)."""
    cache_vision: bool = True
    """With the vision backbone and projector frozen (LoRA on the LM only), embed each rollout image once and
    reuse the patch embeddings in every epoch and minibatch when update_epochs > 1 (off: recompute them in every
    micro-batch, as with vision LoRA)."""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(0 <= self.gamma <= 1 and 0 <= self.gae_lambda <= 1, "gamma and gae_lambda must be in [0, 1]")
        check(self.update_epochs >= 1 and self.num_minibatches >= 1, "update_epochs and num_minibatches must be >= 1")
        check(self.clip_coef > 0 and self.value_clip > 0, "clip_coef and value_clip must be > 0")
        check(self.value_learning_rate > 0, f"value_learning_rate must be > 0, got {self.value_learning_rate}")
        check(self.target_kl is None or self.target_kl > 0, "target_kl must be > 0 or None")
        samples = self.num_envs * self.rollout_steps()
        steps = f"num_steps={self.num_steps}" if self.num_steps else f"the task's horizon {self.rollout_steps()}"
        check(
            samples % (self.num_minibatches * self.grad_accum_steps) == 0,
            f"num_envs={self.num_envs} x {steps} = {samples} samples per update must split into "
            f"num_minibatches={self.num_minibatches} x grad_accum_steps={self.grad_accum_steps} equal micro-batches",
        )

    def run_name(self) -> str:
        return f"ppo_{super().run_name()}"


# ---- helpers ---------------------------------------------------------------------------------------------------
def ppo_losses(
    new_logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    new_values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    entropy: torch.Tensor,
    cfg: PPOConfig,
    kl_pi0: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The PPO loss of one minibatch and its diagnostics.

    new_logprobs, old_logprobs: [B, 7] per-token log-probs of the taken tokens (current / behaviour policy);
    advantages: [B]; new_values, old_values, returns: [B]; entropy: [B, 7] per-token entropies;
    kl_pi0: [B] KL(pi0 || pi) of the action (summed over tokens), or None.
    Returns scalars: loss, pg_loss, v_loss, entropy (the action's, >= 0), approx_kl, clipfrac, and kl_pi0 when given.
    """
    if cfg.per_token_ratio:
        logratio, adv = new_logprobs - old_logprobs, advantages[:, None]  # [B, 7]
    else:
        logratio, adv = (new_logprobs - old_logprobs).sum(-1), advantages  # [B]: ratio of the whole action
    ratio = logratio.exp()
    pg_loss = torch.max(-adv * ratio, -adv * ratio.clamp(1 - cfg.clip_coef, 1 + cfg.clip_coef)).mean()

    if cfg.value_loss == "clipped":
        v_clipped = old_values + (new_values - old_values).clamp(-cfg.value_clip, cfg.value_clip)
        v_loss = 0.5 * torch.max((new_values - returns) ** 2, (v_clipped - returns) ** 2).mean()
    elif cfg.value_loss == "huber":
        v_loss = F.smooth_l1_loss(new_values, returns, beta=cfg.huber_delta)
    else:
        v_loss = 0.5 * ((new_values - returns) ** 2).mean()

    entropy_loss = entropy.sum(-1).mean()
    loss = pg_loss - cfg.ent_coef * entropy_loss + cfg.vf_coef * v_loss
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean()  # Schulman's k3 estimator of KL(pi_old || pi)
        clipfrac = ((ratio - 1).abs() > cfg.clip_coef).float().mean()
    out = dict(pg_loss=pg_loss, v_loss=v_loss, entropy=entropy_loss, approx_kl=approx_kl, clipfrac=clipfrac)
    if kl_pi0 is not None:
        out["kl_pi0"] = kl_pi0.mean()
        loss = loss + cfg.kl_coef * out["kl_pi0"]
    return dict(loss=loss, **out)


def kl_to_base(base_logprobs: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """KL(pi0 || pi) of the 7-token action: per token the exact KL over the action bins (pi0's and pi's
    distributions at the same prefix), summed over the 7 tokens. base_logprobs, logits: [B, 7, n_bins] -> [B]."""
    logp = F.log_softmax(logits.float(), -1)
    return (base_logprobs.exp() * (base_logprobs - logp)).sum(-1).sum(-1)


def explained_variance(y_pred: torch.Tensor, y_true: torch.Tensor) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true] over all ranks (NaN when y_true is constant)."""
    var_y = float(distributed.mean_std(y_true)[1]) ** 2
    return float("nan") if var_y == 0 else 1.0 - float(distributed.mean_std(y_true - y_pred)[1]) ** 2 / var_y


def ppo_update(run: Run, rollout: Rollout, cfg: PPOConfig) -> dict[str, float]:
    """GAE, then update_epochs x num_minibatches optimizer steps on `rollout`; returns averaged diagnostics."""
    policy, device = run.policy, run.dist.device
    advantages, returns = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.dones, cfg.gamma, cfg.gae_lambda)
    b_adv, b_returns, b_values = advantages.reshape(-1), returns.reshape(-1), rollout.values.reshape(-1)
    if cfg.norm_adv:
        mean, std = distributed.mean_std(b_adv)
        b_adv = (b_adv - mean.float()) / (std.float() + 1e-8)
    b_tokens, b_logprobs = rollout.action_tokens.reshape(-1, 7), rollout.logprobs.reshape(-1, 7)
    b_base = rollout.base_logprobs.reshape(-1, *rollout.base_logprobs.shape[2:]) if rollout.base_logprobs is not None else None
    images, instructions = rollout.flat_images(), rollout.flat_instructions()
    batch_size = len(b_adv)
    if batch_size % cfg.num_minibatches or (batch_size // cfg.num_minibatches) % cfg.grad_accum_steps:
        raise ConfigError(
            f"the rollout's {batch_size} samples per process must split into num_minibatches={cfg.num_minibatches} "
            f"minibatches of grad_accum_steps={cfg.grad_accum_steps} equal micro-batches"
        )
    minibatch = batch_size // cfg.num_minibatches
    micro = minibatch // cfg.grad_accum_steps

    policy.train()
    patches = None
    if cfg.cache_vision and cfg.update_epochs > 1 and policy.vision_frozen:
        # Frozen vision: the patch embeddings [batch_size, P, D] are the same in every epoch, so compute them once
        # (with one epoch that saves nothing and would only hold them all in memory).
        with torch.no_grad():
            patches = torch.cat([
                policy.patch_embeddings(policy.preprocess(images[i : i + micro], instructions[i : i + micro]))
                for i in range(0, batch_size, micro)
            ])  # fmt: skip
    sums: dict[str, float] = {}
    n_steps, grad_norms = 0, []
    for epoch in range(cfg.update_epochs):
        perm = torch.randperm(batch_size)
        epoch_kl = []
        for start in range(0, batch_size, minibatch):
            for m_start in range(start, start + minibatch, micro):
                idx = perm[m_start : m_start + micro]
                batch = policy.preprocess(images[idx.numpy()], [instructions[i] for i in idx.tolist()])
                scores = policy.evaluate_actions(
                    batch, b_tokens[idx].to(device), temperature=cfg.temperature,
                    patch_embeddings=patches[idx.to(device)] if patches is not None else None,
                )  # fmt: skip
                kl_pi0 = kl_to_base(b_base[idx].to(device), scores.logits) if b_base is not None else None
                losses = ppo_losses(
                    scores.log_probs, b_logprobs[idx].to(device), b_adv[idx].to(device), scores.values.float(),
                    b_values[idx].to(device), b_returns[idx].to(device), scores.entropy, cfg, kl_pi0,
                )  # fmt: skip
                run.backward(losses["loss"] / cfg.grad_accum_steps)
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) / cfg.grad_accum_steps
                epoch_kl.append(float(losses["approx_kl"]))
            grad_norms.append(run.step())
            n_steps += 1
        if cfg.target_kl is not None:
            kl = distributed.mean({"kl": sum(epoch_kl) / len(epoch_kl)}, device)["kl"]
            if kl > cfg.target_kl:
                break
    out = {f"{LOSSES}{k}": v / n_steps for k, v in sums.items()}
    out[f"{LOSSES}explained_var"] = explained_variance(b_values, b_returns)
    out[f"{LOSSES}grad_norm"] = sum(grad_norms) / len(grad_norms)
    out[f"{LOSSES}epochs"] = float(epoch + 1)
    out[f"{CHARTS}value_mean"] = float(b_values.mean())
    out[f"{CHARTS}advantage_std"] = float(distributed.mean_std(advantages)[1])
    return out


# ---- training loop ---------------------------------------------------------------------------------------------
def train(cfg: PPOConfig, callbacks: Sequence[Callback] = ()) -> dict[str, float]:
    """Run PPO as configured; returns the last logged metrics."""
    run = Run.start(cfg, train_value_head=True, value_learning_rate=cfg.value_learning_rate, callbacks=callbacks, desc="ppo")
    policy, dist = run.policy, run.dist
    n_local = local_num_envs(cfg.num_envs, dist.world_size)
    num_steps = cfg.rollout_steps()
    vec = envs.make_vec(cfg.task, n_local, seed=cfg.seed, **cfg.vec_options())
    try:
        for update in range(run.update + 1, cfg.total_updates + 1):
            t0 = time.perf_counter()
            policy.eval()
            rollout = collect(
                policy, vec, num_steps, env_seeds(cfg.seed, update, cfg.num_envs, dist.rank, n_local),
                temperature=cfg.temperature, unnorm_key=cfg.unnorm_key, reward=cfg.reward,
                with_base=cfg.kl_coef > 0 or cfg.log_kl,
            )
            t1 = time.perf_counter()
            metrics = ppo_update(run, rollout, cfg)
            t2 = time.perf_counter()
            env_steps = rollout.num_steps * rollout.num_envs
            samples = int(env_steps * metrics[f"{LOSSES}epochs"])  # epochs done (target_kl may stop early)
            metrics.update(run.episode_metrics(rollout.episodes))
            metrics[f"{CHARTS}reward_mean"] = float(rollout.rewards.mean())
            metrics.update(run.rl_timing_metrics(rollout, env_steps, samples, t1 - t0, t2 - t1))
            run.end_update(update, metrics, env_steps=env_steps, samples=samples)
    finally:
        vec.close()
    return run.finish(_summary(run))


def _summary(run: Run) -> str:
    last = run.logger.last
    keys = ("charts/success_once", "charts/return", "losses/kl_pi0", "losses/approx_kl")
    return ", ".join(f"{k.split('/')[-1]}={last[k]:.3g}" for k in keys if k in last)

