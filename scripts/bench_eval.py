"""Benchmark eval/: the KL monitor's cost against a policy forward pass and a PPO update, suite episodes/s, and
policy-in-the-loop env throughput against the simulator's own ceiling.

    .venv/bin/python scripts/bench_eval.py [--model tiny] [--n-obs 64] [--ppo-updates 3] [--episodes 16]
    .venv/bin/python scripts/bench_eval.py --sections throughput [--tp-episodes 16] [--tp-envs 10] [--tp-steps 100]

Prints one table; numbers are wall-clock on this machine (which may be shared: say so when quoting them).
  - forward: one teacher-forced evaluate_actions pass over the held-out set, no grad (what one KL measurement costs
    per sample, by construction);
  - kl setup: sampling pi0 once (generate + teacher-forced pass, adapters disabled);
  - kl measure: one online measurement (cached pi0 samples, one pi forward per sample);
  - ppo update: the mean time/update_s of a short PPO run (tiny preset, toy task) with the same batch size;
  - suite: episodes/s of eval.suite.evaluate with the policy (toy task; Meta-World pick-place if available).
  - throughput (the `cpu` experiment's evaluation settings: tiny VLA with a saved r=16 LoRA adapter loaded as
    evaluate_checkpoint loads it, merged into the weights for (b) as it does, metaworld/drawer-close at 64 px,
    10 envs), env steps/s of
      (a) ceiling: the same vector env stepped with random actions and no policy (what the simulator allows with
          that many workers; the mean of one measurement before (b) and one after (c)),
      (b0) the suite's loop alone: eval.suite.evaluate with a free actor (seeded random actions, no policy), as
          (b) counts: what the loop (refills, the last episodes' partly filled waves, waking the workers after
          each batch of actions) leaves of (a) before any policy runs, the bound on (b)/(a);
      (b) suite: eval.suite.evaluate (with and without `overlap`), useful steps (the sum of episode lengths) per
          second of TaskResult.wall_s (which, as in every evaluation, includes the workers' first frames but not
          their start-up),
      (c) collect: rollouts.collect.collect (PPO's sampling, values included) for --tp-steps steps of every env,
    and the ratios (b0)/(a), (b)/(a) and (c)/(a). They run one after the other in one process on one machine, so the
    ratios are comparable across runs even where the absolute figures are not (a shared machine is noisy).
    Also, for (a), (b0) and (b), how busy the machine's cores were (`*_cpu_busy`, psutil's CPU times over the middle 80%
    of the measured span: start-up and shutdown excluded) and the CPU time per env step
    (`*_core_ms_per_step` = busy fraction x cores / steps per s): what separates (b) from (a) is then split into
    idle cores (waiting) and extra work per step (the policy and the loop).
  - start-up (--sections startup; the cpu experiment's 4 tasks, 10 envs each, no policy): seconds to have every task's
    envs built and reset and then closed, a new vector env per task (how evaluations ran before) against one vector
    env switched from task to task (envs' switch_task, how eval.suite.evaluate runs a suite now).
"""

from __future__ import annotations

import importlib.util
import json
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import tyro

from scripts.cli import entry_point


@dataclass
class Args:
    model: str = "tiny"
    """vla preset or checkpoint directory."""
    n_obs: int = 64
    """Held-out observations for the KL monitor (= the PPO batch size used for comparison)."""
    ppo_updates: int = 3
    """PPO updates to time (the first is dropped as warm-up when there are more than one)."""
    episodes: int = 16
    """Episodes per task for the suite throughput."""
    num_envs: int = 4
    """Vector envs for the suite."""
    metaworld: bool = True
    """Also time the suite on metaworld/reach (skipped if Meta-World is missing)."""
    repeats: int = 5
    """Timing repeats (the median is reported)."""
    sections: tuple[Literal["kl", "throughput", "startup"], ...] = ("kl", "throughput", "startup")
    """What to measure: "kl" (KL monitor, PPO update, toy suite), "throughput" (ceiling, suite, collect),
    "startup" (a suite's env start-up, new vector env per task vs switched)."""
    startup_tasks: tuple[str, ...] = ("metaworld/button-press", "metaworld/button-press-topdown",
                                      "metaworld/drawer-open", "metaworld/window-open")
    """Tasks of the start-up section (the cpu experiment's suite)."""
    tp_task: str = "metaworld/drawer-close"
    """Task of the throughput section (the cpu experiment's new task)."""
    tp_image_size: int = 64
    """Image size of the throughput section (the cpu experiment's)."""
    tp_envs: int = 10
    """Vector envs of the throughput section (the cpu experiment's eval_num_envs)."""
    tp_episodes: int = 16
    """Suite episodes of the throughput section (the cpu experiment's eval_episodes)."""
    tp_steps: int = 100
    """Steps of every env for the ceiling (a) and for collection (c)."""
    tp_overlap: tuple[bool, ...] = (False, True)
    """Suite runs (b) with these `overlap` settings (halves of the envs stepped while the other half is acted on)."""
    tp_lora_rank: int = 16
    """LoRA rank (and alpha) of the adapter the throughput section loads (the cpu experiment's)."""


def _median_time(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


@entry_point
def main(args: Args | None = None) -> dict:
    args = args or tyro.cli(Args)
    out: dict[str, float] = {}
    if "kl" in args.sections:
        out.update(kl_section(args))
    if "throughput" in args.sections:
        out.update(throughput_section(args))
    if "startup" in args.sections:
        out.update(startup_section(args))
    print(f"model={args.model} threads={torch.get_num_threads()} (figures are wall-clock; the machine may be shared)")
    for k, v in out.items():
        print(f"  {k:45s} {v:10.4f}")
    return out


def kl_section(args: Args) -> dict[str, float]:
    from eval.kl import KLMonitor, collect_observations, policy_logprobs
    from eval.suite import Suite, SuiteTask, evaluate, vla_actor
    from vla.lora import LoraSettings
    from vla.policy import VLAPolicy

    torch.manual_seed(0)
    policy = VLAPolicy.from_pretrained(args.model, seed=0)
    policy.add_lora(LoraSettings())
    policy.eval()
    out: dict[str, float] = {}
    images, instructions = collect_observations("toy/color-side", args.n_obs)

    mon = KLMonitor(images, instructions, batch_size=args.n_obs)
    t0 = time.perf_counter()
    mon.prepare(policy)
    out["kl_setup_s"] = time.perf_counter() - t0
    with torch.no_grad():
        policy_logprobs(policy, mon.base, args.n_obs)  # warm-up
        mon(policy)
        fwd, kl = [], []
        for _ in range(args.repeats):  # interleaved, so that load changes on a shared machine hit both alike
            fwd.append(_median_time(lambda: policy_logprobs(policy, mon.base, args.n_obs), 1))
            kl.append(_median_time(lambda: mon(policy), 1))
    out["forward_s"], out["kl_measure_s"] = float(np.median(fwd)), float(np.median(kl))

    from rollouts.ppo import PPOConfig, train

    with tempfile.TemporaryDirectory() as tmp:
        cfg = PPOConfig(model=args.model, task="toy/color-side", num_envs=args.n_obs, num_steps=1,
                        total_updates=args.ppo_updates, run_dir=str(Path(tmp) / "ppo"), progress=False,
                        checkpoint_every=10_000, env_in_process=True)
        train(cfg)
        rows = [json.loads(l) for l in (Path(tmp) / "ppo" / "metrics.jsonl").read_text().splitlines()]
        upd = [r["time/update_s"] for r in rows if "time/update_s" in r]
        out["ppo_update_s"] = float(np.mean(upd[1:] if len(upd) > 1 else upd))
        out["ppo_collect_s"] = float(np.mean([r.get("time/inference_s", 0) + r.get("time/sim_s", 0) for r in rows]))
    out["kl_over_forward"] = out["kl_measure_s"] / out["forward_s"]
    out["kl_over_ppo_update"] = out["kl_measure_s"] / out["ppo_update_s"]

    actor = vla_actor(policy)
    tasks = [("toy/reach-side", {})]
    if args.metaworld:
        if importlib.util.find_spec("metaworld") is not None:
            tasks.append(("metaworld/reach", {"image_size": 32}))
    for task, opts in tasks:
        suite = Suite("bench", [SuiteTask(task, args.episodes)], env_options=opts)
        t0 = time.perf_counter()
        res = evaluate(actor, suite, num_envs=args.num_envs)[task]
        dt = time.perf_counter() - t0
        out[f"suite_{task}_episodes_per_s"] = res.trials / dt
        out[f"suite_{task}_steps_per_s"] = float(np.sum(res.episode_len)) / dt
    return out


class CpuBusy:
    """The machine's CPU busy fraction over a span of time: psutil's CPU time totals sampled every `interval` s by a
    thread. Use as a context manager around what is measured."""

    def __init__(self, interval: float = 0.1):
        self.interval, self.samples, self._stop = interval, [], threading.Event()

    @staticmethod
    def _read() -> tuple[float, float, float]:
        import psutil

        times = psutil.cpu_times()
        total = sum(times)
        return time.perf_counter(), total - times.idle - getattr(times, "iowait", 0.0), total

    def __enter__(self) -> "CpuBusy":
        def sample():
            while not self._stop.is_set():
                self.samples.append(self._read())
                self._stop.wait(self.interval)

        self._thread = threading.Thread(target=sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def busy(self, t0: float, t1: float) -> float | None:
        """Busy fraction of all cores between perf_counter times t0 and t1, over the middle 80% of the span (None
        with too few samples in it)."""
        lo, hi = t0 + 0.1 * (t1 - t0), t1 - 0.1 * (t1 - t0)
        inside = [s for s in self.samples if lo <= s[0] <= hi]
        if len(inside) < 2 or inside[-1][2] == inside[0][2]:
            return None
        busy = (inside[-1][1] - inside[0][1]) / (inside[-1][2] - inside[0][2])
        return min(1.0, max(0.0, busy))  # psutil's times are float seconds: an idle span can round below 0


def ceiling_steps_per_s(task: str, num_envs: int, steps: int, env_options: dict, seed: int = 0,
                        spans: list | None = None) -> float:
    """(a) env steps/s of make_vec(task, num_envs) stepped `steps` times with random actions, no policy (autoresets
    included; worker start-up and the first frame, which creates the GL context, excluded). `spans`: the measured
    (start, end) perf_counter times are appended to it."""
    import envs

    vec = envs.make_vec(task, num_envs, seed=seed, **env_options)
    rng = np.random.default_rng(seed)
    try:
        vec.reset(seed=seed)
        t0 = time.perf_counter()
        for _ in range(steps):
            vec.step(rng.uniform(vec.action_space.low, vec.action_space.high).astype(np.float32))
        t1 = time.perf_counter()
        if spans is not None:
            spans.append((t0, t1))
        return num_envs * steps / (t1 - t0)
    finally:
        vec.close()


def startup_section(args: Args) -> dict[str, float]:
    """A suite's env start-up: a new vector env per task vs one switched from task to task (module docstring)."""
    import envs

    options = {"image_size": args.tp_image_size}
    seeds = list(range(args.tp_envs))

    def fresh():
        for task in args.startup_tasks:
            vec = envs.make_vec(task, args.tp_envs, **options)
            vec.reset(seed=seeds)
            vec.close()

    def switched():
        vec = None
        for task in args.startup_tasks:
            if vec is None:
                vec = envs.make_vec(task, args.tp_envs, **options)
            else:
                vec.switch_task(task, **options)
            vec.reset(seed=seeds)
        vec.close()

    out = {}
    for _ in range(2):  # alternated, so that a change of load hits both
        out.setdefault("startup_fresh_s", []).append(_median_time(fresh, 1))
        out.setdefault("startup_switched_s", []).append(_median_time(switched, 1))
    out = {k: float(np.median(v)) for k, v in out.items()}
    out["startup_switched_over_fresh"] = out["startup_switched_s"] / out["startup_fresh_s"]
    return out


def throughput_section(args: Args) -> dict[str, float]:
    """(a) ceiling, (b0) free actor, (b) suite, (c) collect on the cpu experiment's evaluation settings (docstring)."""
    import envs
    from eval.evaluate import load_policy
    from eval.suite import Suite, SuiteTask, evaluate, vla_actor
    from rollouts.collect import collect
    from vla.config import ACTION_DIM
    from vla.lora import LoraSettings
    from vla.policy import VLAPolicy

    env_options = {"image_size": args.tp_image_size}
    with tempfile.TemporaryDirectory() as tmp:  # an adapter saved and loaded back, as evaluate_checkpoint gets it
        trained = VLAPolicy.from_pretrained(args.model, seed=0)
        trained.add_lora(LoraSettings(r=args.tp_lora_rank, alpha=args.tp_lora_rank))
        trained.save_adapters(Path(tmp) / "adapter")
        policy = load_policy(args.model, Path(tmp) / "adapter")  # (c): training samples through the adapter
        evaluated = load_policy(args.model, Path(tmp) / "adapter")
    if evaluated.dtype == torch.float32:  # as evaluate_checkpoint runs a checkpoint: the adapter folded in
        evaluated.merge_adapters()
    out: dict[str, float] = {}
    spans: dict[str, list] = {"a_ceiling": []}  # (start, end) of each measurement, for the CPU accounting
    with CpuBusy() as cpu:
        ceiling = [ceiling_steps_per_s(args.tp_task, args.tp_envs, args.tp_steps, env_options,
                                       spans=spans["a_ceiling"])]
        suite = Suite("bench", [SuiteTask(args.tp_task, args.tp_episodes)], env_options=env_options)
        rng = np.random.default_rng(0)

        def free_actor(images: np.ndarray, instructions: list[str]) -> np.ndarray:
            return rng.uniform(-1, 1, (len(images), ACTION_DIM)).astype(np.float32)

        runs = [("b0_free_actor", free_actor, False)]
        runs += [(f"b_suite{'_overlap' if overlap else ''}", vla_actor(evaluated), overlap)
                 for overlap in args.tp_overlap]
        for name, actor, overlap in runs:
            result = evaluate(actor, suite, num_envs=args.tp_envs, overlap=overlap)[args.tp_task]
            end = time.perf_counter()  # the task ended just before: evaluate then only closes its env workers
            spans[name] = [(end - result.wall_s, end)]
            out[f"{name}_steps_per_s"] = float(np.sum(result.episode_len)) / result.wall_s

        vec = envs.make_vec(args.tp_task, args.tp_envs, seed=0, **env_options)
        try:
            t0 = time.perf_counter()
            generator = torch.Generator().manual_seed(0)
            rollout = collect(policy, vec, args.tp_steps, list(range(args.tp_envs)), generator=generator)
            out["c_collect_steps_per_s"] = args.tp_envs * rollout.num_steps / (time.perf_counter() - t0)
        finally:
            vec.close()
        # measured before and after (b) and (c), so that a change of load on a shared machine hits both sides alike
        ceiling.append(ceiling_steps_per_s(args.tp_task, args.tp_envs, args.tp_steps, env_options,
                                           spans=spans["a_ceiling"]))
    out["a_ceiling_steps_per_s"] = float(np.mean(ceiling))
    for key in [k for k in out if k.startswith("b") and k.endswith("_steps_per_s")]:
        out[key.replace("_steps_per_s", "_over_a")] = out[key] / out["a_ceiling_steps_per_s"]
    out["c_collect_over_a"] = out["c_collect_steps_per_s"] / out["a_ceiling_steps_per_s"]
    for name, measured in spans.items():
        busy = [cpu.busy(t0, t1) for t0, t1 in measured]
        if None not in busy:
            out[f"{name}_cpu_busy"] = float(np.mean(busy))
            out[f"{name}_core_ms_per_step"] = (1000 * out[f"{name}_cpu_busy"] * os.cpu_count()
                                               / out[f"{name}_steps_per_s"])
    return out


if __name__ == "__main__":
    main()
