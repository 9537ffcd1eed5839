"""envs/: pick-and-place tasks behind one gymnasium contract.

Contract (every backend):
- Observation: dict with
    "image": np.uint8 array [H, W, 3] from the task's policy camera (upright, size set by `image_size`),
    "instruction": str, the task's natural-language instruction,
    "state": np.float32 array [D], the robot's proprioception (D depends on the robot).
- Action: np.float32 array [7] in OpenVLA's end-effector convention
    [dx, dy, dz, droll, dpitch, dyaw, gripper], each backend converting it to its own controller:
    * dx..dyaw in [-1, 1]; what 1.0 means (metres, radians per step) is stated in each backend's docstring.
    * gripper is the gripper's openness in [0, 1] as in OpenVLA/Bridge: 1 = open, 0 = closed.
    * Out-of-range values are clipped into the action space (`registry.action_space()`); a wrong shape or a
      NaN/inf raises ValueError and the env stays usable (`registry.check_action`).
- info["success"] (bool) on every step; a fixed horizon per task (truncation); seeded resets are reproducible:
  reset(seed=s) gives the same initial state for the same s, and reset() continues that seed's stream.

Entry points: `make(task_id, **options)`, `make_vec(task_id, num_envs, seed=0, **options)` (envs/vector.py),
`list_tasks()`, `python -m envs list|demos|inspect`. Demonstrations: envs/demos.py; video: envs/video.py.

Environment variables: MuJoCo renders off-screen with MUJOCO_GL (envs/metaworld.py sets it to "egl" when unset);
vector-env workers run with OMP_NUM_THREADS=1.

envs/ never imports vla/.
"""

from envs.registry import Expert, TaskSpec, get_spec, list_tasks, make, register
from envs.vector import make_vec

__all__ = ["Expert", "TaskSpec", "get_spec", "list_tasks", "make", "make_vec", "register"]
