"""Rollout videos (mp4 via imageio/ffmpeg) with the instruction and success drawn under each frame.

- `RecordVideo(env, out_dir)`: a gymnasium wrapper writing one clip per episode,
  <out_dir>/<task>_seed<S>_ep<K>.mp4, where S is the seed of the latest reset(seed=S) (None if never seeded) and
  K counts the episodes since that reset (0 for the seeded one).
- `RecordVectorVideo(vec_env, out_dir, task_id=...)`: for vector envs (envs.vector), one clip of a grid of all
  envs from each reset() (a new clip every `clip_length` frames), <out_dir>/<task>_seed<S>_vec<N>_clip<K>.mp4.
  An env whose episode ends shows its final frame (info["final_obs"]) with that step's success.

Frames are the observation images (the policy's view). Captions: the instruction, the step and SUCCESS in green
once info["success"] is true on that step. Downsampling: `frame_stride` keeps every k-th step (the last frame of an
episode is always kept); `frame_width` resizes frames (default: kept, but images narrower than 192 px are enlarged
by an integer factor so that captions stay legible). Clips are written to a temporary name and renamed when done.
"""

from __future__ import annotations

import math
import os
import textwrap
from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

MIN_CAPTIONED_WIDTH = 192
FONT_SIZE = 12
LINE_HEIGHT = 15
CAPTION_LINES = 3  # of instruction; longer ones are cut with "..."
MACRO_BLOCK = 16  # H.264 encoders want frame sizes divisible by 16; frames are padded to it
SUCCESS_GREEN = (40, 220, 80)


def captioned_frame(image: np.ndarray, instruction: str, *, step: int, success: bool, width: int | None = None):
    """uint8 [H, W, 3] -> uint8 frame with a caption band below: the wrapped instruction, the step and SUCCESS."""
    frame = Image.fromarray(image)
    if width is None and frame.width < MIN_CAPTIONED_WIDTH:
        width = frame.width * math.ceil(MIN_CAPTIONED_WIDTH / frame.width)
    if width is not None and width != frame.width:
        height = round(frame.height * width / frame.width)
        frame = frame.resize((width, height), Image.NEAREST if width > frame.width else Image.BILINEAR)
    font = ImageFont.load_default(size=FONT_SIZE)
    lines = textwrap.wrap(instruction, width=max(10, frame.width // 7), max_lines=CAPTION_LINES, placeholder="...")
    band = LINE_HEIGHT * (CAPTION_LINES + 1) + 4  # fixed, so that every frame of a clip has the same size
    canvas = Image.new("RGB", (frame.width, frame.height + band))
    canvas.paste(frame, (0, 0))
    draw = ImageDraw.Draw(canvas)
    for row, line in enumerate(lines):
        draw.text((4, frame.height + 2 + row * LINE_HEIGHT), line, fill=(255, 255, 255), font=font)
    status_y = frame.height + 2 + CAPTION_LINES * LINE_HEIGHT
    draw.text((4, status_y), f"step {step}", fill=(180, 180, 180), font=font)
    if success:
        draw.text((frame.width // 2, status_y), "SUCCESS", fill=SUCCESS_GREEN, font=font)
    return np.asarray(canvas)


def tile_grid(frames: list[np.ndarray]) -> np.ndarray:
    """Equal-size frames [H, W, 3] -> one near-square grid image, row-major, black where tiles are missing."""
    cols = math.ceil(math.sqrt(len(frames)))
    rows = math.ceil(len(frames) / cols)
    height, width, _ = frames[0].shape
    grid = np.zeros((rows * height, cols * width, 3), np.uint8)
    for i, frame in enumerate(frames):
        row, col = divmod(i, cols)
        grid[row * height : (row + 1) * height, col * width : (col + 1) * width] = frame
    return grid


class _ClipWriter:
    """Streams frames into <path>.partial.mp4 and renames it to <path> on close()."""

    def __init__(self, path: Path, fps: float):
        self.path = path
        self._partial = path.with_name(path.stem + ".partial.mp4")
        self._writer = imageio.get_writer(self._partial, fps=fps, codec="libx264", macro_block_size=1)
        self.num_frames = 0

    def append(self, frame: np.ndarray) -> None:
        pad_h, pad_w = (-frame.shape[0]) % MACRO_BLOCK, (-frame.shape[1]) % MACRO_BLOCK
        self._writer.append_data(np.pad(frame, ((0, pad_h), (0, pad_w), (0, 0))))
        self.num_frames += 1

    def close(self) -> Path:
        self._writer.close()
        os.replace(self._partial, self.path)
        return self.path


def _task_slug(task_id: str) -> str:
    return task_id.replace("/", "-")


class RecordVideo(gym.Wrapper):
    """Record every episode of a contract env to its own mp4 (see the module docstring)."""

    def __init__(
        self,
        env: gym.Env,
        out_dir: str | os.PathLike,
        *,
        task_id: str | None = None,
        fps: float = 20,
        frame_stride: int = 1,
        frame_width: int | None = None,
    ):
        super().__init__(env)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.task_id = task_id or (env.spec.id if env.spec is not None else type(env.unwrapped).__name__)
        self.fps, self.frame_stride, self.frame_width = fps, frame_stride, frame_width
        self.clips: list[Path] = []
        """Paths of the finished clips, in order."""
        self._writer: _ClipWriter | None = None
        self._seed: int | None = None
        self._episode = -1  # the first reset() makes it 0
        self._step = 0

    def _add_frame(self, obs: dict, success: bool) -> None:
        self._writer.append(
            captioned_frame(obs["image"], obs["instruction"], step=self._step, success=success, width=self.frame_width)
        )

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._finish_clip()
        if seed is not None:
            self._seed, self._episode = seed, 0
        else:
            self._episode += 1
        obs, info = self.env.reset(seed=seed, options=options)
        name = f"{_task_slug(self.task_id)}_seed{self._seed}_ep{self._episode:03d}.mp4"
        self._writer = _ClipWriter(self.out_dir / name, self.fps)
        self._step = 0
        self._add_frame(obs, success=False)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self._step += 1
        if self._writer is not None and (self._step % self.frame_stride == 0 or terminated or truncated):
            self._add_frame(obs, success=bool(info["success"]))
        if terminated or truncated:
            self._finish_clip()
        return obs, reward, terminated, truncated, info

    def _finish_clip(self) -> None:
        if self._writer is not None:
            self.clips.append(self._writer.close())
            self._writer = None

    def close(self) -> None:
        self._finish_clip()
        super().close()


class RecordVectorVideo(gym.vector.VectorWrapper):
    """Record a vector env's rollouts as grid clips (see the module docstring)."""

    def __init__(
        self,
        env: gym.vector.VectorEnv,
        out_dir: str | os.PathLike,
        *,
        task_id: str,
        fps: float = 20,
        frame_stride: int = 1,
        frame_width: int | None = None,
        clip_length: int = 1000,
    ):
        super().__init__(env)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.task_id, self.fps, self.frame_stride = task_id, fps, frame_stride
        self.frame_width, self.clip_length = frame_width, clip_length
        self.clips: list[Path] = []
        """Paths of the finished clips, in order."""
        self._writer: _ClipWriter | None = None
        self._seed: int | None = None
        self._step = 0

    def _add_grid(self, images, instructions, successes) -> None:
        if self._writer is None:
            name = f"{_task_slug(self.task_id)}_seed{self._seed}_vec{self.num_envs}_clip{len(self.clips):03d}.mp4"
            self._writer = _ClipWriter(self.out_dir / name, self.fps)
        tiles = [
            captioned_frame(image, instruction, step=self._step, success=bool(success), width=self.frame_width)
            for image, instruction, success in zip(images, instructions, successes)
        ]
        self._writer.append(tile_grid(tiles))
        if self._writer.num_frames >= self.clip_length:
            self._finish_clip()

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        self._finish_clip()
        if seed is not None:
            self._seed = seed
        obs, info = self.env.reset(seed=seed, options=options)
        self._step = 0
        self._add_grid(obs["image"], obs["instruction"], np.zeros(self.num_envs, bool))
        return obs, info

    def step(self, actions):
        obs, rewards, terminated, truncated, info = self.env.step(actions)
        self._step += 1
        done = terminated | truncated
        if self._step % self.frame_stride == 0 or done.any():
            images = list(obs["image"])
            for i in np.flatnonzero(done):  # show how the episode ended, not the autoreset's first frame
                images[i] = info["final_obs"][i]["image"]
            self._add_grid(images, obs["instruction"], info["success"])
        return obs, rewards, terminated, truncated, info

    def _finish_clip(self) -> None:
        if self._writer is not None:
            self.clips.append(self._writer.close())
            self._writer = None

    def close(self, **kwargs: Any) -> None:
        self._finish_clip()
        super().close(**kwargs)
