"""Benchmark the policy: action throughput on CPU and the OpenVLA-7B memory budget.

1. Building the openvla-7b architecture on the meta device: parameter count and peak memory added.
2. The bf16 training footprint of OpenVLA-7B with the default LoRA (r=32 on the LM linears): frozen bf16
   weights, fp32 LoRA weights (peft's default on a bf16 model), their gradients and AdamW moments, the value head.
3. Actions per second for a preset at several batch sizes, each change against its baseline in the same run
   (calls alternate between the two, so machine load hits both alike):
   a. VLAPolicy.generate (one prefill, decode steps through a preallocated KV cache and the LM's layers) against
      the same batch decoded the previous way, one LlamaModel forward per step with a growing DynamicCache, and
      against a naive baseline: Hugging Face `generate` one observation at a time over the whole vocabulary.
   b. With a LoRA adapter attached (rank --lora-rank, as a checkpoint evaluation loads it): generate with the
      adapter merged into the weights against the unmerged peft model.
   c. Preprocessing frames/s: the batched torch resize against PIL one frame at a time (the previous way).
   d. All together, as a checkpoint evaluation runs: PIL + DynamicCache decode + unmerged adapter (previous)
      against torch preprocessing + the new decode + the merged adapter.
   All action figures include preprocessing; rates are per CPU second of the process (1 thread by default).

Run: python -m scripts.bench_vla [--preset small] [--batch-sizes 1 8 32] [--repeats 3]
     python -m scripts.bench_vla --preset tiny --image-size 64 --batch-sizes 1 10 32 --skip-7b  # cpu experiment
"""

from __future__ import annotations

import copy
import resource
import time
from dataclasses import dataclass

import numpy as np
import torch
import tyro
from PIL import Image
from transformers import DynamicCache

from scripts.cli import entry_point
from vla import LoraSettings, OpenVLA, PolicyBatch, VLAPolicy, add_lora, preset_config
from vla.config import ACTION_DIM
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
    lora_rank: int = 16
    """Rank of the adapter of the merged-vs-unmerged comparison (LoRA on the LM linears, random B factors)."""
    seed: int = 0

    def __post_init__(self) -> None:
        if self.preset not in ("tiny", "small") or min(self.batch_sizes) < 1 or self.repeats < 1:
            raise ValueError("preset must be tiny or small, batch sizes and repeats >= 1")
        if self.lora_rank < 1:
            raise ValueError(f"lora_rank must be >= 1, got {self.lora_rank}")
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


def dynamic_cache_actions(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    """The previous decode loop: after the prefill, one full LlamaModel forward per action token, with the HF
    attention mask grown by torch.cat and a DynamicCache (greedy, like an evaluation)."""
    dynamic_cache_decode(policy, policy.preprocess(images, instructions))


def previous_actions(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    """All previous paths together: PIL preprocessing, then the DynamicCache decode loop."""
    size = policy.vla.config.image_size
    frames = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in images])
    batch = policy.preprocess(frames, instructions)
    dynamic_cache_decode(policy, batch)


def dynamic_cache_decode(policy: VLAPolicy, batch: PolicyBatch) -> None:
    vla = policy.vla
    lm = vla.language_model.model
    mm = vla.embed_multimodal(batch.pixel_values, batch.input_ids, batch.attention_mask)
    out = lm(
        inputs_embeds=mm.inputs_embeds,
        attention_mask=mm.attention_mask,
        position_ids=mm.position_ids,
        cache=DynamicCache(config=lm.config),
        use_cache=True,
    )
    mask, position, hidden = mm.attention_mask, mm.position_ids[:, -1:] + 1, out.last_hidden_state[:, -1]
    for step in range(ACTION_DIM):
        chosen = vla.action_logits(hidden).argmax(-1) + vla.action_token_offset
        if step + 1 == ACTION_DIM:
            break
        mask = torch.cat([mask, mask.new_ones(len(chosen), 1)], dim=1)
        out = lm(
            inputs_embeds=lm.embed_tokens(chosen[:, None]),
            attention_mask=mask,
            position_ids=position,
            cache=out.cache,
            use_cache=True,
        )
        position, hidden = position + 1, out.last_hidden_state[:, -1]


def batched_actions(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    policy.generate(policy.preprocess(images, instructions), do_sample=False)


def pil_pixels(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    """The previous preprocessing: PIL's bicubic resize one frame at a time, then the same normalization."""
    size = policy.vla.config.image_size
    frames = np.stack([np.asarray(Image.fromarray(i).resize((size, size), Image.BICUBIC)) for i in images])
    rgb = torch.from_numpy(frames).permute(0, 3, 1, 2).float().div_(255.0)
    (rgb.repeat(1, 2, 1, 1) - policy.processor.mean) / policy.processor.std


def torch_pixels(policy: VLAPolicy, images: np.ndarray, instructions: list[str]) -> None:
    policy.processor.pixel_values(list(images))


def per_second(methods, policies, images: np.ndarray, instructions: list[str], repeats: int) -> list[float]:
    """Items per CPU second of this process for each (method, policy) pair; the pairs take turns in every repeat,
    after a warm-up. CPU time, not wall time: on a shared machine waiting for a core would swamp the ratios."""
    for method, policy in zip(methods, policies, strict=True):
        method(policy, images, instructions)
    seconds = [0.0] * len(methods)
    for _ in range(repeats):
        for i, (method, policy) in enumerate(zip(methods, policies, strict=True)):
            start = time.process_time()
            method(policy, images, instructions)
            seconds[i] += time.process_time() - start
    return [len(images) * repeats / s for s in seconds]


def adapted_copies(policy: VLAPolicy, rank: int, seed: int) -> tuple[VLAPolicy, VLAPolicy]:
    """The policy with a random rank-`rank` LM adapter (peft, unmerged), and a copy with it merged."""
    unmerged = copy.deepcopy(policy)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unmerged.add_lora(LoraSettings(r=rank, alpha=16))
        for name, parameter in unmerged.named_parameters():
            if "lora_B" in name:
                parameter.data.normal_(std=0.05)
    merged = copy.deepcopy(unmerged)
    merged.merge_adapters()
    return unmerged.eval(), merged.eval()


@torch.inference_mode()
def bench_throughput(cfg: BenchConfig) -> None:
    policy = VLAPolicy.from_pretrained(cfg.preset, device="cpu", dtype=torch.float32, seed=cfg.seed).eval()
    n_params = sum(p.numel() for p in policy.vla.parameters())
    print(
        f"\n{cfg.preset} preset: {n_params:,} parameters, fp32, CPU, {torch.get_num_threads()} threads, "
        f"{policy.vla.num_patches} patches, {cfg.image_size}px input frames"
    )
    with torch.inference_mode(False):
        unmerged, merged = adapted_copies(policy, cfg.lora_rank, cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    header = (
        f"{'batch':>5} {'generate':>10} {'previous decode':>16} {'ratio':>6} {'naive HF':>9} {'ratio':>6}"
        f" | LoRA r={cfg.lora_rank}: {'unmerged':>8} {'merged':>8} {'ratio':>6}"
        f" | frames/s: {'PIL':>8} {'torch':>8} {'ratio':>6}"
        f" | all, LoRA: {'previous':>8} {'new':>8} {'ratio':>6}"
    )
    print(header + "   (per CPU second; actions greedy, naive HF samples)")
    for batch_size in cfg.batch_sizes:
        images, instructions = _observations(batch_size, cfg.image_size, rng)
        ours, previous = per_second(
            (batched_actions, dynamic_cache_actions), (policy, policy), images, instructions, cfg.repeats
        )
        naive = per_second((naive_actions,), (policy,), images, instructions, cfg.repeats)[0]
        lora, folded = per_second(
            (batched_actions, batched_actions), (unmerged, merged), images, instructions, cfg.repeats
        )
        # Preprocessing is ~100x cheaper than a generate call: more repeats for a stable figure.
        pil, tensor = per_second((pil_pixels, torch_pixels), (policy, policy), images, instructions, 50 * cfg.repeats)
        before, after = per_second(
            (previous_actions, batched_actions), (unmerged, merged), images, instructions, cfg.repeats
        )
        print(
            f"{batch_size:>5} {ours:>10.1f} {previous:>16.1f} {ours / previous:>5.2f}x"
            f" {naive:>9.1f} {ours / naive:>5.1f}x"
            f" | {'':>10} {lora:>8.1f} {folded:>8.1f} {folded / lora:>5.2f}x"
            f" | {'':>10}{pil:>8.0f} {tensor:>8.0f} {tensor / pil:>5.1f}x"
            f" | {'':>10} {before:>8.1f} {after:>8.1f} {after / before:>5.2f}x"
        )


@entry_point
def main(cfg: BenchConfig | None = None) -> None:
    cfg = cfg or tyro.cli(BenchConfig)
    torch.set_num_threads(cfg.threads)
    if not cfg.skip_7b:
        bench_7b_memory()  # first, so the peak-memory figure is not hidden by earlier allocations
    bench_throughput(cfg)


if __name__ == "__main__":
    main()
