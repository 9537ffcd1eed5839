"""eval/predictors.py and the distribution measures of eval/kl.py against hand-computed values on tiny models."""

import math

import numpy as np
import pytest
import torch

from eval.kl import lora_deltas, sample_base, token_divergences
from eval.predictors import activation_change, fisher_diagonal, measure_predictors, visited_observations, weight_change
from vla.lora import LoraSettings
from vla.policy import VLAPolicy


def test_distribution_l2_and_entropy_change_by_hand():
    p0 = torch.tensor([0.5, 0.5, 0.0])
    p = torch.tensor([0.25, 0.25, 0.5])
    div = token_divergences(p0.log(), p.log())
    assert float(div["l2"]) == pytest.approx(math.sqrt(0.25**2 * 2 + 0.5**2))
    h0, h = math.log(2), -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5))
    assert float(div["entropy_change"]) == pytest.approx(h - h0)
    assert float(div["tv"]) == pytest.approx(0.5)


def _policy_with_one_delta(seed=0):
    """Tiny VLA with LoRA whose only nonzero change is a hand-set B @ A on one layer."""
    policy = VLAPolicy.from_pretrained("tiny", seed=seed, n_action_bins=16)
    torch.manual_seed(seed)
    policy.add_lora(LoraSettings(r=2, alpha=4))
    layers = [(n, m) for n, m in policy.model.named_modules() if hasattr(m, "lora_A") and len(m.lora_A)]
    name, module = layers[0]
    a = torch.zeros_like(module.lora_A["default"].weight)
    b = torch.zeros_like(module.lora_B["default"].weight)
    a[0, :3], a[1, 1] = torch.tensor([1.0, -2.0, 0.5]), 3.0
    b[0, 0], b[2, 1], b[1, 0] = 0.5, -1.0, 2.0
    with torch.no_grad():
        module.lora_A["default"].weight.copy_(a)
        module.lora_B["default"].weight.copy_(b)
    return policy, name, (b @ a).double() * (4 / 2)  # scaling alpha / r


def test_weight_change_by_hand():
    policy, name, delta = _policy_with_one_delta()
    deltas = lora_deltas(policy.model)
    assert torch.allclose(deltas[name], delta)
    assert all(float(d.abs().sum()) == 0 for k, d in deltas.items() if k != name)
    w = weight_change(deltas, {k: torch.full_like(d, 2.0) for k, d in deltas.items()})
    d = delta.numpy()
    assert w["weight_l1"] == pytest.approx(np.abs(d).sum())
    assert w["weight_l2"] == pytest.approx(np.sqrt((d**2).sum()))
    assert w["spectral_norm"] == pytest.approx(np.linalg.svd(d, compute_uv=False)[0])
    assert w["fisher_l2"] == pytest.approx(math.sqrt(2) * w["weight_l2"])
    with pytest.raises(KeyError, match="Fisher"):
        weight_change(deltas, {})


def _base(policy, n=2):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    return sample_base(policy, images, ["pick a step"] * n, seed=0)


def test_fisher_diagonal_is_the_mean_squared_score_of_pi0():
    policy, name, _ = _policy_with_one_delta()
    base = _base(policy)
    fisher = fisher_diagonal(policy, base)
    module = dict(policy.model.named_modules())[name]
    weight = module.base_layer.weight
    assert not weight.requires_grad  # restored
    grads = []
    for i in range(2):  # by hand: pi0 = the same weights without the LoRA delta
        w = weight.detach().clone().requires_grad_(True)
        with policy.adapters_disabled(), torch.nn.utils.stateless._reparametrize_module(
                module.base_layer, {"weight": w}):
            batch = policy.preprocess(base.images[i : i + 1], base.instructions[i : i + 1])
            logp = policy.evaluate_actions(batch, base.tokens[i : i + 1]).log_probs.sum()
        grads.append(torch.autograd.grad(logp, w)[0].double())
    expected = (grads[0] ** 2 + grads[1] ** 2) / 2
    assert float(expected.abs().sum()) > 0
    assert torch.allclose(fisher[name], expected, rtol=1e-4, atol=1e-12)


def test_activation_change_zero_for_a_fresh_adapter_and_by_hand_otherwise():
    policy = VLAPolicy.from_pretrained("tiny", seed=0, n_action_bins=16)
    policy.add_lora(LoraSettings(r=2, alpha=4))  # B = 0: pi is pi0
    base = _base(policy)
    assert activation_change(policy, base) == {"act_l1": 0.0, "act_l2": 0.0}
    policy, _, _ = _policy_with_one_delta()
    base = _base(policy)
    got = activation_change(policy, base)
    batch = policy.preprocess(base.images, base.instructions)
    with torch.no_grad():
        h = policy.vla.action_hidden_states(batch.pixel_values, batch.input_ids, batch.attention_mask, base.tokens)
        with policy.adapters_disabled():
            h0 = policy.vla.action_hidden_states(batch.pixel_values, batch.input_ids, batch.attention_mask, base.tokens)
    diff = (h - h0).double()
    assert got["act_l1"] > 0
    assert got["act_l1"] == pytest.approx(float(diff.abs().sum(-1).mean()), rel=1e-5)
    assert got["act_l2"] == pytest.approx(float(diff.norm(dim=-1).mean()), rel=1e-5)


def test_measure_predictors_on_visited_states_of_the_parity_task():
    policy, _, _ = _policy_with_one_delta()
    images, instructions = visited_observations(policy, "toy/parity", 3, seed=5)
    assert images.shape == (3, 32, 32, 3) and all("parity" in s for s in instructions)
    base = _base(policy, 3)
    fisher = fisher_diagonal(policy, base)
    out = measure_predictors(policy, base, fisher, (images, instructions))
    for k in ("kl_forward", "kl_reverse_is", "dist_l2", "entropy_change", "weight_l1", "spectral_norm", "fisher_l2",
              "act_l2", "kl_forward_visited"):
        assert math.isfinite(out[k]), k
    assert out["kl_forward_visited"] >= 0 and out["fisher_l2"] > 0
