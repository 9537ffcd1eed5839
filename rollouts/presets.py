"""Named configs for scripts/train_ppo.py and scripts/train_sft.py (one place; every field is overridable).

tiny             CPU, minutes: the random-init `tiny` VLA (8 action bins) on toy/color-side, in-process envs.
openvla-7b-a100  OpenVLA-7B (bf16, gradient checkpointing, LoRA r=32 on the LM) on one 80 GB A100, SimplerEnv's
                 PutCarrotOnPlateInScene (Bridge/WidowX, horizon 60, un-normalized with "bridge_orig").
                 The model is the directory of a downloaded openvla/openvla-7b: pass --model /path/to/openvla-7b.
openvla-7b-a100-40gb  the same on a 40 GB card: half the micro-batch (twice the accumulation), the same updates.

Memory plan of the 7B presets (rollouts/budget.py computes it; bench_rollouts and preflight print it): bf16 weights
15.1 GB; LoRA (80M params, fp32) + AdamW state + grads ~1.3 GB; value head ~8 MB; KV cache of a generate() over
num_envs prompts of ~290 tokens ~0.15 GB per env; activations with gradient checkpointing ~0.1 GB per micro-batch
sample (plus one layer's recompute). The rollout (uint8 224 px images, per-token log-probs, pi0's 256-bin
distributions) stays in CPU memory.
"""

from __future__ import annotations

from rollouts.config import RLConfig, TrainConfig
from rollouts.grpo import GRPOConfig
from rollouts.ppo import PPOConfig
from rollouts.reinforce import REINFORCEConfig
from rollouts.sft import SFTConfig

OPENVLA_DIR = "openvla-7b"  # placeholder: the preset name makes vla/ ask for the checkpoint directory
BRIDGE_TASK = "simpler/PutCarrotOnPlateInScene"

# Shared by the tiny presets: the random-init tiny VLA can only learn the toy task with the LM head adapted too
# (its frozen head caps the logits) and with few action bins.
_TINY = dict(model="tiny", n_action_bins=8, lora_lm_head=True, learning_rate=3e-3, max_grad_norm=0.5, torch_threads=1)
_TINY_RL = dict(_TINY, task="toy/color-side", env_in_process=True, num_envs=64, ent_coef=0.01)
_7B = dict(model=OPENVLA_DIR, lora_rank=32, lora_alpha=16, dtype="bfloat16", gradient_checkpointing=True,
           unnorm_key="bridge_orig")
_7B_RL = dict(_7B, task=BRIDGE_TASK, env_kwargs={"image_size": 224}, num_steps=60, total_updates=300)


def _half_micro(cfg_kwargs: dict) -> dict:
    """The 40 GB variant: the same optimizer batches in twice as many, half-size micro-batches."""
    return dict(cfg_kwargs, grad_accum_steps=cfg_kwargs["grad_accum_steps"] * 2)


_PPO_7B = dict(_7B_RL, num_envs=16, update_epochs=1, num_minibatches=4, grad_accum_steps=15, learning_rate=1e-4,
               value_learning_rate=3e-4, value_loss="huber", target_kl=0.05)  # fmt: skip
_GRPO_7B = dict(_7B_RL, num_envs=16, group_size=8, update_epochs=1, num_minibatches=4, grad_accum_steps=15,
                learning_rate=1e-4)  # fmt: skip
_REINFORCE_7B = dict(_7B_RL, num_envs=16, grad_accum_steps=60, learning_rate=1e-5)

RL_PRESETS: dict[str, dict[str, tuple[str, RLConfig]]] = {
    "ppo": {
        "tiny": ("CPU, minutes: tiny VLA on toy/color-side.", PPOConfig(**_TINY_RL, total_updates=40, update_epochs=2,
                                                                       num_minibatches=1)),  # fmt: skip
        "openvla-7b-a100": ("OpenVLA-7B on one 80 GB A100 (--model /path/to/openvla-7b).", PPOConfig(**_PPO_7B)),
        "openvla-7b-a100-40gb": ("OpenVLA-7B on one 40 GB GPU.", PPOConfig(**_half_micro(_PPO_7B))),
    },
    "grpo": {
        "tiny": ("CPU, minutes: tiny VLA on toy/color-side.", GRPOConfig(**_TINY_RL, total_updates=40, group_size=8,
                                                                        update_epochs=4)),  # fmt: skip
        "openvla-7b-a100": ("OpenVLA-7B on one 80 GB A100 (--model /path/to/openvla-7b).", GRPOConfig(**_GRPO_7B)),
        "openvla-7b-a100-40gb": ("OpenVLA-7B on one 40 GB GPU.", GRPOConfig(**_half_micro(_GRPO_7B))),
    },
    "reinforce": {
        "tiny": ("CPU, minutes: tiny VLA on toy/color-side.", REINFORCEConfig(**_TINY_RL, total_updates=60)),
        "openvla-7b-a100": ("OpenVLA-7B on one 80 GB A100 (--model /path/to/openvla-7b).",
                            REINFORCEConfig(**_REINFORCE_7B)),  # fmt: skip
        "openvla-7b-a100-40gb": ("OpenVLA-7B on one 40 GB GPU.", REINFORCEConfig(**_half_micro(_REINFORCE_7B))),
    },
}

_SFT_7B = dict(_7B, dataset="data/demos/simpler-carrot", batch_size=32, grad_accum_steps=2, learning_rate=5e-4,
               total_updates=5000, checkpoint_every=250, eval_every=100)  # fmt: skip
SFT_PRESETS: dict[str, tuple[str, TrainConfig]] = {
    "tiny": ("CPU, minutes: tiny VLA on 256 generated toy/color-side demos.",
             SFTConfig(**_TINY, dataset="runs/demos/toy-color-side", generate_demos=256, batch_size=32,
                       total_updates=60, eval_every=10, checkpoint_every=20)),  # fmt: skip
    "openvla-7b-a100": ("OpenVLA-7B on one 80 GB A100 (--model /path/to/openvla-7b --dataset DIR).", SFTConfig(**_SFT_7B)),
    "openvla-7b-a100-40gb": ("OpenVLA-7B on one 40 GB GPU.", SFTConfig(**_half_micro(_SFT_7B))),
}
