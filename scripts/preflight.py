"""razor preflight: run every code path of a training run once, at the smallest size, and judge a preset's fit.

    razor-preflight --model tiny --preset tiny                                  # seconds (the default tests run it)
    razor-preflight --random-init openvla-7b --preset openvla-7b-a100           # full-size 7B with random weights
    razor-preflight --model /data/openvla-7b --preset openvla-7b-a100 --device cuda

Before anything is loaded it computes the memory budget of the training preset (rollouts/budget.py: weights +
LoRA + optimizer states + KV cache or activations at the preset's micro-batch, with and without gradient
checkpointing) for each of PPO, GRPO, REINFORCE and SFT, and stops with exit code 2 when a preset does not fit
the device (or when the preflight itself cannot fit in the memory available right now). Then, with the preset's
model settings (dtype, LoRA, gradient checkpointing) and batch sizes of 1-2, it runs:

     1. load + LoRA + gradient checkpointing    the run's own build_policy (sharded safetensors at full size)
     2. generate                                 sampled actions for a small batch (un-normalized when the model
                                                 has the preset's unnorm_key)
     3. evaluate_actions + backward              through LoRA with gradient checkpointing; checks that every LoRA
                                                 B matrix got a finite, non-zero gradient and that the decoder
                                                 layers were recomputed in the backward pass; one AdamW step
     4. pi0 forward                              teacher-forced, adapters disabled (KL logging, SFT + KL)
     5. save adapters                            plus greedy reference actions
     6. load base + adapters                     a fresh load: the same greedy actions as before the save
     7. KL monitor                               one measurement of eval/kl.py's KLMonitor
     8. evaluation episode                       eval/suite.py on the cheap task
  9-12. PPO, GRPO, REINFORCE, SFT                one update each through rollouts' train() (cheap task, 1-2 envs)

and prints each step's wall time and peak memory (CPU: the process's peak resident set, reset before each step;
CUDA: max allocated). The cheap task (toy/color-side) renders at the model's image size; its actions are in
[-1, 1], so the updates run without un-normalization. Finally it extrapolates the measured per-sample times to
one full update of each preset (simulation time excluded; batch-1 times, so batching on a GPU only makes it faster).
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tyro

from eval.kl import KLMonitor, collect_observations
from eval.suite import Suite, SuiteTask, evaluate, vla_actor
from rollouts import grpo, ppo, reinforce, sft
from rollouts.budget import (GB, device_memory, format_budget, micro_batch, peak_bytes, peak_rss_bytes,
                            reset_peak_rss, training_memory)
from rollouts.config import RLConfig, TrainConfig
from rollouts.presets import RL_PRESETS, SFT_PRESETS
from rollouts.run import build_policy
from scripts.cli import entry_point
from vla.config import ACTION_DIM, PRESET_NAMES, OpenVLAConfig, preset_config
from vla.modeling import CONFIG_FILE
from vla.policy import VLAPolicy
from vla.random_checkpoint import RANDOM_INIT_KEY, write_random_checkpoint

ALGORITHMS = ("ppo", "grpo", "reinforce", "sft")
TRAIN = {"ppo": ppo.train, "grpo": grpo.train, "reinforce": reinforce.train, "sft": sft.train}


@dataclass
class PreflightConfig:
    model: str = "tiny"
    """Checkpoint directory (config.json + safetensors) or a random-init preset (tiny, small)."""
    random_init: str | None = None
    """Instead of --model: write this preset (e.g. openvla-7b) with random bf16 weights and a stand-in tokenizer as
    a sharded checkpoint directory under random_init_dir (reused when already there), and preflight it."""
    random_init_dir: str = ".cache/random-init"
    """Where --random-init checkpoints are written (one sub-directory per preset)."""
    preset: str = "tiny"
    """Training preset of rollouts/presets.py whose settings are used and whose budget is judged (tiny,
    openvla-7b-a100, openvla-7b-a100-40gb)."""
    device: str = "auto"
    """torch device: auto = cuda when available, else cpu."""
    generate_batch: int = 2
    """Observations in the generate step (and the KL monitor)."""
    micro_batch: int = 1
    """Samples in the evaluate_actions + backward step."""
    task: str = "toy/color-side"
    """Cheap task for the updates and the evaluation episode (rendered at the model's image size)."""
    threads: int = 0
    """torch CPU threads (0: the preset's setting, else torch's default)."""
    force: bool = False
    """Run the steps even when the preset's budget does not fit the device (the verdict still says so)."""
    work_dir: str | None = None
    """Directory for adapters, runs and demos (default: a temporary directory, removed at the end)."""
    json_out: str | None = None
    """Also write the step results, the budgets and the extrapolated times to this JSON file."""

    def __post_init__(self) -> None:
        if self.preset not in SFT_PRESETS or any(self.preset not in RL_PRESETS[a] for a in ALGORITHMS[:3]):
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {sorted(SFT_PRESETS)}")
        if self.random_init is not None and self.random_init not in PRESET_NAMES:
            raise ValueError(f"--random-init must be one of {PRESET_NAMES}, got {self.random_init!r}")
        if min(self.generate_batch, self.micro_batch) < 1 or self.micro_batch > self.generate_batch:
            raise ValueError("generate_batch and micro_batch must be >= 1, with micro_batch <= generate_batch")


@dataclass
class StepResult:
    name: str
    seconds: float
    cpu_seconds: float
    peak_rss_gb: float
    peak_cuda_gb: float | None = None
    note: str = ""


# ---- measuring ------------------------------------------------------------------------------------------------
class Meter:
    """Times steps and records their peak memory; prints one line per step."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.results = device, []

    @contextlib.contextmanager
    def step(self, name: str) -> Iterator[dict]:
        gc.collect()
        reset_peak_rss()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        info = {"note": ""}
        print(f"-- {name} ...", flush=True)
        t0, c0 = time.perf_counter(), time.process_time()
        yield info
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        seconds, cpu_seconds = time.perf_counter() - t0, time.process_time() - c0
        cuda = torch.cuda.max_memory_allocated(self.device) / GB if self.device.type == "cuda" else None
        result = StepResult(name, seconds, cpu_seconds, peak_rss_bytes() / GB, cuda, info["note"])
        self.results.append(result)
        cuda_text = f", CUDA max allocated {cuda:.2f} GB" if cuda is not None else ""
        print(f"   {seconds:8.1f} s ({cpu_seconds:.1f} s CPU), peak RSS {result.peak_rss_gb:.2f} GB{cuda_text}  "
              f"{result.note}", flush=True)  # fmt: skip


# ---- configs ----------------------------------------------------------------------------------------------------
def preset_configs(preset: str) -> dict[str, TrainConfig]:
    return {**{a: RL_PRESETS[a][preset][1] for a in ALGORITHMS[:3]}, "sft": SFT_PRESETS[preset][1]}


def smallest_config(alg: str, cfg: TrainConfig, model: str, model_config: OpenVLAConfig, pcfg: PreflightConfig,
                    device: str, run_dir: Path) -> TrainConfig:  # fmt: skip
    """The preset's config with the smallest sizes that still run every part of an update, on the cheap task."""
    common = dict(model=model, n_action_bins=model_config.n_action_bins, total_updates=1, grad_accum_steps=1,
                  unnorm_key=None, run_dir=str(run_dir), progress=False, checkpoint_every=1, device=device,
                  torch_threads=pcfg.threads or cfg.torch_threads)  # fmt: skip
    image = {"image_size": model_config.image_size}
    if alg == "sft":
        return replace(cfg, **common, dataset=str(run_dir.parent / "demos"), generate_demos=2, demo_task=pcfg.task,
                       demo_env_kwargs=image, batch_size=1, eval_samples=1, eval_every=1)  # fmt: skip
    rl = dict(common, task=pcfg.task, env_kwargs=image, env_in_process=True, num_steps=1)
    if alg == "ppo":
        return replace(cfg, **rl, num_envs=1, update_epochs=1, num_minibatches=1)
    if alg == "grpo":
        return replace(cfg, **rl, num_envs=2, group_size=2, update_epochs=1, num_minibatches=1)
    return replace(cfg, **rl, num_envs=1)


def model_source(pcfg: PreflightConfig, meter: Meter) -> str:
    """The checkpoint directory or preset to preflight; writes the random-init checkpoint when asked."""
    if pcfg.random_init is None:
        return pcfg.model
    directory = Path(pcfg.random_init_dir) / pcfg.random_init
    if (directory / CONFIG_FILE).is_file():
        marker = json.loads((directory / CONFIG_FILE).read_text()).get(RANDOM_INIT_KEY, {})
        if marker.get("preset") == pcfg.random_init:
            print(f"reusing the random-init {pcfg.random_init} checkpoint in {directory}")
            return str(directory)
        raise FileExistsError(f"{directory} exists but is not a random-init {pcfg.random_init} checkpoint; move it")
    with meter.step(f"write random-init {pcfg.random_init} checkpoint") as info:
        write_random_checkpoint(pcfg.random_init, directory)
        shards = sorted(p.name for p in directory.glob("*.safetensors"))
        size = sum(p.stat().st_size for p in directory.iterdir()) / GB
        info["note"] = f"{directory}: {len(shards)} shards, {size:.1f} GB"
    return str(directory)


def load_model_config(model: str, n_action_bins: int) -> OpenVLAConfig:
    """The config of a checkpoint directory, or of a random-init preset with the training preset's action bins."""
    path = Path(model)
    if path.is_dir():
        return OpenVLAConfig.load(path / CONFIG_FILE)
    if model in ("tiny", "small"):
        return preset_config(model, n_action_bins)
    raise FileNotFoundError(f"{model!r} is neither a checkpoint directory nor a random-init preset (tiny, small); "
                            "for openvla-7b pass its directory or --random-init openvla-7b")  # fmt: skip


# ---- budget -----------------------------------------------------------------------------------------------------
def judge_budget(configs: dict[str, TrainConfig], model_config: OpenVLAConfig, pcfg: PreflightConfig,
                 device: torch.device) -> dict:  # fmt: skip
    """Print the presets' budgets and the preflight's own; stop (exit 2) when they cannot fit."""
    total, available = device_memory(device)
    print(f"\n== memory budget of preset {pcfg.preset!r} on {device} ({total / GB:.1f} GB, {available / GB:.1f} GB "
          "available now) ==")  # fmt: skip
    print("PPO, component by component (rollouts/budget.py has the formulas):")
    print(format_budget(training_memory(configs["ppo"], model_config, device.type)))
    out, too_big = {}, []
    print(f"  {'algorithm':<10} {'micro':>5} {'peak, preset setting':>21} {'with ckpt':>10} {'without':>10}")
    for alg, cfg in configs.items():
        rows = training_memory(cfg, model_config, device.type)
        with_ckpt = peak_bytes(training_memory(cfg, model_config, device.type, gradient_checkpointing=True))
        without = peak_bytes(training_memory(cfg, model_config, device.type, gradient_checkpointing=False))
        micro = micro_batch(cfg)
        out[alg] = {"peak_gb": peak_bytes(rows) / GB, "with_ckpt_gb": with_ckpt / GB, "without_ckpt_gb": without / GB,
                    "micro_batch": micro, "rows": [r.__dict__ for r in rows]}  # fmt: skip
        fits = peak_bytes(rows) <= total
        too_big += [] if fits else [alg]
        print(f"  {alg:<10} {micro:>5} {peak_bytes(rows) / GB:>18.2f} GB {with_ckpt / GB:>7.2f} GB "
              f"{without / GB:>7.2f} GB   {'fits' if fits else 'DOES NOT FIT'}")  # fmt: skip
    own = peak_bytes(training_memory(configs["ppo"], model_config, device.type, micro=pcfg.micro_batch,
                                     generate_batch=pcfg.generate_batch))  # fmt: skip
    print(f"  this preflight (generate batch {pcfg.generate_batch}, micro-batch {pcfg.micro_batch}) needs about "
          f"{own / GB:.2f} GB")  # fmt: skip
    verdict = {"device_total_gb": total / GB, "available_gb": available / GB, "preflight_needs_gb": own / GB,
               "algorithms": out, "fits": not too_big}  # fmt: skip
    if too_big and not pcfg.force:
        raise SystemExit(
            f"STOP: preset {pcfg.preset!r} does not fit {device} ({total / GB:.1f} GB) for {too_big}. Use a smaller "
            "preset (the -40gb variants halve the micro-batch), more grad_accum_steps, gradient checkpointing, or a "
            "larger device; --force runs the preflight anyway."
        )
    if own > available:
        raise SystemExit(
            f"STOP: the preflight needs about {own / GB:.1f} GB but only {available / GB:.1f} GB of {device} is "
            "available now; free memory (or wait for other jobs) and run it again."
        )
    return verdict


# ---- the steps --------------------------------------------------------------------------------------------------
def _lora_b_grads(policy: VLAPolicy) -> tuple[int, int]:
    """(LoRA B matrices with a finite non-zero gradient, all LoRA B matrices)."""
    grads = [p.grad for n, p in policy.model.named_parameters() if "lora_B" in n]
    ok = sum(g is not None and bool(torch.isfinite(g).all()) and bool(g.abs().sum() > 0) for g in grads)
    return ok, len(grads)


def same_greedy_actions(policy: VLAPolicy, batch, reference: torch.Tensor, again: torch.Tensor) -> str:
    """Check that `policy` picks the `reference` greedy tokens [B, 7] again. Where it picked another token, the
    reference token must be a tie within float noise (random-init models have nearly flat logits)."""
    if torch.equal(again.cpu(), reference.cpu()):
        return "identical greedy action tokens"
    with torch.no_grad():
        logits = policy.evaluate_actions(batch, reference.to(policy.device)).logits  # [B, 7, n_bins]
    chosen = logits.gather(-1, (reference.to(logits.device) - policy.vla.action_token_offset)[..., None]).squeeze(-1)
    gap = float((logits.max(-1).values - chosen).max())
    tolerance = 1e-4 * float(logits.abs().max()) + (1e-2 if policy.dtype == torch.bfloat16 else 1e-5)
    if gap > tolerance:
        raise RuntimeError(f"the reloaded adapters give other greedy actions than before saving ({reference.tolist()} "
                           f"vs {again.tolist()}): logit gap {gap:.3g} > {tolerance:.3g}")  # fmt: skip
    differ = int((again.cpu() != reference.cpu()).sum())
    return f"greedy tokens identical except {differ} near-tie(s) (logit gap {gap:.2g} <= {tolerance:.2g})"


def policy_steps(pcfg: PreflightConfig, cfg: TrainConfig, model: str, model_config: OpenVLAConfig,
                 device: torch.device, work: Path, meter: Meter) -> dict[str, float]:  # fmt: skip
    """Steps 1-8; returns the measured per-sample seconds the extrapolation needs."""
    images, instructions = collect_observations(pcfg.task, pcfg.generate_batch, env_options={"image_size":
                                                model_config.image_size})  # fmt: skip
    run_cfg = replace(cfg, model=model, n_action_bins=model_config.n_action_bins)
    with meter.step("1. load + LoRA + gradient checkpointing") as info:
        policy = build_policy(run_cfg, device)
        n_lora = sum(p.numel() for p in policy.model.parameters() if p.requires_grad)
        n_params = sum(p.numel() for p in policy.vla.parameters()) - n_lora
        info["note"] = f"{n_params:,} params ({policy.dtype}) + {n_lora:,} trainable LoRA params"
    unnorm_key = cfg.unnorm_key if cfg.unnorm_key in (model_config.norm_stats or {}) else None
    batch = policy.preprocess(images, instructions)
    with meter.step(f"2. generate, batch {pcfg.generate_batch}") as info:
        policy.eval()
        out = policy.generate(batch, do_sample=True, unnorm_key=unnorm_key)
        if out.actions.shape != (pcfg.generate_batch, ACTION_DIM) or not np.isfinite(out.actions).all():
            raise RuntimeError(f"generate returned actions of shape {out.actions.shape} with non-finite values")
        info["note"] = f"un-normalized with {unnorm_key!r}" if unnorm_key else "normalized actions (no unnorm_key)"
    t_gen = meter.results[-1].seconds / pcfg.generate_batch

    micro, tokens = batch[: pcfg.micro_batch], out.action_tokens[: pcfg.micro_batch]
    # A module inside the first decoder layer starts twice when checkpointing recomputes the layer in the backward
    # pass. (transformers checkpoints the layer's forward, so hooks on the layer itself run once; and torch stops
    # the recompute as soon as the saved tensors are rebuilt, so only a pre-hook is sure to run.)
    layer_calls = []
    hook = policy.vla.language_model.model.layers[0].mlp.register_forward_pre_hook(lambda *args: layer_calls.append(1))
    with meter.step(f"3. evaluate_actions + backward, micro-batch {pcfg.micro_batch}") as info:
        policy.train()
        scores = policy.evaluate_actions(micro, tokens)
        loss = -scores.log_probs.sum(-1).mean() + scores.values.float().pow(2).mean()
        loss.backward()
        ok, n_b = _lora_b_grads(policy)
        if ok != n_b:
            raise RuntimeError(f"only {ok} of {n_b} LoRA B matrices got a finite non-zero gradient: the backward pass "
                               "does not reach the adapters (peft + gradient checkpointing: input grads?)")  # fmt: skip
        if cfg.gradient_checkpointing and len(layer_calls) != 2:
            raise RuntimeError(f"gradient checkpointing is on but decoder layer 0's MLP ran {len(layer_calls)} "
                               "time(s) in forward + backward (2 expected: forward and recompute)")  # fmt: skip
        trainable = [p for p in policy.model.parameters() if p.requires_grad] + list(policy.value_head.parameters())
        optimizer = torch.optim.AdamW(trainable, lr=1e-3)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        recomputed = "layers recomputed in backward" if len(layer_calls) == 2 else "no recompute"
        info["note"] = f"grads on {ok}/{n_b} LoRA B matrices, {recomputed}, AdamW step"
    hook.remove()
    t_fb = meter.results[-1].seconds / pcfg.micro_batch

    with meter.step(f"4. pi0 forward (adapters disabled), micro-batch {pcfg.micro_batch}"):
        policy.eval()
        policy.base_action_logits(micro, tokens)
    t_pi0 = meter.results[-1].seconds / pcfg.micro_batch

    with meter.step("5. save adapters + greedy reference actions") as info:
        policy.save_adapters(work / "adapter")
        reference = policy.generate(batch, do_sample=False)
        info["note"] = f"{sum(p.stat().st_size for p in (work / 'adapter').iterdir()) / 1e6:.1f} MB"
    del policy, scores, loss, optimizer, trainable, out
    gc.collect()

    with meter.step("6. load base + saved adapters, greedy actions") as info:
        dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.dtype]
        policy = VLAPolicy.from_pretrained(model, device=device, dtype=dtype, adapter_dir=work / "adapter",
                                           n_action_bins=model_config.n_action_bins).eval()  # fmt: skip
        again = policy.generate(batch, do_sample=False)
        info["note"] = same_greedy_actions(policy, batch, reference.action_tokens, again.action_tokens)

    with meter.step("7. KL monitor (pi0 samples + one measurement)") as info:
        monitor = KLMonitor(images, instructions, batch_size=pcfg.generate_batch)
        kl = monitor(policy)
        if not np.isfinite(kl["eval/kl_forward"]) or kl["eval/kl_forward"] < 0:
            raise RuntimeError(f"the KL monitor returned kl_forward={kl['eval/kl_forward']}")
        info["note"] = f"kl_forward {kl['eval/kl_forward']:.4g} nats"

    with meter.step("8. evaluation episode") as info:
        suite = Suite("preflight", [SuiteTask(pcfg.task, 1)], env_options={"image_size": model_config.image_size})
        result = evaluate(vla_actor(policy, unnorm_key=None), suite, num_envs=1)[pcfg.task]
        info["note"] = f"{pcfg.task}: {result.trials} episode, length {result.mean_episode_len:.0f}"
    del policy, monitor
    gc.collect()
    return {"generate_s_per_obs": t_gen, "fwd_bwd_s_per_sample": t_fb, "pi0_fwd_s_per_sample": t_pi0}


def update_steps(pcfg: PreflightConfig, configs: dict[str, TrainConfig], model: str, model_config: OpenVLAConfig,
                 device: torch.device, work: Path, meter: Meter) -> None:  # fmt: skip
    """Steps 9-12: one update of each algorithm through its train()."""
    for i, alg in enumerate(ALGORITHMS, start=9):
        cfg = smallest_config(alg, configs[alg], model, model_config, pcfg, str(device), work / "runs" / alg)
        with meter.step(f"{i}. {alg} update (train(), 1 update)") as info:
            metrics = TRAIN[alg](cfg)
            loss = metrics.get("losses/loss", float("nan"))
            if not np.isfinite(loss):
                raise RuntimeError(f"{alg}: the update logged losses/loss = {loss}")
            if not list((work / "runs" / alg).glob("checkpoints/*/adapter")):
                raise RuntimeError(f"{alg}: no checkpoint with adapters was written in {work / 'runs' / alg}")
            info["note"] = f"loss {loss:.4g}, checkpoint written"
        gc.collect()


# ---- verdict ----------------------------------------------------------------------------------------------------
def extrapolate(configs: dict[str, TrainConfig], per_sample: dict[str, float]) -> dict[str, dict[str, float]]:
    """Seconds of one full update of each preset from the measured per-sample times (simulation excluded):

        RL:  T x N x (t_generate + t_pi0 if log_kl) + epochs x T x N x t_fwd_bwd
        SFT: B x (t_pi0 if log_kl + t_fwd_bwd)
    """
    t_gen, t_fb, t_pi0 = (per_sample[k] for k in ("generate_s_per_obs", "fwd_bwd_s_per_sample", "pi0_fwd_s_per_sample"))
    out = {}
    for alg, cfg in configs.items():
        pi0 = t_pi0 if cfg.log_kl else 0.0
        if isinstance(cfg, RLConfig):
            samples = cfg.num_envs * cfg.rollout_steps()
            seconds = samples * (t_gen + pi0) + getattr(cfg, "update_epochs", 1) * samples * t_fb
        else:
            samples = cfg.batch_size
            seconds = samples * (pi0 + t_fb)
        out[alg] = {"samples": samples, "update_s": seconds, "run_h": seconds * cfg.total_updates / 3600,
                    "total_updates": cfg.total_updates}  # fmt: skip
    return out


@entry_point
def main(pcfg: PreflightConfig | None = None) -> dict:
    pcfg = pcfg or tyro.cli(PreflightConfig)
    device = torch.device(pcfg.device if pcfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    configs = preset_configs(pcfg.preset)
    if pcfg.threads:
        torch.set_num_threads(pcfg.threads)
    meter = Meter(device)
    work = Path(pcfg.work_dir or tempfile.mkdtemp(prefix="razor-preflight-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        bins = configs["ppo"].n_action_bins
        source_config = preset_config(pcfg.random_init) if pcfg.random_init else load_model_config(pcfg.model, bins)
        verdict = judge_budget(configs, source_config, pcfg, device)
        print(f"\n== steps on {device}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} ==",
              flush=True)  # fmt: skip
        model = model_source(pcfg, meter)
        model_config = load_model_config(model, bins)
        per_sample = policy_steps(pcfg, configs["ppo"], model, model_config, device, work, meter)
        update_steps(pcfg, configs, model, model_config, device, work, meter)
    finally:
        if pcfg.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)

    times = extrapolate(configs, per_sample)
    print(f"\n== verdict for preset {pcfg.preset!r} on {device} ==")
    print(f"memory: {'fits' if verdict['fits'] else 'DOES NOT FIT'} ({verdict['device_total_gb']:.1f} GB device; "
          + ", ".join(f"{a} {v['peak_gb']:.1f} GB" for a, v in verdict["algorithms"].items()) + ")")  # fmt: skip
    print("time of one full update, extrapolated from this device's measured per-sample times (generate "
          f"{per_sample['generate_s_per_obs']:.3g} s/obs, forward+backward {per_sample['fwd_bwd_s_per_sample']:.3g} "
          f"s/sample, pi0 forward {per_sample['pi0_fwd_s_per_sample']:.3g} s/sample; simulation excluded):")
    print(extrapolate.__doc__.split("\n\n")[1].rstrip())
    for alg, t in times.items():
        print(f"  {alg:<10} {t['samples']:>5} samples/update  {t['update_s']:>10.1f} s/update  "
              f"{t['run_h']:>8.2f} h for {t['total_updates']} updates")  # fmt: skip
    print("all steps passed")
    report = {"preset": pcfg.preset, "model": model, "device": str(device), "threads": torch.get_num_threads(),
              "load_average_end": os.getloadavg(), "steps": [r.__dict__ for r in meter.results],
              "budget": verdict, "per_sample_s": per_sample, "extrapolated": times}  # fmt: skip
    if pcfg.json_out:
        Path(pcfg.json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(pcfg.json_out).write_text(json.dumps(report, indent=2, default=str) + "\n")
    return report


if __name__ == "__main__":
    main()
