"""toy/parity: any dy cell of the marker side's parity solves it; its two experts; the envs contract."""

import numpy as np

import envs
from envs.demos import generate_demos
from envs.toy import ParityOneSolutionExpert


def _step(env, seed, dy):
    env.reset(seed=seed)
    action = np.zeros(7, np.float32)
    action[1] = dy
    return env.step(action)


def test_every_cell_of_the_right_parity_succeeds_and_no_other():
    env = envs.make("toy/parity")
    centres = -1 + (np.arange(8) + 0.5) / 4
    for seed in range(6):
        env.reset(seed=seed)
        parity = env.unwrapped.parity()
        for cell, dy in enumerate(centres):
            obs, reward, terminated, truncated, info = _step(env, seed, dy)
            assert info["success"] == (cell % 2 == parity) and reward == float(info["success"])
            assert terminated and not truncated and obs["image"].shape == (32, 32, 3)
    assert env.unwrapped.cell(1.0) == 7 and env.unwrapped.cell(-1.0) == 0
    assert env.observation_space.contains(env.reset(seed=0)[0])


def test_experts_random_valid_cell_vs_one_solution(tmp_path):
    many = generate_demos("toy/parity", 100, tmp_path / "many", log=lambda s: None)
    one = generate_demos("toy/parity", 40, tmp_path / "one", expert=ParityOneSolutionExpert(), log=lambda s: None)
    assert many.meta["expert_success_rate"] == 1.0 and one.meta["expert_success_rate"] == 1.0
    dys_many = {round(float(ep["actions"][0, 1]), 3) for ep in many}
    dys_one = {round(float(ep["actions"][0, 1]), 3) for ep in one}
    assert dys_one == {-0.875, -0.625}  # the lowest cell of each parity
    assert len(dys_many) == 8  # every valid cell of both parities appears
