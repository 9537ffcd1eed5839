"""Env throughput: steps/s through envs.make versus the raw backend, and vector-env scaling.

    python -m scripts.bench_envs                          # metaworld/pick-place, 224 px images
    python -m scripts.bench_envs --tasks metaworld/reach --workers 1 2 --steps 200
    python -m scripts.bench_envs --frame --image-size 64     # MuJoCo tasks: ms per frame of the render settings

Every step renders the policy image (224 px by default) and uses uniformly random actions; resets (at the task's
horizon) are included. Single envs report wall-clock steps/s and CPU steps/s (steps per second of this process's
CPU time, all its threads, so that other processes on a shared CPU barely affect it); the wrapper overhead is
computed from CPU time. Vector envs report wall-clock steps/s summed over envs. Raw and wrapped runs are
interleaved and repeated, and medians are reported. Each backend's raw baseline is one function in RAW_BASELINES,
keyed by TaskSpec.backend, returning a Throughput.

--frame (MuJoCo tasks) instead compares render settings in one process: CPU and wall ms per step (a step is one
frame plus ~0.1 ms of physics) of the env as it rendered before (render version 1: MuJoCo's default 640x480
off-screen buffer, reflections on), with a buffer of the image's size, without reflections (render version 2), and
as it renders by default now (also simplified meshes, version 3); and the share of pixels that differ from the
"before" images over the same seeded random-action steps (0 means the same observations).

--compare-llvmpipe-threads 2 0 instead runs the vector-env scaling once per LP_NUM_THREADS value (Mesa llvmpipe's
rasterizer threads per process; read when a process starts GL, so each value runs in a fresh process) and prints
steps/s and the ratio to the first value; `--check-images` there also compares the images they render.
"""

from __future__ import annotations

import hashlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import tyro

import envs
from envs.registry import TaskSpec
from envs.vector import make_vec
from scripts.cli import entry_point


@dataclass
class BenchConfig:
    tasks: tuple[str, ...] = ("metaworld/pick-place",)
    """Task ids to benchmark."""
    image_size: int = 224
    """Square image size in pixels, rendered on every step."""
    steps: int = 300
    """Timed steps per measurement (per env for vector envs)."""
    repeats: int = 3
    """Measurements per setting; the median is reported."""
    workers: tuple[int, ...] = (1, 2, 4)
    """Vector-env sizes for the scaling table (1 runs in-process)."""
    seed: int = 0
    """Reset seed and action seed."""
    frame: bool = False
    """Compare render settings (ms per frame, pixels changed) instead of measuring throughput; MuJoCo tasks only."""
    compare_llvmpipe_threads: tuple[str, ...] = ()
    """LP_NUM_THREADS values to compare (see the module docstring); empty: the other modes."""
    llvmpipe_threads: str | None = None
    """LP_NUM_THREADS for this process and its env workers (set before any GL context starts)."""
    json_out: str | None = None
    """Also write the results as JSON to this file."""
    check_images: bool = False
    """With --compare-llvmpipe-threads: also compare the images each value renders (a digest of cfg.steps steps)."""

    def __post_init__(self):
        if self.steps < 1 or self.repeats < 1 or self.image_size < 8 or min(self.workers, default=1) < 1:
            raise ValueError(f"invalid benchmark config: {self}")


class Throughput(NamedTuple):
    wall: float
    """Steps per wall-clock second."""
    cpu: float
    """Steps per second of this process's CPU time."""


def _timed_steps(reset: Callable[[], None], step: Callable[[], bool], num_steps: int) -> Throughput:
    """Throughput of `step()` (which returns True when an episode ended) over num_steps, after one warm-up step."""
    reset()
    step()  # the first render creates the GL context
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(num_steps):
        if step():
            reset()
    return Throughput(num_steps / (time.perf_counter() - wall), num_steps / (time.process_time() - cpu))


def raw_mujoco(spec: TaskSpec, cfg: BenchConfig) -> Throughput:
    """Meta-World's own gym.make with the same camera, image size, horizon and rendering settings (no MSAA, shadows
    or reflections; a buffer of the image's size)."""
    import gymnasium as gym
    import metaworld  # noqa: F401  (registers the Meta-World/* gymnasium ids)

    env = gym.make(
        "Meta-World/MT1", env_name=spec.backend_env_id, seed=cfg.seed, render_mode="rgb_array", camera_name="corner",
        width=cfg.image_size, height=cfg.image_size, max_episode_steps=spec.max_episode_steps, disable_env_checker=True,
    )  # fmt: skip
    model = env.unwrapped.model
    model.vis.quality.offsamples = 0
    model.light_castshadow[:] = 0
    model.mat_reflectance[:] = 0
    model.vis.global_.offwidth = model.vis.global_.offheight = cfg.image_size
    rng = np.random.default_rng(cfg.seed)

    def step() -> bool:
        _, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 4).astype(np.float32))
        env.render()
        return terminated or truncated

    try:
        return _timed_steps(lambda: env.reset(), step, cfg.steps)
    finally:
        env.close()


def raw_maniskill3(spec: TaskSpec, cfg: BenchConfig) -> Throughput:
    """ManiSkill's own gym.make with the task's controller, obs mode and horizon. Panda: the sensor camera at the
    image size (what envs.make renders); Bridge: the native 640x480 greenscreened camera, as SimplerEnv runs it
    (envs.make renders the same and resizes it)."""
    import gymnasium as gym

    from envs import maniskill

    task = next(task for task in (*maniskill.BRIDGE_TASKS, *maniskill.PANDA_TASKS) if task.task_id == spec.task_id)
    data_dir = maniskill.configure_asset_dir()  # the same MS_ASSET_DIR as envs.make, and no download prompt
    if task.robot is maniskill.WIDOWX:
        maniskill.check_bridge_assets(task, data_dir)
        sensor_configs, reward_mode = {}, "none"
    else:
        sensor_configs, reward_mode = {"width": cfg.image_size, "height": cfg.image_size}, "normalized_dense"
    import mani_skill.envs  # noqa: F401  (registers the ManiSkill gymnasium ids)

    env = gym.make(
        spec.backend_env_id, num_envs=1, obs_mode=task.robot.obs_mode, control_mode=task.robot.control_mode,
        reward_mode=reward_mode, sensor_configs=sensor_configs, sim_backend="physx_cpu",
        render_backend="cuda" if maniskill._cuda_available() else "cpu", max_episode_steps=spec.max_episode_steps,
    )  # fmt: skip
    rng = np.random.default_rng(cfg.seed)
    low, high = env.action_space.low, env.action_space.high

    def step() -> bool:
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        return bool(terminated.any() or truncated.any())

    try:
        return _timed_steps(lambda: env.reset(seed=cfg.seed), step, cfg.steps)
    finally:
        env.close()


RAW_BASELINES: dict[str, Callable[[TaskSpec, BenchConfig], Throughput]] = {
    "mujoco": raw_mujoco,
    "maniskill3": raw_maniskill3,
}


def razor_single(spec: TaskSpec, cfg: BenchConfig) -> Throughput:
    """envs.make, stepping with random contract actions (the image is rendered as part of the observation)."""
    env = envs.make(spec.task_id, image_size=cfg.image_size)
    rng = np.random.default_rng(cfg.seed)
    low, high = env.action_space.low, env.action_space.high

    def step() -> bool:
        _, _, terminated, truncated, _ = env.step(rng.uniform(low, high).astype(np.float32))
        return terminated or truncated

    try:
        return _timed_steps(lambda: env.reset(seed=cfg.seed), step, cfg.steps)
    finally:
        env.close()


def razor_vector(spec: TaskSpec, cfg: BenchConfig, num_envs: int) -> float:
    """Total env steps/s of make_vec with num_envs (autoreset inside the step)."""
    vec = make_vec(spec.task_id, num_envs, seed=cfg.seed, image_size=cfg.image_size)
    rng = np.random.default_rng(cfg.seed)
    low, high = vec.action_space.low, vec.action_space.high

    def step() -> bool:
        vec.step(rng.uniform(low, high).astype(np.float32))
        return False

    try:
        return num_envs * _timed_steps(lambda: vec.reset(), step, cfg.steps).wall
    finally:
        vec.close()


FRAME_SETTINGS: dict[str, tuple[dict, tuple[int, int] | None]] = {
    "before: 640x480, reflect": ({"reflections": True, "mesh_detail": 1.0}, (640, 480)),
    "image-size buffer": ({"reflections": True, "mesh_detail": 1.0}, None),
    "no reflections": ({"mesh_detail": 1.0}, None),
    "default: simpler meshes": ({}, None),
}
"""name -> (envs.make options, off-screen buffer size forced before the first frame, or None)."""


def frame_costs(task_id: str, cfg: BenchConfig, options: dict, buffer: tuple[int, int] | None):
    """(CPU ms per step, wall ms per step, the images) over cfg.steps seeded random-action steps."""
    env = envs.make(task_id, image_size=cfg.image_size, **options)
    model = env.unwrapped.sim.model
    if buffer is not None:  # read when the renderer is created, at the first frame
        model.vis.global_.offwidth, model.vis.global_.offheight = buffer
    rng = np.random.default_rng(cfg.seed)
    images = []

    def step() -> bool:
        obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
        images.append(obs["image"])
        return terminated or truncated

    try:
        speed = _timed_steps(lambda: env.reset(seed=cfg.seed), step, cfg.steps)
        return 1000 / speed.cpu, 1000 / speed.wall, np.stack(images)
    finally:
        env.close()


def bench_frames(cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Per task and setting of FRAME_SETTINGS: medians of CPU/wall ms per step and the share of changed pixels."""
    results = {}
    for task_id in cfg.tasks:
        if envs.get_spec(task_id).backend != "mujoco":
            raise ValueError(f"--frame compares MuJoCo render settings; {task_id} runs on another backend")
        runs: dict[str, list] = {name: [] for name in FRAME_SETTINGS}
        for _ in range(cfg.repeats):  # interleaved, so that load from other processes hits all settings alike
            for name, (options, buffer) in FRAME_SETTINGS.items():
                runs[name].append(frame_costs(task_id, cfg, options, buffer))
        before = next(iter(runs.values()))[0][2]
        rows = {}
        print(f"{task_id}: {cfg.image_size} px, {cfg.steps} steps x {cfg.repeats} repeats, medians")
        print(f"  {'':<24} {'CPU ms/step':>11} {'wall ms/step':>12} {'pixels changed':>14}")
        for name, measured in runs.items():
            changed = float(np.any(measured[0][2] != before, axis=-1).mean())
            rows[name] = {"cpu_ms": statistics.median(m[0] for m in measured),
                          "wall_ms": statistics.median(m[1] for m in measured), "pixels_changed": changed}
            print(f"  {name:<24} {rows[name]['cpu_ms']:11.2f} {rows[name]['wall_ms']:12.2f} {100 * changed:13.3f}%")
        results[task_id] = rows
    return results


def bench(cfg: BenchConfig) -> dict[str, dict[str, float]]:
    """Medians per task: "make_wall", "make_cpu", "raw_wall", "raw_cpu", "overhead_pct" (extra CPU time per step
    through envs.make) and "vec<N>" (wall steps/s) for each N in cfg.workers."""
    results = {}
    for task_id in cfg.tasks:
        spec = envs.get_spec(task_id)
        raw_baseline = RAW_BASELINES.get(spec.backend)
        raw_runs, make_runs = [], []
        for _ in range(cfg.repeats):  # interleaved, so that load from other processes hits both alike
            if raw_baseline is not None:
                raw_runs.append(raw_baseline(spec, cfg))
            make_runs.append(razor_single(spec, cfg))
        row = {
            "make_wall": statistics.median(run.wall for run in make_runs),
            "make_cpu": statistics.median(run.cpu for run in make_runs),
        }
        if raw_runs:
            row["raw_wall"] = statistics.median(run.wall for run in raw_runs)
            row["raw_cpu"] = statistics.median(run.cpu for run in raw_runs)
            row["overhead_pct"] = 100.0 * (row["raw_cpu"] / row["make_cpu"] - 1.0)
        for num_envs in cfg.workers:
            row[f"vec{num_envs}"] = statistics.median(razor_vector(spec, cfg, num_envs) for _ in range(cfg.repeats))
        results[task_id] = row
        _print_row(task_id, row, cfg)
    return results


def _print_row(task_id: str, row: dict[str, float], cfg: BenchConfig) -> None:
    print(f"{task_id}: {cfg.image_size} px, {cfg.steps} steps x {cfg.repeats} repeats, medians")
    print(f"  {'':<12} {'wall steps/s':>12} {'CPU steps/s':>12}")
    if "raw_wall" in row:
        print(f"  {'raw backend':<12} {row['raw_wall']:12.1f} {row['raw_cpu']:12.1f}")
    print(f"  {'envs.make':<12} {row['make_wall']:12.1f} {row['make_cpu']:12.1f}")
    if "overhead_pct" in row:
        print(f"  wrapper overhead (CPU time per step): {row['overhead_pct']:+.1f}%")
    base = row.get("vec1")
    for num_envs in cfg.workers:
        rate = row[f"vec{num_envs}"]
        speedup = f"   x{rate / base:.2f} vs 1 env" if base else ""
        print(f"  make_vec({num_envs}) {rate:10.1f} wall steps/s (all envs){speedup}")


def image_digest(task_id: str, cfg: BenchConfig) -> str:
    """SHA-1 of the images of cfg.steps seeded random-action steps in one env (this process's render settings)."""
    env = envs.make(task_id, image_size=cfg.image_size)
    rng = np.random.default_rng(cfg.seed)
    digest = hashlib.sha1()
    try:
        env.reset(seed=cfg.seed)
        for _ in range(cfg.steps):
            obs, _, terminated, truncated, _ = env.step(rng.uniform(-1, 1, 7).astype(np.float32))
            digest.update(obs["image"].tobytes())
            if terminated or truncated:
                env.reset(seed=cfg.seed)
    finally:
        env.close()
    return digest.hexdigest()


def compare_llvmpipe_threads(cfg: BenchConfig) -> dict[str, dict]:
    """Per LP_NUM_THREADS value, this benchmark's vector-env scaling with `cfg`'s settings in a fresh process;
    prints steps/s per value and the ratio to the first value's."""
    args = ["--tasks", *cfg.tasks, "--image-size", str(cfg.image_size), "--steps", str(cfg.steps), "--repeats",
            str(cfg.repeats), "--workers", *map(str, cfg.workers), "--seed", str(cfg.seed)]
    args += ["--check-images"] if cfg.check_images else []
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for value in cfg.compare_llvmpipe_threads:
            out = Path(tmp) / f"lp{value}.json"
            subprocess.run([sys.executable, "-m", "scripts.bench_envs", *args, "--llvmpipe-threads", value,
                            "--json-out", str(out)], check=True, stdout=subprocess.DEVNULL)
            results[value] = json.loads(out.read_text())
    first = results[cfg.compare_llvmpipe_threads[0]]
    for task_id in cfg.tasks:
        print(f"{task_id}: {cfg.image_size} px, wall steps/s (all envs), medians of {cfg.repeats}; "
              f"ratio to LP_NUM_THREADS={cfg.compare_llvmpipe_threads[0]}")
        for value, res in results.items():
            row = res[task_id]
            cells = "  ".join(f"{n} envs {row[f'vec{n}']:7.1f} (x{row[f'vec{n}'] / first[task_id][f'vec{n}']:.2f})"
                              for n in cfg.workers)
            same = "" if "images" not in row else (
                "  images: same" if row["images"] == first[task_id]["images"] else "  images: DIFFER")
            print(f"  LP_NUM_THREADS={value:<3} {cells}{same}")
    return results


@entry_point
def main() -> None:
    cfg = tyro.cli(BenchConfig)
    if cfg.compare_llvmpipe_threads:
        compare_llvmpipe_threads(cfg)
        return
    if cfg.llvmpipe_threads is not None:  # before any GL context of this process or its workers starts
        os.environ["LP_NUM_THREADS"] = cfg.llvmpipe_threads
    if cfg.frame:
        results = bench_frames(cfg)
    else:
        results = bench(cfg)
        if cfg.check_images:
            for task_id in cfg.tasks:
                results[task_id]["images"] = image_digest(task_id, cfg)
    if cfg.json_out:
        Path(cfg.json_out).write_text(json.dumps(results))


if __name__ == "__main__":
    main()
