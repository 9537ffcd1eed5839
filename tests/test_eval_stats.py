"""eval/stats.py: Wilson interval against known values, forgetting measures; eval/analysis.py + report.py on
synthetic points."""

import json
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from eval.analysis import Point, analyze, fit_poly, fit_predictors, matched_comparison, pareto_front, r_squared
from eval.report import write_report
from eval.stats import Rate, compare, retained_fraction, wilson_interval


@pytest.mark.parametrize(
    "k,n,low,high",
    [
        (0, 10, 0.0, 0.27753),  # textbook values (e.g. statsmodels proportion_confint(method="wilson"))
        (5, 10, 0.23659, 0.76341),
        (10, 10, 0.72247, 1.0),
    ],
)
def test_wilson_known_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-4) and hi == pytest.approx(high, abs=1e-4)


def test_wilson_matches_scipy_and_edge_cases():
    for k, n in [(0, 1), (1, 1), (3, 7), (50, 100), (99, 100), (7, 300)]:
        ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
        assert wilson_interval(k, n) == pytest.approx((ci.low, ci.high), abs=1e-9)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(5, 3)
    r = Rate(3, 4).to_dict()
    assert r["rate"] == 0.75 and r["ci_low"] < 0.75 < r["ci_high"]


def test_compare_forgetting_retained_gain():
    base = {"a": 0.8, "b": 0.4, "c": 0.0, "new": 0.2}
    ft = {"a": 0.6, "b": 0.5, "c": 0.1, "new": 0.9}
    c = compare(base, ft, ["a", "b", "c"], "new")
    assert c.per_task_forgetting == pytest.approx({"a": 0.2, "b": -0.1, "c": -0.1})
    assert c.per_task_retained["a"] == pytest.approx(0.75) and math.isnan(c.per_task_retained["c"])
    assert c.avg_forgetting == pytest.approx(0.0)
    assert c.avg_retained == pytest.approx((1.2 / 3) / (1.2 / 3))
    assert c.new_task_gain == pytest.approx(0.7)
    assert math.isnan(retained_fraction(0.0, 0.3))
    with pytest.raises(KeyError, match="lack tasks"):
        compare(base, {"a": 1.0}, ["a", "b"], "new")


def test_fit_recovers_known_coefficients_and_r2():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 2, 200)
    y_exact = 0.05 + 0.3 * x + 0.1 * x**2
    f = fit_poly(x, y_exact, 2)
    assert f.coef == pytest.approx([0.05, 0.3, 0.1], abs=1e-9) and f.r2 == pytest.approx(1.0)
    noise = rng.normal(0, 0.05, x.size)
    y = y_exact + noise
    f2 = fit_poly(x, y, 2)
    assert f2.coef == pytest.approx([0.05, 0.3, 0.1], abs=0.03)
    expected_r2 = 1 - np.sum((y - f2.predict(x)) ** 2) / np.sum((y - y.mean()) ** 2)
    assert f2.r2 == pytest.approx(expected_r2) and 0.9 < f2.r2 < 1.0
    # R^2 of a known prediction; constant target; too few points
    assert r_squared([1, 2, 3], [1, 2, 4]) == pytest.approx(1 - 1 / 2)
    assert math.isnan(r_squared([1, 1, 1], [1, 1, 1]))
    assert fit_poly([1, 2], [1, 2], 2).coef == [] and "needs" in fit_poly([1, 2], [1, 2], 2).note
    # unrelated predictor: R^2 near 0
    assert fit_poly(rng.uniform(size=200), rng.uniform(size=200), 1).r2 < 0.05


def _synthetic_points(rng):
    pts = [Point("base", "base", math.nan, 0, 0.3, 0.7, 0.0, kl_forward=0.0, kl_reverse=0.0, tv=0.0, l2_weight=0.0)]
    for method, scale in (("ppo", 0.2), ("sft", 1.5)):
        for lr in (1e-4, 3e-4):
            run = f"{method}_lr{lr:g}"
            for step in (10, 20, 30):
                kl = scale * step / 30 * (lr / 1e-4)
                fg = 0.02 + 0.05 * kl + 0.04 * kl**2 + rng.normal(0, 0.005)
                pts.append(Point(run, method, lr, step, min(1, 0.3 + 0.02 * step), 0.7 - fg, fg, kl_forward=kl,
                                 kl_reverse=0.8 * kl, tv=min(1, 0.1 * kl), l2_weight=0.5 * kl + rng.uniform(0, 1)))
    return pts


def test_fit_predictors_and_matched(tmp_path):
    pts = _synthetic_points(np.random.default_rng(1))
    fits = fit_predictors(pts)
    assert fits["kl_forward"]["quadratic"].n == 12  # base left out
    assert fits["kl_forward"]["quadratic"].coef == pytest.approx([0.02, 0.05, 0.04], abs=0.01)
    assert fits["kl_forward"]["quadratic"].r2 > 0.99
    assert fits["l2_weight"]["quadratic"].r2 < fits["kl_forward"]["quadratic"].r2
    m = matched_comparison(pts, "ppo", "sft", tolerance=0.0)
    assert m["matches"] == 12 and m["ppo_forgetting"] < m["sft_forgetting"]
    assert pareto_front([(0, 1), (1, 0), (0.5, 0.5), (0.4, 0.4)]) == [(0, 1), (0.5, 0.5), (1, 0)]


def _write_records(exp_dir, pts):
    for p in pts:
        d = exp_dir / "evals" / p.run / f"step{p.step}"
        d.mkdir(parents=True)
        tasks = {"new": {"successes": round(p.new_success * 20), "trials": 20, "rate": p.new_success,
                         "ci_low": 0.1, "ci_high": 0.9, "mean_episode_len": 50.0},
                 "old": {"successes": round(p.prior_success * 20), "trials": 20, "rate": p.prior_success,
                         "ci_low": 0.1, "ci_high": 0.9, "mean_episode_len": 60.0}}
        rec = {"run": p.run, "method": p.method, "lr": None if math.isnan(p.lr) else p.lr, "step": p.step,
               "new_task": "new", "prior_tasks": ["old"], "tasks": tasks,
               "comparison": None if p.method == "base" else {"avg_forgetting": p.forgetting, "prior_success": p.prior_success},
               "kl": {"kl_forward": p.kl_forward, "kl_reverse": p.kl_reverse, "tv": p.tv}, "l2_weight": p.l2_weight}
        (d / "eval.json").write_text(json.dumps(rec))
    (exp_dir / "evals" / "sft_lr0.0001" / "step10" / "ep0.mp4").write_bytes(b"\x00")


def test_report_renders_with_plots(tmp_path):
    pts = _synthetic_points(np.random.default_rng(2))
    _write_records(tmp_path, pts)
    result = analyze(tmp_path)
    assert len(result["points"]) == len(pts)
    for name in result["plots"].values():
        png = tmp_path / "analysis" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert (tmp_path / "analysis" / "points.csv").read_text().count("\n") == len(pts) + 1
    report = write_report(tmp_path, result, config={"preset": "synthetic"}, timings={"train": 1.5})
    text = report.read_text()
    for name in result["plots"].values():
        assert f"](analysis/{name})" in text
    assert "quadratic R² = 0.99" in text or "quadratic R² = 1.000" in text
    assert "evals/sft_lr0.0001/step10/ep0.mp4" in text
    assert "| old | prior | 14/20 |" in text  # base task table


def test_pooled_report_over_experiments(tmp_path):
    from eval.report import write_pooled_report

    dirs = []
    for seed in (0, 1):
        d = tmp_path / f"seed_{seed}"
        _write_records(d, _synthetic_points(np.random.default_rng(seed)))
        (d / "experiment.json").write_text(json.dumps({"seed": seed, "new_task": "new"}))
        dirs.append(d)
    report = write_pooled_report(tmp_path / "pooled", dirs, n_boot=50, window=(0.2, 0.6),
                                 left_out=[{"seed": 2, "successes": 14, "episodes": 16}])
    analysis = json.loads((tmp_path / "pooled" / "analysis" / "analysis.json").read_text())
    assert [e["seed"] for e in analysis["experiments"]] == [0, 1]
    assert all(e["checkpoints"] == 12 and e["pi0_new_success"] == 0.3 for e in analysis["experiments"])
    runs = {p["run"] for p in analysis["points"]}
    assert "seed_0/ppo_lr0.0001" in runs and "seed_1/ppo_lr0.0001" in runs and len(analysis["points"]) == 26
    assert analysis["study"]["n_all"] == 24 and analysis["study"]["verdicts"]["rl_vs_sft"]["experiments"] == 2
    text = report.read_text()
    assert "## Verdict over the pooled experiments" in text and "| seed_1 | 1 | 12 |" in text
    assert "outside [0.2, 0.6]: seed 2 (14/16)" in text
    for name in analysis["plots"].values():
        assert f"](analysis/{name})" in text and (tmp_path / "pooled" / "analysis" / name).stat().st_size > 5000
    # experiments of another set-up are not pooled; two directories of one name are refused
    other = tmp_path / "other"
    _write_records(other, _synthetic_points(np.random.default_rng(3)))
    for path in other.glob("evals/**/eval.json"):
        rec = json.loads(path.read_text())
        rec["new_task"], rec["tasks"]["elsewhere"] = "elsewhere", rec["tasks"].pop("new")
        path.write_text(json.dumps(rec))
    with pytest.raises(ValueError, match="one preset"):
        write_pooled_report(tmp_path / "bad", [dirs[0], other], n_boot=10)
    with pytest.raises(ValueError, match="distinct names"):
        write_pooled_report(tmp_path / "bad", [dirs[0], dirs[0]], n_boot=10)
    with pytest.raises(FileNotFoundError, match="run its experiment first"):
        write_pooled_report(tmp_path / "bad", [dirs[0], tmp_path / "missing"], n_boot=10)
    assert not (tmp_path / "bad").exists()  # a refused pool leaves nothing behind
