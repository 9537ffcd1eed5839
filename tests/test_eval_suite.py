"""eval/suite.py on the toy tasks: seeded episodes, Wilson intervals, comparison to a base, files, errors."""

import csv
import json

import numpy as np
import pytest

from eval.suite import EvalRecord, Suite, SuiteTask, evaluate, load_suite, make_record, run_task, save_record


def seeing_actor(images, instructions):
    """Moves toward the marker seen in the image: the brighter half (marker and its glow), cursor bar left out."""
    acts = np.zeros((len(images), 7), np.float32)
    for i, img in enumerate(images):
        body = img[: img.shape[0] - 3].astype(float).sum(-1)  # leave out the cursor bar at the bottom
        half = img.shape[1] // 2
        acts[i, 1] = 1.0 if body[:, :half].sum() > body[:, -half:].sum() else -1.0  # +dy: toward the image's left
    return acts


def half_actor(images, instructions):
    """Always +dy: right half the time."""
    acts = np.zeros((len(images), 7), np.float32)
    acts[:, 1] = 1.0
    return acts


SUITE = Suite("toy-test", [SuiteTask("toy/color-side", 12), SuiteTask("toy/reach-side", 7)], seed=50)


def test_run_and_compare(tmp_path):
    good = evaluate(seeing_actor, SUITE, num_envs=3, video_dir=tmp_path / "videos", videos_per_task=2)
    assert good["toy/color-side"].successes == 12 and good["toy/color-side"].trials == 12
    assert good["toy/reach-side"].successes == 7 and 1 <= good["toy/reach-side"].mean_episode_len < 6
    assert good["toy/color-side"].seeds == list(range(50, 62))
    vids = sorted(p.name for p in (tmp_path / "videos").glob("*.mp4"))
    assert vids == ["toy__color-side_seed50_ep0.mp4", "toy__color-side_seed51_ep1.mp4",
                    "toy__reach-side_seed50_ep0.mp4", "toy__reach-side_seed51_ep1.mp4"]
    import imageio.v2 as imageio

    assert len(imageio.mimread(tmp_path / "videos" / vids[2])) >= 2

    # same seeds -> same outcomes, whatever num_envs
    half_a = evaluate(half_actor, SUITE, num_envs=1)
    half_b = evaluate(half_actor, SUITE, num_envs=4)
    for t in SUITE.task_ids:
        assert half_a[t].episode_success == half_b[t].episode_success
    assert 0 < half_a["toy/color-side"].successes < 12

    base = make_record(good, SUITE, new_task="toy/reach-side", method="base", run="base")
    ft = make_record(half_a, SUITE, new_task="toy/reach-side", base=base, method="ppo", run="ppo_lr1e-4", step=10)
    c = ft.comparison
    rate = half_a["toy/color-side"].successes / 12
    assert c["per_task_forgetting"] == {"toy/color-side": pytest.approx(1 - rate)}
    assert c["new_task_gain"] == pytest.approx(half_a["toy/reach-side"].successes / 7 - 1)
    path = save_record(ft, tmp_path / "ppo")
    rec = EvalRecord.load(path)
    assert rec.tasks["toy/color-side"]["ci_low"] < rate < rec.tasks["toy/color-side"]["ci_high"]
    rows = list(csv.DictReader(open(tmp_path / "ppo" / "results.csv")))
    assert [r["task"] for r in rows] == SUITE.task_ids and rows[0]["role"] == "prior"
    md = (tmp_path / "ppo" / "results.md").read_text()
    assert "| toy/color-side | prior |" in md and "Average forgetting" in md
    with pytest.raises(FileExistsError):
        save_record(ft, tmp_path / "ppo")


def test_suite_yaml_and_errors(tmp_path):
    y = tmp_path / "s.yaml"
    y.write_text("name: mine\nepisodes_per_task: 5\nseed: 7\ntasks:\n  - toy/color-side\n  - {id: toy/reach-side, episodes: 3}\n")
    s = load_suite(y)
    assert [(t.id, t.episodes) for t in s.tasks] == [("toy/color-side", 5), ("toy/reach-side", 3)] and s.seed == 7
    assert load_suite(y, episodes=2).tasks[1].episodes == 2
    builtin = load_suite("toy")
    assert {"toy/color-side", "toy/reach-side"} <= set(builtin.task_ids) and builtin.tasks[0].episodes >= 75
    y.write_text("name: bad\ntasks: [toy/colour-side]\n")
    with pytest.raises(KeyError, match="toy/color-side"):  # close match suggested
        load_suite(y)
    y.write_text("name: bad\ntask: [toy/color-side]\n")
    with pytest.raises(ValueError, match="unknown suite keys"):
        load_suite(y)
    with pytest.raises(ValueError, match="unknown suite"):
        load_suite("no-such-suite")
    with pytest.raises(ValueError, match="more than once"):
        Suite("x", [SuiteTask("toy/color-side", 1), SuiteTask("toy/color-side", 1)])
    with pytest.raises(ValueError, match="shape"):
        run_task(lambda im, ins: np.zeros((len(im), 4), np.float32), "toy/color-side", [0, 1], num_envs=2)

    # comparison across different seeds or tasks is refused
    r1 = evaluate(half_actor, Suite("a", [SuiteTask("toy/color-side", 2)], seed=0), num_envs=1)
    r2 = evaluate(half_actor, Suite("a", [SuiteTask("toy/color-side", 2)], seed=1), num_envs=1)
    s0 = Suite("a", [SuiteTask("toy/color-side", 2)], seed=0)
    base = make_record(r1, s0)
    with pytest.raises(ValueError, match="different reset seeds"):
        make_record(r2, s0, base=base)
    with pytest.raises(ValueError, match="was not evaluated"):
        make_record(r1, s0, new_task="toy/reach-side")
    json.dumps(base.to_dict())


def _as_wave_runner(monkeypatch):
    """Run the suite's wave path (today's masked waves, used for native vector envs) on process workers, by hiding
    the vector env behind a plain gymnasium wrapper."""
    import gymnasium as gym

    import eval.suite as suite_module

    task_vec = suite_module._task_vec
    monkeypatch.setattr(suite_module, "_task_vec", lambda venv, *args: gym.vector.VectorWrapper(
        task_vec(venv.env if venv is not None else None, *args)))


def test_suite_runs_its_tasks_on_the_same_workers(monkeypatch):
    """evaluate switches one vector env from task to task (no new worker processes) with the same results as a
    fresh vector env per task (run_task)."""
    import envs

    suite = Suite("toy-two", [SuiteTask("toy/reach-side", 5), SuiteTask("toy/color-side", 4)], seed=7)
    made = []
    make_vec = envs.make_vec
    monkeypatch.setattr(envs, "make_vec", lambda *a, **k: made.append(a[0]) or make_vec(*a, **k))
    shared = evaluate(seeing_actor, suite, num_envs=2)
    assert made == ["toy/reach-side"]
    for task in suite.tasks:
        alone = run_task(seeing_actor, task.id, suite.seeds(task), num_envs=2)
        assert shared[task.id].episode_success == alone.episode_success
        assert shared[task.id].episode_len == alone.episode_len


def test_refilled_envs_give_the_same_episodes_for_any_number_of_envs(monkeypatch):
    """Episode k is seeds[k]'s episode whichever env runs it: 2 and 5 envs, halves overlapped or not, and the masked
    waves all give the same per-episode successes and lengths."""
    suite = Suite("toy-refill", [SuiteTask("toy/reach-side", 11), SuiteTask("toy/color-side", 7)], seed=3)
    runs = {(n, overlap): evaluate(seeing_actor, suite, num_envs=n, overlap=overlap)
            for n in (2, 5) for overlap in (True, False)}
    with monkeypatch.context() as m:
        _as_wave_runner(m)
        runs["waves"] = evaluate(seeing_actor, suite, num_envs=3)
    reference = runs.pop((2, True))
    assert len(set(reference["toy/reach-side"].episode_len)) > 1  # episodes end at different steps: refills happen
    for t in suite.task_ids:
        for run in runs.values():
            assert run[t].episode_success == reference[t].episode_success
            assert run[t].episode_len == reference[t].episode_len


def test_refilled_metaworld_episodes_match_for_2_and_5_envs(monkeypatch):
    pytest.importorskip("metaworld")

    def pushing_actor(images, instructions):  # closes the drawer in 21-25 steps depending on the seed's scene
        return np.tile(np.array([0.3, 0.6, -0.5, 0, 0, 0, 1], np.float32), (len(images), 1))

    seeds, options = list(range(6)), {"image_size": 32}
    runs = [run_task(pushing_actor, "metaworld/drawer-close", seeds, n, options, max_steps=24) for n in (2, 5)]
    with monkeypatch.context() as m:
        _as_wave_runner(m)
        runs.append(run_task(pushing_actor, "metaworld/drawer-close", seeds, 4, options, max_steps=24))
    assert 0 < runs[0].successes < len(seeds) and len(set(runs[0].episode_len)) > 1
    for run in runs[1:]:
        assert run.episode_success == runs[0].episode_success and run.episode_len == runs[0].episode_len


def test_progress_bar_counts_finished_episodes(capsys, monkeypatch):
    suite = Suite("toy-progress", [SuiteTask("toy/reach-side", 5)], seed=3)
    evaluate(seeing_actor, suite, num_envs=2, progress=True)
    with monkeypatch.context() as m:
        _as_wave_runner(m)
        evaluate(seeing_actor, suite, num_envs=2, progress=True)
    err = capsys.readouterr().err
    assert err.count("toy/reach-side: 100%") == 2 and "5/5" in err
