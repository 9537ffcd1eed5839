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

Per-point forgetting interval: forgetting = mean over prior tasks of (pi0's success - pi's success); with paired
episodes its standard error is sqrt(sum_k var(d_k) / E_k) / K, d_k the per-episode differences on task k (E_k
episodes, K prior tasks); the interval is +-1.96 SE. `episodes_for_se` inverts it to size a study.

Pareto filter (RL's Razor's robotics protocol): over all fine-tuned checkpoints, the frontier value at new-task
success s is the best prior-task success of any checkpoint with new-task success >= s; a checkpoint is kept
when its prior-task success is within `tolerance` (2 points = 0.02) of the frontier value at its own s.
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
    S[task] [n, E] of the checkpoints and B[task] [E] of pi0."""

    X: dict[str, np.ndarray]
    methods: np.ndarray
    new_task: str
    prior_tasks: list[str]
    S: dict[str, np.ndarray]
    B: dict[str, np.ndarray]

    @classmethod
    def from_points(cls, points, predictors) -> "Sample":
        """From analysis Points (the base point supplies pi0's episodes; it is not a checkpoint)."""
        base = [p for p in points if p.method == "base"]
        pts = [p for p in points if p.method != "base"]
        if not pts:
            raise ValueError("no fine-tuned checkpoints to analyse")
        new_task, priors = pts[0].new_task, list(pts[0].prior_tasks)
        have_eps = bool(base) and all(p.episodes for p in pts) and bool(base[0].episodes)
        S, B = {}, {}
        if have_eps:
            for t in [new_task, *priors]:
                S[t] = np.array([p.episodes[t] for p in pts], float)
                B[t] = np.array(base[0].episodes[t], float)
        return cls({k: np.array([getattr(p, k) for p in pts], float) for k in predictors},
                   np.array([p.method for p in pts]), new_task, priors, S, B)

    def __len__(self) -> int:
        return len(self.methods)

    @property
    def has_episodes(self) -> bool:
        return bool(self.S)


def rates(sample: Sample, weights: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(new-task success, prior-task success, forgetting), each [n], from the episodes; `weights` {task: [E]}
    (bootstrap counts / E, default uniform) reweights the episodes."""
    w = weights or {t: np.full(s.shape[1], 1.0 / s.shape[1]) for t, s in sample.S.items()}
    new = sample.S[sample.new_task] @ w[sample.new_task]
    prior = np.mean([sample.S[t] @ w[t] for t in sample.prior_tasks], axis=0)
    base_prior = np.mean([sample.B[t] @ w[t] for t in sample.prior_tasks])
    return new, prior, base_prior - prior


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


def _replicates(sample: Sample, n_boot: int, seed: int, strata: np.ndarray | None = None):
    """Yield (checkpoint indices [n], (new, prior, forgetting) [n] at those indices) per bootstrap replicate;
    the first yield is the data itself. `strata` (labels [n]): resample checkpoints within each label."""
    rng = np.random.default_rng(seed)
    n = len(sample)
    base_rates = rates(sample) if sample.has_episodes else None
    for r in range(n_boot + 1):
        if r == 0:
            idx = np.arange(n)
            yield idx, base_rates
            continue
        if strata is None:
            idx = rng.integers(0, n, n)
        else:
            idx = np.concatenate([rng.choice(np.flatnonzero(strata == s), (strata == s).sum())
                                  for s in np.unique(strata)])
        if sample.has_episodes:
            w = {t: np.bincount(rng.integers(0, s.shape[1], s.shape[1]), minlength=s.shape[1]) / s.shape[1]
                 for t, s in sample.S.items()}
            new, prior, forg = rates(sample, w)
            yield idx, (new[idx], prior[idx], forg[idx])
        else:
            yield idx, None


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
    for r, (idx, rr) in enumerate(_replicates(sample, n_boot, seed)):
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
    for idx, rr in _replicates(sample, n_boot, seed):
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


def matched_gap(methods, new_success, forgetting, tolerance: float = 0.1) -> tuple[float, float, float, int]:
    """(mean forgetting of the RL checkpoints, of the SFT checkpoints, SFT - RL, number of pairs) over all
    (RL, SFT) checkpoint pairs whose new-task success differs by at most `tolerance`."""
    rl = np.isin(methods, RL_METHODS)
    sft = methods == SFT_METHOD
    close = np.abs(new_success[rl][:, None] - new_success[sft][None, :]) <= tolerance + 1e-12
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


def verdicts(sample: Sample, forgetting: np.ndarray, new_success: np.ndarray, predictors, n_boot: int = 1000,
             seed: int = 0, tolerance: float = 0.1) -> dict:
    """The three verdicts (see `verdict_sentences`) as numbers with bootstrap intervals."""
    out = {}
    # 1. RL vs SFT at matched new-task success (checkpoints resampled within each method)
    rl_f, sft_f, gap, pairs = matched_gap(sample.methods, new_success, forgetting, tolerance)
    draws = []
    for r, (idx, rr) in enumerate(_replicates(sample, n_boot, seed + 1, strata=sample.methods)):
        if r:
            ns, fg = (rr[0], rr[2]) if rr is not None else (new_success[idx], forgetting[idx])
            draws.append(matched_gap(sample.methods[idx], ns, fg, tolerance)[2])
    out["rl_vs_sft"] = {"rl_forgetting": rl_f, "sft_forgetting": sft_f, "pairs": pairs, "tolerance": tolerance,
                        "gap": Estimate.from_draws(gap, draws).to_dict()}
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
    for r, (idx, rr) in enumerate(_replicates(sample, n_boot, seed + 3, strata=sample.methods)):
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
        out.append(f"{answer} at matched new-task success: over {m['pairs']} checkpoint pairs within "
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
