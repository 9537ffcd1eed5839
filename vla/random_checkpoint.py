"""A checkpoint directory of a preset with random weights, laid out exactly like a downloaded OpenVLA checkpoint.

    write_random_checkpoint("openvla-7b", "runs/random-openvla-7b")   # 7.5B params, bf16, 3 shards of <= 5 GiB
    VLAPolicy.from_pretrained("runs/random-openvla-7b", dtype=torch.bfloat16)

It proves the full-size paths (sharded loading, memory, speed) without the real weights: config.json,
`model-0000i-of-0000N.safetensors` + `model.safetensors.index.json` and the tokenizer files, like
openvla/openvla-7b. What differs from the real checkpoint is marked in config.json under "random_init":

- weights: seeded random values by a fixed rule on the tensor's name (`random_tensor`); they act like nothing;
- tokenizer: vla/tokenizer.py's small tokenizer padded with unused tokens to Llama-2's 32,000 base tokens (the
  action tokens are the last 256 ids, as in OpenVLA), so every id and every shape matches; prompts tokenize into
  fewer tokens than with Llama's SentencePiece model;
- norm_stats: one identity entry under the Bridge key ("bridge_orig": q01 = -1, q99 = 1), so un-normalization
  runs without changing the [-1, 1] actions.

The model is never materialized: tensors are made one shard at a time from their shapes on the meta device, so
writing the 15 GB openvla-7b checkpoint needs one shard's memory (<= 5 GiB).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from vla.checkpoint import atomic_directory, save_sharded_lazily
from vla.config import ACTION_DIM, preset_config
from vla.modeling import CONFIG_FILE, DEFAULT_MAX_SHARD_BYTES, OpenVLA
from vla.tokenizer import build_tiny_tokenizer

RANDOM_INIT_KEY = "random_init"
STANDIN_UNNORM_KEY = "bridge_orig"
INIT_STD = 0.02  # std of weight matrices and embeddings (Llama's and timm's ViT initializer range)
LAYER_SCALE = 0.1  # LayerScale factors: small, so the random ViT's residual stream stays bounded


def random_tensor(
    name: str, shape: torch.Size, dtype: torch.dtype, seed: int, device: str | torch.device = "cpu"
) -> torch.Tensor:
    """The value of tensor `name`: biases 0; norm weights 1; LayerScale factors LAYER_SCALE; everything else
    (weights, embeddings, class/register tokens, position embeddings) normal(0, INIT_STD). Seeded by (seed, name),
    so a tensor's value does not depend on the shard it lands in (it does depend on the device that draws it)."""
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype, device=device)
    if name.endswith(".weight") and "norm" in name.rsplit(".", 2)[-2]:
        return torch.ones(shape, dtype=dtype, device=device)
    if name.endswith("scale_factor"):
        return torch.full(shape, LAYER_SCALE, dtype=dtype, device=device)
    generator = torch.Generator(device=device).manual_seed(seed * 2**32 + zlib.crc32(name.encode()))
    return (torch.randn(shape, generator=generator, device=device) * INIT_STD).to(dtype)


def write_random_checkpoint(
    preset: str,
    directory: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    seed: int = 0,
    max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
    device: str | torch.device = "cpu",
) -> Path:
    """Write a random-init checkpoint of `preset` (see the module docstring) into `directory`, atomically.
    `device="cuda"` draws the random values on the GPU (seconds instead of minutes for openvla-7b)."""
    config = preset_config(preset)
    tokenizer = build_tiny_tokenizer(config.n_action_bins, base_vocab_size=config.base_vocab_size)
    config.extra[RANDOM_INIT_KEY] = {
        "preset": preset,
        "seed": seed,
        "note": "RANDOM weights and a stand-in tokenizer (not the trained OpenVLA checkpoint): for testing memory, "
        "loading and speed only; written by vla/random_checkpoint.py",
    }
    config.norm_stats = {
        STANDIN_UNNORM_KEY: {
            "action": {
                "q01": [-1.0] * ACTION_DIM,
                "q99": [1.0] * ACTION_DIM,
                "mask": [True] * (ACTION_DIM - 1) + [False],
            }
        }
    }
    shapes = OpenVLA.from_config(config, device="meta").state_dict()
    itemsize = torch.empty((), dtype=dtype).element_size()
    sizes = {name: tensor.numel() * itemsize for name, tensor in shapes.items()}
    with atomic_directory(directory) as tmp:
        config.save(tmp / CONFIG_FILE, str(dtype).removeprefix("torch."))
        tokenizer.save_pretrained(tmp)
        make = lambda name: random_tensor(name, shapes[name].shape, dtype, seed, device)  # noqa: E731
        save_sharded_lazily(sizes, make, tmp, max_shard_bytes)
    return Path(directory)


def is_random_checkpoint(config_extra: dict) -> bool:
    """Whether a loaded config's extra keys mark it as written by `write_random_checkpoint`."""
    return RANDOM_INIT_KEY in config_extra
