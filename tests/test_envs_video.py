"""Rollout videos: one readable mp4 per episode, grids for vector envs, captions, downsampling, names."""

import imageio
import numpy as np

import envs
from envs.vector import make_vec
from envs.video import RecordVectorVideo, RecordVideo, captioned_frame, tile_grid


def _frames(path) -> np.ndarray:
    """All frames of an mp4, read back with imageio's ffmpeg reader: uint8 [T, H, W, 3]."""
    with imageio.get_reader(path) as reader:
        return np.stack([frame for frame in reader])  # not list(reader): its length hint is inf


def test_episode_clips_are_written_and_readable(tmp_path):
    env = RecordVideo(envs.make("metaworld/reach", image_size=64, max_episode_steps=4), tmp_path, frame_stride=2)
    env.reset(seed=3)
    for _ in range(4):
        *_, terminated, truncated, _ = env.step(np.zeros(7))
    env.reset()
    env.step(np.zeros(7))
    env.close()  # finishes the second, unfinished episode
    assert [clip.name for clip in env.clips] == ["metaworld-reach_seed3_ep000.mp4", "metaworld-reach_seed3_ep001.mp4"]
    first = _frames(env.clips[0])
    assert len(first) == 3  # the reset frame, then steps 2 and 4 (stride 2)
    height, width, _ = first[0].shape
    assert width >= 192 and width % 16 == 0 and height % 16 == 0  # enlarged for the caption, padded for H.264
    assert len(_frames(env.clips[1])) == 1
    assert not list(tmp_path.glob("*.partial.mp4"))


def test_caption_marks_success():
    image = np.zeros((64, 64, 3), np.uint8)
    plain = captioned_frame(image, "push the puck to the goal", step=5, success=False)
    done = captioned_frame(image, "push the puck to the goal", step=5, success=True)
    assert plain.shape == done.shape and plain.shape[1] == 192 and plain.shape[0] > 192
    green = (done[..., 1] > 150) & (done[..., 0] < 100)
    assert green.any() and not ((plain[..., 1] > 150) & (plain[..., 0] < 100)).any()
    assert captioned_frame(image, "x", step=0, success=False, width=256).shape[1] == 256


def test_tile_grid():
    frames = [np.full((4, 6, 3), i, np.uint8) for i in range(3)]
    grid = tile_grid(frames)
    assert grid.shape == (8, 12, 3)
    assert grid[0, 0, 0] == 0 and grid[0, 6, 0] == 1 and grid[4, 0, 0] == 2 and grid[4, 6, 0] == 0


def test_vector_grid_clip(tmp_path):
    vec = RecordVectorVideo(make_vec("toy/reach-side", 3, seed=0), tmp_path, task_id="toy/reach-side")
    vec.reset(seed=1)
    for _ in range(7):  # crosses an autoreset at step 6
        vec.step(np.zeros((3, 7), np.float32))
    vec.close()
    assert [clip.name for clip in vec.clips] == ["toy-reach-side_seed1_vec3_clip000.mp4"]
    frames = _frames(vec.clips[0])
    assert len(frames) == 8
    tile_width = 192  # 32 px toy images enlarged 6x for the caption
    assert frames.shape[2] >= 2 * tile_width  # a 2 x 2 grid
