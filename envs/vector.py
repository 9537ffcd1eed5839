"""Vector envs: `num_envs` copies of one task stepped together, batched along a leading axis N.

    vec = make_vec("metaworld/pick-place", num_envs=4, seed=0, image_size=64)
    obs, info = vec.reset()                      # env i starts from seed 0 + i
    obs, reward, terminated, truncated, info = vec.step(actions)   # actions float32 [N, 7]

Batched observation: {"image": uint8 [N, H, W, 3], "instruction": tuple of N str, "state": float32 [N, D]};
reward float32 [N]; terminated, truncated bool [N]. Infos follow gymnasium's vector convention: info[key] is an
array over envs with a boolean mask info["_" + key]; info["success"] is a bool [N] on every step.

Autoreset (SAME_STEP, gymnasium's AutoresetMode.SAME_STEP): when env i's episode ends on a step, that same step
returns env i's reset observation in obs[i], with terminated/truncated[i] set for the episode that ended; the
episode's last observation is info["final_obs"][i] (an unbatched obs dict; None for envs that did not end) and its
last info info["final_info"] (masked by info["_final_obs"]). The top-level info entries of env i, "success" included,
are those of the step just taken, not of the reset. RL code needs final_obs to bootstrap truncated episodes.

Seeds: the first reset, and reset(seed=s), seed env i with seed + i (s + i); reset() without a seed and autoresets
continue each env's own RNG stream, so a run is reproducible from its seed.

Workers: for num_envs > 1 each env lives in its own process (multiprocessing "forkserver" context, which forks
workers from a small server process instead of re-importing the caller's program each time) with
OMP_NUM_THREADS=1; num_envs = 1 runs in-process unless in_process=False. An exception inside an env (e.g. a bad
action) is re-raised in the caller and the env stays usable. A worker that dies (segfault, killed) is restarted with
a fresh env: the step reports its episode as truncated with success False and info["worker_restarted"] True,
info["final_obs"] being the last observation seen from it; the new env is seeded with seed + i + N * restarts.

Per-env calls (ProcessVectorEnv only), for callers that schedule envs themselves (eval/suite.py refills an env
whose episode ended with the next episode's seed, and steps one half of the envs while it computes the other half's
actions): `send_resets(indices, seeds)` and `send_steps(indices, actions, autoreset=...)` start commands on those
envs' workers without waiting, `recv(indices)` waits for their answers, one per env in order: (obs, info) for a
reset, (obs, reward, terminated, truncated, info) unbatched for a step. With autoreset=False an ended episode is not
reset (obs is its last observation) and the caller resets it with the seed it wants. A worker that died is restarted
as above: a step reports its episode truncated (obs = the last one seen), a reset is repeated on the new env.

Another task on the same workers: `switch_task(task_id, **options)` closes every env and builds one of the new task
in the same worker processes (ProcessVectorEnv only), which saves each worker's start-up (a process, the Python and
simulator imports, a GL context: ~1.5 s of a Meta-World worker's ~2 s) when a caller runs several tasks in turn, as
eval/suite.py's evaluate does. Seeds start over as for a new vector env. If the new task's env cannot be built the
vector env is closed.

Native vectorization: a backend may give its TaskSpec a `vec_factory` (e.g. ManiSkill3's GPU-batched envs). With
native=None (default) make_vec uses it when it returns an env for these arguments, native=True requires it,
native=False always uses process workers. A native vector env must follow the batched contract above.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import traceback
from multiprocessing.connection import Connection
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector import AutoresetMode
from gymnasium.vector.utils import batch_space

from envs.registry import ACTION_DIM, get_spec, make

MP_CONTEXT = "forkserver"


def make_vec(
    task_id: str,
    num_envs: int,
    *,
    seed: int = 0,
    native: bool | None = None,
    in_process: bool | None = None,
    **options: Any,
):
    """A vector env of `num_envs` copies of `task_id`; options go to the task's factory. native: use the backend's
    vec_factory (None: when it has one that works here); in_process: no worker processes (None: when num_envs == 1).
    See the module docstring for the batched contract."""
    if num_envs < 1:
        raise ValueError(f"num_envs must be >= 1, got {num_envs}")
    spec = get_spec(task_id)
    if native is not False and spec.vec_factory is not None:
        vec = spec.vec_factory(num_envs=num_envs, seed=seed, **options)
        if vec is not None:
            return vec
    if native:
        raise ValueError(f"{task_id} has no native vector env for these arguments (backend {spec.backend!r})")
    return ProcessVectorEnv(task_id, num_envs, seed=seed, in_process=in_process, **options)


def _step_autoreset(env: gym.Env, action: np.ndarray) -> tuple:
    """One env step with same-step autoreset (see the module docstring)."""
    obs, reward, terminated, truncated, info = env.step(action)
    if terminated or truncated:
        info = {**info, "final_obs": obs, "final_info": info}
        obs, _ = env.reset()
    return obs, reward, terminated, truncated, info


def _handle(env: gym.Env, command: str, payload: Any) -> Any:
    if command == "step":
        return _step_autoreset(env, payload)
    if command == "step_no_autoreset":
        return env.step(payload)
    if command == "reset":
        return env.reset(seed=payload)
    raise ValueError(f"unknown vector-env command {command!r}")


def _worker_main(conn: Connection, task_id: str, options: dict[str, Any]) -> None:
    """A worker process: build the env, report its spaces, then serve (command, payload) requests until "close"."""
    os.environ["OMP_NUM_THREADS"] = "1"  # N workers share the CPU cores; set before the simulator is imported
    try:
        env = make(task_id, **options)
        conn.send(("ok", (env.observation_space, env.action_space)))
    except Exception as error:
        conn.send(("error", (error, traceback.format_exc())))
        return
    while True:
        command, payload = conn.recv()
        if command == "close":
            env.close()
            conn.send(("ok", None))
            return
        try:
            if command == "make":  # switch_task: the same process, an env of another task
                env.close()
                env = make(payload[0], **payload[1])
                conn.send(("ok", (env.observation_space, env.action_space)))
                continue
            conn.send(("ok", _handle(env, command, payload)))
        except Exception as error:
            conn.send(("error", (error, traceback.format_exc())))


class WorkerCrashed(RuntimeError):
    """A worker process died or its pipe broke."""


class _LocalWorker:
    """The env in this process, behind the same send/recv interface as a worker process."""

    def __init__(self, task_id: str, options: dict[str, Any]):
        self.env = make(task_id, **options)
        self.spaces = (self.env.observation_space, self.env.action_space)
        self._result: Any = None
        self._error: Exception | None = None

    def switch_task(self, task_id: str, options: dict[str, Any]) -> None:
        self.env.close()
        self.env = make(task_id, **options)
        self.spaces = (self.env.observation_space, self.env.action_space)

    @property
    def pid(self) -> int:
        return os.getpid()

    def send(self, command: str, payload: Any = None) -> None:
        try:
            self._result, self._error = _handle(self.env, command, payload), None
        except Exception as error:  # raised by recv(), after every env got its command, as for worker processes
            self._result, self._error = None, error

    def recv(self) -> Any:
        if self._error is not None:
            raise self._error
        return self._result

    def close(self) -> None:
        self.env.close()


class _ProcessWorker:
    """One env in a child process, talking over a pipe."""

    def __init__(self, task_id: str, options: dict[str, Any], index: int):
        self.task_id, self.options, self.index = task_id, options, index
        self.spaces: tuple[gym.Space, gym.Space] | None = None
        self._start()

    def _start(self) -> None:
        context = mp.get_context(MP_CONTEXT)
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child_conn, self.task_id, self.options), daemon=True,
            name=f"razor-env-{self.task_id}-{self.index}",
        )  # fmt: skip
        self.process.start()
        child_conn.close()  # so that recv() sees EOF when the child dies
        self._broken = False

    @property
    def pid(self) -> int:
        return self.process.pid

    def handshake(self) -> None:
        self.spaces = self.recv()

    def send(self, command: str, payload: Any = None) -> None:
        try:
            self.conn.send((command, payload))
        except (BrokenPipeError, ConnectionResetError, EOFError):
            self._broken = True

    def recv(self) -> Any:
        if self._broken:
            raise WorkerCrashed(f"worker {self.index} (pid {self.pid}) is gone")
        try:
            status, result = self.conn.recv()
        except (EOFError, ConnectionResetError, BrokenPipeError) as error:
            raise WorkerCrashed(f"worker {self.index} (pid {self.pid}) died") from error
        if status == "error":
            error, worker_traceback = result
            error.add_note(f"in vector-env worker {self.index} (pid {self.pid}):\n{worker_traceback}")
            raise error
        return result

    def restart(self) -> None:
        self.kill()
        self._start()
        self.handshake()

    def send_switch(self, task_id: str, options: dict[str, Any]) -> None:
        """Start rebuilding the env as one of `task_id` (a restart after this builds that task too)."""
        self.task_id, self.options = task_id, options
        self.send("make", (task_id, options))

    def finish_switch(self) -> None:
        """Wait for the rebuilt env's spaces; a worker that died meanwhile is restarted on the new task."""
        try:
            self.handshake()
        except WorkerCrashed:
            self.restart()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(timeout=10)
        self.conn.close()

    def close(self) -> None:
        if self.process.is_alive() and not self._broken:
            self.send("close")
            try:
                self.recv()
            except Exception:  # closing is best effort: the process is killed below anyway
                pass
            self.process.join(timeout=5)
        self.kill()


class ProcessVectorEnv(gym.vector.VectorEnv):
    """`num_envs` envs of one task in worker processes (or in-process), batched per the module docstring."""

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP}

    def __init__(self, task_id: str, num_envs: int, *, seed: int = 0, in_process: bool | None = None, **options):
        self.task_id, self.num_envs, self.options = task_id, num_envs, options
        self._base_seed = seed
        self._started = False  # the first reset() without a seed still seeds env i with seed + i
        self._restarts = [0] * num_envs
        self._last_obs: list[dict | None] = [None] * num_envs
        self._pending: list[tuple[str, int | None] | None] = [None] * num_envs  # each worker's unanswered command
        if in_process is None:
            in_process = num_envs == 1
        if in_process:
            self.workers: list[Any] = [_LocalWorker(task_id, options) for _ in range(num_envs)]
        else:
            self.workers = [_ProcessWorker(task_id, options, i) for i in range(num_envs)]
            try:
                for worker in self.workers:
                    worker.handshake()
            except BaseException:
                self.close()
                raise
        self.single_observation_space, self.single_action_space = self.workers[0].spaces
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self.spec = None

    def switch_task(self, task_id: str, **options: Any) -> None:
        """Make every env one of `task_id` (with `options`) in the same workers; see the module docstring. An unknown
        task id raises before anything changes; an env that cannot be built raises after every worker answered, and
        the vector env is then closed (its envs are gone)."""
        get_spec(task_id)
        if any(pending is not None for pending in self._pending):
            raise RuntimeError("switch_task with commands in flight: recv their answers first")
        first_error = None
        for worker in self.workers:
            if isinstance(worker, _LocalWorker):
                try:
                    worker.switch_task(task_id, options)
                except Exception as error:
                    first_error = first_error or error
            else:
                worker.send_switch(task_id, options)
        for worker in self.workers:
            if not isinstance(worker, _LocalWorker):
                try:
                    worker.finish_switch()
                except Exception as error:  # every worker's answer is read, to keep the pipes in step
                    first_error = first_error or error
        if first_error is not None:
            self.close()
            raise first_error
        self.task_id, self.options = task_id, options
        self._started, self._restarts = False, [0] * self.num_envs
        self._last_obs = [None] * self.num_envs
        self.single_observation_space, self.single_action_space = self.workers[0].spaces
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)

    @property
    def worker_pids(self) -> list[int]:
        """Process ids of the workers (this process's id for in-process envs)."""
        return [worker.pid for worker in self.workers]

    def reset(self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None):
        """Reset every env; returns (batched obs, info). seed=s seeds env i with s + i; a list of num_envs seeds
        (gymnasium's convention) gives each env its own, e.g. GRPO's groups of envs that share a start.
        `options` is accepted for API compatibility and ignored."""
        if isinstance(seed, Sequence):
            if len(seed) != self.num_envs:
                raise ValueError(f"reset got {len(seed)} seeds for {self.num_envs} envs; give one per env or an int")
            seeds = [int(s) for s in seed]
            super().reset(seed=seeds[0])
        else:
            super().reset(seed=seed)
            if seed is not None:
                self._base_seed = seed
            seeds = [None] * self.num_envs
            if seed is not None or not self._started:
                seeds = [self._base_seed + i for i in range(self.num_envs)]
        self._started = True
        everyone = range(self.num_envs)
        self.send_resets(everyone, seeds)
        results = self.recv(everyone)
        info: dict[str, Any] = {}
        for i, (_, env_info) in enumerate(results):
            info = self._add_info(info, env_info, i)
        return _stack_obs([obs for obs, _ in results]), info

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float32)
        if actions.shape != (self.num_envs, ACTION_DIM):
            raise ValueError(f"actions must have shape ({self.num_envs}, {ACTION_DIM}), got {actions.shape}")
        everyone = range(self.num_envs)
        self.send_steps(everyone, actions)
        results = self.recv(everyone)
        info: dict[str, Any] = {}
        for i, result in enumerate(results):
            info = self._add_info(info, result[4], i)
        rewards = np.array([result[1] for result in results], np.float32)
        terminated = np.array([result[2] for result in results], bool)
        truncated = np.array([result[3] for result in results], bool)
        return _stack_obs([result[0] for result in results]), rewards, terminated, truncated, info

    # ---- per-env calls (see the module docstring) ----

    def send_resets(self, indices: Sequence[int], seeds: Sequence[int | None]) -> None:
        """Start resetting env indices[k] with seeds[k] (None: continue its RNG stream); answers come from recv."""
        for i, seed in zip(indices, seeds, strict=True):
            self.workers[i].send("reset", seed)
            self._pending[i] = ("reset", seed)

    def send_steps(self, indices: Sequence[int], actions: np.ndarray, autoreset: bool = True) -> None:
        """Start stepping env indices[k] with actions[k] (float32 [len(indices), 7]); answers come from recv."""
        command = "step" if autoreset else "step_no_autoreset"
        for i, action in zip(indices, np.asarray(actions, dtype=np.float32), strict=True):
            self.workers[i].send(command, action)
            self._pending[i] = (command, None)

    def recv(self, indices: Sequence[int]) -> list[tuple]:
        """Wait for the answers of envs `indices` (every one of them, to keep the pipes in step), then raise the
        first error. A reset answers (obs, info), a step (obs, reward, terminated, truncated, info)."""
        idle = [i for i in indices if self._pending[i] is None]
        if idle:
            raise RuntimeError(f"envs {idle} have no command in flight: call send_steps or send_resets first")
        results, first_error = [], None
        for i in indices:
            command, seed = self._pending[i]
            self._pending[i] = None
            try:
                result = self.workers[i].recv()
            except WorkerCrashed:
                result = self._crashed_reset(i, seed) if command == "reset" else self._crashed_step(i, command)
            except Exception as error:
                result, first_error = None, first_error or error
            if result is not None:
                self._last_obs[i] = result[0]
            results.append(result)
        if first_error is not None:
            raise first_error
        return results

    def _restart(self, i: int, seed: int | None) -> dict:
        """Restart worker i with a fresh env and reset it (seed None: seed + i + N * restarts); returns its first
        observation."""
        self._restarts[i] += 1
        worker = self.workers[i]
        worker.restart()
        worker.send("reset", self._base_seed + i + self.num_envs * self._restarts[i] if seed is None else seed)
        obs, _ = worker.recv()
        return obs

    def _crashed_reset(self, i: int, seed: int | None) -> tuple:
        """The reset result reported for an env whose worker died: the same reset on a fresh env."""
        return self._restart(i, seed), {"worker_restarted": True}

    def _crashed_step(self, i: int, command: str) -> tuple:
        """The step result reported for an env whose worker died mid-episode: truncated, failed, restarted (with
        autoreset, obs is the new env's first observation; without, the last one seen)."""
        final_info = {"success": False, "worker_restarted": True}
        first_obs = self._restart(i, None)
        if command == "step_no_autoreset":
            return self._last_obs[i], 0.0, False, True, final_info
        info = {**final_info, "final_obs": self._last_obs[i], "final_info": final_info}
        return first_obs, 0.0, False, True, info

    def close_extras(self, **kwargs: Any) -> None:
        for worker in getattr(self, "workers", []):
            worker.close()

    def __del__(self):
        if not self.closed:  # don't leave worker processes behind when the env is dropped without close()
            self.close()


def _stack_obs(observations: list[dict]) -> dict[str, Any]:
    """N unbatched observations -> one batched observation (see the module docstring)."""
    return {
        "image": np.stack([obs["image"] for obs in observations]),
        "instruction": tuple(obs["instruction"] for obs in observations),
        "state": np.stack([obs["state"] for obs in observations]),
    }
