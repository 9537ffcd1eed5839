"""envs/: pick-and-place tasks behind one gymnasium contract.

Contract (every backend):
- Observation: dict with
    "image": np.uint8 array [H, W, 3] from the task's policy camera (upright, size set by `image_size`),
    "instruction": str, the task's natural-language instruction,
    "state": np.float32 array [D], the robot's proprioception (D depends on the robot).
- Action: np.float32 array [7] in OpenVLA's end-effector convention
    [dx, dy, dz, droll, dpitch, dyaw, gripper], each backend converting it to its own controller.
- info["success"] (bool) on every step; a fixed horizon per task (truncation); seeded resets are reproducible.

envs/ never imports vla/.
"""

from envs.registry import Expert, TaskSpec, get_spec, list_tasks, make, register

__all__ = ["Expert", "TaskSpec", "get_spec", "list_tasks", "make", "register"]
