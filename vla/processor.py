"""Turn RGB images and instructions into model inputs the way OpenVLA's processor does.

Images: resized to the model's size (bicubic with antialiasing, OpenVLA's "resize-naive" through PIL), scaled to
[0, 1], normalized once per featurizer with its timm mean/std (DINOv2: ImageNet statistics, SigLIP: 0.5/0.5) and
stacked to 6 channels. The resize runs on the whole batch in torch (uint8 in, uint8 out, like PIL's); its fixed-point
rounding differs from PIL's by at most one intensity level in under 1% of the pixels (up to two levels when
upscaling); frames already at the model's size are not resized and are identical.
Prompts: `In: What action should the robot take to {instruction.lower()}?\\nOut:`, tokenized with BOS, followed by
the bare word-start token "▁" (Llama id 29871) as OpenVLA's `predict_action` appends it, then left-padded.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import timm
import torch
from transformers import PreTrainedTokenizerBase

from vla.config import OpenVLAConfig

WORD_START_TOKEN = "▁"
PROMPT_CACHE_SIZE = 4096  # distinct instructions whose token ids are kept


@dataclass
class PolicyBatch:
    """Model inputs for B observations; prompts are left-padded so every row's prompt ends at the last column."""

    pixel_values: torch.Tensor  # [B, 6, S, S] float, DINOv2- then SigLIP-normalized RGB
    input_ids: torch.Tensor  # [B, L] long, padding on the left
    attention_mask: torch.Tensor  # [B, L] long, 0 on padding

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device | str, dtype: torch.dtype | None = None) -> PolicyBatch:
        """Move to `device`; `dtype` applies to pixel_values only."""
        return PolicyBatch(
            self.pixel_values.to(device=device, dtype=dtype),
            self.input_ids.to(device),
            self.attention_mask.to(device),
        )

    def __getitem__(self, index: int | slice | torch.Tensor | Sequence[int]) -> PolicyBatch:
        """Rows selected by `index` (e.g. a minibatch), always keeping the batch dimension."""
        if isinstance(index, int):
            index = [index]
        return PolicyBatch(*(getattr(self, f.name)[index] for f in fields(self)))

    @staticmethod
    def concat(batches: Sequence[PolicyBatch]) -> PolicyBatch:
        """Stack batches with different prompt lengths, left-padding the shorter ones (masked ids are ignored)."""
        length = max(b.input_ids.shape[1] for b in batches)

        def left_pad(x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.pad(x, (length - x.shape[1], 0), value=0)

        return PolicyBatch(
            torch.cat([b.pixel_values for b in batches]),
            torch.cat([left_pad(b.input_ids) for b in batches]),
            torch.cat([left_pad(b.attention_mask) for b in batches]),
        )


def prompt_for(instruction: str) -> str:
    """OpenVLA's prompt for one instruction."""
    return f"In: What action should the robot take to {instruction.lower()}?\nOut:"


class VLAProcessor:
    """Images + instructions -> PolicyBatch (on the CPU, float32 pixels)."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, config: OpenVLAConfig) -> None:
        resize_strategy = config.extra.get("image_resize_strategy", "resize-naive")
        if resize_strategy != "resize-naive":
            raise ValueError(
                f"image_resize_strategy {resize_strategy!r} is not supported (OpenVLA uses 'resize-naive')"
            )
        self.tokenizer = tokenizer
        self.image_size = config.image_size
        # One normalization per featurizer, from timm's metadata for the checkpoint's model ids.
        pretrained_cfgs = [timm.models.get_pretrained_cfg(model_id) for model_id in config.timm_model_ids]
        self.mean = torch.tensor([c.mean for c in pretrained_cfgs]).reshape(1, 6, 1, 1)
        self.std = torch.tensor([c.std for c in pretrained_cfgs]).reshape(1, 6, 1, 1)
        self.word_start_id = tokenizer.convert_tokens_to_ids(WORD_START_TOKEN)
        self._prompt_cache: dict[str, list[int]] = {}
        if self.word_start_id in (None, tokenizer.unk_token_id):
            raise ValueError(f"tokenizer has no bare {WORD_START_TOKEN!r} token (Llama id 29871) to end the prompt")
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; OpenVLA's Llama tokenizer adds <PAD> (id 32000)")
        if tokenizer("x").input_ids[:1] != [tokenizer.bos_token_id]:
            raise ValueError("tokenizer must prepend BOS (<s>): the image patches are inserted right after it")

    def __call__(self, images: np.ndarray | Sequence[np.ndarray], instructions: Sequence[str]) -> PolicyBatch:
        """images: uint8 [B, H, W, 3] array or B arrays [H, W, 3]; instructions: B non-empty strings."""
        if isinstance(instructions, str):
            raise TypeError("instructions must be a sequence of strings, one per image (got a single str)")
        images = _check_images(images)
        if len(images) != len(instructions):
            raise ValueError(f"got {len(images)} images but {len(instructions)} instructions; pass one per image")
        input_ids, attention_mask = self.tokenize(instructions)
        return PolicyBatch(self.pixel_values(images), input_ids, attention_mask)

    def pixel_values(self, images: list[np.ndarray]) -> torch.Tensor:
        """B uint8 [H, W, 3] arrays -> [B, 6, S, S] float32; frames of one shape (a vector env's) resize as a batch."""
        if len({image.shape for image in images}) == 1:
            rgb = self._resized(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))
        else:
            rgb = torch.cat([self._resized(torch.from_numpy(image).permute(2, 0, 1)[None]) for image in images])
        rgb = rgb.float().div_(255.0)  # [B, 3, S, S]
        return (rgb.repeat(1, 2, 1, 1) - self.mean) / self.std

    def _resized(self, rgb: torch.Tensor) -> torch.Tensor:
        """uint8 [B, 3, H, W] -> uint8 [B, 3, S, S]."""
        size = self.image_size
        if rgb.shape[-2:] == (size, size):
            return rgb
        return torch.nn.functional.interpolate(rgb, size=(size, size), mode="bicubic", antialias=True)

    def tokenize(self, instructions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """B instructions -> left-padded input_ids [B, L] and attention_mask [B, L]."""
        rows = [self._prompt_ids(instruction) for instruction in instructions]
        length = max(len(ids) for ids in rows)
        input_ids = torch.full((len(rows), length), self.tokenizer.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)
        for row, ids in enumerate(rows):
            input_ids[row, length - len(ids) :] = torch.tensor(ids)
            attention_mask[row, length - len(ids) :] = 1
        return input_ids, attention_mask

    def _prompt_ids(self, instruction: str) -> list[int]:
        """Token ids of one instruction's prompt, memoized: an episode asks with the same instruction every step."""
        if not isinstance(instruction, str) or not instruction.strip():
            raise ValueError(f"each instruction must be a non-empty string, got {instruction!r}")
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            ids = self.tokenizer(prompt_for(instruction)).input_ids
            if ids[-1] != self.word_start_id:
                ids.append(self.word_start_id)
            if len(self._prompt_cache) >= PROMPT_CACHE_SIZE:
                self._prompt_cache.clear()
            self._prompt_cache[instruction] = ids
        return ids


def _check_images(images: np.ndarray | Sequence[np.ndarray]) -> list[np.ndarray]:
    """Validate RGB uint8 images; returns a list of [H, W, 3] arrays."""
    if isinstance(images, np.ndarray):
        if images.ndim != 4:
            raise ValueError(f"images array must be [B, H, W, 3], got shape {images.shape}")
        images = list(images)
    if len(images) == 0:
        raise ValueError("got no images")
    for image in images:
        if not isinstance(image, np.ndarray):
            raise TypeError(f"each image must be a numpy array [H, W, 3] uint8, got {type(image).__name__}")
        if image.dtype != np.uint8:
            raise TypeError(
                f"images must be uint8 RGB in [0, 255], got dtype {image.dtype}; "
                "convert float images in [0, 1] with (image * 255).round().astype(np.uint8)"
            )
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"each image must be RGB [H, W, 3], got shape {image.shape}")
    return list(images)
