"""Candidate predictors of forgetting beyond the action-token KL: RL's Razor's Table 1 and two diagnostics.

All are measured between pi (base + LoRA adapter) and pi0 (the same model with its adapters disabled) on the
held-out new-task observations of eval/kl.py (its BaseSamples: pi0's sampled action tokens on them). Names as
they appear in eval records and the analysis:

    weight_l1, weight_l2   sum |dW| and sqrt(sum dW^2) over the LoRA layers' dense weight changes dW = s * B @ A
    spectral_norm          max over the LoRA layers of the largest singular value of dW
    fisher_l2              sqrt(sum F * dW^2): dW weighted by pi0's diagonal Fisher information F of the same
                           weights, F = E_x E_{a ~ pi0(.|x)} [ (d log pi0(a|x) / dW)^2 ] (the 7-token action's
                           log-probability, on the held-out observations with pi0's sampled tokens: the exact
                           Fisher of pi0's action distribution, estimated by Monte Carlo)
    act_l1, act_l2         E_x E_{a ~ pi0} [ mean_t ||h_pi - h_pi0||_1 ] and the same with the L2 norm, h being
                           the language model's last hidden state at each of the 7 action positions (teacher
                           forcing on pi0's tokens): the representation change on held-out new-task inputs
    kl_forward_visited     forward KL(pi0 || pi) as in eval/kl.py, but on observations of the states pi itself
                           visits on the new task (its own sampled rollouts), not on pi0's reset states

The distribution-space predictors (forward/reverse KL, TV, distribution L2, the entropy change) come from
eval/kl.py's `measure` and are in every eval record already.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from eval.kl import BaseSamples, _inference, lora_deltas, lora_modules, measure, sample_base

PREDICTOR_NAMES = ("weight_l1", "weight_l2", "spectral_norm", "fisher_l2", "act_l1", "act_l2", "kl_forward_visited")


# ---------------------------------------------------------------------------------------------- weight space


def weight_change(deltas: dict[str, torch.Tensor], fisher: dict[str, torch.Tensor] | None = None) -> dict[str, float]:
    """L1, L2, spectral norm and (with `fisher`, a {module name: F of the same shape} dict) the Fisher-weighted
    L2 of the weight changes {module name: dW} (see the module docstring)."""
    out = {
        "weight_l1": sum(float(d.abs().sum()) for d in deltas.values()),
        "weight_l2": math.sqrt(sum(float(d.pow(2).sum()) for d in deltas.values())),
        "spectral_norm": max((float(torch.linalg.matrix_norm(d, ord=2)) for d in deltas.values()), default=0.0),
    }
    if fisher is not None:
        missing = sorted(set(deltas) - set(fisher))
        if missing:
            raise KeyError(f"the Fisher information lacks the LoRA layers {missing[:3]}... (computed for another "
                           "adapter layout?)")
        out["fisher_l2"] = math.sqrt(sum(float((fisher[k].double() * d.pow(2)).sum()) for k, d in deltas.items()))
    return out


def _base_weight(module: torch.nn.Module) -> torch.nn.Parameter:
    """The frozen weight a LoRA layer adapts (peft keeps it in `base_layer`)."""
    return getattr(module, "base_layer", module).weight


def fisher_diagonal(policy, base: BaseSamples) -> dict[str, torch.Tensor]:
    """pi0's diagonal Fisher information of the weights its LoRA layers adapt, {module name: F [out, in]}:
    the mean over the samples of base (pi0's own sampled tokens) of the squared gradient of log pi0(a|x)
    (one backward per sample, adapters disabled, weights restored to frozen afterwards)."""
    modules = lora_modules(policy.model)
    if not modules:
        raise ValueError("the policy has no LoRA layers: attach the adapter layout (add_lora) to name the weights")
    weights = {name: _base_weight(m) for name, m in modules.items()}
    sums = {name: torch.zeros_like(w, dtype=torch.float64) for name, w in weights.items()}
    flags = {name: w.requires_grad for name, w in weights.items()}
    module = policy.model
    was_training = module.training
    module.eval()
    try:
        for w in weights.values():
            w.requires_grad_(True)
        with policy.adapters_disabled():
            for i in range(len(base.images)):
                batch = policy.preprocess(base.images[i : i + 1], base.instructions[i : i + 1])
                logp = policy.evaluate_actions(batch, base.tokens[i : i + 1].to(policy.device)).log_probs.sum()
                grads = torch.autograd.grad(logp, list(weights.values()))
                for name, g in zip(weights, grads):
                    sums[name] += g.double().pow(2)
    finally:
        for name, w in weights.items():
            w.requires_grad_(flags[name])
        if was_training:
            module.train()
    return {name: s / len(base.images) for name, s in sums.items()}


def save_fisher(fisher: dict[str, torch.Tensor], path: str | Path) -> Path:
    """Write {name: F} as safetensors (atomically)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.safetensors")
    save_file({k: v.float().contiguous() for k, v in fisher.items()}, str(tmp))
    tmp.replace(path)
    return path


def load_fisher(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ---------------------------------------------------------------------------------------------- activations


def _hidden(policy, base: BaseSamples, batch_size: int) -> torch.Tensor:
    out = []
    for i in range(0, len(base.images), batch_size):
        batch = policy.preprocess(base.images[i : i + batch_size], base.instructions[i : i + batch_size])
        tokens = base.tokens[i : i + batch_size].to(policy.device)
        out.append(policy.vla.action_hidden_states(batch.pixel_values, batch.input_ids, batch.attention_mask,
                                                   tokens).double().cpu())
    return torch.cat(out)  # [N, 7, D]


def activation_change(policy, base: BaseSamples, batch_size: int = 32) -> dict[str, float]:
    """act_l1, act_l2 (see the module docstring): the change of the last hidden states at the action positions."""
    with _inference(policy):
        h = _hidden(policy, base, batch_size)
        with policy.adapters_disabled():
            h0 = _hidden(policy, base, batch_size)
    diff = h - h0
    return {"act_l1": float(diff.abs().sum(-1).mean()), "act_l2": float(diff.pow(2).sum(-1).sqrt().mean())}


# ---------------------------------------------------------------------------------------------- visited states


def visited_observations(policy, task_id: str, n_obs: int, seed: int = 300_000, episodes: int = 4,
                         env_options: dict | None = None, unnorm_key: str | None = None
                         ) -> tuple[np.ndarray, list[str]]:
    """Observations of the states `policy` visits on `task_id`: `episodes` sampled episodes (reset seeds seed,
    seed + 1, ...; sampling seeded too), run side by side with one batched policy call per step; their
    observations pooled in episode order and `n_obs` of them taken evenly spaced."""
    import envs

    n_episodes = max(1, min(episodes, n_obs))
    episode_envs = [envs.make(task_id, **(env_options or {})) for _ in range(n_episodes)]
    generator = torch.Generator(policy.device).manual_seed(seed)
    seen: list[list[tuple[np.ndarray, str]]] = [[] for _ in episode_envs]
    try:
        obs = [env.reset(seed=seed + k)[0] for k, env in enumerate(episode_envs)]
        running = list(range(n_episodes))
        with _inference(policy):
            while running:
                for k in running:
                    seen[k].append((obs[k]["image"], obs[k]["instruction"]))
                batch = policy.preprocess(np.stack([obs[k]["image"] for k in running]),
                                          [obs[k]["instruction"] for k in running])
                actions = policy.generate(batch, do_sample=True, unnorm_key=unnorm_key, generator=generator).actions
                for k, action in zip(list(running), actions):
                    obs[k], _, terminated, truncated, _ = episode_envs[k].step(action)
                    if terminated or truncated:
                        running.remove(k)
    finally:
        for env in episode_envs:
            env.close()
    pooled = [step for episode in seen for step in episode]
    pick = np.unique(np.linspace(0, len(pooled) - 1, n_obs).round().astype(int))
    if len(pick) < n_obs:  # fewer visited states than asked for: more episodes
        return visited_observations(policy, task_id, n_obs, seed, episodes * 2, env_options, unnorm_key)
    return np.stack([pooled[i][0] for i in pick]), [pooled[i][1] for i in pick]


# ---------------------------------------------------------------------------------------------- all of them


def measure_predictors(policy, base: BaseSamples, fisher: dict[str, torch.Tensor] | None = None,
                       visited: tuple[np.ndarray, Sequence[str]] | None = None, samples_per_obs: int = 1,
                       seed: int = 0) -> dict[str, float]:
    """Every predictor of this module for one checkpoint (`policy` = pi0 + its adapter), plus the distribution
    measures of eval/kl.py's `measure` on `base`; `visited`: (images, instructions) from `visited_observations`."""
    out = dict(measure(policy, base))
    out.update(weight_change(lora_deltas(policy.model), fisher))
    out.update(activation_change(policy, base))
    if visited is not None:
        images, instructions = visited
        on_visited = sample_base(policy, images, list(instructions), samples_per_obs, seed=seed)
        out["kl_forward_visited"] = measure(policy, on_visited)["kl_forward"]
    return out
