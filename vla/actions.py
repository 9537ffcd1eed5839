"""Action discretization and normalization, numerically identical to OpenVLA's.

Tokens: actions in [-1, 1] are clipped and binned with `bins = linspace(-1, 1, n_bins)`; the token id is
`vocab_size - digitize(a, bins)`, so with Llama's 32000-token vocabulary a = -1 -> 31999 and a = 1 -> 31744 (the
last 256 ids). Decoding maps a token to the center of its bin (255 centers for 256 bins; the top index is clipped).

Normalization (BOUNDS_Q99): `clip(2 (x - q01) / (q99 - q01 + 1e-8) - 1, -1, 1)` on the dimensions where `mask` is
true (the gripper is left as is), and 0 where the dataset's min equals its max; un-normalization inverts the linear
map: `0.5 (a + 1) (q99 - q01) + q01` on masked dimensions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


def _finite_array(values: Any, what: str) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{what} contain NaN or infinite values: {array}")
    return array


class ActionTokenizer:
    """Maps normalized continuous actions to vocabulary ids and back (OpenVLA's ActionTokenizer)."""

    def __init__(self, vocab_size: int, n_bins: int = 256, min_action: float = -1.0, max_action: float = 1.0) -> None:
        """`vocab_size` is the tokenizer's base vocabulary (32000 for Llama-2, without `<PAD>`)."""
        if not 2 <= n_bins <= vocab_size:
            raise ValueError(f"n_bins={n_bins} must be in [2, vocab_size={vocab_size}]")
        self.vocab_size, self.n_bins = vocab_size, n_bins
        self.min_action, self.max_action = min_action, max_action
        self.bins = np.linspace(min_action, max_action, n_bins)
        self.bin_centers = (self.bins[:-1] + self.bins[1:]) / 2.0
        self.first_token = vocab_size - n_bins  # the action tokens are [first_token, vocab_size)

    def encode(self, actions: Any) -> np.ndarray:
        """Normalized actions [..., A] -> token ids [..., A] (int64) in [vocab_size - n_bins, vocab_size)."""
        actions = _finite_array(actions, "actions")
        clipped = np.clip(actions, self.min_action, self.max_action)
        return (self.vocab_size - np.digitize(clipped, self.bins)).astype(np.int64)

    def decode(self, token_ids: Any) -> np.ndarray:
        """Token ids [..., A] -> normalized actions [..., A]: float64 bin centers, exactly OpenVLA's values."""
        token_ids = np.asarray(token_ids, dtype=np.int64)
        if token_ids.size and (token_ids.min() < self.first_token or token_ids.max() >= self.vocab_size):
            raise ValueError(
                f"token ids must be action tokens in [{self.first_token}, {self.vocab_size}), "
                f"got values in [{token_ids.min()}, {token_ids.max()}]"
            )
        bin_index = np.clip(self.vocab_size - token_ids - 1, 0, len(self.bin_centers) - 1)
        return self.bin_centers[bin_index]


@dataclass(frozen=True)
class ActionStats:
    """One dataset's action statistics from `norm_stats[key]["action"]` (arrays of length A)."""

    q01: np.ndarray
    q99: np.ndarray
    mask: np.ndarray  # bool: dimensions that are normalized (False for the gripper)
    constant: np.ndarray  # bool: dimensions whose min equals max (normalized to 0)

    @classmethod
    def from_norm_stats(cls, norm_stats: Mapping[str, Any] | None, unnorm_key: str) -> ActionStats:
        """Select a dataset's statistics; an unknown key raises an error that lists the available ones."""
        if not norm_stats:
            raise ValueError(
                f"unnorm_key={unnorm_key!r} given but the model has no norm_stats; set them in the checkpoint's "
                "config.json (or policy.model.config.norm_stats) or pass unnorm_key=None for normalized actions"
            )
        if unnorm_key not in norm_stats:
            raise KeyError(f"unknown unnorm_key {unnorm_key!r}; available: {sorted(norm_stats)}")
        stats = norm_stats[unnorm_key].get("action")
        if not stats or "q01" not in stats or "q99" not in stats:
            raise ValueError(f"norm_stats[{unnorm_key!r}] needs an 'action' entry with 'q01' and 'q99'")
        q01 = _finite_array(stats["q01"], f"norm_stats[{unnorm_key!r}] q01")
        q99 = _finite_array(stats["q99"], f"norm_stats[{unnorm_key!r}] q99")
        mask = np.asarray(stats.get("mask", np.ones_like(q01, dtype=bool)), dtype=bool)
        if "min" in stats and "max" in stats:
            constant = np.asarray(stats["min"]) == np.asarray(stats["max"])
        else:
            constant = np.zeros_like(mask)
        if not q01.shape == q99.shape == mask.shape == constant.shape:
            raise ValueError(f"norm_stats[{unnorm_key!r}] arrays differ in length: q01 {q01.shape}, q99 {q99.shape}")
        return cls(q01, q99, mask, constant)

    def _check_dim(self, actions: np.ndarray) -> None:
        if actions.shape[-1:] != self.q01.shape:
            raise ValueError(f"actions have {actions.shape[-1:]} dimensions, the statistics {self.q01.shape}")

    def normalize(self, actions: Any) -> np.ndarray:
        """Raw actions [..., A] -> [-1, 1] on masked dimensions (SFT labels); float32."""
        actions = _finite_array(actions, "actions")
        self._check_dim(actions)
        scaled = np.clip(2 * (actions - self.q01) / (self.q99 - self.q01 + 1e-8) - 1, -1, 1)
        normalized = np.where(self.mask, scaled, actions)
        return np.where(self.constant, 0.0, normalized).astype(np.float32)

    def unnormalize(self, actions: Any) -> np.ndarray:
        """Normalized actions [..., A] -> the dataset's units on masked dimensions; float32."""
        actions = _finite_array(actions, "actions")
        self._check_dim(actions)
        raw = 0.5 * (actions + 1) * (self.q99 - self.q01) + self.q01
        return np.where(self.mask, raw, actions).astype(np.float32)
