"""Shared helpers for the vla tests (tiny preset, fp32, CPU, fixed seeds)."""

import numpy as np

from vla import VLAPolicy

INSTRUCTIONS = ["pick up the red cube", "open the top drawer of the cabinet", "push"]
# Shaped like an OpenVLA config.json entry; the gripper (last dimension) is not normalized.
NORM_STATS = {
    "bridge_orig": {
        "action": {
            "q01": [-0.03, -0.04, -0.03, -0.1, -0.1, -0.2, 0.0],
            "q99": [0.03, 0.04, 0.03, 0.1, 0.1, 0.2, 1.0],
            "mask": [True, True, True, True, True, True, False],
        }
    },
    "fractal": {"action": {"q01": [-1.0] * 7, "q99": [1.0] * 7}},
}


def random_images(n: int, height: int = 40, width: int = 48, seed: int = 0) -> np.ndarray:
    """uint8 [n, height, width, 3]."""
    return np.random.default_rng(seed).integers(0, 256, size=(n, height, width, 3), dtype=np.uint8)


def make_tiny_policy() -> VLAPolicy:
    """A fresh tiny policy (fp32, CPU, seed 0) with NORM_STATS."""
    policy = VLAPolicy.from_pretrained("tiny", device="cpu", seed=0)
    policy.vla.config.norm_stats = NORM_STATS
    return policy
