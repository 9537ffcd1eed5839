"""The Markdown report of one experiment directory: what was run, what each checkpoint kept, forgetting vs KL.

`write_report(exp_dir)` runs eval.analysis.analyze() (unless given its result) and writes exp_dir/report.md with
the plots (PNG, relative links), the per-checkpoint table, the fits table, the per-method summary, the base policy's
per-task results and links to every video (*.mp4) under the directory. Numbers are written as measured; the
"Findings" section states the comparisons the experiment is about without judging them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from eval.analysis import BASE_METHOD, PAPER_TABLE1, PREDICTOR_LABELS, analyze, analyze_pooled
from eval.study import FITS, Estimate


def _f(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and math.isnan(x):
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}" if abs(x) >= 10 ** (-digits) or x == 0 else f"{x:.2e}"
    return str(x)


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(_f(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _ci(value, se) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if se is None or (isinstance(se, float) and math.isnan(se)):
        return _f(value)
    return f"{value:.3f} [{value - 1.96 * se:.3f}, {value + 1.96 * se:.3f}]"


def _why(fit: dict) -> str:
    """Why an R² is missing: too few points, constant predictor, or forgetting the same everywhere."""
    r2 = fit.get("r2")
    if r2 is None or not (isinstance(r2, float) and math.isnan(r2)):
        return ""
    return f" ({fit.get('note') or 'forgetting is the same at every checkpoint, so R² is undefined'})"


def task_table(record: dict) -> str:
    """Per-task success with Wilson 95% interval and mean episode length, from one eval record."""
    rows = []
    for task, r in record["tasks"].items():
        role = "new" if task == record.get("new_task") else "prior"
        rows.append([task, role, f"{r['successes']}/{r['trials']}", r["rate"],
                     f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]", r.get("mean_episode_len")])
    return _table(["task", "role", "successes", "success", "Wilson 95% CI", "mean ep. len"], rows)


def r2_table_md(study: dict, subset: str = "all") -> str:
    """The predictor table: R^2 of each fit with its 95% bootstrap interval, beside RL's Razor's Table 1."""
    table = study.get(f"r2_{subset}") or {}
    rows = [[f"{PREDICTOR_LABELS.get(k, k)} (`{k}`)"] + [Estimate(**v[f]).text() for f in FITS]
            + [f"{PAPER_TABLE1[k]:.2f}" if k in PAPER_TABLE1 else None] for k, v in table.items()]
    return _table(["predictor", "linear R² [95% CI]", "quadratic R² [95% CI]", "exponential R² [95% CI]",
                   "paper, quadratic (ParityMNIST)"], rows)


def arms_md(exp_dir: Path) -> str:
    """Every fine-tuning arm's settings, from its train stage record (eval/experiment.py)."""
    rows = []
    for rec in sorted((exp_dir / "stages").glob("train_*.json")):
        r = json.loads(rec.read_text())["result"]
        c = r.get("config") or {}
        keys = ("learning_rate", "warmup_updates", "max_grad_norm", "total_updates", "reward", "num_envs",
                "group_size", "kl_coef", "batch_size", "dataset", "lora_rank", "lora_alpha", "lora_lm_head",
                "update_epochs", "num_minibatches", "num_steps")
        settings = ", ".join(f"{k}={Path(str(c[k])).name if k == 'dataset' else c[k]}" for k in keys if k in c)
        rows.append([rec.stem[len("train_"):], r.get("method"), r.get("description", ""), settings])
    return _table(["run", "method", "what it is", "settings"], rows) if rows else "(no training runs yet)"


def write_report(exp_dir: str | Path, analysis: dict | None = None, title: str | None = None,
                 config: dict | None = None, timings: dict | None = None) -> Path:
    """Write exp_dir/report.md and return its path. `config` (the experiment config) and `timings`
    ({stage: seconds}) are shown when given, else read from exp_dir/config.json and exp_dir/timings.json."""
    exp_dir = Path(exp_dir)
    analysis = analysis if analysis is not None else analyze(exp_dir)
    adir = "analysis"
    if config is None and (exp_dir / "config.json").exists():
        config = json.loads((exp_dir / "config.json").read_text())
    if timings is None and (exp_dir / "timings.json").exists():
        timings = json.loads((exp_dir / "timings.json").read_text())
    points = analysis["points"]
    study = analysis.get("study") or {}
    md: list[str] = [f"# {title or 'Experiment report: ' + exp_dir.name}", ""]
    if study.get("sentences"):
        md += ["## Verdict", "", *[f"{i + 1}. {line}" for i, line in enumerate(study["sentences"])], "",
               f"Intervals: 95% bootstrap ({study['n_boot']} replicates resampling checkpoints, and episodes within "
               "each success rate with the seeds kept paired; eval/study.py). Standard error of a checkpoint's "
               f"forgetting: mean {_f(study.get('forgetting_se_mean'))}, max {_f(study.get('forgetting_se_max'))}.", ""]

    if config:
        md += ["## Set-up", "", "```json", json.dumps(config, indent=2, default=str), "```", ""]
    if timings:
        total = sum(v for v in timings.values() if isinstance(v, (int, float)))
        md += ["## Wall time", "", _table(["stage", "seconds"], [[k, float(v)] for k, v in timings.items()]
                                          + [["total", float(total)]]), ""]

    # findings: the comparisons, stated numerically
    md += ["## Findings", ""]
    fits = analysis["fits"]
    fk = fits.get("kl_forward", {})
    q, lin = fk.get("quadratic", {}), fk.get("linear", {})
    md.append(f"- Forgetting vs forward KL over {q.get('n', 0)} fine-tuned checkpoints: quadratic R² = "
              f"{_f(q.get('r2'))}, linear R² = {_f(lin.get('r2'))}{_why(q)}.")
    for name in ("kl_reverse", "tv", "l2_weight"):
        if name in fits:
            md.append(f"- Alternative predictor {PREDICTOR_LABELS[name]}: quadratic R² = "
                      f"{_f(fits[name]['quadratic'].get('r2'))}, linear R² = {_f(fits[name]['linear'].get('r2'))}.")
    for row in analysis["methods"]:
        if row["method"] == BASE_METHOD:
            continue
        md.append(f"- {row['method']}: best new-task success {_f(row['best_new_success'])} with forgetting "
                  f"{_f(row['forgetting_at_best'])} (forward KL {_f(row['kl_forward_at_best'])}); mean forgetting over "
                  f"{row['checkpoints']} checkpoints {_f(row['mean_forgetting'])}.")
    for key, m in analysis.get("matched", {}).items():
        a, b = key.split("_vs_")
        if m["matches"]:
            md.append(f"- At matched new-task success (within ±{m['tolerance']}, {m['matches']} pairs): mean forgetting "
                      f"{a} {_f(m[f'{a}_forgetting'])} vs {b} {_f(m[f'{b}_forgetting'])}.")
        else:
            md.append(f"- No {a}/{b} checkpoints reached new-task success within ±{m['tolerance']} of each other.")
    md.append("")

    plots = analysis["plots"]
    md += ["## Plots", "",
           f"![forgetting vs forward KL]({adir}/{plots['forgetting_vs_kl']})", "",
           f"![forgetting vs each predictor]({adir}/{plots['forgetting_vs_predictors']})", "",
           f"![new-task vs prior-task success]({adir}/{plots['pareto']})", "",
           f"![learning curves]({adir}/{plots['learning_curves']})", ""]
    if "training_curves" in plots:
        md += [f"![training curves]({adir}/{plots['training_curves']})", ""]

    if study.get("r2_all"):
        md += ["## Predictors of forgetting (RL's Razor's Table 1)", "",
               f"All {study['n_all']} fine-tuned checkpoints:", "", r2_table_md(study, "all"), "",
               f"The {study['n_frontier']} checkpoints within 2 points of the Pareto frontier (new-task vs prior-task "
               "success over all methods):", "", r2_table_md(study, "frontier"), ""]
    md += ["## Arms", "", arms_md(exp_dir), ""]

    md += ["## Fits (forgetting = c0 + c1 x [+ c2 x²])", ""]
    rows = []
    for name, kinds in fits.items():
        for kind, f in kinds.items():
            coef = ", ".join(f"{c:.4g}" for c in f["coef"]) if f["coef"] else f"({f['note']})"
            rows.append([name, kind, f["n"], coef, f["r2"]])
    md += [_table(["predictor", "fit", "n", "coefficients c0, c1[, c2]", "R²"], rows), ""]

    md += ["## Methods", "", _table(
        ["method", "checkpoints", "best new success", "forgetting at best", "prior success at best",
         "mean forgetting", "mean forward KL"],
        [[r["method"], r["checkpoints"], r["best_new_success"], r["forgetting_at_best"], r["prior_success_at_best"],
          r["mean_forgetting"], r["mean_kl_forward"]] for r in analysis["methods"]]), ""]

    md += ["## Checkpoints", "", "Forgetting with its 95% interval (±1.96 SE of the paired episode differences); "
           "forward KL with its 95% interval over the held-out observations (±1.96 SE); "
           "`*`: within 2 points of the Pareto frontier.", "", _table(
        ["run", "method", "lr", "batch", "step", "new success", "prior success", "forgetting [95% CI]",
         "KL fwd [95% CI]", "KL rev", "TV", "L2 w", "Fisher L2", "act L2", "entropy Δ", "KL fwd (visited)"],
        [[p["run"] + ("*" if p.get("near_frontier") else ""), p["method"], p["lr"], p.get("batch_size"), p["step"],
          p["new_success"], p["prior_success"], _ci(p["forgetting"], p.get("forgetting_se")),
          _ci(p["kl_forward"], p.get("kl_forward_se")),
          p["kl_reverse"], p["tv"], p["l2_weight"], p.get("fisher_l2"), p.get("act_l2"), p.get("entropy_change"),
          p.get("kl_forward_visited")] for p in points]), ""]

    base_records = sorted(exp_dir.glob("**/eval.json"))
    base = next((json.loads(p.read_text()) for p in base_records if json.loads(p.read_text()).get("method") == BASE_METHOD), None)
    if base:
        md += ["## Base policy pi0, per task", "", task_table(base), ""]
    pi0_stage = exp_dir / "stages" / "pi0.json"
    draws = json.loads(pi0_stage.read_text())["result"].get("draws") if pi0_stage.exists() else None
    if draws:
        low, high = (config or {}).get("pi0_window") or (0.0, 1.0)
        last = draws[-1]
        outcome = (f"pi0 is draw {len(draws)}, the first inside [{low:g}, {high:g}]"
                   if low <= last["successes"] / last["episodes"] <= high else
                   f"no draw lay inside [{low:g}, {high:g}]: pi0 is the first, and the window gate stopped the run")
        md += [f"pi0 draws (new-task demos and training seeded by the seed shown; new-task success): "
               + "; ".join(f"seed {d['seed']}: {d['successes']}/{d['episodes']}" for d in draws) + f". {outcome}.", ""]

    tables = sorted(exp_dir.glob("**/results.md"))
    if tables:
        md += ["## Per-task results of every evaluation", "",
               "Per-task success, Wilson interval, base success, forgetting and retained fraction:", ""]
        md += [f"- [{t.parent.relative_to(exp_dir)}]({t.relative_to(exp_dir)})" for t in tables] + [""]

    videos = sorted(exp_dir.glob("**/*.mp4"))
    if videos:
        md += ["## Videos", ""] + [f"- [{v.relative_to(exp_dir)}]({v.relative_to(exp_dir)})" for v in videos] + [""]

    md += ["## Definitions", "",
           "- success: an episode counts if `info['success']` was true at any step (success_once); "
           "interval: Wilson 95%. Actions: "
           + ("sampled (temperature 1, seeded)" if (config or {}).get("eval_sample") else "greedy (the most likely bin "
              "of every action token)") + " in every evaluation.",
           "- forgetting: base success − fine-tuned success, averaged over the prior (retained-skill) tasks.",
           "- forward KL: E over held-out new-task observations of KL(pi0(·|o) || pi(·|o)) over the 7 action tokens "
           "(chain rule: tokens sampled from pi0, exact per-token KL summed); reverse KL and TV from the same passes "
           "(see eval/kl.py).", ""]
    path = exp_dir / "report.md"
    path.write_text("\n".join(md))
    return path


def write_pooled_report(out_dir: str | Path, exp_dirs: list[str | Path], title: str | None = None,
                        n_boot: int = 1000, left_out: list[dict] = (), window: tuple[float, float] | None = None
                        ) -> Path:
    """Pool several experiments of one preset (eval.analysis.analyze_pooled; e.g. one per seed) and write
    out_dir/report.md: the verdicts over all of them, one row per experiment, the predictor table and the plots.
    `left_out`: the seeds ({seed, successes, episodes}) whose pi0 fell outside the pi0 `window`."""
    out = Path(out_dir)
    analysis = analyze_pooled(exp_dirs, out / "analysis", n_boot=n_boot)
    study = analysis["study"]
    exps = analysis["experiments"]
    md = [f"# {title or f'RL’s Razor: {len(exps)} experiments pooled'}", "",
          "## Verdict over the pooled experiments", "",
          *[f"{i + 1}. {line}" for i, line in enumerate(study.get("sentences", []))], "",
          f"Intervals: 95% two-level bootstrap ({study['n_boot']} replicates: the {len(exps)} experiments resampled "
          "with replacement, then the checkpoints within each, and the episodes of every success rate with their "
          "seeds paired; eval/study.py). Each checkpoint's forgetting is against its own experiment's pi0, and RL/SFT "
          "pairs are matched within an experiment. With few experiments these intervals are coarse; read them with "
          "the rows below.", ""]
    across = study.get("one_curve_across_experiments") or {}
    if math.isfinite(across.get("p", math.nan)):
        md += [f"One curve across the experiments (forgetting vs forward KL, quadratic): pooled R² = "
               f"{across['r2_pooled']:.2f} vs one per experiment R² = {across['r2_separate']:.2f}, F-test p = "
               f"{across['p']:.3g} ({len(across['groups'])} experiments, {across['n']} checkpoints).", ""]
    rows = []
    for e in exps:
        ci = e.get("pi0_new_ci")
        pi0 = f"{e['pi0_new_success']:.2f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")
        gap = f"{e['rl_vs_sft_gap']:.3f} ({e['rl_vs_sft_pairs']} pairs)" if e["rl_vs_sft_pairs"] else "no pairs"
        link = f"[{e['name']}]({os.path.relpath(e['report'], out)})" if e.get("report") else e["name"]
        rows.append([link, e.get("seed"), e["checkpoints"], pi0, e["pi0_prior_success"], gap, e["r2_kl_forward"],
                     f"{e['best_alternative']} {e['r2_best']:.2f}" if e.get("best_alternative") else None])
    md += ["## The experiments", "", "Each experiment's own figures (point estimates; its report has the intervals). "
           "pi0's new-task success with its Wilson 95% interval.", "",
           _table(["experiment", "seed", "checkpoints", "pi0 new-task success", "pi0 prior success",
                   "SFT − RL at matched success", "forward KL quadratic R²", "best alternative, R²"], rows), ""]
    if left_out:
        md += [f"Left out before any fine-tuning, pi0's new-task success outside [{window[0]:g}, {window[1]:g}]: "
               + "; ".join(f"seed {d['seed']} ({d['successes']}/{d['episodes']})" for d in left_out) + ".", ""]
    if study.get("r2_all"):
        md += ["## Predictors of forgetting, pooled (RL's Razor's Table 1)", "",
               f"All {study['n_all']} fine-tuned checkpoints:", "", r2_table_md(study, "all"), "",
               f"The {study['n_frontier']} checkpoints within 2 points of their experiment's Pareto frontier:", "",
               r2_table_md(study, "frontier"), ""]
    plots = analysis["plots"]
    md += ["## Plots", "", f"![forgetting vs forward KL](analysis/{plots['forgetting_vs_kl']})", "",
           f"![forgetting vs each predictor](analysis/{plots['forgetting_vs_predictors']})", "",
           f"![new-task vs prior-task success](analysis/{plots['pareto']})", ""]
    md += ["## Methods, pooled", "", _table(
        ["method", "checkpoints", "best new success", "forgetting at best", "mean forgetting", "mean forward KL"],
        [[r["method"], r["checkpoints"], r["best_new_success"], r["forgetting_at_best"], r["mean_forgetting"],
          r["mean_kl_forward"]] for r in analysis["methods"]]), ""]
    path = out / "report.md"
    path.write_text("\n".join(md))
    return path
