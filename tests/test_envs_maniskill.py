"""The ManiSkill3 backend: action conversions, contract, seeding, bad input, checker, expert, assets, vector env.

Bridge/WidowX tests use the offline asset folder <repo>/../shared/assets/maniskill-bridge and skip when it is absent.
MS_ASSET_DIR must be set before ManiSkill is first imported, so it is set here, at collection, unless the user chose
one already. (OMP_NUM_THREADS=1 makes CPU rendering ~20% cheaper but is not set here: it would also slow torch in
other test modules of the same session.)
"""

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from scipy.spatial.transform import Rotation
from transforms3d.euler import euler2axangle

REPO = Path(__file__).resolve().parents[1]
BRIDGE_ASSETS = REPO.parent / "shared" / "assets" / "maniskill-bridge"
if BRIDGE_ASSETS.is_dir():
    os.environ.setdefault("MS_ASSET_DIR", str(BRIDGE_ASSETS))

pytest.importorskip("mani_skill")

import envs  # noqa: E402
from envs import maniskill as ms  # noqa: E402
from envs import rotations  # noqa: E402

SIZE = 64
PANDA_IDS = [task.task_id for task in ms.PANDA_TASKS]
BRIDGE_IDS = [task.task_id for task in ms.BRIDGE_TASKS]


def _bridge_assets_or_skip(task_id: str) -> None:
    task = next(task for task in ms.BRIDGE_TASKS if task.task_id == task_id)
    try:
        ms.check_bridge_assets(task, ms.configure_asset_dir())
    except ms.MissingAssetsError as error:
        pytest.skip(f"Bridge assets absent (expected at {BRIDGE_ASSETS} or in MS_ASSET_DIR): {error}")


@pytest.fixture(scope="module")
def pick_cube():
    env = envs.make("maniskill/PickCube", image_size=SIZE)
    yield env
    env.close()


@pytest.fixture(scope="module")
def carrot():
    _bridge_assets_or_skip("simpler/PutCarrotOnPlateInScene")
    env = envs.make("simpler/PutCarrotOnPlateInScene", image_size=SIZE, native_camera=False)
    yield env
    env.close()


def _assert_contract(env, obs, info, state_dim):
    assert obs["image"].dtype == np.uint8 and obs["image"].shape == (*env.batch.image_hw, 3)
    assert obs["state"].dtype == np.float32 and obs["state"].shape == (state_dim,)
    assert isinstance(obs["instruction"], str) and obs["instruction"]
    assert obs in env.observation_space
    assert isinstance(info["success"], bool)


# ---- action conversions (no simulator) -----------------------------------------------------------------------


def test_widowx_conversion_matches_simplerenv_by_hand():
    actions = np.array(
        [
            [0.01, -0.02, 0.03, 0.1, 0.0, 0.0, 0.7],  # pure roll: rotation vector (0.1, 0, 0); open
            [0.0, 0.0, 0.0, 0.0, 0.0, -0.2, 0.3],  # pure yaw: (0, 0, -0.2); closed
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5],  # openness exactly 0.5 is "not > 0.5": closed
        ],
        np.float32,
    )
    expected = np.array(
        [[0.01, -0.02, 0.03, 0.1, 0, 0, 1], [0, 0, 0, 0, 0, -0.2, -1], [0, 0, 0, 0, 0, 0, -1]], np.float32
    )
    np.testing.assert_allclose(ms.widowx_action_to_controller(actions), expected, atol=1e-7)


def test_widowx_rotation_is_simplerenvs_euler2axangle():
    rng = np.random.default_rng(0)
    xyz, euler, gripper = rng.uniform(-0.05, 0.05, (20, 3)), rng.uniform(-0.5, 0.5, (20, 3)), rng.random((20, 1))
    actions = np.concatenate([xyz, euler, gripper], axis=1)
    converted = ms.widowx_action_to_controller(actions)
    for action, out in zip(actions, converted):
        axis, angle = euler2axangle(*action[3:6])
        np.testing.assert_allclose(out[3:6], np.asarray(axis) * angle, atol=1e-6)
        np.testing.assert_allclose(out[3:6], Rotation.from_euler("xyz", action[3:6]).as_rotvec(), atol=1e-6)
        np.testing.assert_allclose(out[:3], action[:3], atol=1e-7)


def test_panda_conversion_by_hand_and_against_scipy():
    action = np.array([[1.0, -0.5, 0.2, 0.5, 0.0, 0.0, 0.25]], np.float32)
    # xyz unchanged (1.0 = 0.1 m); roll 0.05 rad -> intrinsic X 0.05 rad -> /0.1 and negated; gripper 2 * 0.25 - 1.
    np.testing.assert_allclose(ms.panda_action_to_controller(action), [[1.0, -0.5, 0.2, -0.5, 0, 0, -0.5]], atol=1e-6)
    rng = np.random.default_rng(1)
    euler = rng.uniform(-0.5, 0.5, (50, 3))
    actions = np.concatenate([np.zeros((50, 3)), euler, np.ones((50, 1))], 1)
    intrinsic = Rotation.from_euler("xyz", euler * ms.PANDA_ROTATION_SCALE).as_euler("XYZ")
    np.testing.assert_allclose(ms.panda_action_to_controller(actions)[:, 3:6], -intrinsic / 0.1, atol=1e-5)
    # A rotation longer than 0.1 rad is scaled to 0.1 rad, as the controller itself would.
    big = ms.panda_action_to_controller(np.array([[0, 0, 0, 1, 1, 1, 1]], np.float32))
    assert np.linalg.norm(big[0, 3:6]) == pytest.approx(1.0, abs=1e-6)


def test_expert_action_inverts_the_panda_conversion():
    current = np.array([0.1, 0.0, 0.2, *rotations.euler_to_quat([np.pi, 0.0, 0.3])])
    target_euler = np.array([0.03, -0.04, 0.05])  # rotation about base-aligned axes, applied on the left
    target_rot = rotations.euler_to_matrix(target_euler) @ rotations.quat_to_matrix(current[3:])
    target = np.concatenate([[0.12, -0.01, 0.25], rotations.matrix_to_quat(target_rot)])
    action = ms.panda_action_toward(current, target, openness=1.0)
    np.testing.assert_allclose(action, [0.2, -0.1, 0.5, 0.3, -0.4, 0.5, 1.0], atol=1e-5)
    far = ms.panda_action_toward(current, target + [1, 0, 0, 0, 0, 0, 0], openness=0.0)
    assert far[0] == 1.0 and far[6] == 0.0  # clipped into the action space


def test_widowx_expert_action_inverts_the_widowx_conversion():
    """Applying the controller's update (xyz added; rotation left-multiplied by the intrinsic-XYZ reading of the
    rotation vector) to widowx_action_toward's action reaches the target when it is within one step."""
    current = np.array([0.25, 0.0, 0.1, *rotations.euler_to_quat([0.0, np.pi / 2, 0.3])])
    step_rotation = rotations.euler_to_matrix([0.03, -0.04, 0.15])
    target_rotation = step_rotation @ rotations.quat_to_matrix(current[3:])
    target = np.concatenate([[0.27, -0.03, 0.12], rotations.matrix_to_quat(target_rotation)])
    action = ms.widowx_action_toward(current, target, openness=0.0)
    controller = ms.widowx_action_to_controller(action[None])[0]
    reached = rotations.euler_to_matrix(controller[3:6], "XYZ") @ rotations.quat_to_matrix(current[3:])
    np.testing.assert_allclose(current[:3] + controller[:3], target[:3], atol=1e-6)
    np.testing.assert_allclose(reached, rotations.quat_to_matrix(target[3:]), atol=1e-5)
    assert controller[6] == -1.0  # closed
    # Far away: the step shrinks (direction kept) into 0.9 x bridge_orig's q01..q99, per dimension.
    far = ms.widowx_action_toward(current, target + [0.5, 0.1, 0, 0, 0, 0, 0], openness=1.0)
    np.testing.assert_allclose(far[0], 0.9 * ms.BRIDGE_ORIG_Q99[0], rtol=1e-5)
    np.testing.assert_allclose(far[1] / far[0], (-0.03 + 0.1) / (0.02 + 0.5), rtol=1e-5)
    assert (far[:6] <= 0.9 * ms.BRIDGE_ORIG_Q99 + 1e-6).all() and (far[:6] >= 0.9 * ms.BRIDGE_ORIG_Q01 - 1e-6).all()


# ---- registry ------------------------------------------------------------------------------------------------


def test_registry_lists_maniskill_tasks():
    specs = {spec.task_id: spec for spec in envs.list_tasks(backend="maniskill3")}
    assert set(specs) == set(PANDA_IDS) | set(BRIDGE_IDS)
    assert all(specs[i].suite == "maniskill-panda" and specs[i].robot == "panda" for i in PANDA_IDS)
    assert all(specs[i].suite == "simpler-bridge" and specs[i].robot == "widowx" for i in BRIDGE_IDS)
    with_expert = {i for i, spec in specs.items() if spec.expert_factory is not None}
    solved = ("PickCube", "StackCube", "PushCube", "PullCube", "PlaceSphere", "LiftPegUpright")
    assert with_expert == {f"maniskill/{name}" for name in solved} | set(BRIDGE_IDS)
    assert specs["simpler/PutCarrotOnPlateInScene"].backend_env_id == "PutCarrotOnPlateInScene-v1"
    if not ms._cuda_available():  # then make_vec falls back to process workers
        assert specs["maniskill/PickCube"].vec_factory(num_envs=2, seed=0) is None


# ---- Panda tasks ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", PANDA_IDS)
def test_panda_task_contract(task_id):
    env = envs.make(task_id, image_size=(SIZE, SIZE + 16))
    try:
        obs, info = env.reset(seed=0)
        _assert_contract(env, obs, info, state_dim=25)
        assert obs["instruction"] == envs.get_spec(task_id).instruction
        for _ in range(2):
            obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
        _assert_contract(env, obs, info, state_dim=25)
        assert isinstance(reward, float) and 0.0 <= reward <= 1.0  # normalized dense reward
        assert isinstance(terminated, bool) and truncated is False
    finally:
        env.close()


def test_panda_rotation_actions_turn_the_commanded_way(pick_cube):
    """Guards PANDA_ROTATION_SIGN: a positive roll/pitch/yaw action rotates the gripper positively about x/y/z."""
    for axis in range(3):
        obs, _ = pick_cube.reset(seed=0)
        start = rotations.quat_to_matrix(obs["state"][-4:])
        action = np.zeros(7, np.float32)
        action[3 + axis], action[6] = 0.5, 1.0
        for _ in range(3):
            obs, *_ = pick_cube.step(action)
        turned = rotations.matrix_to_euler(rotations.quat_to_matrix(obs["state"][-4:]) @ start.T)
        assert turned[axis] > 0.03 and np.abs(np.delete(turned, axis)).max() < 0.01


def test_seeded_resets_are_reproducible(pick_cube):
    def rollout(seed):
        first, _ = pick_cube.reset(seed=seed)
        step_obs, *_ = pick_cube.step(np.array([0.3, -0.2, 0.1, 0.0, 0.0, 0.2, 0.0], np.float32))
        continued, _ = pick_cube.reset()  # continues seed's stream
        return first, step_obs, continued

    a, b, other = rollout(7), rollout(7), rollout(8)
    for obs_a, obs_b in zip(a, b):
        np.testing.assert_array_equal(obs_a["image"], obs_b["image"])
        np.testing.assert_array_equal(obs_a["state"], obs_b["state"])
    assert not np.array_equal(a[0]["image"], other[0]["image"])
    assert not np.array_equal(a[0]["image"], a[2]["image"])


def test_bad_actions_raise_or_clip_and_env_stays_usable(pick_cube):
    pick_cube.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        pick_cube.step(np.zeros(6, np.float32))
    with pytest.raises(ValueError, match="NaN"):
        pick_cube.step(np.array([np.nan, 0, 0, 0, 0, 0, 1], np.float32))
    big = np.array([5.0, -5.0, 0.0, 0.0, 0.0, 0.0, 3.0], np.float32)
    pick_cube.reset(seed=0)
    clipped_obs, *_ = pick_cube.step(big)
    pick_cube.reset(seed=0)
    in_range_obs, *_ = pick_cube.step(np.clip(big, envs.registry.ACTION_LOW, envs.registry.ACTION_HIGH))
    np.testing.assert_array_equal(clipped_obs["state"], in_range_obs["state"])


def test_gymnasium_env_checker_passes(pick_cube):
    check_env(pick_cube, skip_render_check=False)


def test_render_returns_the_policy_image():
    env = envs.make("maniskill/PushCube", image_size=SIZE, render_mode="rgb_array")
    try:
        obs, _ = env.reset(seed=0)
        np.testing.assert_array_equal(env.render(), obs["image"])
        assert env.metadata["render_fps"] == 20
    finally:
        env.close()


def test_expert_solves_pick_cube():
    env = envs.make("maniskill/PickCube", image_size=32)
    expert = envs.get_spec("maniskill/PickCube").expert_factory()
    try:
        obs, info = env.reset(seed=0)
        expert.reset(env, obs, info)
        assert expert.planned
        for _ in range(env.task.horizon):
            obs, _, terminated, truncated, info = env.step(expert.act(obs))
            if terminated or truncated:
                break
        assert info["success"] and terminated
    finally:
        env.close()


def test_vector_env_steps_and_autoresets_on_cpu():
    """The GPU vector env's code path, run on the CPU simulation with one sub-scene and a 3-step horizon."""
    task = dataclasses.replace(ms.PANDA_TASKS[0], horizon=3)
    vec = ms.ManiSkillVectorEnv(task, num_envs=1, seed=5, sim_backend="cpu", image_size=32)
    try:
        obs, info = vec.reset()
        assert obs["image"].shape == (1, 32, 32, 3) and obs["state"].shape == (1, 25)
        assert obs["instruction"] == (task.instruction,) and info["success"].tolist() == [False]
        single = envs.make(task.task_id, image_size=32)
        np.testing.assert_array_equal(single.reset(seed=5)[0]["state"], obs["state"][0])  # env i gets seed + i
        single.close()
        actions = np.zeros((1, 7), np.float32)
        for _ in range(3):
            obs, reward, terminated, truncated, info = vec.step(actions)
        assert truncated.tolist() == [True] and info["_final_obs"].tolist() == [True]
        assert info["final_obs"][0]["state"].shape == (25,) and info["elapsed_steps"].tolist() == [3]
        assert not np.array_equal(info["final_obs"][0]["image"], obs["image"][0])  # obs is the reset's
        with pytest.raises(ValueError, match="shape"):
            vec.step(np.zeros((2, 7), np.float32))
    finally:
        vec.close()


# ---- Bridge / WidowX tasks -----------------------------------------------------------------------------------


@pytest.mark.parametrize("task_id", BRIDGE_IDS)
def test_bridge_task_contract(task_id):
    _bridge_assets_or_skip(task_id)
    native = task_id == "simpler/PutCarrotOnPlateInScene"  # one task through SimplerEnv's 640x480 + resize path
    env = envs.make(task_id, image_size=(SIZE, SIZE + 16), native_camera=native)
    try:
        obs, info = env.reset(seed=0)
        _assert_contract(env, obs, info, state_dim=23)
        assert obs["instruction"] == envs.get_spec(task_id).instruction  # the table agrees with the task's own
        action = np.array([0.01, 0.0, -0.01, 0.0, 0.05, 0.0, 1.0], np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        _assert_contract(env, obs, info, state_dim=23)
        assert reward == float(info["success"]) and env.metadata["render_fps"] == 5
        assert obs["image"].std() > 10  # the real-background overlay, not a blank frame
    finally:
        env.close()


def test_bridge_seeding_and_episode_ids(carrot):
    first, _ = carrot.reset(seed=3)
    again, _ = carrot.reset(seed=3)
    np.testing.assert_array_equal(first["image"], again["image"])
    configs = [carrot.reset(options={"episode_id": k})[0]["image"] for k in (0, 1, 0)]
    np.testing.assert_array_equal(configs[0], configs[2])
    assert not np.array_equal(configs[0], configs[1])


def test_two_bridge_envs_keep_their_own_greenscreen(carrot):
    """mani-skill 3.0.1 shares greenscreen bookkeeping between instances (class attributes); the adapter isolates it."""
    _bridge_assets_or_skip("simpler/PutEggplantInBasketScene")
    before, _ = carrot.reset(seed=0)
    eggplant = envs.make("simpler/PutEggplantInBasketScene", image_size=(48, 64), native_camera=False)
    try:
        eggplant.reset(seed=0)
        base = eggplant.maniskill_env
        own_ids = {int(i) for link in base.agent.robot.get_links() for i in link.per_scene_id}
        own_ids |= {int(i) for i in base.objs["eggplant"].per_scene_id}
        assert set(base._segmentation_ids_to_keep.tolist()) == own_ids
        after, _ = carrot.reset(seed=0)
        np.testing.assert_array_equal(before["image"], after["image"])  # still its own background photo
    finally:
        eggplant.close()


def test_bridge_gymnasium_env_checker_passes(carrot):
    check_env(carrot, skip_render_check=False)


def test_bridge_moving_the_carrot_onto_the_plate_succeeds(carrot):
    from mani_skill.utils.structs.pose import Pose

    carrot.reset(seed=0)
    base = carrot.maniskill_env
    plate = base.objs[base.target_obj_name].pose.p
    base.objs[base.source_obj_name].set_pose(Pose.create_from_pq(p=plate + plate.new_tensor([0.0, 0.0, 0.03])))
    for _ in range(3):
        _, reward, terminated, _, info = carrot.step(np.array([0, 0, 0, 0, 0, 0, 1], np.float32))
    assert info["success"] and terminated and reward == 1.0


@pytest.fixture(scope="module")
def carrot_episodes(carrot):
    """The Bridge expert's episodes of the carrot task from seeds 0 and 1 (arrays of envs.demos' schema)."""
    from envs.demos import rollout_expert

    expert = envs.get_spec("simpler/PutCarrotOnPlateInScene").expert_factory()
    return [rollout_expert(carrot, expert, seed) for seed in (0, 1)]


def test_bridge_expert_solves_the_carrot_task_and_its_demo_replays(carrot, carrot_episodes):
    for episode in carrot_episodes:
        assert episode["successes"][-1] and len(episode["actions"]) < carrot.task.horizon
        actions = episode["actions"][:, :6]
        assert (actions <= 0.91 * ms.BRIDGE_ORIG_Q99).all() and (actions >= 0.91 * ms.BRIDGE_ORIG_Q01).all()
    _assert_replays(carrot, carrot_episodes[1])


def test_bridge_reset_does_not_depend_on_the_previous_episode(carrot):
    """Seed 0's expert ends with the gripper over the plate, where seed 5's carrot appears: the objects settle before
    ManiSkill resets the robot, so without the adapter's rest-pose restore that carrot is knocked over."""
    from envs.demos import rollout_expert

    def scene():
        base = carrot.maniskill_env
        return np.concatenate([actor.pose.raw_pose[0].numpy() for actor in base.objs.values()])

    first, _ = carrot.reset(seed=5)
    before = scene()
    rollout_expert(carrot, envs.get_spec("simpler/PutCarrotOnPlateInScene").expert_factory(), 0)
    again, _ = carrot.reset(seed=5)
    np.testing.assert_allclose(scene(), before, atol=1e-5)  # PhysX's solver leaves ~1e-7 differences
    np.testing.assert_allclose(again["state"], first["state"], atol=1e-5)


def test_expert_actions_survive_openvla_tokenization(carrot_episodes):
    """normalize (bridge_orig q01/q99) -> tokenize -> decode -> un-normalize returns every expert action within half
    a bin: the demos are in the units and range OpenVLA's Bridge actions have."""
    from vla.actions import ActionStats, ActionTokenizer

    norm_stats = {"bridge_orig": {"action": {"q01": [*ms.BRIDGE_ORIG_Q01, 0.0], "q99": [*ms.BRIDGE_ORIG_Q99, 1.0],
                                             "mask": [True] * 6 + [False]}}}
    stats, tokenizer = ActionStats.from_norm_stats(norm_stats, "bridge_orig"), ActionTokenizer(32000, 256)
    actions = np.concatenate([episode["actions"] for episode in carrot_episodes])
    decoded = stats.unnormalize(tokenizer.decode(tokenizer.encode(stats.normalize(actions))))
    half_bin = np.append(ms.BRIDGE_ORIG_Q99 - ms.BRIDGE_ORIG_Q01, 2.0) / 255 / 2  # gripper: unnormalized [-1, 1]
    assert (np.abs(decoded - actions) <= half_bin * (1 + 1e-4)).all()
    np.testing.assert_array_equal(decoded[:, 6] > 0.5, actions[:, 6] > 0.5)  # the binarized gripper command


def _assert_replays(env, episode):
    """Replaying the recorded actions (what a policy would send) reproduces every state, the images (SAPIEN's CPU
    renderer may differ in a few pixels between renders of the same state) and the success at every step."""
    obs, _ = env.reset(seed=int(episode["seed"]))
    for t, action in enumerate(episode["actions"]):
        np.testing.assert_array_equal(obs["state"], episode["states"][t])
        assert np.abs(obs["image"].astype(int) - episode["images"][t]).mean() < 2.0
        obs, _, terminated, _, info = env.step(action)
        assert info["success"] == episode["successes"][t]
    assert terminated and info["success"]


@pytest.mark.slow
@pytest.mark.parametrize("task_id", BRIDGE_IDS)
def test_bridge_experts_solve_their_tasks(task_id):
    from envs.demos import evaluate_expert

    _bridge_assets_or_skip(task_id)
    assert evaluate_expert(task_id, 3, seed=100, image_size=SIZE, native_camera=False) == 1.0


@pytest.mark.slow
def test_bridge_demo_replays_in_a_fresh_env(tmp_path):
    """A recorded 224 px native-camera demo replays to the same states and success in another env instance."""
    from envs.demos import generate_demos

    task_id = "simpler/StackGreenCubeOnYellowCubeBakedTexInScene"
    _bridge_assets_or_skip(task_id)
    dataset = generate_demos(task_id, 1, tmp_path, seed=7, env_options={"image_size": 224}, log=lambda s: None)
    episode = dataset.episode(0)
    assert episode["images"].shape[1:] == (224, 224, 3) and dataset.meta["action_stats"]["mask"][6] is False
    env = envs.make(task_id, image_size=224)
    try:
        _assert_replays(env, episode)
    finally:
        env.close()


# ---- assets --------------------------------------------------------------------------------------------------


def test_missing_bridge_assets_give_a_clear_error(tmp_path):
    with pytest.raises(ms.MissingAssetsError, match="download_asset bridge_v2_real2sim -y"):
        ms.check_bridge_assets(ms.BRIDGE_TASKS[0], tmp_path / "data")
    empty_folder = tmp_path / "data" / "tasks" / "bridge_v2_real2sim_dataset"  # what a failed download leaves
    empty_folder.mkdir(parents=True)
    with pytest.raises(ms.MissingAssetsError, match="info_bridge_custom_v0.json"):
        ms.check_bridge_assets(ms.BRIDGE_TASKS[0], tmp_path / "data")


def test_make_without_assets_raises_and_creates_nothing(tmp_path):
    """In a fresh process (ManiSkill fixes MS_ASSET_DIR at import): no prompt, a clear error, no folders."""
    asset_dir = tmp_path / "assets"
    asset_dir.mkdir()
    code = (
        "import envs\n"
        "from envs.maniskill import MissingAssetsError\n"
        "try:\n"
        "    envs.make('simpler/PutCarrotOnPlateInScene')\n"
        "except MissingAssetsError as error:\n"
        "    print('MISSING', error)\n"
    )
    env = {**os.environ, "MS_ASSET_DIR": str(asset_dir), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300
    )
    assert "MISSING" in result.stdout and "widowx250s" in result.stdout, result.stdout + result.stderr
    assert list(asset_dir.iterdir()) == []
