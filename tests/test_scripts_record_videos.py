"""Smoke run of scripts/record_videos.py on the toy task: one readable mp4 per episode, named by task/seed/episode."""

import imageio.v3 as iio
import pytest

from scripts.record_videos import main


def test_record_videos_writes_one_clip_per_episode(tmp_path, capsys):
    main(["--model", "tiny", "--task", "toy/color-side", "--episodes", "2", "--seed", "5", "--image-size", "32",
          "--out", str(tmp_path)])
    clips = sorted(tmp_path.glob("*.mp4"))
    assert [c.name for c in clips] == ["toy-color-side_seed5_ep000.mp4", "toy-color-side_seed6_ep000.mp4"]
    frames = iio.imread(clips[0])
    assert frames.ndim == 4 and frames.shape[0] >= 2  # the reset frame and at least one step
    assert "episode 1 seed 6" in capsys.readouterr().out


def test_record_videos_rejects_unknown_task_before_loading_a_model(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", "tiny", "--task", "toy/colour-side"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: unknown task id 'toy/colour-side'. Did you mean: toy/color-side")
