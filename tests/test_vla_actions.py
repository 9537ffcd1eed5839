"""ActionTokenizer and ActionStats against OpenVLA's formulas and known values."""

import numpy as np
import pytest
from vla_fixtures import NORM_STATS

from vla import ActionStats, ActionTokenizer


def test_known_token_ids_match_openvla():
    tokenizer = ActionTokenizer(vocab_size=32000, n_bins=256)
    actions = np.array([-1.0, -0.5, 0.0, 0.5, 0.999, 1.0, 7.0, -3.0])
    # 32000 - digitize(a, linspace(-1, 1, 256)), with values outside [-1, 1] clipped first.
    assert tokenizer.encode(actions).tolist() == [31999, 31936, 31872, 31808, 31745, 31744, 31744, 31999]
    assert tokenizer.first_token == 31744


def test_decode_uses_bin_centers_with_the_top_index_clipped():
    tokenizer = ActionTokenizer(vocab_size=32000, n_bins=256)
    centers = (np.linspace(-1, 1, 256)[:-1] + np.linspace(-1, 1, 256)[1:]) / 2
    decoded = tokenizer.decode(np.array([31999, 31872, 31745, 31744]))
    assert decoded.tolist() == [centers[0], centers[127], centers[254], centers[254]]


def test_round_trip_is_within_half_a_bin():
    tokenizer = ActionTokenizer(vocab_size=32000, n_bins=256)
    actions = np.concatenate([np.random.default_rng(0).uniform(-1, 1, size=(1000, 7)).ravel(), [-1.0, 1.0]])
    half_bin = (2 / 255) / 2
    assert np.abs(tokenizer.decode(tokenizer.encode(actions)) - actions).max() <= half_bin + 1e-12


def test_small_bin_counts_use_the_end_of_the_vocabulary():
    tokenizer = ActionTokenizer(vocab_size=512, n_bins=3)
    assert tokenizer.encode([-1.0, 0.0, 1.0]).tolist() == [511, 510, 509]
    assert tokenizer.decode([511, 510, 509]).tolist() == [-0.5, 0.5, 0.5]


def test_bad_actions_and_tokens_are_rejected():
    tokenizer = ActionTokenizer(vocab_size=32000, n_bins=256)
    with pytest.raises(ValueError, match="NaN"):
        tokenizer.encode([0.0, np.nan])
    with pytest.raises(ValueError, match=r"action tokens in \[31744, 32000\)"):
        tokenizer.decode([100])


def test_unnormalize_uses_q01_q99_and_leaves_the_gripper():
    stats = ActionStats.from_norm_stats(NORM_STATS, "bridge_orig")
    normalized = np.array([[-1.0, 1.0, 0.0, 0.5, -0.5, 1.0, 0.7]])
    q01, q99 = (
        np.array(NORM_STATS["bridge_orig"]["action"]["q01"]),
        np.array(NORM_STATS["bridge_orig"]["action"]["q99"]),
    )
    expected = 0.5 * (normalized + 1) * (q99 - q01) + q01
    expected[:, -1] = 0.7  # mask is False for the gripper
    np.testing.assert_allclose(stats.unnormalize(normalized), expected, rtol=1e-6)
    assert stats.unnormalize(normalized).dtype == np.float32


def test_normalize_clips_inverts_and_zeroes_constant_dimensions():
    stats = ActionStats.from_norm_stats(NORM_STATS, "bridge_orig")
    raw = np.array([0.015, -0.04, 0.5, 0.0, 0.05, -0.2, 1.0])
    normalized = stats.normalize(raw)
    assert normalized[2] == 1.0 and normalized[6] == 1.0  # clipped; gripper unchanged
    np.testing.assert_allclose(stats.unnormalize(normalized)[[0, 1, 3, 4, 5]], raw[[0, 1, 3, 4, 5]], atol=1e-6)
    constant = {"d": {"action": {"q01": [0.0, -1.0], "q99": [0.0, 1.0], "min": [0.0, -2.0], "max": [0.0, 2.0]}}}
    assert ActionStats.from_norm_stats(constant, "d").normalize([0.3, 0.5]).tolist() == [0.0, 0.5]


def test_unknown_key_missing_stats_and_nan_are_errors():
    with pytest.raises(KeyError, match=r"unknown unnorm_key 'libero'.*\['bridge_orig', 'fractal'\]"):
        ActionStats.from_norm_stats(NORM_STATS, "libero")
    with pytest.raises(ValueError, match="no norm_stats"):
        ActionStats.from_norm_stats(None, "bridge_orig")
    with pytest.raises(ValueError, match="NaN"):
        ActionStats.from_norm_stats(NORM_STATS, "fractal").normalize([np.nan] * 7)
    with pytest.raises(ValueError, match="dimensions"):
        ActionStats.from_norm_stats(NORM_STATS, "fractal").unnormalize([0.0] * 6)
