"""The task registry: one place that knows every task, its suite, robot, instruction and simulator backend.

Backends (envs/metaworld.py, envs/maniskill.py, ...) call `register()` at import time with a `TaskSpec` whose
`factory` builds the gymnasium env. `make()` looks the id up and calls the factory; unknown ids get an error that
lists close matches. Nothing here imports a simulator, so listing tasks is cheap.
"""

from __future__ import annotations

import difflib
import importlib
import string
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import gymnasium as gym
import numpy as np

# Backend modules imported lazily by list_tasks()/make(); each registers its tasks when imported.
BACKEND_MODULES = ("envs.toy", "envs.metaworld", "envs.maniskill")


class Expert(Protocol):
    """A scripted demonstrator for one task. It may read privileged simulator state through `env`."""

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        """Called after every env.reset(); planners may plan the whole episode here."""

    def act(self, obs: dict) -> np.ndarray:
        """The next action in the contract's 7-D convention, float32 [7]."""


@dataclass(frozen=True)
class TaskSpec:
    """What a user needs to know about a task before building it."""

    task_id: str
    """Razor's id, e.g. "metaworld/pick-place" or "simpler/PutCarrotOnPlateInScene"."""
    suite: str
    """Task family used by the retained-skill suites, e.g. "metaworld", "maniskill-panda", "simpler-bridge"."""
    robot: str
    """Robot name, e.g. "sawyer", "panda", "widowx"."""
    instruction: str
    """Natural-language instruction given to the policy."""
    backend: str
    """Simulator backend: "mujoco" (Meta-World) or "maniskill3" (SAPIEN)."""
    max_episode_steps: int
    """Fixed horizon: episodes are truncated after this many steps."""
    factory: Callable[..., gym.Env] = field(repr=False, compare=False)
    """factory(**options) -> gymnasium.Env honouring the observation/action contract in envs/__init__.py."""
    backend_env_id: str = ""
    """The id of the underlying simulator env, for reference and recordings."""
    expert_factory: Callable[[], Expert] | None = field(default=None, repr=False, compare=False)
    """Builds this task's scripted expert, or None when the task has none."""
    vec_factory: Callable[..., Any] | None = field(default=None, repr=False, compare=False)
    """Optional native (e.g. GPU-batched) vector env: vec_factory(num_envs=, seed=, **options) -> a vector env with
    the batched contract of envs.vector, or None when it cannot run here (then make_vec uses process workers)."""
    render_version: int = 1
    """Version of the task's default images: bumped when a change of default render settings changes what the
    policy sees, so that stored images (demo caches, a pi0 trained on them) are not mixed with new ones."""


_REGISTRY: dict[str, TaskSpec] = {}
_backends_loaded = False


def register(spec: TaskSpec) -> None:
    if spec.task_id in _REGISTRY:
        raise ValueError(f"task {spec.task_id!r} is registered twice")
    _REGISTRY[spec.task_id] = spec


def _load_backends() -> None:
    global _backends_loaded
    if _backends_loaded:
        return
    for module in BACKEND_MODULES:
        importlib.import_module(module)  # registration only: simulators are imported inside the factories
    _backends_loaded = True


def list_tasks(suite: str | None = None, backend: str | None = None) -> list[TaskSpec]:
    """All registered tasks, optionally filtered by suite or backend, sorted by id."""
    _load_backends()
    specs = sorted(_REGISTRY.values(), key=lambda s: s.task_id)
    return [s for s in specs if (suite is None or s.suite == suite) and (backend is None or s.backend == backend)]


class UnknownTaskError(KeyError):
    """A task id that is not registered (the message lists close matches)."""

    def __str__(self) -> str:  # KeyError would print the message in quotes
        return str(self.args[0])


def get_spec(task_id: str) -> TaskSpec:
    _load_backends()
    try:
        return _REGISTRY[task_id]
    except KeyError:
        close = difflib.get_close_matches(task_id, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownTaskError(
            f"unknown task id {task_id!r}.{hint} Run `python -m envs list` for all {len(_REGISTRY)} tasks."
        ) from None


def make(task_id: str, **options: Any) -> gym.Env:
    """Build one env for `task_id`; options go to the backend factory (e.g. image_size); seed it with reset(seed=)."""
    return get_spec(task_id).factory(**options)


# ---- The observation/action contract (envs/__init__.py), shared by the backends -------------------------------

ACTION_DIM = 7
GRIPPER = 6
"""Index of the gripper in [dx, dy, dz, droll, dpitch, dyaw, gripper]."""
ACTION_LOW = np.array([-1, -1, -1, -1, -1, -1, 0], np.float32)
ACTION_HIGH = np.ones(ACTION_DIM, np.float32)
INSTRUCTION_CHARSET = string.printable


def action_space() -> gym.spaces.Box:
    """The contract's action space: six end-effector deltas in [-1, 1] and gripper openness in [0, 1]."""
    return gym.spaces.Box(ACTION_LOW, ACTION_HIGH, (ACTION_DIM,), np.float32)


def observation_space(image_hw: tuple[int, int], state_low: np.ndarray, state_high: np.ndarray) -> gym.spaces.Dict:
    """The contract's observation space for images of `image_hw` = (H, W) and a state with the given bounds."""
    return gym.spaces.Dict(
        {
            "image": gym.spaces.Box(0, 255, (*image_hw, 3), np.uint8),
            "instruction": gym.spaces.Text(max_length=256, charset=INSTRUCTION_CHARSET),
            "state": gym.spaces.Box(np.float32(state_low), np.float32(state_high), dtype=np.float32),
        }
    )


def image_hw(image_size: int | tuple[int, int]) -> tuple[int, int]:
    """(H, W) from the `image_size` option: an int for square images or an (H, W) pair."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h < 8 or w < 8:
        raise ValueError(f"image_size must be at least 8 pixels, got {image_size!r}")
    return int(h), int(w)


def check_action(action: Any) -> np.ndarray:
    """The action as float32 [7], clipped into the action space; a wrong shape or NaN/inf raises ValueError."""
    action = np.asarray(action, dtype=np.float32)
    if action.shape != (ACTION_DIM,):
        raise ValueError(
            f"action must have shape ({ACTION_DIM},) = [dx, dy, dz, droll, dpitch, dyaw, gripper], got {action.shape}"
        )
    if not np.all(np.isfinite(action)):
        raise ValueError(f"action contains NaN or inf: {action}")
    return np.clip(action, ACTION_LOW, ACTION_HIGH)
