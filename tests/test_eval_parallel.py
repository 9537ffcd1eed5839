"""The experiment's stage graph run in worker processes (--workers) and as tasks of a real local Ray instance
(--ray): the same records and results as one process, resumption, and a failed stage that does not take down the
stages independent of it."""

import json
import shutil
from pathlib import Path

import pytest

from eval.experiment import RESUMABLE, Experiment, ExperimentConfig
from eval.stages import Stage, StageFailed, StageRunner, run_graph
from tests.test_eval_experiment import MINI

MINI_PAR = {**MINI, "methods": ("ppo", "sft"), "videos_per_task": 0, "progress": False}


def _results(run: Path) -> dict[str, dict]:
    """Per-checkpoint evaluation results that must not depend on how the stages were run."""
    out = {}
    for p in sorted((run / "evals").glob("*/*/eval.json")) + [run / "evals" / "base" / "eval.json"]:
        rec = json.loads(p.read_text())
        out[str(p.relative_to(run))] = {"tasks": rec["tasks"], "kl": rec.get("kl")}
    return out


def _strip_timing(results: dict) -> dict:
    return {k: {"tasks": {t: {f: v for f, v in r.items() if "wall" not in f and "_per_s" not in f}
                          for t, r in rec["tasks"].items()}, "kl": rec["kl"]} for k, rec in results.items()}


@pytest.fixture(scope="module")
def inline_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("inline")
    cfg = ExperimentConfig(preset="mini", run_dir=str(root / "run"), cache_dir=str(root / "cache"), **MINI_PAR)
    Experiment(cfg, log=lambda s: None).run_all()
    return root / "run"


def test_workers_isolate_a_failed_stage_resume_and_match_one_process(inline_run, tmp_path):
    # SFT's demo folder is not there yet: its training fails and its evaluations are skipped, while PPO's run and
    # evaluations finish; with the folder in place, the same command resumes and the results match one process.
    demos = tmp_path / "sft-demos"
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           workers=2, sft_demo_dir=str(demos), **MINI_PAR)
    logs = []
    with pytest.raises(StageFailed, match="train_sft_lr0.0003") as err:
        Experiment(cfg, log=logs.append).run_all()
    run = tmp_path / "run"
    log = run / "logs" / "train_sft_lr0.0003.log"
    assert str(log) in str(err.value) and "sft-demos" in log.read_text()  # the stage's own traceback
    assert "skipped: train_sft_lr0.0003 failed" in str(err.value)
    runner = StageRunner(run, cfg.to_dict(), ignore_keys=RESUMABLE, log=lambda s: None)
    assert runner.done("train_ppo_lr0.0003") and runner.done("eval_ppo_lr0.0003_step000002")
    assert not runner.done("train_sft_lr0.0003") and not runner.done("report")

    shutil.copytree(next((inline_run.parent / "cache" / "demos").glob("toy__reach-side_*_n2_*")), demos)
    logs.clear()
    Experiment(cfg, log=logs.append).run_all()
    assert _strip_timing(_results(run)) == _strip_timing(_results(inline_run))
    started = {l.split()[1].rstrip(":") for l in logs if l.endswith(".log)") and "started" in l}
    assert started == {"train_sft_lr0.0003", "eval_sft_lr0.0003_step000001", "eval_sft_lr0.0003_step000002",
                       "report"}
    # a rerun in one process only rewrites the report
    logs.clear()
    Experiment(ExperimentConfig(**{**cfg.to_dict(), "workers": 1}), log=logs.append).run_all()
    assert [l for l in logs if l.endswith("...")] == ["[stage] report ..."]


def test_ray_local_instance_matches_one_process(inline_run, tmp_path):
    pytest.importorskip("ray", reason="Ray is an optional extra (pip install 'razor[ray]')")
    import ray

    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           ray="local", **{**MINI_PAR, "methods": ("ppo",)})
    try:
        Experiment(cfg, log=lambda s: None).run_all()
    finally:
        ray.shutdown()
    ray_results = _strip_timing(_results(tmp_path / "run"))
    assert ray_results == {k: v for k, v in _strip_timing(_results(inline_run)).items() if "sft" not in k}
    assert (tmp_path / "run" / "report.md").exists() and (tmp_path / "run" / "logs" / "pi0.log").exists()


def test_graph_waits_for_files_and_catches_a_producer_that_never_writes(tmp_path):
    runner = StageRunner(tmp_path / "exp", {}, log=lambda s: None)
    order = []
    stages = [Stage("make", lambda: runner.run("make", lambda: order.append("make"))),
              Stage("use", lambda: runner.run("use", lambda: order.append("use")), needs=(tmp_path / "x",),
                    producer="make")]
    with pytest.raises(ValueError, match="unknown stages"):
        run_graph([stages[1]], runner)
    run_graph(stages, runner)  # in one process: list order
    assert order == ["make", "use"]


def test_cli_ray_flag_and_workers_parse():
    import tyro

    from eval.experiment import PRESETS
    from scripts.razor import _ray_address_optional

    presets = {name: (name, cfg) for name, cfg in PRESETS.items()}

    def parse(*args):
        return tyro.extras.overridable_config_cli(presets, args=_ray_address_optional(list(args)), prog="razor")

    assert (parse("cpu", "--ray").ray, parse("cpu", "--ray", "--workers", "3").workers) == ("local", 3)
    assert parse("cpu", "--ray", "head:6379").ray == "head:6379" and parse("cpu").ray is None
    assert parse("openvla-7b").stage_gpus == 1.0 and parse("cpu", "--workers", "2").workers == 2
    with pytest.raises(ValueError, match="workers"):
        ExperimentConfig(workers=0)
