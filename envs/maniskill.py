"""ManiSkill3 (SAPIEN 3) tasks: SimplerEnv's Bridge/WidowX digital twins and Panda tabletop tasks.

Tasks (`BRIDGE_TASKS`, `PANDA_TASKS`; ids "simpler/<Task>" and "maniskill/<Task>", backend "maniskill3"):

simpler/* (suite "simpler-bridge", robot "widowx"): ManiSkill3's ports of SimplerEnv's BridgeData v2 evaluation
scenes (PutCarrotOnPlateInScene-v1, PutSpoonOnTableClothInScene-v1, StackGreenCubeOnYellowCubeBakedTexInScene-v1,
PutEggplantInBasketScene-v1), 5 Hz control, horizons 60/60/60/120 steps as in SimplerEnv.
  Randomizations: each reset picks one of the scene's fixed episode configurations (SimplerEnv's grid of source and
  target object positions x object orientations: 24, 24, 24 and 64 configurations), chosen by the seed; reset
  option {"episode_id": k} picks configuration k as SimplerEnv's own evaluation does (episodes 0, 1, 2, ...).
  Success: the source object rests on the target (bounding boxes overlap in xy, source above target within 2 cm,
  6 cm for the eggplant; carrot and green cube must also touch the target) - ManiSkill's `BaseBridgeEnv._evaluate`.
  Instruction: the task's own `get_language_instruction()`.
maniskill/* (suite "maniskill-panda", robot "panda"): ManiSkill3's tabletop tasks at 20 Hz with the task's
  sensor camera ("base_camera"), horizons set from the motion-planning expert's episode lengths (`PANDA_TASKS`).
  Randomizations and success are ManiSkill's own (each task class's docstring), in short:
  PickCube: cube xy in a 20 cm square, random yaw, goal point up to 30 cm above the table; success = cube within
    2.5 cm of the goal and the robot static. ManiSkill hides the goal from cameras; here it is shown (a green
    sphere), since a policy that sees only images could not know where to go otherwise.
  StackCube: two cubes at random non-overlapping xy and yaw; red cube on the green one, static, released.
  PushCube / PullCube: cube xy in a 20 cm square, target 0.2 m in front of / behind it; cube centre on the target.
  PlaceSphere: ball and bin at random xy; ball resting in the bin, static, released.
  LiftPegUpright: peg lying at random xy; peg standing upright on the table.
  PokeCube: peg and cube at random xy, cube yaw +-30 deg; cube pushed onto the target with the peg, robot static.
  RollBall: ball and target at random positions far apart; ball rolled onto the target.
  The robot's initial joint positions get ManiSkill's small noise (std 0.02 rad).

Seeding: reset(seed=s) seeds ManiSkill's episode RNG (and torch, inside a fork), so the same s gives the same scene;
reset() continues that seed's stream (ManiSkill's `enhanced_determinism`). Bridge scenes: before every reset the
robot is put back at rest as construction left it, since ManiSkill lets the objects settle before it resets the
robot (the previous episode's arm could knock them); so reset(seed=s) gives the same scene whatever came before.

Every conversion lives here:
- Actions, contract [dx, dy, dz, droll, dpitch, dyaw, gripper] (`envs.registry`: deltas in [-1, 1], gripper
  openness in [0, 1], 1 = open; out-of-range values are clipped, a wrong shape or NaN raises ValueError):
  * WidowX (`widowx_action_to_controller`, controller arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos):
    exactly what SimplerEnv's OpenVLA evaluation (simpler_env/policies/openvla/openvla_model.py, action_scale 1)
    sends: 1.0 = 1 m and 1 rad, i.e. OpenVLA's un-normalized Bridge action passes through; xyz unchanged; the
    Euler deltas (roll, pitch, yaw; extrinsic "xyz", transforms3d's euler2axangle) become a rotation vector;
    gripper openness -> +1 (open) if > 0.5 else -1 (closed), binarized. Deltas are applied to the controller's
    running target pose, translation in the robot-base frame, rotation about base-aligned axes at the gripper.
    Note: ManiSkill 3.0.1's controller reads that 3-vector as intrinsic "XYZ" Euler angles, not as a rotation
    vector; the two agree to second order in the angle (SimplerEnv's ManiSkill3 evaluation sends the same).
  * Panda (`panda_action_to_controller`, controller pd_ee_delta_pose, normalized): 1.0 = 0.1 m and 0.1 rad per
    step relative to the current gripper pose (translation in the robot-base frame, which here is aligned with
    the world; rotation about base-aligned axes at the gripper). The Euler delta (x 0.1 rad) is converted to the
    intrinsic "XYZ" angles the controller reads, its norm clipped to 0.1 rad as the controller would, and negated
    because mani-skill 3.0.1 scales rotations by the negative lower bound (haosulab/ManiSkill issue #1469; a test
    checks the realized direction). Gripper openness o -> 2 o - 1 (continuous, -1 closed, +1 open).
- Images: "image" is the policy camera at `image_size` (int or (H, W)). Panda: "base_camera" rendered directly at
  that size. WidowX: the "3rd_view_camera" with SimplerEnv's real-background overlay (the rendered background is
  replaced by a photo of the real scene; robot and task objects stay rendered). With native_camera=True (default)
  it is rendered at its native 640x480 and resized with OpenCV INTER_AREA, what SimplerEnv feeds OpenVLA; with
  native_camera=False it is rendered directly at `image_size` with intrinsics scaled to the same field of view
  (about twice as fast, slightly sharper edges). Cameras use ManiSkill's "minimal" shader pack by default;
  SimplerEnv's ManiSkill3 evaluation script renders with shader_pack="default" (softer shading, ~3.5x slower on
  this CPU).
- State: float32 [D] = joint positions, joint velocities, end-effector position (m) and quaternion (w, x, y, z),
  the last two in the robot-base frame: Panda D = 9 + 9 + 7 = 25 ("panda_hand_tcp"), WidowX D = 8 + 8 + 7 = 23
  ("ee_gripper_link").
- Reward: Panda "dense" (default) = ManiSkill's normalized dense reward in [0, 1], or "sparse" = 1.0 on success;
  WidowX tasks have only "sparse". By default the episode terminates on success (ManiSkill's rule);
  terminate_on_success=False runs every episode to its horizon, as SimplerEnv's evaluation does.

Assets: ManiSkill reads MS_ASSET_DIR when first imported; unless the user set it, it defaults to
<repo>/.cache/maniskill (`DEFAULT_ASSET_DIR`). Panda tasks need no downloads. WidowX tasks need the asset ids
bridge_v2_real2sim and widowx250s; they are checked before ManiSkill is asked (`check_bridge_assets`), so a missing
file raises `MissingAssetsError` with instructions instead of ManiSkill's interactive download prompt, and no empty
folder is created. ../shared/assets/maniskill-bridge is a ready offline folder (its README lists its stand-ins).

Simulation: sim_backend="cpu" (default, one env per process; envs.make_vec runs process workers) or "gpu" (CUDA).
`make_gpu_vec` (TaskSpec.vec_factory) gives envs.make_vec one GPU-batched ManiSkill env, `ManiSkillVectorEnv`, when
CUDA is present, and None otherwise. It is written device-agnostically and tested here only through its CPU path
(num_envs=1); the GPU simulation itself has not been run (no CUDA on the development machine). Rendering uses CUDA
when present, else SAPIEN's CPU (Vulkan lavapipe) renderer; OMP_NUM_THREADS=1 makes CPU rendering ~20% cheaper
(the vector workers set it; set it yourself for single envs if torch is not sharing the process).

Experts: `MotionPlanningExpert`, ManiSkill's motion-planning solutions (mani_skill.examples.motionplanning.panda)
for PickCube, StackCube, PushCube, PullCube, PlaceSphere and LiftPegUpright, re-expressed as contract actions;
`BridgeExpert`, a top-down grasp-and-place planner over the scene state for the four Bridge tasks, whose actions are
Bridge-sized steps (within 0.9 x OpenVLA's bridge_orig q01/q99) sent through the same WidowX conversion as a
policy's, so a recorded demo replays as a policy's actions would. Measured on the 2-core CPU (64 px, seeds 0-29):
see README's "Measured".
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from envs import rotations
from envs.registry import GRIPPER, TaskSpec, action_space, check_action, image_hw, observation_space, register

BACKEND = "maniskill3"
DEFAULT_ASSET_DIR = Path(__file__).resolve().parents[1] / ".cache" / "maniskill"
"""MS_ASSET_DIR used when the user has not set one (a project folder, never ~/.maniskill)."""

PANDA_TRANSLATION_SCALE = 0.1
"""Metres per step for a Panda translation action of 1.0 (pd_ee_delta_pose's bound)."""
def controller_to_action(actions: np.ndarray, control_mode: str) -> np.ndarray:
    """Controller actions [N, 7] (as ManiSkill trajectories store them) -> contract actions [N, 7]: the inverse of
    panda_action_to_controller (pd_ee_delta_pose) and widowx_action_to_controller (Bridge's control mode)."""
    actions = np.asarray(actions, dtype=np.float64)
    if actions.ndim != 2 or actions.shape[1] != 7:
        raise ValueError(f"expected [N, 7] controller actions, got shape {actions.shape}")
    if control_mode == PANDA.control_mode:
        controller_angles = PANDA_ROTATION_SIGN * actions[:, 3:6] * PANDA_ROTATION_SCALE
        euler = rotations.matrix_to_euler(rotations.euler_to_matrix(controller_angles, "XYZ"), "xyz")
        rotation, gripper = euler / PANDA_ROTATION_SCALE, (actions[:, GRIPPER:] + 1.0) / 2.0
    elif control_mode == WIDOWX.control_mode:
        rotation = rotations.axis_angle_to_euler(actions[:, 3:6], "xyz")
        gripper = (actions[:, GRIPPER:] > 0).astype(np.float64)
    else:
        raise ValueError(
            f"control mode {control_mode!r} has no conversion to Razor's actions; convert the trajectories first: "
            f"python -m mani_skill.trajectory.replay_trajectory --traj-path FILE.h5 --target-control-mode "
            f"{PANDA.control_mode} --obs-mode rgb --save-traj"
        )
    return np.concatenate([actions[:, :3], rotation, gripper], axis=1).astype(np.float32)


PANDA_ROTATION_SCALE = 0.1
"""Radians per step for a Panda rotation action of 1.0 (pd_ee_delta_pose's bound)."""
PANDA_ROTATION_SIGN = -1.0
"""mani-skill 3.0.1 multiplies normalized rotations by rot_lower = -0.1 (issue #1469), so we pre-negate them."""


@dataclass(frozen=True)
class Robot:
    """What the adapter needs to know about one robot set-up."""

    name: str
    control_mode: str
    ee_link: str
    """Link whose pose (in the robot-base frame) is the end-effector part of the state."""
    camera: str
    """The policy camera (a sensor of the ManiSkill env)."""
    obs_mode: str
    control_freq: int


PANDA = Robot("panda", "pd_ee_delta_pose", "panda_hand_tcp", "base_camera", "rgb", 20)
WIDOWX = Robot(
    "widowx",
    "arm_pd_ee_target_delta_pose_align2_gripper_pd_joint_pos",
    "ee_gripper_link",
    "3rd_view_camera",
    "rgb+segmentation",  # the background overlay needs the segmentation
    5,
)
WIDOWX_NATIVE_SIZE = (480, 640)
"""(H, W) of the Bridge 3rd-view camera."""
WIDOWX_NATIVE_INTRINSIC = np.array([[623.588, 0, 319.501], [0, 623.588, 239.545], [0, 0, 1]])
"""Its intrinsics at that size (ManiSkill's, measured on the real Logitech C920), for both Bridge scenes."""


@dataclass(frozen=True)
class Task:
    """One registered task: the ManiSkill env id and what Razor adds to it."""

    env_id: str
    """ManiSkill id, e.g. "PickCube-v1"."""
    instruction: str
    """The instruction given to the policy (for Bridge tasks, the same as the env's get_language_instruction())."""
    horizon: int
    """Fixed episode length in steps (truncation)."""
    robot: Robot
    solver: str | None = None
    """Name of the motion-planning solution in mani_skill.examples.motionplanning.panda.solutions, if any."""
    models: tuple[str, ...] = ()
    """Bridge object models the scene loads (checked before the env is built)."""
    place_height: float | None = None
    """Bridge expert (`BridgeExpert`): height (m) of the source object's centre above the target's centre at which
    it is released; None: the task has no Bridge expert."""

    @property
    def task_id(self) -> str:
        prefix = "simpler" if self.robot is WIDOWX else "maniskill"
        return f"{prefix}/{self.env_id.removesuffix('-v1')}"


# Release heights: half the target's and the source's heights (bounding boxes of the scene's model database) plus
# ~1 cm of drop (0.8 cm for the cube, which must land within 2.4 cm of the yellow cube's centre); the eggplant is
# dropped from higher, into the basket (success allows a 6 cm gap).
BRIDGE_TASKS = (
    Task("PutCarrotOnPlateInScene-v1", "put carrot on plate", 60, WIDOWX,
         models=("bridge_carrot_generated_modified", "bridge_plate_objaverse_larger"), place_height=0.035),
    Task("PutSpoonOnTableClothInScene-v1", "put the spoon on the towel", 60, WIDOWX,
         models=("bridge_spoon_generated_modified", "table_cloth_generated_shorter"), place_height=0.03),
    Task("StackGreenCubeOnYellowCubeBakedTexInScene-v1", "stack the green block on the yellow block", 60, WIDOWX,
         models=("baked_green_cube_3cm", "baked_yellow_cube_3cm"), place_height=0.038),
    Task("PutEggplantInBasketScene-v1", "put eggplant into yellow basket", 120, WIDOWX,
         models=("eggplant", "dummy_sink_target_plane", "sink"), place_height=0.06),
)  # fmt: skip
# Horizons: 1.5-1.7x the expert's longest episode (stride 2, seeds 0-9: 45, 60, 39, 40, 70, 99 steps), leaving a
# slower policy room; PokeCube and RollBall, which have no expert: twice ManiSkill's own.
PANDA_TASKS = (
    Task("PickCube-v1", "pick up the red cube and move it to the green sphere", 70, PANDA, "solvePickCube"),
    Task("StackCube-v1", "stack the red cube on top of the green cube", 100, PANDA, "solveStackCube"),
    Task("PushCube-v1", "push the blue cube onto the red and white target", 60, PANDA, "solvePushCube"),
    Task("PullCube-v1", "pull the blue cube back onto the red and white target", 60, PANDA, "solvePullCube"),
    Task("PlaceSphere-v1", "place the blue ball into the bin", 110, PANDA, "solvePlaceSphere"),
    Task("LiftPegUpright-v1", "lift the peg and stand it upright on the table", 150, PANDA, "solveLiftPegUpright"),
    Task("PokeCube-v1", "use the blue peg to push the red cube onto the target", 100, PANDA),
    Task("RollBall-v1", "push the blue ball so that it rolls onto the red and white target", 160, PANDA),
)


# ---- Action conversions (batched: [N, 7] contract actions -> [N, 7] controller actions) -------------------------


def widowx_action_to_controller(actions: np.ndarray) -> np.ndarray:
    """Contract actions [N, 7] -> WidowX controller actions [N, 7] = [xyz (m), rotation vector (rad), gripper +-1].

    SimplerEnv's OpenVLA conversion: xyz and the Euler deltas pass through in metres and radians (action_scale 1),
    the Euler angles ("xyz" extrinsic) become axis * angle, gripper openness > 0.5 -> +1 (open), else -1 (closed).
    """
    actions = np.asarray(actions, dtype=np.float64)
    gripper = np.where(actions[:, GRIPPER:] > 0.5, 1.0, -1.0)
    rotvec = rotations.euler_to_axis_angle(actions[:, 3:6], "xyz")
    return np.concatenate([actions[:, :3], rotvec, gripper], axis=1).astype(np.float32)


def panda_action_to_controller(actions: np.ndarray) -> np.ndarray:
    """Contract actions [N, 7] -> Panda pd_ee_delta_pose actions [N, 7], normalized to [-1, 1].

    xyz pass through (1.0 = 0.1 m). The Euler delta (1.0 = 0.1 rad, "xyz" extrinsic) becomes the same rotation
    as intrinsic "XYZ" angles (what mani-skill 3.0.1 reads), norm-clipped to 0.1 rad, divided by 0.1 and negated
    (PANDA_ROTATION_SIGN). Gripper openness o in [0, 1] -> 2 o - 1.
    """
    actions = np.asarray(actions, dtype=np.float64)
    euler = actions[:, 3:6] * PANDA_ROTATION_SCALE
    controller_angles = rotations.matrix_to_euler(rotations.euler_to_matrix(euler, "xyz"), "XYZ")
    norm = np.linalg.norm(controller_angles, axis=1, keepdims=True)
    controller_angles *= np.minimum(1.0, PANDA_ROTATION_SCALE / np.maximum(norm, 1e-12))
    rotation = PANDA_ROTATION_SIGN * controller_angles / PANDA_ROTATION_SCALE
    gripper = 2.0 * actions[:, GRIPPER:] - 1.0
    return np.concatenate([actions[:, :3], rotation, gripper], axis=1).astype(np.float32)


def panda_action_toward(current: np.ndarray, target: np.ndarray, openness: float) -> np.ndarray:
    """The Panda contract action [7] that moves the end effector from the `current` to the `target` pose, clipped
    to one step's range; the inverse of panda_action_to_controller's pose change.

    Poses are [7] = position (m) + quaternion (w, x, y, z) in the robot-base frame (the state's last 7 entries).
    """
    delta_pos = (target[:3] - current[:3]) / PANDA_TRANSLATION_SCALE
    # Rotation about base-aligned axes at the gripper: R_target = R_delta @ R_current.
    r_delta = rotations.quat_to_matrix(target[3:]) @ rotations.quat_to_matrix(current[3:]).T
    delta_euler = rotations.matrix_to_euler(r_delta, "xyz") / PANDA_ROTATION_SCALE
    action = np.concatenate([delta_pos, delta_euler, [openness]])
    return check_action(action)


BRIDGE_ORIG_Q01 = np.array([-0.02872725307941437, -0.04170349963009357, -0.026093858778476715,
                            -0.08092105075716972, -0.09288699507713317, -0.20718276381492615])
BRIDGE_ORIG_Q99 = np.array([0.028309678435325586, 0.040855254605412394, 0.040161586627364146,
                            0.08192047759890528, 0.07792850524187081, 0.20382574498653397])
"""OpenVLA-7B's "bridge_orig" action statistics (1st/99th percentiles of BridgeData v2's [dx, dy, dz, droll, dpitch,
dyaw] per 5 Hz step, metres and radians; config.json's norm_stats): what its action tokens resolve."""
WIDOWX_EXPERT_FRACTION = 0.9
"""The WidowX expert's per-step deltas stay within this fraction of [BRIDGE_ORIG_Q01, BRIDGE_ORIG_Q99], so that its
demos are Bridge-like motions that survive OpenVLA's normalization without clipping."""


def widowx_action_toward(
    current: np.ndarray, target: np.ndarray, openness: float, fraction: float = WIDOWX_EXPERT_FRACTION
) -> np.ndarray:
    """The WidowX contract action [7] that moves the controller's target pose from `current` toward `target`: the
    inverse of widowx_action_to_controller's pose change, scaled down (direction kept) to at most `fraction` of
    the bridge_orig q01/q99 range per dimension.

    Poses are [7] = position (m) + quaternion (w, x, y, z) in the robot-base frame. The controller adds the xyz
    delta to the target position and left-multiplies the target rotation by the rotation whose intrinsic "XYZ"
    angles are the rotation vector it receives; so the contract's Euler angles are chosen to make that rotation
    vector equal the intrinsic angles of the wanted rotation (exact, not only to second order).
    """
    low, high = fraction * BRIDGE_ORIG_Q01, fraction * BRIDGE_ORIG_Q99

    def scale_into_bounds(delta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
        limits = np.where(delta > 0, hi, lo)
        ratios = np.divide(limits, delta, out=np.ones_like(delta), where=np.abs(delta) > 1e-12)
        return float(min(1.0, ratios.min()))

    delta_pos = target[:3] - current[:3]
    delta_pos = delta_pos * scale_into_bounds(delta_pos, low[:3], high[:3])

    def contract_euler(rotvec: np.ndarray) -> np.ndarray:
        controller_angles = rotations.matrix_to_euler(rotations.axis_angle_to_matrix(rotvec), "XYZ")
        return rotations.axis_angle_to_euler(controller_angles, "xyz")

    wanted = rotations.quat_to_matrix(target[3:]) @ rotations.quat_to_matrix(current[3:]).T  # about base axes
    rotvec = rotations.matrix_to_axis_angle(wanted)
    rotvec = rotvec * scale_into_bounds(contract_euler(rotvec), low[3:], high[3:])
    action = np.concatenate([delta_pos, contract_euler(rotvec), [openness]])
    return check_action(action)


# ---- Assets --------------------------------------------------------------------------------------------------


class MissingAssetsError(FileNotFoundError):
    """ManiSkill assets a task needs are not in MS_ASSET_DIR."""


def configure_asset_dir() -> Path:
    """Point ManiSkill at the project's asset folder (unless the user chose one) and return its data folder.

    ManiSkill fixes its asset folder when first imported; if it was imported earlier, its choice is returned.
    """
    os.environ.setdefault("MS_ASSET_DIR", str(DEFAULT_ASSET_DIR))
    import mani_skill

    return Path(mani_skill.ASSET_DIR)


def check_bridge_assets(task: Task, data_dir: Path) -> None:
    """Raise MissingAssetsError unless every file the Bridge `task` loads exists under `data_dir` (MS_ASSET_DIR/data).

    Files, not folders, are checked: an interrupted download leaves empty folders behind.
    """
    bridge = Path("tasks/bridge_v2_real2sim_dataset")
    required = [
        Path("robots/widowx/wx250s.urdf"),
        bridge / "custom/info_bridge_custom_v0.json",
        bridge / "custom/info_bridge_custom_baked_tex_v0.json",
        bridge / "real_inpainting/bridge_real_eval_1.png",
        bridge / "real_inpainting/bridge_sink.png",
        bridge / "stages/bridge_table_1_v1.glb",
        bridge / "stages/bridge_table_1_v2.glb",
        *(bridge / "custom/models" / model / "collision.obj" for model in task.models),
    ]
    missing = [str(path) for path in required if not (data_dir / path).is_file()]
    if missing:
        asset_dir = data_dir.parent
        raise MissingAssetsError(
            f"{task.task_id} needs ManiSkill assets that are missing under MS_ASSET_DIR={asset_dir}: "
            f"{', '.join(missing[:4])}{' ...' if len(missing) > 4 else ''}. On a machine with internet access run "
            f"`MS_ASSET_DIR={asset_dir} python -m mani_skill.utils.download_asset bridge_v2_real2sim -y` and the "
            f"same with `widowx250s`, or set MS_ASSET_DIR to a folder that has them (for tests and CPU runs: "
            f"../shared/assets/maniskill-bridge) before this process first imports ManiSkill."
        )


# ---- The adapter ---------------------------------------------------------------------------------------------


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@functools.cache
def _keep_renderer_warm(render_device: str):
    """An idle SAPIEN render system kept for the life of the process.

    SAPIEN tears its renderer down when the last env using it is closed; rebuilding it (llvmpipe recompiles its
    shaders) costs ~8 s per env on CPU, e.g. when envs are made one after another in an evaluation loop.
    """
    import sapien

    return sapien.render.RenderSystem(sapien.Device(render_device))


def _fix_shared_greenscreen_state() -> None:
    """Isolate ManiSkill's digital-twin greenscreen bookkeeping between env instances.

    mani-skill 3.0.1 keeps the list of objects to exclude from the background overlay and the overlay images in
    class attributes, so a second Bridge env in the same process would inherit the first one's segmentation ids.
    """
    from mani_skill.envs.tasks.digital_twins.base_env import BaseDigitalTwinEnv

    BaseDigitalTwinEnv._objects_to_remove_from_greenscreen = []
    BaseDigitalTwinEnv._rgb_overlay_images = {}


class ManiSkillBatch:
    """One ManiSkill env of `num_envs` sub-scenes behind the contract, batched; ManiSkillEnv and the GPU vector
    env are thin views of it. All arrays it returns are numpy with a leading batch dimension [N, ...]."""

    def __init__(
        self,
        task: Task,
        num_envs: int = 1,
        image_size: int | tuple[int, int] = 224,
        sim_backend: str = "cpu",
        native_camera: bool = True,
        shader_pack: str = "minimal",
        reward: str | None = None,
        terminate_on_success: bool = True,
    ):
        if sim_backend not in ("cpu", "gpu"):
            raise ValueError(f"sim_backend must be 'cpu' or 'gpu', got {sim_backend!r}")
        if sim_backend == "cpu" and num_envs != 1:
            raise ValueError("ManiSkill's CPU simulation runs one env per process; use envs.make_vec for more")
        reward = reward or ("sparse" if task.robot is WIDOWX else "dense")
        if reward not in ("dense", "sparse") or (reward == "dense" and task.robot is WIDOWX):
            allowed = "'sparse'" if task.robot is WIDOWX else "'dense' or 'sparse'"
            raise ValueError(f"reward for {task.task_id} must be {allowed}, got {reward!r}")
        self.task, self.num_envs = task, num_envs
        self.image_hw = image_hw(image_size)
        self.native_camera = native_camera and task.robot is WIDOWX
        self.shader_pack = shader_pack
        self.reward, self.terminate_on_success = reward, terminate_on_success

        data_dir = configure_asset_dir()
        if task.robot is WIDOWX:
            check_bridge_assets(task, data_dir)
            _fix_shared_greenscreen_state()
        import mani_skill.envs  # noqa: F401  (registers the ManiSkill envs)
        from mani_skill.utils.registration import make as maniskill_make

        render_backend = "cuda" if _cuda_available() else "cpu"
        _keep_renderer_warm(render_backend)
        self.env = maniskill_make(
            task.env_id,
            num_envs=num_envs,
            obs_mode=task.robot.obs_mode,
            control_mode=task.robot.control_mode,
            reward_mode="normalized_dense" if reward == "dense" else "none",
            sensor_configs={task.robot.camera: self._camera_config()},
            render_mode=None,
            sim_backend="physx_cuda" if sim_backend == "gpu" else "physx_cpu",
            render_backend=render_backend,
            enhanced_determinism=True,
        )
        if task.env_id == "PickCube-v1":  # show the goal to the camera (see the module docstring)
            self.env._hidden_objects.remove(self.env.goal_site)
            self.env.goal_site.show_visual()
        if task.robot is WIDOWX:  # give this instance its own overlay image (see _fix_shared_greenscreen_state)
            self.env._rgb_overlay_images = dict(self.env._rgb_overlay_images)
        agent = self.env.agent
        self._ee_link = agent.robot.links_map[task.robot.ee_link]
        self.state_dim = 2 * agent.robot.get_qpos().shape[-1] + 7
        self.instruction = self.env.get_language_instruction()[0] if task.robot is WIDOWX else task.instruction
        # The robot as construction left it (see reset): joint positions and the joints' drive targets.
        robot = agent.robot
        self._rest_robot = (robot.get_qpos().clone(), robot.get_drive_targets().clone())

    def _camera_config(self) -> dict:
        h, w = self.image_hw
        if self.task.robot is PANDA:
            return dict(width=w, height=h, shader_pack=self.shader_pack)
        if self.native_camera:
            return dict(shader_pack=self.shader_pack)
        # Same field of view as the native 640x480 camera resized to (h, w): scale the intrinsics per axis.
        native_h, native_w = WIDOWX_NATIVE_SIZE
        intrinsic = WIDOWX_NATIVE_INTRINSIC.copy()
        intrinsic[0] *= w / native_w
        intrinsic[1] *= h / native_h
        return dict(width=w, height=h, intrinsic=intrinsic, shader_pack=self.shader_pack)

    # ---- conversions out --------------------------------------------------------------------------------------
    def observation(self, raw_obs: dict) -> dict:
        """Contract observations, batched: image uint8 [N, H, W, 3], state float32 [N, D], instruction list[str]."""
        rgb = raw_obs["sensor_data"][self.task.robot.camera]["rgb"].cpu().numpy()
        if self.native_camera:
            import cv2

            h, w = self.image_hw
            rgb = np.stack([cv2.resize(img, (w, h), interpolation=cv2.INTER_AREA) for img in rgb])
        robot = self.env.agent.robot
        ee_pose = (robot.pose.inv() * self._ee_link.pose).raw_pose
        state = np.concatenate(
            [raw_obs["agent"]["qpos"].cpu().numpy(), raw_obs["agent"]["qvel"].cpu().numpy(), ee_pose.cpu().numpy()],
            axis=1,
        ).astype(np.float32)
        return {"image": rgb, "state": state, "instruction": [self.instruction] * self.num_envs}

    def infos(self, raw_info: dict) -> list[dict]:
        """Per-env info dicts of python scalars; "success" is always a bool."""
        arrays = {k: v.cpu().numpy() for k, v in raw_info.items() if hasattr(v, "cpu") and v.ndim == 1}
        return [{k: v[i].item() for k, v in arrays.items()} for i in range(self.num_envs)]

    # ---- API --------------------------------------------------------------------------------------------------
    def reset(self, seed: int | list[int] | None = None, options: dict | None = None) -> tuple[dict, list[dict]]:
        if self.task.robot is WIDOWX:
            self._restore_rest_robot()
        raw_obs, raw_info = self.env.reset(seed=seed, options=dict(options or {}))
        return self.observation(raw_obs), self.infos(raw_info)

    def _restore_rest_robot(self) -> None:
        """Put the robot back where construction left it, at rest, with the same drive targets; stop the objects.

        The Bridge scenes let the objects settle (0.5-6 s of simulation) before they reset the robot, so without
        this the previous episode's last arm pose and drive targets take part in the settling (e.g. a gripper left
        hovering over one episode's plate knocks the next episode's carrot over), and so do the velocities the
        objects had when it ended (a dropped eggplant still rolling). With it, reset(seed=s) gives the
        same scene after any history as in a fresh env, and a recorded demo replays the same in another process.
        """
        robot = self.env.agent.robot
        qpos, drive_targets = self._rest_robot
        robot.set_qpos(qpos)
        robot.set_qvel(qpos * 0)
        robot.set_joint_drive_targets(drive_targets, robot.active_joints)
        for actor in self.env.objs.values():  # the scene re-poses them but keeps their last velocities
            actor.set_linear_velocity(actor.get_linear_velocity() * 0)
            actor.set_angular_velocity(actor.get_angular_velocity() * 0)

    def partial_reset(self, env_indices: np.ndarray) -> dict:
        """Reset only the sub-scenes `env_indices` (ManiSkill's partial reset, each continuing its own seed stream);
        returns the batched observation of all sub-scenes."""
        import torch

        raw_obs, _ = self.env.reset(options={"env_idx": torch.as_tensor(env_indices, device=self.env.device)})
        return self.observation(raw_obs)

    def step(self, actions: np.ndarray):
        """Contract actions [N, 7] (already validated) -> obs, reward [N], terminated [N], truncated [N], infos."""
        convert = widowx_action_to_controller if self.task.robot is WIDOWX else panda_action_to_controller
        raw_obs, raw_reward, terminated, _, raw_info = self.env.step(convert(actions))
        infos = self.infos(raw_info)
        success = np.array([info["success"] for info in infos], dtype=bool)
        reward = success.astype(np.float32) if self.reward == "sparse" else raw_reward.cpu().numpy().astype(np.float32)
        terminated = terminated.cpu().numpy() if self.terminate_on_success else np.zeros(self.num_envs, bool)
        truncated = self.env.elapsed_steps.cpu().numpy() >= self.task.horizon
        return self.observation(raw_obs), reward, terminated, truncated & ~terminated, infos

    def close(self) -> None:
        self.env.close()


class ManiSkillEnv(gym.Env):
    """One ManiSkill task behind the contract (see the module docstring for every conversion)."""

    def __init__(self, task: Task, render_mode: str | None = None, **options: Any):
        """options: image_size (int or (H, W), default 224), sim_backend ("cpu" | "gpu"), native_camera (bool, WidowX),
        shader_pack ("minimal" | "default" | ...), reward ("dense" | "sparse"), terminate_on_success (bool)."""
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.task, self.render_mode = task, render_mode
        self.metadata = {"render_modes": ["rgb_array"], "render_fps": task.robot.control_freq}
        self.batch = ManiSkillBatch(task, num_envs=1, **options)
        self.action_space = action_space()
        self.observation_space = observation_space(
            self.batch.image_hw, np.full(self.batch.state_dim, -np.inf), np.full(self.batch.state_dim, np.inf)
        )
        self._last_obs: dict | None = None

    @property
    def maniskill_env(self):
        """The underlying ManiSkill BaseEnv (privileged access for experts and tests)."""
        return self.batch.env

    def _unbatch(self, obs: dict) -> dict:
        obs = {"image": obs["image"][0], "state": obs["state"][0], "instruction": obs["instruction"][0]}
        self._last_obs = obs
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        obs, infos = self.batch.reset(seed=seed, options=options)
        return self._unbatch(obs), infos[0]

    def step(self, action):
        action = check_action(action)
        obs, reward, terminated, truncated, infos = self.batch.step(action[None])
        return self._unbatch(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), infos[0]

    def render(self):
        """The policy camera's last image, uint8 [H, W, 3] (render_mode "rgb_array")."""
        return None if self._last_obs is None else self._last_obs["image"]

    def close(self):
        self.batch.close()


# ---- Experts -------------------------------------------------------------------------------------------------


class _RecordFromState(gym.Wrapper):
    """Wraps the planning env: reset() restores a given simulator state; step() records the reached end-effector
    pose (robot-base frame) and the gripper command, which the expert then tracks."""

    def __init__(self, env: gym.Env, ee_link: str):
        super().__init__(env)
        self.ee_link = ee_link
        self.start_state: dict | None = None
        self.poses: list[np.ndarray] = []
        self.grippers: list[float] = []

    def reset(self, **kwargs):
        # A fixed seed keeps the solver's reset off torch's global RNG; the state below replaces its scene anyway.
        self.env.reset(seed=0)
        base = self.env.unwrapped
        base.set_state_dict(self.start_state)
        self.poses.clear()
        self.grippers.clear()
        return base.get_obs(), {}

    def step(self, action):
        out = self.env.step(action)
        robot = self.env.unwrapped.agent.robot
        self.poses.append((robot.pose.inv() * robot.links_map[self.ee_link].pose).raw_pose[0].cpu().numpy())
        self.grippers.append(float(action[-1]))
        return out


class MotionPlanningExpert:
    """ManiSkill's motion-planning solution for a Panda task, replayed as contract actions, closed loop.

    reset(): copies the episode's simulator state into a private planning env (same task, pd_joint_pos control, no
    rendering), runs the solution there (mplib screw/RRT plans executed with joint-position targets) and records the
    end-effector pose and gripper command after every planner step; every `stride`-th pose is kept, plus every
    gripper change. act(): moves from the current end-effector pose (the state's last 7 entries) toward the next
    recorded pose, delta clipped to one step's range, with the recorded gripper command; after the last pose it
    holds still. `planned` is False when the planner found no path (the episode will most likely fail).
    """

    def __init__(self, task: Task, stride: int = 2):
        if task.solver is None:
            raise ValueError(f"{task.task_id} has no motion-planning solution")
        self.task, self.stride = task, stride
        self._planning_env: _RecordFromState | None = None
        self.waypoints: list[tuple[np.ndarray, float]] = []
        self.planned = False
        self._t = 0

    def _make_planning_env(self) -> _RecordFromState:
        configure_asset_dir()
        import mani_skill.envs  # noqa: F401
        from mani_skill.utils.registration import make as maniskill_make

        env = maniskill_make(
            self.task.env_id,
            obs_mode="none",
            control_mode="pd_joint_pos",
            render_backend="none",
            sim_backend="physx_cpu",
        )
        return _RecordFromState(env, self.task.robot.ee_link)

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        from mani_skill.examples.motionplanning.panda import solutions

        if self._planning_env is None:
            self._planning_env = self._make_planning_env()
        planning = self._planning_env
        planning.start_state = env.unwrapped.maniskill_env.get_state_dict()
        result = getattr(solutions, self.task.solver)(planning, seed=0, debug=False, vis=False)
        self.planned = not isinstance(result, int)  # the solutions return -1 when a plan fails
        keep = [
            i
            for i in range(len(planning.poses))
            if i % self.stride == self.stride - 1
            or i == len(planning.poses) - 1
            or planning.grippers[i] != planning.grippers[i - 1 if i else 0]
        ]
        self.waypoints = [(planning.poses[i], planning.grippers[i]) for i in keep]
        self._t = 0

    def act(self, obs: dict) -> np.ndarray:
        current = obs["state"][-7:].astype(np.float64)
        if not self.waypoints:
            return panda_action_toward(current, current, 1.0)
        pose, gripper = self.waypoints[min(self._t, len(self.waypoints) - 1)]
        self._t += 1
        return panda_action_toward(current, pose, openness=(gripper + 1.0) / 2.0)


@dataclass
class _Phase:
    """One phase of the Bridge expert: drive the controller target to a pose with the gripper open or closed."""

    name: str
    position: np.ndarray
    """[3] end-effector goal position (m, robot-base frame)."""
    rotation: np.ndarray
    """[3, 3] end-effector goal rotation (robot-base frame)."""
    openness: float
    """1.0 open, 0.0 closed."""
    hold: int = 0
    """> 0: a gripper phase, it lasts exactly this many steps; 0: a move, until the pose is reached."""


class BridgeExpert:
    """A scripted top-down pick-and-place expert for the Bridge/WidowX tasks over ManiSkill's privileged scene state.

    reset() reads the source and target objects' poses (robot-base frame) and plans seven phases: above the source
    (open), down to its centre, close, lift, over the target, down to the release height (`Task.place_height`
    above the target's centre), open. The gripper points straight down, turned about the vertical so that the
    fingers close across the source's long axis (its model x axis; the turn of least magnitude). When the lift ends,
    the object's offset from the gripper is measured and the two placing waypoints are shifted by it, so that the
    object (not the gripper) lands on the target.

    act() emits contract actions through `widowx_action_toward`: the delta from the arm controller's running target
    pose (which is what the controller adds the delta to) toward the phase's goal, limited to Bridge-like step
    sizes. A move phase ends when the target has reached its goal and the measured end effector is within
    `reach_tolerance`, or after `max_move_steps`; a gripper phase lasts `gripper_steps`. After the last phase it
    holds still with the gripper open.
    """

    def __init__(self, task: Task, approach_height: float = 0.07, lift_height: float = 0.08,
                 carry_height: float = 0.05, reach_tolerance: float = 0.01, max_move_steps: int = 15,
                 gripper_steps: int = 3):
        """Heights (m): the approach above the source's centre, the lift above it, the carry above the release
        point; the gripper phases last `gripper_steps` steps (0.6 s at 5 Hz: the fingers close in ~2)."""
        if task.place_height is None:
            raise ValueError(f"{task.task_id} has no Bridge expert (Task.place_height is None)")
        self.task = task
        self.approach_height, self.lift_height, self.carry_height = approach_height, lift_height, carry_height
        self.reach_tolerance, self.max_move_steps, self.gripper_steps = reach_tolerance, max_move_steps, gripper_steps
        self.phases: list[_Phase] = []
        self._phase, self._steps_in_phase = 0, 0
        self._env = None

    # ---- privileged state (robot-base frame) ----
    def _pose_in_base(self, actor) -> np.ndarray:
        return (self._env.agent.robot.pose.inv() * actor.pose).raw_pose[0].cpu().numpy().astype(np.float64)

    def _controller_target(self) -> np.ndarray:
        arm = self._env.agent.controller.controllers["arm"]
        return arm.get_state()["target_pose"][0].cpu().numpy().astype(np.float64)

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        self._env = ms_env = env.unwrapped.maniskill_env
        source = self._pose_in_base(ms_env.objs[ms_env.source_obj_name])
        target = self._pose_in_base(ms_env.objs[ms_env.target_obj_name])
        long_axis = rotations.quat_to_matrix(source[3:])[:, 0]
        yaw = (np.arctan2(long_axis[1], long_axis[0]) + np.pi / 2) % np.pi - np.pi / 2  # in [-pi/2, pi/2)
        # ee_gripper_link's x axis is the approach direction: pitch it down by pi/2, then turn it by the yaw.
        grasp = rotations.euler_to_matrix(np.array([0.0, np.pi / 2, yaw]))
        up = np.array([0.0, 0.0, 1.0])
        place = target[:3] + self.task.place_height * up
        self.phases = [
            _Phase("approach", source[:3] + self.approach_height * up, grasp, 1.0),
            _Phase("descend", source[:3], grasp, 1.0),
            _Phase("grasp", source[:3], grasp, 0.0, hold=self.gripper_steps),
            _Phase("lift", source[:3] + self.lift_height * up, grasp, 0.0),
            _Phase("carry", place + self.carry_height * up, grasp, 0.0),
            _Phase("lower", place, grasp, 0.0),
            _Phase("release", place, grasp, 1.0, hold=self.gripper_steps),
        ]
        self._phase, self._steps_in_phase = 0, 0

    def _phase_done(self, phase: _Phase, ee_position: np.ndarray) -> bool:
        if phase.hold:
            return self._steps_in_phase >= phase.hold
        target_reached = np.linalg.norm(self._controller_target()[:3] - phase.position) < 1e-4
        ee_reached = np.linalg.norm(ee_position - phase.position) < self.reach_tolerance
        reached = self._steps_in_phase > 0 and target_reached and ee_reached
        return reached or self._steps_in_phase > self.max_move_steps

    def act(self, obs: dict) -> np.ndarray:
        ee_position = obs["state"][-7:-4].astype(np.float64)
        if self._phase < len(self.phases) and self._phase_done(self.phases[self._phase], ee_position):
            self._phase, self._steps_in_phase = self._phase + 1, 0
            if self._phase < len(self.phases) and self.phases[self._phase].name == "carry":
                # Place the object, not the gripper: shift the placing waypoints by the grasped object's offset.
                held = self._pose_in_base(self._env.objs[self._env.source_obj_name])[:3]
                for phase in self.phases[self._phase:]:
                    phase.position = phase.position + ee_position - held
        self._steps_in_phase += 1
        current = self._controller_target()
        if self._phase >= len(self.phases):
            return widowx_action_toward(current, current, 1.0)
        phase = self.phases[self._phase]
        goal = np.concatenate([phase.position, rotations.matrix_to_quat(phase.rotation)])
        return widowx_action_toward(current, goal, phase.openness)


# ---- GPU-batched vector env ----------------------------------------------------------------------------------


class ManiSkillVectorEnv(gym.vector.VectorEnv):
    """`num_envs` sub-scenes of one ManiSkill env (GPU simulation), with the batched contract of envs/vector.py:
    SAME_STEP autoreset (done envs are reset in place through ManiSkill's partial reset, their last observation in
    info["final_obs"]), env i seeded with seed + i, info[key] arrays with "_key" masks.

    Written device-agnostically; on CPU ManiSkill allows only num_envs=1 (how the tests exercise it).
    """

    metadata = {"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP}

    def __init__(self, task: Task, num_envs: int, seed: int = 0, sim_backend: str = "gpu", **options: Any):
        self.task, self.num_envs = task, num_envs
        self.batch = ManiSkillBatch(task, num_envs=num_envs, sim_backend=sim_backend, **options)
        state_bound = np.full(self.batch.state_dim, np.inf)
        self.single_observation_space = observation_space(self.batch.image_hw, -state_bound, state_bound)
        self.single_action_space = action_space()
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, num_envs)
        self._base_seed, self._started = seed, False

    @staticmethod
    def _batched_info(infos: list[dict]) -> dict:
        keys = {key for info in infos for key in info}
        info = {}
        for key in sorted(keys):
            info[key] = np.array([env_info.get(key) for env_info in infos])
            info[f"_{key}"] = np.array([key in env_info for env_info in infos])
        return info

    def _obs(self, obs: dict) -> dict:
        return {"image": obs["image"], "instruction": tuple(obs["instruction"]), "state": obs["state"]}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._base_seed = seed
        seeds = None
        if seed is not None or not self._started:
            seeds = [self._base_seed + i for i in range(self.num_envs)]
        self._started = True
        obs, infos = self.batch.reset(seed=seeds, options=options)
        return self._obs(obs), self._batched_info(infos)

    def step(self, actions):
        actions = np.asarray(actions, dtype=np.float32)
        if actions.ndim != 2 or actions.shape[0] != self.num_envs:
            raise ValueError(f"actions must have shape ({self.num_envs}, 7), got {actions.shape}")
        actions = np.stack([check_action(action) for action in actions])
        obs, reward, terminated, truncated, infos = self.batch.step(actions)
        info = self._batched_info(infos)
        done = terminated | truncated
        if done.any():
            final_obs = np.full(self.num_envs, None, dtype=object)
            final_info = np.full(self.num_envs, None, dtype=object)
            for i in np.flatnonzero(done):
                final_obs[i] = {key: obs[key][i] for key in ("image", "instruction", "state")}
                final_info[i] = infos[i]
            obs = self.batch.partial_reset(np.flatnonzero(done))
            info.update(final_obs=final_obs, _final_obs=done, final_info=final_info, _final_info=done)
        return self._obs(obs), reward, terminated, truncated, info

    def close_extras(self, **kwargs: Any) -> None:
        self.batch.close()


# ---- Registration --------------------------------------------------------------------------------------------


def make_env(task: Task, **options: Any) -> ManiSkillEnv:
    """The factory behind envs.make for a ManiSkill task."""
    return ManiSkillEnv(task, **options)


def make_gpu_vec(task: Task, num_envs: int, seed: int = 0, **options: Any) -> ManiSkillVectorEnv | None:
    """envs.make_vec's native vector env: one GPU-batched ManiSkill env, or None without CUDA or when the options
    ask for the CPU simulation (then make_vec runs process workers)."""
    if not _cuda_available() or options.get("sim_backend", "gpu") != "gpu":
        return None
    return ManiSkillVectorEnv(task, num_envs=num_envs, seed=seed, **options)


def _expert_factory(task: Task):
    if task.solver:
        return functools.partial(MotionPlanningExpert, task)
    if task.place_height is not None:
        return functools.partial(BridgeExpert, task)
    return None


for _task in (*BRIDGE_TASKS, *PANDA_TASKS):
    register(
        TaskSpec(
            task_id=_task.task_id,
            suite="simpler-bridge" if _task.robot is WIDOWX else "maniskill-panda",
            robot=_task.robot.name,
            instruction=_task.instruction,
            backend=BACKEND,
            max_episode_steps=_task.horizon,
            factory=functools.partial(make_env, _task),
            backend_env_id=_task.env_id,
            expert_factory=_expert_factory(_task),
            vec_factory=functools.partial(make_gpu_vec, _task),
        )
    )
