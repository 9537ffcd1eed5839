"""Benchmark the policy: action throughput on CPU and the OpenVLA-7B memory budget.

1. Building the openvla-7b architecture on the meta device: parameter count and peak memory added.
2. The bf16 training footprint of OpenVLA-7B with the default LoRA (r=32 on the LM linears): frozen bf16
   weights, fp32 LoRA weights (peft's default on a bf16 model), their gradients and AdamW moments, the value head.
3. Actions per second for a preset at several batch sizes: VLAPolicy.generate on the whole batch (one prefill,
   KV-cached decode restricted to the action bins) against a naive baseline in the same run: Hugging Face
   `generate` one observation at a time over the unrestricted vocabulary. Both include preprocessing.

Run: python -m scripts.bench_vla [--preset small] [--batch-sizes 1 8 32] [--repeats 3]
"""

from __future__ import annotations

import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro

from scripts.cli import entry_point
from vla import LoraSettings, OpenVLA, VLAPolicy, add_lora, preset_config
from vla.policy import ValueHead

GIB = 2**30


@dataclass
class BenchConfig:
    preset: str = "small"
    """Preset whose throughput is measured (tiny or small)."""
    batch_sizes: tuple[int, ...] = (1, 8, 32)
    """Observations per call."""
    repeats: int = 3
    """Timed calls per batch size and method, after one untimed warm-up call."""
    image_size: int = 224
    """Side of the random camera frames fed to preprocessing."""
    threads: int = 1
    """torch CPU threads; 1 avoids OpenMP spin-waiting when the cores are shared with other jobs."""
    skip_7b: bool = False
    """Skip the 7B meta-device and footprint figures."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in ("tiny", "small") or min(self.batch_sizes) < 1 or self.repeats < 1:
            raise ValueError("preset must be tiny or small, batch sizes and repeats >= 1")
        if self.threads < 1:
            raise ValueError(f"threads must be >= 1, got {self.threads}")


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * resource.getpagesize()


def bench_7b_memory() -> None:
    rss_before = _rss_bytes()
    start = time.perf_counter()
    model = OpenVLA.from_config(preset_config("openvla-7b"), device="meta")
    build_s = time.perf_counter() - start
    peak_added = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - rss_before
    n_params = sum(p.numel() for p in model.parameters())
    print(
        f"openvla-7b on meta: {n_params:,} parameters, {len(model.state_dict())} tensors, built in {build_s:.2f} s,"
        f" peak memory added {max(peak_added, 0) / 2**20:.0f} MiB"
    )

    lora_model = add_lora(model, LoraSettings())
    n_lora = sum(p.numel() for p in lora_model.parameters() if p.requires_grad)
    n_value = sum(p.numel() for p in ValueHead(model.language_model.config.hidden_size).parameters())
    # peft keeps adapter weights in fp32 on a bf16 base model (autocast_adapter_dtype), so their gradients and
    # AdamW moments are fp32 too; the value head is fp32 (weights, gradients, two moments).
    rows = [
        ("frozen weights (bf16)", 2 * n_params),
        (f"LoRA weights, {n_lora:,} params (fp32)", 4 * n_lora),
        ("LoRA gradients (fp32)", 4 * n_lora),
        ("AdamW moments (2 x fp32)", 8 * n_lora),
        (f"value head, {n_value:,} params (fp32, grads, moments)", 16 * n_value),
    ]
    rows.append(("total", sum(size for _, size in rows)))
    print("bf16 training footprint of openvla-7b + default LoRA (excluding activations):")
    for label, size in rows:
        print(f"  {label:<52} {size / GIB:8.2f} GiB")


def _observations(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, list[str]]:
    words = ["pick up the red cube", "open the top drawer", "put the peg in the hole", "push the blue block left"]
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), [words[i % len(words)] for i in range(n)]


def naive_actions(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    """One observation at a time through Hugging Face generate, sampling over the whole vocabulary."""
    for image, instruction in zip(images, instructions, strict=True):
        batch = policy.preprocess(image[None], [instruction])
        inputs = policy.vla.embed_multimodal(batch.pixel_values, batch.input_ids, batch.attention_mask)
        policy.vla.language_model.generate(
            inputs_embeds=inputs.inputs_embeds,
            attention_mask=inputs.attention_mask,
            max_new_tokens=7,
            min_new_tokens=7,
            do_sample=True,
            top_k=None,
            pad_token_id=policy.processor.tokenizer.pad_token_id,
        )


def batched_actions(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    policy.generate(policy.preprocess(images, instructions), do_sample=True)


def actions_per_second(method, policy: VLAPolicy, images: np.ndarray, instructions: list[str], repeats: int) -> float:
    method(policy, images, instructions)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        method(policy, images, instructions)
    return len(images) * repeats / (time.perf_counter() - start)


@torch.inference_mode()
def bench_throughput(cfg: BenchConfig) -> None:
    policy = VLAPolicy.from_pretrained(cfg.preset, device="cpu", dtype=torch.float32, seed=cfg.seed).eval()
    n_params = sum(p.numel() for p in policy.vla.parameters())
    print(
        f"\n{cfg.preset} preset: {n_params:,} parameters, fp32, CPU, {torch.get_num_threads()} threads, "
        f"{policy.vla.num_patches} patches, {cfg.image_size}px input frames"
    )
    print(f"{'batch':>5} {'batched generate':>18} {'naive HF generate':>18} {'speed-up':>9}   (actions/s)")
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    for batch_size in cfg.batch_sizes:
        images, instructions = _observations(batch_size, cfg.image_size, rng)
        ours = actions_per_second(batched_actions, policy, images, instructions, cfg.repeats)
        naive = actions_per_second(naive_actions, policy, images, instructions, cfg.repeats)
        print(f"{batch_size:>5} {ours:>18.1f} {naive:>18.1f} {ours / naive:>8.1f}x")


@entry_point
def main(cfg: BenchConfig | None = None) -> None:
    cfg = cfg or tyro.cli(BenchConfig)
    torch.set_num_threads(cfg.threads)
    if not cfg.skip_7b:
        bench_7b_memory()  # first, so the peak-memory figure is not hidden by earlier allocations
    bench_throughput(cfg)


if __name__ == "__main__":
    main()
