"""eval/kl.py: the chain-rule estimator against the exact 7-token KL, enumerated over n_bins^7 sequences.

`ARPolicy` is a minimal autoregressive stand-in with vla.VLAPolicy's interface (preprocess / generate /
evaluate_actions / adapters_disabled) whose joint distribution is small enough to enumerate (3 bins -> 2187
sequences). The same checks on the real tiny VLA are in test_eval_kl_vla (skipped until vla/ provides it).
"""

import contextlib
import itertools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from eval.kl import (KLMonitor, kl_divergences, lora_weight_distance, policy_logprobs, sample_base, sequence_estimates,
                     summarize, token_divergences)

T, NB, NX = 7, 3, 4


class ARPolicy(torch.nn.Module):
    """p(a_t | x, a_<t) = softmax(W[x, t] + sum_{s<t} U[t, s, a_s] + adapter) over NB bins."""

    def __init__(self, seed=0, delta=0.5):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.W = torch.nn.Parameter(torch.randn(NX, T, NB, generator=g))
        self.U = torch.nn.Parameter(torch.randn(T, T, NB, NB, generator=g) * 0.7)
        self.dW = torch.nn.Parameter(torch.randn(NX, T, NB, generator=g) * delta)  # the "adapter"
        self.dU = torch.nn.Parameter(torch.randn(T, T, NB, NB, generator=g) * delta)
        self.enabled = True

    @contextlib.contextmanager
    def adapters_disabled(self):
        self.enabled = False
        try:
            yield
        finally:
            self.enabled = True

    def preprocess(self, images, instructions):
        return torch.as_tensor(images[:, 0, 0, 0].astype(np.int64))  # x is written into pixel (0, 0)

    def _logits(self, x, tokens):  # tokens [B, T] -> logits [B, T, NB] under teacher forcing
        W, U = (self.W + self.dW, self.U + self.dU) if self.enabled else (self.W, self.U)
        out = W[x].clone()
        onehot = torch.nn.functional.one_hot(tokens.long(), NB).to(W.dtype)  # [B, T, NB]
        for t in range(T):
            for s in range(t):
                out[:, t] += onehot[:, s] @ U[t, s]
        return out

    def evaluate_actions(self, x, tokens):
        return SimpleNamespace(logits=self._logits(x, tokens))

    def generate(self, x, do_sample=True, temperature=1.0):
        tokens = torch.zeros(len(x), T, dtype=torch.long)
        for t in range(T):
            logits = self._logits(x, tokens)[:, t] / temperature
            tokens[:, t] = torch.multinomial(torch.softmax(logits, -1), 1)[:, 0] if do_sample else logits.argmax(-1)
        return SimpleNamespace(action_tokens=tokens)

    def joint_logprob(self, x, seqs):
        return torch.log_softmax(self._logits(x, seqs).double(), -1).gather(-1, seqs[..., None]).squeeze(-1).sum(-1)


ALL = torch.tensor(list(itertools.product(range(NB), repeat=T)))  # [2187, 7]


def _exact(policy, x):
    """Exact joint forward/reverse KL for observation x by enumeration."""
    xs = torch.full((len(ALL),), x)
    with policy.adapters_disabled():
        lp0 = policy.joint_logprob(xs, ALL)
    lp = policy.joint_logprob(xs, ALL)
    p0, p = lp0.exp(), lp.exp()
    assert float(p0.sum()) == pytest.approx(1.0, abs=1e-9)
    return float((p0 * (lp0 - lp)).sum()), float((p * (lp - lp0)).sum())


def _obs(xs):
    images = np.zeros((len(xs), 2, 2, 3), np.uint8)
    images[:, 0, 0, 0] = xs
    return images, [f"task {x}" for x in xs]


@torch.no_grad()
def test_expected_estimate_equals_exact_joint_kl():
    """The estimator's expectation over a ~ pi0 (computed by enumeration) is the exact joint KL: forward for
    kl_forward, and the importance-weighted reverse terms give the exact joint reverse KL."""
    pol = ARPolicy()
    for x in range(NX):
        exact_fwd, exact_rev = _exact(pol, x)
        xs = torch.full((len(ALL),), x)
        with pol.adapters_disabled():
            logp0 = torch.log_softmax(pol._logits(xs, ALL).double(), -1)
            w0 = pol.joint_logprob(xs, ALL).exp()
        logp = torch.log_softmax(pol._logits(xs, ALL).double(), -1)
        est = sequence_estimates(logp0, logp, ALL)
        assert float((w0 * est["kl_forward"]).sum()) == pytest.approx(exact_fwd, rel=1e-9)
        rev_is = float((w0[:, None] * est["_log_w"].exp() * est["_rev_tok"]).sum())
        assert rev_is == pytest.approx(exact_rev, rel=1e-9)
        assert exact_fwd > 0.1 and exact_rev > 0.1  # a real difference is being measured
        # first token: no sampling involved, the tok1 estimate is exact on every sample
        assert torch.allclose(est["kl_forward_tok1"], est["kl_forward_tok1"][0].expand(len(ALL)))


@torch.no_grad()
def test_monte_carlo_estimate_matches_exact():
    pol = ARPolicy(seed=1)
    xs = np.array([0, 1, 2, 3])
    exact = np.array([_exact(pol, x) for x in xs]).mean(0)
    images, instr = _obs(xs)
    est = kl_divergences(pol, images, instr, samples_per_obs=1500, batch_size=1000, seed=3)
    assert est["n_samples"] == 6000 and est["n_observations"] == 4
    # the Monte-Carlo error alone (every sample independent given its observation) bounds the distance to the exact
    # mean over these four observations
    base = sample_base(pol, images, instr, samples_per_obs=1500, batch_size=1000, seed=3)
    per_sample = sequence_estimates(base.logp0, policy_logprobs(pol, base, 1000), base.tokens)
    monte_carlo = summarize(per_sample)
    assert monte_carlo["kl_forward"] == pytest.approx(est["kl_forward"])
    assert abs(monte_carlo["kl_forward"] - exact[0]) < 4 * monte_carlo["kl_forward_stderr"] + 1e-3
    # the reported interval is over observations: the spread of their four means, not of the 6000 samples
    per_obs = per_sample["kl_forward"].reshape(4, 1500).mean(1)
    assert est["kl_forward_stderr"] == pytest.approx(float(per_obs.std()) / 2)
    assert est["kl_forward_stderr"] > 3 * monte_carlo["kl_forward_stderr"]
    assert est["kl_reverse_is"] == pytest.approx(exact[1], rel=0.1)
    assert 0 < est["tv"] < 1


@torch.no_grad()
def test_adapters_off_is_exactly_zero_and_monitor_logs(tmp_path):
    pol = ARPolicy(delta=0.0)
    images, instr = _obs(np.array([0, 1, 2, 3, 0, 1]))
    log = tmp_path / "kl.jsonl"
    mon = KLMonitor(images, instr, samples_per_obs=2, batch_size=4, log_path=log)
    m = mon(pol, update=0)
    for k in ("eval/kl_forward", "eval/kl_reverse", "eval/kl_reverse_is", "eval/tv", "eval/kl_forward_tok1"):
        assert m[k] == 0.0, k
    # move pi away from pi0: KL becomes positive, and the cached pi0 samples are reused (same tokens)
    tokens_before = mon.base.tokens.clone()
    pol.dW.data += 1.0
    m2 = mon.callback(SimpleNamespace(policy=pol, update=4))
    assert m2["eval/kl_forward"] > 0 and m2["eval/tv"] > 0
    assert torch.equal(mon.base.tokens, tokens_before)
    lines = log.read_text().splitlines()
    assert len(lines) == 2 and '"update": 4' in lines[1]


def test_token_divergences_closed_form():
    p0 = torch.tensor([0.5, 0.5, 0.0]).log()
    p = torch.tensor([0.25, 0.25, 0.5]).log()
    d = token_divergences(p0, p)
    assert float(d["kl_forward"]) == pytest.approx(math.log(2))
    assert math.isinf(float(d["kl_reverse"]))  # pi puts mass where pi0 has none
    assert float(d["tv"]) == pytest.approx(0.5)


def test_lora_weight_distance():
    peft = pytest.importorskip("peft")
    base = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 4))
    model = peft.get_peft_model(base, peft.LoraConfig(r=2, lora_alpha=4, target_modules=["0", "2"]))
    assert lora_weight_distance(model) == 0.0  # B is initialised to zero
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p)
    x = torch.randn(3, 8)
    merged = [m for m in model.modules() if hasattr(m, "get_delta_weight")]
    expected = math.sqrt(sum(float(m.get_delta_weight("default").detach().pow(2).sum()) for m in merged))
    assert lora_weight_distance(model) == pytest.approx(expected, rel=1e-6)
    model(x)
