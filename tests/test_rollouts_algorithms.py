"""rollouts/ algorithms on the tiny VLA and the toy task: loss pieces, collection, learning, KL, bad input, scripts.

Everything runs on CPU with the random-init `tiny` preset (8 action bins) and in-process toy envs, seeded.
"""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import envs
from rollouts import checkpoint, grpo, ppo, reinforce, sft
from rollouts.collect import collect, values_of
from rollouts.config import ConfigError
from rollouts.logger import read_metrics
from rollouts.presets import RL_PRESETS, SFT_PRESETS
from rollouts.run import NonFiniteLossError, build_policy
from vla.policy import VLAPolicy

TINY = dict(progress=False, torch_threads=1)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_rl(algorithm: str, tmp_path: Path, **overrides):
    cfg = RL_PRESETS[algorithm]["tiny"][1]
    return replace(cfg, run_dir=str(tmp_path / algorithm), **{**TINY, **overrides})


def trained_policy(run_dir: Path, n_action_bins: int = 8) -> VLAPolicy:
    policy = VLAPolicy.from_pretrained("tiny", n_action_bins=n_action_bins)
    policy.load_adapters(checkpoint.latest_checkpoint(run_dir) / "adapter")
    return policy.eval()


def success_rate(policy: VLAPolicy, episodes: int = 256, task: str = "toy/color-side", seed: int = 10**6) -> float:
    """Sampled success over `episodes` seeded episodes (one per env)."""
    vec = envs.make_vec(task, episodes, seed=seed, in_process=True)
    try:
        horizon = envs.get_spec(task).max_episode_steps
        gen = torch.Generator().manual_seed(0)
        rollout = collect(policy, vec, horizon, [seed], with_values=False, stop_when_all_done=True, generator=gen)
    finally:
        vec.close()
    return float(np.mean([e["success_once"] for e in rollout.episodes]))


# ---- loss pieces against hand-computed values --------------------------------------------------------------------
def _loss_inputs():
    new = torch.zeros(2, 7)
    new[0, 0], new[1, 0] = math.log(1.5), math.log(0.5)  # joint ratios 1.5 and 0.5
    old = torch.zeros(2, 7)
    adv = torch.tensor([1.0, -2.0])
    new_v, old_v, ret = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5]), torch.tensor([2.0, 0.0])
    entropy = torch.tensor([[0.5] * 7, [1.0] * 7])
    return new, old, adv, new_v, old_v, ret, entropy


def test_ppo_losses_match_hand_computed_values():
    cfg = ppo.PPOConfig(clip_coef=0.2, value_clip=0.2, ent_coef=0.01, vf_coef=0.5, kl_coef=0.5)
    out = ppo.ppo_losses(*_loss_inputs(), cfg, kl_pi0=torch.tensor([0.1, 0.3]))
    # pg: row 0 max(-1.5, -1.2) = -1.2; row 1 max(2 * 0.5, 2 * 0.8) = 1.6 -> mean 0.2
    # v (clipped): v_clip = [0.7, 0.3]; row 0 max(1, 1.69), row 1 max(0, 0.09) -> 0.5 * mean(1.69, 0.09) = 0.445
    # approx_kl = mean((r - 1) - log r) = ((0.5 - ln 1.5) + (-0.5 - ln 0.5)) / 2; clipfrac 1; entropy mean(3.5, 7)
    expected = dict(pg_loss=0.2, v_loss=0.445, entropy=5.25, kl_pi0=0.2, clipfrac=1.0,
                    approx_kl=((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5))) / 2,
                    loss=0.2 - 0.01 * 5.25 + 0.5 * 0.445 + 0.5 * 0.2)  # fmt: skip
    for key, value in expected.items():
        assert float(out[key]) == pytest.approx(value, abs=1e-6), key


def test_ppo_value_loss_variants_and_per_token_ratio():
    inputs = _loss_inputs()
    mse = ppo.ppo_losses(*inputs, ppo.PPOConfig(value_loss="mse"))
    huber = ppo.ppo_losses(*inputs, ppo.PPOConfig(value_loss="huber", huber_delta=1.0))
    assert float(mse["v_loss"]) == pytest.approx(0.25)  # 0.5 * mean(1, 0)
    assert float(huber["v_loss"]) == pytest.approx(0.25)  # smooth L1 at |e| = delta: 0.5 e^2 / delta; mean(0.5, 0)
    per_token = ppo.ppo_losses(*inputs, ppo.PPOConfig(per_token_ratio=True))
    # 14 token terms: row 0 [-1.2, -1 x 6], row 1 [1.6, 2 x 6]
    assert float(per_token["pg_loss"]) == pytest.approx((-1.2 - 6 + 1.6 + 12) / 14)
    assert float(per_token["clipfrac"]) == pytest.approx(2 / 14)


def test_kl_to_base_and_explained_variance_by_hand():
    base = torch.log(torch.tensor([0.5, 0.5])).expand(1, 7, 2)
    logits = torch.log(torch.tensor([0.25, 0.75])).expand(1, 7, 2)
    per_token = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert float(ppo.kl_to_base(base, logits)) == pytest.approx(7 * per_token, abs=1e-6)
    assert ppo.explained_variance(torch.tensor([1.0, 2, 2]), torch.tensor([1.0, 2, 3])) == pytest.approx(2 / 3)


# ---- collection ----------------------------------------------------------------------------------------------------
def test_collect_bootstraps_truncation_from_final_obs_and_not_termination():
    torch.manual_seed(0)
    policy = VLAPolicy.from_pretrained("tiny", n_action_bins=8).eval()
    task, n, steps, seed = "toy/reach-side", 6, 9, 100
    vec = envs.make_vec(task, n, seed=seed, in_process=True)
    rollout = collect(policy, vec, steps, list(range(seed, seed + n)), with_base=True)
    vec.close()
    term, trunc = rollout.terminated, rollout.truncated
    assert trunc.any() and rollout.base_logprobs.shape == (steps, n, 7, 8)
    assert torch.all(rollout.next_values[term] == 0)
    cont = ~(term | trunc)
    cont[-1] = False
    assert torch.allclose(rollout.next_values[:-1][cont[:-1]], rollout.values[1:][cont[:-1]])
    # Replay each env to rebuild the final observation of every truncated episode; its value is the bootstrap.
    actions = policy.action_tokenizer.decode(rollout.action_tokens.numpy()).astype(np.float32)
    for i in range(n):
        env = envs.make(task)
        env.reset(seed=seed + i)
        for t in range(steps):
            obs, _, terminated, truncated, info = env.step(actions[t, i])
            assert terminated == bool(term[t, i]) and truncated == bool(trunc[t, i])
            if truncated:
                expected = values_of(policy, obs["image"][None], [obs["instruction"]])[0]
                assert float(rollout.next_values[t, i]) == pytest.approx(float(expected), abs=1e-5)
            if terminated or truncated:
                env.reset()
    # first_episode marks the steps up to and including each env's first episode end
    first_end = (term | trunc).float().cumsum(0)
    assert torch.equal(rollout.first_episode, (first_end - (term | trunc).float()) == 0)


def test_grpo_groups_start_from_the_same_state():
    cfg = grpo.GRPOConfig(task="toy/color-side", num_envs=12, group_size=4)
    seeds = grpo.group_seeds(cfg, update=1, rank=0, groups=3)
    vec = envs.make_vec("toy/color-side", 12, in_process=True)
    obs, _ = vec.reset(seed=seeds)
    images = obs["image"].reshape(4, 3, *obs["image"].shape[1:])  # [member, group, H, W, 3]: flat env j in group j % 3
    for g in range(3):
        assert all(np.array_equal(images[0, g], images[m, g]) for m in range(4))
    assert not np.array_equal(images[0, 0], images[0, 1])
    _, _, terminated, _, info = vec.step(np.zeros((12, 7), np.float32))
    assert terminated.all() and info["success"].shape == (12,) and info["final_obs"][5] is not None
    with pytest.raises(ValueError, match="3 seeds for 12 envs"):
        vec.reset(seed=[1, 2, 3])
    vec.close()


# ---- learning on the toy task ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "algorithm, overrides",
    [("ppo", dict(total_updates=16)), ("grpo", dict(total_updates=16)), ("reinforce", dict(total_updates=25))],
)
def test_rl_raises_toy_success_above_untrained(algorithm, overrides, tmp_path):
    cfg = tiny_rl(algorithm, tmp_path, log_kl=False, checkpoint_every=100, **overrides)
    train = {"ppo": ppo.train, "grpo": grpo.train, "reinforce": reinforce.train}[algorithm]
    train(cfg)
    policy = trained_policy(Path(cfg.run_dir))
    with policy.adapters_disabled():
        before = success_rate(policy)
    after = success_rate(policy)
    print(f"{algorithm}: toy success {before:.3f} (untrained) -> {after:.3f}")
    assert after >= before + 0.15, (before, after)
    rows = read_metrics(cfg.run_dir)
    assert len(rows) == cfg.total_updates and "charts/success_once" in rows[-1]


def _toy_demos(tmp_path: Path, n: int = 96) -> Path:
    from envs.demos import generate_demos

    out = tmp_path / "demos"
    generate_demos("toy/color-side", n, out, seed=0, log=lambda line: None)
    return out


def test_sft_raises_action_token_accuracy_and_kl_regularizer_lowers_kl(tmp_path):
    demos = _toy_demos(tmp_path)
    base_cfg = replace(SFT_PRESETS["tiny"][1], dataset=str(demos), total_updates=30, eval_samples=64, eval_every=10,
                       checkpoint_every=100, **TINY)  # fmt: skip
    plain = replace(base_cfg, run_dir=str(tmp_path / "sft"))
    with_kl = replace(base_cfg, run_dir=str(tmp_path / "sft_kl"), kl_coef=1.0)
    sft.train(plain)
    sft.train(with_kl)
    policy = trained_policy(Path(plain.run_dir))
    data = sft.DemoBatches(sft.DemoDataset(demos), 64, seed=7, window=1).batch(0)
    labels = sft.action_labels(policy, data["actions"], None)
    with policy.adapters_disabled():
        before = sft.token_accuracy(policy, data["images"], data["instructions"], labels)
    after = sft.token_accuracy(policy, data["images"], data["instructions"], labels)
    assert after >= before + 0.3 and after >= 0.85, (before, after)
    kl_plain = read_metrics(plain.run_dir)[-1]["losses/kl_pi0"]
    kl_reg = read_metrics(with_kl.run_dir)[-1]["losses/kl_pi0"]
    assert kl_reg < 0.5 * kl_plain, (kl_plain, kl_reg)


def _forward_kl(policy: VLAPolicy, n: int = 64) -> float:
    """KL(pi0 || pi) of the 7-token action on fixed toy observations, a_<t sampled from pi0 (chain rule)."""
    env = envs.make("toy/color-side")
    obs = [env.reset(seed=10**6 + i)[0] for i in range(n)]
    batch = policy.preprocess(np.stack([o["image"] for o in obs]), [o["instruction"] for o in obs])
    with torch.no_grad():
        with policy.adapters_disabled():
            tokens = policy.generate(batch, generator=torch.Generator().manual_seed(0)).action_tokens
        base = torch.log_softmax(policy.base_action_logits(batch, tokens), -1)
        logits = policy.evaluate_actions(batch, tokens).logits
    return float(ppo.kl_to_base(base, logits).mean())


def test_ppo_kl_penalty_lowers_kl_to_base_at_equal_steps(tmp_path):
    common = dict(total_updates=10, checkpoint_every=100, log_kl=True)
    free = tiny_rl("ppo", tmp_path / "free", **common)
    held = tiny_rl("ppo", tmp_path / "held", kl_coef=1.0, **common)
    ppo.train(free)
    ppo.train(held)
    kl_free, kl_held = _forward_kl(trained_policy(Path(free.run_dir))), _forward_kl(trained_policy(Path(held.run_dir)))
    assert kl_held < 0.5 * kl_free, (kl_free, kl_held)
    assert read_metrics(held.run_dir)[-1]["losses/kl_pi0"] < read_metrics(free.run_dir)[-1]["losses/kl_pi0"]


# ---- run plumbing on the tiny model: callbacks, NaN, bad input -------------------------------------------------------
def test_callback_hook_is_called_every_k_updates_and_logged(tmp_path):
    calls = []

    def monitor(ctx):
        calls.append(ctx.update)
        return {"eval/kl_monitor": float(ctx.update)}

    cfg = tiny_rl("ppo", tmp_path, total_updates=4, num_envs=8, callback_every=2, checkpoint_every=100)
    ppo.train(cfg, callbacks=[monitor])
    rows = read_metrics(cfg.run_dir)
    assert calls == [2, 4]
    assert [r.get("eval/kl_monitor") for r in rows] == [None, 2.0, None, 4.0]
    for key in ("losses/pg_loss", "losses/v_loss", "losses/entropy", "losses/approx_kl", "losses/clipfrac",
                "losses/explained_var", "losses/kl_pi0", "charts/lr_lora", "charts/lr_value_head",
                "time/env_steps_per_s", "time/samples_per_s", "time/sim_s", "time/inference_s", "time/update_s"):  # fmt: skip
        assert key in rows[-1], key
    assert (Path(cfg.run_dir) / "summary.txt").read_text().startswith(f"[{Path(cfg.run_dir).name}] done: 4/4 updates")


def test_nan_loss_stops_with_last_good_checkpoint_intact(tmp_path, monkeypatch):
    cfg = tiny_rl("reinforce", tmp_path, total_updates=5, num_envs=8, checkpoint_every=1)
    original = VLAPolicy.evaluate_actions
    calls = {"n": 0}

    def poisoned(self, batch, tokens, temperature=1.0):
        scores = original(self, batch, tokens, temperature)
        calls["n"] += 1
        if calls["n"] > 2:  # REINFORCE: one evaluate_actions per update -> update 3 goes NaN
            scores.log_probs = scores.log_probs * float("nan")
        return scores

    monkeypatch.setattr(VLAPolicy, "evaluate_actions", poisoned)
    with pytest.raises(NonFiniteLossError, match="update 3.*step_00000002"):
        reinforce.train(cfg)
    monkeypatch.undo()
    latest = checkpoint.latest_checkpoint(cfg.run_dir)
    assert latest.name == "step_00000002"
    state = checkpoint.read_trainer_state(latest)
    assert state["counters"]["update"] == 2
    policy = trained_policy(Path(cfg.run_dir))  # loads, and its weights are finite
    assert all(torch.isfinite(p).all() for p in policy.parameters())


def test_run_dir_and_config_errors(tmp_path):
    cfg = tiny_rl("reinforce", tmp_path, total_updates=1, num_envs=4)
    reinforce.train(cfg)
    with pytest.raises(ConfigError, match="already holds a run: pass --resume"):
        reinforce.train(cfg)
    with pytest.raises(ConfigError, match=r"cannot resume .*learning_rate: saved 0.003 != now 0.1"):
        reinforce.train(replace(cfg, resume=True, learning_rate=0.1))
    with pytest.raises(ConfigError, match="holds a REINFORCEConfig run, not a PPOConfig run"):
        ppo.train(replace(tiny_rl("ppo", tmp_path), run_dir=cfg.run_dir, resume=True))
    with pytest.raises(ConfigError, match="unknown task id 'toy/colour-side'.*toy/color-side"):
        replace(cfg, task="toy/colour-side")
    with pytest.raises(ConfigError, match="unnorm_key 'bridge_orig' does not fit the model"):
        reinforce.train(replace(cfg, run_dir=str(tmp_path / "x"), unnorm_key="bridge_orig"))
    assert not (tmp_path / "x").exists()  # rejected before anything was written


def test_sft_rejects_datasets_that_do_not_fit_the_model(tmp_path):
    bad = tmp_path / "bad"
    demos = _toy_demos(tmp_path, n=4)
    bad.mkdir()
    meta = json.loads((demos / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps(meta))
    for e in meta["episodes"]:
        episode = dict(np.load(demos / e["file"]))
        episode["actions"] = episode["actions"][:, :4]  # Meta-World-style 4-D actions
        np.savez(bad / e["file"], **episode)
    cfg = replace(SFT_PRESETS["tiny"][1], dataset=str(bad), run_dir=str(tmp_path / "run"), generate_demos=0, **TINY)
    with pytest.raises(ConfigError, match=r"actions of shape \(4,\), the model emits 7-D"):
        sft.train(cfg)
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="no meta.json"):
        sft.train(replace(cfg, dataset=str(tmp_path / "missing")))

    # unnorm stats: a dataset far outside the model's q01..q99 is rejected, one inside is accepted
    policy = build_policy(replace(cfg, dataset=str(demos)), torch.device("cpu"))
    stats = {"q01": [-0.01] * 7, "q99": [0.01] * 7, "mask": [True] * 6 + [False]}
    policy.vla.config.norm_stats = {"toy": {"action": stats}}
    with pytest.raises(ConfigError, match="does not match the model's unnorm stats 'toy': action dims \\[1\\]"):
        sft.check_dataset(sft.DemoDataset(demos), policy, replace(cfg, dataset=str(demos), unnorm_key="toy"))
    stats.update(q01=[-1.0] * 7, q99=[1.0] * 7)
    sft.check_dataset(sft.DemoDataset(demos), policy, replace(cfg, dataset=str(demos), unnorm_key="toy"))


def test_demo_batches_are_a_pure_function_of_seed_and_update(tmp_path):
    ds = sft.DemoDataset(_toy_demos(tmp_path, n=40))
    a, b = sft.DemoBatches(ds, 8, seed=3, window=2), sft.DemoBatches(ds, 8, seed=3, window=2)
    for u in (0, 1, 2, 7, 5, 12, 0):
        x, y = a.batch(u), b.batch(u)
        assert np.array_equal(x["images"], y["images"]) and np.array_equal(x["actions"], y["actions"])
    visited = [(e, t) for u in range(5) for e, t in zip(a.batch(u)["episodes"], a.batch(u)["steps"])]
    assert len(set(visited)) == 40  # one epoch visits every step once


# ---- scripts --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("algorithm", ["ppo", "grpo", "reinforce"])
def test_train_ppo_script_smoke(algorithm, tmp_path):
    from scripts.train_ppo import main

    out = main(["--algorithm", algorithm, "tiny", "--total-updates", "2", "--num-envs", "16", "--run-dir",
                str(tmp_path / "run"), "--no-progress"])  # fmt: skip
    assert out["update"] == 2 and "losses/pg_loss" in out
    assert checkpoint.latest_checkpoint(tmp_path / "run").name == "step_00000002"


def test_train_sft_script_smoke(tmp_path):
    from scripts.train_sft import main

    out = main(["tiny", "--total-updates", "2", "--generate-demos", "40", "--dataset", str(tmp_path / "demos"),
                "--run-dir", str(tmp_path / "run"), "--kl-coef", "0.1", "--no-progress"])  # fmt: skip
    assert out["update"] == 2 and "losses/ce_loss" in out and "losses/kl_pi0" in out
    with pytest.raises(SystemExit):
        main(["tiny", "--batch-sise", "4"])


def test_7b_presets_are_consistent_without_running_them():
    for algorithm, presets in RL_PRESETS.items():
        for name in ("openvla-7b-a100", "openvla-7b-a100-40gb"):
            cfg = presets[name][1]
            assert cfg.dtype == "bfloat16" and cfg.gradient_checkpointing and cfg.lora_rank == 32
            assert cfg.unnorm_key == "bridge_orig" and cfg.task.startswith("simpler/")
    a100, a40 = RL_PRESETS["ppo"]["openvla-7b-a100"][1], RL_PRESETS["ppo"]["openvla-7b-a100-40gb"][1]
    micro = lambda c: c.num_envs * c.num_steps // (c.num_minibatches * c.grad_accum_steps)  # noqa: E731
    assert micro(a100) == 16 and micro(a40) == 8
    with pytest.raises(ValueError, match="openvla-7b needs its checkpoint"):
        VLAPolicy.from_pretrained(a100.model)


def test_ppo_vision_cache_gives_the_same_update(tmp_path):
    """Patch embeddings computed once per rollout (frozen vision) vs recomputed in every micro-batch: the same
    losses, and the same adapter weights after two updates of two epochs x two minibatches."""
    results = []
    for cache in (True, False):
        cfg = tiny_rl("ppo", tmp_path / str(cache), num_envs=8, num_steps=4, total_updates=2, num_minibatches=2,
                      update_epochs=2, log_kl=True, checkpoint_every=2, cache_vision=cache)  # fmt: skip
        torch.manual_seed(0)
        ppo.train(cfg)
        adapter = checkpoint.latest_checkpoint(cfg.run_dir) / "adapter" / "adapter_model.safetensors"
        results.append((read_metrics(cfg.run_dir), load_file(adapter)))
    (rows_cached, weights_cached), (rows_fresh, weights_fresh) = results
    for cached, fresh in zip(rows_cached, rows_fresh, strict=True):
        for key in ("losses/pg_loss", "losses/v_loss", "losses/approx_kl", "losses/kl_pi0", "losses/grad_norm"):
            assert cached[key] == pytest.approx(fresh[key], rel=1e-5, abs=1e-7), key
    assert weights_cached.keys() == weights_fresh.keys()
    for name in weights_cached:
        torch.testing.assert_close(weights_cached[name], weights_fresh[name], atol=1e-6, rtol=1e-5)


def test_reinforce_micro_batches_give_the_same_update(tmp_path):
    """One backward over the whole batch vs the batch split into 3 micro-batches (gradients accumulated, as the
    cpu preset runs it for speed): the same losses and gradient norms, and the same adapter weights after two
    updates (float rounding aside)."""
    results = []
    for splits in (1, 3):
        cfg = tiny_rl("reinforce", tmp_path / str(splits), num_envs=8, group_size=2, total_updates=2,
                      checkpoint_every=2, grad_accum_steps=splits)  # fmt: skip
        torch.manual_seed(0)
        reinforce.train(cfg)
        adapter = checkpoint.latest_checkpoint(cfg.run_dir) / "adapter" / "adapter_model.safetensors"
        results.append((read_metrics(cfg.run_dir), load_file(adapter)))
    (rows_whole, weights_whole), (rows_split, weights_split) = results
    assert any(r["losses/grad_norm"] > 0 for r in rows_whole)  # the updates did move the adapter
    for whole, split in zip(rows_whole, rows_split, strict=True):
        for key in ("losses/pg_loss", "losses/entropy", "losses/grad_norm", "charts/success_once"):
            assert whole[key] == pytest.approx(split[key], rel=1e-5, abs=1e-7), key
    for name in weights_whole:
        torch.testing.assert_close(weights_whole[name], weights_split[name], atol=1e-6, rtol=1e-5)


def test_bench_rollouts_microbatch_smoke():
    from scripts.bench_rollouts import microbatch_update

    rates = microbatch_update("tiny", samples=6, splits=[1, 3], repeats=1)
    assert set(rates) == {1, 3} and all(v > 0 for v in rates.values())
