"""A miniature RL's Razor experiment end to end (toy tasks, tiny VLA): every artifact, resumption, bad input;
plus smoke runs of scripts/run_eval.py."""

import dataclasses
import importlib.util
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from eval.experiment import PRESETS, Experiment, ExperimentConfig, Pi0OutOfWindow
from eval.report import write_report
from eval.stages import ExperimentMismatch
from rollouts.config import ConfigError

HAS_SFT = importlib.util.find_spec("rollouts.sft") is not None

MINI = dict(pi0_steps=3, pi0_batch_size=8, demos_per_task=2, pi0_new_task_demos=1, updates=2, checkpoint_every=1,
            ppo_num_envs=2, ppo_num_steps=2, ppo_minibatches=1, ppo_epochs=1, sft_demos=2, sft_batch_sizes=(4,), rl_batch_sizes=(2,), rl_trajectories_per_state=2,
            eval_episodes=2, eval_num_envs=1, ppo_env_in_process=True, videos_per_task=1, kl_obs=2, kl_samples_per_obs=1, lora_rank=2)


def test_mini_experiment_produces_every_artifact_and_resumes(tmp_path):
    methods = ("ppo", "sft") if HAS_SFT else ("ppo",)
    # with the openvla-7b preset's memory settings (gradient checkpointing, micro-batches), which must reach training
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           methods=methods, gradient_checkpointing=True, rl_grad_accum_steps=2, sft_grad_accum_steps=2,
                           **MINI)
    logs = []
    report = Experiment(cfg, log=logs.append).run_all()
    run = tmp_path / "run"
    text = report.read_text()
    for png in ("forgetting_vs_kl", "forgetting_vs_predictors", "pareto", "learning_curves"):
        assert (run / "analysis" / f"{png}.png").stat().st_size > 1000 and f"analysis/{png}.png" in text
    assert (run / "analysis" / "points.csv").exists() and (run / "kl_base.npz").exists()
    # every checkpoint's forward KL carries its interval over the held-out observations, in the CSV and the report
    import csv
    rows = [r for r in csv.DictReader((run / "analysis" / "points.csv").open()) if r["method"] != "base"]
    assert rows and all(float(r["kl_forward_se"]) >= 0 for r in rows)
    assert "KL fwd [95% CI]" in text
    for m in methods:
        for step in (1, 2):
            rec = json.loads((run / "evals" / f"{m}_lr0.0003" / f"step_{step:06d}" / "eval.json").read_text())
            assert rec["comparison"]["new_task"] == "toy/reach-side" and rec["kl"]["kl_forward"] >= 0
            assert rec["l2_weight"] >= 0 and (run / "evals" / f"{m}_lr0.0003" / f"step_{step:06d}" / "results.csv").exists()
        # the online monitor logged the same KL as the offline evaluation of the same checkpoint
        online = [json.loads(l) for l in (run / "train" / f"{m}_lr0.0003_kl.jsonl").read_text().splitlines()]
        assert online[-1]["eval/kl_forward"] == pytest.approx(rec["kl"]["kl_forward"], rel=1e-6, abs=1e-9)
    assert list((run / "evals" / "base" / "videos").glob("*.mp4")) and "videos/" in text
    assert not json.loads((run / "evals" / "base" / "eval.json").read_text())["meta"]["do_sample"]  # greedy default
    assert set(json.loads((run / "timings.json").read_text())) >= {"pi0", "eval_base", "kl_base", "report"}
    for m in methods:
        trained = json.loads((run / "stages" / f"train_{m}_lr0.0003.json").read_text())["result"]["config"]
        assert trained["gradient_checkpointing"] and trained["grad_accum_steps"] == 2
        assert not trained["log_kl"]  # no base-model forward per training step: the KL monitor measures the KL

    # rerun: every stage but the report is skipped
    logs.clear()
    Experiment(cfg, log=logs.append).run_all()
    ran = [l for l in logs if l.startswith("[stage]") and l.endswith("...")]
    assert ran == ["[stage] report ..."], ran

    # another config in the same directory is refused
    other = ExperimentConfig(**{**cfg.to_dict(), "updates": 3})
    with pytest.raises(ExperimentMismatch, match="updates"):
        Experiment(other, log=logs.append)

    # a sweep that gains a learning rate runs only the new run's stages (and the report); dropping one is refused
    key, m = ("sft_lrs", "sft") if HAS_SFT else ("ppo_lrs", "ppo")
    logs.clear()
    grown = ExperimentConfig(**{**cfg.to_dict(), key: (3e-4, 1e-3)})
    Experiment(grown, log=logs.append).run_all()
    ran = sorted(l for l in logs if l.startswith("[stage]") and l.endswith("..."))
    new_stages = [f"{kind}_{m}_lr0.001_step{s:06d}" for kind in ("eval", "predict") for s in (1, 2)]
    assert ran == sorted(f"[stage] {name} ..." for name in (f"train_{m}_lr0.001", "report", *new_stages)), ran
    assert json.loads((run / "experiment.json").read_text())[key] == [3e-4, 1e-3]
    assert f"{m}_lr0.001" in (run / "report.md").read_text()
    with pytest.raises(ExperimentMismatch, match=key):
        Experiment(ExperimentConfig(**{**cfg.to_dict(), key: (1e-3,)}), log=logs.append)


def test_bad_experiment_configs(tmp_path):
    with pytest.raises(ValueError, match="also a prior task"):
        ExperimentConfig(prior_tasks=("toy/reach-side",), new_task="toy/reach-side")
    with pytest.raises(ValueError, match="unknown methods"):
        ExperimentConfig(methods=("dpo",))
    with pytest.raises(ValueError, match="multiple of rl_trajectories_per_state"):
        ExperimentConfig(rl_batch_sizes=(6,), rl_trajectories_per_state=4)
    with pytest.raises(ValueError, match="pi0_threads must be >= 0"):
        ExperimentConfig(pi0_threads=-1)
    with pytest.raises(ValueError, match="sft_grad_accum_steps=3 must divide"):
        ExperimentConfig(sft_batch_sizes=(16, 32), sft_grad_accum_steps=3)
    ppo = dict(methods=("ppo",), ppo_num_envs=8, ppo_num_steps=150, ppo_minibatches=4)  # minibatch 300
    with pytest.raises(ValueError, match="rl_grad_accum_steps=8 must divide PPO's minibatch of 300"):
        ExperimentConfig(**ppo, rl_grad_accum_steps=8)
    ExperimentConfig(**ppo, rl_grad_accum_steps=6)
    ExperimentConfig(**{**ppo, "methods": ("reinforce",)}, rl_grad_accum_steps=8)  # no PPO run: no constraint
    with pytest.raises(KeyError, match="toy/reach-side"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "a"), new_task="toy/reach-sid"), log=lambda s: None)
    with pytest.raises(ValueError, match="checkpoint"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "b"), model="/no/such/openvla-7b"), log=lambda s: None)
    with pytest.raises(ValueError, match="no scripted expert"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "c"), new_task="maniskill/PokeCube"), log=lambda s: None)
    assert not any((tmp_path / d).exists() for d in "abc")  # a failed check claims no run directory
    with pytest.raises(ValueError, match="warmup-new-task-demos 0"):
        Experiment(ExperimentConfig(run_dir=str(tmp_path / "d"), new_task="maniskill/PokeCube", methods=("ppo",),
                                    warmup=True), log=lambda s: None)
    with pytest.raises(ValueError, match="warmup_steps"):
        ExperimentConfig(warmup=True, warmup_steps=0)
    for window in ((0.6, 0.2), (0.2, 1.5), (0.5,)):
        with pytest.raises(ValueError, match="pi0_window must be two success rates"):
            ExperimentConfig(pi0_window=window)
    with pytest.raises(ValueError, match="pi0_draws must be >= 1"):
        ExperimentConfig(pi0_draws=0, pi0_window=(0.2, 0.6))
    with pytest.raises(ValueError, match="--pi0-window LOW HIGH"):
        ExperimentConfig(pi0_draws=3)
    with pytest.raises(ValueError, match="--pi0-draws 1"):
        ExperimentConfig(model=str(tmp_path), pi0_draws=3, pi0_window=(0.2, 0.6))
    for share, demos in ((0.0, 1), (1.0, 1), (0.1, 0)):
        with pytest.raises(ValueError, match="pi0_new_task_share must lie in"):
            ExperimentConfig(pi0_new_task_share=share, pi0_new_task_demos=demos)


def test_failed_check_does_not_block_the_corrected_rerun(tmp_path):
    model = tmp_path / "openvla-7b"  # only its existence matters before the stages run
    model.mkdir()
    preset = PRESETS["openvla-7b"]
    cfg = ExperimentConfig(**{**preset.to_dict(), "model": str(model), "run_dir": str(tmp_path / "run"),
                              "new_task": "maniskill/PokeCube", "warmup": False})
    with pytest.raises(ConfigError, match="SFT needs demos"):  # the new task has no scripted expert
        Experiment(cfg, log=lambda s: None)
    Experiment(ExperimentConfig(**{**cfg.to_dict(), "methods": ("ppo",)}), log=lambda s: None)
    bare = ExperimentConfig(**{**preset.to_dict(), "run_dir": str(tmp_path / "bare")})  # `razor openvla-7b`
    with pytest.raises(ConfigError, match="--model /path/to/openvla-7b"):
        Experiment(bare, log=lambda s: None)
    assert not (tmp_path / "bare").exists()


def test_run_eval_script_smoke(tmp_path, capsys):
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
    # users' errors: the message alone, exit status 2 (scripts/cli.py)
    with pytest.raises(SystemExit) as exit_info:
        main(Args(model="tiny", out=str(tmp_path / "base"), suite="toy", tasks=("toy/color-side",), episodes=2))
    assert exit_info.value.code == 2 and "eval.json exists; pass" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(Args(model="tiny", out=str(tmp_path / "x"), suite="toy", tasks=("toy/color-side",), episodes=2,
                  unnorm_key="bridge_orig", overwrite=True))
    assert exit_info.value.code == 2 and "unnorm_key 'bridge_orig'" in capsys.readouterr().err


@pytest.mark.slow  # ~10 min on the 2-core machine: each Bridge env takes 10-40 s to build on lavapipe
def test_mini_bridge_experiment_produces_every_artifact(tmp_path, monkeypatch):
    """The openvla-7b experiment in miniature (the bridge-mini preset): expert demos, pi0 by behaviour cloning with
    bridge_orig statistics, the warm-up merged into pi0, PPO and SFT, evaluations, report."""
    from envs import maniskill
    from eval.experiment import PRESETS
    from vla.actions import ActionStats

    bridge_assets = Path(__file__).resolve().parents[2] / "shared" / "assets" / "maniskill-bridge"
    monkeypatch.setenv("MS_ASSET_DIR", os.environ.get("MS_ASSET_DIR", str(bridge_assets)))
    try:
        maniskill.check_bridge_assets(maniskill.BRIDGE_TASKS[0], maniskill.configure_asset_dir())
    except maniskill.MissingAssetsError as error:
        pytest.skip(str(error))
    cfg = dataclasses.replace(PRESETS["bridge-mini"], run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"))
    report = Experiment(cfg, log=lambda s: None).run_all()
    run = tmp_path / "run"
    assert "bridge-mini" in report.read_text() and (run / "kl_base.npz").exists()
    # the warm-up: a mixture of both tasks' demos, SFT checkpoints, a merged full checkpoint with pi0's statistics
    mixture = json.loads((run / "warmup" / "demos" / "meta.json").read_text())
    assert set(mixture["task_id"]) == {cfg.new_task, *cfg.prior_tasks} and mixture["action_stats"]["q99"]
    pi0 = json.loads(Path(json.loads((run / "stages" / "pi0.json").read_text())["result"]["path"], "config.json")
                     .read_text())["norm_stats"]
    warmed = json.loads((run / "warmup" / "pi0" / "config.json").read_text())["norm_stats"]
    assert warmed == pi0 and "bridge_orig" in warmed
    ActionStats.from_norm_stats(warmed, "bridge_orig")
    for method in cfg.methods:
        rec = json.loads((run / "evals" / f"{method}_lr0.0001" / "step_000002" / "eval.json").read_text())
        assert set(rec["tasks"]) == {cfg.new_task, *cfg.prior_tasks} and rec["kl"]["kl_forward"] >= 0
        adapter = run / "train" / f"{method}_lr0.0001" / "checkpoints" / "step_00000002" / "adapter"
        assert json.loads((adapter / "norm_stats.json").read_text()) == warmed  # fine-tuned: same un-normalization
    assert list((run / "evals" / "base" / "videos").glob("*.mp4"))


@pytest.mark.slow  # ~1 min here: a PPO update and a policy load on top of the KL timings
def test_bench_eval_smoke():
    from scripts.bench_eval import Args, main

    out = main(Args(n_obs=4, ppo_updates=1, episodes=2, num_envs=1, metaworld=False, repeats=1,
                    tp_task="toy/reach-side", tp_image_size=32, tp_envs=2, tp_episodes=3, tp_steps=4,
                    startup_tasks=("toy/reach-side", "toy/color-side")))
    assert out["kl_measure_s"] > 0 and out["ppo_update_s"] > 0 and out["suite_toy/reach-side_episodes_per_s"] > 0
    assert out["a_ceiling_steps_per_s"] > 0 and out["b_suite_over_a"] > 0 and out["b_suite_overlap_over_a"] > 0
    assert out["b0_free_actor_over_a"] > 0
    assert out["c_collect_over_a"] > 0 and out["startup_fresh_s"] > 0 and out["startup_switched_s"] > 0


def test_cpu_busy_counts_a_spinning_core():
    from scripts.bench_eval import CpuBusy

    with CpuBusy(interval=0.05) as cpu:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 1.0:  # one core spinning
            pass
        t1 = time.perf_counter()
        time.sleep(1.0)
        t2 = time.perf_counter()
    spinning, sleeping = cpu.busy(t0, t1), cpu.busy(t1, t2)
    assert 0.8 / os.cpu_count() <= spinning <= 1 and 0 <= sleeping <= 1  # other processes may add to either
    assert cpu.busy(t2 + 10, t2 + 11) is None  # no samples there


def test_adapter_that_does_not_fit_the_base_is_a_clear_error(tmp_path):
    from eval.evaluate import load_policy
    from vla.policy import VLAPolicy

    pol = VLAPolicy.from_pretrained("tiny", seed=0, n_action_bins=16)
    pol.add_lora()
    pol.save_adapters(tmp_path / "adapter")
    with pytest.raises(ValueError, match="does not fit base model small"):
        load_policy("small", tmp_path / "adapter")


def test_parity_preset_in_miniature_produces_every_artifact(tmp_path):
    import dataclasses

    from eval.experiment import PRESETS

    cfg = dataclasses.replace(
        PRESETS["parity"], preset="parity-mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
        demos_per_task=4, pi0_new_task_demos=2, pi0_steps=3, pi0_batch_size=8, reinforce_lrs=(1e-3,), grpo_lrs=(1e-3,),
        sft_lrs=(1e-3,), rft_lrs=(1e-3,), rl_batch_sizes=(4,), rl_trajectories_per_state=2, sft_batch_sizes=(2, 4),
        updates=2, checkpoint_every=1, sft_updates=2, sft_checkpoint_every=1, sft_demos=4, rft_episodes=32,
        eval_episodes=6, kl_obs=2, kl_samples_per_obs=1, lora_rank=2)
    report = Experiment(cfg, log=lambda s: None).run_all()
    run = tmp_path / "run"
    names = ["reinforce_lr0.001", "grpo_lr0.001", "sft_lr0.001_b2", "sft_lr0.001_b4", "sft+kl_lr0.001_b2",
             "sft+kl_lr0.001_b4", "rft_lr0.001_b2", "rft_lr0.001_b4"]
    for name in names:
        for step in (1, 2):
            step_dir = run / "evals" / name / f"step_{step:06d}"
            predictors = json.loads((step_dir / "predictors.json").read_text())["predictors"]
            assert (step_dir / "eval.json").exists() and predictors["fisher_l2"] >= 0
            assert predictors["kl_forward_visited"] >= 0 and predictors["act_l2"] >= 0
    # the arms are what they say: binary reward and groups for the RL arms, KL for sft+kl, pi0's own data for rft
    train = {n: json.loads((run / "stages" / f"train_{n}.json").read_text())["result"]["config"] for n in names}
    assert train["reinforce_lr0.001"]["reward"] == "sparse" and train["reinforce_lr0.001"]["group_size"] == 2
    assert train["reinforce_lr0.001"]["kl_coef"] == 0 and train["grpo_lr0.001"]["reward"] == "sparse"
    assert train["sft+kl_lr0.001_b2"]["kl_coef"] == 0.1 and train["sft_lr0.001_b2"]["kl_coef"] == 0
    assert train["rft_lr0.001_b2"]["dataset"] == str(run / "rft_data")
    assert train["sft_lr0.001_b4"]["dataset"].endswith("ParityOneSolutionExpert")
    assert (run / "fisher.safetensors").exists()
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert len(analysis["study"]["sentences"]) == 3
    assert set(analysis["study"]["r2_all"]) >= {"kl_forward", "fisher_l2", "act_l1", "kl_forward_visited"}
    text = report.read_text()
    assert text.index("## Verdict") < text.index("## Set-up")
    for heading in ("Predictors of forgetting", "within 2 points of the Pareto frontier", "## Arms",
                    "exponential R² [95% CI]", "forgetting [95% CI]"):
        assert heading in text, heading


def test_pi0_keeps_the_action_statistics_it_was_trained_with(tmp_path):
    """With unnorm_key, pi0's behaviour cloning normalizes the demo actions by their own q01/q99 and saves those
    statistics in the checkpoint, so that its actions un-normalize back into env units."""
    from envs.demos import generate_demos
    from eval.pretrain import PretrainConfig, load_demo_steps, pretrain
    from vla.policy import VLAPolicy

    generate_demos("toy/reach-side", 2, tmp_path / "demos", log=lambda s: None)
    data = load_demo_steps([tmp_path / "demos"])
    data["actions"][:, :6] *= 0.03  # env units unlike [-1, 1], as Bridge actions are
    pretrain(PretrainConfig(steps=2, batch_size=4, unnorm_key="demo"), data, tmp_path / "pi0", log=lambda s: None)
    stats = VLAPolicy.from_pretrained(tmp_path / "pi0").action_stats("demo")
    np.testing.assert_allclose(stats.q99, np.quantile(data["actions"], 0.99, axis=0), atol=1e-6)
    assert np.abs(stats.normalize(data["actions"])[:, :6]).max() <= 1.0 and not stats.mask[6]


def test_pi0_data_mixture_draws_each_dataset_at_its_weight():
    from eval.pretrain import step_probabilities

    dataset = np.array([0, 0, 0, 1, 2, 2])
    assert step_probabilities(dataset, ()) is None  # every step equally likely
    np.testing.assert_allclose(step_probabilities(dataset, (0.25, 0.5, 0.25)),
                               [1 / 12, 1 / 12, 1 / 12, 1 / 2, 1 / 8, 1 / 8])
    np.testing.assert_allclose(step_probabilities(dataset, (2, 0, 2)), [1 / 6] * 3 + [0] + [1 / 4] * 2)
    drawn = dataset[np.random.default_rng(0).choice(6, 40_000, p=step_probabilities(dataset, (0.7, 0.1, 0.2)))]
    np.testing.assert_allclose(np.bincount(drawn) / len(drawn), [0.7, 0.1, 0.2], atol=0.01)
    for weights in ((1, 1), (1, -1, 1), (0, 0, 0)):
        with pytest.raises(ValueError, match="one weight >= 0 per dataset"):
            step_probabilities(dataset, weights)
    with pytest.raises(ValueError, match="has no steps"):
        step_probabilities(np.array([0, 0, 2]), (1, 1, 1))


def test_pi0_pretraining_draws_its_batches_by_the_dataset_weights(tmp_path, monkeypatch):
    from envs.demos import generate_demos
    from eval.pretrain import PretrainConfig, load_demo_steps, pretrain
    from vla.policy import VLAPolicy

    dirs = [tmp_path / "color", tmp_path / "reach"]
    for task, d in zip(("toy/color-side", "toy/reach-side"), dirs):
        generate_demos(task, 2, d, log=lambda s: None)
    data = load_demo_steps(dirs)
    data["instructions"][data["dataset"] == 0] = "first dataset"  # the toy tasks share their instructions
    seen = []
    real = VLAPolicy.preprocess
    def recording(self, images, instructions):
        seen.extend(instructions)
        return real(self, images, instructions)

    monkeypatch.setattr(VLAPolicy, "preprocess", recording)
    pretrain(PretrainConfig(steps=3, batch_size=8, dataset_weights=(0.0, 1.0)), data, tmp_path / "pi0",
             log=lambda s: None)
    assert len(seen) == 24 and "first dataset" not in seen  # weight 0: never drawn
    seen.clear()
    pretrain(PretrainConfig(steps=3, batch_size=8, dataset_weights=(1.0, 0.0)), data, tmp_path / "pi0b",
             log=lambda s: None)
    assert seen == ["first dataset"] * 24


def test_pi0_new_task_share_sets_the_mixture_of_pi0s_batches(tmp_path):
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           prior_tasks=("toy/color-side", "toy/parity"), pi0_new_task_share=0.2, **MINI)
    Experiment(cfg, log=lambda s: None).pi0()
    record = json.loads((tmp_path / "run" / "stages" / "pi0.json").read_text())["result"]
    assert record["config"]["dataset_weights"] == [0.4, 0.4, 0.2]  # prior tasks share the rest equally


def test_pi0_pretrains_on_pi0_threads_and_gives_the_others_back(tmp_path, monkeypatch):
    # pi0 runs alone (every later stage waits for it), so it may use every core; the stages after it keep theirs
    import torch

    import eval.pretrain

    seen = []
    real = eval.pretrain.pretrain
    def recording(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(eval.pretrain, "pretrain", recording)
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           pi0_threads=3, **MINI)
    assert torch.get_num_threads() == 1  # the suite's per-test setting (conftest)
    Experiment(cfg, log=lambda s: None).pi0()
    assert seen == [3] and torch.get_num_threads() == 1


def test_pi0_draws_keep_the_first_pi0_inside_the_window(tmp_path):
    # MINI's pi0 barely trains, so its new-task success is whatever its random init gives: 4 episodes make it
    # 0, 0.25, ..., 1 and the draws (other seeds) differ
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "all"), cache_dir=str(tmp_path / "cache"),
                           pi0_draws=4, pi0_window=(0.3, 0.45), **{**MINI, "eval_episodes": 4})
    experiment = Experiment(cfg, log=lambda s: None)
    first_draw = experiment.pi0()  # no draw can lie in (0.25, 0.5): all four are screened, the first is kept
    draws = json.loads((tmp_path / "all" / "stages" / "pi0.json").read_text())["result"]["draws"]
    assert [d["seed"] for d in draws] == [0, 1000, 2000, 3000] and len({d["path"] for d in draws}) == 4
    stages = tmp_path / "all" / "stages"  # each later draw demonstrates the new task anew, with its own seed
    assert all((stages / f"demos_toy__reach-side_n1_s{seed}.json").exists() for seed in (1000, 2000, 3000))
    assert first_draw == draws[0]["path"]
    # each screening is the new-task part of eval_base: the same number for the kept draw
    experiment.eval_base(first_draw)
    assert experiment.pi0_new_success() == (draws[0]["successes"], 4)
    with pytest.raises(Pi0OutOfWindow, match="more --pi0-draws"):
        experiment.check_pi0_window()
    report = write_report(tmp_path / "all", config=cfg.to_dict()).read_text()
    assert "seed 3000: " in report and "no draw lay inside [0.3, 0.45]: pi0 is the first" in report

    rates = [d["successes"] / 4 for d in draws]
    later = next((i for i, r in enumerate(rates) if r != rates[0]), None)
    assert later is not None, f"every draw solved {rates[0]}: choose MINI settings whose draws differ"
    window = (rates[later], rates[later])  # excludes the first draw, holds draw `later` (and maybe others after it)
    picked = Experiment(dataclasses.replace(cfg, run_dir=str(tmp_path / "pick"), pi0_window=window),
                        log=lambda s: None).pi0()
    kept = json.loads((tmp_path / "pick" / "stages" / "pi0.json").read_text())["result"]
    assert picked == draws[later]["path"] and kept["draws"] == draws[: later + 1]  # cached pi0s, same screening
    pick = Experiment(dataclasses.replace(cfg, run_dir=str(tmp_path / "pick"), pi0_window=window), log=lambda s: None)
    pick.eval_base(picked)
    report = write_report(tmp_path / "pick", config=pick.cfg.to_dict()).read_text()
    assert f"pi0 is draw {later + 1}, the first inside" in report


@pytest.mark.skipif(not HAS_SFT, reason="needs rollouts/sft.py")
def test_seeds_run_one_experiment_each_and_pool_them(tmp_path, capsys):
    from scripts.razor import _split_seeds, run_seeds

    assert _split_seeds(["quick", "--seeds", "0", "2", "--updates", "2"]) == (["quick", "--updates", "2"], [0, 2])
    for bad in (["--seeds", "1"], ["--seeds", "1", "1"], ["--seeds", "a", "b"]):
        with pytest.raises(ConfigError, match="--seeds"):
            _split_seeds(bad)
    cfg = ExperimentConfig(preset="mini", run_dir=str(tmp_path / "run"), cache_dir=str(tmp_path / "cache"),
                           methods=("reinforce", "sft"), predictors=False, eval_sample=True, **MINI)
    run = tmp_path / "run"
    # with 2 episodes pi0's success is 0, 0.5 or 1: outside [0.2, 0.3] for every seed, so none is fine-tuned
    with pytest.raises(ConfigError, match=r"only 0 of seeds \[0, 1\] gave a pi0 inside"):
        run_seeds(dataclasses.replace(cfg, pi0_window=(0.2, 0.3)), [0, 1])
    assert (run / "seed_1" / "evals" / "base" / "eval.json").exists() and not (run / "seed_1" / "train").exists()
    # a wider window on the same directories resumes them (pi0 and its evaluation are not redone)
    report = run_seeds(dataclasses.replace(cfg, pi0_window=(0.0, 1.0)), [0, 1])
    assert json.loads((run / "seed_0" / "stages" / "pi0_window_0_1.json").read_text())["result"]["window"] == [0, 1]
    # ... and records the changed window where stage processes (--workers, Ray) read the config
    assert json.loads((run / "seed_0" / "experiment.json").read_text())["pi0_window"] == [0.0, 1.0]
    for seed in (0, 1):
        saved = json.loads((run / f"seed_{seed}" / "experiment.json").read_text())
        assert saved["seed"] == seed and (run / f"seed_{seed}" / "report.md").exists()
    pi0s = {json.loads((run / f"seed_{s}" / "stages" / "pi0.json").read_text())["result"]["path"] for s in (0, 1)}
    assert len(pi0s) == 2  # each seed trains its own pi0
    analysis = json.loads((run / "analysis" / "analysis.json").read_text())
    assert [e["seed"] for e in analysis["experiments"]] == [0, 1] and analysis["study"]["n_all"] == 8
    text = report.read_text()
    assert "seeds [0, 1] pooled" in text and "(seed_0/report.md)" in text
    # every evaluation sampled its actions (eval_sample), and says so; a greedy base does not compare with them
    from eval.suite import EvalRecord, check_same_tasks

    base = EvalRecord.load(run / "seed_0" / "evals" / "base")
    tuned = EvalRecord.load(run / "seed_0" / "evals" / "sft_lr0.0003" / "step_000002")
    assert base.meta["do_sample"] and tuned.meta["do_sample"]
    assert "Actions: sampled" in (run / "seed_0" / "report.md").read_text()
    base.meta["do_sample"] = False
    with pytest.raises(ValueError, match="greedy actions, this checkpoint with sampled"):
        check_same_tasks(base, tuned)
    # a directory holding one experiment is not a place for the seeds' directories
    with pytest.raises(ConfigError, match="single experiment"):
        run_seeds(dataclasses.replace(cfg, run_dir=str(run / "seed_0")), [0, 1])
