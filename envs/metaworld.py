"""Meta-World 3 (MuJoCo) tasks for the Sawyer arm: ids "metaworld/<task>", suite "metaworld", backend "mujoco".

Tasks: all 50 Meta-World v3 tasks (MT50; `MT10` lists the MT10 subset), each with an instruction written from its
goal and a fixed horizon (`TASKS`) set from the scripted expert's episode lengths, shorter than Meta-World's 500.

Randomizations: every reset draws the task's object and goal positions uniformly from Meta-World's per-task ranges,
using the env's own RNG (Meta-World's `seeded_rand_vec` mode). reset(seed=s) reseeds that RNG, so the same seed
gives the same scene, and reset() continues the stream. (Meta-World's benchmark API instead freezes one of 50
pre-sampled positions per `Task`; we unfreeze it so that every seed gets its own scene.)

Success: Meta-World's own per-task criterion, info["success"] from its `evaluate_state` (e.g. pick-place: the puck
within 7 cm of the goal). By default the episode terminates on success (`terminate_on_success=True`, as ManiSkill3
does; Meta-World itself never terminates) and is truncated after the task's horizon.

Reward: Meta-World's dense shaped reward (v2 reward functions, in [0, 10]) or, with reward="sparse", 1.0 on a
successful step and 0.0 otherwise.

Actions (`to_metaworld_action`, the only conversion): contract [dx, dy, dz, droll, dpitch, dyaw, gripper] ->
Meta-World [dx, dy, dz, grab_effort].
  - dx, dy, dz in [-1, 1] pass through unchanged: Meta-World moves the mocap target by action * 0.01 m, so 1.0 is
    1 cm per step, in Meta-World's world frame (x right, y away from the robot base, z up).
  - droll, dpitch, dyaw are dropped: the Sawyer hand's orientation is fixed in Meta-World.
  - gripper openness o in [0, 1] (1 = open) -> grab_effort = 1 - 2 o in [-1, 1] (+1 squeezes the fingers shut).
  `from_metaworld_action` is the inverse, used to record Meta-World's experts in the contract's convention.

Images (`MetaWorldEnv._render`): the `camera` (default "corner") rendered at `image_size` with MSAA, shadows and
reflections off and simplified meshes, into an off-screen buffer of the image's size. MSAA and shadows off: about 2x
faster (facts in shared/notes). Without reflections (reflections=False, the default since RENDER_VERSION 2) MuJoCo
skips the floor's mirror pass, a second pass over the scene: ~35% less CPU per frame at 64 px, and a few pixels of
the floor change (0.15% of a 64 px corner image); reflections=True gives the images of RENDER_VERSION 1. A buffer of
the image's size instead of MuJoCo's default 640x480 gives the same pixels for ~4% less CPU. Measured by `python -m
scripts.bench_envs --frame`. What remains is bound by triangles: the Sawyer's meshes alone are 68k, most far below a
pixel at policy resolution. Each mesh of >= 1000 triangles is drawn with `mesh_detail` (default 0.3) of them
(`simplify_meshes`; the default since RENDER_VERSION 3): ~2x fewer CPU ms per frame at 64 px, the same physics step
for step, and images that differ at the robot's edges (mean absolute difference ~2 of 255); mesh_detail=1.0 gives
the images of RENDER_VERSION 2. RENDER_VERSION (every task's TaskSpec.render_version) is bumped whenever a default
changes the images: it is part of the demo cache key, so a pi0 is never trained on other images than the ones it is
evaluated on. Meta-World's corner cameras are mounted upside down (their image-up axis points below the horizon);
their images are rotated by 180 degrees, which gives the upright, unmirrored view.

State: float32 [4] = hand position (x, y, z in metres) and the fingers' opening in [0, 1] (1 = open).

Rendering uses MuJoCo's off-screen GL: MUJOCO_GL defaults to "egl" (set below, before mujoco is imported);
"osmesa" also works where EGL is unavailable. On CPU (Mesa llvmpipe) LP_NUM_THREADS defaults to 0 once a Meta-World
env is built: each process rasterizes its own frames without helper threads (identical images; see MetaWorldEnv).
"""

from __future__ import annotations

import functools
import hashlib
import os
import warnings
from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import GRIPPER, TaskSpec, action_space, check_action, image_hw, observation_space, register

# MuJoCo picks its GL backend when first imported; off-screen EGL needs no display. Respect a user's choice.
os.environ.setdefault("MUJOCO_GL", "egl")

SUITE = "metaworld"
RENDER_VERSION = 3
"""Version of the default images (see the module docstring); part of the demo cache key (eval/experiment.py)."""
MESH_DETAIL = 0.3
"""Share of its triangles each large mesh keeps in the images (`simplify_meshes`; 1.0: Meta-World's meshes)."""
SIMPLIFY_MIN_FACES = 1000
"""Meshes with fewer triangles are drawn as they are."""
META_WORLD_ACTION_SCALE = 0.01
"""Metres the hand target moves per step for an xyz action of 1.0 (Meta-World's `action_scale`)."""

# name -> (instruction, horizon). Horizons: ~1.5-2x the expert's usual episode length (measured, 8 seeds each).
TASKS: dict[str, tuple[str, int]] = {
    "assembly": ("pick up the nut and put it onto the peg", 200),
    "basketball": ("pick up the ball and dunk it into the basket", 200),
    "bin-picking": ("pick up the puck from the red bin and place it into the blue bin", 250),
    "box-close": ("pick up the lid and put it on the box to close it", 250),
    "button-press-topdown": ("press the button down from the top", 150),
    "button-press-topdown-wall": ("reach over the wall and press the button down from the top", 150),
    "button-press": ("push the button on the front of the box", 150),
    "button-press-wall": ("reach around the wall and push the button on the front of the box", 150),
    "coffee-button": ("press the button on the coffee machine", 100),
    "coffee-pull": ("pull the mug out from under the coffee machine to the goal", 150),
    "coffee-push": ("push the mug under the coffee machine", 150),
    "dial-turn": ("turn the dial", 150),
    "disassemble": ("pick the nut up off the peg", 250),
    "door-close": ("push the door closed", 150),
    "door-lock": ("turn the door's lock down to lock it", 200),
    "door-open": ("pull the door open by its handle", 150),
    "door-unlock": ("turn the door's lock to unlock it", 100),
    "hand-insert": ("move the hand into the hole in the table", 150),
    "drawer-close": ("push the drawer closed", 150),
    "drawer-open": ("pull the drawer open by its handle", 150),
    "faucet-open": ("turn the faucet handle to open it", 150),
    "faucet-close": ("turn the faucet handle to close it", 150),
    "hammer": ("pick up the hammer and hammer the nail into the wall", 150),
    "handle-press-side": ("press the handle down from the side", 100),
    "handle-press": ("press the handle down", 100),
    "handle-pull-side": ("pull the handle up from the side", 200),
    "handle-pull": ("pull the handle up", 200),
    "lever-pull": ("pull the lever up", 150),
    "peg-insert-side": ("pick up the peg and insert it sideways into the hole in the box", 250),
    "pick-place-wall": ("pick up the puck, lift it over the wall and place it at the goal", 150),
    "pick-out-of-hole": ("pick the puck out of the hole and lift it to the goal", 200),
    "reach": ("move the gripper to the goal", 100),
    "push-back": ("push the puck backward to the goal", 250),
    "push": ("push the puck to the goal", 150),
    "pick-place": ("pick up the puck and place it at the goal", 150),
    "plate-slide": ("slide the plate into the goal net", 100),
    "plate-slide-side": ("slide the plate sideways into the goal net", 100),
    "plate-slide-back": ("slide the plate back out of the goal net", 150),
    "plate-slide-back-side": ("slide the plate sideways out of the goal net", 100),
    "peg-unplug-side": ("pull the peg out of the box sideways", 250),
    "soccer": ("push the ball into the goal", 200),
    "stick-push": ("pick up the stick and use it to push the thermos to the goal", 150),
    "stick-pull": ("pick up the stick and use it to pull the thermos to the goal", 250),
    "push-wall": ("push the puck around the wall to the goal", 150),
    "reach-wall": ("reach over the wall to the goal", 100),
    "shelf-place": ("pick up the puck and place it on the shelf", 250),
    "sweep-into": ("sweep the puck into the hole", 150),
    "sweep": ("sweep the puck off the edge of the table", 150),
    "window-open": ("slide the window open", 150),
    "window-close": ("slide the window closed", 150),
}

MT10 = (
    "reach", "push", "pick-place", "door-open", "drawer-open",
    "drawer-close", "button-press-topdown", "peg-insert-side", "window-open", "window-close",
)  # fmt: skip


def to_metaworld_action(action: np.ndarray) -> np.ndarray:
    """Contract action float32 [7] (already clipped) -> Meta-World's float32 [4] = [dx, dy, dz, grab_effort]."""
    grab_effort = 1.0 - 2.0 * action[GRIPPER]
    return np.array([action[0], action[1], action[2], grab_effort], np.float32)


def from_metaworld_action(mw_action: np.ndarray) -> np.ndarray:
    """Meta-World action [4] -> contract action float32 [7] (rotation 0), clipped to the ranges Meta-World applies."""
    xyz = np.clip(mw_action[:3], -1.0, 1.0)
    openness = (1.0 - np.clip(mw_action[3], -1.0, 1.0)) / 2.0
    return np.array([*xyz, 0.0, 0.0, 0.0, openness], np.float32)


class MetaWorldEnv(gym.Env):
    """One Meta-World v3 task behind the contract of envs/__init__.py (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 20}

    def __init__(
        self,
        task: str,
        *,
        image_size: int | tuple[int, int] = 224,
        camera: str = "corner",
        reward: str = "dense",
        terminate_on_success: bool = True,
        max_episode_steps: int | None = None,
        render_mode: str | None = "rgb_array",
        reflections: bool = False,
        mesh_detail: float = MESH_DETAIL,
    ):
        if task not in TASKS:
            raise ValueError(f"unknown Meta-World task {task!r}; known: {', '.join(TASKS)}")
        if reward not in ("dense", "sparse"):
            raise ValueError(f"reward must be 'dense' or 'sparse', got {reward!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if not 0.0 < mesh_detail <= 1.0:
            raise ValueError(f"mesh_detail must be in (0, 1] (1.0: Meta-World's full meshes), got {mesh_detail}")
        # Mesa's llvmpipe (the CPU renderer behind EGL) splits each frame over a pool of rasterizer threads, one per
        # core; a policy image is too small to pay for that, least of all with several env workers per core: without
        # helper threads the same pixels come as fast or faster (scripts/bench_envs --compare-llvmpipe-threads). Read
        # when the process's first GL context starts, so set here, where MuJoCo is about to render, not at import:
        # a process that only runs SAPIEN (lavapipe reads it too; not measured there) keeps Mesa's default. GPU
        # drivers ignore it; a user's own setting is kept.
        os.environ.setdefault("LP_NUM_THREADS", "0")
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        self.task = task
        self.instruction, default_horizon = TASKS[task]
        self.max_episode_steps = int(max_episode_steps or default_horizon)
        self.reward_type = reward
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        height, width = image_hw(image_size)

        sim = ALL_V3_ENVIRONMENTS[f"{task}-v3"](render_mode="rgb_array", camera_name=camera, width=width, height=height)
        # Draw a fresh object/goal position on every reset from the env's seeded RNG (see the module docstring),
        # and expose the goal in the 39-D state that the scripted experts read.
        sim._set_task_called = True
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim._partially_observable = False
        del sim.sawyer_observation_space  # a cached property that depends on _partially_observable
        sim.max_path_length = self.max_episode_steps
        # Rendering settings, read when the renderer is first created: no MSAA, no shadows, a buffer of the image's
        # size; without reflections no material mirrors the scene (MuJoCo then skips the reflection pass).
        sim.model.vis.quality.offsamples = 0
        sim.model.light_castshadow[:] = 0
        sim.model.vis.global_.offwidth, sim.model.vis.global_.offheight = width, height
        if not reflections:
            sim.model.mat_reflectance[:] = 0
        if mesh_detail < 1.0:
            simplify_meshes(sim.model, mesh_detail)
        self.sim = sim
        self._rotate_180 = self._camera_is_upside_down(camera)

        low, high = sim.observation_space.low[:3], sim.observation_space.high[:3]
        self.observation_space = observation_space((height, width), np.append(low, 0.0), np.append(high, 1.0))
        self.action_space = action_space()
        # The id and options that rebuild this env (gymnasium's record of a make() call; read by check_env, videos).
        self.spec = gym.envs.registration.EnvSpec(
            f"{SUITE}/{task}",
            entry_point=functools.partial(MetaWorldEnv, task),
            max_episode_steps=self.max_episode_steps,
            disable_env_checker=True,
            kwargs=dict(
                image_size=image_size, camera=camera, reward=reward, terminate_on_success=terminate_on_success,
                max_episode_steps=max_episode_steps, render_mode=render_mode, reflections=reflections,
                mesh_detail=mesh_detail,
            ),
        )  # fmt: skip
        self.sim_obs: np.ndarray | None = None
        """Meta-World's latest flat observation, float64 [39] (hand, gripper, objects, previous frame, goal)."""
        self._image: np.ndarray | None = None
        self._elapsed_steps = 0

    def _camera_is_upside_down(self, camera: str) -> bool:
        """Whether the camera's image-up axis points below the horizon (Meta-World's corner cameras do)."""
        import mujoco

        mujoco.mj_forward(self.sim.model, self.sim.data)
        image_up = self.sim.data.camera(camera).xmat.reshape(3, 3)[:, 1]
        return bool(image_up[2] < 0)

    def _render(self) -> np.ndarray:
        # gymnasium makes a renderer's GL context current only when the renderer is created, so with several envs
        # in one process the last-made context stays current and the others would draw with its meshes and
        # textures (another task's scene, or nothing). Make ours current first (a no-op for a lone env).
        if self.sim.mujoco_renderer.viewer is not None:
            self.sim.mujoco_renderer.viewer.make_context_current()
        image = self.sim.render()
        return np.ascontiguousarray(image[::-1, ::-1]) if self._rotate_180 else image

    def _observation(self, sim_obs: np.ndarray) -> dict[str, Any]:
        self.sim_obs = sim_obs
        self._image = self._render()
        state = sim_obs[:4].astype(np.float32)  # hand xyz, finger opening in [0, 1]
        return {"image": self._image, "instruction": self.instruction, "state": state}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self.sim.seed(seed)
        sim_obs, _ = self.sim.reset()
        self._elapsed_steps = 0
        return self._observation(sim_obs), {"success": False}

    def step(self, action):
        if self.sim_obs is None:
            raise RuntimeError(f"{SUITE}/{self.task}: call reset() before step() (gymnasium's env contract)")
        action = check_action(action)
        sim_obs, sim_reward, _, _, sim_info = self.sim.step(to_metaworld_action(action))
        self._elapsed_steps += 1
        success = bool(sim_info["success"])
        reward = float(success) if self.reward_type == "sparse" else float(sim_reward)
        terminated = success and self.terminate_on_success
        truncated = not terminated and self._elapsed_steps >= self.max_episode_steps
        info = {**sim_info, "success": success}
        return self._observation(sim_obs), reward, terminated, truncated, info

    def render(self) -> np.ndarray | None:
        """The latest observation image (upright, uint8 [H, W, 3]) when render_mode is "rgb_array"."""
        return None if self.render_mode is None else self._image

    def close(self) -> None:
        viewer = self.sim.mujoco_renderer.viewer
        if viewer is not None:
            # Free the renderer's GL objects in our own context: MjrContext's destructor frees them in whichever
            # context is current when it is collected, which can be another env's (its frames then come out black).
            viewer.make_context_current()
            viewer.con.free()
        self.sim.close()


def simplify_meshes(model, keep: float, min_faces: int = SIMPLIFY_MIN_FACES) -> None:
    """Draw each mesh of >= min_faces triangles with about `keep` of them, changing nothing physics reads.

    Rendering these scenes on a CPU is bound by triangles (the Sawyer's meshes alone are 68k, most far below one
    pixel at policy resolution). The triangles to drop come from a quadric-error simplification
    (fast-simplification), replayed as half-edge collapses onto the mesh's own vertices: each removed vertex merges
    into a kept one, whose position and normal stay as they were. So mesh_vert (what collisions read, through the
    convex hulls built from these vertices) is untouched, and only the rendered triangle list (mesh_face, and its
    normal/texture-coordinate indices) shrinks, in place, before the renderer uploads the meshes at the first frame.
    mj_ray against a simplified mesh would see the new triangles through the old bounding-volume tree; Meta-World
    casts no rays.
    """
    for mesh in range(model.nmesh):
        n_faces, n_verts = int(model.mesh_facenum[mesh]), int(model.mesh_vertnum[mesh])
        if n_faces < min_faces:
            continue
        first_face, first_vert = model.mesh_faceadr[mesh], model.mesh_vertadr[mesh]
        faces = model.mesh_face[first_face : first_face + n_faces].astype(np.int64)
        verts = model.mesh_vert[first_vert : first_vert + n_verts]
        kept = _kept_triangles(verts, faces, keep)
        # each corner keeps the normal (texture coordinate) index that its vertex had in the original triangles
        for field in ("mesh_facenormal", "mesh_facetexcoord"):
            if field == "mesh_facetexcoord" and model.mesh_texcoordadr[mesh] < 0:
                continue  # no texture coordinates
            table, of_vertex = getattr(model, field), np.zeros(n_verts, np.int64)
            of_vertex[faces.ravel()] = table[first_face : first_face + n_faces].ravel()
            table[first_face : first_face + len(kept)] = of_vertex[kept]
        model.mesh_face[first_face : first_face + len(kept)] = kept
        model.mesh_facenum[mesh] = len(kept)


_KEPT_TRIANGLES: dict[tuple[bytes, float], np.ndarray] = {}
"""A process's simplified meshes by content: every task shares the Sawyer's, and env workers rebuild them at each
task switch (~80 ms a scene otherwise)."""


def _kept_triangles(verts: np.ndarray, faces: np.ndarray, keep: float) -> np.ndarray:
    """The triangles (indices into `verts`) that `simplify_meshes` draws for one mesh."""
    import fast_simplification

    key = (hashlib.sha1(verts.tobytes() + faces.tobytes()).digest(), keep)
    if key not in _KEPT_TRIANGLES:
        _, _, collapses = fast_simplification.simplify(verts.astype(np.float64), faces,
                                                       target_count=int(keep * len(faces)), return_collapses=True)
        # collapse [a, b]: vertex b merged into vertex a; follow the chains to the vertex each one ends in
        survivor = np.arange(len(verts))
        survivor[collapses[:, 1]] = collapses[:, 0]
        while not np.array_equal(survivor[survivor], survivor):
            survivor = survivor[survivor]
        kept = survivor[faces]
        degenerate = (kept[:, 0] == kept[:, 1]) | (kept[:, 1] == kept[:, 2]) | (kept[:, 0] == kept[:, 2])
        _KEPT_TRIANGLES[key] = kept[~degenerate]
    return _KEPT_TRIANGLES[key]


class MetaWorldExpert:
    """Meta-World's scripted policy for a task. It reads the privileged 39-D state (`MetaWorldEnv.sim_obs`) and
    returns contract actions via `from_metaworld_action`."""

    def __init__(self, task: str):
        from metaworld.policies import ENV_POLICY_MAP

        self._policy = ENV_POLICY_MAP[f"{task}-v3"]()
        self._env: MetaWorldEnv | None = None

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        self._env = env.unwrapped

    def act(self, obs: dict) -> np.ndarray:
        with warnings.catch_warnings():  # its gains exceed [-1, 1] by design and it warns each time; we clip
            warnings.simplefilter("ignore", UserWarning)
            mw_action = self._policy.get_action(self._env.sim_obs)
        return from_metaworld_action(mw_action)


for _task, (_instruction, _horizon) in TASKS.items():
    register(
        TaskSpec(
            task_id=f"{SUITE}/{_task}",
            suite=SUITE,
            robot="sawyer",
            instruction=_instruction,
            backend="mujoco",
            max_episode_steps=_horizon,
            factory=functools.partial(MetaWorldEnv, _task),
            backend_env_id=f"{_task}-v3",
            expert_factory=functools.partial(MetaWorldExpert, _task),
            render_version=RENDER_VERSION,
        )
    )
