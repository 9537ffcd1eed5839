"""eval/study.py: fit R^2 against exact cases, bootstrap coverage, the Pareto filter on a hand-made set, and the
three verdicts on synthetic checkpoints whose answer is known both ways."""

import numpy as np
import pytest

from eval import study


def test_fit_r2_is_one_on_exact_curves_of_each_family():
    x = np.linspace(0.0, 2.0, 12)
    assert study.fit_r2(x, 2 + 3 * x, "linear") == pytest.approx(1.0)
    quad = 1 - x + 2 * x**2
    assert study.fit_r2(x, quad, "quadratic") == pytest.approx(1.0)
    assert study.fit_r2(x, quad, "linear") < 0.99
    expo = 1 + 2 * np.exp(1.5 * x)  # b * max|x| = 3.0 lies on the grid
    assert study.fit_r2(x, expo, "exponential") == pytest.approx(1.0, abs=1e-9)
    assert study.fit_r2(x, 1 - np.exp(-3 * x), "exponential") == pytest.approx(1.0, abs=1e-9)  # saturating
    assert np.isnan(study.fit_r2(x, np.ones_like(x), "linear"))  # constant forgetting: undefined


def _sample_without_episodes(x, methods=None):
    n = len(x)
    return study.Sample({"x": np.asarray(x, float)}, np.array(methods or ["m"] * n), "new", ["prior"], {}, {})


def test_bootstrap_interval_covers_the_true_r2_at_about_the_nominal_rate():
    # y = x + noise with x ~ U(0, 1), noise sd s: population R^2 = var(x) / (var(x) + s^2)
    s, n, trials = 0.3, 60, 150
    true_r2 = (1 / 12) / (1 / 12 + s**2)
    rng = np.random.default_rng(0)
    covered = 0
    for t in range(trials):
        x = rng.uniform(0, 1, n)
        y = x + rng.normal(0, s, n)
        d = study.r2_draws(_sample_without_episodes(x), y, ["x"], "linear", n_boot=300, seed=t)[1:, 0]
        lo, hi = np.percentile(d, [2.5, 97.5])
        covered += lo <= true_r2 <= hi
    assert 0.88 <= covered / trials <= 0.99, covered / trials


def test_frontier_filter_on_a_hand_made_set():
    new = [0.2, 0.5, 0.5, 0.8, 0.8, 1.0, 0.3]
    prior = [0.95, 0.90, 0.885, 0.70, 0.60, 0.50, 0.80]
    # frontier values: 0.95, 0.90, 0.90, 0.70, 0.70, 0.50, 0.90 -> keep within 0.02 of them
    assert study.frontier_filter(new, prior).tolist() == [True, True, True, True, False, True, False]


def test_episodes_for_se_meets_the_target():
    n = study.episodes_for_se(0.03, 3)
    assert n == 186
    se_worst = np.sqrt(0.5 / n) * np.sqrt(3) / 3  # three tasks, each with variance 0.5 of the paired difference
    assert se_worst <= 0.03


def _episodes(rate, e, rng):
    out = np.zeros(e)
    out[rng.permutation(e)[: int(round(rate * e))]] = 1
    return out


def _synthetic(methods, new, prior, kl, e=200, seed=0):
    """A Sample whose checkpoints have exactly the given success rates (episodes shuffled), pi0 prior 0.9."""
    rng = np.random.default_rng(seed)
    S = {"new": np.array([_episodes(r, e, rng) for r in new]),
         "prior": np.array([_episodes(r, e, rng) for r in prior])}
    B = {"new": _episodes(0.5, e, rng), "prior": _episodes(0.9, e, rng)}
    sample = study.Sample({"kl_forward": np.asarray(kl, float), "other": rng.uniform(0, 1, len(kl))},
                          np.array(methods), "new", ["prior"], S, B)
    new_s, _, forgetting = study.rates(sample)
    return sample, forgetting, new_s


def _verdict_text(methods, new, prior, kl):
    sample, forgetting, new_s = _synthetic(methods, new, prior, kl)
    v = study.verdicts(sample, forgetting, new_s, ["kl_forward", "other"], n_boot=200)
    return v, study.verdict_sentences(v)


def test_verdict_rl_vs_sft_both_ways():
    n = 8
    news = list(np.linspace(0.55, 0.9, n))
    kl = list(np.linspace(0.1, 1.0, n)) * 2
    methods = ["reinforce"] * n + ["sft"] * n
    _, s = _verdict_text(methods, news * 2, [0.88] * n + [0.6] * n, kl)
    assert s[0].startswith("RL forgets less than SFT")
    _, s = _verdict_text(methods, news * 2, [0.6] * n + [0.88] * n, kl)
    assert s[0].startswith("SFT forgets less than RL")


def test_verdict_kl_predicts_and_does_not():
    n = 20
    kl = np.linspace(0.0, 1.0, n)
    methods = ["reinforce"] * (n // 2) + ["sft"] * (n // 2)
    _, s = _verdict_text(methods, [0.7] * n, list(0.9 - 0.5 * kl**2), kl)
    assert s[1].startswith("Forward KL predicts forgetting:"), s[1]
    scrambled = np.random.default_rng(1).permutation(0.9 - 0.5 * kl**2)
    _, s = _verdict_text(methods, [0.7] * n, list(scrambled), kl)
    assert s[1].startswith("Forward KL does not reliably predict forgetting"), s[1]


def test_verdict_one_curve_and_two():
    n = 10
    kl = np.concatenate([np.linspace(0, 1, n), np.linspace(0.05, 0.95, n)])
    methods = ["grpo"] * n + ["sft"] * n
    v, s = _verdict_text(methods, [0.7] * 2 * n, list(0.9 - 0.4 * kl**2), kl)
    assert s[2].startswith("One curve fits all methods"), s[2]
    shifted = np.where(np.array(methods) == "sft", 0.9 - 0.4 * kl, 0.9 - 0.1 * kl)
    v, s = _verdict_text(methods, [0.7] * 2 * n, list(shifted), kl)
    assert s[2].startswith("The methods follow different curves"), s[2]
    assert v["one_curve"]["p"] < 0.05


def test_no_forgetting_anywhere_gives_undefined_r2_not_rounding_noise():
    n = 8
    sample, forgetting, new_s = _synthetic(["reinforce"] * n, [0.7] * n, [0.9] * n, np.linspace(0.1, 1, n))
    table = study.r2_table(sample, forgetting, ["kl_forward"], n_boot=20)
    assert all(np.isnan(e.value) for e in table["kl_forward"].values())


def _no_episodes(methods, groups, x=None):
    n = len(methods)
    x = np.zeros(n) if x is None else x
    return study.Sample({"kl_forward": np.asarray(x, float)}, np.array(methods), "new", ["prior"], {}, {},
                        np.asarray(groups), tuple(f"seed{g}" for g in sorted(set(groups))))


def test_pooled_experiments_use_their_own_pi0_and_pair_only_within_themselves():
    # two experiments, one checkpoint each of RL and SFT; pi0 prior success 0.9 in one, 0.5 in the other
    S = {"new": np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 0]], float),
         "prior": np.array([[1, 1, 1, 0], [1, 0, 0, 0], [1, 0, 0, 0], [1, 1, 0, 0]], float)}
    B = {"new": np.zeros((2, 4)), "prior": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], float)}
    sample = study.Sample({"kl_forward": np.arange(4.0)}, np.array(["reinforce", "sft", "reinforce", "sft"]), "new",
                          ["prior"], S, B, np.array([0, 0, 1, 1]), ("a", "b"))
    new, prior, forgetting = study.rates(sample)
    assert forgetting.tolist() == pytest.approx([1 - 0.75, 1 - 0.25, 0.5 - 0.25, 0.5 - 0.5])
    # new-task success 0.5, 0.5 | 0.5, 0.75: within ±0.25 every RL/SFT pair matches, but only same-pi0 pairs count
    rl, sft, gap, pairs = study.matched_gap(sample.methods, new, forgetting, 0.25, sample.groups)
    assert pairs == 2 and gap == pytest.approx(((0.75 - 0.25) + (0.0 - 0.25)) / 2)
    assert study.matched_gap(sample.methods, new, forgetting, 0.25)[3] == 4  # pooled blindly: cross-pi0 pairs too


def test_two_level_bootstrap_carries_the_variation_between_experiments():
    # 8 experiments (seeds); in each, SFT forgets mu + u_g more than RL at matched success, u_g ~ N(0, 0.1) varies
    # between seeds and the checkpoints scatter by only 0.005 around it: an interval for mu must come from the seeds
    mu, g, per, trials = 0.2, 8, 16, 60
    methods = np.tile(["reinforce"] * per + ["sft"] * per, g)
    groups = np.repeat(np.arange(g), 2 * per)
    new = np.tile(np.r_[np.linspace(0.3, 0.9, per), np.linspace(0.3, 0.9, per)], g)
    rng = np.random.default_rng(0)
    covered = {"two-level": 0, "one-level": 0}
    for t in range(trials):
        u = rng.normal(0, 0.1, g)
        forgetting = np.where(methods == "sft", mu + u[groups], 0.0) + rng.normal(0, 0.005, len(methods))
        for name, sample in (("two-level", _no_episodes(methods, groups)),
                             ("one-level", _no_episodes(methods, np.zeros(len(methods), int)))):
            gap = study.rl_vs_sft(sample, forgetting, new, n_boot=150, seed=t, tolerance=0.0)["gap"]
            covered[name] += gap["low"] <= mu <= gap["high"]
    # resampling checkpoints alone treats 128 SFT checkpoints as independent where there are 8 seeds: its interval
    # is ~sqrt(8/128) as wide as it should be (coverage ~0.4)
    assert covered["two-level"] / trials >= 0.75, covered
    assert covered["one-level"] / trials <= 0.6, covered
