"""The statistics of the forgetting study: R^2 of three fit families with bootstrap intervals, per-point intervals,
the Pareto filter, and the three verdict sentences the report opens with.

Data: eval/analysis.py's `Point`s (one per evaluated checkpoint). Each carries, in `episodes`, the per-episode
success of every task ({task: [0/1, ...]}, episode i of every checkpoint and of pi0 from the same reset seed), so
resampling can redo the success rates; the base policy's point (method "base") supplies pi0's episodes.

Fits of forgetting y against a predictor x, each by least squares over the points, R^2 = 1 - SS_res / SS_tot:
    linear        y = c0 + c1 x
    quadratic     y = c0 + c1 x + c2 x^2                                   (RL's Razor's Table 1 form)
    exponential   y = c + a exp(b x), b on a grid of b * max|x| in [-8, 8] (a, c by least squares at each b;
                  the grid keeps the fit deterministic and lets it curve either way)

Bootstrap (`n_boot` replicates, percentile 95% intervals): each replicate resamples the checkpoints with
replacement and, independently, the episodes of every task with replacement; the episode indices are shared by
every checkpoint and pi0 (the seeds are paired), and every success rate and forgetting value is recomputed from
them. Predictor values are kept as measured (their own noise is in eval/kl.py's standard errors).

Replicates (several experiments pooled, e.g. one per seed: each its own pi0, demos and sampling): every checkpoint's
forgetting is measured against its own experiment's pi0, and RL/SFT pairs are matched within an experiment only.
The bootstrap is then two-level: the experiments are resampled with replacement, then the checkpoints within each
drawn experiment (a cluster bootstrap), so that the intervals carry the seed-to-seed variation, not only the
variation of checkpoints around one pi0. With few experiments (2-4) such intervals are coarse: they say how far
the pooled value can be trusted, and the per-experiment values should be read beside them.

Per-point forgetting interval: forgetting = mean over prior tasks of (pi0's success - pi's success); with paired
episodes its standard error is sqrt(sum_k var(d_k) / E_k) / K, d_k the per-episode differences on task k (E_k
episodes, K prior tasks); the interval is +-1.96 SE. `episodes_for_se` inverts it to size a study.

Pareto filter (RL's Razor's robotics protocol): over all fine-tuned checkpoints, the frontier value at new-task
success s is the best prior-task success of any checkpoint with new-task success >= s; a checkpoint is kept
when its prior-task success is within `tolerance` (2 points = 0.02) of the frontier value at its own s. Pooled
experiments each have their own frontier (eval/analysis.py's `study_points`): their pi0s differ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

FITS = ("linear", "quadratic", "exponential")
RL_METHODS = ("reinforce", "grpo", "ppo")
SFT_METHOD = "sft"
_CONSTANT = 1e-9  # a spread of forgetting below this is rounding (rates recomputed from episodes), not data
_EXP_GRID = np.concatenate([np.linspace(-8, -0.25, 32), np.linspace(0.25, 8, 32)])


# --------------------------------------------------------------------------------------------------- fits


def r2_score(y: np.ndarray, y_hat: np.ndarray) -> float:
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    return float("nan") if ss_tot <= _CONSTANT**2 else 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def fit_r2(x: np.ndarray, y: np.ndarray, kind: str) -> float:
    """R^2 of one fit family (see the module docstring) over the finite (x, y) pairs; NaN when undefined
    (fewer than 4 points, constant x or constant y)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if x.size < 4 or np.ptp(x) == 0 or np.ptp(y) < _CONSTANT:
        return float("nan")
    if kind in ("linear", "quadratic"):
        design = np.vander(x, 3 if kind == "quadratic" else 2, increasing=True)
        coef, *_ = np.linalg.lstsq(design, y, rcond=None)
        return r2_score(y, design @ coef)
    if kind == "exponential":
        z = np.exp(np.outer(_EXP_GRID / np.abs(x).max(), x))  # [G, n]
        zc, yc = z - z.mean(1, keepdims=True), y - y.mean()
        szz = (zc**2).sum(1)
        ok = szz > 1e-300
        sse = (yc**2).sum() - np.where(ok, (zc @ yc) ** 2 / np.where(ok, szz, 1.0), 0.0)
        return 1.0 - float(sse.min()) / float((yc**2).sum())
    raise ValueError(f"unknown fit {kind!r}; choose from {FITS}")


def sse_quadratic(x: np.ndarray, y: np.ndarray) -> tuple[float, int]:
    """Residual sum of squares of the quadratic fit and its number of parameters (3)."""
    design = np.vander(x, 3, increasing=True)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    return float(np.sum((y - design @ coef) ** 2)), 3


# ------------------------------------------------------------------------------------- episodes and rates


@dataclass
class Sample:
    """The checkpoints as arrays: the predictors X {name: [n]}, methods [n], and per task the episode successes
    S[task] [n, E] of the checkpoints and B[task] [G, E] of the pi0 of each of G experiments (a 1-D [E] is one
    experiment); groups [n] (default all 0) says which experiment each checkpoint belongs to."""

    X: dict[str, np.ndarray]
    methods: np.ndarray
    new_task: str
    prior_tasks: list[str]
    S: dict[str, np.ndarray]
    B: dict[str, np.ndarray]
    groups: np.ndarray | None = None
    replicates: tuple[str, ...] = ("",)

    def __post_init__(self):
        self.B = {t: np.atleast_2d(np.asarray(b, float)) for t, b in self.B.items()}
        self.groups = np.zeros(len(self.methods), int) if self.groups is None else np.asarray(self.groups, int)

    @classmethod
    def from_points(cls, points, predictors) -> "Sample":
        """From analysis Points (the base point of each experiment, Point.replicate, supplies its pi0's episodes;
        it is not a checkpoint)."""
        pts = [p for p in points if p.method != "base"]
        if not pts:
            raise ValueError("no fine-tuned checkpoints to analyse")
        replicates = tuple(dict.fromkeys(p.replicate for p in pts))
        base = {p.replicate: p for p in points if p.method == "base" and p.episodes}
        new_task, priors = pts[0].new_task, list(pts[0].prior_tasks)
        for p in pts:
            if (p.new_task, list(p.prior_tasks)) != (new_task, priors):
                raise ValueError(f"experiment {p.replicate!r} has new task {p.new_task} and prior tasks "
                                 f"{p.prior_tasks}, another has {new_task} and {priors}: pool experiments of one "
                                 "preset only")
        have_eps = all(r in base for r in replicates) and all(p.episodes for p in pts)
        S, B = {}, {}
        if have_eps:
            for t in [new_task, *priors]:
                lengths = {len(p.episodes[t]) for p in [*pts, *base.values()]}
                if len(lengths) > 1:
                    raise ValueError(f"the pooled experiments evaluated {t} with different episode counts "
                                     f"{sorted(lengths)}: pool experiments run with the same eval_episodes")
                S[t] = np.array([p.episodes[t] for p in pts], float)
                B[t] = np.array([base[r].episodes[t] for r in replicates], float)
        return cls({k: np.array([getattr(p, k) for p in pts], float) for k in predictors},
                   np.array([p.method for p in pts]), new_task, priors, S, B,
                   np.array([replicates.index(p.replicate) for p in pts]), replicates)

    def __len__(self) -> int:
        return len(self.methods)

    @property
    def has_episodes(self) -> bool:
        return bool(self.S)

    @property
    def n_replicates(self) -> int:
        return len(self.replicates)


def rates(sample: Sample, weights: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new-task success, prior-task success, forgetting), each [n], from the episodes, forgetting against each
    checkpoint's own pi0; `weights` {task: [E]} (bootstrap counts / E, default uniform) reweights the episodes."""
    w = weights or {t: np.full(s.shape[1], 1.0 / s.shape[1]) for t, s in sample.S.items()}
    new = sample.S[sample.new_task] @ w[sample.new_task]
    prior = np.mean([sample.S[t] @ w[t] for t in sample.prior_tasks], axis=0)
    base_prior = np.mean([sample.B[t] @ w[t] for t in sample.prior_tasks], axis=0)  # [G]
    return new, prior, base_prior[sample.groups] - prior


def forgetting_se(base_episodes: dict, episodes: dict, prior_tasks) -> float:
    """Standard error of one checkpoint's forgetting from its paired episode differences ({task: [0/1, ...]} of
    pi0 and of the checkpoint, the same seeds in the same order); NaN without >= 2 paired episodes per task."""
    if not prior_tasks or not all(len(episodes.get(t, ())) == len(base_episodes.get(t, ())) > 1 for t in prior_tasks):
        return float("nan")
    var = sum(np.var(np.subtract(base_episodes[t], episodes[t]), ddof=1) / len(episodes[t]) for t in prior_tasks)
    return float(np.sqrt(var) / len(prior_tasks))


def episodes_for_se(target_se: float, n_prior_tasks: int, var_diff: float = 0.5) -> int:
    """Episodes per task so that a point's forgetting has standard error <= target_se when each task's paired
    per-episode difference has variance <= var_diff (0.5 bounds it whenever both success rates are 0.5 and the
    pairs are independent; correlated pairs make it smaller)."""
    return math.ceil(var_diff / (n_prior_tasks * target_se**2))


# --------------------------------------------------------------------------------------------------- bootstrap


def _resample(rng, members: np.ndarray, strata: np.ndarray | None) -> np.ndarray:
    """`members` (checkpoint indices) drawn with replacement, within each stratum when `strata` [n] is given."""
    if strata is None:
        return rng.choice(members, members.size)
    return np.concatenate([rng.choice(members[strata[members] == s], (strata[members] == s).sum())
                           for s in np.unique(strata[members])])


def _replicates(sample: Sample, n_boot: int, seed: int, strata: np.ndarray | None = None):
    """Yield (checkpoint indices [m], (new, prior, forgetting) [m] at those indices, experiment copy [m]) per
    bootstrap replicate; the first yield is the data itself. `strata` (labels [n]): resample checkpoints within
    each label. With several experiments, the experiments are drawn first (see the module docstring); the copy
    labels tell the draws of one experiment apart (its checkpoints may be drawn twice)."""
    rng = np.random.default_rng(seed)
    n, g = len(sample), sample.n_replicates
    base_rates = rates(sample) if sample.has_episodes else None
    for r in range(n_boot + 1):
        if r == 0:
            yield np.arange(n), base_rates, sample.groups
            continue
        if g == 1:
            idx = _resample(rng, np.arange(n), strata)
            copy = np.zeros(n, int)
        else:
            drawn = [_resample(rng, np.flatnonzero(sample.groups == k), strata) for k in rng.integers(0, g, g)]
            idx = np.concatenate(drawn)
            copy = np.repeat(np.arange(g), [d.size for d in drawn])
        if sample.has_episodes:
            w = {t: np.bincount(rng.integers(0, s.shape[1], s.shape[1]), minlength=s.shape[1]) / s.shape[1]
                 for t, s in sample.S.items()}
            new, prior, forg = rates(sample, w)
            yield idx, (new[idx], prior[idx], forg[idx]), copy
        else:
            yield idx, None, copy


@dataclass
class Estimate:
    """A statistic with its 95% bootstrap interval."""

    value: float
    low: float
    high: float

    @classmethod
    def from_draws(cls, value: float, draws) -> "Estimate":
        d = np.asarray(draws, float)
        d = d[np.isfinite(d)]
        if not math.isfinite(value) or d.size < 10:
            return cls(value, float("nan"), float("nan"))
        return cls(float(value), float(np.percentile(d, 2.5)), float(np.percentile(d, 97.5)))

    def text(self, digits: int = 2) -> str:
        if not math.isfinite(self.value):
            return "–"
        if not math.isfinite(self.low):
            return f"{self.value:.{digits}f}"
        return f"{self.value:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def to_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high}


def r2_table(sample: Sample, forgetting: np.ndarray, predictors, n_boot: int = 1000, seed: int = 0
             ) -> dict[str, dict[str, Estimate]]:
    """{predictor: {fit: Estimate of R^2}} with bootstrap intervals (see the module docstring). `forgetting` [n]:
    the measured values (used when the sample has no episode data)."""
    draws = {p: {k: [] for k in FITS} for p in predictors}
    point = {}
    for r, (idx, rr, _) in enumerate(_replicates(sample, n_boot, seed)):
        y = rr[2] if rr is not None else forgetting[idx]
        for p in predictors:
            x = sample.X[p][idx]
            for k in FITS:
                v = fit_r2(x, y, k)
                if r == 0:
                    point[(p, k)] = v
                else:
                    draws[p][k].append(v)
    return {p: {k: Estimate.from_draws(point[(p, k)], draws[p][k]) for k in FITS} for p in predictors}


def r2_draws(sample: Sample, forgetting: np.ndarray, predictors, kind: str, n_boot: int, seed: int) -> np.ndarray:
    """R^2 of `kind` per predictor per replicate: [n_boot + 1, len(predictors)] (row 0: the data)."""
    out = []
    for idx, rr, _ in _replicates(sample, n_boot, seed):
        y = rr[2] if rr is not None else forgetting[idx]
        out.append([fit_r2(sample.X[p][idx], y, kind) for p in predictors])
    return np.array(out)


# ------------------------------------------------------------------------------------------------- Pareto


def frontier_filter(new_success, prior_success, tolerance: float = 0.02) -> np.ndarray:
    """Mask [n] of the checkpoints within `tolerance` of the Pareto frontier (see the module docstring)."""
    x, y = np.asarray(new_success, float), np.asarray(prior_success, float)
    frontier = np.array([y[x >= xi].max() for xi in x])
    return y >= frontier - tolerance - 1e-12


# -------------------------------------------------------------------------------------------------- verdicts


def matched_gap(methods, new_success, forgetting, tolerance: float = 0.1, groups=None
                ) -> tuple[float, float, float, int]:
    """(mean forgetting of the RL checkpoints, of the SFT checkpoints, SFT - RL, number of pairs) over all
    (RL, SFT) checkpoint pairs whose new-task success differs by at most `tolerance` (and, given `groups` [n],
    that belong to the same experiment: the same pi0)."""
    rl = np.isin(methods, RL_METHODS)
    sft = methods == SFT_METHOD
    close = np.abs(new_success[rl][:, None] - new_success[sft][None, :]) <= tolerance + 1e-12
    if groups is not None:
        close &= np.asarray(groups)[rl][:, None] == np.asarray(groups)[sft][None, :]
    if not close.any():
        return float("nan"), float("nan"), float("nan"), 0
    i, j = np.nonzero(close)
    f_rl, f_sft = forgetting[rl][i], forgetting[sft][j]
    return float(f_rl.mean()), float(f_sft.mean()), float((f_sft - f_rl).mean()), int(close.sum())


def chow_test(x: np.ndarray, y: np.ndarray, groups: np.ndarray) -> dict:
    """Pooled quadratic fit vs one quadratic per group (groups with >= 5 points): R^2 of each and the F-test
    of the nested models (H0: one curve for all groups)."""
    keep = np.isin(groups, [g for g in np.unique(groups) if (groups == g).sum() >= 5]) & np.isfinite(x) & np.isfinite(y)
    x, y, groups = x[keep], y[keep], groups[keep]
    names = list(np.unique(groups))
    if len(names) < 2 or np.ptp(y) < _CONSTANT:
        return {"groups": names, "n": int(len(x)), "r2_pooled": float("nan"), "r2_separate": float("nan"),
                "F": float("nan"), "p": float("nan")}
    sse_pooled, k = sse_quadratic(x, y)
    sse_sep = sum(sse_quadratic(x[groups == g], y[groups == g])[0] for g in names)
    df1, df2 = k * (len(names) - 1), len(x) - k * len(names)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    F = ((sse_pooled - sse_sep) / df1) / (sse_sep / df2) if sse_sep > 0 and df2 > 0 else float("inf")
    p = float(sps.f.sf(F, df1, df2)) if math.isfinite(F) else 0.0
    return {"groups": [str(g) for g in names], "n": int(len(x)), "r2_pooled": 1 - sse_pooled / ss_tot,
            "r2_separate": 1 - sse_sep / ss_tot, "F": float(F), "p": p}


def rl_vs_sft(sample: Sample, forgetting: np.ndarray, new_success: np.ndarray, n_boot: int = 1000, seed: int = 0,
              tolerance: float = 0.1) -> dict:
    """Verdict 1's numbers: `matched_gap` within each experiment, its bootstrap interval (checkpoints resampled
    within each method; experiments first when there are several), and how many experiments had a pair."""
    rl_f, sft_f, gap, pairs = matched_gap(sample.methods, new_success, forgetting, tolerance, sample.groups)
    draws = []
    for r, (idx, rr, copy) in enumerate(_replicates(sample, n_boot, seed, strata=sample.methods)):
        if r:
            ns, fg = (rr[0], rr[2]) if rr is not None else (new_success[idx], forgetting[idx])
            draws.append(matched_gap(sample.methods[idx], ns, fg, tolerance, copy)[2])
    with_pairs = sum(matched_gap(sample.methods[m], new_success[m], forgetting[m], tolerance)[3] > 0
                     for m in (sample.groups == g for g in range(sample.n_replicates)))
    return {"rl_forgetting": rl_f, "sft_forgetting": sft_f, "pairs": pairs, "tolerance": tolerance,
            "experiments": sample.n_replicates, "experiments_with_pairs": int(with_pairs),
            "gap": Estimate.from_draws(gap, draws).to_dict()}


def verdicts(sample: Sample, forgetting: np.ndarray, new_success: np.ndarray, predictors, n_boot: int = 1000,
             seed: int = 0, tolerance: float = 0.1) -> dict:
    """The three verdicts (see `verdict_sentences`) as numbers with bootstrap intervals."""
    out = {"rl_vs_sft": rl_vs_sft(sample, forgetting, new_success, n_boot, seed + 1, tolerance)}
    # 2. forward KL vs the best alternative predictor (quadratic R^2, paired replicates)
    names = ["kl_forward"] + [p for p in predictors if p != "kl_forward"]
    d = r2_draws(sample, forgetting, names, "quadratic", n_boot, seed + 2)
    alt = [i for i in range(1, len(names)) if np.isfinite(d[0, i])]
    best = max(alt, key=lambda i: d[0, i]) if alt else None
    out["kl_predicts"] = {
        "r2_kl": Estimate.from_draws(d[0, 0], d[1:, 0]).to_dict(),
        "best_alternative": names[best] if best is not None else None,
        "r2_best": Estimate.from_draws(d[0, best], d[1:, best]).to_dict() if best is not None else None,
        "difference": Estimate.from_draws(d[0, 0] - d[0, best], d[1:, 0] - d[1:, best]).to_dict()
        if best is not None else None,
    }
    # 3. one curve across methods: pooled vs per-method quadratic in forward KL
    x = sample.X["kl_forward"]
    chow = chow_test(x, forgetting, sample.methods)
    draws = []
    for r, (idx, rr, _) in enumerate(_replicates(sample, n_boot, seed + 3, strata=sample.methods)):
        if r:
            c = chow_test(x[idx], rr[2] if rr is not None else forgetting[idx], sample.methods[idx])
            draws.append(c["r2_separate"] - c["r2_pooled"])
    gain = Estimate.from_draws(chow["r2_separate"] - chow["r2_pooled"], draws)
    out["one_curve"] = {**chow, "r2_gain": gain.to_dict()}
    return out


def _est(d: dict | None) -> Estimate:
    return Estimate(**d) if d else Estimate(float("nan"), float("nan"), float("nan"))


def _sign(e: Estimate, above: str, below: str, neither: str) -> str:
    """`above` when the interval lies above 0, `below` when below, else `neither`."""
    if math.isfinite(e.low) and e.low > 0:
        return above
    if math.isfinite(e.high) and e.high < 0:
        return below
    return neither


def verdict_sentences(v: dict, label=lambda name: name) -> list[str]:
    """Three sentences, each stating its answer and the interval it rests on (thresholds: an interval that
    excludes 0 decides a difference; forward KL "predicts" forgetting when its R^2 interval lies above 0.5,
    "does not" when it reaches 0.1 or below; the one-curve F-test at the 5% level)."""
    out = []
    m = v["rl_vs_sft"]
    gap = _est(m["gap"])
    if not m["pairs"]:
        out.append(f"RL vs SFT: no RL and SFT checkpoints reached new-task success within ±{m['tolerance']:g} of "
                   "each other, so forgetting at matched new-task success is not measured.")
    else:
        answer = _sign(gap, "RL forgets less than SFT", "SFT forgets less than RL",
                       "RL and SFT forget indistinguishably")
        where = (f" (from {m['experiments_with_pairs']} of {m['experiments']} experiments, matched within each)"
                 if m.get("experiments", 1) > 1 else "")
        out.append(f"{answer} at matched new-task success: over {m['pairs']} checkpoint pairs{where} within "
                   f"±{m['tolerance']:g}, mean forgetting RL {m['rl_forgetting']:.3f} vs SFT "
                   f"{m['sft_forgetting']:.3f}, "
                   f"SFT − RL = {gap.text(3)} (95% bootstrap interval).")
    k = v["kl_predicts"]
    r2 = _est(k["r2_kl"])
    if not math.isfinite(r2.value):
        out.append("Forward KL vs forgetting: R² is undefined (too few points, or forgetting is constant).")
    else:
        if math.isfinite(r2.low) and r2.low > 0.5:
            answer = "Forward KL predicts forgetting"
        elif not math.isfinite(r2.low) or r2.low <= 0.1:
            answer = "Forward KL does not reliably predict forgetting"
        else:
            answer = "Forward KL predicts forgetting weakly"
        text = f"{answer}: quadratic R² = {r2.text()}"
        if k["best_alternative"]:
            diff = _est(k["difference"])
            cmp_ = _sign(diff, "better than", "worse than", "indistinguishable from")
            text += (f", {cmp_} the best alternative, {label(k['best_alternative'])} "
                     f"(R² = {_est(k['r2_best']).text()}; difference {diff.text()})")
        out.append(text + ".")
    c = v["one_curve"]
    if not math.isfinite(c["p"]):
        out.append("One curve across methods: not tested (needs >= 2 methods with >= 5 checkpoints each and "
                   "varying forgetting).")
    else:
        answer = "One curve fits all methods" if c["p"] >= 0.05 else "The methods follow different curves"
        out.append(f"{answer}: forgetting vs forward KL, pooled quadratic R² = {c['r2_pooled']:.2f} vs one "
                   f"quadratic per method R² = {c['r2_separate']:.2f} (gain {_est(c['r2_gain']).text()}; "
                   f"F-test p = {c['p']:.3g}, {len(c['groups'])} methods, {c['n']} checkpoints).")
    return out
