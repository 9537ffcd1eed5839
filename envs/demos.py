"""Expert demonstrations on disk: generate them with a task's scripted expert, read them back lazily.

Dataset layout (schema version 1), one directory per task:

    meta.json                  what reproduces and describes the dataset:
        schema_version         1
        task_id, instruction, suite, robot, backend, backend_env_id
        env_options            the options given to envs.make (e.g. {"image_size": 224})
        seed                   attempt k is the expert's rollout from reset(seed=seed + k)
        keep_failures          whether failed rollouts are kept as episodes (default: only successes)
        num_requested          how many episodes were asked for
        attempts               every rollout tried: [{"seed", "length", "success", "episode"}], "episode" being
                               the episode's index when it was kept, else null
        episodes               the kept episodes: [{"file", "seed", "length", "success", "return"}]
        expert_success_rate    successful attempts / attempts
        action_stats           statistics of the kept episodes' actions, per dimension, in the layout of an OpenVLA
                               norm_stats entry's "action": mean, std, min, max, q01, q99 (1st/99th percentiles),
                               mask (True where a model normalizes it: all but the gripper); written when
                               generation ends
    episode_000000.npz, ...    one compressed archive per kept episode, T = its number of steps:
        images                 uint8 [T, H, W, 3]  the observation image before each action
        states                 float32 [T, D]      the observation state before each action
        actions                float32 [T, 7]      the expert's action, clipped into the action space
        rewards                float32 [T]         the env's reward for each step
        successes              bool [T]            info["success"] after each step
        instruction            str (0-d array)     the observation's instruction
        seed                   int64 (0-d)         the reset seed
    The observation after the last action is not stored (episodes end at success or at the horizon).

A mixture (`combine_demos`) is a dataset of the same schema whose episodes come from several datasets (hard links
to their files); its task_id, instruction, ... are lists over the sources, and each episode records its task_id.

Every file is written to a temporary name and renamed, and meta.json is rewritten after each attempt, so an
interrupted run leaves a valid dataset and calling generate_demos again with the same arguments resumes it.
Reading (`DemoDataset`) holds one episode in memory at a time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import gymnasium as gym
import numpy as np

from envs.registry import GRIPPER, Expert, check_action, get_spec, make

SCHEMA_VERSION = 1
META_FILE = "meta.json"


def rollout_expert(env: gym.Env, expert: Expert, seed: int) -> dict[str, Any]:
    """One expert episode from reset(seed=seed) until termination or truncation, as the arrays of the schema."""
    obs, info = env.reset(seed=seed)
    expert.reset(env, obs, info)
    images, states, actions, rewards, successes = [], [], [], [], []
    done = False
    while not done:
        action = check_action(expert.act(obs))
        images.append(obs["image"])
        states.append(obs["state"])
        actions.append(action)
        obs, reward, terminated, truncated, info = env.step(action)
        rewards.append(reward)
        successes.append(bool(info["success"]))
        done = terminated or truncated
    return {
        "images": np.stack(images).astype(np.uint8),
        "states": np.stack(states).astype(np.float32),
        "actions": np.stack(actions),
        "rewards": np.asarray(rewards, np.float32),
        "successes": np.asarray(successes, bool),
        "instruction": np.array(obs["instruction"]),
        "seed": np.int64(seed),
    }


def evaluate_expert(task_id: str, num_episodes: int, *, seed: int = 0, **env_options: Any) -> float:
    """The task's expert success rate over `num_episodes` rollouts from seeds seed, seed + 1, ... (nothing saved)."""
    env = make(task_id, **env_options)
    expert = _expert_for(task_id)
    try:
        successes = [rollout_expert(env, expert, seed + k)["successes"][-1] for k in range(num_episodes)]
    finally:
        env.close()
    return float(np.mean(successes))


def generate_demos(
    task_id: str,
    num_episodes: int,
    out_dir: str | os.PathLike,
    *,
    seed: int = 0,
    env_options: dict[str, Any] | None = None,
    keep_failures: bool = False,
    max_attempts: int | None = None,
    expert: Expert | None = None,
    log: Callable[[str], None] = print,
) -> DemoDataset:
    """Write `num_episodes` expert episodes of `task_id` into `out_dir` (resuming it if it exists; see the module
    docstring). Stops after `max_attempts` rollouts (default: 2 * num_episodes + 10) if the expert keeps failing.
    `expert` replaces the task's scripted expert (e.g. another labeller, or a policy for rejection sampling)."""
    spec = get_spec(task_id)
    expert = expert if expert is not None else _expert_for(task_id)
    env_options = json.loads(json.dumps(env_options or {}))  # JSON-normal form, comparable with meta.json
    max_attempts = max_attempts if max_attempts is not None else 2 * num_episodes + 10
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    for leftover in root.glob("*.tmp"):  # from an interrupted write
        leftover.unlink()

    fresh = {
        "schema_version": SCHEMA_VERSION,
        "task_id": task_id,
        "instruction": spec.instruction,
        "suite": spec.suite,
        "robot": spec.robot,
        "backend": spec.backend,
        "backend_env_id": spec.backend_env_id,
        "env_options": env_options,
        "seed": seed,
        "keep_failures": keep_failures,
        "num_requested": num_episodes,
        "attempts": [],
        "episodes": [],
        "expert_success_rate": None,
    }
    meta = _resume(root, fresh)
    meta["num_requested"] = num_episodes

    env = make(task_id, **env_options)
    try:
        while len(meta["episodes"]) < num_episodes and len(meta["attempts"]) < max_attempts:
            attempt_seed = seed + len(meta["attempts"])
            episode = rollout_expert(env, expert, attempt_seed)
            success = bool(episode["successes"][-1])
            length = len(episode["actions"])
            kept_index = None
            if success or keep_failures:
                kept_index = len(meta["episodes"])
                file_name = f"episode_{kept_index:06d}.npz"
                _write_atomic(root / file_name, lambda f: np.savez_compressed(f, **episode))
                meta["episodes"].append(
                    {
                        "file": file_name,
                        "seed": attempt_seed,
                        "length": length,
                        "success": success,
                        "return": float(episode["rewards"].sum()),
                    }
                )
            meta["attempts"].append({"seed": attempt_seed, "length": length, "success": success, "episode": kept_index})
            meta["expert_success_rate"] = float(np.mean([a["success"] for a in meta["attempts"]]))
            _write_atomic(root / META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
            log(
                f"[{len(meta['episodes'])}/{num_episodes} kept] {task_id} seed {attempt_seed}: "
                f"{'success' if success else 'failure'} in {length} steps"
            )
    finally:
        env.close()

    dataset = DemoDataset(root)
    if len(dataset):
        meta["action_stats"] = action_statistics(dataset.actions())
        _write_atomic(root / META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    attempts = meta["attempts"]
    rate = meta["expert_success_rate"] or 0.0
    log(
        f"{task_id}: expert success rate {sum(a['success'] for a in attempts)}/{len(attempts)} = {rate:.1%}; "
        f"{len(meta['episodes'])} episodes in {root}"
    )
    if len(meta["episodes"]) < num_episodes:
        log(f"warning: stopped after {len(attempts)} attempts with {len(meta['episodes'])}/{num_episodes} episodes")
    return DemoDataset(root)


def action_statistics(actions: np.ndarray) -> dict[str, list]:
    """Per-dimension statistics of actions [N, 7] in the layout of OpenVLA's norm_stats[dataset]["action"]."""
    actions = np.asarray(actions, np.float64)
    return {
        "mean": actions.mean(0).tolist(),
        "std": actions.std(0).tolist(),
        "min": actions.min(0).tolist(),
        "max": actions.max(0).tolist(),
        "q01": np.quantile(actions, 0.01, axis=0).tolist(),
        "q99": np.quantile(actions, 0.99, axis=0).tolist(),
        "mask": [i != GRIPPER for i in range(actions.shape[1])],
    }


def combine_demos(dataset_dirs: list[str | os.PathLike], out_dir: str | os.PathLike) -> DemoDataset:
    """A mixture of demo datasets in `out_dir`: every episode of each source, hard-linked (copied where links are
    impossible), with action statistics over all of them. An existing mixture of the same sources is reused."""
    root = Path(out_dir)
    sources = [DemoDataset(d) for d in dataset_dirs]
    names = [str(Path(d).resolve()) for d in dataset_dirs]
    if (root / META_FILE).exists():
        existing = DemoDataset(root)
        if existing.meta.get("sources") != names:
            raise ValueError(f"{root} holds a mixture of {existing.meta.get('sources')}, not {names}")
        return existing
    root.mkdir(parents=True, exist_ok=True)
    episodes = []
    for source in sources:
        for episode in source.meta["episodes"]:
            file_name = f"episode_{len(episodes):06d}.npz"
            target = root / file_name
            target.unlink(missing_ok=True)
            try:
                os.link(source.root / episode["file"], target)
            except OSError:
                _write_atomic(target, lambda f: f.write((source.root / episode["file"]).read_bytes()))
            episodes.append({**episode, "file": file_name, "task_id": source.meta["task_id"]})
    keys = ("task_id", "instruction", "suite", "robot", "backend", "backend_env_id")
    meta = {
        "schema_version": SCHEMA_VERSION,
        **{key: [source.meta[key] for source in sources] for key in keys},
        "env_options": sources[0].meta["env_options"],
        "sources": names,
        "seed": [source.meta["seed"] for source in sources],
        "keep_failures": any(source.meta["keep_failures"] for source in sources),
        "num_requested": len(episodes),
        "attempts": [attempt for source in sources for attempt in source.meta["attempts"]],
        "episodes": episodes,
        "expert_success_rate": None,
        "action_stats": action_statistics(np.concatenate([s.actions() for s in sources])) if episodes else None,
    }
    _write_atomic(root / META_FILE, lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return DemoDataset(root)


class DemoDataset:
    """A demo directory, read lazily: iterate episodes (dicts of the schema's arrays) or single steps."""

    def __init__(self, path: str | os.PathLike):
        self.root = Path(path)
        meta_path = self.root / META_FILE
        if not meta_path.exists():
            raise FileNotFoundError(f"{self.root} is not a demo dataset: it has no {META_FILE}")
        self.meta: dict[str, Any] = json.loads(meta_path.read_text())
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            version = self.meta.get("schema_version")
            raise ValueError(f"{meta_path}: schema version {version}, expected {SCHEMA_VERSION}")

    def __len__(self) -> int:
        return len(self.meta["episodes"])

    @property
    def num_steps(self) -> int:
        return sum(episode["length"] for episode in self.meta["episodes"])

    def episode(self, index: int, keys: tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
        """Episode `index`: its arrays (see the module docstring), or only `keys` (others are not decompressed)."""
        with np.load(self.root / self.meta["episodes"][index]["file"]) as archive:
            return {key: archive[key] for key in (keys or archive.files)}

    def actions(self) -> np.ndarray:
        """Every step's action, float32 [num_steps, 7], in episode order."""
        return np.concatenate([self.episode(i, ("actions",))["actions"] for i in range(len(self))])

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        for index in range(len(self)):
            yield self.episode(index)

    def steps(self) -> Iterator[dict[str, Any]]:
        """Single steps in order: {"image" [H, W, 3], "state" [D], "action" [7], "reward", "success", "instruction",
        "episode", "step"}; one episode is loaded at a time."""
        for index, episode in enumerate(self):
            instruction = str(episode["instruction"])
            for t in range(len(episode["actions"])):
                yield {
                    "image": episode["images"][t],
                    "state": episode["states"][t],
                    "action": episode["actions"][t],
                    "reward": float(episode["rewards"][t]),
                    "success": bool(episode["successes"][t]),
                    "instruction": instruction,
                    "episode": index,
                    "step": t,
                }


def _expert_for(task_id: str) -> Expert:
    spec = get_spec(task_id)
    if spec.expert_factory is None:
        raise ValueError(f"task {task_id!r} has no scripted expert, so demos cannot be generated for it")
    return spec.expert_factory()


def _resume(root: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The existing meta.json when it was written with the same settings, else `fresh`; a mismatch raises."""
    meta_path = root / META_FILE
    if not meta_path.exists():
        return fresh
    meta = json.loads(meta_path.read_text())
    for key in ("schema_version", "task_id", "env_options", "seed", "keep_failures"):
        if meta.get(key) != fresh[key]:
            raise ValueError(
                f"{root} holds a dataset with {key}={meta.get(key)!r}, not {fresh[key]!r}; "
                "use another directory or the same settings to resume it"
            )
    return meta


def _write_atomic(path: Path, write: Callable[[Any], Any]) -> None:
    """write(file) into a temporary file next to `path`, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
    os.replace(tmp, path)
