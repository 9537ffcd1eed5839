"""Demonstrations in the field's formats (envs/formats.py): export to a LeRobot v3 dataset and read it back; SFT
from a LeRobot dataset and from ManiSkill3 trajectory files (written here as RecordEpisode writes them), with the
loss falling; clear errors for what cannot be read."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from envs.demos import generate_demos
from envs.formats import DemoFormatError, LeRobotDemos, ManiSkillTrajectories, export_lerobot, open_demos
from envs.maniskill import PANDA, panda_action_to_controller
from rollouts import sft
from rollouts.config import ConfigError
from rollouts.logger import read_metrics
from rollouts.presets import SFT_PRESETS

h5py = pytest.importorskip("h5py")
pytest.importorskip("av")
pytest.importorskip("pyarrow")


@pytest.fixture(scope="module")
def demos(tmp_path_factory):
    return generate_demos("toy/reach-side", 24, tmp_path_factory.mktemp("demos") / "reach", seed=0, log=lambda s: None)


def write_maniskill(dataset, path, obs: bool = True):
    """The demos as a ManiSkill3 trajectory file: traj_<id> groups with pd_ee_delta_pose actions and T + 1 rgb
    observations of base_camera, plus the .json with env_info and the episodes."""
    episodes = []
    with h5py.File(path, "w") as f:
        for i in range(len(dataset)):
            ep = dataset.episode(i)
            group = f.create_group(f"traj_{i}")
            group["actions"] = panda_action_to_controller(ep["actions"])
            group["success"] = ep["successes"]
            group["terminated"], group["truncated"] = ep["successes"], np.zeros(len(ep["actions"]), bool)
            if obs:
                images = np.concatenate([ep["images"], ep["images"][-1:]])  # the observation after the last action
                group["obs/sensor_data/base_camera/rgb"] = images
            episodes.append({"episode_id": i, "episode_seed": int(ep["seed"]), "control_mode": PANDA.control_mode,
                             "elapsed_steps": len(ep["actions"]), "success": bool(ep["successes"][-1])})  # fmt: skip
    env_kwargs = {"obs_mode": "rgb" if obs else "none", "control_mode": PANDA.control_mode}
    info = {"env_info": {"env_id": "PickCube-v1", "env_kwargs": env_kwargs, "max_episode_steps": 70},
            "episodes": episodes}  # fmt: skip
    path.with_suffix(".json").write_text(json.dumps(info))
    return path


def test_export_to_lerobot_and_read_back(demos, tmp_path):
    out = export_lerobot(demos, tmp_path / "lerobot", fps=10, crf=0)
    info = json.loads((out / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["total_episodes"] == len(demos)
    assert info["total_frames"] == demos.num_steps and info["features"]["action"]["shape"] == [7]
    back = open_demos(out)
    assert isinstance(back, LeRobotDemos) and len(back) == len(demos)
    for i in range(len(demos)):
        a, b = demos.episode(i), back.episode(i)
        np.testing.assert_array_equal(b["actions"], a["actions"])
        np.testing.assert_array_equal(b["states"], a["states"])
        assert str(b["instruction"]) == str(a["instruction"])
        assert b["images"].shape == a["images"].shape
        error = np.abs(b["images"].astype(int) - a["images"]).mean()
        assert error < 3  # h264's 4:2:0 colour; a frame off by one step would differ by more
    with pytest.raises(FileExistsError):
        export_lerobot(demos, out)


def test_maniskill_trajectories_read_as_razor_actions(demos, tmp_path):
    trajectories = open_demos(write_maniskill(demos, tmp_path / "trajectory.h5"))
    assert isinstance(trajectories, ManiSkillTrajectories) and len(trajectories) == len(demos)
    assert str(trajectories.episode(0)["instruction"]) == "pick up the red cube and move it to the green sphere"
    for i in range(len(demos)):
        np.testing.assert_allclose(trajectories.episode(i)["actions"], demos.episode(i)["actions"], atol=1e-6)
        np.testing.assert_array_equal(trajectories.episode(i)["images"], demos.episode(i)["images"])
    with pytest.raises(DemoFormatError, match="replay_trajectory --traj-path .* --obs-mode rgb"):
        open_demos(write_maniskill(demos, tmp_path / "states_only.h5", obs=False))


@pytest.mark.parametrize("fmt", ["lerobot", "maniskill"])
def test_sft_on_the_format_lowers_the_loss(fmt, demos, tmp_path):
    if fmt == "lerobot":
        dataset = export_lerobot(demos, tmp_path / "lerobot", fps=10)
        options = {}
    else:
        dataset = write_maniskill(demos, tmp_path / "trajectory.h5")
        options = {"dataset_instruction": str(demos.episode(0)["instruction"])}
    cfg = replace(SFT_PRESETS["tiny"][1], dataset=str(dataset), run_dir=str(tmp_path / "run"), total_updates=24,
                  batch_size=16, eval_samples=0, checkpoint_every=100, progress=False, torch_threads=1, **options)
    sft.train(cfg)
    losses = [row["losses/ce_loss"] for row in read_metrics(tmp_path / "run")]
    assert np.mean(losses[-4:]) < 0.7 * np.mean(losses[:4]), losses


def test_unreadable_datasets_are_clear_errors(demos, tmp_path):
    out = export_lerobot(demos, tmp_path / "lerobot")
    info = json.loads((out / "meta" / "info.json").read_text())
    (out / "meta" / "info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DemoFormatError, match="v2.1 dataset.*convert_dataset_v21_to_v30"):
        open_demos(out)
    (out / "meta" / "info.json").write_text(json.dumps(info))
    with pytest.raises(DemoFormatError, match="no image feature 'observation.images.wrist'"):
        LeRobotDemos(out, image_key="observation.images.wrist")
    cfg = replace(SFT_PRESETS["tiny"][1], dataset=str(tmp_path / "nothing.h5"), run_dir=str(tmp_path / "run"))
    with pytest.raises(ConfigError, match="needs .*nothing.h5 and .*nothing.json"):
        sft.train(cfg)
