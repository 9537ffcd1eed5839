"""Rotation conversions in numpy, batched over leading dimensions.

Conventions (the ones the action conversions in envs/ need):
- Euler angles: seq "xyz" is OpenVLA's / BridgeData's (roll, pitch, yaw), *extrinsic* rotations about the fixed x,
  then y, then z axes: R = Rz(yaw) @ Ry(pitch) @ Rx(roll). It equals scipy's `from_euler("xyz", ...)` and
  transforms3d's default "sxyz" (which SimplerEnv uses). seq "XYZ" is *intrinsic* x-y'-z'': R = Rx(a) @ Ry(b) @ Rz(c),
  scipy's "XYZ" and the convention ManiSkill3's end-effector controllers read their rotation deltas in.
- Axis-angle: a rotation vector, axis * angle (radians), angle in [0, pi].
- Quaternions: scalar-first (w, x, y, z), as SAPIEN / ManiSkill3 store poses (scipy is scalar-last).
Every function accepts arrays of shape [..., 3] (or [..., 4] / [..., 3, 3]) and returns float64 arrays.
"""

from __future__ import annotations

import numpy as np

EULER_SEQUENCES = ("xyz", "XYZ")


def _rot_x(a: np.ndarray) -> np.ndarray:
    c, s, one, zero = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([one, zero, zero, zero, c, -s, zero, s, c], axis=-1).reshape(*a.shape, 3, 3)


def _rot_y(a: np.ndarray) -> np.ndarray:
    c, s, one, zero = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, zero, s, zero, one, zero, -s, zero, c], axis=-1).reshape(*a.shape, 3, 3)


def _rot_z(a: np.ndarray) -> np.ndarray:
    c, s, one, zero = np.cos(a), np.sin(a), np.ones_like(a), np.zeros_like(a)
    return np.stack([c, -s, zero, s, c, zero, zero, zero, one], axis=-1).reshape(*a.shape, 3, 3)


def _check_seq(seq: str) -> None:
    if seq not in EULER_SEQUENCES:
        raise ValueError(f"Euler sequence must be one of {EULER_SEQUENCES}, got {seq!r}")


def euler_to_matrix(euler: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Euler angles [..., 3] (radians) -> rotation matrices [..., 3, 3]; seq "xyz" (extrinsic) or "XYZ" (intrinsic)."""
    _check_seq(seq)
    euler = np.asarray(euler, dtype=np.float64)
    rx, ry, rz = _rot_x(euler[..., 0]), _rot_y(euler[..., 1]), _rot_z(euler[..., 2])
    return rz @ ry @ rx if seq == "xyz" else rx @ ry @ rz


def matrix_to_euler(matrix: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> Euler angles [..., 3], the middle angle in [-pi/2, pi/2].

    At gimbal lock (middle angle +-pi/2) the first angle is set to 0 and the third absorbs the rotation.
    """
    _check_seq(seq)
    matrix = np.asarray(matrix, dtype=np.float64)
    if seq == "XYZ":
        # Rx(a) Ry(b) Rz(c) = (Rz(-c) Ry(-b) Rx(-a))^T: the intrinsic angles are the negated extrinsic angles of R^T.
        return -matrix_to_euler(np.swapaxes(matrix, -1, -2), "xyz")
    sin_pitch = np.clip(-matrix[..., 2, 0], -1.0, 1.0)
    pitch = np.arcsin(sin_pitch)
    locked = np.abs(sin_pitch) > 1.0 - 1e-9
    roll = np.where(locked, 0.0, np.arctan2(matrix[..., 2, 1], matrix[..., 2, 2]))
    # At the lock only yaw -+ roll is defined; with roll = 0, R[0, 1] = -sin(yaw) and R[1, 1] = cos(yaw).
    yaw = np.where(
        locked,
        np.arctan2(-matrix[..., 0, 1], matrix[..., 1, 1]),
        np.arctan2(matrix[..., 1, 0], matrix[..., 0, 0]),
    )
    return np.stack([roll, pitch, yaw], axis=-1)


def quat_to_matrix(quat: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [..., 4], not necessarily unit -> rotation matrices [..., 3, 3]."""
    quat = np.asarray(quat, dtype=np.float64)
    w, x, y, z = np.moveaxis(quat / np.linalg.norm(quat, axis=-1, keepdims=True), -1, 0)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]  # fmt: skip
    return np.stack(rows, axis=-1).reshape(*quat.shape[:-1], 3, 3)


def matrix_to_quat(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> unit quaternions (w, x, y, z) [..., 4] with w >= 0."""
    m = np.asarray(matrix, dtype=np.float64)
    (m00, m01, m02), (m10, m11, m12), (m20, m21, m22) = np.moveaxis(m, (-2, -1), (0, 1))
    # Four algebraically equal candidates, rows of (w, x, y, z) each scaled by 4 * (one component); each is
    # accurate where its component is the largest (Shepperd's method), so pick that one per rotation.
    candidates = np.array(
        [
            [1 + m00 + m11 + m22, m21 - m12, m02 - m20, m10 - m01],
            [m21 - m12, 1 + m00 - m11 - m22, m01 + m10, m02 + m20],
            [m02 - m20, m01 + m10, 1 - m00 + m11 - m22, m12 + m21],
            [m10 - m01, m02 + m20, m12 + m21, 1 - m00 - m11 + m22],
        ]
    )  # [4 candidates, 4 components, ...]
    best = np.argmax(np.stack([m00 + m11 + m22, m00, m11, m22]), axis=0)
    quat = np.moveaxis(np.take_along_axis(candidates, best[None, None], axis=0)[0], 0, -1)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    return np.where(quat[..., :1] < 0, -quat, quat)


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Quaternions (w, x, y, z) [..., 4] -> rotation vectors [..., 3] with angle in [0, pi]."""
    quat = np.asarray(quat, dtype=np.float64)
    quat = quat / np.linalg.norm(quat, axis=-1, keepdims=True)
    quat = np.where(quat[..., :1] < 0, -quat, quat)  # q and -q are the same rotation; w >= 0 gives angle <= pi
    sin_half = np.linalg.norm(quat[..., 1:], axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, quat[..., :1])
    # angle / sin(angle/2) -> 2 as the angle -> 0; the series keeps small rotations exact.
    small = sin_half < 1e-8
    scale = np.where(small, 2.0 + angle**2 / 12.0, angle / np.where(small, 1.0, sin_half))
    return quat[..., 1:] * scale


def axis_angle_to_quat(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors [..., 3] -> unit quaternions (w, x, y, z) [..., 4]."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    angle = np.linalg.norm(rotvec, axis=-1, keepdims=True)
    small = angle < 1e-8
    # sin(angle/2) / angle -> 1/2 as the angle -> 0.
    scale = np.where(small, 0.5 - angle**2 / 48.0, np.sin(angle / 2) / np.where(small, 1.0, angle))
    return np.concatenate([np.cos(angle / 2), rotvec * scale], axis=-1)


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices [..., 3, 3] -> rotation vectors [..., 3] (through quaternions, accurate near pi)."""
    return quat_to_axis_angle(matrix_to_quat(matrix))


def axis_angle_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """Rotation vectors [..., 3] -> rotation matrices [..., 3, 3]."""
    return quat_to_matrix(axis_angle_to_quat(rotvec))


def euler_to_axis_angle(euler: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Euler angles [..., 3] -> rotation vectors [..., 3]; with seq "xyz" this is transforms3d's
    `euler2axangle(roll, pitch, yaw)` with the axis multiplied by the angle, as SimplerEnv computes it."""
    return matrix_to_axis_angle(euler_to_matrix(euler, seq))


def axis_angle_to_euler(rotvec: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Rotation vectors [..., 3] -> Euler angles [..., 3]."""
    return matrix_to_euler(axis_angle_to_matrix(rotvec), seq)


def euler_to_quat(euler: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Euler angles [..., 3] -> unit quaternions (w, x, y, z) [..., 4] with w >= 0."""
    return matrix_to_quat(euler_to_matrix(euler, seq))


def quat_to_euler(quat: np.ndarray, seq: str = "xyz") -> np.ndarray:
    """Quaternions (w, x, y, z) [..., 4] -> Euler angles [..., 3]."""
    return matrix_to_euler(quat_to_matrix(quat), seq)
