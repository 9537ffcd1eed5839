"""A miniature RL's Razor experiment end to end (toy tasks, tiny VLA): every artifact, resumption, bad input;
plus smoke runs of scripts/run_eval.py."""

import importlib.util
import json

import pytest

from eval.experiment import Experiment, ExperimentConfig
from eval.stages import ExperimentMismatch

HAS_SFT = importlib.util.find_spec("rollouts.sft") is not None

MINI = dict(pi0_steps=3, pi0_batch_size=8, demos_per_task=2, pi0_new_task_demos=1, updates=2, checkpoint_every=1,
            ppo_num_envs=2, ppo_num_steps=2, ppo_minibatches=1, ppo_epochs=1, sft_demos=2, sft_batch_size=4,
            eval_episodes=2, eval_num_envs=1, ppo_env_in_process=True, videos_per_task=1, kl_obs=2, kl_samples_per_obs=1, lora_rank=2)


def test_mini_experiment_produces_every_artifact_and_resumes(tmp_path):
    methods = ("ppo", "sft") if HAS_SFT else ("ppo",)
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           methods=methods, **MINI)
    logs = []
    report = Experiment(cfg, log=logs.append).run_all()
    run = tmp_path / "run"
    text = report.read_text()
    for png in ("forgetting_vs_kl", "forgetting_vs_predictors", "pareto", "learning_curves"):
        assert (run / "analysis" / f"{png}.png").stat().st_size > 1000 and f"analysis/{png}.png" in text
    assert (run / "analysis" / "points.csv").exists() and (run / "kl_base.npz").exists()
    for m in methods:
        for step in (1, 2):
            rec = json.loads((run / "evals" / f"{m}_lr0.0003" / f"step_{step:06d}" / "eval.json").read_text())
            assert rec["comparison"]["new_task"] == "toy/reach-side" and rec["kl"]["kl_forward"] >= 0
            assert rec["l2_weight"] >= 0 and (run / "evals" / f"{m}_lr0.0003" / f"step_{step:06d}" / "results.csv").exists()
        # the online monitor logged the same KL as the offline evaluation of the same checkpoint
        online = [json.loads(l) for l in (run / "train" / f"{m}_lr0.0003_kl.jsonl").read_text().splitlines()]
        assert online[-1]["eval/kl_forward"] == pytest.approx(rec["kl"]["kl_forward"], rel=1e-6, abs=1e-9)
    assert list((run / "evals" / "base" / "videos").glob("*.mp4")) and "videos/" in text
    assert set(json.loads((run / "timings.json").read_text())) >= {"pi0", "eval_base", "kl_base", "report"}

    # rerun: every stage but the report is skipped
    logs.clear()
    Experiment(cfg, log=logs.append).run_all()
    ran = [l for l in logs if l.startswith("[stage]") and l.endswith("...")]
    assert ran == ["[stage] report ..."], ran

    # another config in the same directory is refused
    other = ExperimentConfig(**{**cfg.to_dict(), "updates": 3})
    with pytest.raises(ExperimentMismatch, match="updates"):
        Experiment(other, log=logs.append)


def test_bad_experiment_configs(tmp_path):
    with pytest.raises(ValueError, match="also a prior task"):
        ExperimentConfig(prior_tasks=("toy/reach-side",), new_task="toy/reach-side")
    with pytest.raises(ValueError, match="unknown methods"):
        ExperimentConfig(methods=("dpo",))
    with pytest.raises(KeyError, match="toy/reach-side"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "a"), new_task="toy/reach-sid"), log=lambda s: None)
    with pytest.raises(ValueError, match="checkpoint"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "b"), model="/no/such/openvla-7b"), log=lambda s: None)
    with pytest.raises(ValueError, match="no scripted expert"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "c"), new_task="simpler/PutCarrotOnPlateInScene"),
                   log=lambda s: None)


def test_run_eval_script_smoke(tmp_path):
    from scripts.run_eval import Args, main

    base = main(Args(model="tiny", out=str(tmp_path / "base"), suite="toy", tasks=("toy/color-side",),
                     new_task="toy/reach-side", episodes=2, num_envs=1, method="base"))
    assert set(base.tasks) == {"toy/color-side", "toy/reach-side"}
    from vla.policy import VLAPolicy

    pol = VLAPolicy.from_pretrained("tiny", seed=0)
    pol.add_lora()
    pol.save_adapters(tmp_path / "adapter")
    rec = main(Args(model="tiny", out=str(tmp_path / "ft"), suite="toy", tasks=("toy/color-side",),
                    new_task="toy/reach-side", episodes=2, num_envs=1, adapter=str(tmp_path / "adapter"),
                    base_record=str(tmp_path / "base"), kl_obs=2))
    assert rec.kl["kl_forward"] == 0.0  # a fresh adapter (B = 0) is pi0 exactly
    assert rec.comparison["avg_forgetting"] == 0.0  # same weights, same seeds, greedy decoding
    with pytest.raises(FileExistsError):
        main(Args(model="tiny", out=str(tmp_path / "base"), suite="toy", tasks=("toy/color-side",), episodes=2))
    with pytest.raises((KeyError, ValueError), match="unnorm_key"):
        main(Args(model="tiny", out=str(tmp_path / "x"), suite="toy", tasks=("toy/color-side",), episodes=2,
                  unnorm_key="bridge_orig", overwrite=True))


@pytest.mark.slow  # ~1 min here: a PPO update and a policy load on top of the KL timings
def test_bench_eval_smoke():
    from scripts.bench_eval import Args, main

    out = main(Args(n_obs=4, ppo_updates=1, episodes=2, num_envs=1, metaworld=False, repeats=1,
                    tp_task="toy/reach-side", tp_image_size=32, tp_envs=2, tp_episodes=3, tp_steps=4))
    assert out["kl_measure_s"] > 0 and out["ppo_update_s"] > 0 and out["suite_toy/reach-side_episodes_per_s"] > 0
    assert out["a_ceiling_steps_per_s"] > 0 and out["b_suite_over_a"] > 0 and out["b_suite_overlap_over_a"] > 0
    assert out["c_collect_over_a"] > 0


def test_adapter_that_does_not_fit_the_base_is_a_clear_error(tmp_path):
    from eval.evaluate import load_policy
    from vla.policy import VLAPolicy

    pol = VLAPolicy.from_pretrained("tiny", seed=0, n_action_bins=16)
    pol.add_lora()
    pol.save_adapters(tmp_path / "adapter")
    with pytest.raises(ValueError, match="does not fit base model small"):
        load_policy("small", tmp_path / "adapter")
