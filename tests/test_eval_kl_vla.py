"""eval/kl.py on the real tiny VLA with 2 action bins, where the 7-token joint (2^7 = 128 sequences) is enumerable
(3 bins, 2187 sequences, is covered by the stand-in model in test_eval_kl.py; on the VLA it takes minutes here)."""

import itertools

import numpy as np
import pytest
import torch

from eval.kl import KLMonitor, kl_divergences, lora_weight_distance, sequence_estimates

vla_policy = pytest.importorskip("vla.policy")
from vla.lora import LoraSettings  # noqa: E402

NB = 2
ALL_BINS = torch.tensor(list(itertools.product(range(NB), repeat=7)))  # [2187, 7]


def _policy(perturb: float):
    torch.manual_seed(0)
    pol = vla_policy.VLAPolicy.from_pretrained("tiny", n_action_bins=NB, seed=0)
    pol.add_lora(LoraSettings(r=4, alpha=8))
    if perturb:
        g = torch.Generator().manual_seed(1)
        for name, p in pol.model.named_parameters():
            if "lora_B" in name:
                p.data = torch.randn(p.shape, generator=g) * perturb
    return pol.eval()


def _obs(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (n, 32, 32, 3), dtype=np.uint8), ["pick up the red block", "open the drawer"][:n] * (n // 2 or 1)


@torch.no_grad()
def _exact_joint(pol, image, instruction):
    """Exact forward and reverse KL of the 7-token joint for one observation, and the estimator's expectation."""
    n = len(ALL_BINS)
    batch = pol.preprocess(np.repeat(image[None], n, 0), [instruction] * n)
    tokens = ALL_BINS + pol.vla.action_token_offset
    logp = torch.log_softmax(pol.evaluate_actions(batch, tokens).logits.double(), -1)
    with pol.adapters_disabled():
        logp0 = torch.log_softmax(pol.evaluate_actions(batch, tokens).logits.double(), -1)
    joint = lambda lp: lp.gather(-1, ALL_BINS[..., None]).squeeze(-1).sum(-1)  # noqa: E731
    lj, lj0 = joint(logp), joint(logp0)
    assert float(lj0.exp().sum()) == pytest.approx(1.0, abs=1e-6)
    fwd = float((lj0.exp() * (lj0 - lj)).sum())
    rev = float((lj.exp() * (lj - lj0)).sum())
    expected_est = float((lj0.exp() * sequence_estimates(logp0, logp, ALL_BINS)["kl_forward"]).sum())
    return fwd, rev, expected_est


def test_estimator_against_exact_kl_on_tiny_vla():
    pol = _policy(perturb=0.5)
    images, instr = _obs(2)
    exact = []
    for image, ins in zip(images, instr):
        fwd, rev, expected_est = _exact_joint(pol, image, ins)
        assert fwd > 1e-2 and rev > 1e-2
        assert expected_est == pytest.approx(fwd, rel=1e-6)  # E_{a~pi0}[estimate] is the exact joint KL
        exact.append((fwd, rev))
    exact = np.mean(exact, axis=0)
    est = kl_divergences(pol, images, instr, samples_per_obs=250, batch_size=250, seed=0)
    assert abs(est["kl_forward"] - exact[0]) < 4 * est["kl_forward_stderr"] + 1e-4
    assert est["kl_reverse_is"] == pytest.approx(exact[1], rel=0.25)
    assert lora_weight_distance(pol.model) > 0


def test_fresh_adapter_and_no_adapter_give_exactly_zero():
    images, instr = _obs(4)
    pol = _policy(perturb=0.0)  # LoRA B = 0: pi == pi0
    mon = KLMonitor(images, instr, policy=pol, samples_per_obs=2, batch_size=8)
    m = mon(pol, update=0)
    assert m["eval/kl_forward"] == 0.0 and m["eval/kl_reverse"] == 0.0 and m["eval/tv"] == 0.0
    assert lora_weight_distance(pol.model) == 0.0
    bare = vla_policy.VLAPolicy.from_pretrained("tiny", n_action_bins=NB, seed=0)  # no adapters at all
    est = kl_divergences(bare, images, instr)
    assert est["kl_forward"] == 0.0 and est["kl_reverse_is"] == 0.0
    # training mode is restored after a measurement
    pol.train()
    mon(pol)
    assert pol.training
