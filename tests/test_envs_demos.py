"""Expert demo datasets: write/read round trip, resume, failures, the CLI."""

import dataclasses
import json

import numpy as np
import pytest

from envs import registry
from envs.__main__ import main
from envs.demos import DemoDataset, combine_demos, generate_demos

QUIET = {"log": lambda message: None}


def test_metaworld_round_trip(tmp_path):
    dataset = generate_demos("metaworld/reach", 2, tmp_path, seed=5, env_options={"image_size": 32}, **QUIET)
    meta = json.loads((tmp_path / "meta.json").read_text())
    assert meta["schema_version"] == 1 and meta["task_id"] == "metaworld/reach"
    assert meta["env_options"] == {"image_size": 32} and meta["expert_success_rate"] == 1.0
    assert [episode["seed"] for episode in meta["episodes"]] == [5, 6]
    assert len(dataset) == 2 and not list(tmp_path.glob("*.tmp"))

    episode = dataset.episode(0)
    length = meta["episodes"][0]["length"]
    assert episode["images"].shape == (length, 32, 32, 3) and episode["images"].dtype == np.uint8
    assert episode["states"].shape == (length, 4) and episode["states"].dtype == np.float32
    assert episode["actions"].shape == (length, 7) and episode["actions"].dtype == np.float32
    assert episode["rewards"].shape == (length,) and episode["successes"][-1]
    assert str(episode["instruction"]) == "move the gripper to the goal" and int(episode["seed"]) == 5
    assert registry.action_space().contains(episode["actions"][0])

    steps = list(dataset.steps())
    assert len(steps) == dataset.num_steps == sum(e["length"] for e in meta["episodes"])
    np.testing.assert_array_equal(steps[0]["image"], episode["images"][0])
    np.testing.assert_array_equal(steps[length]["action"], dataset.episode(1)["actions"][0])
    assert steps[-1]["episode"] == 1 and steps[-1]["success"]


def test_replaying_actions_reproduces_the_episode(tmp_path):
    import envs

    dataset = generate_demos("metaworld/pick-place", 1, tmp_path, env_options={"image_size": 32}, **QUIET)
    episode = dataset.episode(0)
    env = envs.make("metaworld/pick-place", image_size=32)
    obs, _ = env.reset(seed=int(episode["seed"]))
    for t, action in enumerate(episode["actions"]):
        np.testing.assert_array_equal(obs["image"], episode["images"][t])
        obs, reward, terminated, truncated, info = env.step(action)
    assert info["success"] and terminated
    env.close()


def test_resume_and_settings_mismatch(tmp_path):
    generate_demos("toy/reach-side", 2, tmp_path, seed=0, **QUIET)
    (tmp_path / "episode_000002.npz.tmp").write_bytes(b"half-written")  # as left by an interrupted run
    dataset = generate_demos("toy/reach-side", 4, tmp_path, seed=0, **QUIET)
    assert len(dataset) == 4 and not list(tmp_path.glob("*.tmp"))
    assert [a["seed"] for a in dataset.meta["attempts"]] == [0, 1, 2, 3]  # the first two were not redone
    with pytest.raises(ValueError, match="seed"):
        generate_demos("toy/reach-side", 4, tmp_path, seed=1, **QUIET)


def test_failures_are_dropped_unless_kept(tmp_path):
    # Two slow steps move the cursor at most 0.1 while the marker is >= 0.45 away: the expert always fails.
    options = {"horizon": 2, "speed": 0.05}
    dropped = generate_demos("toy/reach-side", 3, tmp_path / "dropped", env_options=options, max_attempts=4, **QUIET)
    assert len(dropped) == 0 and len(dropped.meta["attempts"]) == 4
    assert dropped.meta["expert_success_rate"] == 0.0
    kept = generate_demos("toy/reach-side", 3, tmp_path / "kept", env_options=options, keep_failures=True, **QUIET)
    assert len(kept) == 3 and not any(episode["success"] for episode in kept.meta["episodes"])
    assert [a["episode"] for a in kept.meta["attempts"]] == [0, 1, 2]


def test_task_without_expert_is_refused(tmp_path, monkeypatch):
    spec = dataclasses.replace(registry.get_spec("toy/reach-side"), expert_factory=None)
    monkeypatch.setitem(registry._REGISTRY, spec.task_id, spec)
    with pytest.raises(ValueError, match="no scripted expert"):
        generate_demos("toy/reach-side", 1, tmp_path, **QUIET)


def test_not_a_dataset(tmp_path):
    with pytest.raises(FileNotFoundError, match="meta.json"):
        DemoDataset(tmp_path)


def test_cli_list_demos_inspect(tmp_path, capsys):
    main(["list", "--suite", "metaworld"])
    listing = capsys.readouterr().out
    assert "metaworld/pick-place" in listing and "pick up the puck and place it at the goal" in listing

    main(["demos", "--task", "metaworld/reach", "--n", "1", "--out", str(tmp_path), "--image-size", "32"])
    assert "expert success rate 1/1" in capsys.readouterr().out
    main(["inspect", str(tmp_path)])
    report = capsys.readouterr().out
    assert "metaworld/reach" in report and "images" in report and "[1/1 kept]" not in report


def test_action_statistics_are_recorded(tmp_path):
    dataset = generate_demos("toy/reach-side", 3, tmp_path, seed=0, **QUIET)
    stats = dataset.meta["action_stats"]
    actions = np.concatenate([dataset.episode(i)["actions"] for i in range(len(dataset))])
    np.testing.assert_allclose(stats["q01"], np.quantile(actions, 0.01, axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["q99"], np.quantile(actions, 0.99, axis=0), atol=1e-6)
    np.testing.assert_allclose(stats["mean"], actions.mean(0), atol=1e-6)
    assert stats["mask"] == [True] * 6 + [False]  # the gripper is not normalized (OpenVLA's convention)


def test_combined_datasets(tmp_path):
    a = generate_demos("toy/reach-side", 2, tmp_path / "a", seed=0, **QUIET)
    b = generate_demos("toy/color-side", 3, tmp_path / "b", seed=0, **QUIET)
    mix = combine_demos([tmp_path / "a", tmp_path / "b"], tmp_path / "mix")
    assert len(mix) == 5 and mix.num_steps == a.num_steps + b.num_steps
    assert [e["task_id"] for e in mix.meta["episodes"]] == ["toy/reach-side"] * 2 + ["toy/color-side"] * 3
    np.testing.assert_array_equal(mix.episode(2)["actions"], b.episode(0)["actions"])
    assert str(mix.episode(4)["instruction"]) == str(b.episode(2)["instruction"])
    all_actions = np.concatenate([a.actions(), b.actions()])
    np.testing.assert_allclose(mix.meta["action_stats"]["q99"], np.quantile(all_actions, 0.99, axis=0), atol=1e-6)
    assert combine_demos([tmp_path / "a", tmp_path / "b"], tmp_path / "mix").meta == mix.meta  # reused
    with pytest.raises(ValueError, match="mixture"):
        combine_demos([tmp_path / "b"], tmp_path / "mix")
