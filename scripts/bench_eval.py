"""Benchmark eval/: the KL monitor's cost against a policy forward pass and a PPO update, and suite episodes/s.

    .venv/bin/python scripts/bench_eval.py [--model tiny] [--n-obs 64] [--ppo-updates 3] [--episodes 16]

Prints one table; numbers are wall-clock on this machine (which may be shared: say so when quoting them).
  - forward: one teacher-forced evaluate_actions pass over the held-out set, no grad (what one KL measurement costs
    per sample, by construction);
  - kl setup: sampling pi0 once (generate + teacher-forced pass, adapters disabled);
  - kl measure: one online measurement (cached pi0 samples, one pi forward per sample);
  - ppo update: the mean time/update_s of a short PPO run (tiny preset, toy task) with the same batch size;
  - suite: episodes/s of eval.suite.evaluate with the policy (toy task; Meta-World pick-place if available).
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

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
    from eval.kl import KLMonitor, collect_observations, policy_logprobs
    from eval.suite import Suite, SuiteTask, evaluate, vla_actor
    from vla.lora import LoraSettings
    from vla.policy import VLAPolicy

    torch.manual_seed(0)
    policy = VLAPolicy.from_pretrained(args.model, seed=0)
    policy.add_lora(LoraSettings())
    policy.eval()
    images, instructions = collect_observations("toy/color-side", args.n_obs)
    out: dict[str, float] = {}

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

    print(f"model={args.model} n_obs={args.n_obs} threads={torch.get_num_threads()}")
    for k, v in out.items():
        print(f"  {k:45s} {v:10.4f}")
    return out


if __name__ == "__main__":
    main()
