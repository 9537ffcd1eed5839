"""rollouts/ pieces that need no model: advantages, the toy env, configs, checkpoint files, the logger."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import envs
from rollouts import advantages, checkpoint, config
from rollouts.logger import RunLogger, read_metrics


# ---- advantages ------------------------------------------------------------------------------------------------
def test_gae_matches_hand_computed_example():
    # env 0: one episode running through the rollout, bootstrapped from V(s_3) = 0.6 at the end.
    # env 1: terminates at t=0 (no bootstrap), a new episode is truncated at t=2 (bootstraps from V(final) = 1.0).
    rewards = torch.tensor([[1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    values = torch.tensor([[0.5, 0.2], [0.4, 0.1], [0.3, 0.3]])
    next_values = torch.tensor([[0.4, 0.0], [0.3, 0.3], [0.6, 1.0]])
    dones = torch.tensor([[False, True], [False, False], [False, True]])
    adv, ret = advantages.gae(rewards, values, next_values, dones, gamma=0.9, lam=0.8)
    # By hand (gamma*lam = 0.72):
    # env 0: d2 = 2 + .9*.6 - .3 = 2.24; d1 = .9*.3 - .4 = -.13; d0 = 1 + .9*.4 - .5 = .86
    #        A2 = 2.24; A1 = -.13 + .72*2.24 = 1.4828; A0 = .86 + .72*1.4828 = 1.927616
    # env 1: d2 = .9*1.0 - .3 = .6; d1 = .9*.3 - .1 = .17; d0 = 1 - .2 = .8 (terminated: no bootstrap, no carry)
    #        A2 = .6; A1 = .17 + .72*.6 = .602; A0 = .8
    expected = torch.tensor([[1.927616, 0.8], [1.4828, 0.602], [2.24, 0.6]])
    torch.testing.assert_close(adv, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(ret, expected + values, rtol=0, atol=1e-6)


def test_gae_lambda_one_is_discounted_return_minus_value():
    rewards = torch.tensor([[0.0], [0.0], [1.0]])
    values = torch.tensor([[0.1], [0.2], [0.3]])
    next_values = torch.tensor([[0.2], [0.3], [0.0]])
    dones = torch.tensor([[False], [False], [True]])
    adv, ret = advantages.gae(rewards, values, next_values, dones, gamma=0.5, lam=1.0)
    torch.testing.assert_close(ret[:, 0], torch.tensor([0.25, 0.5, 1.0]))


def test_group_and_batch_normalization():
    r = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    a = advantages.group_normalized(r, group_size=4)
    # group 1: mean .75, std sqrt(.1875); group 2: mean .25, same std
    s = 0.1875**0.5
    expected = torch.tensor([0.25 / s, -0.75 / s, 0.25 / s, 0.25 / s, -0.25 / s, -0.25 / s, -0.25 / s, 0.75 / s])
    torch.testing.assert_close(a, expected, atol=1e-4, rtol=0)
    assert torch.all(advantages.group_normalized(torch.ones(4), 2) == 0)  # no signal in an all-equal group
    b = advantages.batch_normalized(torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(b, (torch.tensor([0.0, 1, 2, 3]) - 1.5) / (1.25**0.5 + 1e-6))
    with pytest.raises(ValueError, match="groups of 3"):
        advantages.group_normalized(r, group_size=3)


# ---- toy env ---------------------------------------------------------------------------------------------------
def _toy(task_id, **kw):
    return envs.make(task_id, **kw), envs.get_spec(task_id)


@pytest.mark.parametrize("task_id", ["toy/color-side", "toy/reach-side"])
def test_toy_env_contract_expert_and_determinism(task_id):
    from gymnasium.utils.env_checker import check_env

    env, spec = _toy(task_id, image_size=24)
    check_env(env, skip_render_check=True)
    obs, info = env.reset(seed=3)
    assert obs["image"].shape == (24, 24, 3) and obs["image"].dtype == np.uint8
    assert isinstance(obs["instruction"], str) and obs["instruction"].startswith("move toward the")
    assert obs["state"].dtype == np.float32 and info["success"] is False
    obs2, _ = env.reset(seed=3)
    assert np.array_equal(obs["image"], obs2["image"])
    expert, wins = spec.expert_factory(), 0
    for seed in range(10):
        obs, info = env.reset(seed=seed)
        expert.reset(env, obs, info)
        for _ in range(spec.max_episode_steps):
            obs, reward, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        wins += info["success"]
    assert wins == 10
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_toy_color_side_success_rule_and_uniform_baseline():
    env, _ = _toy("toy/color-side")
    obs, info = env.reset(seed=0)
    side = info["marker_side"]
    a = np.zeros(7, np.float32)
    a[1] = 0.8 * side
    assert env.step(a)[4]["success"]
    env.reset(seed=0)
    a[1] = 0.7 * side  # below the 0.75 threshold
    assert not env.step(a)[4]["success"]
    env.reset(seed=0)
    a[1] = -0.8 * side  # the wrong way
    assert not env.step(a)[4]["success"]
    # sampling dy uniformly over [-1, 1] succeeds 12.5% of the time
    rng, wins = np.random.default_rng(0), 0
    for seed in range(2000):
        env.reset(seed=seed)
        a[1] = rng.uniform(-1, 1)
        wins += env.step(a)[4]["success"]
    assert 0.10 < wins / 2000 < 0.15


def test_toy_reach_side_truncates_and_terminates():
    env, _ = _toy("toy/reach-side")
    env.reset(seed=0)
    for t in range(6):
        _, _, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert truncated and not terminated and not info["success"]


# ---- configs ---------------------------------------------------------------------------------------------------
def test_config_unknown_key_names_close_match_and_validation():
    with pytest.raises(config.ConfigError, match="learning_rat.*did you mean 'learning_rate'"):
        config.from_dict(config.RLConfig, {"learning_rat": 1e-3})
    with pytest.raises(config.ConfigError, match="num_envs must be >= 1"):
        config.RLConfig(num_envs=0)
    cfg = config.RLConfig(num_envs=2, env_kwargs={"image_size": 16})
    again = config.from_dict(config.RLConfig, json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_cli_rejects_typos_and_applies_overrides():
    presets = {"tiny": ("test preset", config.RLConfig(num_envs=4))}
    cfg = config.cli(presets, args=["tiny", "--num-envs", "6", "--env-kwargs", "image_size", "16"])
    assert cfg.num_envs == 6 and cfg.env_kwargs == {"image_size": 16}
    with pytest.raises(SystemExit):
        config.cli(presets, args=["tiny", "--num-envz", "6"])


def test_resume_config_mismatch_is_a_clear_error(tmp_path):
    saved = config.RLConfig(learning_rate=1e-4).to_dict()
    config.check_resume_compatible(saved, config.RLConfig(learning_rate=1e-4, total_updates=99), tmp_path)
    with pytest.raises(config.ConfigError, match="learning_rate: saved 0.0001 != now 0.001"):
        config.check_resume_compatible(saved, config.RLConfig(learning_rate=1e-3), tmp_path)


# ---- checkpoint files ------------------------------------------------------------------------------------------
def test_atomic_checkpoint_keeps_last_and_prunes(tmp_path):
    def writer(step):
        def write(folder):
            checkpoint.write_json(folder / "trainer_state.json", {"update": step})
        return write

    for step in (1, 2, 3):
        checkpoint.write_atomic(tmp_path, step, writer(step), keep=2)
    names = [p.name for p in checkpoint.list_checkpoints(tmp_path)]
    assert names == ["step_00000002", "step_00000003"]
    assert checkpoint.read_trainer_state(checkpoint.latest_checkpoint(tmp_path))["update"] == 3
    # a half-written folder from a killed writer is ignored and cleaned up
    (tmp_path / "checkpoints" / ".tmp-step_00000004-1").mkdir()
    assert checkpoint.latest_checkpoint(tmp_path).name == "step_00000003"
    checkpoint.remove_stale_temp(tmp_path)
    assert not (tmp_path / "checkpoints" / ".tmp-step_00000004-1").exists()


def test_atomic_checkpoint_survives_kill_during_write(tmp_path):
    """A writer killed (SIGKILL) mid-checkpoint leaves the previous checkpoint as the latest one."""
    script = textwrap.dedent(
        f"""
        import os, signal
        from rollouts import checkpoint
        checkpoint.write_atomic({str(tmp_path)!r}, 1, lambda d: checkpoint.write_json(d / "trainer_state.json", {{"update": 1}}), keep=2)
        def write(d):
            checkpoint.write_json(d / "trainer_state.json", {{"update": 2}})
            os.kill(os.getpid(), signal.SIGKILL)
        checkpoint.write_atomic({str(tmp_path)!r}, 2, write, keep=2)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=os.getcwd())
    assert proc.returncode == -9
    latest = checkpoint.latest_checkpoint(tmp_path)
    assert latest.name == "step_00000001" and checkpoint.read_trainer_state(latest)["update"] == 1


def test_optimizer_and_rng_round_trip_without_pickle(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW([{"params": [model.weight], "lr": 1e-2}, {"params": [model.bias], "lr": 1e-3}])
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 3)).pow(2).sum().backward()
        opt.step()
    layout = checkpoint.save_optimizer(opt, tmp_path)
    json.dumps(layout)  # JSON-serializable
    opt2 = torch.optim.AdamW([{"params": [model.weight], "lr": 0.5}, {"params": [model.bias], "lr": 0.5}])
    checkpoint.load_optimizer(opt2, tmp_path, json.loads(json.dumps(layout)))
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert [g["lr"] for g in s2["param_groups"]] == [1e-2, 1e-3]
    for k in s1["state"]:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(s1["state"][k][name], s2["state"][k][name])
    bad = torch.optim.AdamW([model.weight, model.bias])
    with pytest.raises(checkpoint.CheckpointError, match="param groups"):
        checkpoint.load_optimizer(bad, tmp_path, layout)

    state = json.loads(json.dumps(checkpoint.rng_state()))
    a = (torch.rand(3), np.random.rand(), random.random())
    checkpoint.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]


# ---- logger ----------------------------------------------------------------------------------------------------
def test_logger_jsonl_and_resume_truncation(tmp_path):
    log = RunLogger(tmp_path, total_updates=4, progress=False)
    for u in (1, 2, 3):
        log.log(u, {"losses/pg_loss": 0.1 * u, "charts/success_once": 0.5, "note": "x"})
    log.close()
    assert [r["update"] for r in read_metrics(tmp_path)] == [1, 2, 3]
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"update": 4, "losses/pg')  # torn line from a kill
    log = RunLogger(tmp_path, total_updates=4, start_update=2, progress=False)
    log.log(3, {"losses/pg_loss": 0.3})
    log.summary("done")
    log.close()
    rows = read_metrics(tmp_path)
    assert [r["update"] for r in rows] == [1, 2, 3] and rows[-1]["losses/pg_loss"] == pytest.approx(0.3)
    assert (tmp_path / "summary.txt").read_text().count("done") == 1
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tb").iterdir())
