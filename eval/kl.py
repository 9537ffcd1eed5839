"""The action-token KL monitor: how far has the fine-tuned policy pi moved from the base policy pi0?

What is estimated (x: a held-out new-task observation; a = (a_1..a_7): the 7 action tokens; pi(.|x, a_<t): the
next-token distribution over the n_bins action bins under teacher forcing):

    kl_forward = E_x E_{a ~ pi0(.|x)} [ sum_t KL( pi0(.|x, a_<t) || pi(.|x, a_<t) ) ]
               = E_x KL( pi0(a|x) || pi(a|x) )                         exactly, by the chain rule (unbiased)
    kl_reverse = E_x E_{a ~ pi0} [ sum_t KL( pi(.|x, a_<t) || pi0(.|x, a_<t) ) ]
               the per-token reverse KL summed along the same pi0-sampled prefixes. It equals the joint reverse
               KL(pi || pi0) only where the prefix distribution does not matter (always for t = 1); it is the
               cheap "same passes" estimate and is what the analysis uses.
    kl_reverse_is = the joint reverse KL(pi || pi0) itself, estimated from the same passes by importance weighting
               each token's term with w_t = prod_{s<t} pi(a_s|.)/pi0(a_s|.), self-normalised over the samples
               (consistent, higher variance when pi is far from pi0).
    tv         = E_x E_{a ~ pi0} [ mean_t TV( pi0(.|x, a_<t), pi(.|x, a_<t) ) ],  TV = 1/2 sum_bins |p0 - p|, in [0, 1]
    kl_forward_tok1 = E_x KL(pi0 || pi) of the first token only (no sampling involved).
    dist_l2    = E_x E_{a ~ pi0} [ mean_t || pi0(.|x, a_<t) - pi(.|x, a_<t) ||_2 ]  (L2 distance of the bin
               probabilities, RL's Razor's "distribution L2")
    entropy_change = E_x E_{a ~ pi0} [ sum_t H(pi(.|x, a_<t)) - H(pi0(.|x, a_<t)) ]  (nats; negative: pi is
               sharper than pi0 on new-task states, the diagnostic of KL grown by sharpening alone)

Everything is in nats per action (7 tokens), averaged over observations and samples.

Cost. pi0 is fixed and the held-out observations are fixed, so `KLMonitor` samples pi0's tokens and computes
pi0's per-token distributions once, when it is built (one sampled generate pass + one teacher-forced pass, with
the adapters disabled), and caches them. Each later measurement is ONE teacher-forced forward of pi per sample,
without gradients. `kl_divergences()` does the whole thing for a one-off (offline) measurement: three passes.
Because the pi0 samples are reused, successive measurements share their sampling noise (common random numbers),
which makes the curve over training smooth and the checkpoints comparable.

The policy only needs the small interface of vla.VLAPolicy used here: preprocess(images, instructions) -> batch,
generate(batch, do_sample=, temperature=) -> .action_tokens [B, 7], evaluate_actions(batch, action_tokens) ->
.logits [B, 7, n_bins], and the context manager adapters_disabled().
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

METRIC_PREFIX = "eval/"
METRICS = ("kl_forward", "kl_reverse", "kl_reverse_is", "tv", "kl_forward_tok1", "dist_l2", "entropy_change")


# ------------------------------------------------------------------------------------------- pure functions


def token_divergences(logp0: torch.Tensor, logp: torch.Tensor) -> dict[str, torch.Tensor]:
    """Exact per-token divergences between two categorical distributions given as log-probabilities.

    logp0, logp: [..., n_bins] log-softmax outputs of pi0 and pi at the same positions.
    Returns {"kl_forward", "kl_reverse", "tv", "l2", "entropy_change"}, each [...]: KL(p0||p), KL(p||p0),
    1/2 sum |p0 - p|, ||p0 - p||_2 and H(p) - H(p0).
    """
    logp0, logp = logp0.double(), logp.double()
    p0, p = logp0.exp(), logp.exp()
    # xlogy-style guards: terms with zero probability contribute 0 even when the other side is -inf
    fwd = torch.where(p0 > 0, p0 * (logp0 - logp), torch.zeros_like(p0)).sum(-1)
    rev = torch.where(p > 0, p * (logp - logp0), torch.zeros_like(p)).sum(-1)
    tv = 0.5 * (p0 - p).abs().sum(-1)
    l2 = (p0 - p).pow(2).sum(-1).sqrt()
    entropy = lambda q, logq: -torch.where(q > 0, q * logq, torch.zeros_like(q)).sum(-1)  # noqa: E731
    return {"kl_forward": fwd, "kl_reverse": rev, "tv": tv, "l2": l2,
            "entropy_change": entropy(p, logp) - entropy(p0, logp0)}


def sequence_estimates(logp0: torch.Tensor, logp: torch.Tensor, tokens_bins: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-sample estimates from teacher-forced log-probs along pi0-sampled token sequences.

    logp0, logp: [N, T, n_bins] log-probs of pi0 and pi at each of the T action tokens (teacher forcing on the
    same sampled prefixes); tokens_bins: [N, T] the sampled bins (indices into n_bins).
    Returns per-sample tensors [N] for kl_forward, kl_reverse, tv and dist_l2 (means over tokens),
    entropy_change (summed over tokens), kl_forward_tok1, and the
    per-token importance weights' logs log_w [N, T] (log prod_{s<t} pi/pi0 of the sampled tokens).
    """
    div = token_divergences(logp0, logp)  # each [N, T]
    idx = tokens_bins.long().unsqueeze(-1)
    log_ratio = (logp.double().gather(-1, idx) - logp0.double().gather(-1, idx)).squeeze(-1)  # [N, T]
    log_w = torch.cumsum(log_ratio, dim=1) - log_ratio  # exclusive prefix sums: weight of a_<t
    return {
        "kl_forward": div["kl_forward"].sum(1),
        "kl_reverse": div["kl_reverse"].sum(1),
        "tv": div["tv"].mean(1),
        "dist_l2": div["l2"].mean(1),
        "entropy_change": div["entropy_change"].sum(1),
        "kl_forward_tok1": div["kl_forward"][:, 0],
        "_rev_tok": div["kl_reverse"],
        "_log_w": log_w,
    }


def summarize(est: dict[str, torch.Tensor], observation: torch.Tensor | None = None) -> dict[str, float]:
    """Average per-sample estimates into the reported metrics (see the module docstring).

    observation: [N] the index of the observation each sample was drawn on. Samples of one observation share it, so
    kl_forward_stderr is the standard error over observations (of their sample means); None: every sample its own."""
    out = {k: float(est[k].mean()) for k in ("kl_forward", "kl_reverse", "tv", "kl_forward_tok1", "dist_l2",
                                              "entropy_change")}
    w = torch.softmax(est["_log_w"], dim=0)  # self-normalised importance weights per token position, [N, T]
    out["kl_reverse_is"] = float((w * est["_rev_tok"]).sum(0).sum())
    n = est["kl_forward"].numel()
    observation = torch.arange(n) if observation is None else torch.as_tensor(observation)
    groups = torch.unique(observation, return_inverse=True)[1]
    n_obs = int(groups.max()) + 1
    per_obs = torch.zeros(n_obs, dtype=torch.float64).index_add_(0, groups, est["kl_forward"].double())
    per_obs /= torch.bincount(groups, minlength=n_obs).double()
    out["kl_forward_stderr"] = float(per_obs.std() / math.sqrt(n_obs)) if n_obs > 1 else float("nan")
    out["n_samples"], out["n_observations"] = n, n_obs
    return out


# ---------------------------------------------------------------------------------------- policy passes


def _bins_of(policy, tokens: torch.Tensor) -> torch.Tensor:
    """Action tokens -> bin indices into the n_bins axis of ActionScores.logits."""
    vla = getattr(policy, "vla", None)  # vla.VLAPolicy: tokens are vocabulary ids, bin j = offset + j
    return tokens - vla.action_token_offset if vla is not None else tokens


@contextlib.contextmanager
def _inference(policy):
    """No gradients, eval mode (dropout off), previous mode restored afterwards."""
    module = policy if isinstance(policy, torch.nn.Module) else getattr(policy, "model", None)
    was_training = module.training if isinstance(module, torch.nn.Module) else None
    if was_training:
        module.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        if was_training:
            module.train()


def _device_of(policy) -> torch.device:
    dev = getattr(policy, "device", None)
    if isinstance(dev, torch.device):
        return dev
    params = policy.parameters() if isinstance(policy, torch.nn.Module) else iter(())
    return next(params, torch.empty(0)).device


def _log_softmax(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.double(), dim=-1)


@dataclass
class BaseSamples:
    """pi0's part of the estimate, computed once: the observations, the sampled tokens and pi0's log-probs.

    images: uint8 [N, H, W, 3]; instructions: N strings; tokens: [N, 7] action tokens sampled from pi0
    (each observation repeated `samples_per_obs` times); logp0: float64 [N, 7, n_bins] pi0's teacher-forced
    log-probs along those tokens.
    """

    images: np.ndarray
    instructions: list[str]
    tokens: torch.Tensor
    logp0: torch.Tensor

    def observation_index(self) -> torch.Tensor:
        """[N] which observation each row was sampled on: a new one wherever the image or instruction changes
        (sample_base repeats each observation on consecutive rows)."""
        flat = self.images.reshape(len(self.images), -1)
        new = np.ones(len(flat), dtype=bool)
        instructions = np.array(self.instructions)
        new[1:] = np.any(flat[1:] != flat[:-1], axis=1) | (instructions[1:] != instructions[:-1])
        return torch.from_numpy(np.cumsum(new) - 1)


def sample_base(policy, images: np.ndarray, instructions: Sequence[str], samples_per_obs: int = 1,
                batch_size: int = 32, seed: int = 0) -> BaseSamples:
    """Sample action tokens from pi0 (adapters disabled) and record pi0's per-token log-probs along them.

    images: uint8 [M, H, W, 3], instructions: M strings. Returns BaseSamples with N = M * samples_per_obs rows.
    Costs one sampled generate pass and one teacher-forced pass per row, with the adapters disabled. Both
    policies are taken at temperature 1 (their own distributions), whatever temperature rollouts use.
    """
    images = np.asarray(images)
    if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [M, H, W, 3], got {images.dtype} {images.shape}")
    if len(instructions) != len(images):
        raise ValueError(f"{len(images)} images but {len(instructions)} instructions")
    if samples_per_obs < 1:
        raise ValueError(f"samples_per_obs must be >= 1, got {samples_per_obs}")
    images = np.repeat(images, samples_per_obs, axis=0)
    instructions = [s for s in instructions for _ in range(samples_per_obs)]
    tokens, logp0 = [], []
    with _inference(policy), _adapters_off(policy), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i in range(0, len(images), batch_size):
            batch = policy.preprocess(images[i : i + batch_size], instructions[i : i + batch_size])
            tok = policy.generate(batch, do_sample=True, temperature=1.0).action_tokens
            tokens.append(tok.cpu())
            logp0.append(_log_softmax(policy.evaluate_actions(batch, tok).logits).cpu())
    return BaseSamples(images, instructions, torch.cat(tokens), torch.cat(logp0))


def save_base_samples(base: BaseSamples, path: str | Path) -> Path:
    """Write BaseSamples to an .npz (plain arrays, no pickle)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.npz")
    np.savez(tmp, images=base.images, instructions=np.array(base.instructions, dtype=str),
             tokens=base.tokens.cpu().numpy(), logp0=base.logp0.cpu().numpy())
    tmp.replace(path)
    return path


def load_base_samples(path: str | Path) -> BaseSamples:
    with np.load(path, allow_pickle=False) as z:
        return BaseSamples(z["images"], [str(s) for s in z["instructions"]], torch.as_tensor(z["tokens"]),
                           torch.as_tensor(z["logp0"]))


def _adapters_off(policy):
    off = getattr(policy, "adapters_disabled", None)
    if off is None:
        raise TypeError(f"{type(policy).__name__} has no adapters_disabled(): cannot get pi0 from the same weights")
    return off()


def policy_logprobs(policy, base: BaseSamples, batch_size: int = 32) -> torch.Tensor:
    """pi's teacher-forced log-probs [N, 7, n_bins] along the cached pi0 tokens: one forward per row, no grad."""
    out = []
    with _inference(policy):
        for i in range(0, len(base.images), batch_size):
            batch = policy.preprocess(base.images[i : i + batch_size], base.instructions[i : i + batch_size])
            tokens = base.tokens[i : i + batch_size].to(_device_of(policy))
            out.append(_log_softmax(policy.evaluate_actions(batch, tokens).logits).cpu())
    return torch.cat(out)


def measure(policy, base: BaseSamples, batch_size: int = 32) -> dict[str, float]:
    """All metrics of pi against the cached pi0 samples (see the module docstring)."""
    logp = policy_logprobs(policy, base, batch_size)
    return summarize(sequence_estimates(base.logp0, logp, _bins_of(policy, base.tokens)), base.observation_index())


def kl_divergences(policy, images: np.ndarray, instructions: Sequence[str], samples_per_obs: int = 1,
                   batch_size: int = 32, seed: int = 0) -> dict[str, float]:
    """Offline: one-off measurement for a policy with an adapter (pi) against itself with adapters off (pi0)."""
    base = sample_base(policy, images, instructions, samples_per_obs, batch_size, seed=seed)
    return measure(policy, base, batch_size)


# ---------------------------------------------------------------------------------------- weight distance


def lora_modules(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """{module name: module} of the layers of a PEFT model that carry LoRA adapters."""
    return {name: m for name, m in model.named_modules()
            if isinstance(getattr(m, "lora_A", None), torch.nn.ModuleDict) and len(m.lora_A)}


def lora_deltas(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The dense weight change each LoRA layer makes, {module name: scaling * B @ A} (float64, the shape of the
    layer's weight; conv kernels flattened to [out, in * k * k]), summed over the layer's adapters."""
    out = {}
    for module_name, module in lora_modules(model).items():
        for name in module.lora_A:
            if name not in module.lora_B:
                continue
            a, b = module.lora_A[name].weight.detach().double(), module.lora_B[name].weight.detach().double()
            scale = float(module.scaling[name]) if hasattr(module, "scaling") else 1.0
            if a.dim() > 2:  # conv LoRA: flatten kernels
                a, b = a.flatten(1), b.flatten(1)
            delta = (b @ a) * scale
            out[module_name] = out[module_name] + delta if module_name in out else delta
    return out


def lora_weight_distance(model: torch.nn.Module) -> float:
    """L2 (Frobenius) norm of the weight change an adapter makes: sqrt(sum over LoRA layers of
    ||scaling * B @ A||_F^2) over the active adapters of a PEFT model; 0.0 with no LoRA layers."""
    return math.sqrt(sum(float(d.pow(2).sum()) for d in lora_deltas(model).values()))


# ---------------------------------------------------------------------------------------- online monitor


class KLMonitor:
    """Online KL(pi0 || pi) on a fixed held-out set of new-task observations, for training callbacks.

    pi0 is always the policy with its adapters disabled, so the monitor may sample pi0 at any time: it does so on
    its first call (or at construction when `policy` is given) and caches the samples (see the module docstring).
    Calling it returns {"eval/kl_forward", "eval/kl_reverse", "eval/kl_reverse_is", "eval/tv",
    "eval/kl_forward_tok1", "eval/kl_forward_stderr", "time/kl_monitor_s"} and, when `log_path` is given, appends
    them with the update counter to a JSONL file.

    Use with rollouts (callbacks are called as callback(RunContext) every cfg.callback_every updates):
        monitor = KLMonitor.from_env("metaworld/pick-place", n_obs=64)
        ppo.train(cfg, callbacks=[monitor.callback])
    or directly: metrics = monitor(policy, update=k).
    """

    def __init__(self, images: np.ndarray, instructions: Sequence[str], policy=None, samples_per_obs: int = 1,
                 batch_size: int = 32, seed: int = 0, log_path: str | Path | None = None,
                 base: BaseSamples | None = None):
        self.images, self.instructions = np.asarray(images), list(instructions)
        if len(self.images) != len(self.instructions) or len(self.images) == 0:
            raise ValueError(f"need as many instructions as images (>= 1), got {len(self.images)} and {len(self.instructions)}")
        self.samples_per_obs, self.batch_size, self.seed = samples_per_obs, batch_size, seed
        self.log_path = Path(log_path) if log_path else None
        self.base: BaseSamples | None = base  # given: reuse pi0 samples computed earlier (e.g. load_base_samples)
        self.setup_s = 0.0
        self.history: list[dict[str, Any]] = []
        if policy is not None:
            self.prepare(policy)

    @classmethod
    def from_env(cls, task_id: str, n_obs: int = 64, seed: int = 10_000, steps_per_episode: int = 0,
                 env_options: dict | None = None, **kwargs) -> "KLMonitor":
        """Held-out observations from `task_id`: the reset observations of seeds seed..seed+n_obs-1 (by default
        far from training seeds), optionally advanced `steps_per_episode` steps with zero actions."""
        images, instructions = collect_observations(task_id, n_obs, seed, steps_per_episode, env_options)
        return cls(images, instructions, **kwargs)

    @classmethod
    def from_base(cls, base: BaseSamples, **kwargs) -> "KLMonitor":
        """A monitor on pi0 samples computed before (sample_base / load_base_samples)."""
        return cls(base.images, base.instructions, base=base, **kwargs)

    def prepare(self, policy) -> BaseSamples:
        """Sample pi0's tokens and log-probs on the held-out observations (once)."""
        if self.base is None:
            t0 = time.perf_counter()
            self.base = sample_base(policy, self.images, self.instructions, self.samples_per_obs, self.batch_size,
                                    seed=self.seed)
            self.setup_s = time.perf_counter() - t0
        return self.base

    def __call__(self, policy, update: int | None = None) -> dict[str, float]:
        base = self.prepare(policy)
        t0 = time.perf_counter()
        stats = measure(policy, base, self.batch_size)
        metrics = {METRIC_PREFIX + k: v for k, v in stats.items() if k not in ("n_samples", "n_observations")}
        metrics["time/kl_monitor_s"] = time.perf_counter() - t0
        row = {"update": update, **metrics}
        self.history.append(row)
        if self.log_path:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        return metrics

    def callback(self, ctx) -> dict[str, float]:
        """rollouts' callback hook: ctx is a rollouts.run.RunContext (uses ctx.policy and ctx.update)."""
        return self(ctx.policy, update=ctx.update)


def collect_observations(task_id: str, n_obs: int, seed: int = 10_000, steps_per_episode: int = 0,
                         env_options: dict | None = None) -> tuple[np.ndarray, list[str]]:
    """Images uint8 [n_obs, H, W, 3] and instructions from seeded resets of `task_id` (envs.make)."""
    import envs

    env = envs.make(task_id, **(env_options or {}))
    images, instructions = [], []
    try:
        zero = np.zeros(env.action_space.shape, np.float32)
        for i in range(n_obs):
            obs, _ = env.reset(seed=seed + i)
            for _ in range(steps_per_episode):
                obs, _, term, trunc, _ = env.step(zero)
                if term or trunc:
                    break
            images.append(obs["image"])
            instructions.append(obs["instruction"])
    finally:
        env.close()
    return np.stack(images), instructions
