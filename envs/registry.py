"""The task registry: one place that knows every task, its suite, robot, instruction and simulator backend.

Backends (envs/metaworld.py, envs/maniskill.py, ...) call `register()` at import time with a `TaskSpec` whose
`factory` builds the gymnasium env. `make()` looks the id up and calls the factory; unknown ids get an error that
lists close matches. Nothing here imports a simulator, so listing tasks is cheap.
"""

from __future__ import annotations

import difflib
import importlib
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


def get_spec(task_id: str) -> TaskSpec:
    _load_backends()
    try:
        return _REGISTRY[task_id]
    except KeyError:
        close = difflib.get_close_matches(task_id, list(_REGISTRY), n=5, cutoff=0.4)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise KeyError(
            f"unknown task id {task_id!r}.{hint} Run `python -m envs list` for all {len(_REGISTRY)} tasks."
        ) from None


def make(task_id: str, **options: Any) -> gym.Env:
    """Build one env for `task_id`; options go to the backend factory (e.g. image_size, render_mode, seed)."""
    return get_spec(task_id).factory(**options)
