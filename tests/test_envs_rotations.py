"""envs/rotations.py against scipy.spatial.transform and transforms3d (SimplerEnv's Euler -> axis-angle)."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation
from transforms3d.euler import euler2axangle

from envs import rotations


def _random_rotations(n: int = 200, seed: int = 0) -> Rotation:
    """Random rotations plus edge cases: identity, angle pi about each axis, gimbal lock."""
    edge = Rotation.from_rotvec(
        [[0, 0, 0], [np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [1e-10, 0, 0], [0, np.pi / 2, 0], [0, -np.pi / 2, 0]]
    )
    return Rotation.concatenate([Rotation.random(n, random_state=seed), edge])


def _wxyz(rot: Rotation) -> np.ndarray:
    return np.roll(rot.as_quat(), 1, axis=-1)


def _same_rotation(m1: np.ndarray, m2: np.ndarray) -> None:
    np.testing.assert_allclose(m1, m2, atol=1e-9)


@pytest.mark.parametrize("seq", ["xyz", "XYZ"])
def test_euler_matches_scipy(seq):
    rots = _random_rotations()
    euler = rots.as_euler(seq)
    _same_rotation(rotations.euler_to_matrix(euler, seq), rots.as_matrix())
    # Round trip through our inverse gives the same rotation (angles may differ only at gimbal lock).
    _same_rotation(rotations.euler_to_matrix(rotations.matrix_to_euler(rots.as_matrix(), seq), seq), rots.as_matrix())
    regular = np.abs(np.abs(euler[:, 1]) - np.pi / 2) > 1e-6
    wrapped = np.angle(np.exp(1j * (rotations.matrix_to_euler(rots.as_matrix(), seq) - euler)))  # pi == -pi
    np.testing.assert_allclose(wrapped[regular], 0.0, atol=1e-9)


def test_quaternion_and_axis_angle_match_scipy():
    rots = _random_rotations()
    matrices = rots.as_matrix()
    quat = rotations.matrix_to_quat(matrices)
    expected = _wxyz(rots)
    expected = np.where(expected[:, :1] < 0, -expected, expected)
    np.testing.assert_allclose(quat, expected, atol=1e-9)
    _same_rotation(rotations.quat_to_matrix(expected), matrices)
    _same_rotation(rotations.axis_angle_to_matrix(rots.as_rotvec()), matrices)
    # Rotation vectors are unique for angles < pi; at exactly pi, v and -v are the same rotation.
    _same_rotation(rotations.axis_angle_to_matrix(rotations.matrix_to_axis_angle(matrices)), matrices)
    below_pi = np.linalg.norm(rots.as_rotvec(), axis=-1) < np.pi - 1e-6
    rotvec = rotations.matrix_to_axis_angle(matrices)
    np.testing.assert_allclose(rotvec[below_pi], rots.as_rotvec()[below_pi], atol=1e-9)


def test_euler_to_axis_angle_matches_scipy_and_simplerenv():
    rng = np.random.default_rng(0)
    euler = rng.uniform(-np.pi / 2, np.pi / 2, size=(100, 3))
    rotvec = rotations.euler_to_axis_angle(euler)
    np.testing.assert_allclose(rotvec, Rotation.from_euler("xyz", euler).as_rotvec(), atol=1e-9)
    for angles, vec in zip(euler, rotvec):
        axis, angle = euler2axangle(*angles)  # exactly SimplerEnv's call (transforms3d, axes "sxyz")
        np.testing.assert_allclose(vec, np.asarray(axis) * angle, atol=1e-9)
    np.testing.assert_allclose(rotations.axis_angle_to_euler(rotvec), euler, atol=1e-9)


def test_small_and_batched_shapes():
    tiny = np.array([1e-12, -2e-12, 3e-12])
    np.testing.assert_allclose(rotations.euler_to_axis_angle(tiny), tiny, atol=1e-18)
    batch = np.zeros((2, 5, 3))
    assert rotations.euler_to_matrix(batch).shape == (2, 5, 3, 3)
    assert rotations.euler_to_quat(batch).shape == (2, 5, 4)
    assert rotations.quat_to_euler(rotations.euler_to_quat(batch)).shape == (2, 5, 3)
    with pytest.raises(ValueError, match="Euler sequence"):
        rotations.euler_to_matrix(batch, "zyx")
