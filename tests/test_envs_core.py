"""envs/ core: the registry, the action contract, the vector env (batching, autoreset, seeds, worker restarts)."""

import dataclasses
import os
import signal

import gymnasium as gym
import numpy as np
import pytest

import envs
from envs import registry
from envs.registry import ACTION_DIM, check_action
from envs.vector import ProcessVectorEnv, make_vec

FAST_TASK = "toy/reach-side"  # numpy-only, 6-step episodes: exercises the vector machinery in milliseconds
FAST_HORIZON = 6


def test_unknown_task_id_lists_close_matches():
    with pytest.raises(KeyError) as error:
        envs.make("metaworld/pick-plce")
    assert "metaworld/pick-place" in str(error.value)
    assert "python -m envs list" in str(error.value)


def test_list_tasks_filters_and_covers_mt10():
    mujoco_tasks = {spec.task_id for spec in envs.list_tasks(backend="mujoco")}
    mt10 = {"reach", "push", "pick-place", "door-open", "drawer-open", "drawer-close", "button-press-topdown",
            "peg-insert-side", "window-open", "window-close"}  # fmt: skip
    assert {f"metaworld/{name}" for name in mt10} <= mujoco_tasks
    assert all(spec.suite == "metaworld" and spec.robot == "sawyer" for spec in envs.list_tasks(suite="metaworld"))


def test_check_action_clips_and_rejects_bad_input():
    clipped = check_action([2, -3, 0.5, 0, 0, 0, 1.7])
    assert clipped.dtype == np.float32
    np.testing.assert_allclose(clipped, [1, -1, 0.5, 0, 0, 0, 1])
    assert check_action(np.full(7, -5.0))[registry.GRIPPER] == 0.0  # gripper openness lives in [0, 1]
    with pytest.raises(ValueError, match=r"shape \(7,\)"):
        check_action(np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        check_action([0, 0, np.nan, 0, 0, 0, 1])
    assert registry.action_space().contains(clipped)


def test_image_size_option():
    assert registry.image_hw(64) == (64, 64)
    assert registry.image_hw((48, 80)) == (48, 80)
    with pytest.raises(ValueError):
        registry.image_hw(4)


@pytest.fixture
def vec():
    vec_env = make_vec(FAST_TASK, 3, seed=10, in_process=False)
    yield vec_env
    vec_env.close()


def test_vector_env_batches_observations(vec):
    obs, info = vec.reset()
    assert obs["image"].shape[0] == 3 and obs["image"].dtype == np.uint8 and obs["image"].shape[-1] == 3
    assert obs["state"].shape[0] == 3 and obs["state"].dtype == np.float32
    assert isinstance(obs["instruction"], tuple) and len(obs["instruction"]) == 3
    assert obs in vec.observation_space
    obs, reward, terminated, truncated, info = vec.step(np.zeros((3, ACTION_DIM), np.float32))
    assert reward.shape == terminated.shape == truncated.shape == info["success"].shape == (3,)
    assert info["success"].dtype == bool
    assert len(set(vec.worker_pids)) == 3 and os.getpid() not in vec.worker_pids


def test_vector_env_seeds_are_per_env_and_reproducible(vec):
    first, _ = vec.reset()  # first reset without a seed uses seed + i = 10, 11, 12
    again, _ = vec.reset(seed=10)
    np.testing.assert_array_equal(first["image"], again["image"])
    single = envs.make(FAST_TASK)
    for i in range(3):
        obs, _ = single.reset(seed=10 + i)
        np.testing.assert_array_equal(obs["image"], first["image"][i])
    assert len({image.tobytes() for image in first["image"]}) > 1  # different seeds, different scenes


def test_vector_env_same_step_autoreset_keeps_final_obs(vec):
    vec.reset(seed=0)
    still = np.zeros((3, ACTION_DIM), np.float32)  # never reaches the marker: truncated at the horizon
    for _ in range(FAST_HORIZON - 1):
        obs, _, terminated, truncated, info = vec.step(still)
        assert not (terminated | truncated).any() and "final_obs" not in info
    obs, _, terminated, truncated, info = vec.step(still)
    assert truncated.all() and not terminated.any()
    assert info["_final_obs"].all()
    for i in range(3):
        final = info["final_obs"][i]
        assert final["state"][1] == pytest.approx(1.0)  # elapsed fraction of the horizon at the end
        assert obs["state"][i][1] == 0.0  # ...while obs[i] is already the next episode's first observation
    assert info["final_info"]["success"].shape == (3,)


def test_vector_env_reports_success_of_the_ending_step():
    vec = make_vec(FAST_TASK, 2, seed=0, in_process=True)
    try:
        obs, _ = vec.reset()
        expert = envs.get_spec(FAST_TASK).expert_factory()
        for _ in range(FAST_HORIZON):
            actions = []
            for worker in vec.workers:  # in-process: the expert may read each env's state
                expert.reset(worker.env, {}, {})
                actions.append(expert.act({}))
            obs, _, terminated, _, info = vec.step(np.stack(actions))
            if terminated.any():
                break
        assert (info["success"] == terminated).all() and terminated.any()
    finally:
        vec.close()


def test_vector_env_bad_action_raises_and_stays_usable(vec):
    vec.reset()
    with pytest.raises(ValueError, match=r"shape \(3, 7\)"):
        vec.step(np.zeros((2, ACTION_DIM)))
    bad = np.zeros((3, ACTION_DIM), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        vec.step(bad)
    obs, *_ = vec.step(np.zeros((3, ACTION_DIM), np.float32))
    assert obs["image"].shape[0] == 3


def test_vector_env_restarts_a_killed_worker(vec):
    vec.reset(seed=0)
    vec.step(np.zeros((3, ACTION_DIM), np.float32))
    old_pids = vec.worker_pids
    os.kill(old_pids[1], signal.SIGKILL)
    obs, reward, terminated, truncated, info = vec.step(np.zeros((3, ACTION_DIM), np.float32))
    assert truncated.tolist() == [False, True, False] and not terminated.any()
    assert info["_worker_restarted"].tolist() == [False, True, False] and info["worker_restarted"][1]
    assert not info["success"][1] and info["final_obs"][1] is not None
    assert vec.worker_pids[1] != old_pids[1] and vec.worker_pids[0] == old_pids[0]
    obs, *_ = vec.step(np.zeros((3, ACTION_DIM), np.float32))  # and it keeps going
    assert obs in vec.observation_space


def test_vector_env_per_env_calls_step_some_envs_without_autoreset(vec):
    vec.reset(seed=0)
    still = np.zeros((2, ACTION_DIM), np.float32)
    for _ in range(FAST_HORIZON):  # envs 0 and 2 run to their horizon; env 1 is left alone
        vec.send_steps([0, 2], still, autoreset=False)
        results = vec.recv([0, 2])
    for obs, _, terminated, truncated, info in results:  # not reset: obs is the episode's last observation
        assert truncated and not terminated and obs["state"][1] == pytest.approx(1.0) and "final_obs" not in info
    vec.send_resets([2], [10])
    (obs, _), = vec.recv([2])
    single = envs.make(FAST_TASK)
    expected, _ = single.reset(seed=10)
    np.testing.assert_array_equal(obs["image"], expected["image"])
    vec.send_steps([1], still[:1], autoreset=False)
    (obs, *_), = vec.recv([1])
    assert obs["state"][1] == pytest.approx(1 / FAST_HORIZON)  # env 1's first step
    with pytest.raises(RuntimeError, match="no command in flight"):
        vec.recv([0])
    os.kill(vec.worker_pids[1], signal.SIGKILL)  # a dead worker: the step is a truncated failure, obs the last seen
    vec.send_steps([1], still[:1], autoreset=False)
    (obs, _, terminated, truncated, info), = vec.recv([1])
    assert truncated and not terminated and info["worker_restarted"] and not info["success"]
    assert obs["state"][1] == pytest.approx(1 / FAST_HORIZON)


def test_vector_env_switch_task_keeps_the_workers_and_acts_as_a_new_env(vec):
    vec.reset(seed=0)
    vec.step(np.zeros((3, ACTION_DIM), np.float32))
    pids = vec.worker_pids
    vec.switch_task("toy/color-side", image_size=16)
    assert vec.worker_pids == pids and vec.task_id == "toy/color-side"
    obs, _ = vec.reset(seed=5)
    assert obs["image"].shape == (3, 16, 16, 3) and obs in vec.observation_space
    for i in range(3):  # the same observations as a fresh env of the new task
        expected, _ = envs.make("toy/color-side", image_size=16).reset(seed=5 + i)
        np.testing.assert_array_equal(obs["image"][i], expected["image"])
    os.kill(pids[2], signal.SIGKILL)  # a worker that dies afterwards is restarted on the new task
    obs, *_ = vec.step(np.zeros((3, ACTION_DIM), np.float32))
    assert vec.worker_pids[2] != pids[2] and obs["image"].shape == (3, 16, 16, 3)
    with pytest.raises(KeyError, match="no-such"):  # checked here, before any worker changes
        vec.switch_task("toy/no-such-task")
    assert vec.step(np.zeros((3, ACTION_DIM), np.float32))[0]["image"].shape == (3, 16, 16, 3)
    workers = vec.worker_pids
    with pytest.raises(ValueError, match="image"):  # raised in the workers: the vector env is closed, none left
        vec.switch_task("toy/reach-side", image_size=4)
    assert vec.closed and not any(os.path.exists(f"/proc/{pid}") for pid in workers)  # joined: not even zombies


def test_vector_env_single_env_runs_in_process():
    vec = make_vec(FAST_TASK, 1)
    try:
        assert vec.worker_pids == [os.getpid()]
        obs, _ = vec.reset()
        assert obs["image"].shape[0] == 1
    finally:
        vec.close()


def test_make_vec_uses_a_native_vec_factory(monkeypatch):
    calls = []

    def vec_factory(num_envs, seed, **options):
        calls.append((num_envs, seed, options))
        return None if options.get("unsupported") else "native-vec-env"

    spec = dataclasses.replace(envs.get_spec(FAST_TASK), vec_factory=vec_factory)
    monkeypatch.setitem(registry._REGISTRY, FAST_TASK, spec)
    assert make_vec(FAST_TASK, 4, seed=3) == "native-vec-env"
    assert calls[-1] == (4, 3, {})
    fallback = make_vec(FAST_TASK, 1, native=False)  # native=False: never asks the backend
    assert isinstance(fallback, ProcessVectorEnv) and len(calls) == 1
    fallback.close()
    with pytest.raises(ValueError, match="no native vector env"):
        make_vec(FAST_TASK, 2, native=True, unsupported=True)


def test_vector_env_is_a_gymnasium_vector_env(vec):
    assert isinstance(vec, gym.vector.VectorEnv)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    assert vec.single_action_space.shape == (ACTION_DIM,)
