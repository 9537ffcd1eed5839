"""A gymnasium-style callable policy: observation dict in, 7-D action out (batched for vector envs)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from vla.policy import VLAPolicy


class GymPolicy:
    """`action = GymPolicy(policy)(obs)`.

    obs: {"image": uint8 [H, W, 3], "instruction": str} -> action float32 [7];
    or batched {"image": uint8 [N, H, W, 3], "instruction": N strings (or one str for all)} -> float32 [N, 7].
    Actions are un-normalized with `unnorm_key`'s statistics, else normalized to [-1, 1]; converting them to a
    particular env's action space is the env adapter's job (envs/).
    """

    def __init__(
        self,
        policy: VLAPolicy,
        unnorm_key: str | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        seed: int | None = None,
    ) -> None:
        self.policy = policy
        self.unnorm_key = unnorm_key
        self.do_sample = do_sample
        self.temperature = temperature
        self.generator = torch.Generator(policy.device).manual_seed(seed) if seed is not None else None

    def __call__(self, observation: Mapping[str, Any]) -> np.ndarray:
        missing = {"image", "instruction"} - set(observation)
        if missing:
            raise KeyError(f"observation lacks {sorted(missing)}; expected keys 'image' and 'instruction'")
        images = np.asarray(observation["image"])
        instruction = observation["instruction"]
        single = images.ndim == 3
        if single:
            images = images[None]
        if isinstance(instruction, str):
            instructions = [instruction] * len(images)
        else:
            instructions = [str(item) for item in instruction]
        batch = self.policy.preprocess(images, instructions)
        output = self.policy.generate(
            batch,
            do_sample=self.do_sample,
            temperature=self.temperature,
            unnorm_key=self.unnorm_key,
            generator=self.generator,
        )
        return output.actions[0] if single else output.actions
