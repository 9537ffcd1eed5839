"""The retained-skill eval suite: run a policy over named task lists and say what it can still do.

A `Suite` is a named list of tasks (ids from envs/) with a number of episodes per task and the reset seeds
(episode i of a task uses seed `seed + i`, the same for every policy, so base and fine-tuned checkpoints see the
same initial states). Built-in suites: "metaworld", "maniskill-panda", "simpler-bridge" (every task of that
family in the envs registry, except "metaworld" = Meta-World's MT10 set and "metaworld-mt50" = all 50; 75 episodes
per task by default, the minimum SimplerEnv's maintainers ask for) and "toy"; custom suites from YAML:

    name: my-suite
    episodes_per_task: 75        # default for every task
    seed: 100000                 # episode i uses reset seed seed + i
    env_options: {image_size: 64}
    tasks:
      - metaworld/reach
      - {id: metaworld/push, episodes: 100}

`evaluate(actor, suite)` runs it on `num_envs` envs of a vector env and returns per task the success count, the
rate with its Wilson 95% interval, the mean episode length and the seeds. Episode k of a task always starts from
reset(seed=seeds[k]) and its result is recorded as episode k, whichever env runs it, so results do not depend on
`num_envs` (for an actor whose actions do not depend on the batch). With process workers (envs/vector.py) the envs
are kept busy: an env whose episode ended is reset with the next episode's seed at once, envs with nothing left to
run are not stepped, and (overlap=True) one half of the envs steps while the actor computes the other half's
actions; the tasks of a suite run one after the other on the same worker processes (`switch_task`: no new processes,
imports or GL contexts per task). A native vector env, which steps all its envs together, runs waves of
`num_envs` episodes instead (episodes that end early are masked until the wave ends). An episode succeeds if
`info["success"]` was true at any step (success_once). Videos of the first `videos_per_task` episodes of each task
are written when `video_dir` is given.

`actor` is any callable (images uint8 [B, H, W, 3], instructions list[str]) -> actions float32 [B, 7]; `vla_actor`
makes one from a VLAPolicy (greedy decoding by default, un-normalised with `unnorm_key`).

Results: `EvalRecord` -> eval.json (everything, including the comparison to the base when given), results.csv
(one row per task) and results.md (a Markdown table) in one directory.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from eval.stats import Rate, compare

ACTION_DIM = 7
DEFAULT_EPISODES = 75  # SimplerEnv's maintainers ask for at least 75 trials per task
BUILTIN_SUITES = ("metaworld", "metaworld-mt50", "maniskill-panda", "simpler-bridge", "toy")


class OutputExistsError(FileExistsError):
    """An evaluation's output exists already and overwriting was not asked for."""


Actor = Callable[[np.ndarray, list], np.ndarray]


@dataclass
class SuiteTask:
    id: str
    """Task id from the envs registry, e.g. "metaworld/pick-place"."""
    episodes: int
    """Episodes (trials) for this task."""


@dataclass
class Suite:
    """A named list of tasks with episodes per task and reset seeds."""

    name: str
    tasks: list[SuiteTask]
    seed: int = 100_000
    """Episode i of every task is reset with seed `seed + i` (far from typical training seeds 0..N)."""
    env_options: dict = field(default_factory=dict)
    """Options for envs.make / envs.make_vec (e.g. image_size)."""

    def __post_init__(self):
        if not self.tasks:
            raise ValueError(f"suite {self.name!r} has no tasks")
        ids = [t.id for t in self.tasks]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"suite {self.name!r} lists tasks more than once: {dup}")
        for t in self.tasks:
            if t.episodes < 1:
                raise ValueError(f"suite {self.name!r}: task {t.id!r} needs >= 1 episode, got {t.episodes}")

    @property
    def task_ids(self) -> list[str]:
        return [t.id for t in self.tasks]

    def seeds(self, task: SuiteTask) -> list[int]:
        return [self.seed + i for i in range(task.episodes)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Suite":
        unknown = set(d) - {"name", "tasks", "episodes_per_task", "seed", "env_options"}
        if unknown:
            raise ValueError(f"unknown suite keys {sorted(unknown)}; allowed: name, tasks, episodes_per_task, seed, env_options")
        if "name" not in d or "tasks" not in d:
            raise ValueError("a suite needs `name` and `tasks`")
        default = int(d.get("episodes_per_task", DEFAULT_EPISODES))
        tasks = []
        for t in d["tasks"]:
            if isinstance(t, str):
                tasks.append(SuiteTask(t, default))
            elif isinstance(t, dict) and "id" in t and set(t) <= {"id", "episodes"}:
                tasks.append(SuiteTask(str(t["id"]), int(t.get("episodes", default))))
            else:
                raise ValueError(f"suite task entries are ids or {{id:, episodes:}} mappings, got {t!r}")
        return cls(str(d["name"]), tasks, int(d.get("seed", 100_000)), dict(d.get("env_options") or {}))

    def with_episodes(self, episodes: int) -> "Suite":
        """The same suite with `episodes` per task (e.g. the quick/cpu presets' smaller budgets)."""
        return Suite(self.name, [SuiteTask(t.id, episodes) for t in self.tasks], self.seed, dict(self.env_options))

    def without(self, task_ids: Sequence[str]) -> "Suite":
        return Suite(self.name, [t for t in self.tasks if t.id not in set(task_ids)], self.seed, dict(self.env_options))


def load_suite(spec: str | Path, episodes: int | None = None, tasks: Sequence[str] | None = None) -> Suite:
    """A built-in suite by name ("metaworld", "maniskill-panda", "simpler-bridge", "toy") or a YAML file path.

    `episodes` overrides the episodes per task; `tasks` restricts a built-in suite to those ids (validated).
    """
    import envs

    p = Path(str(spec))
    if p.suffix in (".yaml", ".yml"):
        import yaml

        if not p.exists():
            raise FileNotFoundError(f"suite file {p} does not exist")
        suite = Suite.from_dict(yaml.safe_load(p.read_text()) or {})
    elif str(spec) in BUILTIN_SUITES:
        suite = Suite(str(spec), [SuiteTask(t, DEFAULT_EPISODES) for t in builtin_task_ids(str(spec))])
    else:
        raise ValueError(f"unknown suite {str(spec)!r}: give one of {list(BUILTIN_SUITES)} or a .yaml file")
    if tasks is not None:
        missing = [t for t in tasks if t not in suite.task_ids]
        for t in missing:
            envs.get_spec(t)  # unknown ids: KeyError with close matches
        if missing:
            raise ValueError(f"tasks {missing} are not in suite {suite.name!r} ({suite.task_ids})")
        suite = Suite(suite.name, [t for t in suite.tasks if t.id in set(tasks)], suite.seed, suite.env_options)
    if episodes is not None:
        suite = suite.with_episodes(episodes)
    validate_tasks(suite.task_ids)
    return suite


def builtin_task_ids(name: str) -> list[str]:
    """Task ids of a built-in suite (see the module docstring)."""
    import envs

    if name == "metaworld":
        from envs.metaworld import MT10

        return [f"metaworld/{t}" for t in MT10]
    family = "metaworld" if name == "metaworld-mt50" else name
    ids = [s.task_id for s in envs.list_tasks(suite=family)]
    if not ids:
        raise ValueError(f"built-in suite {name!r} has no registered tasks (is its simulator backend installed?)")
    return ids


def validate_tasks(task_ids: Sequence[str]) -> None:
    """Every id must be registered (KeyError naming close matches otherwise)."""
    import envs

    for t in task_ids:
        envs.get_spec(t)


# ------------------------------------------------------------------------------------------------- running


@dataclass
class TaskResult:
    task: str
    successes: int
    trials: int
    mean_episode_len: float
    seeds: list[int]
    episode_success: list[bool]
    episode_len: list[int]
    wall_s: float

    def to_dict(self) -> dict:
        d = Rate(self.successes, self.trials).to_dict()
        d.update(mean_episode_len=self.mean_episode_len, wall_s=self.wall_s, seeds=self.seeds,
                 episode_success=self.episode_success, episode_len=self.episode_len)
        return d


def _instructions(obs: dict, n: int) -> list[str]:
    ins = obs["instruction"]
    return [str(ins)] * n if isinstance(ins, str) else [str(s) for s in ins]


def _step_success(info: dict, done: np.ndarray, n: int) -> np.ndarray:
    """info["success"] of this step per env; for envs that just finished under same-step autoreset the final
    step's info lives in info["final_info"]."""
    succ = np.asarray(info.get("success", np.zeros(n, bool)), dtype=bool).reshape(-1)
    if succ.size != n:
        succ = np.broadcast_to(succ, (n,)).copy()
    final = info.get("final_info")
    if final is not None and done.any():
        if isinstance(final, dict) and "success" in final:
            fs = np.asarray(final["success"], dtype=bool).reshape(-1)
            mask = np.asarray(final.get("_success", done), dtype=bool).reshape(-1)
            succ = np.where(mask & done, fs, succ)
        elif isinstance(final, (list, tuple, np.ndarray)):  # list of per-env dicts (older convention)
            for i, fi in enumerate(final):
                if done[i] and isinstance(fi, dict) and "success" in fi:
                    succ[i] = bool(fi["success"])
    return succ


def run_task(actor: Actor, task_id: str, seeds: Sequence[int], num_envs: int = 4, env_options: dict | None = None,
             max_steps: int | None = None, video_dir: str | Path | None = None, videos: int = 0,
             video_fps: int = 10, overlap: bool = False, progress: bool = False) -> TaskResult:
    """Run one episode per seed of `task_id` with `actor` on `num_envs` envs (see the module docstring).
    overlap: step one half of the envs while the actor computes the other half's actions (process workers only).
    Off by default: with the policy on the same CPU cores, the second, smaller batch per step cost more than the
    overlap saved (measured on the cpu experiment's settings: x0.83-0.97 against refilling alone, 2 cores); it is
    meant for a policy on an accelerator, whose inference leaves the cores to the workers.
    progress: a bar of finished episodes with ETA."""
    seeds, env_options = _checked_seeds(task_id, seeds), dict(env_options or {})
    venv = _task_vec(None, task_id, _num_envs(num_envs, seeds), seeds[0], env_options)
    try:
        return _run_on(venv, actor, task_id, seeds, max_steps, video_dir, videos, video_fps, overlap, progress)
    finally:
        venv.close()


def _checked_seeds(task_id: str, seeds: Sequence[int]) -> list[int]:
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError(f"no seeds given for {task_id!r}")
    return seeds


def _num_envs(num_envs: int, seeds: list[int]) -> int:
    return max(1, min(num_envs, len(seeds)))


def _task_vec(venv, task_id: str, num_envs: int, first_seed: int, env_options: dict):
    """A vector env of `num_envs` envs of `task_id`: `venv` (None, or the previous task's) switched to the task when
    it has process workers and as many envs, else a new one (`venv` closed)."""
    import envs
    from envs.vector import ProcessVectorEnv

    if isinstance(venv, ProcessVectorEnv) and not venv.closed and venv.num_envs == num_envs:
        try:
            venv.switch_task(task_id, **env_options)
            return venv
        except BaseException:
            venv.close()
            raise
    if venv is not None:
        venv.close()
    return envs.make_vec(task_id, num_envs, seed=first_seed, **env_options)


def _run_on(venv, actor: Actor, task_id: str, seeds: list[int], max_steps: int | None, video_dir, videos: int,
            video_fps: int, overlap: bool, progress: bool) -> TaskResult:
    """run_task on a vector env of `task_id` that the caller made and closes."""
    from tqdm import tqdm

    import envs
    from envs.vector import ProcessVectorEnv

    horizon = int(max_steps or envs.get_spec(task_id).max_episode_steps)
    shape = tuple(venv.single_action_space.shape)
    if shape != (ACTION_DIM,):
        raise ValueError(f"task {task_id!r} takes actions of shape {shape}, the policy emits ({ACTION_DIM},)")
    recorder = _Videos(task_id, seeds, videos if video_dir else 0, video_dir, video_fps)
    t0 = time.perf_counter()
    bar = tqdm(total=len(seeds), desc=task_id, unit="episode", disable=not progress, dynamic_ncols=True)
    try:
        if isinstance(venv, ProcessVectorEnv):
            groups = 2 if overlap and venv.num_envs >= 2 else 1
            ep_success, ep_len = _run_refilled(actor, venv, seeds, horizon, recorder, groups, bar.update)
        else:
            ep_success, ep_len = _run_waves(actor, venv, seeds, horizon, recorder, bar.update)
    finally:
        bar.close()
    return TaskResult(task_id, int(sum(ep_success)), len(ep_success), float(np.mean(ep_len)) if ep_len else math.nan,
                      list(seeds), ep_success, ep_len, time.perf_counter() - t0)


def _actions(actor: Actor, images: np.ndarray, instructions: list[str]) -> np.ndarray:
    actions = np.asarray(actor(images, instructions), dtype=np.float32)
    if actions.shape != (len(images), ACTION_DIM):
        raise ValueError(f"actor returned actions of shape {actions.shape}, expected ({len(images)}, {ACTION_DIM})")
    return actions


def _run_refilled(actor: Actor, venv, seeds: list[int], horizon: int, recorder: "_Videos", groups: int,
                  episode_ended: Callable[[], object]) -> tuple[list[bool], list[int]]:
    """Episode k runs from reset(seed=seeds[k]) on whichever env is free: an env whose episode ended is reset with
    the next episode's seed at once, and envs with no episode left are not stepped. With groups=2 the envs form
    two halves stepped alternately: while one half's workers step, the actor computes the other half's actions.
    Returns per episode (success_once, length)."""
    n_env = venv.num_envs
    success, length = [False] * len(seeds), [0] * len(seeds)
    episode_of: list[int | None] = [None] * n_env  # the episode each env is running
    obs_of: list[dict | None] = [None] * n_env
    next_episode = 0

    def start(indices: list[int]) -> None:
        """Reset `indices` with the next episodes' seeds (envs left over when none remain go idle)."""
        nonlocal next_episode
        take = indices[: len(seeds) - next_episode]
        for i in take:
            episode_of[i], next_episode = next_episode, next_episode + 1
        venv.send_resets(take, [seeds[episode_of[i]] for i in take])
        for i, (obs, _) in zip(take, venv.recv(take)):
            obs_of[i] = obs
            recorder.start(episode_of[i], obs)

    def act(half: list[int]) -> list[int]:
        """Send the actor's actions to the running envs of `half`; returns the envs stepped."""
        running = [i for i in half if episode_of[i] is not None]
        if running:
            images = np.stack([obs_of[i]["image"] for i in running])
            actions = _actions(actor, images, [str(obs_of[i]["instruction"]) for i in running])
            venv.send_steps(running, actions, autoreset=False)
        return running

    def finish(stepped: list[int]) -> None:
        """Record the step results of `stepped`; refill the envs whose episode ended."""
        ended = []
        for i, (obs, _, terminated, truncated, info) in zip(stepped, venv.recv(stepped)):
            k = episode_of[i]
            length[k] += 1
            success[k] |= bool(info.get("success", False))
            obs_of[i] = obs
            recorder.add(k, obs, length[k], success[k])
            if terminated or truncated or length[k] >= horizon:
                recorder.finish(k)
                episode_ended()
                episode_of[i] = None
                ended.append(i)
        start(ended)

    halves = [list(range(n_env))[g::groups] for g in range(groups)]
    start(list(range(n_env)))
    stepped = [act(half) for half in halves]
    while any(stepped):
        for g, half in enumerate(halves):
            finish(stepped[g])
            stepped[g] = act(half)
    return success, length


def _run_waves(actor: Actor, venv, seeds: list[int], horizon: int, recorder: "_Videos",
               episode_ended: Callable[[], object]) -> tuple[list[bool], list[int]]:
    """For native vector envs (one batched simulator, e.g. ManiSkill3 on a GPU), which step all envs together:
    waves of num_envs episodes, episodes that end early masked until the wave ends. Returns per episode
    (success_once, length)."""
    if seeds != list(range(seeds[0], seeds[0] + len(seeds))):
        raise ValueError("seeds must be consecutive integers (a native vector env seeds env i with seed + i)")
    n_env = venv.num_envs
    ep_success, ep_len = [], []
    for w in range(0, len(seeds), n_env):
        wave = list(seeds[w : w + n_env])
        obs, _ = venv.reset(seed=wave[0])  # env i gets seed wave[0] + i; in the last wave extra envs are ignored
        alive = np.arange(n_env) < len(wave)
        success = np.zeros(n_env, bool)
        length = np.zeros(n_env, int)
        instructions = _instructions(obs, n_env)
        for i in range(len(wave)):
            recorder.start(w + i, {"image": obs["image"][i], "instruction": instructions[i]})
        for _ in range(horizon):
            if not alive.any():
                break
            obs, _, term, trunc, info = venv.step(_actions(actor, np.asarray(obs["image"]), _instructions(obs, n_env)))
            done = np.asarray(term, bool) | np.asarray(trunc, bool)
            success |= _step_success(info, done, n_env) & alive
            length += alive
            for i in np.flatnonzero(alive):
                last = info["final_obs"][i] if done[i] and "final_obs" in info else None
                image = last["image"] if last is not None else obs["image"][i]
                recorder.add(w + i, {"image": image, "instruction": instructions[i]}, int(length[i]), bool(success[i]))
                if done[i] or length[i] >= horizon:
                    recorder.finish(w + i)
                    episode_ended()
            alive &= ~done
        ep_success += [bool(x) for x in success[: len(wave)]]
        ep_len += [int(x) for x in length[: len(wave)]]
    return ep_success, ep_len


class _Videos:
    """Captioned frames of the first `count` episodes of a task, each written to an mp4 when its episode ends."""

    def __init__(self, task_id: str, seeds: list[int], count: int, video_dir: str | Path | None, fps: int):
        self.task_id, self.seeds, self.count, self.video_dir, self.fps = task_id, seeds, count, video_dir, fps
        self.frames: dict[int, list[np.ndarray]] = {}

    def start(self, episode: int, obs: dict) -> None:
        if episode < self.count:
            self.frames[episode] = [_frame(obs["image"], str(obs["instruction"]), 0, False)]

    def add(self, episode: int, obs: dict, step: int, success: bool) -> None:
        if episode in self.frames:
            self.frames[episode].append(_frame(obs["image"], str(obs["instruction"]), step, success))

    def finish(self, episode: int) -> None:
        if episode in self.frames:
            name = f"{self.task_id.replace('/', '__')}_seed{self.seeds[episode]}_ep{episode}.mp4"
            write_video(self.frames.pop(episode), Path(self.video_dir) / name, fps=self.fps)


def _frame(image: np.ndarray, instruction: str, step: int, success: bool) -> np.ndarray:
    """The policy's view with the instruction, step and success drawn under it (envs/video.py's caption)."""
    from envs.video import captioned_frame

    return captioned_frame(np.asarray(image), instruction, step=step, success=success)


def write_video(frames: list[np.ndarray], path: Path, fps: int = 10) -> Path:
    """Write equal-size uint8 [H, W, 3] frames to an mp4 (H.264; padded to multiples of 16), atomically."""
    import imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".partial.mp4")
    with imageio.get_writer(tmp, fps=fps, codec="libx264", macro_block_size=1) as writer:
        for f in frames:
            ph, pw = (-f.shape[0]) % 16, (-f.shape[1]) % 16
            writer.append_data(np.pad(f, ((0, ph), (0, pw), (0, 0))))
    tmp.replace(path)
    return path


def evaluate(actor: Actor, suite: Suite, num_envs: int = 4, video_dir: str | Path | None = None,
             videos_per_task: int = 0, progress: bool = False, overlap: bool = False) -> dict[str, TaskResult]:
    """Run every task of `suite`; {task_id: TaskResult} in suite order (run_task documents `overlap`)."""
    validate_tasks(suite.task_ids)
    results, venv = {}, None
    try:
        for task in suite.tasks:
            seeds = _checked_seeds(task.id, suite.seeds(task))
            venv = _task_vec(venv, task.id, _num_envs(num_envs, seeds), seeds[0], dict(suite.env_options))
            results[task.id] = r = _run_on(venv, actor, task.id, seeds, None, video_dir, videos_per_task, 10,
                                           overlap, progress)
            if progress:
                print(f"  {task.id}: {r.successes}/{r.trials} success, {r.wall_s:.1f}s", flush=True)
    finally:
        if venv is not None:
            venv.close()
    return results


# -------------------------------------------------------------------------------------------- VLA actor


def vla_actor(policy, unnorm_key: str | None = None, do_sample: bool = False, temperature: float = 1.0,
              batch_size: int = 64) -> Actor:
    """An Actor from a vla.VLAPolicy: preprocess -> generate -> continuous actions [B, 7] (greedy by default)."""
    import torch

    def act(images: np.ndarray, instructions: list[str]) -> np.ndarray:
        out = []
        with torch.no_grad():
            for i in range(0, len(images), batch_size):
                batch = policy.preprocess(images[i : i + batch_size], instructions[i : i + batch_size])
                res = policy.generate(batch, do_sample=do_sample, temperature=temperature, unnorm_key=unnorm_key)
                a = res.actions
                out.append(a.detach().cpu().numpy() if hasattr(a, "detach") else np.asarray(a))
        return np.concatenate(out).astype(np.float32)

    return act


# ------------------------------------------------------------------------------------------------ records


@dataclass
class EvalRecord:
    """Everything one evaluation produced; written as eval.json (+ results.csv, results.md)."""

    suite: dict
    tasks: dict[str, dict]
    new_task: str | None = None
    prior_tasks: list[str] = field(default_factory=list)
    run: str = ""
    method: str = ""
    lr: float | None = None
    step: int = 0
    checkpoint: str | None = None
    comparison: dict | None = None
    kl: dict | None = None
    l2_weight: float | None = None
    wall_s: float = 0.0
    meta: dict = field(default_factory=dict)

    def rates(self) -> dict[str, float]:
        return {t: r["rate"] for t, r in self.tasks.items()}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | Path) -> "EvalRecord":
        path = Path(path)
        if path.is_dir():
            path = path / "eval.json"
        return cls(**json.loads(path.read_text()))


def make_record(results: dict[str, TaskResult], suite: Suite, new_task: str | None = None,
                base: EvalRecord | None = None, **fields: Any) -> EvalRecord:
    """Build the record; with `base`, also the comparison (forgetting per prior task, retained fraction,
    new-task gain). The base must have been run on the same tasks with the same seeds."""
    if new_task is not None and new_task not in results:
        raise ValueError(f"new task {new_task!r} was not evaluated (tasks: {list(results)})")
    prior = [t for t in results if t != new_task]
    rec = EvalRecord(suite=suite.to_dict(), tasks={t: r.to_dict() for t, r in results.items()}, new_task=new_task,
                     prior_tasks=prior, wall_s=float(sum(r.wall_s for r in results.values())), **fields)
    if base is not None:
        check_same_tasks(base, rec)
        rec.comparison = compare(base.rates(), rec.rates(), prior, new_task).to_dict() if prior else None
    return rec


def check_same_tasks(base: EvalRecord, rec: EvalRecord) -> None:
    """Base and fine-tuned evaluations must cover the same tasks with the same reset seeds."""
    if set(base.tasks) != set(rec.tasks):
        raise ValueError(f"base was evaluated on {sorted(base.tasks)}, this checkpoint on {sorted(rec.tasks)}")
    for t in rec.tasks:
        if base.tasks[t]["seeds"] != rec.tasks[t]["seeds"]:
            raise ValueError(f"task {t!r}: base and checkpoint were evaluated with different reset seeds")
    if base.new_task != rec.new_task:
        raise ValueError(f"base record's new task is {base.new_task!r}, this one's {rec.new_task!r}")
    modes = [("sampled" if r.meta.get("do_sample") else "greedy") for r in (base, rec)]
    if modes[0] != modes[1]:
        raise ValueError(f"the base was evaluated with {modes[0]} actions, this checkpoint with {modes[1]}: compare "
                         "evaluations made the same way")


CSV_COLUMNS = ["task", "role", "successes", "trials", "rate", "ci_low", "ci_high", "mean_episode_len",
               "base_rate", "forgetting", "retained"]


def table_rows(rec: EvalRecord) -> list[dict]:
    """One row per task with the CSV_COLUMNS (results.csv, results.md, the W&B table)."""
    cmp_ = rec.comparison or {}
    base_prior = cmp_.get("per_task_forgetting", {})
    rows = []
    for t, r in rec.tasks.items():
        fg = base_prior.get(t)
        rows.append({
            "task": t, "role": "new" if t == rec.new_task else "prior", "successes": r["successes"],
            "trials": r["trials"], "rate": r["rate"], "ci_low": r["ci_low"], "ci_high": r["ci_high"],
            "mean_episode_len": r["mean_episode_len"],
            "base_rate": (r["rate"] + fg) if fg is not None else (cmp_.get("base_new_success") if t == rec.new_task and cmp_ else None),
            "forgetting": fg, "retained": cmp_.get("per_task_retained", {}).get(t),
        })
    return rows


def markdown_table(rec: EvalRecord) -> str:
    def f(x, d=3):
        return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else (f"{x:.{d}f}" if isinstance(x, float) else str(x))

    lines = ["| task | role | success | Wilson 95% CI | mean ep. len | base | forgetting | retained |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in table_rows(rec):
        lines.append(f"| {r['task']} | {r['role']} | {r['successes']}/{r['trials']} ({f(r['rate'], 2)}) | "
                     f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}] | {f(r['mean_episode_len'], 1)} | {f(r['base_rate'], 2)} | "
                     f"{f(r['forgetting'], 2)} | {f(r['retained'], 2)} |")
    if rec.comparison:
        c = rec.comparison
        lines += ["", f"Average forgetting over {len(rec.prior_tasks)} prior tasks: {f(c['avg_forgetting'])}; "
                      f"retained fraction: {f(c['avg_retained'])}; new-task gain: {f(c['new_task_gain'])}."]
    return "\n".join(lines) + "\n"


def save_record(rec: EvalRecord, out_dir: str | Path, overwrite: bool = False) -> Path:
    """Write eval.json, results.csv and results.md into `out_dir`; refuses to overwrite an existing eval.json
    unless `overwrite`. eval.json is written last and atomically (its presence marks a finished evaluation)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / "eval.json"
    if target.exists() and not overwrite:
        raise OutputExistsError(f"{target} exists; pass overwrite=True (or --overwrite) to replace it")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, CSV_COLUMNS)
        w.writeheader()
        w.writerows(table_rows(rec))
    (out / "results.md").write_text(markdown_table(rec))
    tmp = out / "eval.json.tmp"
    tmp.write_text(json.dumps(rec.to_dict(), indent=2, default=_json_default))
    tmp.replace(target)
    return target


def _json_default(o):
    if isinstance(o, (np.floating, np.integer, np.bool_)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
