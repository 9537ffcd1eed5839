"""On-policy collection: step a vector env with a VLA policy and keep what the updates need.

One call of `collect()` is one rollout of T steps from N envs (time-major [T, N] arrays):

    obs_t (image, instruction, state) --generate (batched over the N envs)--> action tokens, log-probs, value
    env.step(actions) --> reward_t, terminated_t, truncated_t, success_t, obs_{t+1}

Every rollout starts from seeded resets (`seeds`), so a rollout depends only on its seeds, the weights and the
torch RNG: this is what lets a resumed run repeat the losses of an uninterrupted one. With T a multiple of the
task horizon nothing is lost by this; episodes still running at step T are bootstrapped from V(obs_T).

Ends of episodes (the vector env's same-step autoreset, envs/vector.py): when env i's episode ends at step t,
obs_{t+1}[i] is already the next episode's first observation and the ended episode's last observation is in
info["final_obs"][i]. The value the TD target bootstraps from after step t (`next_values`) is therefore
    V(obs_{t+1})          while the episode continues,
    V(final_obs)          when it was truncated (time limit: the state still has a future),
    0                     when it terminated.
Rewards: "sparse" = 1.0 on each step where info["success"] is true (the tasks end episodes at success or at
their horizon); "dense" = the env's own shaped reward.

With `with_base=True` the base policy pi0's log-distributions over the action bins at the sampled tokens are
stored too (one extra teacher-forced forward per step with the adapters disabled): the KL-to-pi0 penalty and its
logging use them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from rollouts.constants import EPISODE_LEN, OBS_IMAGE, OBS_INSTRUCTION, OBS_STATE, RETURN, SUCCESS_AT_END, SUCCESS_ONCE


@dataclass
class Rollout:
    """T steps of N envs (one rank's share). Tensors live on the CPU; images stay uint8 until a minibatch needs them."""

    images: np.ndarray  # uint8 [T, N, H, W, 3], the observation each action was taken from
    instructions: list[tuple[str, ...]]  # T tuples of N instructions
    states: np.ndarray  # float32 [T, N, D]
    action_tokens: torch.Tensor  # long [T, N, 7] vocabulary ids of the sampled action
    logprobs: torch.Tensor  # float [T, N, 7] per-token log-probs under the behaviour policy (at the temperature)
    values: torch.Tensor  # float [T, N] V(obs_t)
    rewards: torch.Tensor  # float [T, N]
    terminated: torch.Tensor  # bool [T, N]
    truncated: torch.Tensor  # bool [T, N]
    success: torch.Tensor  # bool [T, N] info["success"] after the step
    next_values: torch.Tensor  # float [T, N] bootstrap value after step t (see the module docstring)
    first_episode: torch.Tensor  # bool [T, N] the step belongs to the env's first episode of this rollout
    base_logprobs: torch.Tensor | None  # float [T, N, 7, n_bins] log pi0(. | obs_t, a_<k), or None
    episodes: list[dict[str, float]] = field(default_factory=list)  # finished episodes' metrics
    sim_s: float = 0.0  # seconds in env.reset/step
    inference_s: float = 0.0  # seconds in preprocess/generate/value/base forwards

    @property
    def num_steps(self) -> int:
        return self.rewards.shape[0]

    @property
    def num_envs(self) -> int:
        return self.rewards.shape[1]

    @property
    def dones(self) -> torch.Tensor:
        return self.terminated | self.truncated

    def select_envs(self, envs: slice) -> "Rollout":
        """The same rollout restricted to some envs (e.g. one rank's shard); episode lists are dropped."""
        cut = lambda x: None if x is None else x[:, envs]  # noqa: E731
        return Rollout(
            images=self.images[:, envs], instructions=[step[envs] for step in self.instructions],
            states=self.states[:, envs], action_tokens=cut(self.action_tokens), logprobs=cut(self.logprobs),
            values=cut(self.values), rewards=cut(self.rewards), terminated=cut(self.terminated),
            truncated=cut(self.truncated), success=cut(self.success), next_values=cut(self.next_values),
            first_episode=cut(self.first_episode), base_logprobs=cut(self.base_logprobs),
        )  # fmt: skip

    def flat_images(self) -> np.ndarray:
        """[T * N, H, W, 3], row t * N + i = step t of env i (the order of every `.reshape(T * N, ...)`)."""
        return self.images.reshape(-1, *self.images.shape[2:])

    def flat_instructions(self) -> list[str]:
        return [text for step in self.instructions for text in step]


def reset_envs(envs: Any, seeds: Sequence[int]) -> tuple[dict, dict]:
    """Reset env i with seeds[i]. Consecutive seeds go through the vector env's reset(seed=s) (env i gets s + i);
    other lists (GRPO's repeated group seeds) need a vector env that takes a list of seeds."""
    seeds = [int(s) for s in seeds]
    if seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return envs.reset(seed=seeds[0])
    return envs.reset(seed=seeds)


@torch.no_grad()
def values_of(policy: Any, images: np.ndarray, instructions: Sequence[str]) -> torch.Tensor:
    """V(obs) [B] for a batch of observations (the value head reads the hidden state before the first action
    token, which does not depend on the action tokens; any valid tokens do)."""
    batch = policy.preprocess(images, list(instructions))
    dummy = torch.full((len(batch), 7), policy.vla.action_token_offset, dtype=torch.long, device=policy.device)
    return policy.evaluate_actions(batch, dummy).values.float().cpu()


@torch.no_grad()
def collect(
    policy: Any,
    envs: Any,
    num_steps: int,
    seeds: Sequence[int],
    *,
    temperature: float = 1.0,
    unnorm_key: str | None = None,
    reward: str = "sparse",
    with_values: bool = True,
    with_base: bool = False,
    stop_when_all_done: bool = False,
    generator: torch.Generator | None = None,
) -> Rollout:
    """Run `num_steps` steps of every env from resets with `seeds` (see the module docstring).

    with_values: compute next_values for truncated/final observations (PPO; GRPO and REINFORCE do not need them).
    stop_when_all_done: stop early once every env has finished its first episode (GRPO/REINFORCE, which only use
        first episodes); the rollout then has fewer than num_steps steps, and `episodes` holds first episodes only.
    """
    if reward not in ("sparse", "dense"):
        raise ValueError(f"reward must be 'sparse' or 'dense', got {reward!r}")
    t0 = time.perf_counter()
    obs, _ = reset_envs(envs, seeds)
    sim_s, inference_s = time.perf_counter() - t0, 0.0
    n = len(obs[OBS_INSTRUCTION])
    keys = ("images", "instructions", "states", "tokens", "logprobs", "values", "rewards", "terminated",
            "truncated", "success", "next_values", "first", "base")  # fmt: skip
    buf: dict[str, list] = {k: [] for k in keys}
    ep_return, ep_len = np.zeros(n), np.zeros(n, dtype=np.int64)
    ep_success_once = np.zeros(n, bool)
    finished_first = np.zeros(n, bool)
    episodes: list[dict[str, float]] = []

    for _ in range(num_steps):
        t1 = time.perf_counter()
        batch = policy.preprocess(obs[OBS_IMAGE], list(obs[OBS_INSTRUCTION]))
        out = policy.generate(batch, do_sample=True, temperature=temperature, unnorm_key=unnorm_key, generator=generator)
        if with_base:
            buf["base"].append(F.log_softmax(policy.base_action_logits(batch, out.action_tokens), -1).cpu())
        inference_s += time.perf_counter() - t1

        t2 = time.perf_counter()
        next_obs, env_reward, terminated, truncated, info = envs.step(out.actions)
        sim_s += time.perf_counter() - t2
        terminated, truncated = np.asarray(terminated, bool), np.asarray(truncated, bool)
        success = np.asarray(info["success"], bool)
        r = success.astype(np.float32) if reward == "sparse" else np.asarray(env_reward, np.float32)

        buf["images"].append(obs[OBS_IMAGE])
        buf["instructions"].append(tuple(obs[OBS_INSTRUCTION]))
        buf["states"].append(obs[OBS_STATE])
        buf["tokens"].append(out.action_tokens.cpu())
        buf["logprobs"].append(out.log_probs.float().cpu())
        buf["values"].append(out.values.float().cpu())
        buf["rewards"].append(torch.from_numpy(r))
        buf["terminated"].append(torch.from_numpy(terminated))
        buf["truncated"].append(torch.from_numpy(truncated))
        buf["success"].append(torch.from_numpy(success))
        buf["first"].append(torch.from_numpy(~finished_first))

        # Truncated episodes bootstrap from their final observation's value.
        next_v = torch.zeros(n)
        if with_values and truncated.any():
            t3 = time.perf_counter()
            idx = np.flatnonzero(truncated)
            final = [info["final_obs"][i] for i in idx]
            next_v[idx] = values_of(policy, np.stack([f[OBS_IMAGE] for f in final]), [f[OBS_INSTRUCTION] for f in final])
            inference_s += time.perf_counter() - t3
        buf["next_values"].append(next_v)  # entries of continuing envs are filled in below

        ep_return += r
        ep_len += 1
        ep_success_once |= success
        for i in np.flatnonzero(terminated | truncated):
            if not (stop_when_all_done and finished_first[i]):  # then only first episodes count (no length bias)
                episodes.append({SUCCESS_ONCE: float(ep_success_once[i]), SUCCESS_AT_END: float(success[i]),
                                 RETURN: float(ep_return[i]), EPISODE_LEN: float(ep_len[i])})  # fmt: skip
            ep_return[i], ep_len[i], ep_success_once[i] = 0.0, 0, False
        finished_first |= terminated | truncated
        obs = next_obs
        if stop_when_all_done and finished_first.all():
            break

    # Continuing envs bootstrap from V(obs_{t+1}): the value stored at t+1, or one more value pass after the last step.
    values = torch.stack(buf["values"])
    dones = torch.stack(buf["terminated"]) | torch.stack(buf["truncated"])
    next_values = torch.stack(buf["next_values"])
    if with_values:
        t4 = time.perf_counter()
        last = values_of(policy, obs[OBS_IMAGE], list(obs[OBS_INSTRUCTION]))
        inference_s += time.perf_counter() - t4
        following = torch.cat([values[1:], last[None]], 0)
        next_values = torch.where(dones, next_values, following)
    return Rollout(
        images=np.stack(buf["images"]),
        instructions=buf["instructions"],
        states=np.stack(buf["states"]).astype(np.float32),
        action_tokens=torch.stack(buf["tokens"]),
        logprobs=torch.stack(buf["logprobs"]),
        values=values,
        rewards=torch.stack(buf["rewards"]),
        terminated=torch.stack(buf["terminated"]),
        truncated=torch.stack(buf["truncated"]),
        success=torch.stack(buf["success"]),
        next_values=next_values,
        first_episode=torch.stack(buf["first"]),
        base_logprobs=torch.stack(buf["base"]) if with_base else None,
        episodes=episodes,
        sim_s=sim_s,
        inference_s=inference_s,
    )


def env_seeds(seed: int, update: int, num_envs: int, rank: int, local_envs: int) -> list[int]:
    """Reset seeds of one rank's envs for `update`: distinct across envs, ranks and updates, same on resume."""
    base = seed * 1_000_003 + update * num_envs + rank * local_envs
    return list(range(base, base + local_envs))


def local_num_envs(num_envs: int, world_size: int) -> int:
    """This rank's share of the envs."""
    if num_envs % world_size:
        raise ValueError(f"num_envs={num_envs} must be a multiple of the number of processes ({world_size})")
    return num_envs // world_size
