"""Forgetting vs KL: collect one point per evaluated checkpoint, fit forgetting against each predictor, plot.

A *point* is one fine-tuned checkpoint of one run (method x learning rate x step), read from the `eval.json`
records that eval/suite.py writes (see `EvalRecord` there). Its fields:

    run, method, lr, batch_size, step           which checkpoint
    kl_forward, kl_reverse, kl_reverse_is, tv,  eval/kl.py's estimates on held-out new-task observations (nats /
    dist_l2, entropy_change                     [0, 1] / nats)
    l2_weight                                   L2 norm of (fine-tuned - base) weights, i.e. of the merged LoRA delta
    weight_l1, spectral_norm, fisher_l2,        eval/predictors.py's (from predictors.json next to eval.json)
    act_l1, act_l2, kl_forward_visited
    new_success, prior_success, forgetting      new-task success, mean prior-task success, mean forgetting
    forgetting_se                               its standard error from the paired episodes (eval/study.py)
    replicate                                   the experiment it belongs to when several are pooled
                                                (`analyze_pooled`: e.g. one experiment per seed), else ""
    kl_forward_se                               forward KL's standard error over the held-out observations
    episodes                                    {task: per-episode success} (for the bootstrap; not in the CSV)

The fits are least squares polynomials forgetting = c0 + c1 x (+ c2 x^2) with the coefficient of determination
R^2 = 1 - SS_res / SS_tot. The quadratic in forward KL is the form reported by RL's Razor (arXiv 2509.04259);
the linear fit and the alternative predictors (reverse KL, TV, weight distance) make the comparison one call.
The base policy's own record (method "base") is plotted but left out of the fits: its forgetting and KL are 0 by
definition, not measurements.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from eval import study

PREDICTORS = ("kl_forward", "kl_reverse", "kl_reverse_is", "tv", "dist_l2", "weight_l1", "l2_weight", "fisher_l2",
              "spectral_norm", "act_l1", "act_l2", "entropy_change", "kl_forward_visited")
PREDICTOR_LABELS = {
    "kl_forward": "forward KL(pi0 || pi) [nats]",
    "kl_reverse": "reverse KL(pi || pi0), per token [nats]",
    "kl_reverse_is": "reverse KL(pi || pi0), joint (importance-weighted) [nats]",
    "tv": "total variation (mean per token)",
    "dist_l2": "distribution L2 (mean per token)",
    "weight_l1": "weight change L1",
    "l2_weight": "weight change L2",
    "fisher_l2": "Fisher-weighted weight change L2",
    "spectral_norm": "spectral norm of the weight change (max over layers)",
    "act_l1": "activation change L1 (new-task inputs)",
    "act_l2": "activation change L2 (new-task inputs)",
    "entropy_change": "action entropy change on new-task states [nats]",
    "kl_forward_visited": "forward KL on states pi visits [nats]",
}
PAPER_TABLE1 = {  # RL's Razor (arXiv 2509.04259), Table 1: quadratic R^2 on ParityMNIST
    "kl_forward": 0.96, "kl_reverse": 0.93, "tv": 0.80, "dist_l2": 0.56, "weight_l1": 0.34, "fisher_l2": 0.58,
    "spectral_norm": 0.58, "act_l1": 0.52, "act_l2": 0.55,
}
BASE_METHOD = "base"


@dataclass
class Point:
    """One evaluated checkpoint (see the module docstring for the fields)."""

    run: str
    method: str
    lr: float
    step: int
    new_success: float
    prior_success: float
    forgetting: float
    kl_forward: float = float("nan")
    kl_reverse: float = float("nan")
    kl_reverse_is: float = float("nan")
    tv: float = float("nan")
    dist_l2: float = float("nan")
    entropy_change: float = float("nan")
    l2_weight: float = float("nan")
    weight_l1: float = float("nan")
    spectral_norm: float = float("nan")
    fisher_l2: float = float("nan")
    act_l1: float = float("nan")
    act_l2: float = float("nan")
    kl_forward_visited: float = float("nan")
    batch_size: int = 0
    forgetting_se: float = float("nan")
    kl_forward_se: float = float("nan")
    new_task: str | None = None
    prior_tasks: list = field(default_factory=list)
    replicate: str = ""
    episodes: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_record(cls, rec: dict) -> "Point":
        """Build a point from an eval.json record written by eval.suite.evaluate_policy / save_record."""
        cmp_ = rec.get("comparison") or {}
        kl = rec.get("kl") or {}
        prior = rec.get("prior_tasks") or []
        tasks = rec["tasks"]
        prior_success = cmp_.get("prior_success", float(np.mean([tasks[t]["rate"] for t in prior])) if prior else math.nan)
        new_task = rec.get("new_task")
        new_success = tasks[new_task]["rate"] if new_task and new_task in tasks else math.nan
        base = rec.get("method") == BASE_METHOD
        return cls(
            run=rec.get("run", ""),
            method=rec.get("method", ""),
            lr=float(rec.get("lr", math.nan) if rec.get("lr") is not None else math.nan),
            step=int(rec.get("step", 0)),
            new_success=new_success,
            prior_success=prior_success,
            forgetting=cmp_.get("avg_forgetting", 0.0 if base else math.nan),
            **{k: kl.get(k, 0.0 if base else math.nan) for k in
               ("kl_forward", "kl_reverse", "kl_reverse_is", "tv", "dist_l2", "entropy_change")},
            l2_weight=rec.get("l2_weight", math.nan) if rec.get("l2_weight") is not None else math.nan,
            kl_forward_se=kl.get("kl_forward_stderr", math.nan),
            new_task=new_task,
            prior_tasks=list(prior),
            episodes={t: [int(x) for x in r["episode_success"]] for t, r in tasks.items() if "episode_success" in r},
        )

    def add_predictors(self, rec: dict) -> None:
        """Fill in the fields of a predictors.json record (eval/experiment.py's predict stage)."""
        self.batch_size = int(rec.get("batch_size", 0))
        for k, v in rec["predictors"].items():
            if k in ("weight_l1", "spectral_norm", "fisher_l2", "act_l1", "act_l2", "kl_forward_visited"):
                setattr(self, k, float(v))

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("episodes")  # large; in the eval records
        return d


def collect_points(exp_dir: str | Path, pattern: str = "**/eval.json", replicate: str = "") -> list[Point]:
    """Read every eval record under `exp_dir` (recursively) with its predictors.json when there is one,
    sorted by (method, lr, run, step); each point's forgetting_se from its paired episodes. `replicate`: the
    experiment's name in a pooled analysis (also prefixed to the run names, which repeat across experiments)."""
    paths = sorted(Path(exp_dir).glob(pattern))
    points = []
    for path in paths:
        point = Point.from_record(json.loads(path.read_text()))
        point.replicate = replicate
        if replicate:
            point.run = f"{replicate}/{point.run}"
        if (path.parent / "predictors.json").exists():
            point.add_predictors(json.loads((path.parent / "predictors.json").read_text()))
        points.append(point)
    base = next((p for p in points if p.method == BASE_METHOD and p.episodes), None)
    for p in points:
        if base is not None and p.method != BASE_METHOD:
            p.forgetting_se = study.forgetting_se(base.episodes, p.episodes, p.prior_tasks)
    return sorted(points, key=lambda p: (p.method, _nan_last(p.lr), p.run, p.batch_size, p.step))


def _nan_last(x: float) -> float:
    return math.inf if x is None or math.isnan(x) else x


# ----------------------------------------------------------------------------------------------------- fits


@dataclass
class Fit:
    """Least squares polynomial y = sum_k coef[k] * x^k with its R^2 over n points."""

    predictor: str
    degree: int
    coef: list[float]
    r2: float
    n: int
    note: str = ""

    def predict(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        return sum(c * x**k for k, c in enumerate(self.coef)) if self.coef else np.full_like(x, np.nan)

    def formula(self, y: str = "forgetting", x: str = "x") -> str:
        if not self.coef:
            return f"(no fit: {self.note})"
        terms = [f"{self.coef[0]:+.4g}"] + [
            f"{c:+.4g}*{x}" + (f"^{k}" if k > 1 else "") for k, c in enumerate(self.coef) if k > 0
        ]
        return f"{y} = " + " ".join(terms).lstrip("+")


def r_squared(y: np.ndarray, y_hat: np.ndarray) -> float:
    """Coefficient of determination 1 - SS_res/SS_tot; NaN when y is constant (SS_tot = 0)."""
    y, y_hat = np.asarray(y, float), np.asarray(y_hat, float)
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    if ss_tot <= 0:
        return float("nan")
    return 1.0 - float(np.sum((y - y_hat) ** 2)) / ss_tot


def fit_poly(x, y, degree: int, predictor: str = "x") -> Fit:
    """Fit y ~ polynomial(x) of `degree` by least squares over the finite (x, y) pairs."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    n = int(x.size)
    if n < degree + 2:
        return Fit(predictor, degree, [], float("nan"), n, note=f"needs >= {degree + 2} points, have {n}")
    if np.ptp(x) == 0:
        return Fit(predictor, degree, [], float("nan"), n, note="predictor is constant")
    vander = np.vander(x, degree + 1, increasing=True)  # columns 1, x, x^2
    coef, *_ = np.linalg.lstsq(vander, y, rcond=None)
    return Fit(predictor, degree, [float(c) for c in coef], r_squared(y, vander @ coef), n)


def fit_predictors(points: list[Point], predictors=PREDICTORS, target: str = "forgetting") -> dict[str, dict[str, Fit]]:
    """{predictor: {"linear": Fit, "quadratic": Fit}} of `target` over the non-base points."""
    pts = [p for p in points if p.method != BASE_METHOD]
    y = np.array([getattr(p, target) for p in pts], dtype=float)
    out = {}
    for name in predictors:
        x = np.array([getattr(p, name) for p in pts], dtype=float)
        out[name] = {"linear": fit_poly(x, y, 1, name), "quadratic": fit_poly(x, y, 2, name)}
    return out


def fits_to_dict(fits: dict[str, dict[str, Fit]]) -> dict:
    return {name: {kind: asdict(f) for kind, f in kinds.items()} for name, kinds in fits.items()}


def method_summary(points: list[Point]) -> list[dict]:
    """Per method: number of checkpoints, the best new-task success and the forgetting at that checkpoint,
    mean forgetting and mean forward KL over its checkpoints."""
    rows = []
    for method in sorted({p.method for p in points}):
        pts = [p for p in points if p.method == method]
        best = max(pts, key=lambda p: (np.nan_to_num(p.new_success, nan=-1), -np.nan_to_num(p.forgetting, nan=9)))
        rows.append(
            {
                "method": method,
                "checkpoints": len(pts),
                "best_new_success": best.new_success,
                "forgetting_at_best": best.forgetting,
                "prior_success_at_best": best.prior_success,
                "kl_forward_at_best": best.kl_forward,
                "mean_forgetting": float(np.nanmean([p.forgetting for p in pts])) if pts else math.nan,
                "mean_kl_forward": float(np.nanmean([p.kl_forward for p in pts])) if pts else math.nan,
            }
        )
    return rows


def matched_comparison(points: list[Point], method_a: str, method_b: str, tolerance: float = 0.1) -> dict:
    """Forgetting of `method_a` vs `method_b` at matched new-task success.

    Every pair (a, b) of checkpoints whose new-task success differs by at most `tolerance` is a match; returns the
    number of matches and the mean forgetting of each side over them (NaN when there is no match).
    """
    a_pts = [p for p in points if p.method == method_a]
    b_pts = [p for p in points if p.method == method_b]
    pairs = [(a, b) for a in a_pts for b in b_pts if abs(a.new_success - b.new_success) <= tolerance]
    if not pairs:
        return {"matches": 0, f"{method_a}_forgetting": math.nan, f"{method_b}_forgetting": math.nan, "tolerance": tolerance}
    return {
        "matches": len(pairs),
        f"{method_a}_forgetting": float(np.mean([a.forgetting for a, _ in pairs])),
        f"{method_b}_forgetting": float(np.mean([b.forgetting for _, b in pairs])),
        "tolerance": tolerance,
    }


# ---------------------------------------------------------------------------------------------------- plots


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    """Lay out, write as PNG and close a figure; returns its path."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def _colors(methods: list[str]) -> dict[str, str]:
    palette = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"]
    named = {BASE_METHOD: "black"}
    others = [m for m in methods if m not in named]
    return {**{m: palette[i % len(palette)] for i, m in enumerate(others)}, **named}


def plot_forgetting_vs_predictors(points: list[Point], fits: dict[str, dict[str, Fit]], path: str | Path,
                                  predictors=PREDICTORS) -> Path:
    """One panel per predictor: forgetting vs predictor coloured by method, with the quadratic and linear fits."""
    plt = _plt()
    methods = sorted({p.method for p in points})
    colors = _colors(methods)
    ncols = min(4, len(predictors))
    nrows = -(-len(predictors) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.8 * nrows), squeeze=False)
    for ax in axes.flat[len(predictors):]:
        ax.axis("off")
    for ax, name in zip(axes.flat, predictors):
        for m in methods:
            pts = [p for p in points if p.method == m]
            ax.scatter([getattr(p, name) for p in pts], [p.forgetting for p in pts], s=28, color=colors[m],
                       marker="*" if m == BASE_METHOD else "o", label=m, alpha=0.85)
        xs = np.array([getattr(p, name) for p in points if p.method != BASE_METHOD], float)
        xs = xs[np.isfinite(xs)]
        if xs.size and name in fits:
            grid = np.linspace(min(0.0, xs.min()), xs.max(), 100)
            for kind, style in (("quadratic", "-"), ("linear", "--")):
                f = fits[name][kind]
                if f.coef:
                    ax.plot(grid, f.predict(grid), style, color="gray", lw=1.2, label=f"{kind} R²={f.r2:.2f}")
        ax.set_xlabel(PREDICTOR_LABELS.get(name, name))
        ax.set_ylabel("forgetting (mean prior-task success drop)")
        ax.axhline(0, color="lightgray", lw=0.8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(points: list[Point], path: str | Path, near_frontier: set[tuple[str, int]] | None = None) -> Path:
    """New-task success (x) vs mean prior-task success (y) per checkpoint, coloured by method, with each
    method's Pareto frontier (points not dominated on both axes) as a line; checkpoints in `near_frontier`
    ({(run, step)}: the within-2-points filter) are ringed."""
    plt = _plt()
    methods = sorted({p.method for p in points})
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    for m in methods:
        pts = [p for p in points if p.method == m]
        ax.scatter([p.new_success for p in pts], [p.prior_success for p in pts], color=colors[m], s=30,
                   marker="*" if m == BASE_METHOD else "o", label=m, alpha=0.85)
        front = pareto_front([(p.new_success, p.prior_success) for p in pts])
        if len(front) > 1:
            ax.plot(*zip(*front), color=colors[m], lw=1)
    if near_frontier:
        kept = [p for p in points if (p.run, p.step) in near_frontier]
        ax.scatter([p.new_success for p in kept], [p.prior_success for p in kept], s=90, facecolors="none",
                   edgecolors="black", lw=0.8, label="within 2 points of the frontier")
    ax.set_xlabel("new-task success")
    ax.set_ylabel("prior-task success (mean)")
    ax.set_xlim(-0.03, 1.03)
    ax.set_ylim(-0.03, 1.03)
    ax.legend(fontsize=8)
    return _save(fig, path)


def pareto_front(xy: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not dominated (higher or equal on both coordinates, better on one), sorted by x."""
    pts = [(x, y) for x, y in xy if math.isfinite(x) and math.isfinite(y)]
    front = [p for p in pts if not any(q[0] >= p[0] and q[1] >= p[1] and q != p for q in pts)]
    return sorted(set(front))


def plot_learning_curves(points: list[Point], path: str | Path) -> Path:
    """Per run, over checkpoint steps: new-task success, prior-task success and forward KL."""
    plt = _plt()
    runs = sorted({(p.method, p.run) for p in points if p.method != BASE_METHOD})
    colors = _colors(sorted({m for m, _ in runs}))
    base = [p for p in points if p.method == BASE_METHOD]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    styles = ["-", "--", ":", "-."]
    for i, (m, run) in enumerate(runs):
        pts = sorted((p for p in points if p.run == run and p.method == m), key=lambda p: p.step)
        steps = [0] + [p.step for p in pts] if base else [p.step for p in pts]
        for ax, attr in zip(axes, ("new_success", "prior_success", "kl_forward")):
            start = [getattr(base[0], attr) if attr != "kl_forward" else 0.0] if base else []
            ax.plot(steps, start + [getattr(p, attr) for p in pts], styles[i % len(styles)], marker="o", ms=3,
                    color=colors[m], label=run)
    for ax, title in zip(axes, ("new-task success", "prior-task success (mean)", "forward KL(pi0 || pi)")):
        ax.set_xlabel("training step (updates)")
        ax.set_title(title, fontsize=10)
    if runs:
        axes[0].legend(fontsize=6)
    return _save(fig, path)


def plot_training_curves(metric_files: dict[str, Path], path: str | Path,
                         keys=("charts/success_once", "charts/return", "eval/kl_forward")) -> Path | None:
    """Training-time curves over updates from each run's metrics.jsonl ({run name: path}): training success,
    return and the online KL monitor. Returns None when no file has any of `keys`."""
    series = {}
    for run, f in sorted(metric_files.items()):
        rows = [json.loads(l) for l in Path(f).read_text().splitlines() if l.strip()]
        series[run] = {k: [(r["update"], r[k]) for r in rows if k in r and r[k] is not None] for k in keys}
    if not any(v for s in series.values() for v in s.values()):
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.6), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for run, s in series.items():
            if s[k]:
                ax.plot(*zip(*s[k]), marker="o", ms=2, label=run)
        ax.set_title(k, fontsize=10)
        ax.set_xlabel("update")
    labelled = [ax for ax in axes[0] if ax.get_legend_handles_labels()[1]]
    if labelled:
        labelled[0].legend(fontsize=6)
    return _save(fig, path)


def analyze(exp_dir: str | Path, out_dir: str | Path | None = None, points: list[Point] | None = None,
            n_boot: int = 1000, seed: int = 0) -> dict:
    """Collect points under `exp_dir`, fit, bootstrap, plot; writes analysis.json, points.csv and the PNGs into
    `out_dir` (default exp_dir/analysis) and returns the analysis dict (paths relative to out_dir). `study`
    holds eval/study.py's R^2 tables (all checkpoints and the Pareto-filtered ones) and the verdicts."""
    exp_dir = Path(exp_dir)
    out = Path(out_dir) if out_dir else exp_dir / "analysis"
    out.mkdir(parents=True, exist_ok=True)
    points = collect_points(exp_dir) if points is None else points
    if not points:
        raise FileNotFoundError(f"no eval.json records under {exp_dir}: evaluate some checkpoints first")
    fits = fit_predictors(points)
    result_study, near = study_points(points, n_boot, seed)
    plots = {**_study_plots(points, fits, result_study["predictors"], near, out),
             "learning_curves": plot_learning_curves(points, out / "learning_curves.png").name}
    metric_files = {p.parent.name: p for p in sorted(Path(exp_dir).parent.glob("train/*/metrics.jsonl"))}
    metric_files.update({p.parent.name: p for p in sorted(Path(exp_dir).glob("train/*/metrics.jsonl"))})
    if metric_files and plot_training_curves(metric_files, out / "training_curves.png"):
        plots["training_curves"] = "training_curves.png"
    methods = sorted({p.method for p in points} - {BASE_METHOD})
    matched = {f"{a}_vs_{b}": matched_comparison(points, a, b) for i, a in enumerate(methods) for b in methods[i + 1:]}
    result = {
        "points": [dict(p.to_dict(), near_frontier=(p.run, p.step) in near) for p in points],
        "fits": fits_to_dict(fits),
        "methods": method_summary(points),
        "matched": matched,
        "study": result_study,
        "plots": plots,
    }
    (out / "analysis.json").write_text(json.dumps(result, indent=2, default=_json_default))
    write_points_csv(points, out / "points.csv")
    return result


def _study_plots(points: list[Point], fits, predictors, near: set[tuple[str, int]], out: Path) -> dict[str, str]:
    """Forgetting vs forward KL, vs every measured predictor, and the Pareto view, as {plot: file name}."""
    return {
        "forgetting_vs_kl": plot_forgetting_vs_predictors(points, fits, out / "forgetting_vs_kl.png",
                                                          ("kl_forward",)).name,
        "forgetting_vs_predictors": plot_forgetting_vs_predictors(
            points, fits, out / "forgetting_vs_predictors.png",
            [k for k in PREDICTORS if k in predictors] or PREDICTORS[:1]).name,
        "pareto": plot_pareto(points, out / "pareto.png", near).name,
    }


def study_points(points: list[Point], n_boot: int = 1000, seed: int = 0) -> tuple[dict, set[tuple[str, int]]]:
    """eval/study.py over the points: the R^2 tables of all fine-tuned checkpoints and of those within 2 points of
    their experiment's Pareto frontier, the verdicts and their sentences, the mean and max standard error of a
    point's forgetting; and the {(run, step)} of the near-frontier checkpoints."""
    tuned = [p for p in points if p.method != BASE_METHOD]
    predictors = [k for k in PREDICTORS if any(math.isfinite(getattr(p, k)) for p in tuned)]
    result: dict = {"n_boot": n_boot, "predictors": predictors}
    if not tuned:
        return result, set()
    keep = np.zeros(len(tuned), bool)
    for r in {p.replicate for p in tuned}:  # each experiment's frontier: its own pi0, its own trade-off
        mine = np.array([p.replicate == r for p in tuned])
        keep[mine] = study.frontier_filter([p.new_success for p in tuned if p.replicate == r],
                                           [p.prior_success for p in tuned if p.replicate == r])
    near = {(p.run, p.step) for p, k in zip(tuned, keep) if k}
    bases = [p for p in points if p.method == BASE_METHOD]
    for subset, pts in (("all", tuned), ("frontier", [p for p, k in zip(tuned, keep) if k])):
        sample = study.Sample.from_points(pts + bases, predictors)
        table = study.r2_table(sample, np.array([p.forgetting for p in pts]), predictors, n_boot=n_boot, seed=seed)
        result[f"r2_{subset}"] = {k: {f: e.to_dict() for f, e in v.items()} for k, v in table.items()}
        result[f"n_{subset}"] = len(pts)
    sample = study.Sample.from_points(points, predictors)
    result["verdicts"] = study.verdicts(sample, np.array([p.forgetting for p in tuned]),
                                        np.array([p.new_success for p in tuned]), predictors, n_boot=n_boot, seed=seed)
    result["sentences"] = study.verdict_sentences(result["verdicts"], label=lambda k: PREDICTOR_LABELS.get(k, k))
    se = [p.forgetting_se for p in tuned if math.isfinite(p.forgetting_se)]
    result["forgetting_se_mean"] = float(np.mean(se)) if se else math.nan
    result["forgetting_se_max"] = float(np.max(se)) if se else math.nan
    return result, near


def analyze_pooled(exp_dirs: list[str | Path], out_dir: str | Path, n_boot: int = 1000, seed: int = 0) -> dict:
    """Several experiments of one preset pooled (e.g. one per seed, each with its own pi0): every checkpoint's
    forgetting against its own pi0, the study's tables and verdicts with a two-level bootstrap (experiments, then
    checkpoints within them; eval/study.py), the relation tested for one curve across the experiments, and one row
    per experiment (its pi0 and its own verdict figures, so that the pooled values can be read against them).
    Writes analysis.json, points.csv and the plots into `out_dir`; returns the analysis dict."""
    from eval.stats import wilson_interval

    dirs = [Path(d) for d in exp_dirs]
    names = [d.resolve().name for d in dirs]
    if len(dirs) < 2 or len(set(names)) < len(names):
        raise ValueError(f"pool at least two experiment directories with distinct names, got {[str(d) for d in dirs]}")
    out = Path(out_dir)
    points, experiments = [], []
    for d, name in zip(dirs, names):
        mine = collect_points(d / "evals" if (d / "evals").is_dir() else d, replicate=name)
        base = next((p for p in mine if p.method == BASE_METHOD), None)
        tuned = [p for p in mine if p.method != BASE_METHOD]
        if base is None or not tuned:
            raise FileNotFoundError(f"{d} has no evaluation of pi0 and of fine-tuned checkpoints: run its experiment "
                                    "first (or leave it out of the pool)")
        config = json.loads((d / "experiment.json").read_text()) if (d / "experiment.json").exists() else {}
        new_eps = base.episodes.get(base.new_task, [])
        predictors = [k for k in PREDICTORS if any(math.isfinite(getattr(p, k)) for p in tuned)]
        y = np.array([p.forgetting for p in tuned])
        r2 = {k: study.fit_r2(np.array([getattr(p, k) for p in tuned]), y, "quadratic") for k in predictors}
        alternatives = {k: v for k, v in r2.items() if k != "kl_forward" and math.isfinite(v)}
        best = max(alternatives, key=alternatives.get) if alternatives else None
        rl_f, sft_f, gap, pairs = study.matched_gap(np.array([p.method for p in tuned]),
                                                    np.array([p.new_success for p in tuned]), y)
        experiments.append({
            "name": name, "dir": str(d), "seed": config.get("seed"), "checkpoints": len(tuned),
            "pi0_new_success": base.new_success, "pi0_new_episodes": len(new_eps),
            "pi0_new_ci": list(wilson_interval(int(sum(new_eps)), len(new_eps))) if new_eps else None,
            "pi0_prior_success": base.prior_success, "r2_kl_forward": r2.get("kl_forward", math.nan),
            "best_alternative": best, "r2_best": r2[best] if best else math.nan,
            "rl_vs_sft_gap": gap, "rl_vs_sft_pairs": pairs,
            "report": str(d / "report.md") if (d / "report.md").exists() else None})
        points += mine
    result_study, near = study_points(points, n_boot, seed)  # refuses experiments of another set-up
    out.mkdir(parents=True, exist_ok=True)  # only now: a refused pool leaves nothing behind
    tuned = [p for p in points if p.method != BASE_METHOD]
    result_study["one_curve_across_experiments"] = study.chow_test(
        np.array([p.kl_forward for p in tuned]), np.array([p.forgetting for p in tuned]),
        np.array([p.replicate for p in tuned]))
    fits = fit_predictors(points)
    plots = _study_plots(points, fits, result_study["predictors"], near, out)
    result = {"experiments": experiments,
              "points": [dict(p.to_dict(), near_frontier=(p.run, p.step) in near) for p in points],
              "fits": fits_to_dict(fits), "methods": method_summary(points), "study": result_study, "plots": plots}
    (out / "analysis.json").write_text(json.dumps(result, indent=2, default=_json_default))
    write_points_csv(points, out / "points.csv")
    return result


def write_points_csv(points: list[Point], path: str | Path) -> Path:
    import csv

    cols = ["replicate", "run", "method", "lr", "batch_size", "step", "new_success", "prior_success", "forgetting",
            "forgetting_se",
            "kl_forward_se", *PREDICTORS]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for p in points:
            w.writerow([getattr(p, c) for c in cols])
    return Path(path)


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(type(o))
