"""Weights & Biases in offline mode: a training run logs the same metric names and values as metrics.jsonl against
`update`, with its config and the id a resume reuses; an evaluation logs its results table and videos."""

from __future__ import annotations

import pytest
from wandb_records import offline_run

from rollouts import ppo
from rollouts.logger import read_metrics
from rollouts.tracking import WANDB_ID_FILE

pytest.importorskip("wandb")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


def _cfg(run_dir, **overrides) -> ppo.PPOConfig:
    kwargs = dict(model="tiny", n_action_bins=8, task="toy/color-side", env_in_process=True, num_envs=8, num_steps=1,
                  update_epochs=1, num_minibatches=1, total_updates=2, lora_rank=4, progress=False, torch_threads=1,
                  run_dir=str(run_dir), wandb=True, wandb_mode="offline", wandb_group="sweep-a")  # fmt: skip
    return ppo.PPOConfig(**{**kwargs, **overrides})


def test_training_logs_the_jsonl_metrics_and_config_to_wandb_offline(tmp_path):
    run_dir = tmp_path / "run"
    ppo.train(_cfg(run_dir))
    logged = offline_run(run_dir)
    assert logged["run"].run_group == "sweep-a" and logged["run"].project == "razor"
    config = logged["config"]
    assert config["learning_rate"] == 1e-4 and config["task"] == "toy/color-side" and config["__class__"] == "PPOConfig"
    rows = [r for r in logged["history"] if "losses/loss" in r]
    jsonl = read_metrics(run_dir)
    assert [r["update"] for r in rows] == [r["update"] for r in jsonl] == [1, 2]
    for w, j in zip(rows, jsonl):
        names = {k for k, v in j.items() if "/" in k and isinstance(v, float)}
        assert names <= set(w)  # the same names as TensorBoard/JSONL
        for name in names:
            assert w[name] == pytest.approx(j[name])
    run_id = (run_dir / WANDB_ID_FILE).read_text()
    assert logged["run"].run_id == run_id


def test_evaluation_logs_its_table_and_videos(tmp_path):
    from scripts.run_eval import Args, main

    out = tmp_path / "eval"
    main(Args(model="tiny", out=str(out), suite="toy", tasks=("toy/color-side",), episodes=2, num_envs=1,
              videos_per_task=1, wandb=True, wandb_mode="offline"))  # fmt: skip
    logged = offline_run(out)
    (row,) = [r for r in logged["history"] if "eval/results" in r]
    assert row["eval/results"]["_type"] == "table-file" and row["eval/results"]["nrows"] == 1
    assert row["eval/success/toy/color-side"] in (0.0, 0.5, 1.0)
    videos = [k for k in row if k.startswith("videos/")]
    assert videos and all(row[k]["_type"] == "video-file" for k in videos)
    assert logged["config"]["suite"] == "toy"


def test_experiment_logs_training_and_every_evaluation_to_one_wandb_group(tmp_path):
    from eval.experiment import Experiment, ExperimentConfig
    from tests.test_eval_experiment import MINI

    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "exp"), cache_dir=str(tmp_path / "cache"),
                           methods=("ppo",), wandb=True, wandb_mode="offline", progress=False, **MINI)
    Experiment(cfg, log=lambda s: None).run_all()
    evals = [tmp_path / "exp" / "evals" / "base"] + sorted((tmp_path / "exp" / "evals" / "ppo_lr0.0003").glob("step_*"))
    assert len(evals) == 3
    for out in evals:
        logged = offline_run(out)
        assert logged["run"].run_group == "exp" and logged["run"].job_type == "eval"
        (row,) = [r for r in logged["history"] if "eval/results" in r]
        assert row["eval/success/toy/reach-side"] in (0.0, 0.5, 1.0)
    train = offline_run(tmp_path / "exp" / "train" / "ppo_lr0.0003")
    assert train["run"].run_group == "exp"
