"""Memory budget of a training config on one device, computed from the architecture and the config's batch sizes.

    rows = training_memory(cfg, model_config)      # list[BudgetRow]: component, bytes, the formula used
    print(format_budget(rows, device_bytes))        # table + peak + verdict

Counted from the real architecture built on the meta device (parameter counts, LoRA counts from peft) and these
formulas (b = bytes per weight/activation element: 2 for bf16, 4 for fp32; D = LM width, I = LM MLP width,
L = LM layers, S = tokens per sample = 1 BOS + P patches + prompt + 7 actions):

    static    = weights (params x b) + LoRA weights, grads, AdamW m and v (4 x 4 B per adapter parameter, fp32 as
                peft keeps them on a bf16 model) + value head (16 B per parameter) + runtime overhead
    generate  = KV cache: envs x L x 2 (K, V) x S x kv_width x b   (collection; the rollout itself stays on the host)
    update    = with gradient checkpointing: micro x L x S x D x b (each layer's input kept)
                                             + 2 x micro x S x (10 D + 4 I) x b (one layer recomputed + its grads)
                without:                      micro x L x S x (10 D + 4 I) x b (every layer's activations kept)
    peak      = static + max(generate, update)   (the KV cache is freed before the update starts)

The measured side (`reset_peak_rss`, `peak_rss_bytes`, `device_memory`) reads what a process really used: its
peak resident set since the last reset (Linux /proc), and the device's total and available memory.

10 D + 4 I per token and layer counts what a Llama layer keeps for its backward pass: the two RMSNorm inputs
(fp32, 2 D each), their outputs (D each), q, k, v and the attention output (4 D), the MLP's gate, up, activation
and product (4 I); attention runs through SDPA without materialized score matrices. The frozen vision towers and
projector run without gradients and keep nothing. The micro-batch is the samples of one forward/backward pass.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import math
import resource
from dataclasses import dataclass
from pathlib import Path

import torch

from rollouts.config import RLConfig, TrainConfig
from vla.config import ACTION_DIM, OpenVLAConfig
from vla.lora import LoraSettings, add_lora
from vla.modeling import OpenVLA
from vla.policy import ValueHead

GB = 1e9
PROMPT_TOKENS = 32  # OpenVLA's prompt for a typical instruction, in Llama tokens (BOS and "Out: ▁" included)
RUNTIME_OVERHEAD = {"cuda": 2.0 * GB, "cpu": 1.0 * GB}  # CUDA context + allocator slack / Python + torch: typical


@dataclass
class BudgetRow:
    component: str
    bytes: float
    formula: str
    phase: str  # "static", "generate" or "update": see the module docstring's peak formula


def micro_batch(cfg: TrainConfig) -> int:
    """Samples per forward/backward pass: the update's samples / (minibatches x grad_accum_steps).
    RL: num_envs x rollout steps per update (GRPO and REINFORCE: at most, episodes may end earlier); SFT: batch_size."""
    if isinstance(cfg, RLConfig):
        samples = cfg.num_envs * cfg.rollout_steps()
    else:
        samples = getattr(cfg, "batch_size")
    return max(1, math.ceil(samples / (getattr(cfg, "num_minibatches", 1) * cfg.grad_accum_steps)))


def training_memory(
    cfg: TrainConfig,
    model_config: OpenVLAConfig,
    device_type: str = "cuda",
    gradient_checkpointing: bool | None = None,
    micro: int | None = None,
    generate_batch: int | None = None,
) -> list[BudgetRow]:
    """The budget rows of `cfg` for a model of `model_config` (see the module docstring). `gradient_checkpointing`,
    `micro` and `generate_batch` default to the config's (num_envs for RL, none for SFT)."""
    ckpt = cfg.gradient_checkpointing if gradient_checkpointing is None else gradient_checkpointing
    micro = micro or micro_batch(cfg)
    envs = generate_batch if generate_batch is not None else (cfg.num_envs if isinstance(cfg, RLConfig) else 0)
    b = 4 if cfg.dtype == "float32" or (cfg.dtype == "auto" and device_type != "cuda") else 2
    n_params, n_lora, n_value, num_patches, llm = _counts(
        json.dumps(model_config.to_dict(), sort_keys=True), cfg.lora_rank, cfg.lora_alpha, cfg.lora_lm_head
    )
    D, I, L = llm["hidden_size"], llm["intermediate_size"], llm["num_hidden_layers"]
    kv_width = llm["num_key_value_heads"] * (D // llm["num_attention_heads"])
    S = 1 + num_patches + PROMPT_TOKENS + ACTION_DIM
    per_token_layer = 10 * D + 4 * I
    rows = [
        BudgetRow("weights", n_params * b, f"{n_params:,} params x {b} B", "static"),
        BudgetRow("LoRA weights + grads + AdamW m, v", 16 * n_lora, f"{n_lora:,} params x 4 x 4 B", "static"),
        BudgetRow("value head + grads + AdamW", 16 * n_value, f"{n_value:,} params x 16 B", "static"),
        BudgetRow("runtime overhead", RUNTIME_OVERHEAD.get(device_type, 0.0),
                  "CUDA context, allocator slack" if device_type == "cuda" else "Python, torch, libraries", "static"),
    ]  # fmt: skip
    if envs:
        kv_formula = f"{envs} envs x {L} layers x 2 x {S} tokens x {kv_width} x {b} B"
        rows.append(BudgetRow("KV cache of generate()", envs * L * 2 * S * kv_width * b, kv_formula, "generate"))
    if ckpt:
        rows.append(BudgetRow("checkpointed layer inputs", micro * L * S * D * b,
                              f"micro {micro} x {L} layers x {S} tokens x {D} x {b} B", "update"))  # fmt: skip
        rows.append(BudgetRow("one layer recomputed + its grads", 2 * micro * S * per_token_layer * b,
                              f"2 x micro {micro} x {S} tokens x (10 x {D} + 4 x {I}) x {b} B", "update"))  # fmt: skip
    else:
        formula = f"micro {micro} x {L} layers x {S} tokens x (10 x {D} + 4 x {I}) x {b} B"
        rows.append(BudgetRow("activations of every layer", micro * L * S * per_token_layer * b, formula, "update"))
    return rows


@functools.lru_cache(maxsize=8)
def _counts(config_json: str, rank: int, alpha: int, lm_head: bool) -> tuple[int, int, int, int, dict]:
    """(parameters, LoRA parameters, value-head parameters, patches, LM config) of the architecture on the meta
    device; cached, since building the 7B model and its peft wrapper takes seconds."""
    model = OpenVLA.from_config(OpenVLAConfig.from_dict(json.loads(config_json)), device="meta")
    n_params = sum(p.numel() for p in model.parameters())
    with contextlib.redirect_stdout(io.StringIO()):  # peft prints the trainable-parameter count
        peft_model = add_lora(model, LoraSettings(r=rank, alpha=alpha, lm_head=lm_head))
    n_lora = sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n)
    llm = model.language_model.config
    with torch.device("meta"):
        n_value = sum(p.numel() for p in ValueHead(llm.hidden_size).parameters())
    return n_params, n_lora, n_value, model.num_patches, llm.to_dict()


def peak_bytes(rows: list[BudgetRow]) -> float:
    """static + max(generate, update)."""
    phase = lambda name: sum(r.bytes for r in rows if r.phase == name)  # noqa: E731
    return phase("static") + max(phase("generate"), phase("update"))


def format_budget(rows: list[BudgetRow]) -> str:
    lines = [f"  {r.component:<36} {r.bytes / GB:8.2f} GB   [{r.phase}] {r.formula}" for r in rows]
    lines.append(f"  {'peak = static + max(generate, update)':<36} {peak_bytes(rows) / GB:8.2f} GB")
    return "\n".join(lines)


# ---- measured memory ---------------------------------------------------------------------------------------------
def reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter of this process (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> float:
    """Peak resident set since the last reset (VmHWM), or over the process's life where /proc is missing."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device_memory(device: torch.device) -> tuple[float, float]:
    """(total, available now) bytes of the device: CUDA memory, or the machine's RAM for the CPU."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return float(total), float(free)
    info = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines() if ":" in line)
    return int(info["MemTotal"].split()[0]) * 1024, int(info["MemAvailable"].split()[0]) * 1024
