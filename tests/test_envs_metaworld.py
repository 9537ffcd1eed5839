"""The Meta-World (MuJoCo) backend: contract, seeding, action conversion, checker, expert, raw-backend agreement."""

import warnings

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs
from envs.demos import evaluate_expert
from envs.metaworld import MT10, TASKS, MetaWorldEnv, from_metaworld_action, to_metaworld_action

SIZE = 64


@pytest.fixture(scope="module")
def env():
    env = envs.make("metaworld/pick-place", image_size=SIZE)
    yield env
    env.close()


def test_observation_contract(env):
    obs, info = env.reset(seed=0)
    assert obs["image"].shape == (SIZE, SIZE, 3) and obs["image"].dtype == np.uint8
    assert obs["instruction"] == "pick up the puck and place it at the goal"
    assert obs["state"].shape == (4,) and obs["state"].dtype == np.float32
    assert obs["state"][3] == pytest.approx(1.0, abs=0.05)  # fingers open after reset
    assert obs in env.observation_space and info["success"] is False
    obs, reward, terminated, truncated, info = env.step(np.zeros(7, np.float32))
    assert obs in env.observation_space
    assert isinstance(reward, float) and isinstance(info["success"], bool)
    assert terminated is False and truncated is False


def test_step_before_reset_is_a_clear_error():
    env = envs.make("metaworld/reach", image_size=16)
    try:
        with pytest.raises(RuntimeError, match=r"metaworld/reach: call reset\(\) before step\(\)"):
            env.step(np.zeros(7, np.float32))
    finally:
        env.close()


def test_image_is_rotated_upright_for_corner_cameras():
    corner = envs.make("metaworld/reach", image_size=SIZE)
    top = envs.make("metaworld/reach", image_size=SIZE, camera="topview")
    try:
        assert corner._rotate_180 and not top._rotate_180
        obs, _ = corner.reset(seed=0)
        raw = corner.sim.render()
        np.testing.assert_array_equal(obs["image"], raw[::-1, ::-1])
        # Upright: the bright floor/backdrop fills the top rows, the dark robot base and table edge the bottom rows.
        image = obs["image"].astype(float).mean(-1)
        assert image[: SIZE // 8].mean() > image[-SIZE // 8 :].mean()
    finally:
        corner.close()
        top.close()


def test_seeded_resets_are_reproducible_and_vary_across_seeds(env):
    obs_a, _ = env.reset(seed=7)
    objects_a = env.sim_obs[4:7].copy(), env.sim_obs[-3:].copy()
    next_a, _ = env.reset()
    obs_b, _ = env.reset(seed=7)
    next_b, _ = env.reset()
    np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
    np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
    np.testing.assert_array_equal(next_a["image"], next_b["image"])  # reset() continues the seed's stream
    env.reset(seed=8)
    assert not np.allclose(env.sim_obs[4:7], objects_a[0])  # the puck moved
    assert not np.allclose(env.sim_obs[-3:], objects_a[1])  # and so did the goal


def test_action_conversion():
    action = np.array([0.5, -0.25, 1.0, 0.3, -0.2, 0.1, 1.0], np.float32)
    np.testing.assert_allclose(to_metaworld_action(action), [0.5, -0.25, 1.0, -1.0])  # open -> grab effort -1
    closed = action.copy()
    closed[6] = 0.0
    assert to_metaworld_action(closed)[3] == 1.0  # closed -> squeeze
    closed[6] = 0.5
    assert to_metaworld_action(closed)[3] == 0.0
    back = from_metaworld_action(to_metaworld_action(action))
    np.testing.assert_allclose(back, [0.5, -0.25, 1.0, 0, 0, 0, 1.0])  # rotation is dropped
    np.testing.assert_allclose(from_metaworld_action(np.array([3.0, -2.0, 0.0, 5.0])), [1, -1, 0, 0, 0, 0, 0])


def test_bad_actions(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        env.step(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        env.step(np.array([np.nan, 0, 0, 0, 0, 0, 1]))
    before = env.sim_obs[:3].copy()
    env.step(np.array([100, 0, 0, 0, 0, 0, 1], np.float32))  # clipped to 1: at most 1 cm per step
    obs, *_ = env.step(np.array([100, 0, 0, 0, 0, 0, 1], np.float32))
    assert 0 < env.sim_obs[0] - before[0] <= 0.02 + 1e-3
    assert obs in env.observation_space


def test_matches_raw_metaworld_step_for_step():
    """The adapter changes nothing but the interface: same seed and actions give Meta-World's own states/rewards."""
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    env = envs.make("metaworld/push", image_size=SIZE)
    raw = ALL_V3_ENVIRONMENTS["push-v3"]()
    raw._set_task_called, raw._freeze_rand_vec, raw.seeded_rand_vec = True, False, True
    raw.seed(3)
    raw_obs, _ = raw.reset()
    obs, _ = env.reset(seed=3)
    np.testing.assert_allclose(env.sim_obs[:36], raw_obs[:36])
    rng = np.random.default_rng(0)
    for _ in range(5):
        action = rng.uniform(-1, 1, 7).astype(np.float32)
        action[6] = rng.uniform(0, 1)
        obs, reward, *_ = env.step(action)
        raw_obs, raw_reward, *_ = raw.step(np.array([*action[:3], 1 - 2 * action[6]], np.float32))
        np.testing.assert_allclose(obs["state"], raw_obs[:4].astype(np.float32))
        assert reward == pytest.approx(raw_reward)
    env.close()
    raw.close()


def _expert_episode(env, steps: int, seed: int = 5):
    """Images and Meta-World states of the task's scripted expert for up to `steps` steps."""
    obs, info = env.reset(seed=seed)
    expert = envs.get_spec(env.spec.id).expert_factory()
    expert.reset(env, obs, info)
    images, states = [obs["image"]], [env.sim_obs.copy()]
    for _ in range(steps):
        obs, _, terminated, truncated, _ = env.step(expert.act(obs))
        images.append(obs["image"])
        states.append(env.sim_obs.copy())
        if terminated or truncated:
            break
    return np.stack(images), np.stack(states)


def test_simplified_meshes_change_only_the_drawn_triangles():
    """mesh_detail (default MESH_DETAIL) draws fewer triangles and changes nothing physics reads: same vertices,
    same states step for step; the images stay close to the full meshes' (a few edge pixels)."""
    from envs.metaworld import MESH_DETAIL, SIMPLIFY_MIN_FACES

    full = envs.make("metaworld/button-press", image_size=SIZE, mesh_detail=1.0)
    simple = envs.make("metaworld/button-press", image_size=SIZE)
    again = envs.make("metaworld/button-press", image_size=SIZE)
    try:
        full_model, model = full.sim.model, simple.sim.model
        np.testing.assert_array_equal(model.mesh_vert, full_model.mesh_vert)
        np.testing.assert_array_equal(model.mesh_face, again.sim.model.mesh_face)  # the same in one process
        cached = envs.metaworld._KEPT_TRIANGLES.copy()
        envs.metaworld._KEPT_TRIANGLES.clear()
        fresh = envs.make("metaworld/button-press", image_size=SIZE)
        np.testing.assert_array_equal(fresh.sim.model.mesh_face, model.mesh_face)  # deterministic when recomputed
        assert len(envs.metaworld._KEPT_TRIANGLES) == len(cached)
        fresh.close()
        large = full_model.mesh_facenum >= SIMPLIFY_MIN_FACES
        assert large.sum() >= 5
        np.testing.assert_array_equal(model.mesh_facenum[~large], full_model.mesh_facenum[~large])
        kept = model.mesh_facenum[large] / full_model.mesh_facenum[large]
        assert np.all(kept <= MESH_DETAIL + 0.05) and np.all(kept >= MESH_DETAIL / 2)
        for mesh in np.flatnonzero(large):  # every drawn corner is one of the mesh's own vertices
            faces = model.mesh_face[model.mesh_faceadr[mesh] : model.mesh_faceadr[mesh] + model.mesh_facenum[mesh]]
            assert faces.min() >= 0 and faces.max() < model.mesh_vertnum[mesh]
        full_images, full_states = _expert_episode(full, 40)
        images, states = _expert_episode(simple, 40)
        np.testing.assert_array_equal(states, full_states)
        difference = np.abs(images.astype(int) - full_images.astype(int))
        assert 0 < difference.mean() < 4 and (difference.max(-1) > 32).mean() < 0.03
    finally:
        for env in (full, simple, again):
            env.close()
    with pytest.raises(ValueError, match="mesh_detail must be in"):
        MetaWorldEnv("reach", mesh_detail=0.0)


def test_envs_in_one_process_render_their_own_scenes():
    """Two Meta-World envs alive in one process, rendering in turn, each give the images they give alone; and an
    env closed and collected after another started rendering leaves the other's frames intact."""
    import gc

    alone = {}
    for task in ("button-press", "drawer-open"):
        env = envs.make(f"metaworld/{task}", image_size=SIZE)
        alone[task] = _expert_episode(env, 6)[0]
        env.close()
    first, second = (envs.make(f"metaworld/{task}", image_size=SIZE) for task in alone)
    obs, info = first.reset(seed=5)
    expert = envs.get_spec(first.spec.id).expert_factory()
    expert.reset(first, obs, info)
    images = [obs["image"]]
    second_images = _expert_episode(second, 6)[0]  # second's renderer now exists and its context is current
    for _ in range(6):
        obs, *_ = first.step(expert.act(obs))
        images.append(obs["image"])
    np.testing.assert_array_equal(np.stack(images), alone["button-press"])
    np.testing.assert_array_equal(second_images, alone["drawer-open"])
    first.close()
    first.close()  # a second close is harmless
    second_before = second.step(np.zeros(7, np.float32))[0]["image"]
    del first, expert
    gc.collect()
    assert second.step(np.zeros(7, np.float32))[0]["image"].mean() > 0.5 * second_before.mean() > 0
    second.close()


def test_reward_options_and_horizon():
    env = envs.make("metaworld/reach", image_size=SIZE, reward="sparse", max_episode_steps=3)
    env.reset(seed=0)
    rewards, truncations = [], []
    for _ in range(3):
        _, reward, terminated, truncated, info = env.step(np.zeros(7))
        rewards.append(reward)
        truncations.append(truncated)
    assert rewards == [0.0, 0.0, 0.0] and truncations == [False, False, True]
    env.close()
    with pytest.raises(ValueError, match="reward"):
        MetaWorldEnv("reach", reward="shaped")


def test_gymnasium_env_checker_passes():
    env = envs.make("metaworld/reach", image_size=SIZE)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)  # with env.spec set, this includes the reset/step determinism and re-make checks
    assert [str(w.message) for w in caught] == []
    env.close()


def test_vector_env_of_process_workers():
    vec = envs.make_vec("metaworld/reach", 2, seed=4, image_size=32)
    try:
        obs, _ = vec.reset()
        assert obs["image"].shape == (2, 32, 32, 3) and obs["state"].shape == (2, 4)
        assert obs["instruction"] == ("move the gripper to the goal",) * 2
        single = envs.make("metaworld/reach", image_size=32)
        np.testing.assert_array_equal(single.reset(seed=5)[0]["image"], obs["image"][1])  # env 1 <- seed 4 + 1
        single.close()
        obs, reward, terminated, truncated, info = vec.step(np.zeros((2, 7), np.float32))
        assert reward.dtype == np.float32 and info["success"].tolist() == [False, False]
    finally:
        vec.close()


def test_expert_solves_pick_place():
    assert evaluate_expert("metaworld/pick-place", 3, seed=100, image_size=SIZE) == 1.0


@pytest.mark.parametrize("task", MT10)
def test_mt10_tasks_make_reset_step(task):
    env = envs.make(f"metaworld/{task}", image_size=SIZE)
    obs, _ = env.reset(seed=0)
    obs, *_ = env.step(env.action_space.sample())
    assert obs in env.observation_space and obs["instruction"] == TASKS[task][0]
    env.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(set(TASKS) - set(MT10)))
def test_other_tasks_make_reset_step(task):
    test_mt10_tasks_make_reset_step(task)


def test_bench_script_smoke(capsys):
    from scripts.bench_envs import BenchConfig, bench

    results = bench(BenchConfig(steps=3, repeats=1, image_size=32, workers=(1, 2)))
    row = results["metaworld/pick-place"]
    assert {"raw_cpu", "make_cpu", "overhead_pct", "vec1", "vec2"} <= set(row) and all(v == v for v in row.values())
    assert "overhead" in capsys.readouterr().out


def test_render_settings_same_pixels_where_declared():
    """A buffer of the image's size renders the very pixels of MuJoCo's 640x480 default; dropping reflections (since
    render version 2) changes only a few floor pixels, simplified meshes (version 3) edge pixels of the robot
    (documented in envs/metaworld.py)."""
    from scripts.bench_envs import BenchConfig, bench_frames

    rows = bench_frames(BenchConfig(tasks=("metaworld/drawer-close",), image_size=SIZE, steps=4, repeats=1, frame=True))
    rows = rows["metaworld/drawer-close"]
    assert rows["image-size buffer"]["pixels_changed"] == 0.0
    assert 0.0 < rows["no reflections"]["pixels_changed"] < 0.005
    assert rows["no reflections"]["pixels_changed"] < rows["default: simpler meshes"]["pixels_changed"] < 0.3
    assert all(row["cpu_ms"] > 0 for row in rows.values())


def test_llvmpipe_without_helper_threads_renders_the_same_images(capsys):
    """envs sets LP_NUM_THREADS=0 (no llvmpipe rasterizer threads) by default: the images must be those of
    llvmpipe's thread pool. Each value runs in a fresh process, since Mesa reads it when GL starts."""
    import os
    import subprocess
    import sys

    from scripts.bench_envs import BenchConfig, compare_llvmpipe_threads

    read = ("import os, envs; envs.get_spec('metaworld/reach'); before = os.environ.get('LP_NUM_THREADS'); "
            "envs.make('metaworld/reach', image_size=8).close(); print(before, os.environ['LP_NUM_THREADS'])")
    env = {k: v for k, v in os.environ.items() if k != "LP_NUM_THREADS"}
    # set when a Meta-World env is built (not when envs merely registers it: SAPIEN-only processes keep Mesa's default)
    assert subprocess.run([sys.executable, "-c", read], env=env, capture_output=True, text=True).stdout.split() == [
        "None", "0"]
    assert subprocess.run([sys.executable, "-c", read], env={**env, "LP_NUM_THREADS": "3"}, capture_output=True,
                          text=True).stdout.split() == ["3", "3"]  # a user's own value is kept
    cfg = BenchConfig(tasks=("metaworld/drawer-close",), image_size=32, workers=(1,), steps=12, repeats=1,
                      compare_llvmpipe_threads=("2", "0"), check_images=True)
    results = compare_llvmpipe_threads(cfg)
    rows = {v: r["metaworld/drawer-close"] for v, r in results.items()}
    assert rows["2"]["images"] == rows["0"]["images"] and rows["0"]["vec1"] > 0
    assert "images: same" in capsys.readouterr().out
