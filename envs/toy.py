"""Toy tasks: tiny, fast vision tasks that a ~1M-parameter VLA learns in seconds on a CPU.

They exist for tests and quick runs of rollouts/ (PPO, GRPO, REINFORCE, SFT); no simulator is involved.
Images are drawn with numpy; the robot is a cursor moving along the image's horizontal axis, which is the
action's y axis (OpenVLA convention: +dy moves left in the image, the way a robot facing the camera's view
sees its +y side on the left).

toy/color-side (1 step per episode)
    Task: a dark image with one coloured square marker on the left or the right half, whose grey "glow"
    brightens the image toward the marker (`glow`, default 160 = the brightness next to the marker; 0 = none).
    The glow puts the side into every image patch: a tiny randomly initialized ViT pools patches almost
    regardless of their position, so a lone marker's side would be nearly invisible to it.
    Instruction: "move toward the <colour> marker".
    Randomizations (per seeded reset): the side (left/right), the marker's colour (red, green, blue, yellow),
    its row and its column within the half.
    Success: the action's dy points at the marker's side with magnitude >= `threshold` (default 0.75), i.e.
    dy >= 0.75 when the marker is on the left, dy <= -0.75 when on the right. Every episode terminates after
    its one step. A policy that samples dy uniformly succeeds 12.5% of the time; one that ignores the image
    at best 50%.

toy/reach-side (up to `horizon` steps, default 6)
    Task: as above plus a white cursor that starts at the image centre; each step moves it by dy * `speed`
    (in units of half the image width, speed 0.2 by default).
    Success: the cursor is within `tolerance` (0.2 half-widths) of the marker's column; the episode then
    terminates. Otherwise it is truncated after `horizon` steps (so this task exercises both ends).

toy/parity (1 step per episode): the known-answer task of the `parity` experiment preset (RL's Razor's
    ParityMNIST analogue: many equally good actions)
    Task: the same images as color-side; the marker's side and its colour (named in the instruction) set a
    parity: even for a red or green marker on the left or a blue or yellow one on the right, else odd (an XOR of
    what the image shows and what the instruction says, so that a few demonstrations leave it partly learned).
    Instruction: "pick a step of the <colour> marker's parity".
    Success: dy falls in one of the `cells` (default 8) equal cells of [-1, 1] whose index (0 = the cell at -1)
    has that parity: half of all dy values, spread over the whole range, solve it. With a 9-bin action tokenizer
    (8 distinct bin centres, one per cell) a policy that samples dy uniformly succeeds half of the time.
    Two scripted experts: `ParityExpert` (the registered one) draws a uniformly random valid cell per episode,
    so behaviour cloning on it spreads probability over all solutions; `ParityOneSolutionExpert` always picks
    the lowest valid cell, one arbitrary solution (the SFT labels of the `parity` preset).
    The dense reward is the binary one (there is no shaping towards a particular solution).

Rewards (other tasks): `info["success"]` as a float is the sparse reward; the env's own reward is dense: the
reduction of the cursor's distance to the marker (color-side: the signed dy along the marker's direction,
clipped to [-1, 1]), plus 1 on success.

Observation contract: "image" uint8 [image_size, image_size, 3] (default 32), "instruction" str,
"state" float32 [2] = (cursor position in [-1, 1], elapsed fraction of the horizon).
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.registry import ACTION_DIM, TaskSpec, action_space, check_action, image_hw, observation_space, register

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 80, 240),
    "yellow": (230, 220, 40),
}
DY = 1  # index of dy in the 7-D action [dx, dy, dz, droll, dpitch, dyaw, gripper]


class ToySideEnv(gym.Env):
    """Move a cursor toward a coloured marker on the left or right (see the module docstring)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 10}

    def __init__(
        self,
        horizon: int = 1,
        image_size: int | tuple[int, int] = 32,
        threshold: float = 0.75,
        speed: float = 0.2,
        tolerance: float = 0.2,
        glow: int = 160,
        render_mode: str | None = None,
    ):
        if horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {horizon}")
        if image_hw(image_size)[0] != image_hw(image_size)[1]:
            raise ValueError(f"toy images are square: give one image_size, got {image_size!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.horizon, self.image_size = int(horizon), image_hw(image_size)[0]
        self.threshold, self.speed, self.tolerance = float(threshold), float(speed), float(tolerance)
        if not 0 <= glow <= 255:
            raise ValueError(f"glow must be in [0, 255], got {glow}")
        self.glow = int(glow)
        self.render_mode = render_mode
        self.observation_space = observation_space(image_hw(image_size), np.array([-1, 0]), np.array([1, 1]))
        self.action_space = action_space()
        self._marker = 0.5  # marker column in [-1, 1] (positive = left in the image = +y)
        self._cursor = 0.0
        self._row = 0.5
        self._color = "red"
        self._t = 0

    # ---- gymnasium API ------------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        side = 1.0 if rng.random() < 0.5 else -1.0
        self._marker = side * float(rng.uniform(0.45, 0.85))
        self._row = float(rng.uniform(0.25, 0.75))
        self._color = str(rng.choice(list(COLORS)))
        self._cursor, self._t = 0.0, 0
        return self._obs(), {"success": False, "marker_side": int(side)}

    def step(self, action):
        dy = float(check_action(action)[DY])  # shape/NaN errors and clipping as in the envs/ contract
        self._t += 1
        direction = np.sign(self._marker)
        if self.horizon == 1:
            success = bool(dy * direction >= self.threshold)
            progress = dy * direction
            self._cursor = float(np.clip(self._cursor + dy * self.speed, -1.0, 1.0))
            terminated, truncated = True, False
        else:
            before = abs(self._marker - self._cursor)
            self._cursor = float(np.clip(self._cursor + dy * self.speed, -1.0, 1.0))
            after = abs(self._marker - self._cursor)
            success = bool(after <= self.tolerance)
            progress = before - after
            terminated = success
            truncated = (not terminated) and self._t >= self.horizon
        reward = float(np.clip(progress, -1.0, 1.0)) + (1.0 if success else 0.0)
        return self._obs(), reward, terminated, truncated, {"success": success, "marker_side": int(direction)}

    def render(self):
        return self._image()

    # ---- drawing --------------------------------------------------------------------------------------------
    def _column(self, pos: float) -> int:
        """Image column of a position in [-1, 1] (+1 = left edge)."""
        s = self.image_size
        return int(round((1.0 - pos) / 2.0 * (s - 1)))

    def _image(self) -> np.ndarray:
        s = self.image_size
        r, c = int(self._row * (s - 1)), self._column(self._marker)
        # The marker's glow: grey light fading linearly with the horizontal distance from the marker, so that
        # every image patch (not only the marker's) shows which side the marker is on.
        glow = self.glow * np.clip(1.0 - np.abs(np.arange(s) - c) / s, 0.0, 1.0)
        img = np.repeat(np.broadcast_to(glow[None, :, None], (s, s, 1)), 3, axis=2).astype(np.uint8)
        half = max(1, s // 10)
        img[max(0, r - half) : r + half + 1, max(0, c - half) : c + half + 1] = COLORS[self._color]
        if self.horizon > 1:  # the cursor: a thin white bar along the bottom
            c = self._column(self._cursor)
            img[s - 1 - max(1, s // 16) :, max(0, c - 1) : c + 2] = 255
        return img

    def _obs(self) -> dict:
        state = np.array([self._cursor, self._t / self.horizon], np.float32)
        return {"image": self._image(), "instruction": f"move toward the {self._color} marker", "state": state}


class ToySideExpert:
    """Scripted demonstrator: dy toward the marker (full magnitude on color-side), zeros elsewhere, gripper open (1)."""

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        self._env = env.unwrapped

    def act(self, obs: dict) -> np.ndarray:
        env = self._env
        action = np.zeros(ACTION_DIM, np.float32)
        gap = env._marker - env._cursor
        action[DY] = np.clip(gap / env.speed, -1.0, 1.0) if env.horizon > 1 else np.sign(gap)
        action[-1] = 1.0
        return action


class ToyParityEnv(ToySideEnv):
    """Any dy cell of the marker side's parity succeeds (see the module docstring)."""

    def __init__(self, cells: int = 8, **options: Any):
        if cells < 2 or cells % 2:
            raise ValueError(f"cells must be an even number >= 2, got {cells}")
        super().__init__(horizon=1, **options)
        self.cells = int(cells)

    def parity(self) -> int:
        """The parity a solving cell must have: (marker on the right) XOR (blue or yellow marker)."""
        return int(self._marker < 0) ^ int(self._color in ("blue", "yellow"))

    def cell(self, dy: float) -> int:
        """Index of the cell of [-1, 1] that dy falls in (0 = the cell at -1; dy = 1 belongs to the last cell)."""
        return min(int((dy + 1.0) / 2.0 * self.cells), self.cells - 1)

    def step(self, action):
        dy = float(check_action(action)[DY])
        self._t += 1
        success = self.cell(dy) % 2 == self.parity()
        return self._obs(), float(success), True, False, {"success": success, "marker_side": int(np.sign(self._marker))}

    def _obs(self) -> dict:
        obs = super()._obs()
        obs["instruction"] = f"pick a step of the {self._color} marker's parity"
        return obs


class ParityExpert:
    """Scripted demonstrator of toy/parity: the centre of a uniformly random valid cell (seeded by the episode's
    image, so a dataset is reproducible), zeros elsewhere, gripper open."""

    def reset(self, env: gym.Env, obs: dict, info: dict) -> None:
        self._env = env.unwrapped
        self._rng = np.random.default_rng(int(obs["image"].astype(np.int64).sum()))

    def choose_cell(self) -> int:
        return 2 * int(self._rng.integers(self._env.cells // 2)) + self._env.parity()

    def act(self, obs: dict) -> np.ndarray:
        action = np.zeros(ACTION_DIM, np.float32)
        action[DY] = -1.0 + (self.choose_cell() + 0.5) * 2.0 / self._env.cells
        action[-1] = 1.0
        return action


class ParityOneSolutionExpert(ParityExpert):
    """toy/parity's one-solution labeller: always the lowest cell of the right parity."""

    def choose_cell(self) -> int:
        return self._env.parity()


def _make_color_side(**options: Any) -> gym.Env:
    options.setdefault("horizon", 1)
    if options["horizon"] != 1:
        raise ValueError("toy/color-side has one step per episode; use toy/reach-side for longer episodes")
    return ToySideEnv(**options)


def _make_reach_side(**options: Any) -> gym.Env:
    options.setdefault("horizon", 6)
    return ToySideEnv(**options)


register(
    TaskSpec(
        task_id="toy/color-side",
        suite="toy",
        robot="cursor",
        instruction="move toward the <colour> marker",
        backend="numpy",
        max_episode_steps=1,
        factory=_make_color_side,
        backend_env_id="envs.toy.ToySideEnv(horizon=1)",
        expert_factory=ToySideExpert,
    )
)
register(
    TaskSpec(
        task_id="toy/reach-side",
        suite="toy",
        robot="cursor",
        instruction="move toward the <colour> marker",
        backend="numpy",
        max_episode_steps=6,
        factory=_make_reach_side,
        backend_env_id="envs.toy.ToySideEnv(horizon=6)",
        expert_factory=ToySideExpert,
    )
)
register(
    TaskSpec(
        task_id="toy/parity",
        suite="toy",
        robot="cursor",
        instruction="pick a step of the <colour> marker's parity",
        backend="numpy",
        max_episode_steps=1,
        factory=ToyParityEnv,
        backend_env_id="envs.toy.ToyParityEnv",
        expert_factory=ParityExpert,
    )
)
