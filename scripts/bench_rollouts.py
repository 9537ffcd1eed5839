"""Benchmark rollouts/ on this machine, and the memory budget of the 7B presets.

    python -m scripts.bench_rollouts                       # tiny + small on toy/color-side and metaworld/reach
    python -m scripts.bench_rollouts --presets tiny --tasks toy/color-side --updates 3
    python -m scripts.bench_rollouts --presets small --tasks toy/color-side --vision-cache-only

Part 1, measured: for each (VLA preset, task) one PPO run through rollouts.ppo.train in a fresh process (the real
code path: process-worker envs, batched generation, pi0 forward for the KL log, GAE, minibatch update), reporting
the mean over the updates after the first (warm-up) of: collection env steps/s, PPO update samples/s, and the time
split of an update into simulation (env reset/step), inference (preprocess, generate, values, pi0) and update
(forward/backward/optimizer); plus that process's peak resident memory (env workers not included).

Part 1b, measured: PPO update samples/s with and without the cached vision features (patch embeddings computed
once per rollout while the vision backbone and projector are frozen). One real rollout is collected, then
rollouts.ppo.ppo_update runs on it alternately without and with the cache (--cache-epochs epochs each), so machine
load hits both alike; samples per CPU second of the process.

Part 1c, measured: a policy-gradient update's samples per CPU second against the number of micro-batches it is
split into (gradients accumulated, as rollouts/reinforce.py's grad_accum_steps): --microbatch-samples samples
(random 64 px images and action tokens; the cost does not depend on their content) through the preset's VLA with a
LoRA r=16 adapter on the LM, forward + backward, alternating the splits so that machine load hits all alike.

Part 2, computed: memory of the openvla-7b-a100 PPO preset on one GPU, per component (rollouts/budget.py: the
real architecture built on the meta device, LoRA counts from peft, the preset's batch sizes).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from rollouts.budget import GB, format_budget, training_memory
from rollouts.presets import RL_PRESETS
from scripts.cli import entry_point
from vla.config import preset_config


def _bench_one(preset: str, task: str, updates: int, num_envs: int, num_steps: int, queue) -> None:
    import torch

    from rollouts import ppo
    from rollouts.logger import read_metrics
    from rollouts.presets import RL_PRESETS
    from vla.config import preset_config

    torch.set_num_threads(1)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_rollouts_"))
    image = preset_config(preset).image_size
    cfg = replace(
        RL_PRESETS["ppo"]["tiny"][1], model=preset, task=task, num_envs=num_envs, num_steps=num_steps,
        total_updates=updates, update_epochs=1, num_minibatches=4, env_in_process=False, progress=False,
        checkpoint_every=10**6, env_kwargs={"image_size": image}, run_dir=str(run_dir / "run"), log_kl=True,
    )  # fmt: skip
    t0 = time.perf_counter()
    ppo.train(cfg)
    wall = time.perf_counter() - t0
    rows = read_metrics(cfg.run_dir)[1:] or read_metrics(cfg.run_dir)
    mean = lambda k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    queue.put({
        "preset": preset, "task": task, "num_envs": num_envs, "num_steps": num_steps, "image": image,
        "env_steps_per_s": mean("time/env_steps_per_s"), "samples_per_s": mean("time/samples_per_s"),
        "sim_s": mean("time/sim_s"), "inference_s": mean("time/inference_s"), "update_s": mean("time/update_s"),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, "wall_s": wall,
    })  # fmt: skip
    shutil.rmtree(run_dir, ignore_errors=True)


def measured(presets: list[str], tasks: list[str], updates: int, num_envs: int, num_steps: int) -> list[dict]:
    ctx = mp.get_context("spawn")
    results = []
    for preset in presets:
        for task in tasks:
            queue = ctx.Queue()
            proc = ctx.Process(target=_bench_one, args=(preset, task, updates, num_envs, num_steps, queue))
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                print(f"{preset} on {task}: failed (exit code {proc.exitcode})")
                continue
            results.append(queue.get())
    return results


def vision_cache_update(preset: str, task: str, num_envs: int, num_steps: int, epochs: int, repeats: int) -> dict:
    """PPO update samples/s on one collected rollout, without and with the vision cache, alternating."""
    import torch

    import envs
    from rollouts import ppo
    from rollouts.collect import collect, env_seeds
    from rollouts.presets import RL_PRESETS
    from rollouts.run import Run
    from vla.config import preset_config

    torch.set_num_threads(1)
    run_dir = Path(tempfile.mkdtemp(prefix="bench_vision_cache_"))
    cfg = replace(
        RL_PRESETS["ppo"]["tiny"][1], model=preset, task=task, num_envs=num_envs, num_steps=num_steps,
        total_updates=1, update_epochs=epochs, num_minibatches=4, env_in_process=True, progress=False, log_kl=True,
        env_kwargs={"image_size": preset_config(preset).image_size}, run_dir=str(run_dir / "run"),
    )  # fmt: skip
    run = Run.start(cfg, train_value_head=True, value_learning_rate=cfg.value_learning_rate, desc="bench")
    vec = envs.make_vec(cfg.task, num_envs, seed=cfg.seed, **cfg.vec_options())
    try:
        run.policy.eval()
        rollout = collect(run.policy, vec, num_steps, env_seeds(cfg.seed, 1, num_envs, 0, num_envs),
                          temperature=cfg.temperature, with_base=True)  # fmt: skip
    finally:
        vec.close()
    seconds = {False: 0.0, True: 0.0}
    for i in range(repeats + 1):  # the first round warms up
        for cache in (False, True):
            start = time.process_time()  # CPU time (one thread): waiting for a shared core would swamp the ratio
            ppo.ppo_update(run, rollout, replace(cfg, cache_vision=cache))
            seconds[cache] += (time.process_time() - start) if i else 0.0
    run.finish()
    shutil.rmtree(run_dir, ignore_errors=True)
    samples = num_envs * num_steps * epochs * repeats
    return {"preset": preset, "task": task, "epochs": epochs, "without": samples / seconds[False],
            "with": samples / seconds[True]}  # fmt: skip


def microbatch_update(preset: str, samples: int, splits: list[int], repeats: int) -> dict[int, float]:
    """Policy-gradient forward + backward samples per CPU second for each number of micro-batches (part 1c)."""
    import numpy as np
    import torch

    from vla.lora import LoraSettings
    from vla.policy import VLAPolicy

    torch.set_num_threads(1)
    policy = VLAPolicy.from_pretrained(preset, seed=0)
    policy.add_lora(LoraSettings(r=16, alpha=16))
    policy.train()
    rng = np.random.default_rng(0)
    size = preset_config(preset).image_size
    images = rng.integers(0, 256, (samples, size, size, 3), dtype=np.uint8)
    instructions = ["press the button"] * samples
    first, end = policy.vla.action_token_offset, policy.vla.config.base_vocab_size  # any valid tokens cost the same
    tokens = torch.randint(first, end, (samples, 7), generator=torch.Generator().manual_seed(0))
    seconds = dict.fromkeys(splits, 0.0)
    for i in range(repeats + 1):  # the first round warms up
        for k in splits:
            start = time.process_time()
            for idx in torch.tensor_split(torch.arange(samples), k):
                batch = policy.preprocess(images[idx.numpy()], [instructions[j] for j in idx.tolist()])
                scores = policy.evaluate_actions(batch, tokens[idx], temperature=1.0)
                (scores.log_probs.sum(-1).mean() * len(idx) / samples).backward()
            seconds[k] += (time.process_time() - start) if i else 0.0
    policy.zero_grad(set_to_none=True)
    return {k: samples * repeats / seconds[k] for k in splits}


@entry_point
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--tasks", nargs="+", default=["toy/color-side", "metaworld/reach"])
    parser.add_argument("--updates", type=int, default=3, help="PPO updates per run (the first is warm-up)")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=16)
    parser.add_argument("--cache-epochs", type=int, default=4, help="PPO epochs per update in part 1b")
    parser.add_argument("--cache-repeats", type=int, default=2, help="timed updates per variant in part 1b")
    parser.add_argument("--vision-cache-only", action="store_true", help="run part 1b only")
    parser.add_argument("--microbatch-samples", type=int, default=1800,
                        help="samples of part 1c's update (~ a cpu-preset REINFORCE batch: 16 episodes x ~110 steps)")
    parser.add_argument("--microbatch-splits", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--microbatch-only", action="store_true", help="run part 1c only")
    parser.add_argument("--json", type=str, default=None, help="also write the results here")
    args = parser.parse_args(argv)

    print(f"== measured on this CPU: policy-gradient update samples per CPU second by micro-batches, "
          f"{args.microbatch_samples} samples, LoRA r=16, one thread ==")
    microbatch = {}
    for preset in args.presets:
        microbatch[preset] = microbatch_update(preset, args.microbatch_samples, args.microbatch_splits, repeats=1)
        print(f"{preset:<6} " + "   ".join(f"{k:>2} x {args.microbatch_samples // k:>5}: {v:>6.1f}"
                                            for k, v in microbatch[preset].items()))
    if args.microbatch_only:
        return

    print(f"\n== measured on this CPU: PPO update samples per CPU second without -> with cached vision features, "
          f"{args.num_envs} envs x {args.num_steps} steps, {args.cache_epochs} epochs, 4 minibatches, "
          f"{args.cache_repeats} updates each ==")
    cache_results = []
    for preset in args.presets:
        for task in args.tasks:
            r = vision_cache_update(preset, task, args.num_envs, args.num_steps, args.cache_epochs, args.cache_repeats)
            cache_results.append(r)
            print(f"{preset:<6} {task:<16} {r['without']:>8.1f} -> {r['with']:>8.1f} samples per CPU s "
                  f"({r['with'] / r['without']:.2f}x)")  # fmt: skip
    if args.vision_cache_only:
        return

    print(f"\n== measured on this CPU: PPO, {args.num_envs} process-worker envs x {args.num_steps} steps, 1 epoch, "
          f"4 minibatches, KL-to-pi0 logging on; means over updates 2..{args.updates} ==")  # fmt: skip
    results = measured(args.presets, args.tasks, args.updates, args.num_envs, args.num_steps)
    header = f"{'preset':<6} {'task':<16} {'img':>4} {'env steps/s':>11} {'upd samples/s':>13} {'sim s':>7} {'infer s':>8} {'update s':>8} {'peak RSS GB':>11}"
    print(header)
    for r in results:
        total = r["sim_s"] + r["inference_s"] + r["update_s"]
        print(f"{r['preset']:<6} {r['task']:<16} {r['image']:>4} {r['env_steps_per_s']:>11.1f} {r['samples_per_s']:>13.1f} "
              f"{r['sim_s']:>7.2f} {r['inference_s']:>8.2f} {r['update_s']:>8.2f} {r['peak_rss_gb']:>11.2f}"
              f"   (split {100 * r['sim_s'] / total:.0f}% sim / {100 * r['inference_s'] / total:.0f}% inference / "
              f"{100 * r['update_s'] / total:.0f}% update)")  # fmt: skip

    print("\n== computed: openvla-7b-a100 PPO preset on one 80 GB A100 (bf16, gradient checkpointing, LoRA r=32) ==")
    budget = training_memory(RL_PRESETS["ppo"]["openvla-7b-a100"][1], preset_config("openvla-7b"), "cuda")
    print(format_budget(budget))
    print("  the rollout (uint8 images, log-probs, pi0 distributions) is kept in host memory")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"measured": results, "vision_cache": cache_results, "microbatch": microbatch, "budget_7b": [r.__dict__ for r in budget]}, indent=2)
        )


if __name__ == "__main__":
    main()
