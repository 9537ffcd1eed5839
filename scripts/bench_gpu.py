"""GPU benchmark of the 7B paths, one command (< 8 minutes on one H100/H200), written to a JSON file.

    python -m scripts.bench_gpu --out runs/bench_gpu.json                         # CUDA: random-init openvla-7b
    python -m scripts.bench_gpu --model tiny --preset tiny --device cpu --out ...  # CPU fallback (the tests)

In one process, on one device, with the training preset's settings (dtype, LoRA, gradient checkpointing):

1. generate: actions/s of greedy VLAPolicy.generate (one batched prefill, KV-cached decode over the action bins) at
   batch 1, 8, 32, 64 against a naive baseline measured in the same run: one observation at a time through
   Hugging Face `generate` over the full vocabulary, as OpenVLA's `predict_action` does (scripts/bench_vla.py's
   baseline). The baseline does not batch, so it is measured once, on `naive_observations` observations. Both
   run with the adapters disabled (pure inference) and include preprocessing.
2. evaluate_actions forward + backward: samples/s and peak memory at the PPO preset's micro-batch.
3. PPO update: rollouts.ppo.ppo_update on a rollout of the preset's shape (num_envs x num_steps samples; random
   images, tokens and returns: the cost does not depend on them), plus the collection's inference time for that
   rollout from measured calls: num_steps x (generate + pi0 forward) at batch num_envs. Simulation excluded.
4. ManiSkill GPU simulation: Bridge (PutCarrotOnPlateInScene) env steps/s at 16, 64, 256 parallel envs, when
   the GPU simulation starts; otherwise the reason it was skipped is recorded.

Without `--model`, the random-init openvla-7b checkpoint (vla/random_checkpoint.py) is written to
`random_init_dir` (drawn on the GPU, seconds) or reused. GPU timings synchronize the device before reading the clock.
"""

from __future__ import annotations

import json
import platform
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tyro

import envs
from rollouts.budget import GB, micro_batch, peak_rss_bytes, reset_peak_rss
from rollouts.collect import Rollout
from rollouts.ppo import ppo_update
from rollouts.presets import BRIDGE_TASK, RL_PRESETS
from rollouts.run import Run
from scripts.bench_vla import batched_actions, naive_actions
from scripts.cli import entry_point
from vla.config import ACTION_DIM, OpenVLAConfig
from vla.modeling import CONFIG_FILE
from vla.random_checkpoint import RANDOM_INIT_KEY, write_random_checkpoint


@dataclass
class BenchGPUConfig:
    out: str = "runs/bench_gpu.json"
    """Where the JSON results are written."""
    model: str | None = None
    """Checkpoint directory or random-init preset (tiny, small). None: the random-init openvla-7b checkpoint."""
    random_init_dir: str = ".cache/random-init"
    """Where the random-init openvla-7b checkpoint is written or found (sub-directory openvla-7b)."""
    preset: str = "openvla-7b-a100"
    """PPO preset of rollouts/presets.py whose settings and shapes are measured."""
    device: str = "auto"
    """auto = cuda when available, else cpu."""
    batch_sizes: tuple[int, ...] = (1, 8, 32, 64)
    """Observations per batched generate call."""
    naive_observations: int = 8
    """Observations for the naive baseline (it runs one at a time, so its rate does not depend on the batch)."""
    repeats: int = 3
    """Timed calls per measurement, after one untimed warm-up."""
    env_counts: tuple[int, ...] = (16, 64, 256)
    """Parallel envs of the ManiSkill GPU simulation benchmark."""
    env_steps: int = 20
    """Timed steps per env count (after a reset and one warm-up step)."""
    skip_envs: bool = False
    """Skip the simulation benchmark."""
    seed: int = 0

    def __post_init__(self) -> None:
        if min(self.batch_sizes) < 1 or self.repeats < 1 or self.naive_observations < 1 or self.env_steps < 1:
            raise ValueError("batch sizes, repeats, naive_observations and env_steps must be >= 1")
        if self.preset not in RL_PRESETS["ppo"]:
            raise ValueError(f"unknown PPO preset {self.preset!r}; choose one of {sorted(RL_PRESETS['ppo'])}")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    reset_peak_rss()


def _peak_gb(device: torch.device) -> float:
    """CUDA max allocated on a GPU, else the process's peak resident set, since the last _reset_peak."""
    return (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss_bytes()) / GB


def _timed(fn, device: torch.device, repeats: int) -> float:
    """Wall-clock seconds per call of fn() after one warm-up call, the device synchronized (GPU work is
    asynchronous, so the CPU time of this process would not measure it)."""
    fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / repeats


def _observations(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return images, ["put the carrot on the plate"] * n


def model_source(cfg: BenchGPUConfig, device: torch.device) -> str:
    if cfg.model is not None:
        return cfg.model
    directory = Path(cfg.random_init_dir) / "openvla-7b"
    config_file = directory / CONFIG_FILE
    if not (config_file.is_file() and RANDOM_INIT_KEY in json.loads(config_file.read_text())):
        write_random_checkpoint("openvla-7b", directory, device=device)
    return str(directory)


def bench_generate(policy, cfg: BenchGPUConfig, device: torch.device, rng: np.random.Generator) -> dict:
    size = policy.vla.config.image_size
    rates = {}
    with policy.adapters_disabled():
        for batch in cfg.batch_sizes:
            images, instructions = _observations(batch, size, rng)
            seconds = _timed(lambda: batched_actions(policy, images, instructions), device, cfg.repeats)
            rates[batch] = batch / seconds
            print(f"  generate, batch {batch:>3}: {rates[batch]:10.1f} actions/s", flush=True)
        images, instructions = _observations(cfg.naive_observations, size, rng)
        naive = len(images) / _timed(lambda: naive_actions(policy, images, instructions), device, 1)
    print(f"  naive HF generate, one at a time: {naive:10.1f} actions/s", flush=True)
    return {
        "batched_actions_per_s": rates,
        "naive_actions_per_s": naive,
        "naive_observations": cfg.naive_observations,
        "speedup": {b: r / naive for b, r in rates.items()},
    }


def bench_fwd_bwd(policy, micro: int, device: torch.device, repeats: int, rng: np.random.Generator) -> dict:
    images, instructions = _observations(micro, policy.vla.config.image_size, rng)
    batch = policy.preprocess(images, instructions)
    tokens = torch.randint(policy.vla.action_token_offset, policy.vla.config.base_vocab_size, (micro, ACTION_DIM),
                           device=policy.device)  # fmt: skip
    policy.train()

    def step() -> None:
        scores = policy.evaluate_actions(batch, tokens)
        (-scores.log_probs.sum(-1).mean() + scores.values.float().pow(2).mean()).backward()
        policy.zero_grad(set_to_none=True)

    _reset_peak(device)
    seconds = _timed(step, device, repeats)
    out = {"micro_batch": micro, "samples_per_s": micro / seconds, "peak_memory_gb": _peak_gb(device),
           "gradient_checkpointing": bool(policy.vla.language_model.is_gradient_checkpointing)}  # fmt: skip
    print(f"  evaluate_actions fwd+bwd, micro-batch {micro}: {out['samples_per_s']:.2f} samples/s, peak "
          f"{out['peak_memory_gb']:.2f} GB", flush=True)  # fmt: skip
    return out


def synthetic_rollout(policy, num_steps: int, num_envs: int, with_base: bool, rng: np.random.Generator) -> Rollout:
    """A rollout of the given shape with random content (the update's cost does not depend on the values)."""
    T, N, size = num_steps, num_envs, policy.vla.config.image_size
    n_bins, offset = policy.vla.config.n_action_bins, policy.vla.action_token_offset
    zeros = torch.zeros(T, N, dtype=torch.bool)
    return Rollout(
        images=rng.integers(0, 256, (T, N, size, size, 3), dtype=np.uint8),
        instructions=[("put the carrot on the plate",) * N] * T,
        states=np.zeros((T, N, 2), np.float32),
        action_tokens=torch.randint(offset, offset + n_bins, (T, N, ACTION_DIM)),
        logprobs=torch.full((T, N, ACTION_DIM), -float(np.log(n_bins))),
        values=torch.randn(T, N), rewards=torch.rand(T, N), terminated=zeros, truncated=zeros, success=zeros,
        next_values=torch.randn(T, N), first_episode=~zeros,
        base_logprobs=torch.log_softmax(torch.randn(T, N, ACTION_DIM, n_bins), -1) if with_base else None,
    )  # fmt: skip


def bench_ppo_update(run: Run, ppo_cfg, device: torch.device, rng: np.random.Generator) -> dict:
    policy = run.policy
    T, N = ppo_cfg.rollout_steps(), ppo_cfg.num_envs
    rollout = synthetic_rollout(policy, T, N, ppo_cfg.log_kl or ppo_cfg.kl_coef > 0, rng)
    # Collection's inference for this rollout: T calls of generate (+ pi0's teacher-forced forward) at batch N.
    policy.eval()
    batch = policy.preprocess(rollout.images[0], list(rollout.instructions[0]))
    gen_s = _timed(lambda: policy.generate(batch, do_sample=True), device, 1)
    tokens = rollout.action_tokens[0].to(policy.device)
    pi0_s = 0.0
    if rollout.base_logprobs is not None:
        pi0_s = _timed(lambda: policy.base_action_logits(batch, tokens), device, 1)
    _reset_peak(device)
    start = time.perf_counter()
    metrics = ppo_update(run, rollout, ppo_cfg)
    _sync(device)
    update_s = time.perf_counter() - start
    out = {
        "num_envs": N, "num_steps": T, "samples": T * N,
        "update_epochs": ppo_cfg.update_epochs, "num_minibatches": ppo_cfg.num_minibatches,
        "grad_accum_steps": ppo_cfg.grad_accum_steps, "micro_batch": micro_batch(ppo_cfg),
        "epochs_run": metrics["losses/epochs"], "update_s": update_s, "update_peak_memory_gb": _peak_gb(device),
        "collect_inference_s": T * (gen_s + pi0_s), "generate_s_per_call": gen_s, "pi0_forward_s_per_call": pi0_s,
    }  # fmt: skip
    out["total_s_without_simulation"] = out["update_s"] + out["collect_inference_s"]
    print(f"  PPO update ({T} x {N} samples, micro-batch {out['micro_batch']}): {update_s:.1f} s; collection inference "
          f"{out['collect_inference_s']:.1f} s (simulation excluded)", flush=True)  # fmt: skip
    return out


def bench_maniskill(cfg: BenchGPUConfig, device: torch.device) -> dict:
    """Bridge env steps/s of ManiSkill's GPU simulation, or {"skipped": reason}."""
    if cfg.skip_envs:
        return {"skipped": "--skip-envs"}
    if device.type != "cuda":
        return {"skipped": f"ManiSkill's GPU simulation needs CUDA; the device is {device}"}
    rates = {}
    for n in cfg.env_counts:
        try:
            vec = envs.make_vec(BRIDGE_TASK, n, seed=cfg.seed, native=True, image_size=224)
        except Exception as error:  # missing ManiSkill, assets, or a simulation that does not start: record why
            return {"skipped": f"{BRIDGE_TASK} with {n} GPU envs did not start: {type(error).__name__}: {error}",
                    "env_steps_per_s": rates}  # fmt: skip
        try:
            vec.reset(seed=cfg.seed)
            action = np.zeros((n, ACTION_DIM), np.float32)
            vec.step(action)
            _sync(device)
            start = time.perf_counter()
            for _ in range(cfg.env_steps):
                vec.step(action)
            _sync(device)
            rates[n] = n * cfg.env_steps / (time.perf_counter() - start)
        finally:
            vec.close()
        print(f"  ManiSkill GPU {BRIDGE_TASK}, {n} envs: {rates[n]:.0f} env steps/s (224 px images)", flush=True)
    return {"env_steps_per_s": rates, "task": BRIDGE_TASK, "image_size": 224}


@entry_point
def main(cfg: BenchGPUConfig | None = None) -> dict:
    cfg = cfg or tyro.cli(BenchGPUConfig)
    wall = time.perf_counter()
    device = torch.device(cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    preset_cfg = RL_PRESETS["ppo"][cfg.preset][1]
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    print(f"== bench_gpu on {device} ({device_name}), preset {cfg.preset} ==", flush=True)
    t0 = time.perf_counter()
    model = model_source(cfg, device)
    prepare_s = time.perf_counter() - t0
    is_dir = Path(model).is_dir()
    n_bins = OpenVLAConfig.load(Path(model) / CONFIG_FILE).n_action_bins if is_dir else preset_cfg.n_action_bins
    run_dir = Path(tempfile.mkdtemp(prefix="bench_gpu_"))
    ppo_cfg = replace(preset_cfg, model=model, n_action_bins=n_bins, run_dir=str(run_dir / "run"), device=str(device),
                      progress=False)  # fmt: skip
    try:
        t0 = time.perf_counter()
        run = Run.start(ppo_cfg, train_value_head=True, value_learning_rate=ppo_cfg.value_learning_rate, desc="bench")
        load_s = time.perf_counter() - t0
        policy = run.policy
        n_params = sum(p.numel() for p in policy.vla.parameters() if not p.requires_grad)
        print(f"  model {model}: {n_params:,} frozen params ({policy.dtype}); checkpoint ready in {prepare_s:.1f} s, "
              f"loaded with LoRA in {load_s:.1f} s", flush=True)  # fmt: skip
        results = {
            "device": str(device),
            "device_name": device_name,
            "measured_on_gpu": device.type == "cuda",
            "torch": torch.__version__,
            "model": {"source": model, "frozen_params": n_params, "dtype": str(policy.dtype).removeprefix("torch."),
                      "random_init": RANDOM_INIT_KEY in policy.vla.config.extra, "prepare_s": prepare_s,
                      "load_s": load_s},  # fmt: skip
            "preset": cfg.preset,
            "generate": bench_generate(policy, cfg, device, rng),
            "evaluate_actions": bench_fwd_bwd(policy, micro_batch(ppo_cfg), device, cfg.repeats, rng),
            "ppo_update": {"preset": cfg.preset, **bench_ppo_update(run, ppo_cfg, device, rng)},
        }
        run.finish()
        del run, policy
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
    results["maniskill_gpu"] = bench_maniskill(cfg, device)
    results["wall_s"] = time.perf_counter() - wall
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(results, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out} ({results['wall_s']:.0f} s)")
    return results


if __name__ == "__main__":
    main()
